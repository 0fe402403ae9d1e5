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
