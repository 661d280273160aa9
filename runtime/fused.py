"""The GPU executor: the plan's elementwise chains as generated kernels.

`kernel_plan` rewrites a plan: each run of elementwise ops with formulas whose
values nothing else reads, such as the tail `add -> relu` of a residual block or
`sigmoid` alone, becomes one step whose op launches one kernel forward and
one backward (runtime.kernelgen). Everything else runs as in the NumPy executor, on
CuPy arrays: products and convolutions through cuBLAS. The rewritten step takes the
name of the chain's last op, so the values a loss or a metric reads keep their names.

A run qualifies when all its inputs have the shape of its output (no broadcasting:
the kernel indexes every array alike) and none of its intermediate values is asked
for (`keep`) or read by a recurrent state; the plan is rewritten once per set of
values asked for. A run lies wholly inside one recurrence or wholly outside: the
sequence executor replays a loop's steps, the fused ones among them, once per time
step.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from netdsl.ops.base import Op
from netdsl.runtime.execute import Executor
from netdsl.runtime.kernelgen import Chain, chain_backward, chain_forward, fusable
from netdsl.runtime.launch import runner_for
from netdsl.runtime.plan import Backward, Plan, Step

__all__ = ["FusedExecutor", "FusedChain", "kernel_plan", "chains"]


class FusedChain(Op):
    """Several elementwise ops as one step: one kernel forward, one backward.

    Keeps its inputs for backward, which recomputes the intermediate values in
    registers instead of storing them.
    """

    name = "fused"
    keeps = ()

    def __init__(self, chain: Chain, nodes: tuple[str, ...]):
        super().__init__()
        self.chain, self.nodes = chain, nodes
        self.program = chain_forward(chain)
        self._backward: dict[tuple[bool, ...], object] = {}

    def forward(self, ctx, *xs):
        if ctx.training:
            ctx.save(xs=xs)
        run = runner_for(ctx.xp, ctx.dtype)
        return run(self.program, {f"x{j}": x for j, x in enumerate(xs)})["y"]

    def backward(self, ctx, gy):
        xs = ctx.saved["xs"]
        needs = tuple(ctx.needs(j) for j in range(len(xs)))
        if not any(needs):
            return (None,) * len(xs), {}
        if needs not in self._backward:
            self._backward[needs] = chain_backward(self.chain, needs)
        arrays = {f"x{j}": x for j, x in enumerate(xs)}
        arrays["gy"] = gy
        grads = runner_for(ctx.xp, ctx.dtype)(self._backward[needs], arrays)
        return tuple(grads.get(f"dx{j}") for j in range(len(xs))), {}


def chains(plan: Plan, outputs: set[str]) -> list[list[Step]]:
    """The runs of steps that become one kernel each, in order of their last steps.

    A qualifying step extends the run that ends at one of its inputs when nothing else
    reads that value: not another step, a loss, a caller (`outputs`) or a recurrent
    state. Unlike the host's in-place chains (runtime.fuse), any input position may
    continue a run, and what the members keep for backward does not matter: the
    kernel keeps the run's inputs and recomputes the rest.
    """
    # a state reads its source from the step before: the source must stay a value
    outputs = set(outputs) | {state.source for state in plan.states.values()}
    loop_of = {s.node: loop.name for loop in plan.loops for s in loop.steps}
    readers: dict[str, int] = {}
    for step in plan.steps:
        for source in step.inputs:
            readers[source] = readers.get(source, 0) + 1
    runs: list[list[Step]] = []
    ending: dict[str, list[Step]] = {}   # the last node of a run -> the run
    for step in plan.steps:
        if not _qualifies(plan, step):
            continue
        run = next((ending.pop(source) for source in step.inputs
                    if source in ending and readers[source] == 1 and source not in outputs
                    and loop_of.get(source) == loop_of.get(step.node)), None)
        if run is None:
            run = []
            runs.append(run)
        run.append(step)
        ending[step.node] = run
    return runs


def _qualifies(plan: Plan, step: Step) -> bool:
    out = plan.types[step.node]
    return fusable(step.op) and not step.params and all(
        plan.types[s].dims == out.dims and plan.types[s].classes is None for s in step.inputs)


def kernel_plan(plan: Plan, outputs: set[str]) -> Plan:
    """`plan` with each run of `chains` replaced by one FusedChain step."""
    replaced: dict[str, Step] = {}   # last node of a run -> its fused step
    inside: set[str] = set()
    for run in chains(plan, outputs):
        replaced[run[-1].node] = _fused_step(run)
        inside.update(s.node for s in run)
    def rewrite(steps):
        return [replaced.get(s.node, s) for s in steps
                if s.node in replaced or s.node not in inside]

    loops = [replace(loop, steps=tuple(rewrite(loop.steps))) for loop in plan.loops]
    rewritten = replace(plan, steps=rewrite(plan.steps), loops=loops)
    rewritten.__dict__.pop("_steps_by_node", None)
    rewritten.__dict__.pop("_backward_cache", None)
    return rewritten


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


class FusedExecutor(Executor):
    """The executor of `Executor`, over a plan whose elementwise chains are kernels.

    With `xp` CuPy the chains are generated CUDA kernels; with NumPy they are the same
    programs evaluated by NumPy, so this class's logic is tested without a GPU.
    """

    def __init__(self, plan: Plan, params: dict, seed: int = 0, xp=np, dtype: str = "float32",
                 order=None):
        super().__init__(plan, params, seed, xp, dtype, order)
        self.source_plan = plan
        self._plans: dict[frozenset, Plan] = {}

    def forward(self, batch: dict, training: bool, keep=(), check_finite: bool = False,
                losses: bool = True) -> dict:
        source = self.source_plan
        outputs = frozenset(keep) | (frozenset(source.losses.values()) if losses else frozenset())
        if outputs not in self._plans:
            self._plans[outputs] = kernel_plan(source, set(outputs))
        self.plan = self._plans[outputs]
        return super().forward(batch, training, keep, check_finite, losses)

    def backward(self, backward: Backward, check_finite: bool = False) -> None:
        # the schedule of the plan the last forward ran, for the same losses and parameters
        super().backward(self.plan.backward(backward.losses, backward.params), check_finite)
