"""Pass 1, parse: .net text -> `ast.Module`, every node with its source span."""
from __future__ import annotations

import re
from functools import lru_cache

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from netdsl import ast
from netdsl.errors import Span, SpecError

__all__ = ["parse", "parser"]

_OPENING = {"LPAR", "LSQB"}
_CLOSING = {"RPAR", "RSQB"}


class _BracketNewlines:
    """Post-lexer: newlines inside ( ) and [ ] do not end a statement."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        for token in stream:
            if token.type in _OPENING:
                depth += 1
            elif token.type in _CLOSING:
                depth = max(0, depth - 1)
            elif token.type == "_NL" and depth:
                continue
            yield token


@lru_cache(maxsize=None)
def parser() -> Lark:
    """The LALR parser, built once from the packaged grammar."""
    return Lark.open_from_package(
        "netdsl.grammar",
        "netdsl.lark",
        parser="lalr",
        lexer="contextual",
        postlex=_BracketNewlines(),
        propagate_positions=True,
        maybe_placeholders=False,
        cache=True,  # the grammar analysis is stored in the temp folder after the first run
    )


def parse(text: str, file: str = "<spec>") -> ast.Module:
    """Parse the text of a .net file.

    Raises
    ------
    SpecError
        At the first syntax error, located, with what was expected.
    """
    try:
        tree = parser().parse(text if text.endswith("\n") else text + "\n")
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, file) from None
    try:
        module = _ToAst(file).transform(tree)
    except VisitError as exc:  # a SpecError raised while building a node
        raise exc.orig_exc from None
    return ast.Module(file, module, tuple(_comments(text, file)))


_COMMENT_OR_STRING = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|#[^\n]*")


def _comments(text: str, file: str):
    for number, line in enumerate(text.splitlines(), 1):
        for match in _COMMENT_OR_STRING.finditer(line):
            if match.group().startswith("#"):
                col = match.start() + 1
                yield ast.Comment(match.group(), Span(file, number, col, number, match.end()))


def _span(file: str, meta) -> Span:
    return Span(file, meta.line, meta.column, meta.end_line, max(meta.column, meta.end_column - 1))


@v_args(meta=True, inline=True)
class _ToAst(Transformer):
    """Builds frozen AST nodes; methods are named after the grammar's rules and aliases."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _s(self, meta) -> Span:
        return _span(self.file, meta)

    def _tok(self, token: Token) -> Span:
        return Span(self.file, token.line, token.column, token.end_line, token.end_column - 1)

    # ---- file
    @v_args(inline=False)
    def start(self, items):
        return tuple(items)

    def import_stmt(self, meta, target):
        is_path = target.type == "STRING"
        return ast.Import(target[1:-1] if is_path else str(target), is_path, self._s(meta))

    def network_decl(self, meta, name):
        return ast.NetworkDecl(str(name), self._s(meta))

    # ---- declarations
    def input_decl(self, meta, name, type_):
        return ast.IODecl("input", str(name), type_, self._s(meta))

    def target_decl(self, meta, name, type_):
        return ast.IODecl("target", str(name), type_, self._s(meta))

    def type(self, meta, *parts):
        seq = bool(parts) and isinstance(parts[0], Token) and parts[0].type == "SEQ"
        base = parts[-1]
        if isinstance(base, tuple) and base and base[0] == "class":
            return ast.TypeExpr(base[2], base[1], seq, self._s(meta))
        return ast.TypeExpr(base, None, seq, self._s(meta))

    def shape(self, meta, *dims):
        return tuple(dims)

    def class_type(self, meta, classes, dims=()):
        return ("class", classes, dims)

    def state_decl(self, meta, *items):
        return ast.StateDecl(items, self._s(meta))

    def state_item(self, meta, name, type_, init=None):
        return ast.StateItem(str(name), type_, init, self._s(meta))

    # ---- blocks
    def block_def(self, meta, name, *rest):
        params = tuple(r for r in rest if isinstance(r, ast.Param))
        body = tuple(r for r in rest if not isinstance(r, ast.Param))
        return ast.Block(str(name), params, body, self._s(meta), self.file)

    def param(self, meta, name, default=None):
        return ast.Param(str(name), default, self._s(meta))

    def in_decl(self, meta, *names):
        return ast.In(tuple(map(str, names)), self._s(meta))

    def out_stmt(self, meta, *values):
        return ast.Out(values, self._s(meta))

    # ---- statements
    def assign(self, meta, *parts):
        return ast.Assign(tuple(map(str, parts[:-1])), parts[-1], self._s(meta))

    def loss_stmt(self, meta, *parts):
        name = str(parts[0]) if len(parts) == 2 else None
        return ast.Loss(name, parts[-1], self._s(meta))

    def train_stmt(self, meta, *items):
        return ast.Train(items, self._s(meta))

    def train_call(self, meta, call):
        return ast.TrainSetting(None, call, self._s(meta))

    def train_setting(self, meta, name, value):
        return ast.TrainSetting(str(name), value, self._s(meta))

    def for_stmt(self, meta, var, start, stop, *body):
        return ast.For(str(var), start, stop, body, self._s(meta))

    def share_stmt(self, meta, name, call):
        return ast.Share(str(name), call, self._s(meta))

    # ---- expressions
    def pipeline(self, meta, source, *stages):
        return ast.Pipeline(source, stages, self._s(meta))

    def stage(self, meta, call, repeat_kw=None, count=None):
        return ast.Stage(call, count, self._s(meta))

    def bare_callee(self, meta, name):
        span = self._tok(name)
        return ast.Call(str(name), (), span, span)

    def call(self, meta, name, *args):
        args = tuple(a if isinstance(a, ast.Arg) else ast.Arg(None, a, a.span) for a in args)
        for before, after in zip(args, args[1:]):
            if before.name is not None and after.name is None:
                raise SpecError(
                    "a positional argument follows a keyword argument",
                    after.span,
                    f"put positional arguments first, e.g. {name}(64, 3, stride=2)",
                )
        return ast.Call(str(name), args, self._s(meta), self._tok(name))

    def kwarg(self, meta, name, value):
        return ast.Arg(str(name), value, self._s(meta))

    def binop(self, meta, left, op, right):
        return ast.BinOp(str(op), left, right, self._s(meta))

    def neg(self, meta, operand):
        return ast.Neg(operand, self._s(meta))

    def number(self, meta, token):
        text = str(token)
        value = int(text) if text.isdigit() else float(text)
        return ast.Number(value, self._tok(token))

    def string(self, meta, token):
        return ast.String(str(token)[1:-1], self._tok(token))

    def name(self, meta, token):
        return ast.Name(str(token), self._tok(token))

    def list(self, meta, *items):
        return ast.ListExpr(items, self._s(meta))

    def delayed(self, meta, name, index, delay):
        span = self._s(meta)
        if str(index) != "t":
            raise SpecError(
                f"a delayed value is indexed by time t, not '{index}'",
                self._tok(index),
                f"write {name}[t-{delay}]",
            )
        if int(delay) < 1:
            raise SpecError("a delay must be at least one step", self._tok(delay), f"write {name}[t-1]")
        return ast.Delayed(str(name), int(delay), span)


# ---- syntax errors in words


_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "INT": "a whole number", "STRING": "a quoted string",
    "_NL": "end of line", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'",
    "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','", "COLON": "':'", "EQUAL": "'='",
    "_ARROW": "'->'", "ADD_OP": "'+' or '-'", "MUL_OP": "'*' or '/'", "MINUS": "'-'",
    "REPEAT": "'x' (repeat)", "SEQ": "'seq'", "$END": "end of file",
}


def _word(terminal: str) -> str:
    if terminal in _WORDS:
        return _WORDS[terminal]
    pattern = parser().get_terminal(terminal).pattern if _has_terminal(terminal) else None
    if pattern is not None and pattern.type == "str":
        return f"'{pattern.value}'"
    return terminal.lower()


def _has_terminal(name: str) -> bool:
    try:
        parser().get_terminal(name)
        return True
    except KeyError:
        return False


def _found(exc: UnexpectedInput, text: str) -> str:
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            return "end of file"
        if token.type == "_NL":
            return "end of line"
        return f"'{token}'"
    if isinstance(exc, UnexpectedCharacters):
        return f"'{text[exc.pos_in_stream]}'" if exc.pos_in_stream < len(text) else "end of file"
    return "end of file"


def _syntax_error(exc: UnexpectedInput, text: str, file: str) -> SpecError:
    from netdsl.syntax_errors import classify

    line, col = max(exc.line, 1), max(exc.column, 1)
    if isinstance(exc, UnexpectedToken) and exc.token.type == "_NL" and exc.token.value:
        # a newline token starts where the previous line ends
        line, col = exc.token.line, exc.token.column
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        lines = text.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
    width = len(str(exc.token)) if isinstance(exc, UnexpectedToken) and exc.token.type not in ("_NL", "$END") else 1
    span = Span(file, line, col, line, col + max(width, 1) - 1)
    expected = sorted({_word(t) for t in getattr(exc, "expected", None) or getattr(exc, "allowed", ()) or ()})
    message, hint = classify(exc, text)
    if message is None:
        message = f"unexpected {_found(exc, text)}"
        if expected and len(expected) <= 8:
            message += f"; expected {', '.join(expected[:-1]) + ' or ' if len(expected) > 1 else ''}{expected[-1]}"
    return SpecError(message, span, hint)
