"""diffusion_lab.host_memory, checked in fresh processes: its setting is process-wide."""

import os
import subprocess
import sys


def test_keep_freed_memory_stops_page_faults_on_reused_activation_sizes():
    """By default glibc maps blocks above its mmap threshold (128 KiB at start, then adjusted by
    history, so whether a training step faults 10-22k pages depends on what was freed before)
    afresh and unmaps them on free, so every step faults its activations in again. The baseline
    pins glibc's starting threshold to make that deterministic; after keep_freed_memory the
    next step reuses the freed heap."""
    code = """
import ctypes, resource, sys, torch
from diffusion_lab.host_memory import keep_freed_memory
ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: glibc's starting value
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():
    live = [torch.ones(5_000_000) for _ in range(8)]  # 8 x 20 MB, freed together
for _ in range(3):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 5)
"""
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0"}  # PyTorch's default: 4 KiB pages
    faults = {
        mode: float(
            subprocess.run(
                [sys.executable, "-c", code, mode],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            ).stdout
        )
        for mode in ("default", "keep")
    }
    assert faults["default"] > 10_000  # ~39,000 pages per step: all 160 MB faulted again
    assert faults["keep"] < 100


FAULTS_PER_STEP = """
import ctypes, resource, torch
from diffusion_lab.host_memory import keep_freed_memory
ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # as above: glibc's starting value
print(keep_freed_memory())
def step():
    live = [torch.ones(5_000_000) for _ in range(8)]
for _ in range(3):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 5)
"""


def test_a_users_own_mmap_threshold_is_not_overridden():
    """With MALLOC_MMAP_THRESHOLD_ in the environment keep_freed_memory leaves that threshold
    alone (only the trim threshold is set), so the step faults its pages in as before."""
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0", "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_STEP], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    assert out[0] == "True" and float(out[1]) > 10_000


def test_user_settings_are_read_from_malloc_variables_and_glibc_tunables():
    from diffusion_lab.host_memory import _M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD, user_settings

    assert user_settings({"MALLOC_ARENA_MAX": "2"}) == {}  # not a threshold we set
    assert user_settings({"MALLOC_TRIM_THRESHOLD_": "0"}) == {
        _M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_"
    }
    tunables = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=4096"}
    assert user_settings(tunables) == {
        _M_MMAP_THRESHOLD: "GLIBC_TUNABLES glibc.malloc.mmap_threshold"
    }


def test_configure_acts_on_cpu_runs_only_and_says_so(monkeypatch):
    from diffusion_lab import host_memory

    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(var, raising=False)
    assert (
        host_memory.configure(True, "gpu") is None and host_memory.configure(True, "cuda") is None
    )
    assert host_memory.configure(False, "cpu") is None  # host_memory=false
    assert host_memory.configure("yes", "cpu") is None  # not a bool: the config check reports it
    assert calls == []
    line = host_memory.configure(True, "cpu")
    assert line.startswith("Host memory:   freed blocks kept") and "host_memory=false" in line
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert "MALLOC_TRIM_THRESHOLD_ kept as set" in host_memory.configure(True, "cpu")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert "as set in" in host_memory.configure(True, "cpu")
    assert calls == [1, 1]  # not when the user set both thresholds


def test_the_run_log_says_when_it_is_on(tmp_path, monkeypatch, caplog):
    from diffusion_lab import host_memory
    from diffusion_lab.app.hydra_entry import _host_memory

    from .conftest import compose_cfg

    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: True)
    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(var, raising=False)
    caplog.set_level("INFO", logger="diffusion_lab")
    for overrides, on in (([], True), (["host_memory=false"], False), (["trainer=gpu"], False)):
        caplog.clear()
        _host_memory(compose_cfg(tmp_path, overrides))
        assert ("Host memory:" in caplog.text) == on, overrides
