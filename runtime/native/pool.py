"""The native target's thread pool, one per process (netdsl.lower.native_pool).

Generated functions that split a step's work receive `pool_run`'s address, as they
receive the BLAS GEMM's, and the number of parts: the host's threads (runtime.host),
so that NETDSL's thread setting and BLAS's limit size it alike. The library is built
once and kept for the process even when the kernel cache changes (tests point it
elsewhere), so that every generated library shares the same workers.
"""
from __future__ import annotations

import ctypes

from netdsl.lower.native_pool import POOL_SOURCE
from netdsl.runtime.native.toolchain import NativeUnavailable, build

__all__ = ["pool_address", "pool_workers"]

_library = None
_address = None
_failure = None   # why the pool did not build: not tried again at every loop's call


def _loaded() -> ctypes.CDLL:
    """The pool's library, built (or loaded from the cache) on first use.

    Raises
    ------
    NativeUnavailable
        No compiler, or one that fails on the source.
    """
    global _library, _failure
    if _failure is not None:
        raise _failure
    if _library is None:
        try:
            library = build(POOL_SOURCE, ("-pthread",))
        except NativeUnavailable as exc:
            _failure = exc
            raise
        library.pool_workers.restype, library.pool_workers.argtypes = ctypes.c_int, []
        _library = library
    return _library


def pool_address() -> int:
    """The address of `void pool_run(void (*)(void*, long long, long long), void*,
    long long)`."""
    global _address
    if _address is None:
        _address = ctypes.cast(_loaded().pool_run, ctypes.c_void_p).value
    return _address


def pool_workers() -> int:
    """The workers the pool has started (none before a call wanted them, and none in a
    forked child until its first such call)."""
    return _loaded().pool_workers()


_park = None   # OpenBLAS's blas_thread_shutdown_, or False where the BLAS has none


def park_blas_workers() -> bool:
    """Stop OpenBLAS's worker threads before the pool's run, if NumPy's BLAS is OpenBLAS;
    whether it did. After each GEMM they ran they spin about 0.1 s without yielding, on
    the cores the pool's workers need (W4's pooled step lost to them on a quiet machine,
    docs/cpu.md). `blas_thread_shutdown_` is what OpenBLAS calls before a fork: it joins
    the workers under the lock its own calls take, and its next threaded GEMM starts
    them again (60-100 us each way)."""
    global _park
    if _park is None:
        from threadpoolctl import threadpool_info  # a dependency; loaded with the native loops

        _park = False
        for found in threadpool_info():
            if found.get("internal_api") != "openblas":
                continue
            try:
                _park = ctypes.CDLL(found["filepath"]).blas_thread_shutdown_
            except (OSError, AttributeError):
                continue
            _park.restype, _park.argtypes = ctypes.c_int, []
            break
    if _park is False:
        return False
    _park()
    return True
