"""CUDA C source: the frame every netdsl kernel runs in, and hand-written kernels' text.

A grid kernel's body computes element i of its output; the frame makes i cover all n
however many blocks run. One block of one thread therefore computes everything, which
is how the tests run these kernels' own source on the CPU (tests/cpu_cuda.py). A
per-block kernel runs one block of THREADS per item (a channel). Only text is made
here; netdsl.runtime.cuda compiles and launches it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["CTYPES", "THREADS", "grid_kernel", "Kernel"]

CTYPES = {"float32": "float", "float64": "double"}
# threads of a block; a per-block kernel's shared arrays are sized for it
THREADS = 256


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


@lru_cache(maxsize=None)
def _source(kernel: Kernel, ctype: str) -> str:
    params = re.sub(r"\bT\b", ctype, kernel.params)
    if kernel.per_block:
        return (f'extern "C" __global__ void {kernel.name}({params}) {{\n'
                f"    typedef {ctype} T;{kernel.body}}}\n")
    return grid_kernel(kernel.name, params, kernel.body, ctype)
