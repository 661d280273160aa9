"""Launching CUDA kernels: hand-written ones (netdsl.lower.cuda.Kernel) and programs.

Every launch goes through `launch_source`: the source is compiled once by NVRTC
(`cupy.RawKernel`, which also caches the binary on disk) and launched on the current
stream, so nothing waits for the GPU. A grid kernel covers its n elements with a
grid-stride loop; a per-block kernel runs one block of THREADS per item.

Generated programs (netdsl.lower.codegen: a fused chain's forward or backward, the
optimiser's update) run through `codegen.run_program`, which this module provides for
CuPy: each program's CUDA source is one kernel over every element, counted in
`codegen.launches` as the host's evaluations are.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from netdsl.lower import codegen
from netdsl.lower.codegen import Program, cuda_source, run_program
from netdsl.lower.cuda import CTYPES, THREADS, Kernel

__all__ = ["on_gpu", "launch", "launch_source", "MAX_BLOCKS"]

# a grid-stride loop covers any n: more blocks than the GPU holds at once gain nothing
MAX_BLOCKS = 65536


def on_gpu(xp) -> bool:
    """Whether `xp` is CuPy, whose arrays these kernels run on (any other module, NumPy or
    a stand-in for CuPy in the tests, takes the array-module path)."""
    return getattr(xp, "__name__", None) == "cupy"


@lru_cache(maxsize=None)
def _compiled(source: str, name: str):
    import cupy  # only a GPU run gets here; the runtime imports without CuPy

    return cupy.RawKernel(source, name)


def _typed(args) -> tuple:
    # CuPy passes a Python int as a 64-bit integer already; spelled out, as the kernels
    # declare their sizes `long long`
    return tuple(np.int64(a) if isinstance(a, int) else a for a in args)


def launch_source(source: str, name: str, n: int, args: tuple) -> None:
    """Run a grid kernel's source over n elements; sizes in `args` go as 64-bit integers."""
    if n == 0:
        return
    _compiled(source, name)((min(-(-n // THREADS), MAX_BLOCKS),), (THREADS,),
                            _typed(args) + (np.int64(n),))


def launch(kernel: Kernel, n: int, args: tuple, dtype) -> None:
    """Launch a hand-written kernel over n elements, or over n blocks; the element type is
    `dtype`'s."""
    if not n:
        return
    source = kernel.source(CTYPES[str(dtype)])
    if kernel.per_block:
        _compiled(source, kernel.name)((n,), (THREADS,), _typed(args))
    else:
        launch_source(source, kernel.name, n, args)


@run_program.provide("cupy")
def _run_on_gpu(xp, program: Program, arrays: dict, scalars: dict | None = None,
                dtype: str = "float32") -> dict:
    """One kernel of the program over every element: arrays given under a written name are
    updated in place (contiguous, of the launch's shape); the others are new."""
    codegen.launches[str(dtype)] += 1
    scalars = scalars or {}
    dtype = np.dtype(dtype)
    shape = np.broadcast_shapes(*(arrays[name].shape for name in program.arrays
                                  if name in arrays))
    args, results = [], {}
    for name in program.arrays:
        array = arrays.get(name)
        if array is None:
            array = xp.empty(shape, dtype=dtype)
        elif name in program.outputs:
            if array.shape != shape or not array.flags.c_contiguous:
                raise ValueError(f"{program.name}: the in-place array {name} must be "
                                 f"contiguous and of shape {shape}")
        else:
            array = xp.ascontiguousarray(xp.broadcast_to(array, shape), dtype=dtype)
        args.append(array)
        if name in program.outputs:
            results[name] = array
    args += [dtype.type(scalars[name]) for name in program.scalars]
    launch_source(cuda_source(program, str(dtype)), program.name, int(np.prod(shape)),
                  tuple(args))
    return results
