"""ONNX export: a network's typed graph written directly as an ONNX model.

Every op emits its own nodes (`Op.onnx`, beside its shape rule) through the `Builder`
here; the walk (netdsl.export.walk) lays values out as they read them, and a
recurrence becomes a Scan (netdsl.export.scan), or a standard library cell ONNX's own
LSTM, GRU or RNN when the view says so (netdsl.export.cells, netdsl.export.rnn). The model states its opset, keeps the
batch (and time) dims symbolic and named, takes its input and output names from the
spec, names each node after its block path (`stage2/basic1/conv1`) and each
initializer as the safetensors export does (`stage2.basic1.conv1.weight`), and has
every shape annotated: it passes ONNX's shape inference in strict mode.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from netdsl.export.naming import NORMALIZE, param_name, tensor_name
from netdsl.export.rnn import emit_cell
from netdsl.export.scan import emit_scan
from netdsl.export.view import Cell, LoopParts, View, owner
from netdsl.export.walk import FOLDED, SEQ, STEP, Walker
from netdsl.lower.plan import Step
from netdsl.ops.expr import Call, Const, Var

__all__ = ["OPSET", "Builder", "to_onnx"]

OPSET = 17

# the scalar functions of netdsl.ops.expr, as ONNX ops of the same arity
_FUNCTIONS = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "neg": "Neg",
              "gt": "Greater", "where": "Where", "exp": "Exp", "log": "Log", "tanh": "Tanh",
              "sqrt": "Sqrt", "max": "Max", "min": "Min", "abs": "Abs"}


class Builder:
    """What an op's ONNX lowering emits through: nodes, constants and formulas.

    Nodes are named after the step they belong to (`begin`): its first node takes the
    step's own name, the others `name/OpType`. `training` asks for the training graph
    (dropout and noise active, batchnorm on batch statistics).
    """

    xp = np  # what an op computes the constants it emits with

    def __init__(self, dtype: str = "float32", training: bool = False):
        self.dtype = np.dtype(dtype)
        self.training = training
        self.nodes: list[onnx.NodeProto] = []        # the graph being built (a Scan's body)
        self.initializers: dict[str, TensorProto] = {}
        self.value_info: dict[str, onnx.ValueInfoProto] = {}
        self.feeds: dict[str, str] = {}              # a source node -> its model input
        self.buffers: dict[str, dict] = {}           # node -> buffer name -> array
        self._values: set[str] = set()               # every value name, across subgraphs
        self._node_names: set[str] = set()
        self._consts: dict[tuple, str] = {}
        self._scope = ""

    @property
    def float_type(self) -> int:
        """The ONNX element type of the model's floats (a Cast's `to`)."""
        return helper.np_dtype_to_tensor_dtype(self.dtype)

    # ---- names

    def fresh(self, base: str) -> str:
        """A value name not used yet anywhere in the model: `base`, else `base:2`, ..."""
        return _unique(base, self._values)

    def reserve(self, name: str) -> None:
        self._values.add(name)

    def node_name(self, op_type: str) -> str:
        base = self._scope if self._scope not in self._node_names else f"{self._scope}/{op_type}"
        return _unique(base, self._node_names)

    def begin(self, scope: str) -> int:
        """Name the nodes that follow after `scope`; returns where they start."""
        self._scope = scope
        return len(self.nodes)

    def rename(self, start: int, value: str, name: str) -> str:
        """Give `value`, made by a node from `start` on, the name `name` (reserved)."""
        for node in self.nodes[start:]:
            for field in (node.input, node.output):
                for i, used in enumerate(field):
                    if used == value:
                        field[i] = name
        self._values.discard(value)
        return name

    def produced(self, start: int, value: str) -> bool:
        return any(value in node.output for node in self.nodes[start:])

    # ---- nodes and constants

    def node(self, op_type: str, inputs, outputs: int = 1, **attrs):
        """Add a node; returns its output's name (a list of them for several)."""
        name = self.node_name(op_type)
        names = [self.fresh(f"{self._scope or op_type}/{op_type}") for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=name, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value, dtype=None) -> str:
        """A constant initializer (made once per value): floats take the model's dtype."""
        array = np.asarray(value)
        if dtype is None:
            dtype = self.dtype if array.dtype.kind == "f" else np.int64 \
                if array.dtype.kind in "iu" else array.dtype
        array = array.astype(dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh(f"const/{self._scope or 'model'}")
            self.initializers[name] = numpy_helper.from_array(array, name)
            self._consts[key] = name
        return self._consts[key]

    def ints(self, values) -> str:
        """A 1-D int64 constant: shapes, axes, starts and ends."""
        return self.const(np.asarray(list(values), dtype=np.int64))

    def tensor(self, name: str, array) -> str:
        """An initializer under `name` (a parameter or a buffer), once."""
        if name not in self.initializers:
            self.reserve(name)
            array = np.asarray(array)
            if array.dtype.kind == "f":
                array = array.astype(self.dtype)
            self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def param(self, key: str, array) -> str:
        return self.tensor(param_name(key), array)

    def buffer(self, step: Step, name: str) -> str:
        """A node's buffer (batchnorm's running statistics), trained or as it starts."""
        node = owner(step)
        value = self.buffers.get(node, {}).get(name)
        if value is None:
            value = step.op.buffers(*step.input_types)[name]
        return self.tensor(tensor_name(node, name), value)

    def feed(self, node: str) -> str:
        """The model input a source node (`normal`) is fed through."""
        return self.feeds[node]

    # ---- helpers the ops share

    def formula(self, expr, env: dict[str, str]) -> str:
        """An elementwise formula (netdsl.ops.expr) of the values `env` names."""
        if isinstance(expr, Var):
            return env[expr.name]
        if isinstance(expr, Const):
            return self.const(np.asarray(expr.value, dtype=self.dtype))
        args = [self.formula(a, env) for a in expr.args]
        if expr.fn == "expm1":
            return self.node("Sub", [self.node("Exp", args), self.const(1.0)])
        if expr.fn == "log1p":
            return self.node("Log", [self.node("Add", [args[0], self.const(1.0)])])
        return self.node(_FUNCTIONS[expr.fn], args)

    @staticmethod
    def pads(geometry) -> list[int]:
        """A window geometry's padding as ONNX lists it: every dim's low, then its high."""
        return [lo for lo, _ in geometry.pads] + [hi for _, hi in geometry.pads]

    def rows(self, x: str) -> str:
        """The number of rows of x (its first dim) as a 1-D int64 tensor."""
        return self.node("Shape", [x], start=0, end=1)

    def count(self, x: str) -> str:
        """The number of rows of x as a float scalar (a loss's per-example divisor)."""
        return self.node("Cast", [self.node("Squeeze", [self.rows(x)])], to=self.float_type)

    def align(self, x: str, rank: int, to: int) -> str:
        """x with `to - rank` unit axes after the batch axis, so that per-example dims
        broadcast aligned at the right (netdsl.ops.numeric.align)."""
        if rank >= to:
            return x
        return self.node("Unsqueeze", [x, self.ints(range(1, 1 + to - rank))])

    def per_channel(self, v: str, rank: int) -> str:
        """A (C,) vector shaped (C, 1, ...) to broadcast over x (B, C, *spatial) of `rank`
        axes."""
        return v if rank <= 2 else self.node("Unsqueeze", [v, self.ints(range(1, rank - 1))])

    def batch_norm(self, x: str, weight: str, bias: str, mean: str, var: str, eps: float,
                   rank: int) -> str:
        """Normalise x (B, C, ...) per channel: by the running statistics, or, in the
        training graph, by the batch's (biased variance, as batchnorm's forward)."""
        if not self.training:
            return self.node("BatchNormalization", [x, weight, bias, mean, var], epsilon=eps)
        centred = self.node("Sub", [x, self.node("ReduceMean", [x], axes=[0, *range(2, rank)])])
        var = self.node("ReduceMean", [self.node("Mul", [centred, centred])],
                        axes=[0, *range(2, rank)])
        scale = self.node("Div", [self.per_channel(weight, rank),
                                  self.node("Sqrt", [self.node("Add", [var, self.const(eps)])])])
        return self.node("Add", [self.node("Mul", [centred, scale]),
                                 self.per_channel(bias, rank)])


class OnnxWalker(Walker):
    """The walk that builds an ONNX graph: handles are value names."""

    format = "ONNX"

    def __init__(self, view: View, g: Builder, params: dict, batch: int | None = None,
                 normalize: dict | None = None):
        super().__init__(view)
        self.g, self.params, self.batch = g, params, batch
        self.normalize = normalize or {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._steps: dict[str, str] = {}       # a (B, T) value -> Shape(value)[0:2]
        self._named: set[str] = set()          # outputs whose names are given
        for name in view.outputs:
            g.reserve(name)

    # ---- types

    def dims(self, node: str, layout: str) -> list:
        """A value's ONNX dims: symbolic batch and time, then the per-example dims."""
        if node in self.unbatched:
            return []
        batch = self.batch or "batch"
        per = list(self.view.type(node).dims)
        if layout == STEP:
            return [batch, *per]
        time = self.time[node]
        if layout == SEQ:
            return [batch, time, *per]
        return [f"{batch}*{time}", *per]

    def value_info(self, name: str, node: str, layout: str) -> onnx.ValueInfoProto:
        t = self.view.type(node)
        elem = TensorProto.INT64 if t.classes is not None else \
            helper.np_dtype_to_tensor_dtype(self.g.dtype)
        return helper.make_tensor_value_info(name, elem, self.dims(node, layout))

    def annotate(self, name: str, node: str, layout: str) -> None:
        if name not in self.g.initializers:
            self.g.value_info[name] = self.value_info(name, node, layout)

    # ---- the walk

    def declare(self, name: str, node: str) -> str:
        self.g.reserve(name)
        t = self.view.type(node)
        if t.seq:
            self.time[node] = self.view.time[node]
        self.inputs.append(self.value_info(name, node, SEQ if t.seq else STEP))
        if self.view.graph.nodes[node]["kind"] == "op":
            self.g.feeds[node] = name
        if name not in self.normalize:
            return name
        # standardised as training saw it: the model takes the raw data, as netc predict
        g = self.g
        mean, std = self.normalize[name]
        start = g.begin(f"normalize/{name}")
        centred = g.node("Sub", [name, g.tensor(f"{NORMALIZE}{name}.mean", mean)])
        out = g.node("Div", [centred, g.tensor(f"{NORMALIZE}{name}.std", std)])
        out = g.rename(start, out, g.fresh(f"{name}/normalized"))
        self.annotate(out, node, SEQ if t.seq else STEP)
        return out

    def finish(self, outputs: dict[str, str]) -> None:
        for name, handle in outputs.items():
            node = self.view.outputs[name]
            if handle != name:  # an alias (identity, an input), or one value named twice
                self.g.begin(name)
                self.g.nodes.append(helper.make_node("Identity", [handle], [name], name=name))
            layout = SEQ if self.is_seq(node) else STEP
            self.outputs.append(self.value_info(name, node, layout))
            self.g.value_info.pop(name, None)

    def canonical(self, node: str, layout: str) -> str:
        """The name a node's value takes: its exported name as an output, its node id,
        or `id/folded` while it is folded."""
        if layout != FOLDED:
            for name, out in self.view.outputs.items():
                if out == node and name not in self._named:
                    self._named.add(name)
                    return name
        return self.g.fresh(f"{node}/folded" if layout == FOLDED else node)

    def emit(self, step: Step, args: list, layout: str, timed: str | None) -> str:
        g = self.g
        start = g.begin(step.node)
        params = {name: g.param(key, self.params[key]) for name, key in step.params.items()}
        handle = self.lowering(step, lambda: step.op.onnx(g, step, args, params))
        if g.produced(start, handle):
            handle = g.rename(start, handle, self.canonical(step.node, layout))
            self.annotate(handle, step.node, layout)
        return handle

    def steps_of(self, ref: str) -> str:
        """Shape(ref)[0:2]: the (B, T) of a sequence, made once."""
        if ref not in self._steps:
            self.g.begin(f"{ref}/steps")
            self._steps[ref] = self.g.node("Shape", [ref], start=0, end=2)
        return self._steps[ref]

    def fold(self, handle: str, node: str) -> str:
        start = self.g.begin(f"{node}/fold")
        dims = self.view.type(node).dims
        out = self.g.node("Reshape", [handle, self.g.ints([-1, *dims])])
        out = self.g.rename(start, out, self.canonical(node, FOLDED))
        self.annotate(out, node, FOLDED)
        return out

    def unfold(self, handle: str, ref: str, node: str) -> str:
        steps = self.steps_of(ref)
        start = self.g.begin(f"{node}/unfold")
        shape = self.g.node("Concat", [steps, self.g.ints(self.view.type(node).dims)], axis=0)
        out = self.g.node("Reshape", [handle, shape])
        out = self.g.rename(start, out, self.canonical(node, SEQ))
        self.annotate(out, node, SEQ)
        return out

    def over_time(self, handle: str, ref: str, node: str) -> str:
        g, dims = self.g, self.view.type(node).dims
        steps = self.steps_of(ref)
        g.begin(f"{node}/over_time")
        shape = g.node("Concat", [steps, g.ints([1] * len(dims))], axis=0)
        expanded = g.node("Expand", [g.node("Unsqueeze", [handle, g.ints([1])]), shape])
        return g.node("Reshape", [expanded, g.ints([-1, *dims])])

    def loop(self, part: LoopParts) -> None:
        emit_scan(self, part)

    def cell(self, cell: Cell) -> None:
        emit_cell(self, cell)


def to_onnx(view: View, params: dict, buffers: dict | None = None, *, training: bool = False,
            batch: int | None = None, dtype: str = "float32",
            metadata: dict[str, str] | None = None,
            normalize: dict | None = None) -> onnx.ModelProto:
    """The ONNX model of a view with the parameter arrays `params` (by key) and the
    buffers `buffers` (node -> name -> array; those missing start as the op says).

    `training` writes the training graph; `batch` fixes the batch size (else a symbolic
    `batch` dim); `normalize` maps an input's name to the (mean, std) its data was
    standardised by in training, which the model's first nodes apply. The model has
    passed ONNX's shape inference, in strict mode.

    Raises
    ------
    SpecError
        For an op with no ONNX lowering, at its line in the spec.
    """
    g = Builder(dtype, training)
    g.buffers = buffers or {}
    walker = OnnxWalker(view, g, params, batch, normalize)
    walker.run()
    value_info = [v for name, v in g.value_info.items() if name not in
                  {o.name for o in walker.outputs} | {i.name for i in walker.inputs}]
    graph = helper.make_graph(g.nodes, view.name, walker.inputs, walker.outputs,
                              list(g.initializers.values()), value_info=value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="netdsl", doc_string=_describe(view, training))
    model.ir_version = 8  # opset 17's: what runtimes of its time read
    helper.set_model_props(model, metadata or {})
    _drop_unused(model.graph)
    _infer_shapes(model)
    return model


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Leave out the initializers no node reads: the running statistics of the training
    graph, whose batchnorms use the batch's."""
    used = set()

    def visit(g: onnx.GraphProto) -> None:
        for node in g.node:
            used.update(node.input)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)

    visit(graph)
    kept = [t for t in graph.initializer if t.name in used]
    if len(kept) < len(graph.initializer):
        graph.ClearField("initializer")
        graph.initializer.extend(kept)


def _infer_shapes(model: onnx.ModelProto) -> None:
    """Annotate every value's shape, as ONNX's shape inference in strict mode finds it.

    Inference serialises the model it reads, so it reads one whose large initializers
    (the parameters) are inputs of the same type: a ResNet-50 is inferred in a tenth of
    the time, and the shapes found are the same (what shapes depend on, the int64
    constants, stays)."""
    graph = model.graph
    large = [t for t in graph.initializer if t.data_type != TensorProto.INT64
             and np.prod(t.dims) > 64]
    typed = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in large]
    skipped = {t.name for t in large}
    skeleton = helper.make_model(
        helper.make_graph(graph.node, graph.name, [*graph.input, *typed], graph.output,
                          [t for t in graph.initializer if t.name not in skipped],
                          value_info=graph.value_info),
        opset_imports=model.opset_import)
    skeleton.ir_version = model.ir_version
    inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True,
                                                 data_prop=True).graph
    for field in ("node", "value_info"):
        graph.ClearField(field)
        getattr(graph, field).extend(getattr(inferred, field))


def _describe(view: View, training: bool) -> str:
    inputs = ", ".join(f"{name} {view.type(node)}" for name, node in view.inputs.items())
    outputs = ", ".join(view.outputs)
    graph = "training graph" if training else "inference graph"
    return f"{view.name} ({graph}): {inputs} -> {outputs}"


def _unique(base: str, taken: set) -> str:
    """`base`, else `base:2`, `base:3`, ...: the first not in `taken`, which it joins."""
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}:{n}"
    taken.add(name)
    return name
