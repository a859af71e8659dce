"""cpu_memory - how a process of this project asks Linux and glibc for CPU memory.

Not a reading step: nothing in it is SQLDepth, and neither setting changes a number, only how
fast big arrays and tensors come and go on a CPU.
  * `retain_freed_memory`: glibc's malloc keeps freed blocks for reuse instead of handing them back
    to the kernel, which would make the next allocation page-fault them in again, 4 KB at a time.
  * `use_huge_pages`: PyTorch's CPU allocator marks every tensor of 2 MB or more for transparent
    huge pages (its switch is the environment variable THP_MEM_ALLOC_ENABLE), so the kernel maps
    it in 2 MB pages: one page fault per 2 MB instead of one per 4 KB, and fewer TLB misses.
    PyTorch reads the switch once, at the first CPU tensor of 2 MB or more, so it is set at the
    top of a program. Linux decides in the end: with
    /sys/kernel/mm/transparent_hugepage/enabled = never it does nothing.
`python -m helpers.benchmark` counts the page faults of a training step with and without them
(`--no-tune_memory`); docs/benchmarks.md. Used by 01_data.py (each loader process), helpers/benchmark.py
and 06_train.py. Tests: tests/test_cpu_memory.py.
"""
import ctypes
import os
import sys

import torch

try:
    import resource  # Unix only
except ImportError:
    resource = None

THP_SWITCH = "THP_MEM_ALLOC_ENABLE"  # PyTorch's switch (c10/core/alloc_cpu.cpp)
_MALLOC_TUNED_PID = None


def retain_freed_memory():
    """Ask glibc's malloc to keep freed memory (blocks up to 32 MB, 128 MB of free heap) for reuse.
    Otherwise each sample's few MB of arrays go back to the kernel and the next sample page-faults
    them in again: ~2,000 faults, over half the loading time of a 416x128 sample
    (docs/benchmarks.md). Once per process (DataLoader workers too); a no-op where libc is not glibc."""
    global _MALLOC_TUNED_PID
    if _MALLOC_TUNED_PID == os.getpid():
        return
    _MALLOC_TUNED_PID = os.getpid()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD: free heap kept before trimming
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks below this come from the reusable heap
    except (OSError, AttributeError):
        pass


def huge_pages_in_effect():
    """Whether PyTorch's CPU allocator is using transparent huge pages in this process. With the
    switch on, it aligns every block of 2 MB or more to a page; without it, to 64 bytes, so three
    fresh 2-4 MB tensors are page-aligned only by a 1-in-262,144 chance. PyTorch madvises huge pages
    on Linux only."""
    if not sys.platform.startswith("linux"):
        return False
    probes = [torch.empty(n << 20, dtype=torch.uint8) for n in (2, 3, 4)]
    return all(t.data_ptr() % 4096 == 0 for t in probes)


def use_huge_pages():
    """Turn PyTorch's transparent-huge-page allocation on, unless the environment already says
    THP_MEM_ALLOC_ENABLE=0; returns whether it is in effect. Call it before the process's first
    CPU tensor of 2 MB or more (the start of main): after that PyTorch no longer reads the switch."""
    os.environ.setdefault(THP_SWITCH, "1")
    return huge_pages_in_effect()


def tune_cpu_memory():
    """Both settings, for a training or benchmark process; returns whether huge pages are in effect."""
    retain_freed_memory()
    return use_huge_pages()


def page_faults():
    """Minor page faults of this process so far (the kernel mapping fresh memory); 0 without `resource`."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0
