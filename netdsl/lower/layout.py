"""Lowering pass, layout: the regions of a plan whose (C, H, W) values may lie NHWC, the
layout each region runs in, and a layout change only on a region's edges.

Every value lies NCHW unless this pass changes it. A region is a largest connected set
of steps that can all run NHWC (`Op.layouts`, the ops' own facts: elementwise ops of
inputs of one shape, convolutions, batchnorm, pooling, concatenation, global average
pooling), joined by the 4-D values that one makes and another reads. Its edges are the
4-D values read in it but made outside (the network's inputs: data arrives NCHW) and
those made in it but read outside (before a flatten or a dense layer); a global
pooling's (N, C) output has no layout and needs no change.

A region laid out NHWC runs each of its steps as the op's `in_layout("NHWC")` (ops.nhwc)
and reads each entering value through one `Relayout` step (to_nhwc) made right after
the value; each leaving value is read outside through one to_nchw. Both are steps of
the plan like any other, forward and backward; between two NHWC steps there is none.

Which layout a region gets (the switch NETDSL_LAYOUT):

- `nchw`: none changes (the path before this pass);
- `auto` (default): the cheaper by measurement. A region's cost in a layout is the sum
  of its steps' measured times in that layout (forward and backward, at the train
  clause's batch), plus, in NHWC, its edges' layout changes. The times are looked up by
  step and shape in the tables the runtime provides (`provide_costs`:
  runtime.layout_costs keeps them in a choices file, timed once); with any of them
  missing (nothing measured yet, as on a fresh machine) the region stays NCHW;
- `nhwc`: NHWC wherever a region holds an op with an NHWC kernel (tests and A/Bs).

The pass lays out the CPU's targets (host, native); on cuda every value stays NCHW.
Steps in loops, steps that lend or borrow saved arrays (maxunpool's indices) and steps
whose 4-D value is an output of the lowering (read back by a caller) stay NCHW.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from netdsl.lower.plan import Plan, Step
from netdsl.ops.layouts import LAYOUTS, NCHW, NHWC, spatial_2d
from netdsl.ops.nhwc import Relayout
from netdsl.switches import choice

__all__ = ["MODE", "MODES", "Region", "LaidOut", "layout", "find_regions", "cost_key",
           "provide_costs", "region_costs"]

MODES = ("nchw", "auto", "nhwc")
# the targets whose executors run ops.nhwc's kernels (NumPy's calls)
CPU_TARGETS = ("host", "native")
# the switch, read where this module loads (tests pass `mode` to `layout` instead)
MODE = choice("NETDSL_LAYOUT", MODES, "auto")

# lookups key -> seconds (or None) that the runtime provides (runtime.layout_costs): the
# compiler reads no timing file of its own
_COSTS: list[Callable[[str], float | None]] = []


def provide_costs(lookup: Callable[[str], float | None]) -> None:
    """Make `lookup` (a cost_key -> seconds, None where unmeasured) a source of costs."""
    if lookup not in _COSTS:
        _COSTS.append(lookup)


def _provided(key: str) -> float | None:
    for lookup in _COSTS:
        found = lookup(key)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class Region:
    """Steps (by node, in plan order) that may run NHWC together, the 4-D values entering
    and leaving them, their measured costs per layout (None: not all measured), the
    layout chosen and why."""

    steps: tuple[str, ...]
    entering: tuple[str, ...]
    leaving: tuple[str, ...]
    costs: dict | None = None
    layout: str = NCHW
    why: str = ""

    def describe(self) -> str:
        costs = ("" if not self.costs else ", measured " + ", ".join(
            f"{name} {seconds * 1e3:.3f} ms" for name, seconds in self.costs.items()))
        return (f"region {self.steps[0]}..{self.steps[-1]} ({len(self.steps)} steps, "
                f"{len(self.entering)} in, {len(self.leaving)} out): {self.layout} "
                f"({self.why}{costs})")


@dataclass
class LaidOut:
    """The layout pass's result: the rewritten plan and its regions."""

    plan: Plan
    regions: tuple[Region, ...]
    mode: str


def _layouts(step: Step) -> frozenset:
    return step.op.layouts(*step.input_types)


def _changes_work(step: Step) -> bool:
    """Whether the step's op does its work differently in NHWC (an NHWC kernel), not
    merely element by element alike."""
    return step.op.in_layout(NHWC, *step.input_types) is not step.op


def find_regions(plan: Plan, outputs=frozenset()) -> list[Region]:
    """The regions of `plan` (all in NCHW, unmeasured), in plan order."""
    if plan.sequential or plan.loops:
        return []
    types = plan.types
    four_d = {v for v, t in types.items() if spatial_2d(t)}
    lenders = {node for s in plan.steps for node, _ in s.borrows.values()}
    kept = set(outputs) | set(plan.losses.values())
    candidates = {}
    for step in plan.steps:
        touches = step.node in four_d or any(s in four_d for s in step.inputs)
        if (touches and NHWC in _layouts(step) and not step.borrows
                and step.node not in lenders
                and not (step.node in four_d and step.node in kept)):
            candidates[step.node] = step
    parent = {n: n for n in candidates}

    def root(n):
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for step in candidates.values():
        for source in step.inputs:
            if source in four_d and source in candidates:
                parent[root(source)] = root(step.node)
    readers: dict[str, list[str]] = {}
    for step in plan.steps:
        for source in dict.fromkeys(step.inputs):
            readers.setdefault(source, []).append(step.node)
    groups: dict[str, list[str]] = {}
    for step in plan.steps:
        if step.node in candidates:
            groups.setdefault(root(step.node), []).append(step.node)
    regions = []
    for members in groups.values():
        inside = set(members)
        entering = []
        for node in members:
            for source in candidates[node].inputs:
                if source in four_d and source not in inside and source not in entering:
                    entering.append(source)
        leaving = [node for node in members if node in four_d and any(
            r not in inside for r in readers.get(node, ()))]
        regions.append(Region(tuple(members), tuple(entering), tuple(leaving)))
    return regions


def cost_key(step_or_relayout, layout: str, batch: int, dtype: str, target: str) -> str:
    """The key of a step's measured time (forward and backward) in `layout`, or of a
    value's layout change (`("to_nhwc", type)` / `("to_nchw", type)`)."""
    if isinstance(step_or_relayout, tuple):
        name, t = step_or_relayout
        what = f"{name}|{list(t.dims)}"
    else:
        step = step_or_relayout
        op = getattr(step.op, "inner", step.op)   # an NHWC variant: the op it stands for
        what = (f"{op!r}|" + ";".join(str(list(t.dims)) for t in step.input_types))
    return f"{target}|{dtype}|{batch}|{layout}|{what}"


def region_costs(plan: Plan, region: Region, lookup: Callable[[str], float | None],
                 batch: int, dtype: str, target: str) -> dict | None:
    """{layout: seconds a training step spends on the region in it}, or None where a
    time is missing."""
    costs = {}
    for layout in LAYOUTS:
        total = 0.0
        for node in region.steps:
            step = plan.step_of(node)
            found = lookup(cost_key(step, layout, batch, dtype, target))
            if found is None:
                return None
            total += found
        if layout == NHWC:
            changes = [("to_nhwc", plan.types[v]) for v in region.entering] + \
                      [("to_nchw", plan.types[v]) for v in region.leaving]
            for change in changes:
                found = lookup(cost_key(change, NHWC, batch, dtype, target))
                if found is None:
                    return None
                total += found
        costs[layout] = total
    return costs


def _choose(plan: Plan, region: Region, mode: str, lookup, batch, dtype, target) -> Region:
    working = any(_changes_work(plan.step_of(n)) for n in region.steps)
    if mode == "nchw":
        return replace(region, why="NETDSL_LAYOUT=nchw")
    if not working:
        return replace(region, why="no op of it has an NHWC kernel")
    if mode == "nhwc":
        return replace(region, layout=NHWC, why="NETDSL_LAYOUT=nhwc")
    costs = region_costs(plan, region, lookup, batch, dtype, target)
    if costs is None:
        return replace(region, why="not measured")
    best = NHWC if costs[NHWC] < costs[NCHW] else NCHW
    return replace(region, costs=costs, layout=best, why="the cheaper measured")


def layout(plan: Plan, outputs=frozenset(), mode: str | None = None, target: str = "host",
           costs: Callable[[str], float | None] | None = None, batch: int | None = None,
           dtype: str = "float32") -> LaidOut:
    """`plan` with its regions laid out as `mode` (default NETDSL_LAYOUT) decides;
    `costs` a lookup of measured times (default: those the runtime provides), `batch`
    the batch they are looked up at (default the train clause's)."""
    mode = MODE if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"layout mode {mode!r}: expected one of {MODES}")
    if target not in CPU_TARGETS:
        return LaidOut(plan, (), mode)   # the GPU's kernels are NCHW's
    lookup = _provided if costs is None else costs
    if batch is None:
        batch = plan.graph.graph.get("train", {}).get("batch", 32)
    regions = tuple(_choose(plan, r, mode, lookup, batch, dtype, target)
                    for r in find_regions(plan, outputs))
    nhwc = [r for r in regions if r.layout == NHWC]
    if not nhwc:
        return LaidOut(plan, regions, mode)
    return LaidOut(_rewrite(plan, nhwc), regions, mode)


def _name(plan: Plan, value: str, to: str) -> str:
    base = f"{value}.{to.lower()}"
    name, n = base, 1
    while name in plan.types:
        n += 1
        name = f"{base}{n}"
    return name


def _rewrite(plan: Plan, regions: list[Region]) -> Plan:
    """The steps of `regions` in NHWC, a to_nhwc after each entering value and a to_nchw
    after each leaving one, their readers reading those."""
    inside = {node for r in regions for node in r.steps}
    types = dict(plan.types)
    into: dict[str, str] = {}    # entering value -> its NHWC copy, read inside
    out_of: dict[str, str] = {}  # leaving value -> its NCHW copy, read outside
    for region in regions:
        for value in region.entering:
            if value not in into:
                into[value] = _name(plan, value, NHWC)
        for value in region.leaving:
            out_of[value] = _name(plan, value, NCHW)
    made: dict[str, list[Step]] = {}   # value -> the changes to run right after it

    def change(value: str, name: str, to: str) -> None:
        t = plan.types[value]
        types[name] = t
        made.setdefault(value, []).append(
            Step(name, Relayout(to), (value,), (t,), {}, origin=_origin(plan, value)))

    for value, name in into.items():
        change(value, name, NHWC)
    for value, name in out_of.items():
        change(value, name, NCHW)
    steps = [s for v in plan.inputs if v in made for s in made[v]]
    for step in plan.steps:
        if step.node in inside:
            inputs = tuple(into.get(s, s) for s in step.inputs)
            step = replace(step, op=step.op.in_layout(NHWC, *step.input_types), inputs=inputs)
        else:
            step = replace(step, inputs=tuple(out_of.get(s, s) for s in step.inputs))
        steps.append(step)
        steps += made.get(step.node, [])
    return replace(plan, steps=steps, types=types)


def _origin(plan: Plan, value: str) -> str:
    """The graph node a layout change stands for: the value it copies, or that value's own
    origin (a lowering's part of a node)."""
    if value in plan.graph:
        return value
    step = plan.by_node.get(value)
    return step.origin if step is not None and step.origin else value

