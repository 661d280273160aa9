"""Values, layer calls and train clauses as a spec writes them, for every printer that
shows them (drawings, `--emit` stages, the builder's fields): `conv(16, 3, pad=1,
bias=false)`, never Python's `bias=False` or `kernel=(3,)`."""
from __future__ import annotations

from netdsl.ops.base import REQUIRED

__all__ = ["literal", "call", "inputs_call", "train_clause"]


def literal(value) -> str:
    """A value in the language's syntax: 3, [3, 5], 0.1, true, 'text'."""
    if isinstance(value, (tuple, list)):
        return literal(value[0]) if len(value) == 1 else f"[{', '.join(map(literal, value))}]"
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _arguments(op) -> list[str]:
    parts = []
    for arg in type(op).args:
        value = op.attrs.get(arg.name, arg.default)
        if arg.default is REQUIRED:
            parts.append(literal(value))
        elif literal(value) != literal(arg.default):  # 1 and (1,) read the same
            parts.append(f"{arg.name}={literal(value)}")
    return parts


def call(op) -> str:
    """An op as a spec writes it, defaults left out: conv(16, 3, pad=1, bias=false)."""
    parts = _arguments(op)
    return f"{op.name}({', '.join(parts)})" if parts else op.name


def inputs_call(op, sources: list[str]) -> str:
    """An op applied to its inputs as a spec writes it: `x -> dense(10)` for one input,
    `add(a, b)` or `dense(x, 64, bias=false)` for several or none."""
    if len(sources) == 1:
        return f"{sources[0]} -> {call(op)}"
    return f"{op.name}({', '.join([*sources, *_arguments(op)])})"


def _clause_item(key: str, value) -> str:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        name, settings = value   # optimizer=('sgd', {...}), schedule=('step', {...}), bptt
        inner = ", ".join(f"{k}={literal(v)}" for k, v in settings.items())
        return f"{key}={name}({inner})" if key == "schedule" else f"{name}({inner})"
    if isinstance(value, dict):  # early_stop(patience=5)
        return f"{key}({', '.join(f'{k}={literal(v)}' for k, v in value.items())})"
    return f"{key}={literal(value)}"


def train_clause(train: dict) -> str:
    """The train clause of a spec's settings: `train sgd(lr=0.1, momentum=0.9), batch=128`."""
    return "train " + ", ".join(_clause_item(k, v) for k, v in train.items())
