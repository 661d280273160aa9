"""The expanded program: a flat list of node definitions, the result of `expand`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from netdsl.errors import Span
from netdsl.frozen import quick_init
from netdsl.ops.base import Op
from netdsl.types import TensorType

__all__ = ["Frame", "NodeDef", "StateDef", "StartFrom", "Program", "call_notes"]


@quick_init
@dataclass(frozen=True, slots=True)
class Frame:
    """One level of block nesting: the instance `basic2` of block `basic`.

    `repeat` identifies the `x N` stage that made the instance (instances of one
    repetition share it), so a drawing can collapse them into one box. `origin` is the
    file the block is defined in (`<stdlib>/rnn.net` for the standard library's cells),
    so an exporter can tell a library block from a spec's own of the same name. `call`
    is the call as errors name it, with its arguments' values and which repetition it
    is: "basic(32, stride=2), the 2nd repetition of 'basic(32) x 3'".
    """

    name: str
    block: str
    span: Span
    repeat: str | None = None
    origin: str | None = None
    call: str = ""


def call_notes(frames: tuple[Frame, ...], span: Span | None = None) -> tuple[tuple[str, Span], ...]:
    """The calls that led into a block body, innermost first, as notes for an error at `span`.

    A call the error already points at is not repeated as a note.
    """
    notes = tuple((f"in {frame.call or frame.block}", frame.span) for frame in reversed(frames))
    return notes[1:] if notes and notes[0][1] == span else notes


@quick_init
@dataclass(frozen=True, slots=True)
class StartFrom:
    """A state's initial value computed by the network (`state s : [n] = last(encoded)`):
    `text` is the expression as the spec writes it; each of the state's nodes reads the
    value as its second input."""

    text: str

    def __str__(self) -> str:
        return self.text


@quick_init
@dataclass(frozen=True, slots=True)
class StateDef:
    """A declared recurrent state: its step type, initial value and declaration span."""

    name: str
    type: TensorType
    init: Any  # "zeros", "learned", a number or a StartFrom
    span: Span


@dataclass(slots=True)  # one per node: a big spec has hundreds of thousands
class NodeDef:
    """One node of the graph to be.

    kind is "input", "target", "state" or "op". `inputs` are (node id, delay) pairs
    in argument order; a state node has one input, the value it delays, and a second,
    the value it starts from, when its declaration gives one (StartFrom). `shares`
    names the node whose parameters this one reuses (`share` instances).
    """

    id: str
    kind: str
    span: Span
    scope: tuple[Frame, ...] = ()
    op: Op | None = None
    inputs: list[tuple[str, int]] = field(default_factory=list)
    type: TensorType | None = None  # declared types of inputs, targets and states
    state: StateDef | None = None
    shares: str | None = None


@dataclass
class Program:
    """Everything `expand` produced: nodes in definition order, losses, train settings."""

    name: str
    nodes: dict[str, NodeDef]
    losses: dict[str, str]  # loss name -> node id
    train: dict[str, Any]
    file: str
    train_spans: dict[str, Span] = field(default_factory=dict)  # see train_clause.clause_spans
    # the tensors the spec names at its top level (`logits`, `fake`) -> the node computing
    # each: a name need not be its node's id (`fake = normal(100) -> G` is G's last node)
    names: dict[str, str] = field(default_factory=dict)
