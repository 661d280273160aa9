"""CUDA C to PTX with NVRTC, which needs no GPU: the compile check of generated kernels.

NVRTC comes from the nvidia-cuda-nvrtc wheel (a test dependency); it is called
through ctypes, as CuPy calls it on a GPU machine.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sysconfig

__all__ = ["library", "compile_ptx"]

# the Hopper GPUs the benchmarks run on; PTX is checked for the architecture, not run
ARCH = "compute_90"


def library():
    """The NVRTC shared library, or None where the wheel is not installed."""
    site = sysconfig.get_paths()["purelib"]
    found = sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", "libnvrtc.so.*")))
    found = [path for path in found if "alt" not in os.path.basename(path)]
    if not found:
        return None
    # NVRTC opens its builtins library by name at compile time: load it first, globally
    for builtins in glob.glob(os.path.join(os.path.dirname(found[0]), "libnvrtc-builtins.so.*")):
        if "alt" not in os.path.basename(builtins):
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(found[0])


def compile_ptx(lib, source: str, name: str = "kernel.cu") -> str:
    """PTX for `source`, or RuntimeError with NVRTC's log."""
    program = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(),
                                       0, None, None), "create")
    try:
        options = (ctypes.c_char_p * 2)(f"--gpu-architecture={ARCH}".encode(), b"--std=c++17")
        status = lib.nvrtcCompileProgram(program, 2, options)
        if status != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(program, log)
            raise RuntimeError(f"{name} does not compile:\n{log.value.decode()}")
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetPTXSize(program, ctypes.byref(size)), "PTX size")
        ptx = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetPTX(program, ptx), "PTX")
        return ptx.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


def _check(lib, status: int, what: str) -> None:
    if status != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(f"NVRTC {what}: {lib.nvrtcGetErrorString(status).decode()}")
