"""What this machine offers: the device to run on, whether its CPU is fast at bf16 (measured once
and cached), and whether a download host can be reached."""

import contextlib
import functools
import json
import os
import platform
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import torch
from filelock import FileLock

from diffusion_lab.files import atomic_write

# bf16 autocast must beat float32 by this much to be the default: below it its rounding buys
# too little
BF16_MIN_SPEEDUP = 1.15


def _has_bf16_instructions() -> bool:
    """avx512_bf16 (AMX CPUs have it too). Without it bf16 is converted in software: the basic
    / efficient U-Nets trained 2.4-13x slower than in float32 (docs: Benchmarks)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch build without the probe
        return False


# the widest of these a CPU has decides its float32 and bf16 speed
_VECTOR_UNITS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name with its family / model numbers and widest vector unit, e.g. "AMD
    EPYC (family 25 model 17, avx512_bf16)": cloud hosts often report just "AMD EPYC" for both
    a Zen 3 (no bf16) and a Zen 4 (bf16), and figures must say which one ran."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n", 1)[0].splitlines():  # the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = fields.get("flags", "").split()
    details = [u for u in _VECTOR_UNITS if u in flags][:1]
    if "cpu family" in fields and "model" in fields:
        details.insert(0, f"family {fields['cpu family']} model {fields['model']}")
    return f"{name} ({', '.join(details)})" if details else name


def calibration_cache() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "diffusion_lab" / "cpu_precision.json"


def _conv_step_seconds(bf16: bool, repeats: int = 3) -> float:
    """Median seconds of one forward + backward of a small conv/GroupNorm/SiLU stack (the
    U-Nets' building block) on a batch of 32 16x16 images, in float32 or under bf16 autocast."""
    with fork_rng("cpu"):
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.GroupNorm(8, 64), torch.nn.SiLU(),
            torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.GroupNorm(8, 64), torch.nn.SiLU(),
            torch.nn.Conv2d(64, 32, 3, padding=1),
        )  # fmt: skip
        x = torch.randn(32, 32, 16, 16)
    times = []
    for i in range(repeats + 1):  # the first is a warmup (oneDNN picks its kernels)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = net(x).float().square().mean()
        loss.backward()
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@functools.cache
def bf16_speedup() -> float | None:
    """bf16 autocast's training rate over float32's on this CPU, measured once per CPU model
    and torch version (about a second) and cached in ~/.cache/diffusion_lab; None where the CPU
    has no bf16 instructions (nothing to measure: software bf16 is always slower)."""
    if not _has_bf16_instructions():
        return None
    key = f"{cpu_name()} | torch {torch.__version__}"
    path = calibration_cache()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")  # one calibration at a time (parallel workers)
        with lock:
            try:
                cache = json.loads(path.read_text())
            except (OSError, ValueError):
                cache = {}
            if key not in cache:
                cache[key] = {"bf16_speedup": round(_measure_bf16_speedup(), 3)}
                with atomic_write(path, "w") as f:
                    f.write(json.dumps(cache, indent=2))
        return float(cache[key]["bf16_speedup"])
    except OSError:  # no writable cache folder: measure for this process only
        return _measure_bf16_speedup()


def _measure_bf16_speedup() -> float:
    return _conv_step_seconds(bf16=False) / _conv_step_seconds(bf16=True)


def cpu_has_fast_bf16() -> bool:
    """bf16 autocast measured at least BF16_MIN_SPEEDUP x float32 on this CPU: AMX Xeons
    (2.1-3.6x for the basic / efficient U-Nets), and e.g. an AMD Zen 4 with avx512_bf16
    (1.5x), but not CPUs without bf16 instructions."""
    speedup = bf16_speedup()
    return speedup is not None and speedup >= BF16_MIN_SPEEDUP


def cpu_precision_reason() -> str:
    """Why the CPU default precision is what it is, for the run log."""
    speedup = bf16_speedup()
    if speedup is None:
        return "this CPU has no bf16 instructions"
    return f"bf16 autocast measured {speedup:.2f}x the float32 rate on this CPU ({cpu_name()})"


def default_cpu_precision() -> str:
    """The CPU trainer's default precision: bf16-mixed where it is measured fast, else 32."""
    return "bf16-mixed" if cpu_has_fast_bf16() else "32"


def fork_rng(device: torch.device | str) -> contextlib.AbstractContextManager:
    """torch.random.fork_rng over the CPU generator and, on a GPU, that GPU's as well: code
    inside may draw random numbers without changing what the caller draws next."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.random.fork_rng(devices=[index], device_type="cuda")
    return torch.random.fork_rng(devices=[])


def synchronized_clock(device: torch.device | str) -> float:
    """time.perf_counter() once the device's queued work is done: GPU kernels run
    asynchronously, so a clock read without it would end a timing before they do."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter()


def pick_device(name: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; any other name is taken as given
    (a device that is not there is one error line naming the key)."""
    from diffusion_lab.errors import require

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        require(False, f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        require(
            count > (device.index or 0),
            f"device={name}: this machine has {count} CUDA device(s); use device=auto or cpu",
        )
    require(device.type in ("cpu", "cuda", "mps"), f"device={name!r}: use auto, cpu or cuda[:N]")
    return device


def reachable(url_or_host: str, timeout: float) -> bool:
    """Whether a TCP connection to the host's HTTPS port opens within `timeout` seconds: a
    quick offline check before a download would hang or fail deep inside a library."""
    host = urlparse(url_or_host).hostname or url_or_host
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
