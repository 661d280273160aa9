"""Compiling C source into a loaded library, once per machine: the native target's build.

The system's C compiler (`$CC`, else `cc`) builds a shared library with `-O3
-march=native`; the library is cached on disk under a hash of the source, the flags,
the compiler and the CPU, so a second run (or a second process of a data-parallel run)
loads it without compiling. A library is written to a temporary name and renamed, so
a killed build leaves nothing a later run would load.

`NativeUnavailable` says why a source could not be built (no compiler, a compiler
error, a library that does not load); the caller then runs its NumPy path.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from netdsl.switches import flag

__all__ = ["NativeUnavailable", "build", "cache_dir", "compiler", "FLAGS", "builds",
           "vector_bytes"]

# -fno-math-errno lets the compiler inline sqrt and call vector math; NaN and Inf keep
# their IEEE meaning (no -ffast-math), so a diverging run is still caught
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-fPIC", "-shared")

# (library, seconds) of each compilation this process made, for the compile report
builds: list[tuple[str, float]] = []


class NativeUnavailable(RuntimeError):
    """The native target cannot run here; the message says why in one line."""


def compiler() -> str | None:
    """The C compiler's path: $CC, else cc or gcc on the PATH; None when there is none
    or NETDSL_NATIVE=0 turns the native target off."""
    if not flag("NETDSL_NATIVE", True):
        return None
    name = os.environ.get("CC")
    if name:
        return shutil.which(name)
    return shutil.which("cc") or shutil.which("gcc")


def cache_dir() -> Path:
    """$NETDSL_CACHE/native, else the user's cache folder (XDG) /netdsl/native."""
    root = os.environ.get("NETDSL_CACHE")
    if root:
        return Path(root) / "native"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "netdsl" / "native"


@lru_cache(maxsize=None)
def _machine(cc: str) -> str:
    """What a library built with -march=native depends on: the compiler and the CPU."""
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    flags = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{version}\n{platform.machine()}\n{flags}"


@lru_cache(maxsize=None)
def vector_bytes() -> int:
    """The widest vector register `-march=native` compiles for here: 64 with AVX-512,
    32 with AVX, else 16. A GCC vector type wider than this is split into several."""
    cc = compiler()
    if cc is None:
        return 16
    try:
        macros = subprocess.run([cc, "-march=native", "-dM", "-E", "-x", "c", os.devnull],
                                capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 16
    return 64 if "__AVX512F__" in macros else 32 if "__AVX__" in macros else 16


@lru_cache(maxsize=None)
def build(source: str, libraries: tuple[str, ...] = ()) -> ctypes.CDLL:
    """The library compiled from `source`, loaded (from the disk cache when it is there);
    `libraries`: more flags for the link (the thread pool's `-pthread`).

    Raises
    ------
    NativeUnavailable
        No compiler, a compile error, or a library the loader refuses.
    """
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found (set CC, or install gcc)")
    flags = " ".join(FLAGS + tuple(libraries))
    key = hashlib.sha256("\0".join((source, flags, _machine(cc))).encode())
    folder = cache_dir()
    library = folder / f"{key.hexdigest()[:32]}.so"
    if not library.exists():
        _compile(cc, source, folder, library, tuple(libraries))
    try:
        return ctypes.CDLL(str(library))
    except OSError as exc:
        raise NativeUnavailable(f"the compiled kernels do not load: {exc}") from None


def _compile(cc: str, source: str, folder: Path, library: Path,
             libraries: tuple[str, ...] = ()) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NativeUnavailable(f"cannot create the kernel cache {folder}: {exc}") from None
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder) as work:
        c_file, built = Path(work) / "kernels.c", Path(work) / "kernels.so"
        c_file.write_text(source)
        try:
            done = subprocess.run([cc, *FLAGS, str(c_file), "-o", str(built), "-lm",
                                   *libraries],
                                  capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NativeUnavailable(f"{cc} did not run: {exc}") from None
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            raise NativeUnavailable(f"{cc} failed on the generated kernels: {first}")
        os.replace(built, library)
    builds.append((library.name, time.perf_counter() - began))
