"""The passes of `netc import`, in order, from a file to a spec and its weights."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import onnx

from netdsl.driver import CheckFailed, check_text
from netdsl.errors import SpecError
from netdsl.onnx_import.fold import fold
from netdsl.onnx_import.layers import Network
from netdsl.onnx_import.names import name_weights
from netdsl.onnx_import.read import prepare, read_model
from netdsl.onnx_import.translate import translate
from netdsl.onnx_import.structure import recover, trunk_output
from netdsl.onnx_import.write import input_names, scored, write_spec

__all__ = ["Imported", "import_model", "import_proto"]


@dataclass
class Imported:
    """A model brought in: the spec's text, its tensors by PyTorch-style name, and the
    translated layers."""

    text: str
    tensors: dict[str, np.ndarray]
    network: Network


def import_model(path: str, name: str | None = None) -> Imported:
    """Read, fold, translate and write `path` as a spec named `name` (the file's stem).

    Raises
    ------
    SpecError, SpecErrors
        For a file that is no usable model, and for every unsupported operator or
        attribute (all of them, one error per kind).
    """
    name = _network_name(name or os.path.splitext(os.path.basename(path))[0])
    return import_proto(read_model(path), path, name)


def import_proto(model: onnx.ModelProto, path: str, name: str) -> Imported:
    """`import_model` of a model already loaded; `path` names it in errors."""
    model = prepare(model, path)                   # checked, shapes inferred
    folded = fold(model)                           # shape arithmetic and constants evaluated
    net = translate(folded, model, path, name)     # netdsl layers with their weights
    header = f"# imported by netc import from {os.path.basename(path)}\n"
    structured = _structured(net, header)         # blocks and repeats, when it is one path
    if structured is not None:
        return structured
    text, names = write_spec(net, header=header)   # pipelines in fmt's canonical form
    try:
        checked = check_text(text, f"{name}.net")
    except CheckFailed as exc:
        raise SpecError(f"internal: the spec written for {path} does not check: "
                        f"{exc.errors[0].message}", None, "please report this with the model"
                        ) from None
    return Imported(text, name_weights(checked, net, names), net)


def _structured(net: Network, header: str) -> Imported | None:
    """The spec with blocks and repeats, if the network is one path and the result
    checks and matches every layer; else None, and the flat spec is written."""
    if net.states:
        return None  # a recurrence's statements are written as the loop's assignments
    main = trunk_output(net)
    output = "logits" if scored(net, main) else "output"
    structured = recover(net, input_names(net), output)
    if structured is None:
        return None
    lines = []
    for block in structured.blocks:
        lines += [f"block {block.name}({', '.join(block.params)}) {{",
                  *("  " + line for line in block.body), "}", ""]
    names = dict(structured.taps)
    try:
        text, names = write_spec(net, lines + [structured.feeders] + structured.lines, names,
                                 header, rest=structured.side)
        checked = check_text(text, f"{net.name}.net")
        return Imported(text, name_weights(checked, net, names), net)
    except (CheckFailed, SpecError):
        return None


def _network_name(stem: str) -> str:
    name = re.sub(r"\W+", "_", stem).strip("_") or "imported"
    return name if not name[0].isdigit() else "net_" + name
