"""The host-memory setting for CPU training, shared by the entry points and the benchmarks.

glibc's malloc hands blocks above its mmap threshold straight back to the kernel when they are
freed, so each CPU training step maps fresh pages for its activations and the kernel zero-fills
them again: 10,000-22,000 page faults and 20-45 ms of system time per efficient U-Net step at
batch 128 (getrusage). `keep_freed_memory`, called by the entry points and the benchmarks, keeps
freed blocks in the heap for the next step.
"""

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MIB = 1 << 20


def keep_freed_memory(mmap_threshold_mib: int = 32, trim_threshold_mib: int = 1024) -> bool:
    """Serve blocks up to `mmap_threshold_mib` (glibc's maximum, 32 MiB) from the heap and keep
    up to `trim_threshold_mib` of freed heap memory for reuse. Process-wide and idempotent;
    False where the C library is not glibc (macOS, Windows, musl), which keep their defaults."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold_mib * _MIB)
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, trim_threshold_mib * _MIB))
