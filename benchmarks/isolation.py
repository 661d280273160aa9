"""What keeps one framework's timings from disturbing the other's on a shared CPU.

OpenBLAS (NumPy's) and OpenMP (PyTorch's) worker threads spin for a while after each
call before they sleep; a side timed straight after the other shares the cores with
those spinning threads and ran up to twice as slowly on a 2-core machine. `settle`
pauses before a timed block, then makes one untimed call.

Both sides also share glibc's malloc, whose mmap threshold follows the sizes freed so
far: after one side's large frees the other side's buffers of a few MiB may come from
fresh mmaps, page-faulting on every call (PyTorch's 1x1 convolution measured twice as
slow that way). `fix_malloc` fixes the threshold at glibc's largest (32 MiB), so
neither side's history changes the other's allocations.
"""
from __future__ import annotations

import ctypes
import time


def fix_malloc() -> str:
    """Fix glibc's mmap and trim thresholds (else they adapt to the allocations so far)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "malloc as is"
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters, from malloc.h
    if libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 64 << 20):
        return "malloc mmap threshold 32 MiB"
    return "malloc as is"


def blas_pool() -> tuple[str, int | None]:
    """NumPy's BLAS library and its thread count, where threadpoolctl can tell."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "BLAS", None
    for pool in threadpool_info():
        if pool["user_api"] == "blas":
            return pool["internal_api"], pool["num_threads"]
    return "BLAS", None


def limit_blas(threads: int):
    """Run NumPy's BLAS on `threads` threads from now on (a no-op without threadpoolctl);
    returns the limiter, which must stay referenced."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=threads, user_api="blas")


def settle(call, seconds: float) -> None:
    """Let the other side's worker threads go to sleep, then warm this side up once."""
    time.sleep(seconds)
    call()
