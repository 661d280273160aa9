"""The layout pass's measured costs (netdsl.lower.layout): each step's time, forward and
backward, in NCHW and in NHWC, at its shapes, and each layout change's, timed once and
kept in `layout_costs.json` beside the compiled kernels (a ChoiceFile, as the
convolutions' choices). Importing this module makes the file the pass's source of costs
(`provide_costs`); `measure` fills it for a network.

`measure` lowers the network both ways (every region NCHW, then every region NHWC), runs
a few training steps of each on random data, and times every step's forward and backward
in the process's CPU time (all its threads'), the shortest of the steps counting. A
fused step's time counts for the first node it runs (a convolution and its relu: the
convolution), its other nodes counting 0; a key met at several nodes (one layer's shape
used again) keeps their mean, so that a region's sum is what its steps took.
"""
from __future__ import annotations

import time

import numpy as np

from netdsl.lower.layout import NCHW, NHWC, cost_key, provide_costs
from netdsl.runtime.native.choice_file import ChoiceFile

__all__ = ["COSTS", "measure", "lookup"]

COSTS = ChoiceFile("layout_costs.json", lambda v: isinstance(v, (int, float)) and v >= 0)


def lookup(key: str) -> float | None:
    return COSTS.get(key)


provide_costs(lookup)


def _timed_steps(lowered, params, batch: dict, dtype: str, steps: int) -> dict[str, float]:
    """node -> the shortest forward + backward CPU time of its step over `steps` training
    steps (after one untimed, which makes the native choices)."""
    from netdsl.runtime.execute import Executor  # the executor imports this module's users

    ex = Executor(lowered, params, dtype=dtype)
    spent: dict[str, float] = {}
    node_of: dict[int, str] = {}

    def wrap(op):
        forward, backward = op.forward, op.backward

        def timed_forward(ctx, *xs, **kw):
            began = time.process_time()
            y = forward(ctx, *xs, **kw)
            node = next(n for n, c in ex.ctxs.items() if c is ctx)
            node_of[id(ctx)] = node
            spent[node] = spent.get(node, 0.0) + time.process_time() - began
            return y

        def timed_backward(ctx, gy):
            node = node_of.get(id(ctx))
            began = time.process_time()
            made = backward(ctx, gy)
            if node is not None:
                spent[node] = spent.get(node, 0.0) + time.process_time() - began
            return made

        op.forward, op.backward = timed_forward, timed_backward

    for op in {id(s.op): s.op for s in lowered.plan.steps}.values():
        wrap(op)
    best: dict[str, float] = {}
    for round_ in range(steps + 1):
        spent.clear()
        node_of.clear()
        ex.forward(batch, training=True)
        ex.backward()
        if round_:
            for node, seconds in spent.items():
                best[node] = min(best.get(node, seconds), seconds)
    for op in {id(s.op): s.op for s in lowered.plan.steps}.values():
        del op.forward, op.backward
    return best


def measure(network, target: str = "native", dtype: str = "float32", batch: int | None = None,
            steps: int = 3, seed: int = 0) -> dict[str, float]:
    """Time `network`'s regions in both layouts and keep the times; key -> seconds."""
    from netdsl.lower import lower  # the pipeline imports the runtime's providers lazily
    from netdsl.runtime.init import initial_params  # likewise

    graph = network if not hasattr(network, "graph") else network.graph
    if batch is None:
        batch = graph.graph.get("train", {}).get("batch", 32)
    sums: dict[str, list[float]] = {}
    for layout in (NCHW, NHWC):
        lowered = lower(graph, target, layout_mode=layout.lower())
        if not lowered.laid_out.regions:
            return {}   # no value may lie NHWC (none 4-D, or sequences): nothing to time
        laid = lowered.laid_out.plan
        params = initial_params(lowered.built, "torch", seed=seed)
        rng = np.random.default_rng(seed)
        data = {}
        for name, t in lowered.plan.inputs.items():
            shape = (batch, *t.dims)
            data[name] = (rng.integers(0, t.classes, shape) if t.classes is not None
                          else rng.standard_normal(shape).astype(dtype))
        times = _timed_steps(lowered, params, data, dtype, steps)
        regions = {n for r in lowered.laid_out.regions for n in r.steps}
        for step in lowered.plan.steps:
            nodes = getattr(step.op, "nodes", (step.node,))
            seconds = times.get(step.node, 0.0)
            for i, node in enumerate(nodes):
                if node in regions:
                    key = cost_key(laid.step_of(node), layout, batch, dtype, target)
                    sums.setdefault(key, []).append(seconds if i == 0 else 0.0)
                elif node not in laid.graph and layout == NHWC and node in laid.by_node:
                    change = laid.step_of(node)   # a layout change: its value's type
                    name = change.op.name
                    key = cost_key((name, laid.types[change.inputs[0]]), NHWC, batch, dtype,
                                   target)
                    sums.setdefault(key, []).append(seconds)
    # a key's nodes (one layer shape, used several times) count its mean: their sum is
    # what this network's steps took, though fused in one place and not in another
    made = {key: sum(times) / len(times) for key, times in sums.items()}
    for key, seconds in made.items():
        COSTS.remember(key, seconds)
    return made
