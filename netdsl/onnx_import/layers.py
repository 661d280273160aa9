"""What translation makes: netdsl layers over named values, with their weights."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Layer", "Network", "State", "Unsupported", "CELLS"]

# the standard library's recurrent cells (netdsl/stdlib/rnn.net) a layer may be: a block
# call, not an op, its weights those of the dense layers inside it by their local names
CELLS = frozenset(("lstm", "gru", "gru_reset_after", "elman"))


class Unsupported(Exception):
    """A node netdsl cannot express; `need` says what netdsl would need for it."""

    def __init__(self, need: str):
        super().__init__(need)
        self.need = need


@dataclass
class Layer:
    """One netdsl op applied to values: `op(args)` of `inputs`, computing `output`.

    `params` and `buffers` hold its weights in netdsl's (PyTorch's) layout, under the
    names the op's `params` and `buffers` give them; `origin` is the ONNX node's name.
    """

    op: str
    args: dict
    inputs: list[str]
    output: str
    origin: str
    params: dict[str, np.ndarray] = field(default_factory=dict)
    buffers: dict[str, np.ndarray] = field(default_factory=dict)
    # where the spec writes it among the layers of its block (or of the network): of two
    # alike layers reading the same values, the one written first
    rank: int = 0


@dataclass
class State:
    """A value read `delay` steps back inside a recurrence: `source[t-delay]`, which
    starts from zeros, a number, a learned value (`learned`: its initial value) or a
    value the network computes before the loop (`start`)."""

    source: str
    delay: int
    dims: tuple[int, ...]
    init: str | float = "zeros"
    learned: np.ndarray | None = None
    hint: str = "h"   # the state's module path, from the ONNX value carrying it
    start: str | None = None


@dataclass
class Network:
    """The translated model: its inputs (name -> per-example dims), layers in an order
    that computes every input before it is read, its outputs (value names) and each
    value's per-example dims (per step, for a sequence)."""

    name: str
    inputs: dict[str, tuple[int, ...]]
    layers: list[Layer]
    outputs: list[str]
    dims: dict[str, tuple[int, ...]]
    sequences: set[str] = field(default_factory=set)  # values with a time axis
    # the inputs and outputs ONNX lays out otherwise than netdsl's [batch, (time,) dims]:
    # their axes in ONNX's order ("B" batch, "T" time, "D" an RNN's one direction, numbers
    # the dims), e.g. ("T", "B", 0) for a time-major sequence
    layouts: dict[str, tuple] = field(default_factory=dict)
    # the values a recurrence reads steps back (a Scan's carried values), by the name of
    # the value each read is: `h[t-1]` reads the value h one step back
    states: dict[str, State] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)  # inputs of word indices -> V
    onnx_names: dict[str, str] = field(default_factory=dict)  # input -> ONNX's name of it

    def consumers(self) -> dict[str, list[Layer]]:
        readers: dict[str, list[Layer]] = {}
        for layer in self.layers:
            for name in layer.inputs:
                readers.setdefault(name, []).append(layer)
        return readers
