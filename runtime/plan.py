"""Pass 6, plan: the schedule of a training step over named values.

A checked graph becomes a list of forward steps (one per node a loss or an output
needs, in topological order), the learned parameters in a fixed order, and, per
set of losses, the backward schedule that autodiff derives from each op's
gradient rule: the nodes to differentiate in reverse order and the values whose
gradients are summed where the graph forks (residual, dense and shared uses).
The plan is backend-neutral: the reference interpreter, the NumPy executor and
the CuPy executor all run it.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from functools import lru_cache

import networkx as nx

from netdsl.cost import node_params
from netdsl.errors import SpecError
from netdsl.graph import forward_view
from netdsl.ops.base import Op
from netdsl.shapes import input_types
from netdsl.types import TensorType

__all__ = ["Param", "Step", "Backward", "Plan", "build_plan", "input_names"]


@dataclass(frozen=True)
class Param:
    """A learned array: `key` is 'node.name' (the owning node, PyTorch's parameter name)."""

    key: str
    node: str
    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Step:
    """One forward step: run `op` on the values `inputs` with the parameters `params`.

    `params` maps the op's parameter names to Param keys (a shared layer names its
    first use's keys). `borrows` maps a forward keyword to the node whose saved array
    it receives (maxunpool reads its maxpool's argmax indices).
    """

    node: str
    op: Op
    inputs: tuple[str, ...]
    input_types: tuple[TensorType, ...]
    params: dict[str, str]
    borrows: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Backward:
    """Autodiff's schedule for one set of losses.

    `order` lists the nodes whose backward runs, in reverse topological order;
    `seeds` are the loss nodes that start with dL/dL = 1; `grad_inputs[node]` lists,
    per input position, the value whose gradient that input receives, or None where
    no gradient is needed (labels, constants, values no parameter reaches).
    `params` are the keys that receive gradients.
    """

    losses: tuple[str, ...]
    seeds: tuple[str, ...]
    order: tuple[str, ...]
    grad_inputs: dict[str, tuple[str | None, ...]]
    params: tuple[str, ...]


@dataclass
class Plan:
    """A network ready to execute: forward steps, parameters, and autodiff per loss set."""

    graph: nx.DiGraph
    inputs: dict[str, TensorType]       # input and target nodes the step reads
    steps: list[Step]
    params: dict[str, Param]            # in a fixed order: the flat parameter layout
    losses: dict[str, str]              # loss name -> node
    types: dict[str, TensorType]

    def step_of(self, node: str) -> Step:
        return self._by_node()[node]

    def _by_node(self) -> dict[str, Step]:
        if not hasattr(self, "_steps_by_node"):
            self._steps_by_node = {s.node: s for s in self.steps}
        return self._steps_by_node

    def steps_for(self, nodes) -> list[Step]:
        """The forward steps that the values `nodes` depend on, in order."""
        needed = set(nodes)
        for node in nodes:
            needed |= nx.ancestors(self.graph, node)
        return [s for s in self.steps if s.node in needed]

    def backward(self, losses: tuple[str, ...] | None = None,
                 params: tuple[str, ...] | None = None) -> Backward:
        """The backward schedule for the named losses (default all), summed.

        `params` restricts which parameters receive gradients (a GAN's generator step
        must not differentiate into the discriminator's weights it also passes).
        """
        key = (tuple(self.losses) if losses is None else tuple(losses), params)
        cache = self.__dict__.setdefault("_backward_cache", {})
        if key not in cache:
            cache[key] = _autodiff(self, *key)
        return cache[key]


def build_plan(graph: nx.DiGraph) -> Plan:
    """Schedule a checked graph.

    Raises
    ------
    SpecError
        For what cannot run: recurrent states, which need unrolling over time.
    """
    for node, data in graph.nodes(data=True):
        if data["kind"] == "state":
            raise SpecError(
                f"'{data['state'].name}' is a recurrent state; training recurrent networks "
                "needs unrolling over time, which `netc run` does not do",
                data["state"].span, "netc check, compile and draw accept it")
    losses = dict(graph.graph["losses"])
    if not losses:
        raise SpecError("the spec has no loss, so there is nothing to train", None,
                        "add one, e.g. `loss cross_entropy(logits, y)`")
    needed = set(losses.values())
    for node in losses.values():
        needed |= nx.ancestors(graph, node)
    order = [n for n in nx.topological_sort(forward_view(graph)) if n in needed]
    inputs = {n: graph.nodes[n]["type"] for n in order
              if graph.nodes[n]["kind"] in ("input", "target")}
    params: dict[str, Param] = {}
    steps = []
    for node in order:
        data = graph.nodes[node]
        if data["kind"] != "op":
            continue
        owner = data.get("shares") or node
        for name, shape in node_params(graph, node).items():
            params[f"{node}.{name}"] = Param(f"{node}.{name}", node, name, tuple(shape))
        op = data["op"]
        sources = tuple(source for source, _ in data["inputs"])
        names = input_names(type(op))
        borrows = {kw: (sources[names.index(arg)], saved)
                   for kw, (arg, saved) in getattr(op, "borrows", {}).items()}
        types = tuple(t.step() for t in input_types(graph, node))
        keys = {name: f"{owner}.{name}" for name in op.params(*types)}
        steps.append(Step(node, op, sources, types, keys, borrows))
    types = {n: graph.nodes[n]["type"] for n in order}
    return Plan(graph, inputs, steps, params, losses, types)


@lru_cache(maxsize=None)
def input_names(op: type[Op]) -> tuple[str, ...]:
    """The names an op's shape rule gives its tensor inputs (what `keeps` refers to)."""
    signature = inspect.signature(op.shape)
    return tuple(p.name for p in signature.parameters.values()
                 if p.name != "self" and p.kind is not p.VAR_POSITIONAL)


def _autodiff(plan: Plan, losses: tuple[str, ...], only: tuple[str, ...] | None) -> Backward:
    unknown = [name for name in losses if name not in plan.losses]
    if unknown:
        raise KeyError(f"no loss named {unknown[0]!r}")
    wanted = set(plan.params if only is None else only)
    # a value needs a gradient when a trained parameter reaches it through ops that pass one
    reaches: dict[str, bool] = {}
    for step in plan.steps:
        owns = any(key in wanted for key in step.params.values())
        passes = step.op.name != "stop_gradient" and any(reaches.get(s) for s in step.inputs)
        reaches[step.node] = owns or passes
    seeds = tuple(plan.losses[name] for name in losses)
    # walk back from the losses: a node gets a gradient when a node that has one passes it
    receives = set(seeds)
    order, grad_inputs = [], {}
    for step in reversed(plan.steps):
        if step.node not in receives or not reaches[step.node]:
            continue
        order.append(step.node)
        grad_inputs[step.node] = tuple(
            source if reaches.get(source) and step.op.name != "stop_gradient" else None
            for source in step.inputs)
        receives.update(s for s in grad_inputs[step.node] if s is not None)
    trained = tuple(key for key in plan.params if key in wanted and any(
        key in plan.step_of(node).params.values() for node in order))
    return Backward(losses, seeds, tuple(order), grad_inputs, trained)
