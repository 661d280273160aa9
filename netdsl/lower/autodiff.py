"""Lowering pass, autodiff: the backward schedule of a plan, from each op's gradient rule.

Walking back from the losses, a step is differentiated when a value it computes
receives a gradient and a trained parameter lies behind it (through inputs that pass
a gradient: not an op's `nondifferentiable` ones). Where a value is read several times
(residual, dense and shared uses) its gradients are summed, and a state passes its
gradient on to the value it delays, k steps back (BPTT). The schedule names the steps
of the plan it is given: run after the rewriting passes, it differentiates exactly the
steps that run.
"""
from __future__ import annotations

from dataclasses import dataclass

from netdsl.lower.plan import Plan
from netdsl.ops.base import positions

__all__ = ["Backward", "autodiff"]


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


def autodiff(plan: Plan, losses: tuple[str, ...] | None = None,
             params: tuple[str, ...] | None = None) -> Backward:
    """The backward schedule of the named losses (default all), summed.

    `params` restricts which parameters receive gradients (a GAN's generator step must
    not differentiate into the discriminator's weights it also passes).

    Raises
    ------
    KeyError
        For a loss the plan does not have.
    """
    losses = tuple(plan.losses) if losses is None else tuple(losses)
    unknown = [name for name in losses if name not in plan.losses]
    if unknown:
        raise KeyError(f"no loss named {unknown[0]!r}")
    wanted = set(plan.params if params is None else params)
    reaches = _reaching(plan, wanted)
    seeds = tuple(plan.losses[name] for name in losses)
    # walk back from the losses: a node gets a gradient when a node that has one passes it;
    # a state passes it on to its source, which an earlier pass visited, so repeat until stable
    receives = set(seeds)
    while True:
        order, grad_inputs = [], {}
        for step in reversed(plan.steps):
            if step.node not in receives or not reaches[step.node]:
                continue
            order.append(step.node)
            blocked = positions(step.op, step.op.nondifferentiable)
            grad_inputs[step.node] = tuple(
                source if reaches.get(source) and i not in blocked else None
                for i, source in enumerate(step.inputs))
            receives.update(s for s in grad_inputs[step.node] if s is not None)
        delayed = {state.source for node, state in plan.states.items() if node in receives}
        delayed |= {state.start for node, state in plan.states.items()  # `= last(encoded)`
                    if node in receives and reaches.get(state.start)}
        if delayed <= receives:
            break
        receives |= delayed
    trained = tuple(key for key in plan.params if key in wanted and (
        any(key in plan.step_of(node).params.values() for node in order)
        or any(state.param == key for node, state in plan.states.items() if node in receives)))
    return Backward(losses, seeds, tuple(order), grad_inputs, trained)


def _reaching(plan: Plan, wanted: set[str]) -> dict[str, bool]:
    """Whether a trained parameter reaches each value through ops that pass a gradient."""
    reaches: dict[str, bool] = {}
    while True:
        before = dict(reaches)
        for node, state in plan.states.items():
            reaches[node] = (state.param in wanted or reaches.get(state.source, False)
                             or reaches.get(state.start, False))
        for step in plan.steps:
            owns = any(key in wanted for key in step.params.values())
            blocked = positions(step.op, step.op.nondifferentiable)
            passes = any(reaches.get(s) for i, s in enumerate(step.inputs) if i not in blocked)
            reaches[step.node] = owns or passes
        if reaches == before:
            return reaches
