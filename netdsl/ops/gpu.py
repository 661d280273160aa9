"""The frame of netdsl's hand-written GPU kernels: one grid-stride loop over n.

A kernel's body computes element i of its output; the frame makes i cover all n
however many blocks run. One block of one thread therefore computes everything,
which is how the tests run these kernels' own source on the CPU (tests/cpu_cuda.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["on_gpu", "grid_kernel", "Kernel", "launch", "CTYPES", "THREADS"]

CTYPES = {"float32": "float", "float64": "double"}
THREADS = 256
# a grid-stride loop covers any n: more blocks than the GPU holds at once gain nothing
MAX_BLOCKS = 65536


def on_gpu(xp) -> bool:
    """Whether `xp` is CuPy, whose arrays these kernels run on (any other module, NumPy or
    a stand-in for CuPy in the tests, takes the array-module path)."""
    return getattr(xp, "__name__", None) == "cupy"


def grid_kernel(name: str, params: str, body: str, ctype: str) -> str:
    """`extern "C"` kernel `name`(params, n) running `body` for each i < n, with T the
    element type."""
    return (f'extern "C" __global__ void {name}({params}, const long long n) {{\n'
            f"    typedef {ctype} T;\n"
            "    const long long stride = (long long)blockDim.x * gridDim.x;\n"
            "    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;"
            " i += stride) {"
            f"{body}    }}\n}}\n")


@dataclass(frozen=True)
class Kernel:
    """A hand-written kernel: its parameters and body, written with T for the element
    type. A grid kernel's body computes element i < n; a `per_block` kernel runs one
    block of THREADS per item (a channel), its body indexing by blockIdx and threadIdx."""

    name: str
    params: str
    body: str
    per_block: bool = False

    def source(self, ctype: str) -> str:
        return _source(self, ctype)

    def __call__(self, n: int, args: tuple, dtype) -> None:
        """Launch over n elements, or over n blocks; the element type is `dtype`'s."""
        source = self.source(CTYPES[str(dtype)])
        if not n:
            return
        if self.per_block:
            _compiled(source, self.name)((n,), (THREADS,), _typed(args))
        else:
            launch(source, self.name, n, args)


@lru_cache(maxsize=None)
def _source(kernel: Kernel, ctype: str) -> str:
    params = re.sub(r"\bT\b", ctype, kernel.params)
    if kernel.per_block:
        return (f'extern "C" __global__ void {kernel.name}({params}) {{\n'
                f"    typedef {ctype} T;{kernel.body}}}\n")
    return grid_kernel(kernel.name, params, kernel.body, ctype)


@lru_cache(maxsize=None)
def _compiled(source: str, name: str):
    import cupy
    return cupy.RawKernel(source, name)


def _typed(args) -> tuple:
    # CuPy passes a Python int as a 64-bit integer already; spelled out, as the kernels
    # declare their sizes `long long`
    return tuple(np.int64(a) if isinstance(a, int) else a for a in args)


def launch(source: str, name: str, n: int, args: tuple) -> None:
    """Run a grid kernel's source over n elements; sizes in `args` go as 64-bit integers."""
    if n == 0:
        return
    _compiled(source, name)((min(-(-n // THREADS), MAX_BLOCKS),), (THREADS,),
                            _typed(args) + (np.int64(n),))

