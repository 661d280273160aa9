"""PyTorch export: a generated, readable `model.py` that needs torch alone.

The module's submodules follow the spec's blocks (`self.stage2.basic1.conv1`, plain
`Block` containers for the block instances), its layers are torch's own where torch has
them (nn.Conv2d, nn.Linear, nn.BatchNorm2d, ...) with the parameters named as netdsl
names them, and its forward is the network's steps in order, a recurrence as an
explicit loop over time, each group of lines under a comment with the spec line it
comes from. Every op writes its own code (`Op.torch`) through the `Writer`.

The module's state_dict names are the safetensors export's (netdsl.export.weights):
`Model().load_state_dict(safetensors.torch.load_file(...))` loads either file.
"""
from __future__ import annotations

import keyword
from dataclasses import dataclass, field

import numpy as np

from netdsl.export.naming import (NORMALIZE, component, identifier, module_path, param_name,
                                  tensor_name)
from netdsl.export.view import LoopParts, View, owner
from netdsl.export.walk import FOLDED, SEQ, STEP, Walker
from netdsl.lower.plan import Step
from netdsl.ops.expr import Call, Const, Var

__all__ = ["Writer", "TorchModule", "to_torch"]

# the scalar functions of netdsl.ops.expr as torch writes them; max and min against a
# constant are clamps
_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "gt": ">"}
_CALLS = {"exp": "torch.exp", "expm1": "torch.expm1", "log": "torch.log",
          "log1p": "torch.log1p", "tanh": "torch.tanh", "sqrt": "torch.sqrt",
          "abs": "torch.abs", "where": "torch.where", "max": "torch.maximum",
          "min": "torch.minimum"}
# names the generated forward uses for itself
_TAKEN = {"self", "torch", "nn", "F", "math", "range", "len", "Block", "Model", "Normalize"}

_NORMALIZE = '''
class Normalize(nn.Module):
    """(x - mean) / std per feature: the statistics training standardised the data by."""

    def __init__(self, *dims):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dims))
        self.register_buffer("std", torch.ones(dims))

    def forward(self, x):
        return (x - self.mean) / self.std
'''


@dataclass
class TorchModule:
    """The generated source, and the module's state_dict layout: each name with where its
    tensor comes from, ("param", key), ("buffer", node, name) or ("value", number)."""

    source: str
    state: dict[str, tuple] = field(default_factory=dict)


class Writer:
    """What an op's PyTorch lowering writes through: its layer, helpers, formulas."""

    def __init__(self):
        self.layers: dict[tuple[str, ...], str] = {}     # submodule path -> constructor
        self.helpers: dict[str, str] = {}                # name -> its source in model.py
        self.state: dict[str, tuple] = {}
        self.feeds: dict[str, str] = {}                  # a source node -> its argument
        self.lines: list[str] = []                       # the forward's lines being written
        self.note = ""                                   # where the op being written is

    def layer(self, step: Step, code: str, helper: tuple[str, str] | None = None,
              state: dict | None = None) -> str:
        """The submodule computing `step` (made once, by `code`; a shared layer's first
        use names it): returns the expression that reaches it, `self.stage2.conv1`.
        `helper` is (name, source) of a class `code` needs; `state` the values of the
        layer's own buffers that netdsl does not keep (nn.BatchNorm's batch count)."""
        node = owner(step)
        path = module_path(node)
        if helper:
            self.helper(*helper)
        if path not in self.layers:
            self.layers[path] = code + self.note
            for name, key in step.params.items():
                self.state[param_name(key)] = ("param", key)
            for name in step.op.buffers(*step.input_types):
                self.state[tensor_name(node, name)] = ("buffer", node, name)
            for name, value in (state or {}).items():
                self.state[tensor_name(node, name)] = ("value", value)
        return "self." + ".".join(path)

    @staticmethod
    def call(function: str, *args, **kwargs) -> str:
        """`function(args, key=value)` as Python writes it: positional strings are code
        (the inputs), keywords given as None are left to their defaults, and a
        per-dimension setting of one value is one number."""
        def text(value, code: bool = False) -> str:
            if isinstance(value, tuple) and value and all(v == value[0] for v in value):
                value = value[0]
            return value if code and isinstance(value, str) else repr(value)

        parts = [text(a, code=True) for a in args]
        parts += [f"{key}={text(value)}" for key, value in kwargs.items() if value is not None]
        return f"{function}({', '.join(parts)})"

    def helper(self, name: str, source: str) -> str:
        self.helpers.setdefault(name, source.strip("\n"))
        return name

    def feed(self, node: str) -> str:
        return self.feeds[node]

    def formula(self, expr, env: dict[str, str]) -> str:
        """An elementwise formula (netdsl.ops.expr) as a torch expression."""
        if isinstance(expr, Var):
            return env[expr.name]
        if isinstance(expr, Const):
            return repr(expr.value)
        args = [self.formula(a, env) for a in expr.args]
        if expr.fn in _INFIX:
            return f"({args[0]} {_INFIX[expr.fn]} {args[1]})"
        if expr.fn == "neg":
            return f"(-{args[0]})"
        if expr.fn in ("max", "min") and isinstance(expr.args[1], Const):
            return f"torch.clamp({args[0]}, {expr.fn}={args[1]})"
        return f"{_CALLS[expr.fn]}({', '.join(args)})"

    @staticmethod
    def align(x: str, rank: int, to: int) -> str:
        """x with `to - rank` unit axes after the batch axis (netdsl.ops.numeric.align)."""
        return x if rank >= to else f"{x}[:{', None' * (to - rank)}]"


class TorchWalker(Walker):
    """The walk that writes the forward: handles are Python expressions (locals)."""

    format = "PyTorch"

    def __init__(self, view: View, w: Writer, sources: dict[str, str],
                 normalize: dict | None = None):
        super().__init__(view)
        self.w, self.sources = w, sources
        self.normalize = normalize or {}
        self.args: list[str] = []
        self.returned: list[str] = []
        self._locals = set(_TAKEN)
        self._line = None
        self.indent = 2

    # ---- names and lines

    def local(self, base: str) -> str:
        name, n = base, 1
        while name in self._locals or keyword.iskeyword(name):
            n += 1
            name = f"{base}_{n}"
        self._locals.add(name)
        return name

    def write(self, text: str) -> None:
        self.w.lines.append("    " * self.indent + text)

    def where(self, node: str) -> None:
        """A comment with the spec line `node` comes from, when it is not the last one."""
        span = self.view.span(node)
        if span is None or (span.file, span.line) == self._line:
            return
        self._line = (span.file, span.line)
        lines = self.sources.get(span.file, "").split("\n")
        text = lines[span.line - 1].strip() if 0 < span.line <= len(lines) else ""
        self.write(f"# {span.file}:{span.line}" + (f": {text}" if text else ""))

    # ---- the walk

    def declare(self, name: str, node: str) -> str:
        arg = self.local(component(name))
        self.args.append(arg)
        if self.view.graph.nodes[node]["kind"] == "op":
            self.w.feeds[node] = arg
        if name not in self.normalize:
            return arg
        # standardised as training saw it: the module takes the raw data, as netc predict
        mean, std = self.normalize[name]
        path = ("normalize", component(name))
        self.w.helper("Normalize", _NORMALIZE)
        self.w.layers[path] = f"Normalize({', '.join(map(str, np.shape(mean)))})"
        prefix = NORMALIZE + component(name)
        self.w.state[f"{prefix}.mean"], self.w.state[f"{prefix}.std"] = \
            ("value", mean), ("value", std)
        if not self.w.lines:
            self.write("# the inputs standardised as in training (train: normalize)")
        self.write(f"{arg} = self.{'.'.join(path)}({arg})")
        return arg

    def finish(self, outputs: dict[str, str]) -> None:
        self.returned = list(outputs.values())

    def emit(self, step: Step, args: list, layout: str, timed: str | None) -> str:
        self.where(step.node)
        span = self.view.span(step.node)
        self.w.note = f"  # {span.file}:{span.line}" if span else ""
        code = self.lowering(step, lambda: step.op.torch(self.w, step, args))
        if code in args:  # a value passed through (identity, dropout as written)
            return code
        base = self._name_of(step.node)
        return self._assign(f"{base}_folded" if layout == FOLDED else base, code)

    def _name_of(self, node: str) -> str:
        """A value's local: its name in the spec (or as an output), else its node id."""
        for name, out in self.view.outputs.items():
            if out == node:
                return component(name)
        return component(self.view.label(node)) if "/" not in self.view.label(node) \
            else identifier(node)

    def fold(self, handle: str, node: str) -> str:
        return self._assign(f"{self._name_of(node)}_folded", f"{handle}.flatten(0, 1)")

    def unfold(self, handle: str, ref: str, node: str) -> str:
        return self._assign(self._name_of(node), f"{handle}.unflatten(0, {ref}.shape[:2])")

    def over_time(self, handle: str, ref: str, node: str) -> str:
        return (f"{handle}.unsqueeze(1).expand(-1, {ref}.shape[1], *{handle}.shape[1:])"
                ".flatten(0, 1)")

    def _assign(self, base: str, code: str) -> str:
        name = self.local(base)
        self.write(f"{name} = {code}")
        return name

    def loop(self, part: LoopParts) -> None:
        """The recurrence as a for loop over time: each state's values so far in a list
        (its initial values first), each value read after the loop collected step by
        step and stacked along the time axis."""
        states = part.states
        inside = dict.fromkeys((*part.members, *states, *part.scanned))
        for step in part.loop.steps:  # what the loop reads outside it, ready before it
            self.body_args(step, inside)
        scanned = {node: self.get(node, SEQ) for node in part.scanned}
        first = next(iter(scanned.values()))
        names = ", ".join(sorted({s.source for s in states.values()}))
        self._line = None
        self.write(f"# the recurrence of {names}, one step of {first} at a time")
        past = {}
        for source, depth in part.delays.items():
            state = next(s for s in states.values() if s.source == source)
            past[source] = self.local(f"{identifier(source)}_past")
            initial = self._initial(state, source, first, part)
            self.write(f"{past[source]} = [{initial}]" + (f" * {depth}" if depth > 1 else ""))
        collected = {node: self.local(f"{identifier(node)}_steps") for node in part.stacked
                     if node not in past and node not in states}
        for name in collected.values():
            self.write(f"{name} = []")
        step_var = "t" if "t" not in self._locals else self.local("t")
        self._locals.add(step_var)  # no value inside the loop may take its name
        self.write(f"for {step_var} in range({first}.shape[1]):")
        self.indent += 1
        local = {node: f"{past[s.source]}[-{s.delay}]" for node, s in states.items()}
        local.update({node: f"{handle}[:, {step_var}]" for node, handle in scanned.items()})
        for step in part.loop.steps:
            local[step.node] = self.emit(step, self.body_args(step, local), STEP, None)
        for source in past:
            self.write(f"{past[source]}.append({local[source]})")
        for node, name in collected.items():
            self.write(f"{name}.append({local[node]})")
        self.indent -= 1
        self._locals.discard("t")
        self._line = None
        results = {}
        for node in part.stacked:
            if node in past:
                steps = f"{past[node]}[{part.delays[node]}:]"
            elif node in states:
                s = states[node]
                steps = f"{past[s.source]}[{part.delays[s.source] - s.delay}:-{s.delay}]"
            else:
                steps = collected[node]
            if node in part.members:  # the sequence takes the name its steps had
                results[node] = local[node]
                self.write(f"{local[node]} = torch.stack({steps}, 1)")
            else:
                results[node] = self._assign(self._name_of(node), f"torch.stack({steps}, 1)")
        self.stacked(part, results)

    def _initial(self, state, source: str, first: str, part: LoopParts) -> str:
        """A state's value before the first step, (B, *dims)."""
        dims = ", ".join(map(str, self.view.type(source).dims))
        rows = f"{first}.shape[0]"
        if state.start is not None:  # `= last(encoded)`: a value computed before the loop
            return self.get(state.start, STEP)
        if state.init == "learned":
            path = ".".join(module_path(state.node))
            self.w.state[param_name(state.param)] = ("param", state.param)
            self.w.layers.setdefault(module_path(state.node) + ("init",),
                                     f"nn.Parameter(torch.zeros({dims}))")
            return f"self.{path}.init.expand({rows}, {dims})"
        like = self._float_like(part, first)
        if state.init == "zeros":
            return f"{like}.new_zeros({rows}, {dims})"
        return f"{like}.new_full(({rows}, {dims}), {float(state.init)!r})"

    def _float_like(self, part: LoopParts, first: str) -> str:
        """A float tensor of the model's dtype near a loop: what its states are made like."""
        for node in part.scanned:
            if self.view.type(node).classes is None:
                return self.get(node, SEQ)
        for step in part.loop.steps:
            for key in step.params.values():
                return "self." + param_name(key)
        return f"{first}.float()"


def to_torch(view: View, sources: dict[str, str] | None = None,
             description: str = "", normalize: dict | None = None) -> TorchModule:
    """The generated `model.py` of a view, and its state_dict layout. `normalize` maps an
    input's name to the (mean, std) its data was standardised by in training: the
    module's buffers `normalize.NAME.mean` and `.std`, applied first.

    Raises
    ------
    SpecError
        For an op with no PyTorch lowering, at its line in the spec.
    """
    w = Writer()
    walker = TorchWalker(view, w, sources or {}, normalize)
    walker.run()
    return TorchModule(_module_source(view, w, walker, description), w.state)


def _module_source(view: View, w: Writer, walker: TorchWalker, description: str) -> str:
    inputs = [f"{arg} {_shape(view, node, walker)}"
              for arg, node in zip(walker.args, view.inputs.values())]
    outputs = [f"{name} {_shape(view, node, walker)}" for name, node in view.outputs.items()]
    returned = ", ".join(walker.returned)
    lines = [
        f'"""{view.name} as a PyTorch module, generated by netdsl{description}.',
        "",
        "    model = Model()",
        '    model.load_state_dict(safetensors.torch.load_file("model.safetensors"))',
        f"    {', '.join(component(n) for n in view.outputs)} = "
        f"model({', '.join(walker.args)})",
        "",
        f"Inputs: {'; '.join(inputs)}.",
        f"Outputs: {'; '.join(outputs)}.",
        '"""',
        "import math",
        "",
        "import torch",
        "from torch import nn",
        "from torch.nn import functional as F",
        "",
        "",
        "class Block(nn.Module):",
        '    """A block instance of the spec: it holds the layers inside it."""',
        "",
    ]
    for source in w.helpers.values():
        lines += ["", source, ""]
    lines += ["", "class Model(nn.Module):",
              f'    """{view.name}: {", ".join(inputs)} -> {", ".join(outputs)}."""', "",
              "    def __init__(self):", "        super().__init__()"]
    made = set()

    def make(path: tuple[str, ...]) -> None:
        """The submodule at `path`, after the ones it sits in (Blocks, or a layer that
        holds a learned initial state too)."""
        if path in made:
            return
        if len(path) > 1:
            make(path[:-1])
        made.add(path)
        lines.append(f"        self.{'.'.join(path)} = {w.layers.get(path, 'Block()')}")

    for path in w.layers:
        make(path)
    lines += ["", f"    def forward(self, {', '.join(walker.args)}):", *w.lines,
              f"        return {returned}", ""]
    return "\n".join(lines)


def _shape(view: View, node: str, walker: TorchWalker) -> str:
    """A value's layout as the module takes or gives it: `(batch, 1, 28, 28) float`."""
    if node in walker.unbatched:
        return "(a number)"
    t = view.type(node)
    dims = ["batch", *(["time"] if t.seq else []), *map(str, t.dims)]
    kind = f"class indices < {t.classes}" if t.classes is not None else "float"
    return f"({', '.join(dims)}) {kind}"
