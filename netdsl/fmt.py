"""`netc fmt`: print a parsed spec in its canonical layout, keeping every comment.

The layout, in brief:

- two spaces of indentation inside blocks and for-loops;
- one space around `=`, `->` and binary operators and after commas; `name=value`
  keyword arguments, train settings and parameter defaults without spaces;
- `input`, `target` and top-level `state` padded to six columns: `input  x : [64]`
  (`state h` in a block, where there is nothing to line up with);
- numbers as written (`1e-4` stays `1e-4`; a number made without source text, floats
  in Python's shortest round-tripping form), strings in single quotes (double quotes
  only for a string holding a single quote);
- bare layer names in stages (`x -> relu`), repeats as `-> basic(64) x 3`, with the
  count in parentheses unless it is an atom (a name, number, call, ...);
- parentheses only where precedence needs them;
- a pipeline statement on one line when it fits in 88 columns and the source has it
  on one line; otherwise broken before `->`s, aligned under the first `->` (or
  indented four more than the statement when that alignment would not fit): a row
  ends where the source's did (a comment, or a break the author chose, as between
  conv-batchnorm-relu groups) and where 88 columns are full, so `# [64, 56, 56]`
  stays after the stage it describes;
- a call too long for its line breaks between arguments, aligned after its `(`, each
  row filled (one argument a row when one is a pipeline, as in googlenet's
  inception); a long train clause breaks inside its first call whose break makes
  every row fit;
- arithmetic too long for its line breaks before its loosest operators, rows filled
  and aligned under the first operand, inside the call that holds it or, for a
  statement's own value, inside a pair of parentheses added around it (a line breaks
  only within brackets);
- at most one blank line in a row, kept where the source had one; a blank line
  around every top-level block;
- full-line comments stay on their own line before what follows them; a trailing
  comment stays at the end of its line; those of consecutive lines line up two
  spaces after the longest of those lines. A printed line keeps the last comment
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
    lines = _aligned(printer.lines)
    return "\n".join(lines) + "\n" if lines else ""


def _aligned(lines: list[tuple[str, str | None]]) -> list[str]:
    """The printed lines, the trailing comments of each run of consecutive lines that
    hold one lined up two spaces after the run's longest code."""
    out: list[str] = []
    run: list[tuple[str, str]] = []
    for code, comment in [*lines, ("", None)]:
        if comment is not None:
            run.append((code, comment))
            continue
        column = max((len(c) for c, _ in run), default=0) + 2
        out += [c.ljust(column) + text for c, text in run]
        run = []
        out.append(code)
    return out[:-1]


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
    if n.text:  # as the author wrote it: 1e-4 stays 1e-4
        return n.text
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
    ast.Dimension: lambda d: f"{d.tensor.id}.{d.name}",
    ast.Index: lambda i: f"{expr(i.value)}[{expr(i.index)}]",
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


def _breaks(nodes: list, comments: list[ast.Comment]) -> set[int]:
    """The nodes a row must end after: each is followed, in the source, by a comment that
    stays at the end of its line, or by a line break the author chose."""
    forced = {i for i, (a, b) in enumerate(zip(nodes, nodes[1:])) if b.span.line > a.span.end_line}
    for c in comments:
        before = [i for i, node in enumerate(nodes) if node.span.line <= c.span.line]
        if before and before[-1] < len(nodes) - 1:
            forced.add(before[-1])
    return forced


def _filled(first: str, pad: str, parts: list[str], nodes: list, forced: set[int]):
    """Stages packed onto rows up to the width, each continuation row starting `pad -> `."""
    rows = [(first + parts[0], nodes[:1])]
    for i, (part, node) in enumerate(zip(parts[1:], nodes[1:]), 1):
        text, held = rows[-1]
        if i - 1 in forced or len(f"{text} -> {part}") > WIDTH:
            rows.append((f"{pad}-> {part}", [node]))
        else:
            rows[-1] = (f"{text} -> {part}", held + [node])
    return rows


def _broken(indent: str, head: str, p: ast.Pipeline, forced: set[int]) -> list[tuple[str, list]]:
    """A pipeline broken before arrows, aligned under its first arrow, or indented four
    more than the statement when that alignment would not fit."""
    parts, nodes = _pipeline_parts(p), [p.source, *p.stages]
    aligned = _filled(indent + head, " " * len(indent + head + parts[0] + " "), parts, nodes, forced)
    if max(len(text) for text, _ in aligned) <= WIDTH:
        return aligned
    rows = _filled(indent + head, indent + " " * 4, parts, nodes, forced | set(range(len(nodes))))
    out = []
    for (text, held), stage in zip(rows, [None, *p.stages]):
        if len(text) <= WIDTH or stage is None or stage.repeat is not None:
            out.append((text, held))
        else:  # a stage too long alone: its call breaks between arguments
            out += _fit(text[:len(text) - len(_stage(stage))], stage.call, "", held)
    return out


def _fit(prefix: str, e: ast.Expr, suffix: str, nodes: list) -> list[tuple[str, list]]:
    """`prefix + e + suffix` as rows: a call too long for one breaks between arguments,
    aligned after its '(', filling each row (one argument a row when two or more are
    pipelines, as in googlenet's inception); a pipeline argument breaks as a pipeline."""
    flat = prefix + expr(e) + suffix
    if isinstance(e, ast.Pipeline):
        forced = _breaks([e.source, *e.stages], [])
        if len(flat) <= WIDTH and not forced:
            return [(flat, nodes)]
        indent = prefix[:len(prefix) - len(prefix.lstrip())]
        rows = _broken(indent, prefix[len(indent):], e, forced)
        (first, held), (last, _) = rows[0], rows[-1]
        rows[0] = (first, nodes + held)
        return rows[:-1] + [(rows[-1][0] + suffix, rows[-1][1])] if len(rows) > 1 else [(last + suffix, nodes + held)]
    if isinstance(e, ast.BinOp) and len(flat) > WIDTH:
        return _operator_rows(prefix, e, suffix, nodes)
    if len(flat) <= WIDTH or not isinstance(e, ast.Call) or not e.args:
        return [(flat, nodes)]
    start = prefix + e.name + "("
    pad = " " * len(start)
    one_a_row = sum(isinstance(a.value, ast.Pipeline) for a in e.args) > 1
    rows: list[tuple[str, list]] = []
    text, held = start, list(nodes)
    for i, a in enumerate(e.args):
        tail = ")" + suffix if i == len(e.args) - 1 else ","
        keyword = "" if a.name is None else f"{a.name}="
        here = text + ("" if text == start else " ") + keyword
        fits_here = _fit(here, a.value, tail, held + [a])
        if text == start or (not one_a_row and len(fits_here[0][0]) <= WIDTH):
            *done, (text, held) = fits_here
        else:
            rows.append((text, held))
            *done, (text, held) = _fit(pad + keyword, a.value, tail, [a])
        rows += done
    return rows + [(text, held)]


def _terms(e: ast.BinOp, level: int) -> list[tuple[str, ast.Expr]]:
    """The operands of a chain of operators of one precedence, each with the operator
    before it: a + b - c as ('', a), ('+', b), ('-', c); a long sum the parser grouped
    as a tree is one chain, as `_binop` prints it."""
    left, right = e.left, e.right
    chained = isinstance(left, ast.BinOp) and _PRECEDENCE[left.op] == level
    terms = _terms(left, level) if chained else [("", left)]
    if isinstance(right, ast.BinOp) and right.regrouped and _PRECEDENCE[right.op] == level:
        (_, first), *rest = _terms(right, level)
        return terms + [(e.op, first)] + rest
    return terms + [(e.op, right)]


def _operator_rows(prefix: str, e: ast.BinOp, suffix: str, nodes: list) -> list[tuple[str, list]]:
    """An arithmetic expression too long for its line (inside parentheses, where a line
    may break): broken before its loosest operators, each row filled up to the width and
    aligned under the first operand; an operand too long alone breaks in its turn."""
    level = _PRECEDENCE[e.op]
    terms = _terms(e, level)
    pad = " " * len(prefix)
    rows: list[tuple[str, list]] = []
    text, held = prefix, list(nodes)

    def placed(start: str, op: str, term, tail: str, holding: list):
        need = level + 1 if op else level  # right operands bind tighter, as `_binop` prints them
        if _precedence(term) < need:  # parenthesised: kept whole
            return [(start + expr(term, need) + tail, holding)]
        return _fit(start, term, tail, holding)

    for i, (op, term) in enumerate(terms):
        tail = suffix if i == len(terms) - 1 else ""
        lead = f"{op} " if op else ""
        here = text + ("" if text == prefix else " ") + lead
        fits_here = placed(here, op, term, tail, held + [term])
        if text == prefix or (len(fits_here) == 1 and len(fits_here[0][0]) <= WIDTH):
            *done, (text, held) = fits_here
        else:  # an operand breaks only when a row of its own is too short for it
            rows.append((text, held))
            *done, (text, held) = placed(pad + lead, op, term, tail, [term])
        rows += done
    return rows + [(text, held)]


def _train_rows(indent: str, stmt: ast.Train) -> list[tuple[str, list]]:
    """A train clause too long for one line breaks inside the first call whose break makes
    every row fit (its items are not in parentheses, so only a call's arguments can break)."""
    texts = list(map(_setting, stmt.items))
    first = None
    for i, item in enumerate(stmt.items):
        if not isinstance(item.value, ast.Call) or not item.value.args:
            continue
        prefix = indent + "train " + "".join(t + ", " for t in texts[:i]) + (f"{item.name}=" if item.name else "")
        suffix = "".join(", " + t for t in texts[i + 1:])
        rows = _fit(prefix, item.value, suffix, [stmt])
        if all(len(text) <= WIDTH for text, _ in rows):
            return rows
        first = first or rows
    return first or [(indent + _LINES[ast.Train](stmt), [stmt])]


def _rows(indent: str, stmt, comments: list[ast.Comment]) -> list[tuple[str, list]]:
    head, value = _split(stmt)
    if isinstance(stmt, ast.StateDecl) and indent:  # no input or target in a block to line up with
        head = "state " + head[len("state  "):]
    flat = [(indent + head + ("" if value is None else expr(value)), [stmt])]
    if isinstance(stmt, ast.Train) and len(flat[0][0]) > WIDTH:
        return _train_rows(indent, stmt)
    if isinstance(value, ast.Pipeline):
        forced = _breaks([value.source, *value.stages], comments)
        return flat if len(flat[0][0]) <= WIDTH and not forced else _broken(indent, head, value, forced)
    if value is None or len(flat[0][0]) <= WIDTH:
        return flat
    if isinstance(value, ast.BinOp):  # a line breaks only inside parentheses: it gets a pair
        return _operator_rows(indent + head + "(", value, ")", [stmt])
    return _fit(indent + head, value, "", [stmt])


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


def _with_comments(rows, trailing: dict[int, ast.Comment]) -> list[tuple[str, str | None]]:
    """Each row's text and its trailing comment (lined up later, see `_aligned`)."""
    return [(text, trailing[i].text.rstrip() if i in trailing else None)
            for i, (text, _) in enumerate(rows)]


class _Printer:
    """Walks the items in order, handing out the comments (sorted by position) as it passes them."""

    def __init__(self, comments: tuple[ast.Comment, ...]):
        self.comments = sorted(comments, key=lambda c: (c.span.line, c.span.col))
        self.next = 0
        self.lines: list[tuple[str, str | None]] = []  # code, and its trailing comment
        self.prev: int | None = None  # source line the last printed element ended on

    def take(self, stop: float) -> list[ast.Comment]:
        """The comments not yet printed on lines before `stop`."""
        start = self.next
        while self.next < len(self.comments) and self.comments[self.next].span.line < stop:
            self.next += 1
        return self.comments[start:self.next]

    def blank(self, line: int, force: bool = False) -> None:
        if self.prev is not None and (force or line > self.prev + 1):
            self.lines.append(("", None))

    def comment(self, c: ast.Comment, indent: str, force: bool = False) -> None:
        self.blank(c.span.line, force)
        self.lines.append((indent + c.text.rstrip(), None))
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
        self.lines.extend((indent + c.text.rstrip(), None) for c in moved)
        self.lines.extend(_with_comments(rows, trailing))

    def compound(self, stmt: ast.Block | ast.For, indent: str, limit: float) -> None:
        line, end = stmt.span.line, stmt.span.end_line
        first = stmt.body[0].span.line if stmt.body else end
        head = self.take(line + 1) if line < first and line < end else []
        self.lines.extend(_with_comments([(indent + _header(stmt), [])], dict(enumerate(head))))
        self.body(stmt.body, indent + INDENT, end)
        tail = self.take(min(end + 1, limit))
        self.lines.extend(_with_comments([(indent + "}", [])], dict(enumerate(tail))))
