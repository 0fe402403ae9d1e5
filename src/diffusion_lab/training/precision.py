"""Which precision trains fastest on this CPU: the default of `trainer.precision` on the CPU."""

import functools

import torch


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX bf16 tile units (Intel Xeon 4th generation, Sapphire Rapids, and
    later), where oneDNN runs bf16 convolutions ~8x faster than fp32 and the course U-Nets train
    2.1-3.6x faster in bf16-mixed (README, Benchmarks). Elsewhere bf16 is converted in
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


# conf/trainer/cpu.yaml: `precision: ${cpu_precision:}` (registered in training.build)
RESOLVER = "cpu_precision"


def default_cpu_precision() -> str:
    """What `${cpu_precision:}` resolves to: bf16-mixed where it is fast, else 32."""
    return "bf16-mixed" if cpu_has_fast_bf16() else "32"
