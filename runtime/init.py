"""Initial parameter values: the op's own rule, or a scheme chosen per activation.

The seed notes teach three scales for a layer with fan-in n and fan-out m:
1/sqrt(n) (LeCun), Xavier/Glorot sqrt(2/(n+m)) for tanh and sigmoid units, and
He sqrt(2/n) for ReLU units. `auto` picks per layer by the activation that reads
the layer's output; `torch` keeps each op's PyTorch default.
"""
from __future__ import annotations

import math

import numpy as np

from netdsl.lower.plan import Plan
from netdsl.ops.numeric import draw_float32
from netdsl.settings import INIT_SCHEMES

__all__ = ["initial_params"]


def initial_params(plan: Plan, scheme: str = "auto", seed: int = 0) -> dict[str, np.ndarray]:
    """Parameter key -> float32 array, deterministic in `seed`.

    Raises
    ------
    ValueError
        For an unknown scheme.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme '{scheme}'; choose one of "
                         f"{', '.join(INIT_SCHEMES)}")
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for step in plan.steps:
        own = {name: key for name, key in step.params.items() if key not in params}
        if not own:
            continue  # no parameters, or a shared layer whose first use made them
        values = step.op.init(rng, *step.input_types)
        rule = _scheme_for(plan, step) if scheme == "auto" else scheme
        fans = step.op.fans(values["weight"].shape) if "weight" in values else None
        if rule != "torch" and fans is not None:
            values = _scaled(rng, rule, values, fans)
        params.update({key: values[name] for name, key in own.items()})
    for state in plan.states.values():
        if state.param is not None:  # a learned initial state starts at zero, as a fixed one would
            params[state.param] = np.zeros(plan.params[state.param].shape, dtype=np.float32)
    return {key: params[key] for key in plan.params}


def _scheme_for(plan: Plan, step) -> str:
    """He before ReLU units, Xavier before tanh and sigmoid, PyTorch's default otherwise."""
    graph, node = plan.graph, step.node
    while True:
        readers = list(graph.successors(node))
        if len(readers) != 1:
            return "torch"
        node = readers[0]
        op = graph.nodes[node]["op"]
        if op is None:
            return "torch"
        if op.init_scheme is not None:
            return op.init_scheme
        if not op.init_transparent:
            return "torch"


def _scaled(rng, rule: str, values: dict, fans: tuple[int, int]) -> dict:
    """Replace the weight by a scheme's draw and zero the bias."""
    weight = values["weight"]
    fan_in, fan_out = fans
    scale = math.sqrt(2 / fan_in)
    # xavier, and fan_in: uniform with variance 1/(3 n), the 1/sqrt(n) rule
    bound = math.sqrt(6 / (fan_in + fan_out)) if rule == "xavier" else 1 / math.sqrt(fan_in)

    def draw(n: int):
        return rng.standard_normal(n) * scale if rule == "he" else rng.uniform(-bound, bound, n)

    # over the op's own draw, which nothing else holds: one weight-sized array at a time
    values = dict(values, weight=draw_float32(draw, weight.shape, weight))
    if "bias" in values:
        values["bias"] = np.zeros_like(values["bias"])
    return values
