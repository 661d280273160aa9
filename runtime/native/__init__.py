"""The native CPU target: codegen's programs compiled to C and called on NumPy arrays.

`prepare(programs, dtype)` builds one library holding a lowering's programs
(netdsl.lower.native renders it; toolchain compiles and caches it) and registers each
program with its function. `codegen.run_program` on NumPy arrays then calls the
function of a registered program, with the GIL released while it runs; any other
program is evaluated with NumPy, as before. A large array is split into slabs that
the host's threads run at once (runtime.native.slabs: on the generated C's pool). An op's per-channel programs (ops.channels,
batchnorm's) run the same way through `run_channels`, split into slabs of channels. Without a working compiler `prepare` raises
NativeUnavailable, and the caller runs the NumPy path. Recurrences compile whole
(netdsl.runtime.native.loops).
"""
from __future__ import annotations

import ctypes
import time

import numpy as np

from netdsl.lower import codegen
from netdsl.lower.codegen import Program, run_program
from netdsl.lower.native import c_module, channel_parameters, function_name
from netdsl.lower.schedule import LoopSegment
from netdsl.ops.channels import ChannelProgram, run_channels
from netdsl.runtime.native.slabs import run_slabs, run_whole
from netdsl.runtime.native.toolchain import NativeUnavailable, build, builds, cache_dir

__all__ = ["prepare", "build_report", "NativeUnavailable"]

# (id of a program, dtype) -> (the program, kept so its id stays its own; its call)
_functions: dict[tuple[int, str], tuple[Program, object]] = {}


class _Call:
    """A compiled program's function and what each call needs of the program, looked up
    once: a chain's call over small arrays (an MLP's relu) costs more in Python than in C,
    so the call does as little as it can."""

    __slots__ = ("function", "names", "outputs", "scalars")

    def __init__(self, program, function):
        self.function = function
        names = (channel_parameters(program) if isinstance(program, ChannelProgram)
                 else program.arrays)
        self.names, self.outputs = names, frozenset(program.outputs)
        self.scalars = program.scalars

    def __call__(self, *args):
        return self.function(*args)


def prepare(programs: list, dtype: str) -> int:
    """Compile `programs` for `dtype` (or load them from the cache) and run them natively
    from now on; how many there are.

    Raises
    ------
    NativeUnavailable
        No compiler, or one that fails on the source.
    """
    programs = list({id(p): p for p in programs}.values())  # an op kind's, once
    if not programs:
        return 0
    try:
        library = build(c_module(programs, dtype))
    except NativeUnavailable:
        # a C library without vector math: the same loops, one element at a time
        library = build(c_module(programs, dtype, vector_math=False))
    for index, program in enumerate(programs):
        function = getattr(library, function_name(index))
        function.restype = None
        if isinstance(program, ChannelProgram):
            function.argtypes = ([ctypes.c_void_p] * len(channel_parameters(program))
                                 + [ctypes.c_double] * len(program.scalars)
                                 + [ctypes.c_longlong] * 5)
        else:
            function.argtypes = ([ctypes.c_void_p] * len(program.arrays)
                                 + [ctypes.c_double] * len(program.scalars)
                                 + [ctypes.c_longlong])
        _functions[(id(program), str(dtype))] = (program, _Call(program, function))
    return len(programs)


def build_report(lowered, dtype: str = "float32") -> str:
    """One line for `netc compile --target native`: how many kernels and compiled loops,
    and whether they were compiled (in how long) or loaded from the cache; or why the
    NumPy path runs."""
    from netdsl.runtime.native.loops import compile_loop, default_needs  # it imports this package

    done = len(builds)
    began = time.perf_counter()
    try:
        count = prepare([p for made in lowered.kernels.values() for p in made], dtype)
    except NativeUnavailable as exc:
        return f"native kernels: none, {exc}; training runs the NumPy path"
    segments = [s for s in lowered.schedule.segments if isinstance(s, LoopSegment)]
    loops = sum(compile_loop(s, lowered.plan.types, dtype, default_needs(lowered, s))
                is not None for s in segments)
    seconds = time.perf_counter() - began
    compiled = sum(s for _, s in builds[done:])
    how = (f"compiled in {compiled:.2f} s" if len(builds) > done
           else f"loaded from the cache in {seconds:.2f} s")
    looped = f", {loops} of {len(segments)} loops whole" if segments else ""
    return f"native kernels: {count} ({dtype}){looped}, {how}; cache {cache_dir()}"


_DTYPES = {"float32": np.dtype("float32"), "float64": np.dtype("float64")}

# bytes an elementwise chain must touch before its slabs run on the host's threads.
# Handing slabs to Python threads costs about 24 us a call, and a chain over LeNet's or
# Inception's activations (1-13 MiB) is a pass over memory: split at 256 KiB, W2's step
# was the faster in 43 of 150 steps alternating with 16 MiB, W6's in 4 of 12 (docs/cpu.md)
SPLIT_BYTES = 16 << 20
# the same for a per-channel program (batchnorm): its two passes each way over a channel
# do more per byte, and split at 256 KiB ResNet-20's step was the faster in 31 of 40
# steps alternating with 16 MiB (71.2 against 74.8 ms, median, quiet machine)
CHANNEL_SPLIT_BYTES = 256 << 10


_address, _bytes_of = ctypes.addressof, ctypes.c_char.from_buffer


def split_above(threshold: int, plan, total: int, size: int) -> None:
    """The calls plan(slice) makes (runtime.native.slabs) over range(total): whole when
    the call touches fewer than `threshold` bytes (`size`), where a hand-over to the
    host's threads costs what splitting saves, else in slabs on those threads. (An
    elementwise chain tests its threshold itself, to make no closure for the small calls
    a small network's step is made of.)"""
    if size < threshold:
        run_whole(plan(slice(0, total)))
    else:
        run_slabs(plan, total, size)


def _pointer(array) -> int:
    """An array's data address. Through the buffer protocol it takes a fifth of
    `.ctypes.data`'s time (0.4 against 2 us here, per array of every call); a read-only
    or empty array, which that refuses, the slow way."""
    try:
        return _address(_bytes_of(array))
    except (TypeError, ValueError):
        return array.ctypes.data


@run_program.provide("numpy")
def _run_native(xp, program: Program, arrays: dict, scalars: dict | None = None,
                dtype: str = "float32"):
    entry = _functions.get((id(program), str(dtype)))
    if entry is None:
        return NotImplemented
    codegen.launches[str(dtype)] += 1
    call = entry[1]
    function = call.function
    dtype = _DTYPES.get(dtype) or np.dtype(dtype)
    given = [arrays.get(name) for name in call.names]
    shape = None
    for array in given:
        if array is not None:
            if shape is None:
                shape = array.shape
            elif array.shape != shape:
                shape = np.broadcast_shapes(*(a.shape for a in given if a is not None))
                break
    pointers, results, kept = [], {}, []
    outputs = call.outputs
    for name, array in zip(call.names, given):
        if array is None:
            array = np.empty(shape, dtype=dtype)
        elif array.shape != shape or array.dtype != dtype or not array.flags.c_contiguous:
            if name in outputs:
                raise ValueError(f"{program.name}: the in-place array {name} must be "
                                 f"contiguous {dtype} of shape {shape}")
            array = np.ascontiguousarray(np.broadcast_to(array, shape), dtype=dtype)
            kept.append(array)   # a converted copy must live until the call returns
        pointers.append(_pointer(array))
        if name in outputs:
            results[name] = array
    values = [float(scalars[name]) for name in call.scalars] if call.scalars else ()
    total = 1
    for extent in shape:
        total *= extent
    size = dtype.itemsize
    if total * size * len(pointers) < SPLIT_BYTES:
        function(*pointers, *values, total)   # too small for threads to pay
        return results

    def plan(part: slice):   # the C calls, or ctypes letting go of the GIL: slabs at once
        return [(function, (*(p + part.start * size for p in pointers), *values,
                            part.stop - part.start))], None

    run_slabs(plan, total, total * size * len(pointers))
    return results


@run_channels.provide("numpy")
def _run_channels_native(xp, program: ChannelProgram, arrays: dict, scalars: dict | None = None,
                         dtype: str = "float32", into: dict | None = None):
    entry = _functions.get((id(program), str(dtype)))
    if entry is None:
        return NotImplemented
    dtype = _DTYPES.get(dtype) or np.dtype(dtype)
    first = arrays[program.reads[0]]
    shape = first.shape
    b, c = shape[:2]
    n = first.size // (b * c) if first.size else 0
    pointers, results, kept = [], {}, []
    for name in program.reads:
        array = arrays[name]
        if array.shape != shape or array.dtype != dtype or not array.flags.c_contiguous:
            array = np.ascontiguousarray(np.broadcast_to(array, shape), dtype=dtype)
            kept.append(array)   # a converted copy must live until the call returns
        pointers.append(_pointer(array))
    for name in program.vectors:
        array = arrays[name]
        if array.shape != (c,) or array.dtype != dtype or not array.flags.c_contiguous:
            array = np.ascontiguousarray(array, dtype=dtype).reshape(c)
            kept.append(array)
        pointers.append(_pointer(array))
    for name, _ in program.channel_writes:
        results[name] = array = np.empty(c, dtype=dtype)
        pointers.append(_pointer(array))
    for name, _ in program.writes:
        array = (into or {}).get(name)
        if array is None or array.shape != shape or array.dtype != dtype \
                or not array.flags.c_contiguous:
            array = np.empty(shape, dtype=dtype)
        results[name] = array
        pointers.append(_pointer(array))
    values = [float((scalars or {})[name]) for name in program.scalars]
    function = getattr(entry[1], "function", entry[1])

    def plan(part: slice):   # the C calls, or ctypes letting go of the GIL: slabs at once
        return [(function, (*pointers, *values, b, c, n, part.start, part.stop))], None

    split_above(CHANNEL_SPLIT_BYTES, plan, c,
                first.nbytes * (len(program.reads) + len(program.writes)))
    return results
