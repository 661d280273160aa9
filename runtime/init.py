"""Initial parameter values: the op's own rule, or a scheme chosen per activation.

The seed notes teach three scales for a layer with fan-in n and fan-out m:
1/sqrt(n) (LeCun), Xavier/Glorot sqrt(2/(n+m)) for tanh and sigmoid units, and
He sqrt(2/n) for ReLU units. `auto` picks per layer by the activation that reads
the layer's output; `torch` keeps each op's PyTorch default.
"""
from __future__ import annotations

import math

import numpy as np

from netdsl.runtime.plan import Plan

__all__ = ["SCHEMES", "initial_params"]

SCHEMES = ("auto", "torch", "he", "xavier", "fan_in")
# activations that pick the scheme of the layer feeding them, through shape-only ops
_RELU_LIKE = {"relu", "leaky_relu", "prelu", "elu"}
_SQUASHING = {"tanh", "sigmoid", "softplus"}
_TRANSPARENT = {"batchnorm", "layernorm", "dropout", "flatten", "reshape", "maxpool",
                "avgpool", "global_avgpool", "gaussian_noise", "identity"}
_WEIGHTED = {"dense", "conv", "conv1d", "conv2d", "conv_transpose", "deconv"}


def initial_params(plan: Plan, scheme: str = "auto", seed: int = 0) -> dict[str, np.ndarray]:
    """Parameter key -> float32 array, deterministic in `seed`.

    Raises
    ------
    ValueError
        For an unknown scheme.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init scheme '{scheme}'; choose one of {', '.join(SCHEMES)}")
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for step in plan.steps:
        own = {name: key for name, key in step.params.items() if key not in params}
        if not own:
            continue  # no parameters, or a shared layer whose first use made them
        values = step.op.init(rng, *step.input_types)
        rule = _scheme_for(plan, step) if scheme == "auto" else scheme
        if rule != "torch" and step.op.name in _WEIGHTED:
            values = _scaled(rng, rule, values, step)
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
        name = op.name if op is not None else ""
        if name in _RELU_LIKE:
            return "he"
        if name in _SQUASHING:
            return "xavier"
        if name not in _TRANSPARENT:
            return "torch"


def _scaled(rng, rule: str, values: dict, step) -> dict:
    """Replace the weight by a scheme's draw and zero the bias."""
    weight = values["weight"]
    receptive = math.prod(weight.shape[2:])
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    if step.op.name in ("conv_transpose", "deconv"):  # weight is (in, out, k...)
        fan_in, fan_out = fan_out, fan_in
    if rule == "he":
        new = rng.standard_normal(weight.shape) * math.sqrt(2 / fan_in)
    elif rule == "xavier":
        bound = math.sqrt(6 / (fan_in + fan_out))
        new = rng.uniform(-bound, bound, weight.shape)
    else:  # fan_in: uniform with variance 1/(3 n), the 1/sqrt(n) rule
        bound = 1 / math.sqrt(fan_in)
        new = rng.uniform(-bound, bound, weight.shape)
    values = dict(values, weight=new.astype(np.float32))
    if "bias" in values:
        values["bias"] = np.zeros_like(values["bias"])
    return values
