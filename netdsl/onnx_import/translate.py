"""Translation: each ONNX node as netdsl layers, its weights in netdsl's layout.

One rule per ONNX operator type (RULES), naming the attributes it understands. A node
whose operator, attribute or operand netdsl cannot express is recorded, not raised, so
that one run lists every problem: one message per kind (operator and what netdsl would
need), naming the nodes. The rules are keyed by ONNX's operator types because one ONNX
operator may become several netdsl layers (or none: Dropout, Identity); what each
netdsl op computes stays defined on the op.

Values carry two shapes: ONNX's (per example: the batch axis left out) and the one the
netdsl value has. They differ where netdsl drops unit axes (global_avgpool gives [C]
where GlobalAveragePool gives [C,1,1]); a layer that needs ONNX's reads a reshape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from netdsl.errors import SpecError, SpecErrors
from netdsl.onnx_import.fold import BATCH, Folded
from netdsl.onnx_import.layers import Layer, Network, State, Unsupported
from netdsl.onnx_import.loop import LOOP, read_slice, read_step, shifted
from netdsl.onnx_import.recurrent import RECURRENT, is_recurrent, node_layout
from netdsl.onnx_import.scan import SCAN
from netdsl.ops import OPS
from netdsl.ops.pool import pooled_size

__all__ = ["translate", "RULES", "Rule"]


@dataclass(frozen=True)
class Rule:
    """How one ONNX operator type translates: `apply(t, node, attrs)`, and the attributes
    (name -> the values netdsl can follow, None: any) it understands."""

    apply: Callable
    attrs: dict = field(default_factory=dict)


def translate(folded: Folded, model: onnx.ModelProto, path: str, name: str) -> Network:
    """The network of netdsl layers that computes what the model computes.

    Raises
    ------
    SpecError, SpecErrors
        One error per kind of unsupported operator, attribute or operand, each naming
        the nodes; nothing is translated then.
    """
    return _Translator(folded, model, path, name).run()


class _Translator:
    def __init__(self, folded: Folded, model: onnx.ModelProto, path: str, name: str):
        self.folded, self.model, self.path, self.name = folded, model, path, name
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.values: dict[str, str] = {}          # ONNX value name -> netdsl value
        self.layout: dict[str, tuple] = {}        # ONNX value name -> ONNX's per-example dims
        # ONNX value name -> the order of its axes where it is not [batch, (time,) dims...]:
        # "B" the batch, "T" time, "D" an RNN's directions, numbers the value's own dims
        self.axes: dict[str, tuple] = {}
        self.seq: set[str] = set()                # netdsl values with a time axis
        self.stacks: dict[str, list[str]] = {}    # a Concat of RNN states -> its parts
        self.laid_out: dict[str, tuple] = {}      # netdsl input or output -> ONNX's axes
        self.dims: dict[str, tuple] = {}          # netdsl value -> its per-example dims
        self.onnx_dims: dict[str, tuple] = {}     # netdsl value -> ONNX's per-example dims
        self.layers: list[Layer] = []
        self.views: dict[tuple, str] = {}         # (value, dims) -> its reshape
        # ONNX values of a sequence laid out one step per row, [batch (x time), dims...]:
        # a Scan body's, and a sequence folded for a Gemm as netdsl's export writes it
        self.stepwise: set[str] = set()
        # ONNX shape values computed from the input: their entries, "B" the batch, "T"
        # the time, numbers the fixed dims
        self.symbolic: dict[str, tuple] = {}
        # ONNX values of one row per example that only a recurrence's initial state may
        # read: ("fill", number, shape) or ("learned", the row, shape), "B" in the shape
        # where the batch is
        self.filled: dict[str, tuple] = {}
        self.states: dict[str, State] = {}        # netdsl value read steps back -> its state
        self.classes: dict[str, int] = {}         # netdsl input of word indices -> V
        self.within = ""                          # the loop whose body is being translated
        # ONNX values of a Loop's iteration number, plus a constant: the offset
        self.iterations: dict[str, int] = {}
        self.stepped: list[str] = []              # the sequences Loop bodies read a step of
        # a Loop's list of the steps' values (an ONNX sequence) -> the body's value appended
        self.lists: dict[str, str] = {}
        self.problems: dict[tuple[str, str], list[str]] = {}
        self.readers: dict[str, int] = {}
        for node in folded.nodes:
            for value in node.input:
                self.readers[value] = self.readers.get(value, 0) + 1
        for output in model.graph.output:
            self.readers[output.name] = self.readers.get(output.name, 0) + 1
        self.count = 0
        self.node: onnx.NodeProto | None = None

    # ---- the walk

    def run(self) -> Network:
        inputs = {}
        initialised = set(self.folded.constants)
        recurrent = any(is_recurrent(node) or node.op_type in ("Scan", "Loop")
                        for node in self.folded.nodes)
        for info in self.model.graph.input:
            if info.name in initialised:
                continue
            shape = self.folded.shapes.get(info.name)
            elem = info.type.tensor_type.elem_type
            vocabulary = self._vocabulary(info.name)
            if vocabulary is not None and shape is not None and len(shape) in (1, 2):
                # word indices an embedding table reads: `class(V)`, a sequence of them
                # where the ids are [batch, time]
                value = self._fresh()
                self.dims[value] = self.onnx_dims[value] = ()
                self.classes[value] = vocabulary
                if len(shape) == 2:
                    self.seq.add(value)
                self.bind(info.name, value)
                inputs[value] = ()
                continue
            if recurrent and shape is not None and len(shape) == 3 and shape[2] is not None:
                # a sequence: [batch, time, features], or [time, batch, features] where an
                # RNN node reads it as it is (netdsl's input is batch-major all the same)
                value = self._fresh()
                self.dims[value] = self.onnx_dims[value] = tuple(shape[2:])
                self.seq.add(value)
                self.bind(info.name, value)
                if any(is_recurrent(n) and n.input[0] == info.name and node_layout(n) == 0
                       for n in self.folded.nodes):
                    self.axes[info.name] = self.laid_out[value] = ("T", "B", 0)
                inputs[value] = tuple(shape[2:])
                continue
            if shape is None or any(d is None for d in shape[1:]):
                self._problem("input", info.name, "an input of known shape [batch, ...] with "
                              "fixed dims after the batch")
                continue
            if len(shape) < 2:
                self._problem("input", info.name, "inputs of rank 2 or more: a batch of "
                              f"examples of at least one dim (this one is {list(shape)})")
                continue
            if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                            onnx.TensorProto.FLOAT16):
                self._problem("input", info.name, "a float input (netdsl's float inputs; "
                              f"this one is {onnx.TensorProto.DataType.Name(elem).lower()})")
                continue
            value = self._fresh()
            self.dims[value] = self.onnx_dims[value] = tuple(shape[1:])
            self.bind(info.name, value)
            inputs[value] = tuple(shape[1:])
        for node in self.folded.nodes:
            self.translate_node(node)
        outputs = []
        for info in self.model.graph.output:
            if info.name in self.folded.constants:
                self._problem("output", info.name, "an output computed from the input "
                              "(this one is a constant)")
            elif info.name in self.axes and info.name not in self.stacks:
                # an RNN's output as ONNX lays it out, time-major or with its one direction:
                # netdsl's value holds the same numbers batch-major
                outputs.append(self.values[info.name])
                self.laid_out[self.values[info.name]] = self.axes[info.name]
            elif info.name in self.symbolic or info.name in self.filled:
                self._problem("output", info.name, "an output computed from the input's "
                              "values (this one is its shape, or a constant per example)")
            elif info.name in self.values:
                try:
                    outputs.append(self.tensor(info.name))
                except Unsupported as exc:
                    self._problem("output", info.name, exc.need)
        self._raise()
        layers = _live(self.layers, outputs, self.states)
        made = {layer.output for layer in layers}
        states = {read: state for read, state in self.states.items() if state.source in made}
        onnx_names = {self.values[i.name]: i.name for i in self.model.graph.input
                      if i.name in self.values and self.values[i.name] in inputs}
        return Network(self.name, inputs, layers, outputs, dict(self.dims),
                       set(self.seq), dict(self.laid_out), states, dict(self.classes),
                       onnx_names)

    def _vocabulary(self, name: str) -> int | None:
        """The rows of the constant table an integer input indexes (through reshapes), if
        a Gather reads it so: the input is word indices then."""
        views = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
        reached = {name}
        for node in self.folded.nodes:
            if node.op_type in views and node.input[0] in reached:
                reached.add(node.output[0])
            elif node.op_type == "Gather" and len(node.input) > 1 and \
                    node.input[1] in reached and node.input[0] in self.folded.constants and \
                    node_attr(node, "axis", 0) == 0:
                return int(self.folded.constants[node.input[0]].shape[0])
        return None

    def translate_node(self, node: onnx.NodeProto) -> None:
        """Translate one node by its rule, or record why netdsl cannot express it."""
        self.node = node
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            domain = f" of domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
            self._problem(node.op_type + domain, node.name,
                          "a netdsl layer for this operator (see docs/onnx.md for those "
                          "netc import knows)")
            return
        attrs = {a.name: _plain(onnx.helper.get_attribute_value(a)) for a in node.attribute}
        bad = [key for key in attrs if key not in rule.attrs or
               (rule.attrs[key] is not None and _plain(attrs[key]) not in rule.attrs[key])]
        if bad:
            for key in bad:
                allowed = rule.attrs.get(key)
                why = (f"attribute {key}={_plain(attrs[key])!r} (netdsl follows "
                       f"{', '.join(map(repr, allowed))})" if allowed else
                       f"attribute {key}, which netdsl has no counterpart for")
                self._problem(node.op_type, node.name, why)
            return
        known = (self.values, self.folded.constants, self.symbolic, self.filled,
                 self.iterations, self.lists)
        if any(name and not any(name in k for k in known) for name in node.input):
            return  # an input a reported node would have made
        try:
            rule.apply(self, node, attrs)
        except Unsupported as exc:
            self._problem(node.op_type, node.name, exc.need)

    def _problem(self, op_type: str, node: str, need: str) -> None:
        where = f"'{node or '(unnamed)'}'" + (f" (in the body of {self.within})"
                                              if self.within else "")
        self.problems.setdefault((op_type, need), []).append(where)

    def _raise(self) -> None:
        errors = []
        for (op_type, need), nodes in self.problems.items():
            where = ", ".join(nodes[:3])
            more = f" and {len(nodes) - 3} more" if len(nodes) > 3 else ""
            what = op_type if op_type in ("input", "output") else "node"
            label = op_type if what == "node" else ""
            errors.append(SpecError(
                f"{self.path}: {label + ' ' if label else ''}{what}{'s' * (len(nodes) > 1)} "
                f"{where}{more}: netdsl would need {need}", None,
                "edit the model before export, or see docs/onnx.md for what netc import "
                "supports"))
        SpecErrors.collect(errors)

    # ---- values

    def _fresh(self) -> str:
        self.count += 1
        return f"v{self.count}"

    def const(self, name: str, what: str = "a constant") -> np.ndarray:
        if name not in self.folded.constants:
            raise Unsupported(f"{what} here (this operand is computed from the input)")
        return self.folded.constants[name]

    def is_const(self, name: str) -> bool:
        return name in self.folded.constants

    def tensor(self, name: str) -> str:
        """The netdsl value of an ONNX value computed from the input, laid out as ONNX's."""
        return self.view(self.raw(name), self.layout[name])

    def raw(self, name: str) -> str:
        """The netdsl value as it is (global_avgpool's [C] where ONNX has [C,1,1])."""
        if name in self.folded.constants:
            raise Unsupported("a constant tensor as an operand (netdsl's layers read "
                              "constants only as their weights)")
        if name in self.iterations:
            raise Unsupported("the loop's iteration number as an index of the sequence's "
                              "step alone (netdsl's steps have no number to compute with)")
        if name in self.symbolic or name in self.filled:
            raise Unsupported("a value of the batch's shape as an operand (netdsl builds "
                              "shapes itself; a Scan's initial state may be one)")
        if name in self.axes:
            raise Unsupported("values laid out [batch, time, ...] (this one is "
                              f"{_axes_text(self.axes[name])}; netdsl's sequences are "
                              "batch-major)")
        return self.values[name]

    def view(self, value: str, dims: tuple) -> str:
        """`value` with per-example dims `dims` (the same elements): itself, flatten or a
        reshape (made once per value and dims)."""
        dims = tuple(dims)
        if self.dims[value] == dims:
            return value
        key = (value, dims)
        if key not in self.views:
            op, args = ("flatten", {}) if len(dims) == 1 else ("reshape", {"dims": list(dims)})
            self.views[key] = self.emit(op, args, [value], dims)
        return self.views[key]

    def emit(self, op: str, args: dict, inputs: list[str], dims: tuple,
             params=None, buffers=None, onnx_dims=None) -> str:
        """Add a layer; its output's netdsl dims are `dims`, ONNX's `onnx_dims` (the same
        unless given)."""
        value = self._fresh()
        self.layers.append(Layer(op, args, list(inputs), value, self.node.name if self.node
                                 else "", dict(params or {}), dict(buffers or {})))
        if any(i in self.seq for i in inputs) and (op not in OPS or OPS[op].per_step):
            self.seq.add(value)  # a per-step op (or a cell) over a sequence gives one
        self.dims[value] = tuple(dims)
        self.onnx_dims[value] = tuple(onnx_dims if onnx_dims is not None else dims)
        return value

    def reverse(self, value: str) -> str:
        """`value -> reverse`: the sequence, last step first."""
        out = self.emit("reverse", {}, [value], self.dims[value])
        self.seq.add(out)  # a whole-sequence op that gives a sequence
        return out

    def bind(self, output: str, value: str, dims: tuple | None = None,
             stepwise: bool | None = None) -> None:
        """The ONNX value `output` is the netdsl value `value`, which has ONNX's dims
        `dims` (the value's own ONNX layout unless given); laid out one step per row
        (`stepwise`) when the node's inputs are, unless said."""
        self.values[output] = value
        self.layout[output] = tuple(dims) if dims is not None else self.onnx_dims[value]
        if stepwise is None:
            stepwise = self.node is not None and any(n in self.stepwise for n in self.node.input)
        if stepwise:
            self.stepwise.add(output)

    def used(self, name: str) -> bool:
        return bool(name) and self.readers.get(name, 0) > 0

    def out_shape(self, node) -> tuple:
        """ONNX's per-example dims of the node's first output, from shape inference (per
        step, when it reads a sequence)."""
        shape = self.folded.shapes.get(node.output[0])
        timed = any(self.values.get(name) in self.seq and name not in self.stepwise
                    for name in node.input if name)
        skip = 2 if timed else 1
        if shape is None or any(d is None for d in shape[skip:]):
            raise Unsupported("an output whose shape shape inference can tell")
        return tuple(shape[skip:])


def _live(layers: list[Layer], outputs: list[str], states: dict) -> list[Layer]:
    """The layers an output depends on (PyTorch's h_n of every layer of a stack, of which
    the classifier reads the last, leaves the others' unread), through the states they
    read too."""
    needed = set(outputs)
    while True:
        count = len(needed)
        for layer in reversed(layers):
            if layer.output in needed:
                needed.update(layer.inputs)
        needed.update(states[v].source for v in list(needed) if v in states)
        needed.update(states[v].start for v in list(needed) if v in states and states[v].start)
        if len(needed) == count:
            return [layer for layer in layers if layer.output in needed]


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return tuple(value)
    return value


def _f32(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32, copy=False)


def _optional_const(t, node, index: int, what: str):
    """The constant operand `index`, or None when the node leaves it out."""
    if len(node.input) > index and node.input[index]:
        return t.const(node.input[index], what)
    return None


def _float(value) -> float:
    """An attribute's float (stored as float32) as the number it was written as."""
    return float(f"{float(value):.7g}")


def _compact(values):
    """(3, 3) as 3, (3, 5) as [3, 5]: a spec's per-dim setting."""
    values = [int(v) for v in values]
    return values[0] if len(set(values)) == 1 else values


def _symmetric(node, attrs, rank: int) -> list[int]:
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    begins, ends = pads[:rank], pads[rank:]
    if begins != ends:
        raise Unsupported("the same padding at both ends of each axis (netdsl pads "
                          f"symmetrically; these pads are {pads})")
    return begins


def _spatial(t, x: str, what: str) -> tuple:
    dims = t.dims[x]
    if len(dims) not in (2, 3):
        raise Unsupported(f"{what} over [C,L] or [C,H,W] (this input is {list(dims)})")
    return dims


# ---- the rules

def _conv(t: _Translator, node, attrs) -> None:
    x = t.tensor(node.input[0])
    weight = t.const(node.input[1], "constant weights")
    bias = _optional_const(t, node, 2, "a constant bias")
    dims = _spatial(t, x, "a convolution")
    rank = len(dims) - 1
    kernel = weight.shape[2:]
    pad_mode = attrs.get("auto_pad", "NOTSET")
    strides = attrs.get("strides", [1] * rank)
    if pad_mode == "NOTSET":
        pads = _compact(_symmetric(node, attrs, rank))
    elif pad_mode == "VALID":
        pads = 0
    else:
        if any(s != 1 for s in strides):
            raise Unsupported(f"auto_pad={pad_mode} with stride 1 only (netdsl's pad='same')")
        dilations = attrs.get("dilations", [1] * rank)
        totals = [d * (k - 1) for d, k in zip(dilations, kernel)]
        if pad_mode == "SAME_LOWER" and any(total % 2 for total in totals):
            raise Unsupported("auto_pad=SAME_UPPER, or an even total padding (netdsl's "
                              "pad='same' puts the odd cell at the end)")
        pads = "same"
    args = {"channels": int(weight.shape[0]), "kernel": _compact(kernel),
            "stride": _compact(strides), "pad": pads,
            "dilation": _compact(attrs.get("dilations", [1] * rank)),
            "groups": int(attrs.get("group", 1)), "bias": bias is not None}
    params = {"weight": weight.astype(np.float32, copy=False)}
    if bias is not None:
        params["bias"] = bias.astype(np.float32, copy=False)
    t.bind(node.output[0], t.emit("conv", args, [x], t.out_shape(node), params))


def _conv_transpose(t: _Translator, node, attrs) -> None:
    x = t.tensor(node.input[0])
    weight = t.const(node.input[1], "constant weights")
    bias = _optional_const(t, node, 2, "a constant bias")
    dims = _spatial(t, x, "a transposed convolution")
    rank = len(dims) - 1
    groups = int(attrs.get("group", 1))
    args = {"channels": int(weight.shape[1]) * groups, "kernel": _compact(weight.shape[2:]),
            "stride": _compact(attrs.get("strides", [1] * rank)),
            "pad": _compact(_symmetric(node, attrs, rank)),
            "output_pad": _compact(attrs.get("output_padding", [0] * rank)),
            "dilation": _compact(attrs.get("dilations", [1] * rank)),
            "groups": groups, "bias": bias is not None}
    params = {"weight": weight.astype(np.float32, copy=False)}
    if bias is not None:
        params["bias"] = bias.astype(np.float32, copy=False)
    t.bind(node.output[0], t.emit("conv_transpose", args, [x], t.out_shape(node), params))


def _batchnorm(t: _Translator, node, attrs) -> None:
    if any(t.used(name) for name in node.output[1:]):
        raise Unsupported("inference mode only (the running statistics it outputs in "
                          "training are not netdsl values)")
    x = t.tensor(node.input[0])
    scale, shift, mean, var = (t.const(n, "constant statistics") for n in node.input[1:5])
    args = {"eps": _float(attrs.get("epsilon", 1e-5)),
            "momentum": round(1 - float(attrs.get("momentum", 0.9)), 6)}
    t.bind(node.output[0], t.emit(
        "batchnorm", args, [x], t.dims[x],
        {"weight": _f32(scale), "bias": _f32(shift)},
        {"running_mean": _f32(mean), "running_var": _f32(var)}))


def _unary(op: str, **fixed):
    def apply(t: _Translator, node, attrs) -> None:
        x = t.raw(node.input[0])
        args = {key: _float(attrs.get(onnx_key, default))
                for key, (onnx_key, default) in fixed.items()}
        t.bind(node.output[0], t.emit(op, args, [x], t.dims[x]), t.layout[node.input[0]])
    return apply


def _alias(t: _Translator, node, attrs) -> None:
    if any(t.used(name) for name in node.output[1:]):
        raise Unsupported("its first output alone (netdsl drops dropout in inference, "
                          "and has no mask to give)")
    if len(node.input) > 2 and node.input[2] and t.is_const(node.input[2]) and \
            bool(t.const(node.input[2])):
        raise Unsupported("training_mode off (an exported inference graph)")
    t.bind(node.output[0], t.raw(node.input[0]), t.layout[node.input[0]])


def _softmax(op: str):
    def apply(t: _Translator, node, attrs) -> None:
        x = t.tensor(node.input[0])
        rank = len(t.dims[x]) + 1
        axis = attrs.get("axis", -1 if t.opset >= 13 else 1)
        axis = axis + rank if axis < 0 else axis
        if t.opset < 13 and axis != rank - 1:
            raise Unsupported("opset 13's softmax over one axis (before 13 it spans every "
                              "axis from `axis` on); the last axis only")
        if axis == 0:
            raise Unsupported("a softmax within each example, not across the batch")
        t.bind(node.output[0], t.emit(op, {"axis": axis - 1 - (rank - 1)}, [x], t.dims[x]))
    return apply


def _pool(op: str):
    def apply(t: _Translator, node, attrs) -> None:
        if any(t.used(name) for name in node.output[1:]):
            raise Unsupported("the pooled values alone (netdsl's maxunpool reads a maxpool's "
                              "indices itself)")
        x = t.tensor(node.input[0])
        dims = _spatial(t, x, "pooling")
        rank = len(dims) - 1
        kernel = attrs["kernel_shape"]
        pad_mode = attrs.get("auto_pad", "NOTSET")
        ceil = bool(attrs.get("ceil_mode", 0))
        uneven = _max_pool_pads(attrs, rank, dims, t.out_shape(node)) \
            if pad_mode == "NOTSET" and op == "maxpool" and not ceil else None
        if uneven is not None:
            pads, ceil = uneven
        elif pad_mode == "NOTSET":
            pads = _symmetric(node, attrs, rank)
        elif pad_mode == "VALID":
            pads = [0] * rank
        else:  # SAME_*: the padding that keeps ceil(n / stride) windows, when it is even
            strides = attrs.get("strides", [1] * rank)
            totals = [max((-(-n // s) - 1) * s + k - n, 0)
                      for n, s, k in zip(dims[1:], strides, kernel)]
            if any(total % 2 for total in totals):
                raise Unsupported(f"auto_pad={pad_mode} with an even total padding (netdsl's "
                                  "pooling pads both ends alike)")
            pads = [total // 2 for total in totals]
        if any(p > k // 2 for p, k in zip(pads, kernel)):
            raise Unsupported("pads of at most half the kernel (PyTorch's and netdsl's limit)")
        if op == "avgpool" and any(pads) and not attrs.get("count_include_pad", 0):
            raise Unsupported("count_include_pad=1 where there is padding (netdsl's avgpool "
                              "counts the padded cells, as PyTorch's default)")
        if any(d != 1 for d in attrs.get("dilations", [1] * rank)):
            raise Unsupported("dilations of 1 (netdsl's pooling windows are dense)")
        strides = attrs.get("strides", [1] * rank)
        if all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(pads):
            # one cell per window: the identity (an adaptive pool to the size it has)
            t.bind(node.output[0], t.raw(node.input[0]), t.layout[node.input[0]])
            return
        args = {"kernel": _compact(kernel),   # netdsl's stride is the kernel unless given
                "stride": None if list(strides) == list(kernel) else _compact(strides),
                "pad": _compact(pads), "ceil": ceil}
        t.bind(node.output[0], t.emit(op, args, [x], t.out_shape(node)))
    return apply


def _max_pool_pads(attrs, rank: int, dims: tuple, out: tuple) -> tuple | None:
    """(pad, ceil) of netdsl's maxpool with the windows of pads that differ at the two
    ends (netdsl's export of a ceil-mode pool writes its overhang so): the windows start
    where the begin pads say, and padded cells never win a max; None if no setting gives
    the model's output size."""
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    begins = pads[:rank]
    if begins == pads[rank:]:
        return None
    kernel, strides = attrs["kernel_shape"], attrs.get("strides", [1] * rank)
    for ceil in (False, True):
        if all(pooled_size(n, k, s, p, ceil) == m
               for n, k, s, p, m in zip(dims[1:], kernel, strides, begins, out[1:])):
            return begins, ceil
    return None


def _reduce(op: str):
    """ReduceMean, ReduceMax over every spatial axis: global pooling."""
    def apply(t: _Translator, node, attrs) -> None:
        x = t.tensor(node.input[0])
        dims = t.dims[x]
        if len(node.input) > 1 and node.input[1]:
            axes = [int(a) for a in t.const(node.input[1], "constant axes")]
        else:
            axes = list(attrs.get("axes", ()))
        timed = x in t.seq and node.input[0] not in t.stepwise
        rank = len(dims) + 1 + timed
        axes = sorted(a + rank if a < 0 else a for a in axes)
        if timed and op == "global_avgpool" and axes == [1] and not attrs.get("keepdims", 1):
            # the average of a sequence's steps: netdsl's mean
            t.bind(node.output[0], t.emit("mean", {}, [x], dims))
            return
        if timed or len(dims) < 2 or axes != list(range(2, rank)):
            raise Unsupported("a reduction over every spatial axis [C, ...] -> [C] (netdsl's "
                              "global pooling)")
        keep = attrs.get("keepdims", 1)
        t.bind(node.output[0], t.emit(op, {}, [x], dims[:1]),
               (dims[0],) + (1,) * (len(dims) - 1) if keep else dims[:1])
    return apply


def _global_pool(op: str):
    def apply(t: _Translator, node, attrs) -> None:
        x = t.tensor(node.input[0])
        dims = t.dims[x]
        if len(dims) < 2:
            raise Unsupported("an input with spatial dims [C, ...]")
        t.bind(node.output[0], t.emit(op, {}, [x], dims[:1],
                                      onnx_dims=(dims[0],) + (1,) * (len(dims) - 1)))
    return apply


def _view(t: _Translator, node, attrs) -> None:
    """Flatten, Reshape, Squeeze, Unsqueeze: the same elements with other dims, as long
    as the batch axis stays first and alone."""
    source = node.input[0]
    if source in t.iterations:  # the iteration number as a vector of one: the same index
        t.iterations[node.output[0]] = t.iterations[source]
        return
    if source in t.axes:
        _relaid(t, node, source)
        return
    if source in t.symbolic:  # an entry of a shape made a vector of one: the same entries
        t.symbolic[node.output[0]] = t.symbolic[source]
        return
    value = t.raw(source)
    size = math.prod(t.layout[source])
    target = node.input[1] if node.op_type == "Reshape" else None
    if value in t.seq and source not in t.stepwise:
        # netc export's dense over a sequence: [batch, time, F] folded to [batch * time, F]
        dims = _folded(t, target, size)
        t.bind(node.output[0], t.view(value, dims), dims, stepwise=True)
        return
    if target in t.symbolic:
        _unfolded(t, node, source, value, t.symbolic[target], size)
        return
    shape_out = t.folded.shapes.get(node.output[0])
    if shape_out is not None and all(d is not None for d in shape_out[1:]):
        dims = tuple(shape_out[1:])
    elif node.op_type == "Reshape" and t.is_const(node.input[1]):
        dims = _reshaped(t.layout[source], [int(d) for d in t.const(node.input[1])])
    elif node.op_type in ("Squeeze", "Unsqueeze"):
        dims = _squeezed(t, node, t.layout[source])
    else:
        raise Unsupported("a target shape that shape inference can tell")
    if math.prod(dims) != size:
        raise Unsupported("a reshape that keeps the batch axis first and alone")
    t.bind(node.output[0], t.view(value, dims), dims)


def _squeezed(t: _Translator, node, layout: tuple) -> tuple:
    """The per-example dims a Squeeze leaves of `layout`, or an Unsqueeze gives, where
    inference cannot tell them (in a Loop's body)."""
    given = node.input[1] if len(node.input) > 1 and node.input[1] else None
    axes = [int(a) for a in (np.asarray(t.const(given, "constant axes")).reshape(-1) if given
                             else node_attr(node, "axes", []))]
    if node.op_type == "Unsqueeze":
        rank = len(layout) + 1 + len(axes)
        axes = sorted(a + rank if a < 0 else a for a in axes)
        if not axes or axes[0] < 1:
            raise Unsupported("an unsqueeze that keeps the batch axis first and alone")
        dims = list(layout)
        for a in axes:
            dims.insert(a - 1, 1)
        return tuple(dims)
    axes = [a + len(layout) + 1 if a < 0 else a for a in axes]
    if not axes or any(a < 1 or a > len(layout) or layout[a - 1] != 1 for a in axes):
        raise Unsupported("a squeeze of an example's own axes of one")
    return tuple(d for i, d in enumerate(layout, 1) if i not in axes)


def _folded(t: _Translator, target: str | None, size: int) -> tuple:
    """The per-step dims of a Reshape of a sequence to [-1, dims...] (one step per row)."""
    shape = [int(d) for d in t.const(target)] if target and t.is_const(target) else None
    if shape == [-1] and size == 1:  # word indices, one per row
        return ()
    if shape is None or len(shape) < 2 or shape[0] != -1 or \
            math.prod(d for d in shape[1:]) != size:
        raise Unsupported("a reshape of a sequence to one step per row [-1, dims...] (netdsl "
                          "reshapes no sequence as a whole)")
    return tuple(shape[1:])


def _unfolded(t: _Translator, node, source: str, value: str, target: tuple,
              size: int) -> None:
    """A Reshape to a shape computed from the input: the rows of a folded sequence back
    to [batch, time, dims...], or an example's dims with the batch axis first."""
    head = ("B", "T") if source in t.stepwise and value in t.seq else ("B",)
    dims = target[len(head):]
    if tuple(target[:len(head)]) != head or any(not isinstance(d, int) for d in dims) or \
            math.prod(dims) != size:
        raise Unsupported("a reshape that keeps the batch (and time) axes first and alone")
    t.bind(node.output[0], t.view(value, dims), dims, stepwise=False)


def _shape(t: _Translator, node, attrs) -> None:
    """Shape of a value computed from the input: its entries, symbolic where the batch
    or the time axis is (a shape operand of a Reshape, ConstantOfShape or Expand)."""
    source = node.input[0]
    if source in t.stepwise or source not in t.values:
        raise Unsupported("the shape of a sequence or an example")
    seq = t.values[source] in t.seq
    labels = t.axes.get(source, (("B", "T") if seq else ("B",)) +
                        tuple(range(len(t.layout[source]))))
    entries = tuple(t.layout[source][a] if isinstance(a, int) else a for a in labels)
    if "D" in entries:
        raise Unsupported("the shape of a value without an RNN's directions axis")
    t.symbolic[node.output[0]] = entries[attrs.get("start", 0):attrs.get("end", len(entries))]


def _entries(t: _Translator, name: str) -> tuple:
    """A shape operand's entries: symbolic, or a constant's numbers (BATCH as "B")."""
    if name in t.symbolic:
        return t.symbolic[name]
    values = np.asarray(t.const(name, "a shape")).reshape(-1)
    return tuple("B" if int(v) == BATCH else int(v) for v in values)


def _batch_rows(t: _Translator, name: str) -> tuple:
    """The per-example dims of a shape operand [batch, dims...]."""
    entries = _entries(t, name)
    if not entries or entries[0] != "B" or any(not isinstance(d, int) for d in entries[1:]):
        raise Unsupported("a shape of one row per example [batch, dims...] (a Scan's "
                          "initial state)")
    return entries[1:]


def _constant_of_shape(t: _Translator, node, attrs) -> None:
    fill = attrs.get("value")
    number = float(onnx.numpy_helper.to_array(fill).reshape(-1)[0]) if fill is not None else 0.0
    _fill(t, node.output[0], node.input[0], number)


def _fill(t: _Translator, output: str, shape: str, number: float) -> None:
    """A number over a shape with the batch in it: a Scan's initial state, or an RNN's
    zero initial states."""
    entries = _entries(t, shape)
    if entries.count("B") != 1 or any(not isinstance(d, int) for d in entries if d != "B"):
        raise Unsupported("a shape with the batch in it and fixed dims (a recurrence's "
                          "initial state)")
    t.filled[output] = ("fill", number, entries)


def _expand(t: _Translator, node, attrs) -> None:
    """Expand: a learned row repeated over the batch (a Scan's initial state), or the
    copies of each cell that netc export writes for upsample."""
    if t.is_const(node.input[0]):
        row = np.asarray(t.const(node.input[0]), np.float32)
        if row.size == 1:  # a number (an RNN's zero states); a row is a learned value
            _fill(t, node.output[0], node.input[1], float(row.reshape(-1)[0]))
            return
        dims = _batch_rows(t, node.input[1])
        t.filled[node.output[0]] = ("learned", np.broadcast_to(row, dims).copy(),
                                    ("B",) + dims)
        return
    _upsampled(t, node, node.input[0], [d for d in _entries(t, node.input[1])])


def _upsampled(t: _Translator, node, source: str, shape: list) -> None:
    """[C, H, 1, W, 1] expanded to [C, H, s, W, s]: each cell of [C, H, W] copied s times
    along each spatial axis, netdsl's upsample(s) (nearest)."""
    value = t.raw(source)
    producer = next((layer for layer in reversed(t.layers) if layer.output == value), None)
    need = "an expansion of each cell of an image (netdsl's upsample)"
    if producer is None or producer.op != "reshape" or value in t.seq or \
            any(not isinstance(d, int) for d in shape):
        raise Unsupported(need)
    inner = producer.inputs[0]
    dims = t.dims[inner]
    single = t.layout[source]
    if len(dims) < 2 or single != (dims[0],) + tuple(d for n in dims[1:] for d in (n, 1)):
        raise Unsupported(need)
    target = ([1] * (len(single) + 1 - len(shape)) + list(shape))[1:]  # broadcast from the right
    if len(target) != len(single) or any(d not in (1, n) and n != 1
                                         for d, n in zip(target, single)):
        raise Unsupported(need)
    blocks = tuple(max(d, n) for d, n in zip(target, single))
    if blocks[0] != dims[0] or blocks[1::2] != tuple(dims[1:]):
        raise Unsupported(need)
    scale = blocks[2::2]
    up = t.emit("upsample", {"scale": _compact(scale)}, [inner],
                (dims[0],) + tuple(n * s for n, s in zip(dims[1:], scale)))
    t.bind(node.output[0], up, blocks)


def _slice(t: _Translator, node, attrs) -> None:
    """Slice of one example's dims: an equal chunk along one axis (netdsl's split, as its
    export writes it), or a centred crop of the spatial dims to those of another value
    (netdsl's crop)."""
    source = node.input[0]
    if source in t.filled:
        _sliced_fill(t, node, source)
        return
    if any(bound in t.iterations for bound in node.input[1:3]):  # a Loop's step
        read_slice(t, node)
        return
    value = t.raw(source)
    layout = t.layout[source]
    lead = 2 if value in t.seq and source not in t.stepwise else 1
    starts, ends = (np.asarray(t.const(n, "constant bounds")).reshape(-1) for n in node.input[1:3])
    rank = lead + len(layout)
    axes = list(np.asarray(t.const(node.input[3])).reshape(-1)) if len(node.input) > 3 \
        and node.input[3] else list(range(len(starts)))
    steps = list(np.asarray(t.const(node.input[4])).reshape(-1)) if len(node.input) > 4 \
        and node.input[4] else [1] * len(starts)
    window = {}
    for a, lo, hi, step in zip(axes, starts, ends, steps):
        a = int(a) + rank if a < 0 else int(a)
        if lead == 2 and a == 1 and (lo, step) == (-1, -1) and hi <= -2 ** 31 and \
                len(axes) == 1:  # every step, last first: netdsl's reverse
            t.bind(node.output[0], t.reverse(value), layout)
            return
        if a < lead:
            if (lo, step) == (0, 1) and hi >= 2 ** 31 - 1:
                continue  # every row (TorchScript's x[:, t] slices the batch whole)
            raise Unsupported("a slice of an example's own dims (not of the batch or time)")
        n = layout[a - lead]
        lo, hi = (int(np.clip(b + n if b < 0 else b, 0, n)) for b in (lo, hi))
        if step != 1:
            raise Unsupported("a slice with steps of 1 (or a sequence's time axis reversed)")
        if hi <= lo:
            raise Unsupported("a slice that keeps some of each axis")
        if (lo, hi) != (0, n):
            window[a - lead] = (lo, hi)
    if not window:
        t.bind(node.output[0], value, layout)
        return
    x = t.tensor(source)
    if len(window) == 1:
        ((axis, (lo, hi)),) = window.items()
        size, n = hi - lo, layout[axis]
        if n % size == 0 and lo % size == 0:
            out = tuple(size if i == axis else d for i, d in enumerate(layout))
            t.bind(node.output[0], t.emit("split", {"parts": n // size, "axis": axis,
                                                    "index": lo // size}, [x], out))
            return
    out = tuple(hi - lo if i in window else d for i, (d, (lo, hi)) in
                enumerate(zip(layout, [window.get(i, (0, d)) for i, d in enumerate(layout)])))
    centred = all(lo == (layout[i] - (hi - lo)) // 2 for i, (lo, hi) in window.items())
    like = next((v for v, d in t.dims.items() if len(d) == len(out) and d[1:] == out[1:]
                 and v != x and (v in t.seq) == (x in t.seq) and v not in t.states), None) \
        if centred and 0 not in window and len(layout) >= 2 else None
    if like is None:
        raise Unsupported("an equal chunk of one axis (netdsl's split), or a centred crop "
                          "of the spatial dims to those of another value (netdsl's crop)")
    t.bind(node.output[0], t.emit("crop", {}, [x, like], out))


def _sliced_fill(t: _Translator, node, source: str) -> None:
    """A slice of a number over a shape with the batch in it (one layer's zero initial
    states of a stack's): the same number over the sliced shape."""
    kind, number, shape = t.filled[source]
    if kind != "fill":
        raise Unsupported("a slice of a value computed from the input")
    bounds = [np.asarray(t.const(n, "constant bounds")).reshape(-1) for n in node.input[1:3]]
    axes = np.asarray(t.const(node.input[3])).reshape(-1) if len(node.input) > 3 and \
        node.input[3] else range(len(bounds[0]))
    steps = np.asarray(t.const(node.input[4])).reshape(-1) if len(node.input) > 4 and \
        node.input[4] else [1] * len(bounds[0])
    sliced = list(shape)
    for a, lo, hi, step in zip(axes, *bounds, steps):
        a = int(a) % len(shape)
        if shape[a] == "B":
            raise Unsupported("a slice of an example's own dims (not of the batch)")
        sliced[a] = len(range(*slice(int(lo), int(hi), int(step)).indices(shape[a])))
    t.filled[node.output[0]] = (kind, number, tuple(sliced))


def _relaid(t: _Translator, node, source: str) -> None:
    """Squeeze of an RNN's directions axis: the same value, one axis fewer."""
    axes = t.axes[source]
    if node.op_type == "Reshape":
        _merged(t, node, source, axes)
        return
    if node.op_type != "Squeeze":
        raise Unsupported("a squeeze of the directions axis of an RNN's output")
    drop = node.input[1] if len(node.input) > 1 and node.input[1] else None
    dropped = [int(a) for a in (t.const(drop) if drop else node_attr(node, "axes", []))]
    dropped = [a + len(axes) if a < 0 else a for a in dropped]
    if not dropped or any(axes[a] != "D" for a in dropped):
        raise Unsupported("a squeeze of the directions axis of an RNN's output")
    _relabel(t, node.output[0], source, tuple(a for i, a in enumerate(axes) if i not in dropped))


def _merged(t: _Translator, node, source: str, axes: tuple) -> None:
    """A Reshape that merges a bidirectional RNN's [2, n] per step into one vector
    (PyTorch's, after moving the directions axis beside the features): the same value,
    its concatenation of the two directions."""
    lead = tuple(a for a in axes if not isinstance(a, int))
    own = [a for a in axes if isinstance(a, int)]
    target = [int(d) for d in t.const(node.input[1], "a constant target shape")]
    size = math.prod(t.layout[source])
    if axes != lead + tuple(own) or own != sorted(own) or len(target) != len(lead) + 1 or \
            target[-1] not in (-1, size) or "D" in lead:
        raise Unsupported("a reshape that merges each step's own dims, after the batch "
                          "and time axes")
    t.values[node.output[0]] = t.values[source]
    t.layout[node.output[0]] = (size,)
    _relabel(t, node.output[0], node.output[0], lead + (0,))


def _relabel(t: _Translator, output: str, source: str, axes: tuple) -> None:
    """Bind `output` to the value of `source` with its axes in the order `axes`."""
    t.values[output] = t.values[source]
    t.layout[output] = t.layout[source]
    seq = t.values[source] in t.seq
    if axes != (("B", "T") if seq else ("B",)) + tuple(range(len(t.layout[source]))):
        t.axes[output] = axes


def node_attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _transpose(t: _Translator, node, attrs) -> None:
    source = node.input[0]
    value = t.raw(source) if source not in t.axes else t.values[source]
    seq = value in t.seq
    axes = t.axes.get(source, (("B", "T") if seq else ("B",)) + tuple(range(len(t.layout[source]))))
    perm = attrs.get("perm", tuple(reversed(range(len(axes)))))
    moved = tuple(axes[p] for p in perm)
    if not seq and source not in t.axes and moved != axes:
        raise Unsupported("a transpose of the time axis of a sequence only (netdsl keeps "
                          "each example's dims in order)")
    own = [a for a in moved if isinstance(a, int)]
    if own != sorted(own):
        raise Unsupported("a transpose that keeps each step's dims in order")
    _relabel(t, node.output[0], source, moved)


def _gather(t: _Translator, node, attrs) -> None:
    """One step of a sequence (`last`, `first`) or the one direction of an RNN's state."""
    source = node.input[0]
    if node.input[1] in t.iterations:  # a Loop's step of the sequence
        read_step(t, node.output[0], source, attrs.get("axis", 0), t.iterations[node.input[1]])
        return
    if source in t.symbolic:  # one entry of a shape (the batch, the time)
        index = np.asarray(t.const(node.input[1], "a constant index")).reshape(-1)
        t.symbolic[node.output[0]] = tuple(t.symbolic[source][int(i)] for i in index)
        return
    if t.is_const(source) and node.input[1] in t.values and attrs.get("axis", 0) == 0:
        _embedding(t, node, source)
        return
    if source not in t.values:
        raise Unsupported("a gather from a value computed from the input")
    value = t.values[source]
    seq = value in t.seq
    axes = t.axes.get(source, (("B", "T") if seq else ("B",)) + tuple(range(len(t.layout[source]))))
    index = np.asarray(t.const(node.input[1], "a constant index"))
    axis = attrs.get("axis", 0)
    axis = axis + len(axes) if axis < 0 else axis
    if index.ndim != 0:
        raise Unsupported("one index (a step or a direction)")
    kept = tuple(a for i, a in enumerate(axes) if i != axis)
    if axes[axis] == "D":
        if source in t.stacks:  # one layer's state of several stacked along D
            source = t.stacks[source][int(index)]
        _relabel(t, node.output[0], source, kept)
        return
    if axes[axis] != "T" or int(index) not in (0, -1):
        raise Unsupported("the first or last step of a sequence (netdsl's first, last)")
    out = t.emit("last" if int(index) == -1 else "first", {}, [value], t.dims[value])
    t.values[node.output[0]] = out
    t.layout[node.output[0]] = t.dims[value]
    if kept != ("B",) + tuple(range(len(t.dims[value]))):
        t.axes[node.output[0]] = kept


def _embedding(t: _Translator, node, table: str) -> None:
    """Rows of a constant table picked by word indices: netdsl's embedding."""
    ids = t.values[node.input[1]]
    weight = np.asarray(t.const(table), np.float32)
    if ids not in t.classes or t.dims[ids] != () or weight.ndim != 2:
        raise Unsupported("rows of a 2-d table picked by word indices (an input of "
                          "class(V), netdsl's embedding)")
    dim = int(weight.shape[1])
    t.bind(node.output[0], t.emit("embedding", {"dim": dim}, [ids], (dim,), {"weight": weight}))


def _axes_text(axes: tuple) -> str:
    names = {"B": "batch", "T": "time", "D": "directions"}
    return "[" + ", ".join(names.get(a, "dim") for a in axes) + "]"


def _reshaped(dims: tuple, target: list[int]) -> tuple:
    """The per-example dims a Reshape to `target` gives (its first entry the batch)."""
    if not target or target[0] not in (0, -1, BATCH):
        raise Unsupported("a reshape that keeps the batch axis first and alone")
    rest = [dims[i] if d == 0 and i < len(dims) else d for i, d in enumerate(target[1:])]
    if -1 in rest:
        if target[0] == -1:
            raise Unsupported("a reshape with the batch axis known")
        known = math.prod(d for d in rest if d != -1)
        rest = [math.prod(dims) // known if d == -1 else d for d in rest]
    return tuple(rest)


def _dense_weights(t: _Translator, x: str, weight: np.ndarray, bias, node) -> None:
    if len(t.dims[x]) != 1:
        raise Unsupported("a product of [batch, N] rows (netdsl's dense reads vectors; "
                          f"this input is [batch, {', '.join(map(str, t.dims[x]))}])")
    units = int(weight.shape[0])
    params = {"weight": weight.astype(np.float32, copy=False)}
    if bias is not None:
        params["bias"] = bias.astype(np.float32, copy=False)
    t.bind(node.output[0], t.emit("dense", {"units": units, "bias": bias is not None},
                                  [x], (units,), params))


def _gemm(t: _Translator, node, attrs) -> None:
    x = t.tensor(node.input[0])
    b = t.const(node.input[1], "constant weights as B")
    weight = b if attrs.get("transB", 0) else b.T
    if attrs.get("alpha", 1.0) != 1.0:
        weight = weight * attrs["alpha"]
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = np.asarray(t.const(node.input[2], "a constant C")) * attrs.get("beta", 1.0)
        if c.size not in (1, weight.shape[0]):
            raise Unsupported("a C of one value per output unit (a bias)")
        bias = np.broadcast_to(c.reshape(-1), (weight.shape[0],)).copy()
    _dense_weights(t, x, weight, bias, node)


def _matmul(t: _Translator, node, attrs) -> None:
    x = t.tensor(node.input[0])
    b = t.const(node.input[1], "a constant right-hand matrix (a dense layer's weights)")
    if b.ndim != 2:
        raise Unsupported("a 2-d right-hand matrix")
    _dense_weights(t, x, b.T, None, node)


_OPERATORS = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}


def _arith(t: _Translator, node, attrs) -> None:
    a, b = node.input
    kind = node.op_type
    if a in t.iterations or b in t.iterations:  # an index of a Loop's step
        t.iterations[node.output[0]] = shifted(t, node)
        return
    if not t.is_const(a) and not t.is_const(b):
        x, y = t.tensor(a), t.tensor(b)
        if len(t.dims[x]) != len(t.dims[y]):
            raise Unsupported("operands of the same rank (netdsl broadcasts within an "
                              "example, ONNX across the batch axis too)")
        # operands alike are their result's shape, which inference may not know (in a
        # Loop's body); else broadcasting's, inference's
        dims = t.dims[x] if t.dims[x] == t.dims[y] else t.out_shape(node)
        t.bind(node.output[0], t.emit(_OPERATORS[kind], {}, [x, y], dims))
        return
    if t.is_const(a) and t.is_const(b):
        raise Unsupported("an operand computed from the input")
    value_name, constant, left = (a, t.const(b), True) if t.is_const(b) else (b, t.const(a), False)
    if constant.size == 1:
        c = float(constant.reshape(-1)[0])
        factor, shift = {("Add", True): (1.0, c), ("Add", False): (1.0, c),
                         ("Sub", True): (1.0, -c), ("Sub", False): (-1.0, c),
                         ("Mul", True): (c, 0.0), ("Mul", False): (c, 0.0),
                         ("Div", True): (1 / c if c else math.inf, 0.0),
                         }.get((kind, left), (None, None))
        if factor is None:
            raise Unsupported("a number divided by a tensor (netdsl's scale multiplies and shifts)")
        x = t.raw(value_name)
        t.bind(node.output[0], t.emit("scale", {"factor": factor, "shift": shift}, [x],
                                      t.dims[x]), t.layout[value_name])
        return
    x = t.raw(value_name)
    producer = next((layer for layer in reversed(t.layers) if layer.output == x), None)
    if kind == "Add" and producer is not None and producer.op == "dense" and \
            not producer.args["bias"] and t.readers.get(value_name, 0) == 1 and \
            constant.size == producer.args["units"] and constant.shape[-1] == constant.size:
        producer.args["bias"] = True
        producer.params["bias"] = constant.reshape(-1).astype(np.float32, copy=False)
        t.bind(node.output[0], x, t.layout[value_name])  # MatMul + Add: one dense with its bias
        return
    raise Unsupported("a constant tensor operand other than a dense layer's bias (netdsl "
                      "has constants as weights and scale's numbers only)")


def _sum(t: _Translator, node, attrs) -> None:
    values = [t.tensor(name) for name in node.input]
    total = values[0]
    for value in values[1:]:
        total = t.emit("add", {}, [total, value], t.out_shape(node))
    t.bind(node.output[0], total)


def _concat(t: _Translator, node, attrs) -> None:
    if any(name in t.symbolic for name in node.input):
        t.symbolic[node.output[0]] = sum((_entries(t, name) for name in node.input), ())
        return
    stacked = [t.axes.get(name) for name in node.input]
    if all(axes is not None and "D" in axes for axes in stacked) and \
            len(set(stacked)) == 1 and stacked[0][attrs["axis"]] == "D":
        # the final states of stacked RNN layers (PyTorch's h_n): kept apart, as a
        # Gather reads one of them
        t.stacks[node.output[0]] = list(node.input)
        t.axes[node.output[0]] = stacked[0]
        t.values[node.output[0]] = t.values[node.input[-1]]
        t.layout[node.output[0]] = t.layout[node.input[-1]]
        return
    values = [t.tensor(name) for name in node.input]
    rank = len(t.dims[values[0]]) + 1
    axis = attrs["axis"] + rank if attrs["axis"] < 0 else attrs["axis"]
    if axis == 0:
        raise Unsupported("a concatenation within examples, not along the batch")
    if len(values) == 1:
        t.bind(node.output[0], values[0], t.dims[values[0]])
        return
    t.bind(node.output[0], t.emit("concat", {"axis": axis - 1}, values, t.out_shape(node)))


def _prelu(t: _Translator, node, attrs) -> None:
    x = t.tensor(node.input[0])
    slope = np.asarray(t.const(node.input[1], "a constant slope"))
    channels = t.dims[x][0] if t.dims[x] else 1
    if slope.size not in (1, channels) or (slope.size > 1 and
                                          slope.reshape(-1).shape[0] != slope.shape[0]
                                          and slope.shape[-1] != 1 and slope.ndim > 1):
        raise Unsupported("one slope, or one per channel (dim 0)")
    t.bind(node.output[0], t.emit("prelu", {"channels": int(slope.size)}, [x], t.dims[x],
                                  {"weight": slope.reshape(-1).astype(np.float32, copy=False)}))


def _gelu(t: _Translator, node, attrs) -> None:
    if attrs.get("approximate", "none") != "tanh":
        raise Unsupported("approximate='tanh' (netdsl's gelu is the tanh form)")
    _unary("gelu")(t, node, {})


_ANY = None
_POOL_ATTRS = {"kernel_shape": _ANY, "strides": _ANY, "pads": _ANY, "ceil_mode": _ANY,
               "auto_pad": _ANY, "dilations": _ANY, "storage_order": (0,)}

RULES: dict[str, Rule] = {
    "Conv": Rule(_conv, {"kernel_shape": _ANY, "strides": _ANY, "pads": _ANY, "dilations": _ANY,
                         "group": _ANY, "auto_pad": ("NOTSET", "VALID", "SAME_UPPER",
                                                     "SAME_LOWER")}),
    "ConvTranspose": Rule(_conv_transpose, {"kernel_shape": _ANY, "strides": _ANY, "pads": _ANY,
                                            "dilations": _ANY, "group": _ANY,
                                            "output_padding": _ANY,
                                            "auto_pad": ("NOTSET", "VALID")}),
    "BatchNormalization": Rule(_batchnorm, {"epsilon": _ANY, "momentum": _ANY,
                                            "training_mode": (0,)}),
    "Relu": Rule(_unary("relu")),
    "Sigmoid": Rule(_unary("sigmoid")),
    "Tanh": Rule(_unary("tanh")),
    "Exp": Rule(_unary("exp")),
    "Log": Rule(_unary("log")),
    "Softplus": Rule(_unary("softplus")),
    "LeakyRelu": Rule(_unary("leaky_relu", slope=("alpha", 0.01)), {"alpha": _ANY}),
    "Elu": Rule(_unary("elu", alpha=("alpha", 1.0)), {"alpha": _ANY}),
    "PRelu": Rule(_prelu),
    "Gelu": Rule(_gelu, {"approximate": ("none", "tanh")}),
    "Softmax": Rule(_softmax("softmax"), {"axis": _ANY}),
    "LogSoftmax": Rule(_softmax("log_softmax"), {"axis": _ANY}),
    "MaxPool": Rule(_pool("maxpool"), _POOL_ATTRS),
    "AveragePool": Rule(_pool("avgpool"), {**_POOL_ATTRS, "count_include_pad": _ANY}),
    "GlobalAveragePool": Rule(_global_pool("global_avgpool")),
    "GlobalMaxPool": Rule(_global_pool("global_maxpool")),
    "ReduceMean": Rule(_reduce("global_avgpool"), {"axes": _ANY, "keepdims": _ANY,
                                                   "noop_with_empty_axes": (0,)}),
    "ReduceMax": Rule(_reduce("global_maxpool"), {"axes": _ANY, "keepdims": _ANY,
                                                  "noop_with_empty_axes": (0,)}),
    "Flatten": Rule(_view, {"axis": _ANY}),
    "Reshape": Rule(_view, {"allowzero": _ANY}),
    "Squeeze": Rule(_view, {"axes": _ANY}),
    "Unsqueeze": Rule(_view, {"axes": _ANY}),
    "Gemm": Rule(_gemm, {"alpha": _ANY, "beta": _ANY, "transA": (0,), "transB": _ANY}),
    "MatMul": Rule(_matmul),
    "Add": Rule(_arith),
    "Sub": Rule(_arith),
    "Mul": Rule(_arith),
    "Div": Rule(_arith),
    "Sum": Rule(_sum),
    "Concat": Rule(_concat, {"axis": _ANY}),
    "Dropout": Rule(_alias, {"seed": _ANY, "ratio": _ANY, "is_test": _ANY}),
    "Identity": Rule(_alias),
    "Transpose": Rule(_transpose, {"perm": _ANY}),
    "Gather": Rule(_gather, {"axis": _ANY}),
    "Shape": Rule(_shape, {"start": _ANY, "end": _ANY}),
    "ConstantOfShape": Rule(_constant_of_shape, {"value": _ANY}),
    "Expand": Rule(_expand),
    "Slice": Rule(_slice),
    **{op: Rule(apply, attrs) for op, (apply, attrs) in {**RECURRENT, **SCAN, **LOOP}.items()},
}
