"""The benchmark scripts run end to end at toy sizes (their real runs are minutes long)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the scripts import their shared helpers (benchmarking.py)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_performance_suite_reports_every_figure(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    bench = load_script("benchmark")
    # the bf16 section runs where bf16 is the CPU default (AMX); here it runs on any CPU
    monkeypatch.setattr(bench, "cpu_has_fast_bf16", lambda: True)
    # the peak-rate probes at toy size (a 2048^2 bf16 matmul takes seconds without AMX)
    small_matmul, small_conv = bench.matmul_gflops, bench.conv_gflops
    monkeypatch.setattr(bench, "matmul_gflops", lambda **kw: small_matmul(**{**kw, "n": 256}))
    monkeypatch.setattr(bench, "conv_gflops", lambda **kw: small_conv(ch=32, size=16, windows=1))
    report = bench.main(
        ["--rounds", "1", "--batch", "4", "--seconds", "0", "--sample-batch", "4",
         "--shapes", "28x28x1", "--no-peers", "--json", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["peak_gflops"] == pytest.approx(report["peak_gflops"])
    assert report["peak_gflops"] == max(report["matmul_gflops"], report["conv_gflops"]) > 0
    rows = {r["model"]: r for r in report["models"]}
    assert set(rows) == {"efficient U-Net", "basic U-Net"}
    assert rows["basic U-Net"]["params"] == 3_712_257
    for r in rows.values():
        assert r["plain"] > 0 and r["framework"] > 0 and r["sample_img_steps_per_s"] > 0
        assert r["framework_over_plain"] > 0
        # the fractions are ratios of two timings (no bound: the toy-size peak probes of this
        # test can run slower than the training they are compared with on a loaded host)
        assert r["mflops"] > 0 and r["train_step_mib"] >= 0
        assert r["peak_fraction"] == pytest.approx(
            3 * r["mflops"] * 1e6 * r["framework"] / (report["peak_gflops"] * 1e9)
        )
        assert r["matmul_fraction"] > 0 and r["matmul_gflops_median"] > 0
        (plain,), (fw,), (matmul,) = r["rounds"].values()  # one round each
        assert r["framework_over_plain"] == pytest.approx(fw / plain)
        assert r["matmul_fraction"] == pytest.approx(3 * r["mflops"] * fw / 1e3 / matmul)
    assert report["keep_freed_memory"] is True  # Linux + glibc here
    assert report["data"]["pattern_generation_img_s"] > 0
    assert {"bf16 autocast", "Adam fused=True"} <= set(report["options"]["train"])
    bf16 = report["bf16"]
    for arch in ("basic", "efficient"):
        (plain,), (fw,) = bf16["rounds"][f"{arch}|plain"], bf16["rounds"][f"{arch}|framework"]
        assert bf16[arch]["framework_over_plain"] == pytest.approx(fw / plain)
        assert bf16[arch]["over_fp32_framework"] == pytest.approx(
            fw / rows[f"{arch} U-Net"]["framework"]
        )
        # over an emulated bf16 matmul (no AMX) the fraction has no upper bound worth stating
        assert bf16[arch]["matmul_fraction"] > 0
    assert any("no_grad" in k for k in report["options"]["sample"])


def test_performance_suite_rejects_an_unknown_shape(capsys):
    with pytest.raises(SystemExit) as e:
        load_script("benchmark").main(["--shapes", "64x64x3"])
    assert e.value.code == 2
    assert "--shapes: '64x64x3' is not one of" in capsys.readouterr().err


def test_invisible_pixels_are_those_of_shapes_the_mask_hides_completely():
    invisible_pixels = load_script("benchmark_inpaint").invisible_pixels
    maps = torch.zeros(1, 4, 8, 8, dtype=torch.bool)
    maps[0, 0, 1:3, 1:3] = True  # 4 px, wholly under the mask
    maps[0, 1, 5:8, 5:8] = True  # 9 px, one of them visible
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 7, 7] = 1
    assert invisible_pixels(maps, mask).tolist() == [4]
    maps[0, 1, 2, 2] = True  # a visible shape overlaps the hidden one: that pixel could be known
    assert invisible_pixels(maps, mask).tolist() == [3]


def test_inpainting_benchmark_trains_and_reports_every_method(tmp_path):
    report = load_script("benchmark_inpaint").main(
        ["--steps", "5", "--eval-n", "8", "--ddim-steps", "2", "--repaint-n", "2",
         "--repaint-steps", "2", "--batch", "16", "--out", str(tmp_path),
         "data.image_size=16", "data.num_train=40", "data.num_val=16", "data.batch_size=8",
         "model.base=8", "model.mults=[1,2]", "model.attn_resolutions=[8]", "model.heads=2",
         "model.groups=4", "callbacks.analysis_figures=null", "trainer.val_check_interval=null",
         "trainer.limit_val_batches=1", "callbacks.inpaint_validation.n=8",
         "diffusion.self_condition=true"]
    )  # fmt: skip
    methods = set(report["results"])
    assert {"nearest known pixel", "model, one pass at t=T-1", "model, DDIM-2"} <= methods
    assert "model, 3 passes at t=T-1" in methods  # refinement of a self-conditioned model
    for r in report["results"].values():
        assert 0 <= r["overall"] <= 1 and r["n"] > 0
    ceiling = report["ceiling"]["family"]
    assert all(v == 1.0 for f, v in ceiling.items() if f != "geometric")
    assert (tmp_path / "panel.png").stat().st_size > 0 and (tmp_path / "table.md").is_file()
