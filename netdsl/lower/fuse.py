"""Lowering pass, fuse: runs of steps that execute as one, in the way of the target.

One walk over the plan finds the runs. A step continues the run that ends at one of
its inputs when that value has no other use: no other step reads it, it is not a loss,
nor asked for (`outputs`), nor the value a recurrent state delays, and both steps lie
in the same loop (or outside all). The target decides which steps may start or continue
a run, and what a run becomes:

- host (`in_place`): a run is any step followed by elementwise ops that can write over
  their first input (`Op.inplace`) when its producer makes a fresh array and nobody
  keeps it for backward. The followers are marked `Step.in_place`: NumPy then
  allocates a chain's first output only.
- cuda (`kernels`): a run is ops that state their value and gradients as formulas
  (ops.expr) and read arrays of their own shape, at any input position. It becomes one
  `FusedChain` step, one generated kernel each way, named after its last step so the
  values a loss or a metric reads keep their names. Its backward recomputes the
  intermediate values in registers: it keeps only the run's inputs, or only its
  output where the gradients need nothing else (codegen.from_output).
- native (`native`): the kernels of cuda, and then a chain whose gradients follow from
  its output, after an op that states its work as per-channel programs (batchnorm's,
  ops.channels) and whose output nothing else reads, joins that op: a `ChannelChain`
  step, whose programs apply the chain in the op's writing pass (y = chain(bn(x))) and
  its gradient as the op's backward reads gy, so the pair costs the op's passes only;
  and a chain of one input whose gradient follows from its output, after a convolution,
  joins it (lower.conv_chain): the kernels apply it as they write their output.

The backward of a run is its steps in reverse (host), or one kernel (cuda, native).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, NamedTuple

from netdsl.lower.codegen import (Chain, chain_backward, chain_forward, from_output, fusable,
                                  merge_writes, run_program)
from netdsl.lower.conv_chain import into_convolutions
from netdsl.lower.plan import Plan, Step
from netdsl.ops.base import Ctx, Op, input_names
from netdsl.ops.channels import ChannelProgram, Stage
from netdsl.ops.expr import Var, cuda, substitute

__all__ = ["fuse", "runs", "FusedChain", "ChannelChain", "absorb", "Fusion", "FUSIONS"]


def fuse(plan: Plan, fusion: str, outputs=frozenset()) -> Plan:
    """`plan` with its runs fused the `fusion` way ("in_place", "kernels" or "native");
    `outputs` are values read after a pass, which must stay values of their own (losses
    always do)."""
    starts, continues, rewrite, then = FUSIONS[fusion]
    plan = rewrite(plan, runs(plan, outputs, starts, continues))
    return then(plan, _kept(plan, outputs)) if then else plan


def _kept(plan: Plan, outputs) -> set[str]:
    """The values that must stay values: outputs, losses, and what states read (a state
    reads its source from the step before, and may start from a value computed before
    its loop)."""
    return (set(outputs) | set(plan.losses.values()) | {s.source for s in plan.states.values()}
            | {s.start for s in plan.states.values() if s.start is not None})


def _readers(plan: Plan) -> dict[str, int]:
    readers: dict[str, int] = {}
    for step in plan.steps:
        for source in step.inputs:
            readers[source] = readers.get(source, 0) + 1
    return readers


def runs(plan: Plan, outputs, starts: Callable, continues: Callable) -> list[list[Step]]:
    """Greedy fold over the steps in order: a step joins the run ending at the first of
    its inputs through which `continues(plan, producer, step, position)` allows it, else
    starts a run of its own when `starts(plan, step)` allows."""
    kept = _kept(plan, outputs)
    loop_of = {s.node: loop.name for loop in plan.loops for s in loop.steps}
    readers = _readers(plan)
    found: list[list[Step]] = []
    ending: dict[str, list[Step]] = {}   # the last node of a run -> the run
    for step in plan.steps:
        run = None
        for position, source in enumerate(step.inputs):
            if (source in ending and readers[source] == 1 and source not in kept
                    and loop_of.get(source) == loop_of.get(step.node)
                    and continues(plan, ending[source][-1], step, position)):
                run = ending.pop(source)
                break
        if run is None:
            if not starts(plan, step):
                continue
            run = []
            found.append(run)
        run.append(step)
        ending[step.node] = run
    return found


# ---- host: in-place chains


def _any_step(plan: Plan, step: Step) -> bool:
    return True


def _writes_over(plan: Plan, producer: Step, step: Step, position: int) -> bool:
    """May `step` write its result over its first input, the output of `producer`?"""
    if position != 0 or not (step.op.elementwise and step.op.inplace):
        return False
    source = producer.node
    if step.inputs.count(source) != 1 or not producer.op.fresh:
        return False  # read twice, or a view of another value
    if plan.types[source] != plan.types[step.node]:
        return False  # a broadcast input (a per-sequence value read at every step)
    # nobody may keep the value: not its producer (as "y") and not this reader (as an input)
    kept_by_reader = input_names(type(step.op))[0] in step.op.keeps
    kept_by_producer = "y" in producer.op.keeps and "y" not in input_names(type(producer.op))
    return not (kept_by_reader or kept_by_producer)


def _mark_in_place(plan: Plan, found: list[list[Step]]) -> Plan:
    followers = {step.node for run in found for step in run[1:]}
    if not followers:
        return plan
    steps = [replace(s, in_place=True) if s.node in followers else s for s in plan.steps]
    by_node = {s.node: s for s in steps}
    loops = [replace(loop, steps=tuple(by_node[s.node] for s in loop.steps))
             for loop in plan.loops]
    return replace(plan, steps=steps, loops=loops)


# ---- cuda: generated kernels


class FusedChain(Op):
    """Several elementwise ops as one step: one kernel forward, one backward.

    Keeps its inputs for backward, which recomputes the intermediate values in
    registers instead of storing them; or, where the gradients follow from the output
    alone (`keeps == ("y",)`), its output.
    """

    name = "fused"
    fresh = True
    fills_out = True

    def __init__(self, chain: Chain, nodes: tuple[str, ...]):
        super().__init__()
        self.chain, self.nodes = chain, nodes
        self.program = chain_forward(chain)
        self.keeps = ("y",) if from_output(chain) else ()
        self.keeps_variadic = not self.keeps   # else its backward reads its inputs
        # one input, its gradient from the output: written over gy when the executor owns it
        self.grad_over_gy = chain.inputs == 1 and self.from_output
        self._backward: dict[tuple, object] = {}
        # a call over an MLP's activations costs more in Python than in C: the names of
        # the arrays, and per set of needs the program and its gradients' names, made once
        self._inputs = tuple(f"x{j}" for j in range(chain.inputs))
        self._writes: dict[tuple[bool, ...], tuple] = {}

    @property
    def from_output(self) -> bool:
        return bool(self.keeps)

    def backward_program(self, needs: tuple[bool, ...], output: bool | None = None,
                         merged: bool = True):
        """The backward program for the inputs that need a gradient, made once: from the
        output, or from the inputs (`output` False; default: the chain's own choice).
        `merged`: inputs whose gradients are one formula (an add's two) share one written
        array (`shared_grads`); else each input's is written (a compiled loop's members
        each have their own place)."""
        output = self.from_output if output is None else output and self.from_output
        key = (needs, output, merged)
        if key not in self._backward:
            program = chain_backward(self.chain, needs, output)
            self._backward[key] = merge_writes(program)[0] if merged else program
        return self._backward[key]

    def shared_grads(self, needs: tuple[bool, ...]) -> dict[str, str]:
        """For the merged backward program: each input gradient it does not write -> the
        one written that equals it."""
        return merge_writes(chain_backward(self.chain, needs, self.from_output))[1]

    def forward(self, ctx, *xs):
        arrays = dict(zip(self._inputs, xs))
        if ctx.out is not None:   # written there (an in-place follower's: over x0)
            arrays["y"] = ctx.out
        y = run_program(ctx.xp, self.program, arrays, dtype=ctx.dtype)["y"]
        if ctx.training:
            if self.keeps:
                ctx.saved["y"] = y
            else:
                ctx.saved["xs"] = xs
        return y

    def backward(self, ctx, gy):
        saved = ctx.saved
        count = self.chain.inputs
        needs = ctx.needs_input_grad or (True,) * count
        if not any(needs):
            return (None,) * count, {}
        arrays = {"y": saved["y"]} if self.keeps else dict(zip(self._inputs, saved["xs"]))
        arrays["gy"] = gy
        writes = self._writes.get(needs)
        if writes is None:
            shared = self.shared_grads(needs)
            # an input whose gradient another's equals gets that very array (the executor
            # copies a gradient before it sums into it)
            writes = self._writes[needs] = (self.backward_program(needs), tuple(
                shared.get(f"dx{j}", f"dx{j}") for j in range(count)))
        program, names = writes
        if self.grad_over_gy and ctx.gy_owned and gy.shape == saved["y"].shape \
                and gy.dtype == saved["y"].dtype and gy.flags.c_contiguous:
            arrays["dx0"] = gy   # each element of gy is read before its dx0 is written
        grads = run_program(ctx.xp, program, arrays, dtype=ctx.dtype)
        return tuple(grads.get(name) for name in names), {}


def _has_formulas(plan: Plan, step: Step) -> bool:
    """A kernel's member: formulas, no parameters, and inputs of its own shape (the kernel
    indexes every array alike, so it cannot broadcast)."""
    out = plan.types[step.node]
    return fusable(step.op) and not step.params and all(
        plan.types[s].dims == out.dims and plan.types[s].classes is None for s in step.inputs)


def _joins_kernel(plan: Plan, producer: Step, step: Step, position: int) -> bool:
    return _has_formulas(plan, step)


def _as_kernels(plan: Plan, found: list[list[Step]]) -> Plan:
    """`plan` with each run replaced by one FusedChain step."""
    replaced: dict[str, Step] = {}   # last node of a run -> its fused step
    inside: set[str] = set()
    for run in found:
        replaced[run[-1].node] = _fused_step(run)
        inside.update(s.node for s in run)

    def rewrite(steps):
        return [replaced.get(s.node, s) for s in steps
                if s.node in replaced or s.node not in inside]

    loops = [replace(loop, steps=tuple(rewrite(loop.steps))) for loop in plan.loops]
    return replace(plan, steps=rewrite(plan.steps), loops=loops)


def _fused_step(run: list[Step]) -> Step:
    sources: list[str] = []   # the run's inputs from outside it, each once
    types = []
    wiring = []
    for m, step in enumerate(run):
        wires = []
        for source, t in zip(step.inputs, step.input_types):
            if m and source == run[m - 1].node:
                wires.append(-1)
                continue
            if source not in sources:
                sources.append(source)
                types.append(t)
            wires.append(sources.index(source))
        wiring.append(tuple(wires))
    chain = Chain(tuple(s.op for s in run), tuple(wiring), len(sources))
    nodes = tuple(s.node for s in run)
    return Step(run[-1].node, FusedChain(chain, nodes), tuple(sources), tuple(types), {})


# ---- native: per-channel programs absorb the chain after them


class ChannelChain(Op):
    """An op stated as per-channel programs (batchnorm) and the elementwise chain after
    it as one step: the op's programs with the chain absorbed (`absorb`), one call each
    way. Inputs: the op's, then the chain's others; parameters and buffers the op's.

    Keeps the op's input (and its per-channel numbers) and the chain's output, from which
    the chain's gradient follows. Where the op does not run its programs (a runtime that
    provides its NumPy routine, data-parallel training's synchronised batchnorm) the op
    and the chain run one after the other.
    """

    name = "fused"
    fresh = True
    fills_out = True
    keeps = ("x", "y")

    def __init__(self, head: Op, chain: Chain, position: int, nodes: tuple[str, ...]):
        super().__init__()
        self.head, self.chain, self.position, self.nodes = head, chain, position, nodes
        self.name = f"{head.name}_{chain.name}"   # the op's work, which it mostly is
        self.host_split = head.host_split   # its slabs run on the host's threads as the op's
        self.others = tuple(j for j in range(chain.inputs) if j != position)
        self.programs = type(head.programs)(*(absorb(p, chain, position)
                                              for p in head.programs))
        self.apart = FusedChain(chain, nodes[1:])   # where the op runs its NumPy code

    def shape(self, x, *others):
        return x   # names the op's input "x" for `keeps`

    def buffers(self, x, *others):
        return self.head.buffers(x)

    def forward(self, ctx, x, *others, **params):
        if not self.head.programs_run(ctx):
            out, ctx.out = ctx.out, None   # the chain writes y there, not the op its z
            z = self.head.forward(ctx, x, **params)
            # a chain does the same in either mode; in training mode it keeps what its
            # backward reads, which eval mode's backward (through the op) reads too
            inner = Ctx(ctx.xp, True, dtype=ctx.dtype)
            inner.out = out
            ctx.save(chain_ctx=inner)
            y = self.apart.forward(inner, *self._chain_inputs(z, others))
            inner.out, ctx.out = None, out
            return y
        reads = {f"chain_x{j}": v for j, v in zip(self.others, others)}
        y = self.head.forward_with(ctx, self.programs, x, reads, **params)
        ctx.save(chain_y=y)
        return y

    def backward(self, ctx, gy):
        saved = ctx.saved
        if "chain_ctx" in saved:
            inner = saved["chain_ctx"]
            needs = {j: ctx.needs(k) for k, j in enumerate(self.others, 1)}
            inner.needs_input_grad = tuple(needs.get(j, True) for j in range(self.chain.inputs))
            grads, _ = self.apart.backward(inner, gy)
            (dx,), params = self.head.backward(ctx, grads[self.position])
            return (dx, *(grads[j] for j in self.others)), params
        (dx,), params, made = self.head.backward_with(ctx, self.programs, gy,
                                                      {"chain_y": saved["chain_y"]})
        return (dx, *(made[f"d_chain_x{j}"] if ctx.needs(k) else None
                      for k, j in enumerate(self.others, 1))), params

    def _chain_inputs(self, z, others) -> list:
        inputs = dict(zip(self.others, others))
        inputs[self.position] = z
        return [inputs[j] for j in range(self.chain.inputs)]


# (id of an op's program, the chain's position and formulas) -> (the program, kept so
# its id stays its own; the program with the chain absorbed): every step of one pattern
# gets the same objects, compiled once
_absorbed: dict[tuple, tuple[ChannelProgram, ChannelProgram]] = {}


def absorb(program: ChannelProgram, chain: Chain, position: int) -> ChannelProgram:
    """`program` with `chain` applied after it, the op's output entering the chain at
    input `position`; the chain's other inputs j are read as `chain_x{j}`.

    A forward program (it writes the op's output `y`) writes chain(y) as `y` instead, in
    the same pass. A backward program (it reads the op's output gradient `gy`) reads the
    chain's output gradient as `gy` and its output as `chain_y`, and uses the chain's
    gradient with respect to the op's output wherever it read gy: the chain's gradient
    must follow from its output alone (codegen.from_output). It writes the chain's other
    inputs' gradients too, as `d_chain_x{j}`.
    """
    forward = chain_forward(chain)
    backward = chain_backward(chain, (True,) * chain.inputs)
    key = (id(program), position, chain.inputs,   # the chain's formulas, both ways
           tuple(cuda(e, "double") for _, e in (*forward.lets, *backward.lets,
                                               *backward.writes)))
    if key not in _absorbed:
        made = (_absorb_backward(program, chain, position) if "gy" in program.reads
                else _absorb_forward(program, chain, position))
        _absorbed[key] = (program, made)
    return _absorbed[key][1]


def _absorb_forward(program: ChannelProgram, chain: Chain, position: int) -> ChannelProgram:
    forward = chain_forward(chain)
    names = {f"x{j}": Var(f"chain_x{j}") for j in range(chain.inputs)}
    names[f"x{position}"] = Var("head_y")
    names.update((n, Var(f"chain_{n}")) for n, _ in forward.lets)
    [output] = [e for n, e in program.writes if n == "y"]
    lets = (*program.lets, ("head_y", output),
            *((f"chain_{n}", substitute(e, names)) for n, e in forward.lets))
    writes = tuple((n, e) for n, e in program.writes if n != "y")
    writes += (("y", Var(f"chain_{forward.lets[-1][0]}")),)
    reads = program.reads + tuple(f"chain_x{j}" for j in range(chain.inputs) if j != position)
    return replace(program, name=f"{program.name}_{chain.name}", reads=reads, lets=lets,
                   writes=writes)


def _absorb_backward(program: ChannelProgram, chain: Chain, position: int) -> ChannelProgram:
    backward = chain_backward(chain, (True,) * chain.inputs, output=True)
    if not set(backward.reads) <= {"gy", "y"}:
        raise ValueError(f"{chain.name}'s gradient needs more than its output")
    inlined = {"y": Var("chain_y")}   # the chain's lets written into its gradients
    for n, e in backward.lets:
        inlined[n] = substitute(e, inlined)
    grads = {n: substitute(e, inlined) for n, e in backward.writes}
    into = {"gy": grads[f"dx{position}"]}

    def through(named):
        return tuple((n, substitute(e, into)) for n, e in named)

    stages = tuple(Stage(through(stage.sums), stage.lets) for stage in program.stages)
    writes = through(program.writes) + tuple(
        (f"d_chain_x{j}", grads[f"dx{j}"]) for j in range(chain.inputs) if j != position)
    return replace(program, name=f"{program.name}_{chain.name}",
                   reads=program.reads + ("chain_y",), stages=stages,
                   lets=through(program.lets), writes=writes)


def _absorbs(step: Step) -> bool:
    """Whether a step's op may take the chain after it into its per-channel programs."""
    return (bool(step.op.programs) and hasattr(step.op, "forward_with") and bool(step.params)
            and len(step.inputs) == 1 and not step.slices and not step.borrows)


def _into_channel_programs(plan: Plan, kept: set[str]) -> Plan:
    """`plan` with each fused chain whose gradients follow from its output joined to the
    op with per-channel programs that makes one of its inputs, where nothing else reads
    that value and neither lies in a loop (a compiled loop runs chains of its own)."""
    in_loops = {s.node for loop in plan.loops for s in loop.steps}
    readers = _readers(plan)
    by_node = {s.node: s for s in plan.steps}
    joined: dict[str, Step] = {}   # a chain's node -> its step with the op
    heads: set[str] = set()
    for step in plan.steps:
        if not isinstance(step.op, FusedChain) or step.node in in_loops \
                or not step.op.from_output:
            continue
        for position, source in enumerate(step.inputs):
            head = by_node.get(source)
            if (head is not None and _absorbs(head) and readers[source] == 1
                    and source not in kept and source not in in_loops):
                joined[step.node] = _channel_step(head, step, position)
                heads.add(source)
                break
    if not joined:
        return plan
    return replace(plan, steps=[joined.get(s.node, s) for s in plan.steps
                                if s.node not in heads])


def _channel_step(head: Step, chain: Step, position: int) -> Step:
    others = [j for j in range(len(chain.inputs)) if j != position]
    op = ChannelChain(head.op, chain.op.chain, position, (head.node, *chain.op.nodes))
    return Step(chain.node, op, (head.inputs[0], *(chain.inputs[j] for j in others)),
                (head.input_types[0], *(chain.input_types[j] for j in others)),
                dict(head.params), geometry=head.geometry, buffers_of=head.node)


class Fusion(NamedTuple):
    """A target's way of fusing: which steps start a run, which continue one (through
    which input), what the runs make of the plan, and what is done after (with the values
    that must stay values)."""

    starts: Callable[[Plan, Step], bool]
    continues: Callable[[Plan, Step, Step, int], bool]
    rewrite: Callable[[Plan, list[list[Step]]], Plan]
    then: Callable[[Plan, set], Plan] | None = None


def _into_ops(plan: Plan, kept: set[str]) -> Plan:
    """The native target's chains joined to the ops before them: batchnorm's per-channel
    programs, then the convolutions' output writes (lower.conv_chain)."""
    return into_convolutions(_into_channel_programs(plan, kept), kept)


FUSIONS = {
    "in_place": Fusion(_any_step, _writes_over, _mark_in_place),
    "kernels": Fusion(_has_formulas, _joins_kernel, _as_kernels),
    "native": Fusion(_has_formulas, _joins_kernel, _as_kernels, _into_ops),
}
