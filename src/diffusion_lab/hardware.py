"""What this machine offers: the device to run on, whether its CPU is fast at bf16, and
whether a download host can be reached."""

import contextlib
import functools
import socket
import time
from urllib.parse import urlparse

import torch


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX bf16 tile units (Intel Xeon 4th generation, Sapphire Rapids, and
    later), where oneDNN runs bf16 convolutions ~8x faster than fp32 and the basic / efficient U-Nets train
    2.1-3.6x faster in bf16-mixed (docs: Performance). Elsewhere bf16 is converted in
    software or gains little, and the same runs were 2.4-13x slower than fp32."""
    cpu = torch.cpu
    try:
        return bool(
            torch.backends.mkldnn.is_available()
            and cpu._is_amx_tile_supported()
            and cpu._is_avx512_bf16_supported()
            and cpu._init_amx()  # asks the kernel for the AMX state (False where it refuses)
        )
    except AttributeError:  # a torch build without these probes
        return False


def default_cpu_precision() -> str:
    """The CPU trainer's default precision: bf16-mixed where it is fast, else 32."""
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
