"""The imported weights under the names netdsl gives them in the written spec.

The spec is checked, and its expanded graph matched to the translated layers: an op
node is the layer with the same op reading the same values (its settings decide between
layers that read the same ones, as a ResNet's strided convolution and its projection).
Each tensor then takes the PyTorch-style name that netc export and --init-from use
(netdsl.export.weights.tensor_sources), whatever blocks the spec folds the layers into.
"""
from __future__ import annotations

import numpy as np

from netdsl.driver import Network as Checked
from netdsl.errors import SpecError
from netdsl.export.weights import tensor_sources
from netdsl.lower.plan import build_plan
from netdsl.onnx_import.layers import CELLS, Layer, Network
from netdsl.onnx_import.write import value_text

__all__ = ["name_weights", "match_layers"]


def match_layers(checked: Checked, net: Network, names: dict[str, str]) -> dict[str, Layer]:
    """netdsl node id -> the translated layer it computes.

    Raises
    ------
    SpecError
        When the spec's graph is not the translated one (a bug of the writer).
    """
    # netdsl node -> translated value; a state's read is the node `h[t-1]`
    value_of = {names[v]: v for v in [*net.inputs, *net.states]}
    free: dict[tuple, list[Layer]] = {}
    for layer in net.layers:
        free.setdefault((layer.op, tuple(layer.inputs)), []).append(layer)
    matched = {}
    nodes = checked.program.nodes
    instances: dict[str, Layer] = {}
    for node in nodes.values():
        depth = next((i for i, f in enumerate(node.scope) if f.block in CELLS), None)
        if depth is not None:  # inside a stdlib cell: the cell layer reading its input
            path = "/".join(f.name for f in node.scope[:depth + 1])
            if path not in instances:
                instances[path] = _cell(nodes, path, node.scope[depth].block, value_of, free)
            matched[node.id] = instances[path]
            value_of[node.id] = instances[path].output
            continue
        if node.kind != "op" or node.op.is_loss:
            continue
        inputs = tuple(value_of.get(source) for source, _ in node.inputs)
        candidates = free.get((node.op.name, inputs), [])
        settings = {k: _setting(v) for k, v in node.op.attrs.items()}
        alike = [c for c in candidates if all(
            settings.get(k) == _setting(v) for k, v in c.args.items() if k in settings)]
        pick = min(alike, key=lambda c: c.rank) if alike else None
        if pick is None:
            raise SpecError(f"internal: the written spec's node {node.id} ({node.op.name}) "
                            "matches no imported layer", None,
                            "please report this with the model")
        candidates.remove(pick)
        matched[node.id] = pick
        value_of[node.id] = pick.output
    return matched


def _cell(nodes, path: str, block: str, value_of: dict, free: dict) -> Layer:
    """The translated cell that the instance `path` of a stdlib cell is: the one of its
    kind reading the value the instance reads from outside."""
    inside = path + "/"
    outer = next(source for node in nodes.values() if node.id.startswith(inside)
                 for source, _ in node.inputs if not source.startswith(inside))
    candidates = free.get((block, (value_of.get(outer),)), [])
    if not candidates:
        raise SpecError(f"internal: the written spec's cell {path} ({block}) matches no "
                        "imported layer", None, "please report this with the model")
    pick = min(candidates, key=lambda c: c.rank)
    candidates.remove(pick)
    return pick


def _setting(value) -> str:
    """A setting compared as written: a per-dim value whose entries agree as one number."""
    if isinstance(value, (list, tuple)) and value and len(set(value)) == 1:
        value = value[0]
    return value_text(value)


def name_weights(checked: Checked, net: Network, names: dict[str, str]) -> dict[str, np.ndarray]:
    """Every tensor of the spec's network by its PyTorch-style name."""
    layers = match_layers(checked, net, names)
    plan = build_plan(checked.graph)
    learned = {names[read]: state.learned for read, state in net.states.items()}
    tensors = {}
    for name, source in tensor_sources(plan).items():
        if source[0] == "param":
            param = plan.params[source[1]]
            if param.node in learned:  # a state's learned initial value
                tensors[name] = learned[param.node]
                continue
            layer = layers[param.node]
            if layer.op in CELLS:  # by the dense layer's name inside the cell
                key = f"{param.node.rsplit('/', 1)[-1]}.{param.name}"
                tensors[name] = layer.params[key]
            else:
                tensors[name] = layer.params[param.name]
        else:
            tensors[name] = layers[source[1]].buffers[source[2]]
    return tensors
