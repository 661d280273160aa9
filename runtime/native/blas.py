"""The GEMM of the BLAS NumPy uses, as an address generated C can call.

A generated loop multiplies its recurrent matrices through the same BLAS as NumPy, so
a step computes what NumPy would and no second BLAS is loaded. threadpoolctl finds the
library NumPy loaded; its CBLAS GEMM goes by one of a few names, with 64-bit integers
in the ILP64 builds NumPy's wheels ship.
"""
from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np

from netdsl.runtime.native.toolchain import NativeUnavailable

__all__ = ["gemm"]

# CBLAS symbol templates (the precision letter goes in {}), with their integer type
_NAMES = (("scipy_cblas_{}gemm64_", "long long"), ("cblas_{}gemm64_", "long long"),
          ("scipy_cblas_{}gemm", "int"), ("cblas_{}gemm", "int"))


@lru_cache(maxsize=None)
def gemm(dtype: str) -> tuple[int, str, str]:
    """(address, C integer type, symbol) of CBLAS's sgemm or dgemm.

    Raises
    ------
    NativeUnavailable
        When NumPy's BLAS cannot be found or has no CBLAS GEMM.
    """
    from threadpoolctl import threadpool_info  # a dependency; loaded with the native loops

    np.ones(2) @ np.ones(2)   # NumPy loads its BLAS lazily
    letter = {"float32": "s", "float64": "d"}[str(dtype)]
    for pool in threadpool_info():
        if pool.get("user_api") != "blas":
            continue
        try:
            library = ctypes.CDLL(pool["filepath"])
        except OSError:
            continue
        for template, integer in _NAMES:
            symbol = template.format(letter)
            if hasattr(library, symbol):
                address = ctypes.cast(getattr(library, symbol), ctypes.c_void_p).value
                return address, integer, symbol
    raise NativeUnavailable("NumPy's BLAS offers no CBLAS gemm to generated loops")
