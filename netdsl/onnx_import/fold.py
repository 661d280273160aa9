"""Constant folding: what a model computes from constants alone becomes a constant.

Exporters write shape arithmetic into the graph (`Shape -> Gather -> Unsqueeze ->
Concat -> Reshape` for `x.view(x.size(0), -1)`), and weights transposed or reshaped by
nodes. Every node whose inputs are all known is evaluated once, by onnx's reference
implementation, and disappears; `Shape` of a value is known from shape inference, its
batch dim standing as BATCH (a marker the Reshape translation recognises).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

__all__ = ["fold", "fold_graph", "Folded", "BATCH", "value_shapes"]

# the batch size as folded shape arithmetic sees it: a prime no real dim is likely to be
BATCH = 99991
# operators that draw random numbers: never folded, whatever their inputs
RANDOM = frozenset(("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Bernoulli", "Multinomial"))
# operators whose output a shape operand sizes: with the batch in it, a value per example
BATCHED = frozenset(("ConstantOfShape", "Expand", "Tile"))


@dataclass
class Folded:
    """The nodes left to translate, the constants by value name, and each value's shape
    (None for a dim inference left symbolic)."""

    nodes: list[onnx.NodeProto]
    constants: dict[str, np.ndarray]
    shapes: dict[str, tuple]


def value_shapes(graph: onnx.GraphProto) -> dict[str, tuple]:
    """Each typed value's shape: its dims, None where symbolic."""
    shapes = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                      for d in tensor.shape.dim)
    return shapes


def fold(model: onnx.ModelProto) -> Folded:
    return fold_graph(model.graph, {}, {}, {o.domain: o.version for o in model.opset_import})


def fold_graph(graph: onnx.GraphProto, constants: dict, shapes: dict, opsets: dict) -> Folded:
    """`graph` folded, reading the `constants` and `shapes` of an enclosing graph (for a
    Scan's body: the weights it reads from outside by name); the result holds both."""
    constants = {**constants, **{t.name: numpy_helper.to_array(t) for t in graph.initializer}}
    shapes = {**shapes, **value_shapes(graph)}
    for tensor in graph.initializer:
        shapes[tensor.name] = constants[tensor.name].shape
    outputs = {o.name for o in graph.output}
    left = []
    for node in graph.node:
        values = _evaluate(node, constants, shapes, opsets, outputs)
        if values is None:
            left.append(node)
            continue
        for name, value in zip(node.output, values):
            if name:
                constants[name] = np.asarray(value)
                shapes[name] = np.shape(value)
    return Folded(left, constants, shapes)


def _evaluate(node, constants, shapes, opsets, outputs):
    """The outputs of `node` if they follow from constants alone, else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type in RANDOM or \
            any(name in outputs for name in node.output):
        return None
    if node.op_type == "Shape":
        shape = shapes.get(node.input[0])
        if node.input[0] in constants:
            shape = constants[node.input[0]].shape
        elif shape is None or any(d is None for d in shape[1:]):
            return None
        dims = np.array([BATCH if d is None else d for d in shape], np.int64)
        attrs = {a.name: a.i for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", len(dims))
        return [dims[start:end]]
    if node.op_type == "Size" and node.input[0] not in constants:
        return None
    if not all(name in constants for name in node.input if name):
        return None
    if node.op_type in BATCHED and any(np.any(np.asarray(constants[name]) == BATCH)
                                       for name in node.input if name):
        return None  # a value of one row per example: translated, never a constant
    feeds = {name: constants[name] for name in node.input if name}
    try:
        evaluator = ReferenceEvaluator(_single(node, opsets))
        return evaluator.run(None, feeds)
    except Exception:  # an op the reference cannot run is translated, or reported, later
        return None


def _single(node, opsets) -> onnx.ModelProto:
    """A model of one node, for the reference evaluator (which needs the opset)."""
    graph = onnx.helper.make_graph([node], "fold", [], [])
    for name in node.input:
        if name:
            graph.input.append(onnx.helper.make_empty_tensor_value_info(name))
    for name in node.output:
        if name:
            graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()])
