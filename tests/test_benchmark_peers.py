"""scripts/benchmark_peers.py without training: the parameter match, the budget points, the
machine description and the report (its real run is 30 minutes of training)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("benchmark_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_match_width_picks_the_nearest_count_and_stops_past_the_target(peers):
    seen = []

    def count(w):
        seen.append(w)
        return 100 * w * w

    assert peers.match_width(count, 10_000, range(2, 40, 2)) == (10, 10_000)
    assert seen[-1] == 12  # the first width above the target ends the search
    assert peers.match_width(lambda w: 100 * w, 550, [4, 5, 6]) == (5, 500)  # tie: smaller
    with pytest.raises(ValueError):
        peers.match_width(count, 1, [])
    assert peers.rel_diff(90, 100) == pytest.approx(-0.1)


def test_norm_groups_keep_diffusers_default_where_the_width_allows(peers):
    assert peers.norm_groups(64) == 32
    assert peers.norm_groups(24) == 24
    assert peers.norm_groups(40) == 20
    assert all(w % peers.norm_groups(w) == 0 for w in range(4, 129, 4))


def test_budget_points_end_at_the_budget(peers):
    assert peers.budget_points(10, [2.5, 5]) == [150, 300, 600]
    assert peers.budget_points(10, [12, 0, 5, 5]) == [300, 600]  # outside / repeated: dropped
    assert peers.budget_points(0.3, []) == [18]


def test_quick_flags(peers, tmp_path):
    args = peers.parse_args(["--quick", "--out", str(tmp_path)])
    assert (args.minutes, args.n, args.n_mid) == (0.3, 64, 0)
    assert Path(args.plot).parent == tmp_path  # never over the docs figure
    assert peers.parse_args(["--milestones", "1,2"]).milestones == [1.0, 2.0]
    with pytest.raises(SystemExit):
        peers.parse_args(["--systems", "ours,nope"])


def _report() -> dict:
    def row(system, minutes, final, fid, acc):
        return {
            "system": system, "params": 956_705, "minutes": minutes, "step": 1234, "final": final,
            "images_per_s": 150.0, "n": 1000 if final else 300, "sampler": "DDIM-50", "nfe": 50,
            "fid": fid, "accuracy": acc,
        }  # fmt: skip

    return {
        "machine": {"cpu": "Some CPU", "cpu_count": 2, "torch": "2.x"},
        "args": {"n": 1000},
        "judge": {
            "n_real": 2000,
            "val_accuracy": 0.98,
            "real_vs_real": {"fid": 0.2, "n_per_half": 1000},
        },
        "trained": {s: {"precision": "32"} for s in ("ours", "diffusers", "lucidrains")},
        "rows": [
            row("ours", 2.5, False, 9.0, 0.5),
            row("ours", 10.0, True, 3.0, 0.9),
            row("diffusers", 10.1, True, 5.0, 0.7),
            row("lucidrains", 10.0, True, 6.0, None),
        ],
    }


def test_table_has_one_row_per_system_and_marks_the_unconditional_peer(peers):
    text = peers.table(_report())
    final = [line for line in text.splitlines() if line.startswith("| ") and "956,705" in line]
    assert len(final) == 3
    assert "n/a (unconditional)" in final[2] and "90.0%" in final[0]
    assert "real vs real, 1,000 vs 1,000: 0.20" in text
    assert "| ours | 2.50 | 1,234 | 300 | 9.00 | 50.0% |" in text  # FID vs minutes


def test_plot_writes_the_figure(peers, tmp_path):
    path = tmp_path / "img" / "peers.png"
    peers.plot(_report(), path)
    assert path.stat().st_size > 10_000


def test_the_peers_match_our_parameter_count_within_ten_percent(peers):
    target = peers.our_params()
    for system in ("diffusers", "lucidrains"):
        _, n = peers.peer_width(system, target)
        assert abs(peers.rel_diff(n, target)) < 0.10, system
