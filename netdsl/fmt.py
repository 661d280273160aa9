"""`netc fmt`: print a parsed spec in its canonical layout, keeping every comment.

The layout, in brief:

- two spaces of indentation inside blocks and for-loops;
- one space around `=`, `->` and binary operators and after commas; `name=value`
  keyword arguments, train settings and parameter defaults without spaces;
- `input`, `target` and `state` padded to six columns: `input  x : [64]`;
- ints as written, floats in Python's shortest round-tripping form with a plain
  exponent (`1e-3` prints as `0.001`, `1e-05` as `1e-5`), strings in single quotes
  (double quotes only for a string holding a single quote);
- bare layer names in stages (`x -> relu`), repeats as `-> basic(64) x 3`, with the
  count in parentheses unless it is an atom (a name, number, call, ...);
- parentheses only where precedence needs them;
- a pipeline statement on one line when it fits in 88 columns and its comments sit
  on one line; otherwise broken before each `->`, aligned under the first `->`, or
  indented four more than the statement when that alignment would not fit;
- calls never break inside their parentheses;
- at most one blank line in a row, kept where the source had one; a blank line
  around every top-level block;
- full-line comments stay on their own line before what follows them; a trailing
  comment stays at the end of its line; those of one statement line up two spaces
  after the longest line that holds one. A printed line keeps the last comment
  that falls on it; any others move, in order, onto their own lines above the
  statement (a call broken over lines with a comment on each, for example).

Example
-------
>>> print(format_text("logits=x->dense( 10 )->relu   # scores"), end="")
logits = x -> dense(10) -> relu  # scores
"""
from __future__ import annotations

import math

from netdsl import ast
from netdsl.parse import parse

__all__ = ["format_module", "format_text", "WIDTH"]

WIDTH = 88
INDENT = "  "
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_UNARY, _ATOM = 3, 4


def format_text(text: str, file: str = "<spec>") -> str:
    """Format the text of a .net file.

    Raises
    ------
    SpecError
        When the text does not parse.
    """
    return format_module(parse(text, file))


def format_module(module: ast.Module) -> str:
    """The canonical text of a parsed spec, its comments included."""
    printer = _Printer(module.comments)
    printer.body(module.items, "", math.inf, top=True)
    return "\n".join(printer.lines) + "\n" if printer.lines else ""


# ---- expressions


def expr(e: ast.Expr, min_precedence: int = 0) -> str:
    """`e` as text, in parentheses when it binds looser than its place allows."""
    text = _EXPRESSIONS[type(e)](e)
    return f"({text})" if _precedence(e) < min_precedence else text


def _precedence(e: ast.Expr) -> int:
    if isinstance(e, ast.Pipeline):
        return 0
    if isinstance(e, ast.BinOp):
        return _PRECEDENCE[e.op]
    return _UNARY if isinstance(e, ast.Neg) else _ATOM


def _number(n: ast.Number) -> str:
    if isinstance(n.value, int):
        return str(n.value)
    mantissa, e, exponent = repr(n.value).partition("e")
    return f"{mantissa}e{int(exponent)}" if e else mantissa


def _quote(text: str) -> str:
    return f'"{text}"' if "'" in text else f"'{text}'"


def _binop(e: ast.BinOp) -> str:
    level = _PRECEDENCE[e.op]  # left-associative: a parenthesised right operand stays so
    regrouped = isinstance(e.right, ast.BinOp) and e.right.regrouped  # a long sum, as written
    return f"{expr(e.left, level)} {e.op} {expr(e.right, level if regrouped else level + 1)}"


def _call(c: ast.Call) -> str:
    return f"{c.name}({', '.join(map(_arg, c.args))})"


def _arg(a: ast.Arg) -> str:
    return expr(a.value) if a.name is None else f"{a.name}={expr(a.value)}"


def _callee(c: ast.Call) -> str:
    """A stage or shared instance: a bare name when there are no arguments."""
    return _call(c) if c.args else c.name


def _stage(s: ast.Stage) -> str:
    # the parser takes only an atom after `x`, so anything wider keeps its parentheses
    return _callee(s.call) if s.repeat is None else f"{_callee(s.call)} x {expr(s.repeat, _ATOM)}"


def _pipeline_parts(p: ast.Pipeline) -> list[str]:
    return [expr(p.source, 1), *map(_stage, p.stages)]


_EXPRESSIONS = {
    ast.Number: _number,
    ast.String: lambda s: _quote(s.value),
    ast.Name: lambda n: n.id,
    ast.ListExpr: lambda e: f"[{', '.join(map(expr, e.items))}]",
    ast.BinOp: _binop,
    ast.Neg: lambda e: "-" + expr(e.operand, _UNARY),
    ast.Call: _call,
    ast.Pipeline: lambda p: " -> ".join(_pipeline_parts(p)),
    ast.Delayed: lambda d: f"{d.name}[t-{d.delay}]",
}

# ---- statements


def _type(t: ast.TypeExpr) -> str:
    dims = f"[{', '.join(map(expr, t.dims))}]"
    if t.classes is None:
        return ("seq" if t.seq else "") + dims
    text = f"class({expr(t.classes)})" + (dims if t.dims else "")
    return ("seq " if t.seq else "") + text


def _state_item(item: ast.StateItem) -> str:
    init = "" if item.init is None else f" = {expr(item.init)}"
    return f"{item.name} : {_type(item.type)}{init}"


def _setting(s: ast.TrainSetting) -> str:
    return expr(s.value) if s.name is None else f"{s.name}={expr(s.value)}"


def _param(p: ast.Param) -> str:
    return p.name if p.default is None else f"{p.name}={expr(p.default)}"


_LINES = {
    ast.Import: lambda s: "import " + (_quote(s.target) if s.is_path else s.target),
    ast.NetworkDecl: lambda s: f"network {s.name}",
    ast.IODecl: lambda s: f"{s.kind:<6} {s.name} : {_type(s.type)}",
    ast.StateDecl: lambda s: "state  " + ", ".join(map(_state_item, s.items)),
    ast.In: lambda s: "in " + ", ".join(s.names),
    ast.Out: lambda s: "out " + ", ".join(map(expr, s.values)),
    ast.Train: lambda s: "train " + ", ".join(map(_setting, s.items)),
    ast.Share: lambda s: f"share {s.name} = {_callee(s.call)}",
}


def _split(stmt) -> tuple[str, ast.Expr | None]:
    """A statement as its head and the value a pipeline layout may break; None when unbreakable."""
    if isinstance(stmt, ast.Assign):
        return ", ".join(stmt.targets) + " = ", stmt.value
    if isinstance(stmt, ast.Loss):
        return "loss " + (f"{stmt.name}: " if stmt.name else ""), stmt.value
    if isinstance(stmt, ast.Out) and len(stmt.values) == 1:
        return "out ", stmt.values[0]
    return _LINES[type(stmt)](stmt), None


def _header(stmt: ast.Block | ast.For) -> str:
    if isinstance(stmt, ast.Block):
        return f"block {stmt.name}({', '.join(map(_param, stmt.params))}) {{"
    return f"for {stmt.var} in {expr(stmt.start)}..{expr(stmt.stop)} {{"


# ---- layout: rows of text, each with the nodes whose source lines map onto it


def _broken(indent: str, head: str, p: ast.Pipeline) -> list[tuple[str, list]]:
    parts, nodes = _pipeline_parts(p), [p.source, *p.stages]
    first = indent + head + parts[0] + " "
    aligned = [(f"{first}-> {parts[1]}", nodes[:2])]
    pad = " " * len(first)
    aligned += [(f"{pad}-> {part}", [node]) for part, node in zip(parts[2:], nodes[2:])]
    if max(len(text) for text, _ in aligned) <= WIDTH:
        return aligned
    deep = indent + " " * 4
    rows = [(indent + head + parts[0], nodes[:1])]
    return rows + [(f"{deep}-> {part}", [node]) for part, node in zip(parts[1:], nodes[1:])]


def _rows(indent: str, stmt, comments: list[ast.Comment]) -> list[tuple[str, list]]:
    head, value = _split(stmt)
    flat = [(indent + head + ("" if value is None else expr(value)), [stmt])]
    if not isinstance(value, ast.Pipeline):
        return flat
    broken = _broken(indent, head, value)
    fits = len(flat[0][0]) <= WIDTH and len(_place(broken, comments)[0]) <= 1
    return flat if fits else broken


def _place(rows, comments: list[ast.Comment]) -> tuple[dict[int, ast.Comment], list[ast.Comment]]:
    """Each comment goes to the row of the last node starting on or before its line.

    A row keeps its last comment as trailing; the others are returned to move above.
    """
    starts = [(node.span.line, i) for i, (_, nodes) in enumerate(rows) for node in nodes]
    row_of = {
        id(c): max((i for line, i in starts if line <= c.span.line), default=0) for c in comments
    }
    trailing = {row_of[id(c)]: c for c in comments}
    return trailing, [c for c in comments if trailing[row_of[id(c)]] is not c]


def _with_comments(rows, trailing: dict[int, ast.Comment]) -> list[str]:
    # the statement's trailing comments line up, two spaces after the longest line holding one
    column = max((len(rows[i][0]) for i in trailing), default=0) + 2
    return [
        text.ljust(column) + trailing[i].text.rstrip() if i in trailing else text
        for i, (text, _) in enumerate(rows)
    ]


class _Printer:
    """Walks the items in order, handing out the comments (sorted by position) as it passes them."""

    def __init__(self, comments: tuple[ast.Comment, ...]):
        self.comments = sorted(comments, key=lambda c: (c.span.line, c.span.col))
        self.next = 0
        self.lines: list[str] = []
        self.prev: int | None = None  # source line the last printed element ended on

    def take(self, stop: float) -> list[ast.Comment]:
        """The comments not yet printed on lines before `stop`."""
        start = self.next
        while self.next < len(self.comments) and self.comments[self.next].span.line < stop:
            self.next += 1
        return self.comments[start:self.next]

    def blank(self, line: int, force: bool = False) -> None:
        if self.prev is not None and (force or line > self.prev + 1):
            self.lines.append("")

    def comment(self, c: ast.Comment, indent: str, force: bool = False) -> None:
        self.blank(c.span.line, force)
        self.lines.append(indent + c.text.rstrip())
        self.prev = c.span.end_line

    def body(self, stmts, indent: str, limit: float, top: bool = False) -> None:
        """Statements of a file or block; comments on `limit` and after belong to the caller."""
        self.prev, after_block = None, False
        for stmt in stmts:
            force = top and (isinstance(stmt, ast.Block) or after_block)
            for c in self.take(stmt.span.line):
                self.comment(c, indent, force)
                force = False
            self.blank(stmt.span.line, force)
            if isinstance(stmt, (ast.Block, ast.For)):
                self.compound(stmt, indent, limit)
            else:
                self.simple(stmt, indent, limit)
            self.prev = stmt.span.end_line
            after_block = top and isinstance(stmt, ast.Block)
        for i, c in enumerate(self.take(limit)):  # comments closing the file or block
            self.comment(c, indent, i == 0 and after_block)

    def simple(self, stmt, indent: str, limit: float) -> None:
        inner = self.take(min(stmt.span.end_line + 1, limit))
        rows = _rows(indent, stmt, inner)
        trailing, moved = _place(rows, inner)
        self.lines.extend(indent + c.text.rstrip() for c in moved)
        self.lines.extend(_with_comments(rows, trailing))

    def compound(self, stmt: ast.Block | ast.For, indent: str, limit: float) -> None:
        line, end = stmt.span.line, stmt.span.end_line
        first = stmt.body[0].span.line if stmt.body else end
        head = self.take(line + 1) if line < first and line < end else []
        self.lines.extend(_with_comments([(indent + _header(stmt), [])], dict(enumerate(head))))
        self.body(stmt.body, indent + INDENT, end)
        tail = self.take(min(end + 1, limit))
        self.lines.extend(_with_comments([(indent + "}", [])], dict(enumerate(tail))))
