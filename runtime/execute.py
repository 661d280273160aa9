"""The executor: runs a lowered plan's training and evaluation passes on an array module.

One walker runs every network: a pass is the schedule's segments in order, each either
straight-line steps or a loop over time steps (runtime.loops), and backward walks them
in reverse. A feed-forward network is one straight segment.

Parameters, and their gradients, live in one flat vector each (the parameters of a
layer are views into it), so the optimiser updates the whole network in a handful of
vector operations and a checkpoint is one array. A value is dropped after the last step
that reads it; what backward needs stays in each step's saved arrays until its backward
has run. A host chain's followers (`Step.in_place`) write over their predecessor's
output; a fused step of the cuda target is one generated kernel each way.

Values with a time axis are held time-major, (T, B, *dims). Outside a loop a per-step
op folds time into the batch, (T*B, *dims), so the input projections of every step are
one GEMM. A batch may pad sequences of different lengths (`NAME.lengths`): a loss then
leaves the padded rows out and whole-sequence ops read `ctx.lengths`.

The same class runs NumPy and CuPy: `xp` is the difference, with the random generator
(`CountedRng` off the host, whose state CuPy keeps on the device).
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from netdsl.lower import Backward, Lowered, Step
from netdsl.lower.arena import viewed
from netdsl.lower.memory import ARENA
from netdsl.lower.schedule import LoopSegment
from netdsl.ops.base import Ctx
from netdsl.runtime import cuda  # noqa: F401  registers the GPU's routines for CuPy
from netdsl.runtime import native
from netdsl.runtime.native import conv as native_conv
from netdsl.runtime.native import pooling  # noqa: F401  registers max pooling's kernels
from netdsl.runtime.native import dense as native_dense  # noqa: F401  registers the joined dense layers' passes
from netdsl.runtime.native.loops import CompiledLoops
from netdsl.runtime.host import host_threads, on_host, one_blas_thread, to_host
from netdsl.runtime.native import slabs
from netdsl.runtime.native.split_gemm import gemms_on_pool
from netdsl.runtime.loops import add_grad, backward_loop, forward_loop
from netdsl.runtime.rng import CountedRng
from netdsl.shapes import whole_positions

__all__ = ["Executor", "NonFinite"]


class NonFinite(Exception):
    """A NaN or Inf appeared: `node` made it, in the forward or the backward pass."""

    def __init__(self, node: str, phase: str):
        super().__init__(f"{phase} of {node} produced NaN or Inf")
        self.node, self.phase = node, phase


class _Call:
    """What every call of a step passes besides its inputs: its op's forward, whether it
    runs compiled programs, where its buffers are kept, its geometry, its parameters by
    the op's names (None for a column block, copied at each call) and, per parameter
    gradient the op may write in place, (name, key, view of the flat gradient vector).
    In a small network a step's Python costs as much as its op (an MLP's relu: 5 us of
    C in 12), so a call looks up only what a pass changes."""

    __slots__ = ("forward", "compiled", "buffers", "geometry", "kwargs", "grad_views")

    def __init__(self, step: Step, compiled: bool, kwargs, grad_views):
        self.forward, self.compiled = step.op.forward, compiled
        self.buffers = step.buffers_of or step.node
        self.geometry, self.kwargs, self.grad_views = step.geometry, kwargs, grad_views


class Executor:
    """Parameters, running statistics and per-step contexts of one lowered network.

    Parameters
    ----------
    lowered : Lowered
    params : dict
        Parameter key -> initial array (runtime.init.initial_params).
    seed : int
        Seeds dropout masks, noise and `normal` sources: a NumPy Generator on the host, a
        CountedRng elsewhere (see `rng_state`).
    xp : module
        numpy or cupy.
    order : list of str, optional
        Parameter keys in the order of the flat vectors (default: the plan's).

    After a forward pass `carry` holds, per state source, its values at the last steps
    (as many as the longest delay reads), ready to start the next chunk of a sequence;
    `reach` limits how far back a state's gradient flows (truncated BPTT's k2).
    """

    def __init__(self, lowered: Lowered, params: dict, seed: int = 0, xp=np,
                 dtype: str = "float32", order=None):
        self.lowered, self.plan, self.xp, self.dtype = lowered, lowered.plan, xp, dtype
        plan = self.plan
        self.offsets: dict[str, tuple[int, int]] = {}
        start = 0
        # `order` lays the flat vectors out (a GAN keeps each player's parameters together)
        for key in order or plan.params:
            param = plan.params[key]
            self.offsets[key] = (start, start + param.size)
            start += param.size
        self.flat_params = xp.zeros(start, dtype=dtype)
        self.params = self._views(self.flat_params)
        for key, value in params.items():
            self.params[key][...] = xp.asarray(value, dtype=dtype)
        # the gradient vector is made at its first use: by then a trainer has dropped the
        # initial values it copied from, which would otherwise be held beside both vectors
        self._flat_grads = self._grads = None
        self.rng = xp.random.default_rng(seed) if on_host(xp) else CountedRng(xp, seed)
        self.buffers: dict[str, dict] = {step.buffers_of or step.node: {} for step in plan.steps}
        self.ctxs: dict = {}
        # values with a time axis; a loss over a sequence is one number all the same
        losses = set(plan.losses.values())
        self.timed = {n for n, t in plan.types.items() if t.seq and n not in losses}
        # per step, the input positions read as whole sequences (attention's memory)
        self.whole = {s.node: whole_positions(s.op) for s in plan.steps}
        self.carry: dict | None = None
        self.reach: int | None = None
        # bptt(checkpoint=k): a training pass keeps a loop's states every k steps, and
        # backward recomputes the steps between (runtime.recompute); loop -> what it kept
        self.checkpoint: int | None = None
        self.recompute: dict = {}
        self._last = None      # the schedule the last forward ran, which backward reverses
        self._on_pool = False  # whether its passes run their GEMMs on the native pool
        self._written: set[str] = set()
        self._param_args: dict[str, dict] = {}  # step -> its parameters' views, by name
        # per step, what every call of it passes that no pass changes (made on first use)
        self._calls: dict[str, _Call] = {}
        # id(Backward) -> (it, its nodes, its params, per node which inputs need a gradient)
        self._backwards: dict[int, tuple] = {}
        self._needs: dict[str, tuple] = {}  # the running backward's last entry
        # per batch size, the values the memory plan lodges in the gradient vector: node
        # -> the view of flat_grads its step writes (netdsl.lower.memory.MemoryPlan.lodge)
        self._lodgings: dict[int, dict] = {}
        self._homes: dict = {}
        # the arena (netdsl.lower.arena): one block, made at the first training pass for
        # its batch, in which the values the plan places there are written; a smaller
        # batch (an epoch's last) writes the front of each value's place in it, a larger
        # one makes it anew. `arena_values`: whether passes use it (NETDSL_ARENA).
        # Per (batch, the pass's outputs, training): node -> the array its step writes
        self.arena_values = ARENA
        self._arena = self._arena_layout = None
        self._places: dict[tuple, dict] = {}
        self._scratch_batch = None   # the batch the slabs' kept scratch is bounded for
        # whether a pass may do so: the gradient vector then holds nothing meaningful from
        # a forward pass until backward writes it. A trainer allows it (it reads gradients
        # only between backward and the optimiser's step); a caller who runs a forward pass
        # after backward and reads the gradients then must not
        self.lodge_values = False
        # during a step `netc run --diagnose` records: the runtime.diagnostics.Probe shown
        # each node's value and gradient as they are made (None otherwise: no cost)
        self.observer = None
        self.compiled_loops = None
        # the steps whose ops run their own compiled programs (Op.programs, Ctx.compiled)
        self.compiled_ops = (frozenset(lowered.kernels) if lowered.target.op_programs
                             and on_host(xp) else frozenset())
        # the native target's convolutions: compiled kernels, chosen per layer
        self.native_conv = lowered.target.name == "native" and on_host(xp)
        if lowered.target.name == "native":   # raises NativeUnavailable without a compiler
            native.prepare([p for made in lowered.kernels.values() for p in made], dtype)
            if plan.loops and on_host(xp):
                try:
                    self.compiled_loops = CompiledLoops(self)
                except native.NativeUnavailable:  # no CBLAS to call: loops run interpreted
                    pass

    @property
    def flat_grads(self):
        """The gradients of every parameter, one flat vector laid out as `flat_params`."""
        if self._flat_grads is None:
            self._flat_grads = self.xp.zeros(self.flat_params.size, dtype=self.dtype)
            self._grads = self._views(self._flat_grads)
        return self._flat_grads

    @property
    def grads(self) -> dict:
        """Each parameter's gradient: views of `flat_grads`."""
        if self._grads is None:
            self.flat_grads
        return self._grads

    def _views(self, flat) -> dict:
        return {key: flat[a:b].reshape(self.plan.params[key].shape)
                for key, (a, b) in self.offsets.items()}

    def param_slice(self, keys) -> slice:
        """The part of the flat vectors holding `keys`, which must be contiguous."""
        spans = sorted(self.offsets[k] for k in keys)
        if any(a != b for (_, a), (b, _) in zip(spans, spans[1:])):
            raise ValueError("parameters are not contiguous in the flat layout")
        return slice(spans[0][0], spans[-1][1]) if spans else slice(0, 0)

    # ---- forward

    def forward(self, batch: dict, training: bool, keep=(), check_finite: bool = False,
                losses: bool = True, carry: dict | None = None) -> dict:
        """Run a pass; return the loss values and the values named in `keep`.

        `batch` arrays are batch-major, (B, T, ...) for sequences, and so are the values
        returned. In training mode each step keeps what its backward needs (until
        `backward`). With `losses` False only what `keep` needs runs, so targets may be
        absent. With `check_finite`, the first step whose output holds NaN or Inf raises
        NonFinite. `carry` (a previous pass's `self.carry`) replaces the states' initial
        values, as truncated BPTT's next chunk does.
        """
        xp, plan = self.xp, self.plan
        self._begin_pass()
        schedule = self._last = self.lowered.schedule_for(keep, losses)
        values = {name: self._time_major(batch[name], name) for name in plan.inputs
                  if name in batch}
        self.size = self._extent(values)
        if self.native_conv and slabs.KEEP_SCRATCH and self.size > (self._scratch_batch or 0):
            self._bound_scratch(self.size)   # the largest batch's: an epoch's last is smaller
        self._homes = (self._placed(self.size, schedule.outputs, training)
                       if self.lodge_values else {})
        self.time: dict[str, int] = {}  # folded step or loop -> the time steps it ran over
        # valid steps per example, per sequence value: from `NAME.lengths` in the batch,
        # passed on to what is computed from it; absent when every sequence is full. The
        # host keeps a copy, from which the rows a loss keeps are found without reading
        # the device
        self.host_lengths = {name: to_host(xp, batch[f"{name}.lengths"])
                             for name in values if f"{name}.lengths" in batch}
        self.lengths = {name: xp.asarray(host) for name, host in self.host_lengths.items()}
        self.valid, self.loop_masks = {}, {}  # loss -> its real rows; loop -> (T, B) mask
        self.ctxs, self.carried, self.carry = {}, carry is not None, {}
        self.recompute = {}
        # a loop splitting its steps over the native pool: every GEMM of the pass on it
        self._on_pool = bool(self.compiled_loops and self.compiled_loops.splits_pass(schedule))
        with (one_blas_thread(xp, schedule.host_split or self._on_pool),
              gemms_on_pool(self._on_pool),
              native_conv.in_use(self.native_conv)):
            for segment in schedule.segments:
                if isinstance(segment, LoopSegment):
                    compiled = self.compiled_loops
                    if not (compiled and compiled.forward(segment, values, carry or {},
                                                          check_finite, training)):
                        forward_loop(self, segment, values, training, carry or {},
                                     check_finite)  # shows the observer every time step
                    elif self.observer is not None:  # compiled: what it keeps, all steps
                        for name in segment.stored:
                            if name in values:
                                self.observer.value(name, values[name])
                    for name in segment.frees:
                        values.pop(name, None)  # checkpointed, a state source is not kept
                    continue
                if not self.timed:
                    self._straight(segment, values, training, check_finite)
                    continue
                for step, frees in zip(segment.steps, segment.frees):
                    values[step.node] = self._forward_step(step, values, training,
                                                           check_finite)
                    if self.observer is not None:
                        self.observer.value(step.node, values[step.node])
                    for name in frees:
                        del values[name]
        return {name: self._batch_major(values[name], name) for name in schedule.outputs}

    def _straight(self, segment, values: dict, training: bool, check_finite: bool) -> None:
        """The steps of a segment of a network without sequences: no folding, no lengths,
        and what each call needs besides its inputs made once (`_Call`)."""
        xp, rng, size, dtype = self.xp, self.rng, self.size, self.dtype
        ctxs, buffers, homes, observer = self.ctxs, self.buffers, self._homes, self.observer
        for step, frees in zip(segment.steps, segment.frees):
            node, call = step.node, self._call(step)
            ctx = ctxs[node] = Ctx(xp, training, rng, buffers[call.buffers], size, dtype)
            ctx.geometry, ctx.compiled = call.geometry, call.compiled
            xs = [values[s] for s in step.inputs]
            if step.in_place:  # a chain's follower writes over its predecessor's output
                ctx.out = xs[0]
            elif homes:
                ctx.out = homes.get(node)  # a value lodged in the gradient vector
            kwargs = self.param_args(step) if call.kwargs is None else call.kwargs
            if step.borrows:
                kwargs = dict(kwargs)
                for kw, (lender, saved) in step.borrows.items():
                    kwargs[kw] = ctxs[lender].saved[saved]
            y = values[node] = call.forward(ctx, *xs, **kwargs)
            ctx.out = None  # else the context would hold the array after its value is freed
            if check_finite:
                self.check(check_finite, y, node, "forward")
            if observer is not None:
                observer.value(node, y)
            for name in frees:
                del values[name]

    def _lodged(self, batch: int) -> dict:
        """The views of the gradient vector that values live in at `batch`. The memory
        plan puts a value there only where backward writes every gradient it covers after
        the value's last use, and never a value a pass returns."""
        homes = self._lodgings.get(batch)
        if homes is None:
            memory, types = self.lowered.memory, self.plan.types
            at = memory.lodge(batch, self.offsets) if memory is not None and not self.timed else {}
            homes = self._lodgings[batch] = {
                node: self.flat_grads[a:a + batch * types[node].size].reshape(
                    (batch,) + types[node].dims) for node, a in at.items()}
        return homes

    def _bound_scratch(self, batch: int) -> None:
        """The convolutions' kept slab scratch bounded by the memory plan's scratch figure
        at `batch`, shared by the host's threads (runtime.native.slabs.bound_scratch)."""
        self._scratch_batch = batch
        memory = self.lowered.memory
        if memory is not None:
            threads = host_threads()
            slabs.bound_scratch(memory.at(batch, threads=threads).scratch_bytes // threads)

    def _placed(self, batch: int, outputs, training: bool = True) -> dict:
        """Node -> the array its step writes: a view of the gradient vector for a value
        lodged there, else of the arena for one the plan places there (never a value a
        pass returns, nor one it returns a view of)."""
        homes = self._places.get((batch, outputs, training))
        if homes is None:
            homes = (dict(self._arena_views(batch, outputs, training)) if self.arena_values
                     else {})
            homes.update(self._lodged(batch))
            self._places[(batch, outputs, training)] = homes
        return homes

    def _arena_views(self, batch: int, outputs, training: bool) -> dict:
        """The arena's views for a pass at `batch`. Training passes make (or grow) the
        arena; an evaluation pass only uses one made for as large a batch, so that a large
        evaluation batch does not leave a large block held through training."""
        memory, types = self.lowered.memory, self.plan.types
        if memory is None or self.timed:
            return {}
        layout = self._arena_layout
        if not training and (layout is None or batch > layout.batch):
            return {}
        if layout is None or batch > layout.batch:
            scaled = memory.at(batch)
            if scaled.arena is None:
                return {}
            layout = self._arena_layout = scaled.arena
            self._arena = None  # the old block goes before the new one is made
            self._arena = self.xp.empty(layout.elements, dtype=self.dtype)
            self._places = {}
        # a value this executor lodges in the gradient vector (its parameters' order may
        # be other than the plan's) is written there instead
        apart = set(self._lodged(batch)) | viewed(self.plan, outputs)
        return {node: self._arena[a:a + batch * types[node].size].reshape(
                    (batch,) + types[node].dims)
                for node, a in layout.offsets.items() if node not in apart}

    def _begin_pass(self) -> None:
        """A forward pass starts: off the host it draws from a stream of its own."""
        if isinstance(self.rng, CountedRng):
            self.rng.advance()

    def calls(self) -> Mapping[str, "_Call"]:
        """Step -> what its calls pass (`forward`, its op's forward, among it), for the
        steps called so far: each keeps the forward it found at its first call, so a
        profiler that wraps an op's methods after that wraps the call's `forward` too."""
        return MappingProxyType(self._calls)

    def _call(self, step: Step) -> "_Call":
        call = self._calls.get(step.node)
        if call is None:
            call = self._calls[step.node] = _Call(
                step, step.node in self.compiled_ops,
                None if step.slices else self.param_args(step),
                tuple((name, key, self.grads[key]) for name, key in step.params.items()
                      if name not in step.slices))
        return call

    def _forward_step(self, step: Step, values: dict, training: bool, check_finite: bool):
        """A step outside any loop of a network with sequences: a per-step op reading
        them sees time folded into the batch."""
        xp, timed, whole = self.xp, self.timed, self.whole[step.node]
        xs = [values[s] for s in step.inputs]
        steps = [x.shape[0] for i, (x, s) in enumerate(zip(xs, step.inputs))
                 if s in timed and i not in whole] if timed else ()
        folded = step.op.per_step and bool(steps)
        if folded:
            T = self.time[step.node] = steps[0]
            xs = [x if i in whole else self._fold(x, s in timed, T)
                  for i, (x, s) in enumerate(zip(xs, step.inputs))]
        source = self._lengths_of(step) if self.lengths else None
        lengths = None if source is None else self.lengths[source]
        if folded and lengths is not None and step.op.is_loss:
            # a loss averages over the real steps only: padded rows are left out. Their
            # indices come from the host's lengths: a boolean mask would make the device
            # count them before it could index, and the host wait for that count
            host = self.host_lengths[source]
            rows = np.flatnonzero((np.arange(T)[:, None] < host[None, :]).reshape(-1))
            valid = xp.asarray(rows)
            self.valid[step.node] = (valid, T * len(host))
            xs = [x[valid] for x in xs]
        ctx = self.ctxs[step.node] = Ctx(xp, training, self.rng,
                                         self.buffers[step.buffers_of or step.node],
                                         len(xs[0]) if folded else self.size, self.dtype)
        ctx.geometry = step.geometry
        ctx.compiled = step.node in self.compiled_ops
        if lengths is not None and not step.op.per_step:
            ctx.lengths = lengths
        elif whole and self.lengths:  # attention's memory: its padded steps stay unread
            ctx.lengths = self.whole_lengths(step)
        if step.in_place:  # a chain's follower writes over its predecessor's output
            ctx.out = xs[0]
        kwargs = self.param_args(step)
        if step.borrows:
            kwargs = dict(kwargs)
            for kw, (node, saved) in step.borrows.items():
                kwargs[kw] = self.ctxs[node].saved[saved]
        y = step.op.forward(ctx, *xs, **kwargs)
        ctx.out = None  # else the context would hold the array after its value is freed
        if lengths is not None and step.node in timed:
            self.lengths[step.node] = lengths
            self.host_lengths[step.node] = self.host_lengths[source]
        if folded and step.node in timed:
            y = y.reshape((T, self.size) + y.shape[1:])
        if check_finite:
            self.check(check_finite, y, step.node, "forward")
        return y

    def param_args(self, step: Step) -> dict:
        """The step's parameters by the op's names (views of the flat vector, made once);
        a column block as a contiguous copy, made at every call. Callers must not change
        the dict."""
        if not step.slices:
            args = self._param_args.get(step.node)
            if args is None:
                args = self._param_args[step.node] = {
                    name: self.params[key] for name, key in step.params.items()}
            return args
        args = {name: self.params[key] for name, key in step.params.items()}
        for name, index in step.slices.items():
            # NumPy's matmul leaves BLAS for a column block of a matrix (60x slower
            # here), and a step's copy is cheap next to T products
            args[name] = self.xp.ascontiguousarray(args[name][index])
        return args

    # ---- backward

    def backward(self, backward: Backward | None = None, check_finite: bool = False,
                 hook=None) -> None:
        """Fill `grads` for `backward.params` (default: every loss, every parameter) from
        the last training forward, through time where there are loops (BPTT).

        Gradients of a value are summed where it forks. A contribution is stored as
        given (it may alias another value's gradient) and copied before the first sum.
        `hook` (data-parallel training's runtime.buckets.GradientBuckets) hears of each
        step and loop whose backward has run, so that it can send the gradients that are
        final while the rest of backward runs.
        """
        xp = self.xp
        backward = backward or self.lowered.backward()
        if hook is not None:
            hook.begin(self._last, backward)
        # dL/dL = 1 in the executor's precision: losses scale it by Python numbers
        grads = {seed: xp.ones((), dtype=self.dtype) for seed in backward.seeds}
        owned: set[str] = set()
        self._written = set()
        facts = self._backwards.get(id(backward))
        if facts is None or facts[0] is not backward:
            facts = self._backwards[id(backward)] = (
                backward, frozenset(backward.order), frozenset(backward.params),
                {node: tuple(t is not None for t in targets)   # which inputs need one
                 for node, targets in backward.grad_inputs.items()})
        wanted, self._needs = facts[1], facts[3]
        with (one_blas_thread(xp, self._last.host_split or self._on_pool),
              gemms_on_pool(self._on_pool),
              native_conv.in_use(self.native_conv)):
            for segment in reversed(self._last.segments):
                if isinstance(segment, LoopSegment):
                    compiled = self.compiled_loops
                    if not (compiled and compiled.backward(segment, grads, owned, backward,
                                                           wanted)):
                        backward_loop(self, segment, grads, owned, backward, wanted,
                                      check_finite)
                    if hook is not None:
                        hook.loop_done(segment)
                    continue
                for step in reversed(segment.steps):
                    gy = grads.pop(step.node, None)
                    if gy is None or step.node not in wanted:
                        continue  # no loss depends on it through a differentiable path
                    if self.observer is not None:
                        self.observer.gradient(step.node, gy)
                    self._backward_step(step, gy, grads, owned, backward, check_finite)
                    if hook is not None:
                        hook.step_done(step)
        for key in facts[2] - self._written:
            self.grads[key][...] = 0
        if hook is not None:
            hook.end()

    def grad_written(self, key: str) -> bool:
        """Whether the backward pass running (or last run) has written `key`'s gradient."""
        return key in self._written

    def _backward_step(self, step: Step, gy, grads: dict, owned: set, backward: Backward,
                       check_finite: bool) -> None:
        node, sequences = step.node, bool(self.timed)
        ctx = self.ctxs[node]
        if sequences and node in self.time and node in self.timed:
            gy = gy.reshape((-1,) + gy.shape[2:])
        ctx.needs_input_grad = self._needs[node]
        ctx.gy_owned = node in owned   # popped from `grads`: nobody else reads it
        # a parameter's first gradient may be written straight into its storage
        written = self._written
        ctx.grad_out = {name: view for name, key, view in self._call(step).grad_views
                        if key not in written}
        input_grads, param_grads = step.op.backward(ctx, gy)
        ctx.saved.clear()
        fresh = step.op.fresh_grads
        for position, (source, target, grad) in enumerate(
                zip(step.inputs, backward.grad_inputs[node], input_grads)):
            if target is None or grad is None:
                continue
            if sequences:
                grad = self._sequence_grad(step, position, source, grad)
            if check_finite:
                self.check(check_finite, grad, node, "backward")
            add_grad(grads, owned, target, grad, fresh)
        self.store_param_grads(step, param_grads)

    def _sequence_grad(self, step: Step, position: int, source: str, grad):
        """An input's gradient from a step that read sequences: the padded rows a loss
        left out back as zeros, time unfolded, summed over the steps for a per-sequence
        value."""
        valid = self.valid.get(step.node)
        if valid is not None:  # padded rows had no say in the loss: zero gradient
            rows, total = valid
            full = self.xp.zeros((total,) + grad.shape[1:], dtype=grad.dtype)
            full[rows] = grad
            grad = full
        if step.node in self.time and position not in self.whole[step.node]:
            grad = grad.reshape((self.time[step.node], self.size) + grad.shape[1:])
            if source not in self.timed:  # a per-sequence value broadcast over the steps
                grad = grad.sum(axis=0)
        return grad

    def store_param_grads(self, step: Step, param_grads: dict) -> None:
        """Write (or add, for a parameter already written this pass) a step's parameter
        gradients into the flat gradient vector; one the op wrote there itself
        (Ctx.grad_out) is only marked written. A column block adds into its part."""
        written, slices = self._written, step.slices
        for name, grad in param_grads.items():
            key = step.params[name]
            if grad is self.grads[key] and not slices and key not in written:
                written.add(key)   # the op wrote it in place (Ctx.grad_out)
            else:
                self.store_param_grad(key, grad, slices.get(name))

    def store_param_grad(self, key: str, grad, index=None) -> None:
        target = self.grads[key]
        if key in self._written:
            if index is None:
                target += grad
            else:
                target[index] += grad
            return
        self._written.add(key)
        if index is not None:
            target[...] = 0
            target[index] = grad
        elif grad is not target:
            target[...] = grad

    # ---- layout

    def _time_major(self, array, name: str):
        dtype = "int64" if self.plan.inputs[name].classes is not None else self.dtype
        x = self.xp.asarray(array, dtype=dtype)
        return self.xp.ascontiguousarray(x.swapaxes(0, 1)) if name in self.timed else x

    def _batch_major(self, value, name: str):
        return value.swapaxes(0, 1) if name in self.timed else value

    def _extent(self, values: dict) -> int:
        """The number of examples in a batch (sequences of one batch may differ in length)."""
        for name, value in values.items():
            return int(value.shape[1] if name in self.timed else value.shape[0])
        raise ValueError("a batch needs at least one input")

    def _lengths_of(self, step: Step) -> str | None:
        """The sequence a step reads whose valid steps per example are known (None: all
        are valid); its lengths are `lengths[name]`, on the host `host_lengths[name]`."""
        if not self.lengths:
            return None
        for position, source in enumerate(step.inputs):
            if source in self.lengths and position not in self.whole[step.node]:
                return source
        return None

    def whole_lengths(self, step: Step):
        """The valid steps per example of the sequence a step reads whole (attention's
        memory), or None when all are valid."""
        for position in sorted(self.whole[step.node]):
            source = step.inputs[position]
            if source in self.lengths:
                return self.lengths[source]
        return None

    def _fold(self, x, seq: bool, steps: int):
        """(T, B, ...) -> (T*B, ...); a per-sequence (B, ...) value is repeated at every step."""
        if not seq:
            x = self.xp.broadcast_to(x, (steps,) + x.shape)
        return x.reshape((-1,) + x.shape[2:])

    def check(self, check_finite: bool, array, node: str, phase: str) -> None:
        if check_finite and array.dtype.kind == "f" and not bool(self.xp.isfinite(array).all()):
            raise NonFinite(node, phase)

    # ---- state

    def rng_state(self) -> dict:
        """The random state as a JSON document, read on the host: NumPy's bit generator
        state, or a CountedRng's (seed, count)."""
        if isinstance(self.rng, CountedRng):
            return self.rng.state
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        """Restore what `rng_state` returned (a state of the other kind, from a checkpoint
        written on the other device, seeds a generator of this kind from it)."""
        if isinstance(self.rng, CountedRng):
            self.rng.state = state
        elif isinstance(state, dict) and set(state) == {"seed", "count"}:
            self.rng = np.random.default_rng(np.random.SeedSequence([int(state["seed"]),
                                                                     int(state["count"])]))
        else:
            self.rng.bit_generator.state = state

    def state_dict(self) -> dict:
        """Parameters, running statistics and the random state, as host arrays."""
        xp = self.xp
        buffers = {f"{node}:{name}": to_host(xp, value)
                   for node, entries in self.buffers.items() for name, value in entries.items()}
        return {"params": to_host(xp, self.flat_params).copy(), "buffers": buffers,
                "rng": self.rng_state()}

    def load_state_dict(self, state: dict) -> None:
        xp = self.xp
        if state["params"].shape != self.flat_params.shape:
            raise ValueError(f"checkpoint holds {state['params'].size} parameters but the "
                             f"network has {self.flat_params.size}")
        self.flat_params[...] = xp.asarray(state["params"])
        for entries in self.buffers.values():
            entries.clear()
        for name, value in state["buffers"].items():
            node, _, key = name.rpartition(":")
            self.buffers.setdefault(node, {})[key] = xp.asarray(value)
        self.set_rng_state(state["rng"])

