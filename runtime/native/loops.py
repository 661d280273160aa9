"""Recurrences as compiled loops: one C call runs every time step, one runs BPTT.

`CompiledLoops` stands beside runtime.loops for an executor of the native target. A
loop that netdsl.lower.native_loop covers runs through its generated functions: the
values of every member with storage are (T, B, width) arrays written by the forward
call and read back by the backward one; what crosses the loop's edges (the sequences it
reads, the stored members later steps read, the gradients of both, the parameters' and
the initial states' gradients) is exchanged with the executor exactly as the loop
interpreted step by step does, a padded batch's lengths included. Checkpointed
(bptt(checkpoint=k), runtime.recompute), the same two functions run on spans of k
steps: forward on each in turn, then, last span first, forward again from its
checkpoint and backward. Truncated BPTT's reach, a finiteness check, or a loop the
generator does not cover runs the interpreted loop instead.

A loop whose step's GEMMs multiply-add at least POOL_MIN_MACS may run its pooled
functions (LoopKernel.pooled), BLAS held at one thread during the call. With
NETDSL_LOOP_POOL=1 (LOOP_POOL) and more than one host thread, each step's GEMMs split at
their output's columns and its passes at the batch's rows over the process's thread pool
(runtime.native.pool). The pass then runs with BLAS on one thread, its other GEMMs (the
hoisted projection, the weight gradients after the loop, a dense head) split over the
same pool (STEP_POOL, runtime.native.split_gemm), so that no OpenBLAS worker spins
beside the pool's; NETDSL_LOOP_STEP_POOL=0 leaves those on BLAS's threads and parks
OpenBLAS's workers before each split call instead (PARK_BLAS). On by default since the
whole pass went on the pool: on a quiet machine W4's pooled step won 58 of 60 blocks of
25 steps against the whole-batch one (docs/cpu.md); NETDSL_LOOP_POOL=0 turns it off. On
one host thread a float32 loop runs them on one part, its weights packed once a call for
a GEMM of the generated C's own (LoopKernel.packed), which beats BLAS's there;
NETDSL_LOOP_PACK=0 (LOOP_PACK) leaves it the whole-batch functions, and keeps BLAS's
GEMM in the pooled ones.
"""
from __future__ import annotations

import ctypes
from collections import Counter

import numpy as np

from netdsl.lower.native_loop import LoopKernel, loop_kernel
from netdsl.lower.schedule import SEQ, STATE, LoopSegment
from netdsl.runtime.host import host_threads, one_blas_thread
from netdsl.runtime.loops import add_grad, initial_values, loop_lengths, note_lengths
from netdsl.runtime.native.blas import gemm
from netdsl.runtime.native.pool import park_blas_workers, pool_address
from netdsl.runtime.native.split_gemm import on_pool, split_matmul
from netdsl.runtime.recompute import (Handback, advance_tail, loop_inputs, span_initials,
                                      span_rows, spans)
from netdsl.runtime.native.toolchain import NativeUnavailable, build
from netdsl.switches import flag

__all__ = ["CompiledLoops", "compile_loop", "default_needs"]

_NOTHING = np.empty(0, np.uint8)   # in a slot the function called does not read
_SIGNATURE = [ctypes.c_void_p, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_void_p]
# a pooled function's: the GEMM, pool_run, the parts, T, B, the slots
_POOLED_SIGNATURE = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong, ctypes.c_longlong,
                     ctypes.c_longlong, ctypes.c_void_p]

# whether a loop splits its steps over the thread pool on more than one host thread: on
# a quiet machine W4's pooled step, its whole pass on the pool, won 58 of 60 blocks of 25
# steps against the whole-batch one (block medians 18.0-27.2 ms against 19.9-26.6,
# docs/cpu.md); the earlier split with BLAS's threads beside it was not steady
LOOP_POOL = flag("NETDSL_LOOP_POOL", True)
# whether a split loop whose pass keeps BLAS's threads (STEP_POOL off) stops OpenBLAS's
# workers first, which spin after each GEMM on the cores the pool needs: spinning, W4's
# split step lost on a quiet machine (the shorter in 10 of 60 alternating steps, 14.0
# against 8.6 ms), parked it won (docs/cpu.md)
PARK_BLAS = flag("NETDSL_PARK_BLAS", True)
# whether a pass whose loop splits its steps over the pool runs with BLAS on one thread
# throughout, its other GEMMs (the hoisted projection, the weight gradients, a dense
# head) split over the same pool: no OpenBLAS worker then runs, to spin beside the pool's
# (NETDSL_LOOP_STEP_POOL=0: those GEMMs on BLAS's threads, its workers parked before each
# split call, as PARK_BLAS says)
STEP_POOL = flag("NETDSL_LOOP_STEP_POOL", True)
# whether a pooled float32 loop multiplies by its weights packed once a call, with a GEMM
# of its own, rather than by OpenBLAS's, which packs a part's block again at every step;
# and whether one host thread runs such a loop's pooled functions, on one part
LOOP_PACK = flag("NETDSL_LOOP_PACK", True)
# the multiply-adds a step's GEMMs must do for the split to pay: W5's (32x64 by 64x64,
# 131 K, about 3 us) took longer pooled, 0.36 and 0.45 ms a call at best against 0.33
# and 0.29 whole; W4's (2.1 M) less (docs/cpu.md)
POOL_MIN_MACS = 1 << 20
# whether a recurrent weight's gradient leaves out the product of the step-0 rows of its
# output's gradient with a state's values before the start where those are zeros by the
# state's declaration (an LSTM's h[t-1] from zeros: W4's 512x32x128, 0.4-0.5 ms of CPU a
# step, a GEMM of small depth on one core's pace); NETDSL_LOOP_ZERO_START=0 multiplies
# by the zeros as before
ZERO_START = flag("NETDSL_LOOP_ZERO_START", True)


class _Run:
    """What a compiled forward (of the whole loop, or of a span) leaves for its backward."""

    def __init__(self, kernel, storage, seqs, initials, params, transposed):
        self.kernel = kernel
        self.storage, self.seqs, self.initials, self.params = storage, seqs, initials, params
        self.transposed = transposed   # LoopKernel.transposed's copies, made once a pass
        self.lengths = None        # each sequence's steps, in a padded batch, as the kernel reads
        self.host_lengths = None   # the same from the loop's step 0 (checkpointed runs)
        self.spans = None          # checkpointed: (start, stop, initial values) per span
        self.inputs = None         # checkpointed: the sequences read (runtime.recompute)
        self.zero_start = frozenset()   # states whose values before step 0 are zeros


def _span_lengths(lengths, start: int):
    """The lengths a kernel run from step `start` reads: counted from it (at least 1 from
    step 0, where no sequence is empty: the interpreted loop holds nothing at step 0)."""
    if lengths is None:
        return None
    counted = np.asarray(lengths, dtype=np.int64) - start
    return np.ascontiguousarray(np.maximum(counted, 1) if start == 0 else counted)


def _starts_at_zero(state, carry: dict) -> bool:
    """Whether a state's values before step 0 are zeros by its declaration: not carried
    from an earlier batch, not a value of the pass, not learned, its init zero (as
    runtime.loops' initial_values makes them)."""
    if carry.get(state.source) is not None or state.start is not None:
        return False
    if state.init == "zeros":
        return True
    try:
        return state.init != "learned" and float(state.init) == 0.0
    except (TypeError, ValueError):
        return False


def default_needs(lowered, segment: LoopSegment) -> dict:
    """Per member, the inputs the default backward differentiates (a loop's kernel is
    made for one such set; another backward compiles its own)."""
    backward = lowered.backward()
    return {s.node: tuple(x is not None for x in backward.grad_inputs[s.node])
            for s in segment.steps if s.node in backward.grad_inputs}


def compile_loop(segment: LoopSegment, types: dict, dtype: str, needs: dict,
                 padded: bool = False, pooled: bool = False, packed: bool = False):
    """(kernel, forward function, backward function) of a loop, or None when the
    generator does not cover it or the compiler fails on it. `pooled`: the functions
    that split each step over the thread pool; `packed`: theirs multiply by weights
    packed once a call (netdsl.lower.native_loop)."""
    _, integer, symbol = gemm(dtype)
    kernel = loop_kernel(segment, types, dtype, needs, integer, symbol, padded, pooled,
                         packed)
    if kernel is None:
        return None
    try:
        library = build(kernel.source)
    except NativeUnavailable:
        return None
    functions = []
    for name in ("loop_forward", "loop_backward"):
        function = getattr(library, name)
        function.restype = None
        function.argtypes = _POOLED_SIGNATURE if pooled else _SIGNATURE
        functions.append(function)
    return (kernel, *functions)


def step_macs(segment: LoopSegment, types: dict, rows: int) -> int:
    """The multiply-adds of one step's GEMMs over `rows` rows of the batch."""
    total = 0
    for step, route in zip(segment.steps, segment.routes):
        if step.op.column_linear and len(route) == 1:
            source = route[0].ref.source if route[0].kind == STATE else route[0].ref
            total += rows * _size(types[step.node].dims) * _size(types[source].dims)
    return total


def _size(dims) -> int:
    return int(np.prod(dims)) if dims else 1


def pooled_here(macs: int, dtype: str) -> bool:
    """Whether a loop whose steps do `macs` multiply-adds in GEMMs runs its pooled
    functions now (on host_threads() parts): at least POOL_MIN_MACS, a pool that builds,
    and LOOP_POOL on more than one host thread, or on one a float32 loop whose weights
    may be packed (LOOP_PACK), where the packed GEMM beats BLAS's (3.04 against 3.51 ms
    of CPU for W4's loop forward)."""
    if macs < POOL_MIN_MACS:
        return False
    if host_threads() > 1 and not LOOP_POOL:
        return False
    if host_threads() < 2 and not (LOOP_PACK and str(dtype) == "float32"):
        return False
    try:
        pool_address()
    except NativeUnavailable:
        return False
    return True


class CompiledLoops:
    """The compiled loops of one executor (numpy, the native target)."""

    def __init__(self, ex):
        self.ex = ex
        self.address = gemm(ex.dtype)[0]
        self._made: dict = {}    # (loop, needs) -> (kernel, forward, backward) or None
        self.runs: dict[str, _Run] = {}
        self.calls: Counter = Counter()   # compiled passes run, "forward" and "backward"

    def splits_pass(self, schedule) -> bool:
        """Whether a pass of `schedule` runs with BLAS on one thread and its GEMMs on the
        pool (STEP_POOL): a loop of it splits its steps over more than one host thread."""
        if not STEP_POOL or host_threads() < 2:
            return False
        types, size = self.ex.plan.types, self.ex.size
        return any(isinstance(segment, LoopSegment)
                   and pooled_here(step_macs(segment, types, size), self.ex.dtype)
                   for segment in schedule.segments)

    def _compiled(self, segment: LoopSegment, needs: dict, padded: bool, pooled: bool,
                  packed: bool | None = None):
        packed = LOOP_PACK if packed is None else packed
        key = (segment.loop.name, tuple(sorted(needs.items())), padded, pooled,
               pooled and packed)
        if key not in self._made:
            self._made[key] = compile_loop(segment, self.ex.plan.types, self.ex.dtype, needs,
                                           padded, pooled, packed)
        return self._made[key]

    def forward(self, segment: LoopSegment, values: dict, carry: dict,
                check_finite: bool, training: bool = True) -> bool:
        """Run the loop compiled, if it can be; whether it ran. Under the executor's
        `checkpoint` a training pass runs it in spans (runtime.recompute)."""
        ex = self.ex
        self.runs.pop(segment.loop.name, None)
        if check_finite or ex.reach is not None:
            return False
        lengths, source = loop_lengths(ex, segment)
        pooled = pooled_here(step_macs(segment, ex.plan.types, ex.size), ex.dtype)
        made = self._compiled(segment, default_needs(ex.lowered, segment), lengths is not None,
                              pooled)
        if made is None:
            return False
        kernel, forward, _ = made
        B, dtype = ex.size, ex.dtype
        T = ex.time[segment.loop.name] = int(values[kernel.seqs[0]].shape[0])
        seqs = {n: np.ascontiguousarray(values[n], dtype=dtype) for n in kernel.seqs}
        initials = {s.node: np.ascontiguousarray(initial_values(ex, s, carry, values),
                                                 dtype=dtype)
                    for s in kernel.states}
        by_node = {s.node: s for s in segment.steps}
        params = {(node, name): np.ascontiguousarray(ex.param_args(by_node[node])[name], dtype)
                  for node, name in kernel.params}
        transposed = {key: np.ascontiguousarray(params[key].T) for key in kernel.transposed}
        host_lengths = None if lengths is None else np.asarray(ex.host_lengths[source])
        every = ex.checkpoint if training else None
        if every is not None and every < T:
            storage, tail, run = self._forward_spans(segment, kernel, forward, seqs, initials,
                                                     params, transposed, host_lengths, T,
                                                     every)
        else:
            storage = {n: np.empty((kernel.rows(n, T), B, kernel.widths[n]), dtype)
                       for n in kernel.storage}
            run = _Run(kernel, storage, seqs, initials, params, transposed)
            run.lengths, run.host_lengths = _span_lengths(host_lengths, 0), host_lengths
            self._call(kernel, forward, T, self._table(run, {}))
            run.transposed = None   # backward multiplies by the weights as they are
            tail = {source: storage[source][max(T - depth, 0):]
                    for source, depth in segment.depth.items()}
        run.zero_start = frozenset(s.node for s in kernel.states if _starts_at_zero(s, carry))
        self.calls["forward"] += 1
        made_here = {n: storage[n] for n in segment.stored if n in storage}
        values.update(made_here)
        if lengths is not None:
            mask = np.arange(T)[:, None] < lengths[None, :]
            note_lengths(ex, segment, made_here, source, mask)
        for source, depth in segment.depth.items():
            ex.carry[source] = tail[source] if T >= depth else None
        self.runs[segment.loop.name] = run
        return True

    def _forward_spans(self, segment, kernel, forward, seqs, initials, params, transposed,
                       lengths, T, every):
        """The checkpointed forward: the kernel run on spans of `every` steps, the members
        read after the loop written whole, the others into one span's room; what each
        span starts from kept for backward. (those members, the sources' last rows, the
        run)."""
        B, dtype = self.ex.size, self.ex.dtype
        after = [n for n in segment.stored if n not in segment.frees]
        whole = {n: np.empty((T, B, kernel.widths[n]), dtype) for n in after}
        scratch = {n: np.empty((kernel.rows(n, every), B, kernel.widths[n]), dtype)
                   for n in kernel.storage if n not in whole}
        run = _Run(kernel, None, None, initials, params, transposed)
        run.spans, run.host_lengths, tail = [], lengths, {}
        run.inputs = loop_inputs(self.ex, segment, seqs)
        for start, stop in spans(T, every):
            begin = {s.node: np.ascontiguousarray(v) for s, v in zip(kernel.states, span_initials(
                np, kernel.states, initials, tail, start).values())}
            part = _Run(kernel, {**{n: a[start:stop] for n, a in whole.items()},
                                 **{n: a[:kernel.rows(n, stop - start)]
                                    for n, a in scratch.items()}},
                        {n: a[start:stop] for n, a in seqs.items()}, begin, params, transposed)
            part.lengths = _span_lengths(lengths, start)
            self._call(kernel, forward, stop - start, self._table(part, {}))
            run.spans.append((start, stop, begin))
            tail = advance_tail(np, tail, part.storage, segment.depth)
        return whole, tail, run

    def _call(self, kernel: LoopKernel, function, steps: int, table) -> None:
        """Run a loop's function over the batch's rows. Blocks of rows on threads of their
        own for the whole loop, BLAS on one thread each, lost on a quiet machine (W4's
        step 10.9-11.1 ms split against 8.4-8.5 whole, docs/cpu.md). A pooled function
        splits each step instead, its parts calling BLAS on one thread, OpenBLAS's spinning
        workers stopped first (PARK_BLAS) unless the whole pass held BLAS at one thread
        (STEP_POOL): parked, OpenBLAS starts them again when its thread count is set, and
        a fresh worker spins too."""
        if not kernel.pooled:
            function(self.address, steps, self.ex.size, table)
            return
        with one_blas_thread(np):
            parts = host_threads()
            if parts > 1 and PARK_BLAS and not on_pool():   # else no worker has run
                park_blas_workers()
            function(self.address, pool_address(), parts, steps, self.ex.size, table)

    def _table(self, run: _Run, grads: dict):
        """The slots' pointers, in the kernel's order (netdsl.lower.native_loop)."""
        k = run.kernel
        arrays = ([run.storage[n] for n in k.storage] + [run.seqs[n] for n in k.seqs]
                  + [run.initials[s.node] for s in k.states] + [run.params[p] for p in k.params]
                  + [_NOTHING if run.transposed is None else run.transposed[p]
                     for p in k.transposed]
                  + ([run.lengths] if run.lengths is not None else [])
                  # the room its functions pack weights into, for this call
                  + ([np.empty(max(k.pack_floats, 1), np.float32)]
                     if k.pack_floats is not None else []))
        if grads:
            arrays += ([grads["value"][n] for n in k.storage] + [grads["seq"][n] for n in k.seqs]
                       + [grads["init"][s.node] for s in k.states])
        run.keep = arrays   # alive while the call runs
        return (ctypes.c_void_p * len(arrays))(*(a.ctypes.data for a in arrays))

    def backward(self, segment: LoopSegment, grads: dict, owned: set, backward,
                 wanted: set) -> bool:
        """BPTT through a loop the compiled forward ran; whether it ran here."""
        ex = self.ex
        run = self.runs.pop(segment.loop.name, None)
        if run is None:
            return False
        needs = {s.node: tuple(x is not None for x in backward.grad_inputs[s.node])
                 for s in segment.steps if s.node in wanted and s.node in backward.grad_inputs}
        made = self._compiled(segment, needs, run.host_lengths is not None, run.kernel.pooled,
                              run.kernel.packed)
        if made is None:   # the forward's loop compiled: only the compiler can fail here
            raise NativeUnavailable(f"{segment.loop.name}: its backward did not compile")
        kernel, forward, backward_call = made
        T, B, dtype = ex.time[segment.loop.name], ex.size, ex.dtype
        outside = {n: grads.pop(n) for n in kernel.storage if n in wanted and n in grads}
        seq_grads = {n: np.zeros((T, B, kernel.widths[n]), dtype) for n in kernel.seqs}
        # a member whose gradient is a sequence's (LoopKernel.aliases) writes into it
        aliased = {member: seq_grads[seq] for seq, member in kernel.aliases.items()}
        init_grads = {s.node: np.zeros_like(run.initials[s.node]) for s in kernel.states}
        if run.spans is None:
            spans_run = [(0, T, run, None)]
        else:   # last span first, each recomputed from its checkpoint
            spans_run = ((start, stop, self._recompute(kernel, forward, run, start, stop, begin),
                          begin) for start, stop, begin in reversed(run.spans))
        handback = Handback()
        for start, stop, part, begin in spans_run:
            n = stop - start
            value_grads = {m: aliased[m][start:stop] if m in aliased else
                           self._value_grad(kernel, m, n, outside, owned, start, stop, handback)
                           for m in kernel.storage}
            slots = {"value": value_grads,
                     "seq": {m: seq_grads[m][start:stop] for m in kernel.seqs},
                     "init": {s.node: (init_grads[s.node] if start == 0
                                       else np.zeros_like(begin[s.node])) for s in kernel.states}}
            part.kernel = kernel
            self._call(kernel, backward_call, n, self._table(part, slots))
            self._weight_grads(segment, part, slots, wanted)
            if start > 0:   # what reaches before the span: to the values it was read from
                for s in kernel.states:
                    for row, grad in enumerate(slots["init"][s.node]):
                        step = start - s.delay + row
                        if step >= 0:
                            handback.give(s.source, step, grad)
                        else:
                            init_grads[s.node][step + s.delay] += grad
        self.calls["backward"] += 1
        self._deliver(segment, kernel, seq_grads, init_grads, grads, owned, backward, wanted)
        return True

    def _value_grad(self, kernel, node: str, n: int, outside: dict, owned: set, start: int,
                    stop: int, handback: Handback):
        """A member's gradient array for a run of n steps from `start`: what came from
        after the loop (taken as it is, when this pass made it and the run is the whole
        loop: the kernel adds into it) and from later spans, else zeros."""
        ex = self.ex
        shape = (kernel.rows(node, n, grad=True), ex.size, kernel.widths[node])
        given = outside.get(node)
        pending = handback.take(node, start, stop)
        if given is not None and n == len(given) and not pending:
            if node in owned and _writable(given, shape, ex.dtype):
                return given
            return np.array(given, dtype=ex.dtype, order="C")
        rows = np.zeros(shape, ex.dtype)
        if given is not None:
            rows += given[start:stop]
        for row, grad in pending:
            rows[row] += grad
        return rows

    def _recompute(self, kernel, forward, run: _Run, start: int, stop: int, begin: dict) -> _Run:
        """A span's forward again, from its checkpoint, into room of its own."""
        B, dtype, n = self.ex.size, self.ex.dtype, stop - start
        storage = {m: np.empty((kernel.rows(m, n), B, kernel.widths[m]), dtype)
                   for m in kernel.storage}
        seqs = {m: np.ascontiguousarray(span_rows(run.inputs[m], start, stop), dtype)
                for m in kernel.seqs}
        part = _Run(kernel, storage, seqs, begin, run.params, run.transposed)
        part.lengths = _span_lengths(run.host_lengths, start)
        part.zero_start = run.zero_start if start == 0 else frozenset()
        self._call(kernel, forward, n, self._table(part, {}))
        return part

    def _weight_grads(self, segment, run: _Run, slots, wanted) -> None:
        """The dense layers' weight gradients over a run's steps: one GEMM over all of
        their rows each."""
        for step, route in zip(segment.steps, segment.routes):
            if step.node in wanted and step.params:
                gy = slots["value"][step.node]
                param_grads = {"weight": self._weight_grad(gy, route[0], run)}
                if "bias" in step.params:
                    param_grads["bias"] = gy.reshape(-1, gy.shape[-1]).sum(axis=0)
                self.ex.store_param_grads(step, param_grads)

    def _deliver(self, segment, kernel, seq_grads, init_grads, grads, owned, backward, wanted):
        """The gradients that leave the loop, as the interpreted loop hands them over."""
        ex = self.ex
        read = {r.ref for step, route in zip(segment.steps, segment.routes)
                if step.node in wanted for r, target in zip(route, backward.grad_inputs[step.node])
                if target is not None and r.kind == SEQ}
        for n in kernel.seqs:
            if n in read:
                add_grad(grads, owned, n, seq_grads[n], fresh=True)
        if ex.carried:
            return
        for state in kernel.states:
            if state.param is not None:
                ex.store_param_grad(state.param, init_grads[state.node].sum(axis=(0, 1)))
            elif state.start is not None and state.start in wanted:  # `= last(encoded)`
                add_grad(grads, owned, state.start, init_grads[state.node].sum(axis=0))

    def _weight_grad(self, gy, route, run: _Run):
        """A dense layer's weight gradient over every step: gy (T, B, units) against its
        input's values at each step. A state's values are its source's, shifted by the
        delay, with the initial values first: two GEMMs, no shifted copy; one where the
        initial values are zeros by the state's declaration (ZERO_START), whose product
        would be zeros. (A NaN in the first rows' gradient is then not spread by 0 * NaN
        into the whole weight's gradient; the later rows' product carries what reaches it
        from later steps.)"""
        def product(g, x):   # on the pool's threads within gemms_on_pool
            g, x = g.reshape(-1, g.shape[-1]).T, x.reshape(-1, x.shape[-1])
            split = split_matmul(g, x)
            return g @ x if split is NotImplemented else split

        if route.kind != STATE:
            return product(gy, self._series(route, run))
        state = route.ref
        values, initials = run.storage[state.source], run.initials[state.node]
        d = min(state.delay, len(values))
        if ZERO_START and state.node in run.zero_start:
            grad = None
        else:
            grad = product(gy[:d], initials[:d])
        if d < len(values):
            rest = product(gy[d:], values[:len(values) - d])
            if grad is None:
                grad = rest
            else:
                grad += rest
        if grad is None:   # no step after the delay, and zeros before it
            grad = np.zeros((gy.shape[-1], initials.shape[-1]), gy.dtype)
        return grad

    def _series(self, route, run: _Run):
        """A sequence's or a member's values at every step, (T, B, width)."""
        if route.kind == SEQ:
            return run.seqs[route.ref]
        node, begin = route.ref, 0
        while node not in run.storage:   # a block of its parent's columns
            node, first = run.kernel.views[node]
            begin += first
        return run.storage[node][..., begin:begin + run.kernel.widths[route.ref]]


def _writable(array, shape: tuple, dtype) -> bool:
    """Whether a kernel may take `array` as its C-ordered `shape` of `dtype` as it is."""
    return (array.shape == shape and array.dtype == np.dtype(dtype)
            and array.flags.c_contiguous and array.flags.writeable)
