"""Recurrences as compiled loops: one C call runs every time step, one runs BPTT.

`CompiledLoops` stands beside runtime.loops for an executor of the native target. A
loop that netdsl.lower.native_loop covers runs through its generated functions: the
values of every member with storage are (T, B, width) arrays written by the forward
call and read back by the backward one; what crosses the loop's edges (the sequences it
reads, the stored members later steps read, the gradients of both, the parameters' and
the initial states' gradients) is exchanged with the executor exactly as the loop
interpreted step by step does, a padded batch's lengths included. Truncated BPTT's
reach, a finiteness check, or a loop the generator does not cover runs the interpreted
loop instead.
"""
from __future__ import annotations

import ctypes
from collections import Counter

import numpy as np

from netdsl.lower.native_loop import LoopKernel, loop_kernel
from netdsl.lower.schedule import SEQ, STATE, LoopSegment
from netdsl.runtime.loops import add_grad, initial_values, loop_lengths, note_lengths
from netdsl.runtime.native.blas import gemm
from netdsl.runtime.native.toolchain import NativeUnavailable, build

__all__ = ["CompiledLoops", "compile_loop", "default_needs"]

_SIGNATURE = [ctypes.c_void_p, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_void_p]


class _Run:
    """What a compiled forward leaves for its backward."""

    def __init__(self, kernel, storage, seqs, initials, params):
        self.kernel = kernel
        self.storage, self.seqs, self.initials, self.params = storage, seqs, initials, params
        self.lengths = None   # each sequence's steps, in a padded batch


def default_needs(lowered, segment: LoopSegment) -> dict:
    """Per member, the inputs the default backward differentiates (a loop's kernel is
    made for one such set; another backward compiles its own)."""
    backward = lowered.backward()
    return {s.node: tuple(x is not None for x in backward.grad_inputs[s.node])
            for s in segment.steps if s.node in backward.grad_inputs}


def compile_loop(segment: LoopSegment, types: dict, dtype: str, needs: dict,
                 padded: bool = False):
    """(kernel, forward function, backward function) of a loop, or None when the
    generator does not cover it or the compiler fails on it."""
    _, integer, symbol = gemm(dtype)
    kernel = loop_kernel(segment, types, dtype, needs, integer, symbol, padded)
    if kernel is None:
        return None
    try:
        library = build(kernel.source)
    except NativeUnavailable:
        return None
    functions = []
    for name in ("loop_forward", "loop_backward"):
        function = getattr(library, name)
        function.restype, function.argtypes = None, _SIGNATURE
        functions.append(function)
    return (kernel, *functions)


class CompiledLoops:
    """The compiled loops of one executor (numpy, the native target)."""

    def __init__(self, ex):
        self.ex = ex
        self.address = gemm(ex.dtype)[0]
        self._made: dict = {}    # (loop, needs) -> (kernel, forward, backward) or None
        self.runs: dict[str, _Run] = {}
        self.calls: Counter = Counter()   # compiled passes run, "forward" and "backward"

    def _compiled(self, segment: LoopSegment, needs: dict, padded: bool):
        key = (segment.loop.name, tuple(sorted(needs.items())), padded)
        if key not in self._made:
            self._made[key] = compile_loop(segment, self.ex.plan.types, self.ex.dtype, needs,
                                           padded)
        return self._made[key]

    def forward(self, segment: LoopSegment, values: dict, carry: dict,
                check_finite: bool) -> bool:
        """Run the loop compiled, if it can be; whether it ran."""
        ex = self.ex
        self.runs.pop(segment.loop.name, None)
        if check_finite or ex.reach is not None:
            return False
        lengths, source = loop_lengths(ex, segment)
        made = self._compiled(segment, default_needs(ex.lowered, segment), lengths is not None)
        if made is None:
            return False
        kernel, forward, _ = made
        B, dtype = ex.size, ex.dtype
        T = ex.time[segment.loop.name] = int(values[kernel.seqs[0]].shape[0])
        storage = {n: np.empty((kernel.rows(n, T), B, kernel.widths[n]), dtype)
                   for n in kernel.storage}
        seqs = {n: np.ascontiguousarray(values[n], dtype=dtype) for n in kernel.seqs}
        initials = {s.node: np.ascontiguousarray(initial_values(ex, s, carry), dtype=dtype)
                    for s in kernel.states}
        by_node = {s.node: s for s in segment.steps}
        params = {(node, name): np.ascontiguousarray(ex.param_args(by_node[node])[name], dtype)
                  for node, name in kernel.params}
        run = _Run(kernel, storage, seqs, initials, params)
        if lengths is not None:
            run.lengths = np.ascontiguousarray(ex.host_lengths[source], dtype=np.int64)
        forward(self.address, T, B, self._table(run, {}))
        self.calls["forward"] += 1
        values.update({n: storage[n] for n in segment.stored})
        if lengths is not None:
            mask = np.arange(T)[:, None] < lengths[None, :]
            note_lengths(ex, segment, {n: storage[n] for n in segment.stored}, source, mask)
        for source, depth in segment.depth.items():
            ex.carry[source] = storage[source][max(T - depth, 0):] if T >= depth else None
        self.runs[segment.loop.name] = run
        return True

    def _table(self, run: _Run, grads: dict):
        """The slots' pointers, in the kernel's order (netdsl.lower.native_loop)."""
        k = run.kernel
        arrays = ([run.storage[n] for n in k.storage] + [run.seqs[n] for n in k.seqs]
                  + [run.initials[s.node] for s in k.states] + [run.params[p] for p in k.params]
                  + ([run.lengths] if run.lengths is not None else []))
        if grads:
            arrays += ([grads["value"][n] for n in k.storage] + [grads["seq"][n] for n in k.seqs]
                       + [grads["init"][s.node] for s in k.states])
        run.keep = arrays   # alive while the call runs
        return (ctypes.c_void_p * len(arrays))(*(a.ctypes.data for a in arrays))

    def backward(self, segment: LoopSegment, grads: dict, owned: set, backward,
                 wanted: set) -> bool:
        """BPTT through a loop the compiled forward ran; whether it ran here."""
        ex = self.ex
        run = self.runs.get(segment.loop.name)
        if run is None:
            return False
        needs = {s.node: tuple(x is not None for x in backward.grad_inputs[s.node])
                 for s in segment.steps if s.node in wanted and s.node in backward.grad_inputs}
        made = self._compiled(segment, needs, run.lengths is not None)
        if made is None:   # the forward's loop compiled: only the compiler can fail here
            raise NativeUnavailable(f"{segment.loop.name}: its backward did not compile")
        kernel, _, backward_call = made
        T, B, dtype = ex.time[segment.loop.name], ex.size, ex.dtype
        value_grads = {}
        for n in kernel.storage:
            outside = grads.pop(n, None) if n in wanted else None
            shape = (kernel.rows(n, T, grad=True), B, kernel.widths[n])
            if outside is None:
                value_grads[n] = np.zeros(shape, dtype)
            elif n in owned and _writable(outside, shape, dtype):
                value_grads[n] = outside    # this pass made it: the kernel adds into it
            else:
                value_grads[n] = np.array(outside, dtype=dtype, order="C")
        slots = {"value": value_grads,
                 "seq": {n: np.zeros((T, B, kernel.widths[n]), dtype) for n in kernel.seqs},
                 "init": {s.node: np.zeros_like(run.initials[s.node]) for s in kernel.states}}
        run.kernel = kernel
        backward_call(self.address, T, B, self._table(run, slots))
        self.calls["backward"] += 1
        self._deliver(segment, run, slots, grads, owned, backward, wanted)
        self.runs.pop(segment.loop.name, None)
        return True

    def _deliver(self, segment, run: _Run, slots, grads, owned, backward, wanted):
        """The gradients that leave the loop, as the interpreted loop hands them over, and
        the dense layers' weight gradients: one GEMM over all T*B rows each."""
        ex, kernel = self.ex, run.kernel
        read = {r.ref for step, route in zip(segment.steps, segment.routes)
                if step.node in wanted for r, target in zip(route, backward.grad_inputs[step.node])
                if target is not None and r.kind == SEQ}
        for n in kernel.seqs:
            if n in read:
                add_grad(grads, owned, n, slots["seq"][n], fresh=True)
        for step, route in zip(segment.steps, segment.routes):
            if step.node in wanted and step.params:
                gy = slots["value"][step.node]
                param_grads = {"weight": self._weight_grad(gy, route[0], run)}
                if "bias" in step.params:
                    param_grads["bias"] = gy.reshape(-1, gy.shape[-1]).sum(axis=0)
                ex.store_param_grads(step, param_grads)
        if ex.carried:
            return
        for state in kernel.states:
            if state.param is not None:
                ex.store_param_grad(state.param, slots["init"][state.node].sum(axis=(0, 1)))

    def _weight_grad(self, gy, route, run: _Run):
        """A dense layer's weight gradient over every step: gy (T, B, units) against its
        input's values at each step. A state's values are its source's, shifted by the
        delay, with the initial values first: two GEMMs, no shifted copy."""
        def product(g, x):
            return g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1])

        if route.kind != STATE:
            return product(gy, self._series(route, run))
        state = route.ref
        values = run.storage[state.source]
        d = min(state.delay, len(values))
        grad = product(gy[:d], run.initials[state.node][:d])
        if d < len(values):
            grad += product(gy[d:], values[:len(values) - d])
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
