"""The back end as a readable list of passes: from a checked graph to a `Lowered` plan.

    checked graph --lower(target)--> Lowered
        build_plan -> hoist -> layout -> fuse(target) -> autodiff -> schedule -> plan_memory
        -> codegen(target)

The passes that rewrite the plan come first; those that analyse it follow, so the
backward schedule, the segments and the buffers describe exactly the steps that run.
Executors, the trainer, `netc compile --emit` and the builder consume a Lowered and
never rewrite its plan. With `verify` (the tests, or NETDSL_VERIFY=1) `verify_plan`
checks the plan after every pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from netdsl.lower.autodiff import Backward, autodiff
from netdsl.lower.codegen import Program
from netdsl.lower.conv_chain import ConvChain
from netdsl.lower.fuse import FusedChain, fuse
from netdsl.lower.hoist import hoist
from netdsl.lower.layout import LaidOut, layout
from netdsl.lower.memory import MemoryPlan, plan_memory
from netdsl.lower.plan import Plan, build_plan
from netdsl.lower.schedule import Schedule, schedule
from netdsl.lower.verify import verify_plan
from netdsl.switches import flag

__all__ = ["Target", "TARGETS", "Lowered", "lower", "PASSES", "scored_values"]


@dataclass(frozen=True)
class Target:
    """Where a lowered plan runs: how its elementwise runs fuse, whether it generates
    kernels for them (CUDA on the GPU, C on the CPU: netdsl.lower.native), and whether
    it compiles the ops' own per-channel programs (`Op.programs`: batchnorm's; the GPU
    has hand-written kernels for them)."""

    name: str
    fusion: str          # "in_place" (host NumPy), "kernels" (generated kernels) or
    #                      "native" (kernels, and per-channel programs absorb chains)
    kernels: bool = False
    op_programs: bool = False


TARGETS = {
    "host": Target("host", "in_place"),
    "native": Target("native", "native", kernels=True, op_programs=True),
    "cuda": Target("cuda", "kernels", kernels=True),
}

# the passes in order, with the one-line reason each is there (`netc compile --emit`)
PASSES = (
    ("build_plan", "one step per node, recurrences as loops, the flat parameter layout"),
    ("hoist", "input projections out of loops: one GEMM over all time steps"),
    ("layout", "NCHW or NHWC per region of 4-D values, changes only on its edges"),
    ("fuse", "elementwise runs in place (host) or as one generated kernel (native, cuda)"),
    ("autodiff", "the backward schedule of the steps that run"),
    ("schedule", "straight segments and loops, and when each value is freed"),
    ("plan_memory", "buffer lifetimes of a training step and their shared slots"),
    ("codegen", "the target's generated code: one kernel per fused run and way"),
)


@dataclass
class Lowered:
    """A network lowered for a target: its final plan and what the passes found.

    `stages` holds each pass's result by name, in order (the plans of build_plan, hoist
    and fuse; the Backward, Schedule, MemoryPlan and kernel sources after them).
    `outputs` are the values besides the losses that a pass may be asked for.
    """

    target: Target
    outputs: frozenset[str]
    stages: dict[str, object]
    _backwards: dict = field(default_factory=dict, repr=False)
    _schedules: dict = field(default_factory=dict, repr=False)

    @property
    def plan(self) -> Plan:
        """The plan the executors run."""
        return self.stages["fuse"]

    @property
    def built(self) -> Plan:
        """The plan as build_plan made it: one step per node (initialisation, costs)."""
        return self.stages["build_plan"]

    @property
    def graph(self) -> nx.DiGraph:
        return self.plan.graph

    @property
    def laid_out(self) -> LaidOut:
        """The layout pass's regions (netdsl.lower.layout) and the plan it made."""
        return self.stages["layout"]

    @property
    def schedule(self) -> Schedule:
        return self.stages["schedule"]

    @property
    def memory(self) -> MemoryPlan | None:
        """The memory plan at batch 1 (None for a network with a time axis)."""
        return self.stages["plan_memory"]

    @property
    def kernels(self) -> dict[str, list[Program]]:
        return self.stages["codegen"]

    def backward(self, losses=None, params=None) -> Backward:
        """autodiff's schedule for `losses` (default all) and `params` (default all),
        made once."""
        key = (None if losses is None else tuple(losses), None if params is None else
               tuple(params))
        if key == (None, None):
            return self.stages["autodiff"]
        if key not in self._backwards:
            self._backwards[key] = autodiff(self.plan, *key)
        return self._backwards[key]

    def schedule_for(self, keep, losses: bool = True) -> Schedule:
        """The segments of a pass computing `keep` (and the losses, with `losses`).

        Raises
        ------
        ValueError
            When `keep` asks for a value the plan was not lowered to keep: fusion may
            have overwritten it or merged it into a kernel.
        """
        wanted = frozenset(keep) | (frozenset(self.plan.losses.values()) if losses else
                                    frozenset())
        if wanted not in self._schedules:
            lost = sorted(frozenset(keep) - self.outputs - set(self.plan.losses.values())
                          - set(self.plan.inputs))
            if lost:
                raise ValueError(f"{lost[0]} is not an output of this lowering: pass it to "
                                 "lower(..., outputs=...)")
            self._schedules[wanted] = schedule(self.plan, wanted)
        return self._schedules[wanted]


def scored_values(plan: Plan) -> list[str]:
    """The values the losses score (logits, reconstructions), in the losses' order: what
    training measures and a prediction reports."""
    scored = []
    for node in plan.losses.values():
        step = plan.step_of(node)
        source = step.inputs[0] if step.inputs else None
        if source and plan.graph.nodes[source]["kind"] == "op" and source not in scored:
            scored.append(source)
    return scored


def lower(network, target: str = "host", outputs=None, verify: bool | None = None,
          layout_mode: str | None = None) -> Lowered:
    """Lower a checked network (a `driver.Network` or its graph) for `target`.

    Parameters
    ----------
    target : str
        "host", "native" or "cuda" (TARGETS).
    outputs : iterable of str, optional
        Values that passes may be asked for besides the losses and the values they
        score (which they may always be asked for).
    verify : bool, optional
        Run verify_plan after every pass (default: NETDSL_VERIFY=1 in the
        environment).
    layout_mode : str, optional
        "nchw", "auto" or "nhwc" (netdsl.lower.layout; default NETDSL_LAYOUT).

    Raises
    ------
    SpecError
        From build_plan: no loss, or a recurrence that cannot run.
    """
    graph = network if isinstance(network, nx.DiGraph) else network.graph
    kind = TARGETS[target]
    if verify is None:
        verify = flag("NETDSL_VERIFY", False)
    check = verify_plan if verify else _unchecked
    stages: dict[str, object] = {}
    plan = stages["build_plan"] = build_plan(graph)
    check(plan)
    outputs = frozenset(scored_values(plan)) | frozenset(outputs or ())
    everything = outputs | frozenset(plan.losses.values())
    plan = stages["hoist"] = hoist(plan)
    check(plan)
    laid = stages["layout"] = layout(plan, everything, layout_mode, target)
    check(laid.plan)
    plan = stages["fuse"] = fuse(laid.plan, kind.fusion, everything)
    check(plan, before=laid.plan)
    backward = stages["autodiff"] = autodiff(plan)
    segments = stages["schedule"] = schedule(plan, everything)
    check(plan, segments)
    stages["plan_memory"] = (None if plan.sequential
                             else plan_memory(plan, backward, outputs=everything,
                                             native=kind.name == "native"))
    stages["codegen"] = _codegen(plan, backward, kind.op_programs) if kind.kernels else {}
    lowered = Lowered(kind, outputs, stages)
    lowered._schedules[segments.outputs] = segments
    return lowered


def _unchecked(plan: Plan, segments: Schedule | None = None, before: Plan | None = None):
    pass


def _codegen(plan: Plan, backward: Backward, op_programs: bool) -> dict[str, list]:
    """Each fused step's programs: its forward, and its backward for the inputs that
    training differentiates; with `op_programs`, those an op states itself (the same
    objects for every step of an op kind: one compiled function each)."""
    programs = {}
    for step in plan.steps:
        if op_programs and step.op.programs and step.params:  # not an identity projection
            programs[step.node] = list(step.op.programs)
        elif isinstance(step.op, ConvChain):   # where the chain runs apart: compiled too
            programs[step.node] = list(step.op.epilogue.programs)
        elif isinstance(step.op, FusedChain):
            made = [step.op.program]
            if step.node in backward.grad_inputs:
                needs = tuple(t is not None for t in backward.grad_inputs[step.node])
                made.append(step.op.backward_program(needs))
            programs[step.node] = made
    return programs
