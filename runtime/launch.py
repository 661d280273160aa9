"""Running kernel programs: one generated CUDA kernel under CuPy, NumPy elsewhere.

`runner_for(xp, dtype)` gives the runner of an array module. Under CuPy a program
becomes the source `kernelgen.cuda_source` writes, compiled once per source by NVRTC
(CuPy caches the binary on disk as well) and launched on the current stream; nothing
waits for the GPU. Under NumPy the same program is evaluated expression by
expression, which is slow but exact, so the fused executor's logic is tested on the
CPU.
"""
from __future__ import annotations

import numpy as np

from netdsl.ops.gpu import launch, on_gpu
from netdsl.runtime.kernelgen import Program, cuda_source, evaluate_program

__all__ = ["ProgramRunner", "runner_for"]


class ProgramRunner:
    """Runs programs on arrays of one module and dtype; counts its launches."""

    def __init__(self, xp, dtype: str):
        self.xp, self.dtype = xp, dtype
        self.launches = 0
        self.on_gpu = on_gpu(xp)

    def __call__(self, program: Program, arrays: dict, scalars: dict | None = None) -> dict:
        """The program's written arrays by name. Arrays given under a written name are
        updated in place; the others are new. Every array read must have one shape
        (after broadcasting): the kernel indexes them all alike."""
        scalars = scalars or {}
        self.launches += 1
        if not self.on_gpu:
            return evaluate_program(program, arrays, scalars, self.xp, self.dtype)
        return self._launch(program, arrays, scalars)

    def _launch(self, program: Program, arrays: dict, scalars: dict) -> dict:
        xp, dtype = self.xp, np.dtype(self.dtype)
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
        launch(cuda_source(program, self.dtype), program.name, int(np.prod(shape)), tuple(args))
        return results


_RUNNERS: dict = {}


def runner_for(xp, dtype: str) -> ProgramRunner:
    """The one runner per array module and dtype (its launch count is shared)."""
    key = (xp.__name__, str(dtype))
    if key not in _RUNNERS:
        _RUNNERS[key] = ProgramRunner(xp, str(dtype))
    return _RUNNERS[key]
