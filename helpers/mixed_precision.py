"""mixed_precision - where `--amp` (bf16 autocast of the depth network) runs: CUDA, and CPUs with bf16.

Not a reading step: nothing in it is SQLDepth. On a CPU, bf16 only pays where the processor has
native bf16 instructions (AVX-512 BF16, or Intel's AMX tiles), which PyTorch's oneDNN kernels then
use; without them its kernels convert to float32 and back, so --amp falls back to float32 there
with one `note:` line (06_train.py). Which parts run in bf16 is the same on CPU and CUDA (docs/kitti.md).
Tests: tests/test_06_train.py.
"""
from functools import lru_cache

import torch

# /proc/cpuinfo flags of the x86 bf16 instructions oneDNN uses for convolutions and matmuls.
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@lru_cache(maxsize=None)   # the training loop asks every step; the answer never changes
def cpu_has_native_bf16(cpuinfo="/proc/cpuinfo"):
    """True if the CPU lists a native bf16 flag in `cpuinfo` (Linux). Where that file cannot be read
    (macOS, Windows) PyTorch's own CPU probe answers instead."""
    try:
        with open(cpuinfo) as f:
            flags = {word for line in f if line.startswith("flags") for word in line.split()}
    except OSError:
        # torch.backends.cpu.get_cpu_capability() says only "AVX512", which does not imply BF16:
        # ask torch.cpu's finer probes (private names, hence getattr with a False default).
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return bool(flags & NATIVE_BF16_FLAGS)


def bf16_autocast_available(device):
    """Whether bf16 autocast is worth running on `device`: always on CUDA, on a CPU only with native bf16."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
