"""The host: its threads, which ops split their work over, and control of BLAS's own.

NumPy runs an op on one core and BLAS spreads only a GEMM over the others, and BLAS's
threads spin waiting for each other while another process holds a core. So on the
host an op splits its batch into slabs (ops.parallel) and this module runs them on
Python threads (NumPy releases the GIL in copies, ufuncs and GEMMs), each with a
one-thread BLAS meanwhile. Importing it lends the threads: it provides ops.parallel's
routines for NumPy.

Also here: telling host arrays from device ones, reading device values back, and
keeping glibc from returning a step's large buffers to the system only to fault them
in again at the next step.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import threading

import numpy as np
from threadpoolctl import ThreadpoolController

from netdsl.ops import parallel
from netdsl.ops.parallel import CHUNK_BYTES, MIN_SPLIT_BYTES, SLABS_PER_THREAD, even_slabs
from netdsl.switches import flag

__all__ = ["on_host", "to_host", "read_scalars", "host_threads", "blas_threads",
           "one_blas_thread", "steady_allocations", "SLABS_PER_THREAD", "split", "splitting",
           "DIRECT_COUNT"]

# BLAS's thread count read through OpenBLAS's own getter, bound once (True, or
# NETDSL_BLAS_COUNT_DIRECT=0: threadpoolctl's query at every call, as before): the query
# took 4-5 us through threadpoolctl's Python layers, at each dense GEMM of a step
DIRECT_COUNT = flag("NETDSL_BLAS_COUNT_DIRECT", True)

_crew = None     # the worker threads, made on first use
_blas = None     # threadpoolctl's controllers of the loaded BLAS libraries
_count = None    # () -> the threads BLAS runs on now, made on first use
_running = threading.Lock()  # held while slabs run: a split inside a slab runs serially
_slabs_running = 1  # how many slabs run at once now: they share the chunk budget
_step_threads = None  # inside one_blas_thread(): the threads BLAS had, which ops split over
_per_thread = None  # inside slabs_per_thread(): the slabs per thread of the ops split now


# ---- allocations


def steady_allocations() -> bool:
    """Serve buffers below 32 MiB from the heap and keep up to 64 MiB of freed memory.

    glibc's malloc maps a large buffer afresh and unmaps it when freed, so a training
    step that makes the same arrays every step pays a page fault per 4 KiB of each (a
    tenth of an LSTM's step); its adaptive threshold also makes one run's speed depend on
    what was freed before. Fixed thresholds make every step reuse the last one's memory.
    Returns whether they were set (glibc only)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt's parameters, from malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)
                and libc.mallopt(m_trim_threshold, 64 << 20))


# ---- host and device


def on_host(xp) -> bool:
    """Whether arrays of `xp` live in host memory, where reading one costs nothing (NumPy),
    rather than on a device, where reading one waits for the device (CuPy)."""
    return xp is np


def to_host(xp, a):
    """An array of `xp` as a NumPy array: copied from the device (`xp.asnumpy`, CuPy's
    `.get()`), or `a` itself on the host. `np.asarray` of a CuPy array raises."""
    if isinstance(a, np.ndarray):
        return a
    asnumpy = getattr(xp, "asnumpy", None)
    return np.asarray(a) if asnumpy is None else asnumpy(a)


def read_scalars(xp, values) -> list[float]:
    """Python floats of many 0-d arrays (losses, counts): on a device in one transfer, so
    the host waits for the device once rather than once per value."""
    values = list(values)
    if on_host(xp) or not values:
        return [float(v) for v in values]
    stacked = xp.stack([xp.asarray(v, dtype=xp.float64).reshape(()) for v in values])
    return [float(v) for v in to_host(xp, stacked)]


# ---- threads


def _blas_controllers() -> tuple:
    """threadpoolctl's handles on the loaded BLAS libraries."""
    global _blas
    if _blas is None:
        _blas = tuple(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _blas


def _getter(controller):
    """() -> one BLAS library's thread count now: OpenBLAS's getter called straight
    through ctypes (0.3 us) where its threads are its own, else threadpoolctl's query.
    Read at each call, not kept: whoever sets the count (threadpoolctl's limits, this
    module's sections, OpenBLAS's own calls) is followed without being told."""
    if DIRECT_COUNT and getattr(controller, "internal_api", None) == "openblas" \
            and getattr(controller, "threading_layer", None) != "openmp":
        for symbol in getattr(controller, "check_symbols", ()):
            function = getattr(controller.dynlib, symbol, None)
            if function is not None:
                address = ctypes.cast(function, ctypes.c_void_p).value
                return ctypes.CFUNCTYPE(ctypes.c_int)(address)
    return controller.get_num_threads


def _counter():
    """() -> the most threads any loaded BLAS runs on now (1 where none is found)."""
    getters = tuple(_getter(c) for c in _blas_controllers())
    if not getters:
        return lambda: 1
    if len(getters) == 1:
        return getters[0]
    return lambda: max(get() or 1 for get in getters)


def blas_threads() -> int:
    """The threads BLAS runs a GEMM on now (1 within one_blas_thread())."""
    global _count
    if _count is None:
        _count = _counter()
    return _count() or 1


def host_threads() -> int:
    """The threads an op may split over: those BLAS may use (within one_blas_thread(),
    those it had)."""
    if _step_threads is not None:
        return _step_threads
    return blas_threads()


@contextlib.contextmanager
def one_blas_thread(xp, active: bool = True):
    """Run a stretch of ops (an executor's pass) with BLAS on one thread, the ops
    splitting their work over the threads BLAS had instead; a no-op unless `active`.
    An executor makes it active where an op splits its work (its class sets
    `host_split`): BLAS's own threads did worse there, since a GEMM of a few MFLOP waits
    for all of them and they spin on after it. With another process on a core,
    ResNet-20's step took a quarter longer than on one thread, and switching BLAS's
    threads for each op that splits cost as much."""
    global _step_threads
    controllers = _blas_controllers() if xp is np and active else ()
    if _step_threads is not None or not controllers:
        yield
        return
    blas_threads = [c.num_threads for c in controllers]
    for c in controllers:
        c.set_num_threads(1)
    _step_threads = max(blas_threads)
    try:
        yield
    finally:
        _step_threads = None
        for c, n in zip(controllers, blas_threads):
            c.set_num_threads(n)


@parallel.slabs.provide("numpy")
def _slabs(xp, total: int, size: int = MIN_SPLIT_BYTES) -> list[slice]:
    """range(total) in even, contiguous slices, SLABS_PER_THREAD (or slabs_per_thread's)
    per thread BLAS may use; a single slice for small ops, or inside another split."""
    if size < MIN_SPLIT_BYTES or _running.locked():
        return [slice(0, total)]
    return even_slabs(total, host_threads(), _per_thread)


@contextlib.contextmanager
def slabs_per_thread(count: int):
    """Split the ops run meanwhile in `count` slabs per thread, not SLABS_PER_THREAD: for
    an op whose slabs each carry a fixed cost (their own partial sums), where fewer slabs
    cost less CPU than the balance more of them give. Ops run one at a time, and a split
    inside a slab runs whole, so the setting is the running op's alone."""
    global _per_thread
    previous, _per_thread = _per_thread, count
    try:
        yield
    finally:
        _per_thread = previous


class _Crew:
    """Worker threads that each wait on a lock of their own: handing them a function is
    a lock's release, and its end another's (ThreadPoolExecutor's futures and queue took
    twice as long a hand-over). One hand-over runs at a time (`_running`)."""

    def __init__(self, size: int):
        self._work = None
        self._failure = None
        self._start = [threading.Lock() for _ in range(size)]
        self._done = [threading.Lock() for _ in range(size)]
        for lock in (*self._start, *self._done):
            lock.acquire()
        for start, done in zip(self._start, self._done):
            threading.Thread(target=self._serve, args=(start, done), daemon=True,
                             name="netdsl-slabs").start()

    def _serve(self, start, done) -> None:
        while True:
            start.acquire()
            try:
                self._work()
            except BaseException as exc:  # raised again in the thread that handed it over
                self._failure = exc
            done.release()

    def run(self, work, helpers: int) -> None:
        """work() on this thread and on `helpers` workers at once; returns when all end."""
        self._work, self._failure = work, None
        for start in self._start[:helpers]:
            start.release()
        try:
            work()
        finally:
            for done in self._done[:helpers]:
                done.acquire()
            # not kept until the next hand-over: its closure may hold a step's arrays
            self._work = None
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure


def _forget_crew() -> None:
    """A forked child has none of its parent's threads: it makes its own crew."""
    global _crew
    _crew = None


os.register_at_fork(after_in_child=_forget_crew)


def split(total: int, size: int = MIN_SPLIT_BYTES) -> list[slice]:
    """The slabs an op over `size` bytes splits range(total) into now (ops.parallel's
    `slabs` for NumPy): for a runtime that hands them to threads of its own."""
    return _slabs(np, total, size)


@contextlib.contextmanager
def splitting(threads: int):
    """While `threads` threads run an op's slabs at once: one split at a time (a split
    inside a slab runs whole), the slabs share the chunk budget, and BLAS runs on one
    thread in each (inside one_blas_thread() it does already): BLAS's own threads would
    fight the slabs' for the cores."""
    global _slabs_running
    with _running:
        _slabs_running = threads
        controllers = _blas_controllers() if _step_threads is None else ()
        blas_threads = [c.num_threads for c in controllers]
        for c in controllers:
            c.set_num_threads(1)
        try:
            yield
        finally:
            _slabs_running = 1
            for c, n in zip(controllers, blas_threads):
                c.set_num_threads(n)


@parallel.slab_map.provide("numpy")
def _slab_map(xp, fn, total: int, size: int = MIN_SPLIT_BYTES) -> list:
    """[fn(slab) for slab in slabs], on all threads at once: each takes the next slab
    nobody has started until none is left."""
    global _crew
    slabs = _slabs(xp, total, size)
    if len(slabs) == 1:
        return [fn(slabs[0])]
    threads = min(host_threads(), len(slabs))
    with splitting(threads):
        if _crew is None:
            _crew = _Crew(max(1, (os.cpu_count() or 2) - 1))
        results = [None] * len(slabs)
        claim = itertools.count()  # next() is atomic under the GIL

        def work():
            while (i := next(claim)) < len(slabs):
                results[i] = fn(slabs[i])

        _crew.run(work, threads - 1)
        return results


@parallel.chunk_budget.provide("numpy")
def _chunk_budget(xp, budget: int | None = None) -> int:
    """CHUNK_BYTES shared by the slabs running at once, unless a budget is given."""
    return CHUNK_BYTES // _slabs_running if budget is None else budget
