"""The host-memory setting for CPU training, shared by the entry points and the benchmarks.

glibc's malloc hands blocks above its mmap threshold straight back to the kernel when they are
freed, so each CPU training step maps fresh pages for its activations and the kernel zero-fills
them again: 10,000-22,000 page faults and 20-45 ms of system time per efficient U-Net step at
batch 128 (getrusage). `keep_freed_memory`, called by the entry points (`configure`: CPU runs
only, `host_memory=false` turns it off) and the benchmarks, keeps freed blocks in the heap for
the next step. A threshold the user set in the environment (MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_, or the same in GLIBC_TUNABLES) is left as they set it.
"""

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MIB = 1 << 20
# mallopt parameter -> the environment settings glibc reads for it at start-up
_USER_SETTINGS = {
    _M_MMAP_THRESHOLD: ("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
    _M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"),
}


def user_settings(environ: Mapping[str, str] | None = None) -> dict[int, str]:
    """mallopt parameter -> the user's own environment setting of it (name), where there is one."""
    env = os.environ if environ is None else environ
    tunables = env.get("GLIBC_TUNABLES", "")
    found = {}
    for param, (variable, tunable) in _USER_SETTINGS.items():
        if variable in env:
            found[param] = variable
        elif tunable + "=" in tunables:
            found[param] = f"GLIBC_TUNABLES {tunable}"
    return found


def keep_freed_memory(
    mmap_threshold_mib: int = 32,
    trim_threshold_mib: int = 1024,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Serve blocks up to `mmap_threshold_mib` (glibc's maximum, 32 MiB) from the heap and keep
    up to `trim_threshold_mib` of freed heap memory for reuse, except for a threshold the user
    set in the environment. Process-wide and idempotent; False where the C library is not glibc
    (macOS, Windows, musl), which keep their defaults, or where the user set both thresholds."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mine = user_settings(environ)
    wanted = {_M_MMAP_THRESHOLD: mmap_threshold_mib, _M_TRIM_THRESHOLD: trim_threshold_mib}
    todo = {p: mib for p, mib in wanted.items() if p not in mine}
    return bool(todo) and all(mallopt(p, mib * _MIB) for p, mib in todo.items())


def runs_on_cpu(accelerator: str | None) -> bool:
    """Whether a trainer accelerator / sampling device (cpu, gpu, cuda, mps, auto) is the CPU."""
    name = str(accelerator or "auto").lower()
    if name == "auto":
        import torch

        return not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return name == "cpu"


def configure(enabled: object, accelerator: str | None) -> str | None:
    """The entry points' setting: keep freed memory on CPU runs when `enabled` (the config's
    `host_memory`) is true. Returns the line for the run log, None when nothing was done."""
    if enabled is not True or not runs_on_cpu(accelerator):
        return None  # GPU runs: activations live on the device; off: glibc's defaults
    mine = user_settings()
    if len(mine) == len(_USER_SETTINGS):
        return f"Host memory:   glibc's thresholds as set in {', '.join(mine.values())}"
    if not keep_freed_memory():
        return None  # not glibc
    kept = f" ({', '.join(mine.values())} kept as set)" if mine else ""
    return (
        "Host memory:   freed blocks kept in the heap for the next step (glibc mallopt)"
        f"{kept}; host_memory=false turns this off"
    )
