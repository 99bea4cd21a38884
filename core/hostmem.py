"""Host-memory allocator settings for training on the CPU (glibc only; elsewhere these do nothing).

A training step allocates and frees the same large activation buffers every step. glibc serves blocks
over its mmap threshold (at most 32 MiB) with fresh ``mmap`` pages and hands freed heap tops back to the
kernel, so each step page-faults and zero-fills gigabytes again: a width-64 fp32 FGSM step on the 2-core
CPU runs 19 % faster with freed memory kept in the heap (docs/benchmarks.md). The process then holds its
peak footprint until ``release_freed_memory`` trims it; the trainer trims around monitor checks and
evaluations (which it runs from another thread, so their buffers do not fragment the training heap) and
when a run ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD = -1  # glibc mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # bytes of free heap top tolerated before trimming (mallopt takes an int)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it; True when the allocator took the settings.

    ``COSCOPE_KEEP_FREED_MEMORY=0`` leaves glibc's defaults (the benchmarks use it to measure the effect).
    """
    libc = _libc()
    if libc is None or os.environ.get("COSCOPE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def release_freed_memory() -> None:
    """Return the free heap memory to the kernel (``malloc_trim(0)``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
