"""The expanded program: a flat list of node definitions, the result of `expand`."""
from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from netdsl.errors import Span
from netdsl.frozen import quick_init
from netdsl.ops.base import Op
from netdsl.types import TensorType

__all__ = ["Frame", "NodeDef", "op_node", "StateDef", "StartFrom", "Program", "call_notes"]


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


class NodeDef(dict):
    """One node of the graph to be, and, the very same object, its data in the graph: the
    graph pass gives networkx this dict as the node's attribute dict, so a node's data is
    made once (a big spec has hundreds of thousands).

    Its keys are the graph's node data: `kind` ("input", "target", "state" or "op"),
    `span`, `scope` (the block frames it sits in), `op`, `declared` (the declared type of
    an input, target or state), `state` (a state node's StateDef), `shares` (the node
    whose parameters this one reuses: `share` instances) and `inputs`, (node id, delay)
    pairs in argument order; a state node has one input, the value it delays, and a
    second, the value it starts from, when its declaration gives one (StartFrom). The
    shapes pass adds `type`. The same fields read as attributes (`node.kind`; `node.type`
    is the declared type), and `id` is the node's id, kept beside the dict, not in it.
    """

    __slots__ = ("id",)

    def __init__(self, id: str, kind: str, span: Span, scope: tuple[Frame, ...] = (),
                 op: Op | None = None, inputs: list[tuple[str, int]] | None = None,
                 type: TensorType | None = None, state: StateDef | None = None,
                 shares: str | None = None):
        dict.__init__(self, kind=kind, op=op, span=span, scope=scope, declared=type, state=state,
                      shares=shares, inputs=[] if inputs is None else inputs)
        self.id = id

    kind = property(itemgetter("kind"))
    op = property(itemgetter("op"))
    scope = property(itemgetter("scope"))
    type = property(itemgetter("declared"))
    state = property(itemgetter("state"))
    span = property(itemgetter("span"), lambda self, value: self.__setitem__("span", value))
    shares = property(itemgetter("shares"), lambda self, value: self.__setitem__("shares", value))
    inputs = property(itemgetter("inputs"), lambda self, value: self.__setitem__("inputs", value))

    def __repr__(self) -> str:
        return f"NodeDef({self.id!r}, {dict.__repr__(self)})"


def op_node(node_id: str, span: Span, scope: tuple[Frame, ...], op: Op,
            inputs: list[tuple[str, int]], shares: str | None) -> NodeDef:
    """`NodeDef(node_id, "op", span, scope, op, inputs, shares=shares)`, made the quick
    way, key by key in the keys' order: expansion makes one per layer."""
    node = _new(NodeDef)
    node["kind"] = "op"
    node["op"] = op
    node["span"] = span
    node["scope"] = scope
    node["declared"] = node["state"] = None
    node["shares"] = shares
    node["inputs"] = inputs
    node.id = node_id
    return node


_new = dict.__new__


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
