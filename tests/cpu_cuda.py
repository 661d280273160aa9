"""Run netdsl's CUDA kernels on the CPU: the tests' check that they compute the right thing.

Every elementwise kernel netdsl has is a grid-stride loop, so one thread of one block
covers all its elements; a kernel of one block per channel runs block by block, its
shared-memory reduction over a block of one thread. Compiled as C++ with g++ under a
header that supplies CUDA's names, the exact kernel source runs on the host and its
results can be compared with NumPy's.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import types

import numpy as np

__all__ = ["HostKernels", "stand_in_cupy", "launch_on_host"]

HEADER = """
#include <cmath>
using namespace std;
struct host_dim3 { unsigned x, y, z; };
static host_dim3 blockIdx = {0, 0, 0};
static const host_dim3 threadIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
extern "C" void host_block(unsigned index) { blockIdx.x = index; }
#define __global__
#define __shared__ static
#define __syncthreads()
template <typename T> T atomicAdd(T* address, T value) {
    T old = *address;
    *address += value;
    return old;
}
"""

_SCALARS = {"float": ctypes.c_float, "double": ctypes.c_double, "long long": ctypes.c_longlong,
            "int": ctypes.c_int}


class HostKernels:
    """CUDA kernel sources built into one host library; `run(source, *args)` calls one."""

    def __init__(self, sources):
        self.names, self.scalars = {}, {}
        units = [HEADER]
        for index, source in enumerate(dict.fromkeys(sources)):
            name = re.search(r"void (\w+)\(", source).group(1)
            self.names[source] = f"k{index}"
            units.append(source.replace(f"void {name}(", f"void k{index}(", 1))
        self.library = ctypes.CDLL(_built("\n".join(units)))

    def run(self, source: str, *args) -> None:
        """Call the kernel of `source` with arrays (by pointer) and scalars, in its
        parameter order; scalars take the C type the signature gives them."""
        getattr(self.library, self.names[source])(*self._arguments(source, args))

    def run_blocks(self, source: str, blocks: int, *args) -> None:
        """Call a kernel of one block per item (a channel) for each block in turn."""
        kernel, arguments = getattr(self.library, self.names[source]), self._arguments(source, args)
        for index in range(blocks):   # converted once: a launch can have a thousand blocks
            self.library.host_block(index)
            kernel(*arguments)
        self.library.host_block(0)

    def _arguments(self, source: str, args) -> list:
        """The arguments as ctypes values: arrays by pointer, scalars in the C type of
        their parameter."""
        scalars = self.scalars.get(source)
        if scalars is None:
            scalars = self.scalars[source] = [
                _SCALARS[kind] for kind in
                re.findall(r"const (float|double|long long|int) \w+[,)]", source)]
        converted, scalar = [], iter(scalars)
        for arg in args:
            if isinstance(arg, np.ndarray):
                assert arg.flags.c_contiguous
                converted.append(ctypes.c_void_p(arg.ctypes.data))
            else:
                converted.append(next(scalar)(arg))
        return converted


def _built(code: str) -> str:
    """The path of `code` built as a shared library: kept in a folder of the machine's
    temporary files under a hash of the code and the compiler, so the many tests (and
    processes) that launch the same kernels compile each once."""
    global _compiler
    if _compiler is None:
        _compiler = subprocess.run(["g++", "--version"], capture_output=True, text=True,
                                   check=True).stdout
    key = hashlib.sha256(f"{_compiler}\0{code}".encode()).hexdigest()[:32]
    folder = os.path.join(tempfile.gettempdir(), f"netdsl-host-kernels-{os.getuid()}")
    library = os.path.join(folder, f"{key}.so")
    if not os.path.exists(library):
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as work:
            source, built = os.path.join(work, "kernels.cpp"), os.path.join(work, "kernels.so")
            with open(source, "w") as handle:
                handle.write(code)
            subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-o", built, source],
                           check=True, capture_output=True, text=True)
            os.replace(built, library)   # whole, or not there: a killed build leaves none
    return library


_compiler = None


def stand_in_cupy():
    """NumPy under the module name "cupy": the executors and ops take their GPU path."""
    module = types.ModuleType("cupy")
    module.__getattr__ = lambda name: getattr(np, name)
    module.asnumpy = np.asarray
    return module


_launched_kernels: dict[str, HostKernels] = {}   # by source, for the whole process


def launch_on_host(monkeypatch, launched: dict | None = None) -> None:
    """Make every kernel launch of netdsl.runtime.cuda run its source on the host; the
    sources launched are recorded in `launched` by kernel name."""
    from netdsl.runtime.cuda import launch as gpu

    def compiled(source, name):
        host = _launched_kernels.get(source)
        if host is None:
            host = _launched_kernels[source] = HostKernels([source])
        if launched is not None:
            launched.setdefault(name, set()).add(source)
        grid_stride = "gridDim.x;" in source

        def kernel(grid, block, args):
            if grid_stride:   # one host thread covers every element
                host.run(source, *args)
            else:             # one block per channel, in turn
                host.run_blocks(source, grid[0], *args)
        return kernel

    monkeypatch.setattr(gpu, "_compiled", compiled)
