"""Writing the spec: the layers as pipelines, named after the ONNX nodes, in fmt's form.

A layer whose output only the next layer reads continues that layer's pipeline, so
`Conv -> BatchNormalization -> Relu` reads as one line. A pipeline is named after the
module path of its last ONNX node (`/layer1/layer1.0/relu_1/Relu` -> `layer1_0_relu_1`).
The network's outputs are scored by a loss, as every spec's are: cross_entropy against
a class target for a vector of scores, else mse against a target of their shape.
"""
from __future__ import annotations

import re

from netdsl.fmt import format_text
from netdsl.onnx_import.layers import CELLS, Layer, Network
from netdsl.ops import OPS
from netdsl.ops.base import REQUIRED

__all__ = ["write_spec", "call_text", "value_text", "identifier", "in_order", "operator"]

KEYWORDS = frozenset(("network", "input", "target", "state", "import", "block", "in", "out",
                      "for", "share", "loss", "train", "true", "false", "none", "seq", "class",
                      "learned", "zeros", "x"))


def value_text(value) -> str:
    """A setting as a spec writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(float(f"{value:.7g}"))  # weights are float32: 7 digits say it all
    if isinstance(value, str) and type(value) is not str:
        return str(value)  # a block parameter (structure.Param): its name
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return str(value)


def call_text(op: str, args: dict, tensors: list[str] = ()) -> str:
    """`op(tensors, required..., key=value)`: settings equal to their defaults left out;
    a bare name when nothing is left."""
    parts = list(tensors)
    if op not in OPS:  # a stdlib cell: its settings in order
        return f"{op}({', '.join(parts + [value_text(v) for v in args.values()])})"
    positional = True
    for arg in OPS[op].args:
        if arg.name not in args:
            positional = False
            continue
        value = args[arg.name]
        if arg.default is REQUIRED and positional:
            parts.append(value_text(value))
        elif arg.default is REQUIRED or value != arg.default or \
                (OPS[op].multi_output and arg.name == "index"):  # one part, not all of them
            positional = False
            parts.append(f"{arg.name}={value_text(value)}")
    return f"{op}({', '.join(parts)})" if parts else op


def identifier(origin: str, fallback: str) -> str:
    """A value name from an ONNX node name: its module path, the op type left out."""
    parts = [p for p in re.split(r"[/:]", origin) if p]
    if len(parts) > 1 and re.fullmatch(r"[A-Z][A-Za-z0-9]*(_\d+)?", parts[-1]):
        parts = parts[:-1]
    kept = [p for i, p in enumerate(parts)
            if not (i + 1 < len(parts) and parts[i + 1].startswith(p + "."))]
    name = re.sub(r"\W+", "_", "_".join(kept)).strip("_").lower()
    name = re.sub(r"_+", "_", name)
    if not name or len(name) > 40:
        name = fallback
    if name[0].isdigit():
        name = "n" + name
    if name in OPS or name in KEYWORDS:
        name += "_out"
    return name


class Names:
    """Unique names for values, from the ONNX nodes that make them."""

    def __init__(self, taken=()):
        self.taken = set(taken)

    def make(self, base: str) -> str:
        name, n = base, 1
        while name in self.taken:
            n += 1
            name = f"{base}_{n}"
        self.taken.add(name)
        return name


def chains(net: Network, layers: list[Layer]) -> list[list[Layer]]:
    """`layers` (the network's, or some of them) cut into pipelines: a layer joins the
    pipeline of its first input when nothing else reads that input and it is no output
    of the network."""
    readers = net.consumers()
    outputs = set(net.outputs) | {state.source for state in net.states.values()} | \
        {state.start for state in net.states.values() if state.start}
    made = {layer.output for layer in layers}
    return pipelines(layers, lambda first: first in made and first not in outputs
                     and len(readers.get(first, [])) == 1)


def pipelines(layers: list[Layer], may_join) -> list[list[Layer]]:
    """`layers` in order, cut into pipelines: a layer written as a call (no operator)
    continues the pipeline that ends at its first input when `may_join(that input)`."""
    chain_of: dict[str, list[Layer]] = {}
    result = []
    for layer in layers:
        first = layer.inputs[0] if layer.inputs else None
        if (first in chain_of and chain_of[first][-1].output == first
                and operator(layer.op) is None and may_join(first)):
            chain = chain_of.pop(first)
            chain.append(layer)
        else:
            chain = [layer]
            result.append(chain)
        chain_of[layer.output] = chain
    return result


def pipeline_text(chain: list[Layer], names: dict[str, str]) -> str:
    head = chain[0]
    tensors = [names[i] for i in head.inputs]
    infix = operator(head.op)
    if infix is not None:
        text = f" {infix} ".join(tensors)
    elif len(tensors) == 1:
        text = f"{tensors[0]} -> {call_text(head.op, head.args)}"
    else:
        text = call_text(head.op, head.args, tensors)
    for layer in chain[1:]:
        text += " -> " + call_text(layer.op, layer.args, [names[i] for i in layer.inputs[1:]])
    return text


def operator(op: str) -> str | None:
    """The infix operator that writes an op (`+` for add), if any."""
    return OPS[op].operator if op in OPS else None


def scored(net: Network, value: str) -> bool:
    """Whether an output looks like class scores: a vector not already normalised."""
    producer = next((l for l in net.layers if l.output == value), None)
    return len(net.dims[value]) == 1 and net.dims[value][0] >= 2 and producer is not None and \
        producer.op not in ("softmax", "log_softmax", "sigmoid")


def input_names(net: Network) -> dict[str, str]:
    """Each input's name in the spec: ONNX's where it is a plain name (a spec exported
    by netc export keeps its own), else x, x2, ..."""
    taken = Names((KEYWORDS - {"x"}) | set(OPS))  # x: reserved for a block's input only
    names = {}
    for n, value in enumerate(net.inputs, 1):
        given = net.onnx_names.get(value, "")
        plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,30}", given) and \
            given not in taken.taken
        names[value] = taken.make(given if plain else "x" if n == 1 else f"x{n}")
    return names


def write_spec(net: Network, lines: list[str] | None = None, names: dict | None = None,
               header: str = "", rest: list[Layer] = ()) -> tuple[str, dict[str, str]]:
    """The spec of `net` in fmt's canonical form, and the names it gives the inputs and
    the values it names. `lines` and `names`, when given, are statements and value
    names a structure pass already wrote (blocks, calls; a list among the lines: layers
    to write as pipelines there), and `rest` the layers they leave to be written as
    pipelines after them (side branches)."""
    text = [f"network {net.name}"]
    if any(layer.op in CELLS for layer in net.layers):
        text.append("import rnn")
    names = {**input_names(net), **(names or {})}
    taken = Names(names.values())
    for value, dims in net.inputs.items():
        seq = "seq" if value in net.sequences else ""
        if value in net.classes:  # word indices
            kind = f"{seq + ' ' if seq else ''}class({net.classes[value]})"
        else:
            kind = f"{seq}{value_text(list(dims))}"
        text.append(f"input  {names[value]} : {kind}")
    targets = []
    for i, value in enumerate(net.outputs):
        target = taken.make("y")
        klass = scored(net, value)
        dims = net.dims[value]
        seq = "seq " if value in net.sequences else ""
        text.append(f"target {target} : {seq}" + (f"class({dims[0]})" if klass
                                                   else value_text(list(dims))))
        targets.append((target, klass))
    text.extend(_states(net, names, taken))
    text.append("")
    for item in lines if lines is not None else [net.layers]:
        # a line as written, or layers to write as pipelines at this place
        text.extend(_statements(net, item, names, taken) if isinstance(item, list) else [item])
    if rest:
        text.extend(_statements(net, list(rest), names, taken))
    for value, (target, klass) in zip(net.outputs, targets):
        kind = "cross_entropy" if klass else "mse"
        text.append(f"loss {kind}({names[value]}, {target})")
    return format_text(header + "\n".join(text) + "\n"), names


def _states(net: Network, names: dict, taken: Names) -> list[str]:
    """`state h : [n] = learned` for each value a recurrence reads back; the reads named
    `h[t-1]`. A state started from a value the network computes is declared after that
    value's statement (`_statements`), unless the value is an input."""
    lines = []
    hints = {state.source: state.hint for state in net.states.values()}
    short = [hint.split("/")[-1] for hint in hints.values()]
    for read, state in net.states.items():
        if state.source not in names:
            last = state.hint.split("/")[-1]   # `c`, unless several states are called so
            hint = last if short.count(last) == 1 else state.hint
            names[state.source] = taken.make(identifier(hint.replace("/", "_"), "h"))
            if state.start is None or state.start in net.inputs:
                lines.append(_declaration(state, names))
        names[read] = f"{names[state.source]}[t-{state.delay}]"
    return lines


def _declaration(state, names: dict) -> str:
    """`state h : [n]`, with ` = learned`, ` = 0.5` or ` = enc` where it does not start
    from zeros."""
    if state.start is not None:
        init = f" = {names[state.start]}"
    elif state.init == "zeros":
        init = ""
    else:
        init = f" = {state.init if isinstance(state.init, str) else value_text(state.init)}"
    return f"state  {names[state.source]} : {value_text(list(state.dims))}{init}"


def in_order(pipelines: list[list[Layer]], after: dict | None = None) -> list[list[Layer]]:
    """The pipelines ordered so that each comes after those it reads (a pipeline may read
    a value of one that starts later than it), and a reader of a value in `after` after
    the value it names there too (a state's read after the state's start)."""
    after = after or {}
    made = {layer.output: i for i, chain in enumerate(pipelines) for layer in chain}
    needs = [{made[source] for layer in chain for name in layer.inputs
              for source in (name, after.get(name))
              if source in made and made[source] != i} for i, chain in enumerate(pipelines)]
    done, order = set(), []
    while len(order) < len(pipelines):
        for i, chain in enumerate(pipelines):
            if i not in done and needs[i] <= done:
                done.add(i)
                order.append(chain)
                break
    return order


def _statements(net: Network, layers: list[Layer], names: dict, taken: Names) -> list[str]:
    lines = []
    outputs = set(net.outputs)
    rank = 0
    started = {read: state.start for read, state in net.states.items()
               if state.start is not None and state.start not in net.inputs}
    declared = set()
    for chain in in_order(chains(net, layers), started):
        for layer in chain:
            layer.rank, rank = rank, rank + 1
        last = chain[-1]
        base = "logits" if last.output in outputs and scored(net, last.output) and \
            len(outputs) == 1 else identifier(last.origin, last.op)
        if last.output not in names:  # a state's source is named by its declaration
            names[last.output] = taken.make(base)
        lines.append(f"{names[last.output]} = {pipeline_text(chain, names)}")
        for read, start in started.items():  # the states this value starts
            source = net.states[read].source
            if start == last.output and source not in declared:
                declared.add(source)
                lines.append(_declaration(net.states[read], names))
    return lines
