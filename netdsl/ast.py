"""The syntax tree of a .net file: frozen dataclasses, each with the span it came from
(made quickly: netdsl.frozen)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from netdsl.errors import Span
from netdsl.frozen import quick_init

# ---- expressions


@quick_init
@dataclass(frozen=True, slots=True)
class Number:
    value: int | float
    span: Span
    text: str | None = field(default=None, compare=False)  # as written: `fmt` keeps 1e-4 as 1e-4


@quick_init
@dataclass(frozen=True, slots=True)
class String:
    value: str
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class Name:
    id: str
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple["Expr", ...]
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class BinOp:
    op: str  # + - * /
    left: "Expr"
    right: "Expr"
    span: Span
    regrouped: bool = False  # a part of a long sum, grouped by the parser: a + (b + c) is a + b + c


@quick_init
@dataclass(frozen=True, slots=True)
class Neg:
    operand: "Expr"
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class Arg:
    """One argument of a call: positional when `name` is None."""

    name: str | None
    value: "Expr"
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class Call:
    """A layer, block, shared instance or function applied to arguments: `conv(64, 3, pad=1)`."""

    name: str
    args: tuple[Arg, ...]
    span: Span
    name_span: Span | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class Stage:
    """One `-> layer` step of a pipeline, repeated `repeat` times (`-> basic(64) x 3`)."""

    call: Call
    repeat: "Expr | None"
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class Pipeline:
    source: "Expr"
    stages: tuple[Stage, ...]
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class Delayed:
    """A state's value `delay` steps back: `h[t-1]`."""

    name: str
    delay: int
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class Dimension:
    """A dimension of a tensor's type, read by its name: `x.channels`."""

    tensor: Name
    name: str
    span: Span
    name_span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class Index:
    """An item of a list a call gives: `shape(x)[0]`."""

    value: "Expr"
    index: "Expr"
    span: Span


Expr = Union[Number, String, Name, ListExpr, BinOp, Neg, Call, Pipeline, Delayed, Dimension, Index]

# ---- declarations and statements


@quick_init
@dataclass(frozen=True, slots=True)
class TypeExpr:
    """`[3, 32, 32]`, `seq[16]`, `class(10)`, `seq class(16)`, `class(2)[388, 388]`."""

    dims: tuple[Expr, ...]
    classes: Expr | None
    seq: bool
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class Import:
    target: str  # a stdlib module name or a quoted path
    is_path: bool
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class NetworkDecl:
    name: str
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class IODecl:
    kind: str  # "input" or "target"
    name: str
    type: TypeExpr
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class StateItem:
    name: str
    type: TypeExpr
    init: Expr | None  # zeros when None; `learned` or a number otherwise
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class StateDecl:
    items: tuple[StateItem, ...]
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class Assign:
    targets: tuple[str, ...]
    value: Expr
    span: Span
    target_spans: tuple[Span, ...] = ()  # where each name is written, for carets under it


@quick_init
@dataclass(frozen=True, slots=True)
class Loss:
    name: str | None
    value: Expr
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class TrainSetting:
    """`batch=128` in a train clause; an optimiser or `bptt(...)` is a TrainSetting with name None."""

    name: str | None
    value: Expr
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class Train:
    items: tuple[TrainSetting, ...]
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class Share:
    """`share D = discriminator(128)`: one instance whose parameters every use shares."""

    name: str
    call: Call
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class For:
    var: str
    start: Expr
    stop: Expr  # inclusive, as in `1..n`
    body: tuple["Stmt", ...]
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class In:
    names: tuple[str, ...]
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class Out:
    values: tuple[Expr, ...]
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class Param:
    name: str
    default: Expr | None
    span: Span


@quick_init
@dataclass(frozen=True, slots=True)
class Block:
    name: str
    params: tuple[Param, ...]
    body: tuple["Stmt", ...]
    span: Span
    file: str = ""


Stmt = Union[IODecl, StateDecl, Assign, Loss, Train, Share, For, In, Out]


@quick_init
@dataclass(frozen=True, slots=True)
class Comment:
    text: str
    span: Span


@quick_init
@dataclass(frozen=True)  # one per file: no slots, so it can be weakly referenced
class Module:
    """A parsed file. `items` keeps source order; comments are kept apart for `netc fmt`."""

    file: str
    items: tuple[Union[Import, NetworkDecl, Block, Stmt], ...]
    comments: tuple[Comment, ...] = field(default=())

    @property
    def network_name(self) -> str | None:
        return next((i.name for i in self.items if isinstance(i, NetworkDecl)), None)

    @property
    def blocks(self) -> dict[str, Block]:
        return {i.name: i for i in self.items if isinstance(i, Block)}
