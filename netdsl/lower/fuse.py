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

The backward of a run is its steps in reverse (host), or one kernel (cuda).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, NamedTuple

from netdsl.lower.codegen import (Chain, chain_backward, chain_forward, from_output, fusable,
                                  merge_writes, run_program)
from netdsl.lower.plan import Plan, Step
from netdsl.ops.base import Op, input_names

__all__ = ["fuse", "runs", "FusedChain", "Fusion", "FUSIONS"]


def fuse(plan: Plan, fusion: str, outputs=frozenset()) -> Plan:
    """`plan` with its runs fused the `fusion` way ("in_place" or "kernels"); `outputs` are
    values read after a pass, which must stay values of their own (losses always do)."""
    starts, continues, rewrite = FUSIONS[fusion]
    return rewrite(plan, runs(plan, outputs, starts, continues))


def runs(plan: Plan, outputs, starts: Callable, continues: Callable) -> list[list[Step]]:
    """Greedy fold over the steps in order: a step joins the run ending at the first of
    its inputs through which `continues(plan, producer, step, position)` allows it, else
    starts a run of its own when `starts(plan, step)` allows."""
    # a state reads its source from the step before, and may start from a value computed
    # before its loop: both must stay values
    kept = (set(outputs) | set(plan.losses.values()) | {s.source for s in plan.states.values()}
            | {s.start for s in plan.states.values() if s.start is not None})
    loop_of = {s.node: loop.name for loop in plan.loops for s in loop.steps}
    readers: dict[str, int] = {}
    for step in plan.steps:
        for source in step.inputs:
            readers[source] = readers.get(source, 0) + 1
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

    def __init__(self, chain: Chain, nodes: tuple[str, ...]):
        super().__init__()
        self.chain, self.nodes = chain, nodes
        self.program = chain_forward(chain)
        self.keeps = ("y",) if from_output(chain) else ()
        # one input, its gradient from the output: written over gy when the executor owns it
        self.grad_over_gy = chain.inputs == 1 and self.from_output
        self._backward: dict[tuple, object] = {}
        self._shared: dict[tuple[bool, ...], dict] = {}

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
        arrays = {f"x{j}": x for j, x in enumerate(xs)}
        y = run_program(ctx.xp, self.program, arrays, dtype=ctx.dtype)["y"]
        if ctx.training:
            ctx.save(**({"y": y} if self.from_output else {"xs": xs}))
        return y

    def backward(self, ctx, gy):
        saved = ctx.saved
        count = self.chain.inputs
        needs = tuple(ctx.needs(j) for j in range(count))
        if not any(needs):
            return (None,) * count, {}
        arrays = ({"y": saved["y"]} if self.from_output
                  else {f"x{j}": x for j, x in enumerate(saved["xs"])})
        arrays["gy"] = gy
        if self.grad_over_gy and ctx.gy_owned and gy.shape == saved["y"].shape \
                and gy.dtype == saved["y"].dtype and gy.flags.c_contiguous:
            arrays["dx0"] = gy   # each element of gy is read before its dx0 is written
        grads = run_program(ctx.xp, self.backward_program(needs), arrays, dtype=ctx.dtype)
        shared = self._shared.get(needs)
        if shared is None:
            shared = self._shared[needs] = self.shared_grads(needs)
        # an input whose gradient another's equals gets that very array (the executor
        # copies a gradient before it sums into it)
        return tuple(grads.get(shared.get(f"dx{j}", f"dx{j}")) for j in range(count)), {}


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


class Fusion(NamedTuple):
    """A target's way of fusing: which steps start a run, which continue one (through
    which input), and what the runs make of the plan."""

    starts: Callable[[Plan, Step], bool]
    continues: Callable[[Plan, Step, Step, int], bool]
    rewrite: Callable[[Plan, list[list[Step]]], Plan]


FUSIONS = {
    "in_place": Fusion(_any_step, _writes_over, _mark_in_place),
    "kernels": Fusion(_has_formulas, _joins_kernel, _as_kernels),
}
