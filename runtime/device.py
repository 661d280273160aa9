"""The device a run uses: NumPy on the host, or CuPy on an NVIDIA GPU once probed.

`--device gpu` fails here, in one line that says what is missing, before any work is
done: CuPy, a CUDA device it can see, or a device it can use.
"""
from __future__ import annotations

import numpy as np

from netdsl.errors import SpecError

__all__ = ["array_module", "target_of", "DEVICES"]

# the devices a run can use, and the lowering target of each (netdsl.lower.TARGETS)
DEVICES = {"cpu": "host", "gpu": "cuda"}


def target_of(device: str) -> str:
    """The lowering target of a device: "host" for the CPU, "cuda" for the GPU."""
    return DEVICES[device]


INSTALL_HELP = ("install it with pip install 'netdsl[gpu]' (CUDA 13; 'netdsl[gpu-cuda12]' "
                "for CUDA 12), or run with --device cpu")
DRIVER_HELP = ("check that nvidia-smi lists the GPU and that its driver supports the CUDA "
               "of the CuPy wheel (cupy-cuda13x needs CUDA 13), or run with --device cpu")


def array_module(device: str):
    """numpy for the CPU; cupy for the GPU, once a tiny array has been made and computed
    on it. Otherwise a SpecError of one line saying what is missing: CuPy, a CUDA device
    it can see, or a device it can use (a driver too old for the CUDA of the wheel, a
    missing CUDA library, a device that is out of memory or busy)."""
    if device == "cpu":
        return np
    what = "--device gpu needs CuPy and an NVIDIA GPU"
    try:
        import cupy  # an optional dependency, for --device gpu alone
    except Exception as exc:  # noqa: BLE001  not installed, or an install failing inside
        if isinstance(exc, ModuleNotFoundError) and exc.name == "cupy":
            raise SpecError(f"{what}, but CuPy is not installed; {INSTALL_HELP}", None) from None
        raise SpecError(f"{what}, but CuPy failed to import ({_why(exc)}); {INSTALL_HELP}",
                        None) from None
    try:
        available = cupy.cuda.is_available()
    except Exception as exc:  # noqa: BLE001  a CUDA runtime that cannot start
        raise SpecError(f"{what}, but CuPy cannot start CUDA ({_why(exc)}); {DRIVER_HELP}",
                        None) from None
    if not available:
        raise SpecError(f"{what}, but CuPy sees no CUDA device; {DRIVER_HELP}", None)
    try:  # the first allocation, and a kernel (compiled by NVRTC), read back
        probe = cupy.arange(4, dtype=cupy.float32)
        if float((probe * 2).sum()) != 12.0:
            raise RuntimeError("a test computation on the GPU gave a wrong result")
    except Exception as exc:  # noqa: BLE001  cupy.cuda.runtime.CUDARuntimeError and kin
        raise SpecError(f"{what}, but CuPy could not use the GPU ({_why(exc)}); {DRIVER_HELP}",
                        None) from None
    return cupy


def _why(exc: Exception) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
