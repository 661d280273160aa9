"""A native kernel's slabs, handed to the generated C's thread pool in one call.

A kernel that splits its work (a convolution over slabs of the batch, max pooling over
slabs of planes, batchnorm's channel programs over slabs of channels, an elementwise
chain over slabs of its arrays) describes each slab as a `plan`: plan(slab) returns
(calls, result), the calls of its compiled functions that do the slab's work, in order,
and what the slab hands back (a partial weight gradient; None). `run_slabs` runs every
slab's calls:

- split over the host's threads (runtime.host's slabs; one slab: on this thread), with
  `C_SLABS` (NETDSL_C_SLABS=1) through netdsl.lower.native_slabs' `slabs_run`: one
  ctypes call, whose C runs the pool's `pool_run` over the slabs (a hand-over is one
  atomic store, where a Python thread's costs about 24 us);
- by default (NETDSL_C_SLABS=0), or where the pool does not build, on the host's
  Python threads (ops.parallel.slab_map), each slab's calls made from Python. On a
  busy machine and on a quiet one the pool's steps were not the shorter (docs/cpu.md,
  "A native kernel's slabs on the same pool"): its workers spin 50 us after each call,
  on cores the calling thread's Python and other processes want, where the Python
  threads sleep at once.

The slabs, the calls and their order within a slab are the same both ways, so the
results are. A call is (a ctypes function with its argtypes, its arguments): addresses
(None for NULL), integers, floats, and at most one `Scratch`: a buffer the call may
overwrite, one per thread running slabs at once (as each slab's own buffer would be
on the Python threads, where a slab allocates it when it starts). With `KEEP_SCRATCH`
(NETDSL_KEEP_SCRATCH=1) each Python thread keeps its slabs' scratch between calls,
grown when a slab asks for more, up to `bound_scratch`'s bytes a thread (the memory
plan's scratch figure shared by the threads, which an executor sets): a slab that would
go past it makes its own for the call, as without.
"""
from __future__ import annotations

import ctypes
import struct
import threading
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from netdsl.lower.native_slabs import HEADER, slabs_source
from netdsl.ops import parallel
from netdsl.runtime import host
from netdsl.runtime.native.pool import pool_address
from netdsl.runtime.native.toolchain import NativeUnavailable, build
from netdsl.switches import flag

__all__ = ["C_SLABS", "Scratch", "run_slabs", "run_whole", "signature"]

# hand a native kernel's slabs to the generated C's thread pool (True, or
# NETDSL_C_SLABS=1 in the environment), or to the host's Python threads (False, or
# NETDSL_C_SLABS=0: the default, as before; the pool's steps did not measure shorter,
# busy or quiet)
C_SLABS = flag("NETDSL_C_SLABS", False)
# keep each thread's slab scratch between calls (True, or NETDSL_KEEP_SCRATCH=1)
KEEP_SCRATCH = flag("NETDSL_KEEP_SCRATCH", False)
_local = threading.local()
_kept_by_thread: list[dict] = []   # every thread's kept buffers, for release_scratch
_bound = [None]                    # bytes a thread may keep; None: no bound


class Scratch(NamedTuple):
    """A call's scratch buffer of `elements` of `dtype`; calls of one slab that name
    the same `key` share it (the largest asked for)."""
    key: str
    elements: int
    dtype: np.dtype


_KINDS = {ctypes.c_void_p: "p", ctypes.c_longlong: "l", ctypes.c_double: "d"}
_known: dict = {}   # id of a ctypes function -> (its signature, its address, the function)
_DOUBLE, _INT64 = struct.Struct("<d"), struct.Struct("<q")


def signature(function) -> str:
    """The kinds of a compiled function's arguments (lower.native_slabs' signatures)."""
    return _described(function)[0]


def _described(function) -> tuple[str, int]:
    found = _known.get(id(function))
    if found is None:   # kept with the function, so that its id stays its own
        if not isinstance(function, ctypes._CFuncPtr):   # a Python stand-in runs in Python
            raise NativeUnavailable(f"{function!r} is not a compiled function")
        kinds = "".join(_KINDS[t] for t in function.argtypes)
        found = _known[id(function)] = (kinds, ctypes.cast(function, ctypes.c_void_p).value,
                                        function)
    return found[:2]


@lru_cache(maxsize=None)
def _runner(signatures: tuple[str, ...]):
    """`slabs_run` of the library for these signatures; NativeUnavailable without a
    compiler."""
    function = build(slabs_source(signatures)).slabs_run
    function.restype = None
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_longlong] * 3
    return function


def run_whole(planned):
    """A slab's calls made on this thread, its scratch allocated for it (or the thread's
    kept scratch, `KEEP_SCRATCH`); its result."""
    calls, result = planned
    buffers = {}
    kept = _thread_kept() if KEEP_SCRATCH else None
    for function, arguments in calls:
        if Scratch in map(type, arguments):   # a loop in C: most calls have none
            function(*_scratch_given(arguments, buffers, kept))
        else:
            function(*arguments)
    return result


def bound_scratch(per_thread: int | None) -> None:
    """The most bytes of scratch a thread keeps between calls (None: no bound); kept
    buffers past it are let go."""
    _bound[0] = per_thread
    if per_thread is not None:
        for kept in list(_kept_by_thread):
            if sum(b.nbytes for b in kept.values()) > per_thread:
                kept.clear()


def release_scratch() -> None:
    """Let go of every thread's kept scratch."""
    for kept in list(_kept_by_thread):
        kept.clear()


def _thread_kept() -> dict:
    kept = getattr(_local, "kept", None)
    if kept is None:
        kept = _local.kept = {}
        _kept_by_thread.append(kept)
    return kept


def _scratch_given(arguments, buffers: dict, kept: dict | None = None) -> list:
    """The arguments with a Scratch as its buffer's address (made, or grown, here; or
    the thread's kept one, grown within the bound)."""
    given = []
    for argument in arguments:
        if isinstance(argument, Scratch):
            buffer = buffers.get(argument.key)
            if buffer is None or buffer.size < argument.elements:
                buffer = None if kept is None else _kept_buffer(kept, argument)
                if buffer is None:
                    buffer = np.empty(argument.elements, argument.dtype)
                buffers[argument.key] = buffer
            argument = buffer.ctypes.data
        given.append(argument)
    return given


def _kept_buffer(kept: dict, scratch: Scratch):
    """The thread's kept buffer for `scratch` (a view of its front), grown if the bound
    allows; None where it does not."""
    key = (scratch.key, np.dtype(scratch.dtype).str)
    buffer = kept.get(key)
    if buffer is None or buffer.size < scratch.elements:
        need = scratch.elements * np.dtype(scratch.dtype).itemsize
        others = sum(b.nbytes for k, b in kept.items() if k != key)
        if _bound[0] is not None and others + need > _bound[0]:
            return None
        kept.pop(key, None)   # the smaller one goes before the larger one is made
        buffer = kept[key] = np.empty(scratch.elements, scratch.dtype)
    return buffer[:scratch.elements]


def run_slabs(plan, total: int, size: int, finish=None) -> list:
    """[result of each slab] of plan over range(total), an op touching `size` bytes:
    split as the host splits it, the slabs on the pool (C_SLABS) or the host's Python
    threads; one slab on this thread. With `finish`, finish(slab, result) is each
    slab's result instead: on a Python thread as its slab ends, after the pool's call
    in the slabs' order."""
    def run(part: slice):
        result = run_whole(plan(part))
        return result if finish is None else finish(part, result)

    slabs = host.split(total, size)
    if len(slabs) == 1:
        return [run(slabs[0])]
    if C_SLABS:
        try:
            results = _on_pool(plan, slabs)
        except NativeUnavailable:
            pass
        else:
            return (results if finish is None
                    else [finish(part, r) for part, r in zip(slabs, results)])
    return parallel.slab_map(np, run, total, size)


def _on_pool(plan, slabs: list[slice]) -> list:
    """The slabs' calls in one call of slabs_run: each of the threads takes the next
    slab nobody has started."""
    pool = pool_address()
    threads = min(host.host_threads(), len(slabs))
    with host.splitting(threads):   # planned as a slab's thread would plan it
        planned = [plan(part) for part in slabs]
        kinds, sizes = {}, {}
        for calls, _ in planned:
            for function, arguments in calls:
                kinds.setdefault(_described(function)[0], None)
                for argument in arguments:
                    if isinstance(argument, Scratch):
                        elements = sizes.get(argument.key, (0,))[0]
                        sizes[argument.key] = (max(elements, argument.elements),
                                               argument.dtype)
        signatures = tuple(sorted(kinds))
        run = _runner(signatures)
        index = {s: i for i, s in enumerate(signatures)}
        width = HEADER + max(len(s) for s in signatures)
        buffers = {key: np.empty(threads * elements, dtype)
                   for key, (elements, dtype) in sizes.items()}
        depth = max(len(calls) for calls, _ in planned)
        rows = []
        for calls, _ in planned:
            for function, arguments in calls:
                kinds_of, address = _described(function)
                row = [index[kinds_of], address, -1, 0]
                for position, (kind, argument) in enumerate(zip(kinds_of, arguments)):
                    if isinstance(argument, Scratch):
                        buffer = buffers[argument.key]
                        row[2], row[3] = position, buffer.size // threads * buffer.itemsize
                        argument = buffer.ctypes.data
                    elif argument is None:
                        argument = 0
                    elif kind == "d":
                        argument = _INT64.unpack(_DOUBLE.pack(argument))[0]
                    row.append(argument)
                rows.append(row + [0] * (width - len(row)))
            rows += [[-1] + [0] * (width - 1)] * (depth - len(calls))
        table = np.array(rows, dtype=np.int64)
        run(pool, table.ctypes.data, depth, len(slabs), threads)
    return [result for _, result in planned]
