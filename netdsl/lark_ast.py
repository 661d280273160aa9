"""Pass 1's Lark path: a spec the quick parser (netdsl.fast_parse) leaves alone, a mistake
or a rare construct, read by Lark's parser of the grammar into the same AST, and every
syntax error's message."""
from __future__ import annotations

import math
import re

from lark import Token, Transformer, Tree, v_args
from lark.tree import Meta
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from netdsl import ast
from netdsl.errors import Span, SpecError, closest
from netdsl.lark_parser import parser
from netdsl.parse import source_lines
from netdsl.syntax_errors import CATALOGUE, classify

__all__ = ["parse_with_lark"]


def parse_with_lark(text: str, file: str = "<spec>") -> tuple:
    """The items of a module, read by Lark's parser of the grammar: the definition of the
    language and the source of every syntax error's message."""
    try:
        tree = parser().parse(text if text.endswith("\n") else text + "\n")
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, file) from None
    _balance_sums(tree)
    for item in tree.children:
        if _depth(item) > _DEEPEST:  # building (and later expanding) it would exhaust the stack
            raise SpecError(f"this statement nests more than {_DEEPEST} levels deep",
                            _span(file, item.meta), "split it into named steps: a = ..., b = a -> ...")
    try:
        return _ToAst(file).transform(tree)
    except VisitError as exc:  # a SpecError raised while building a node
        raise exc.orig_exc from None


# numbers beyond this are typing mistakes; bounding them keeps later arithmetic exact and finite
_LARGEST = 2**63
# real specs nest about ten levels; a hundred leaves the passes' recursion ample room
_DEEPEST = 100


# a sum of more terms than this is grouped as a balanced tree: a + b + c + d as
# (a + b) + (c + d), the same sum, nested log2(terms) deep instead of one level per term
_LONG_SUM = 16


def _balance_sums(tree) -> None:
    """Regroup every long chain a + b + ... (the grammar nests it one level per term) in
    place, so a sum of 10,000 terms is as shallow as one of 14 levels."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if not isinstance(node, Tree):
            continue
        terms = _sum_terms(node)
        if len(terms) > _LONG_SUM:
            node.children = _balanced(terms[:len(terms) // 2], node.children[1],
                                      terms[len(terms) // 2:]).children
            stack.extend(terms)
        else:
            stack.extend(node.children)


def _sum_terms(node) -> list:
    """The terms of a chain of `+` whose last sum is `node` (one term when it is no sum)."""
    terms = []
    while isinstance(node, Tree) and node.data == "binop" and node.children[1] == "+":
        terms.append(node.children[2])
        node = node.children[0]
    terms.append(node)
    return terms[::-1]


def _balanced(left: list, plus: Token, right: list) -> Tree:
    """The sum of `left` and `right`, each half summed the same way."""
    halves = [t if len(t) == 1 else _balanced(t[:len(t) // 2], plus, t[len(t) // 2:])
              for t in (left, right)]
    halves = [h[0] if isinstance(h, list) else h for h in halves]
    meta = Meta()
    first, last = _edges(halves[0])[0], _edges(halves[1])[1]
    meta.line, meta.column, meta.start_pos = first
    meta.end_line, meta.end_column, meta.end_pos = last
    meta.empty, meta.regrouped = False, True
    return Tree("binop", [halves[0], plus, halves[1]], meta)


def _edges(item) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Where a subtree or token starts and ends: (line, column, offset) each."""
    m = item.meta if isinstance(item, Tree) else item
    return (m.line, m.column, m.start_pos), (m.end_line, m.end_column, m.end_pos)


def _depth(tree) -> int:
    deepest, stack = 0, [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in getattr(node, "children", ()))
    return deepest

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
        names = parts[:-1]
        return ast.Assign(tuple(map(str, names)), parts[-1], self._s(meta),
                          tuple(self._tok(name) for name in names))

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
        return ast.BinOp(str(op), left, right, self._s(meta), getattr(meta, "regrouped", False))

    def neg(self, meta, operand):
        return ast.Neg(operand, self._s(meta))

    def number(self, meta, token):
        text = str(token)
        try:
            value = int(text) if text.isdigit() else float(text)
        except ValueError:  # more digits than Python converts
            value = math.inf
        if abs(value) > _LARGEST:
            raise SpecError(f"the number {text[:20]}{'...' if len(text) > 20 else ''} is too large",
                            self._tok(token), "numbers in a spec are sizes and rates, below 2**63")
        return ast.Number(value, self._tok(token), text)

    def string(self, meta, token):
        return ast.String(str(token)[1:-1], self._tok(token))

    def name(self, meta, token):
        return ast.Name(str(token), self._tok(token))

    def dimension(self, meta, tensor, name):
        return ast.Dimension(ast.Name(str(tensor), self._tok(tensor)), str(name), self._s(meta),
                             self._tok(name))

    def index(self, meta, value, index):
        return ast.Index(value, index, self._s(meta))

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
        if len(delay) > 6:  # far beyond any sequence; also keeps int() within its digit limit
            raise SpecError("a delay of a million steps or more is too long", self._tok(delay))
        if int(delay) < 1:
            raise SpecError("a delay must be at least one step", self._tok(delay), f"write {name}[t-1]")
        return ast.Delayed(str(name), int(delay), span)


# ---- syntax errors in words


_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "INT": "a whole number", "STRING": "a quoted string",
    "_NL": "end of line", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'",
    "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','", "COLON": "':'", "EQUAL": "'='",
    "_ARROW": "'->'", "ADD_OP": "an operator", "MUL_OP": "an operator", "MINUS": "'-'",
    "REPEAT": "'x' (repeat)", "SEQ": "'seq'", "$END": "end of file",
}
# the pieces most often missing are named first
_FIRST = ("RPAR", "RSQB", "RBRACE", "COMMA", "COLON", "EQUAL")
_CLOSERS = {"(": ")", "[": "]", "{": "}"}
# token-like pieces, enough to follow brackets and lines: strings, comments, words, symbols
_LEXEME = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|#.*|->|[()\[\]{}]|[\w.]+|\S")
_STATEMENT = re.compile(
    r"\s*((loss|train|input|target|state|block|for|share|import|network|out|in)\b"
    r"|[A-Za-z_]\w*\s*(,|=(?!=)))")
_TOP_LEVEL = {"input": "an input", "target": "a target", "import": "an import",
              "network": "the network name", "block": "a block"}
_QUOTES = ("'''", "'\"'")
# the words that start a statement; the grammar's other words (x, seq, class) come later in one
KEYWORDS = ("import", "network", "input", "target", "state", "block", "in", "out", "loss", "train",
            "for", "share")
_CHARACTERS_HINT = ("a spec is written with names, numbers, quoted strings, "
                    "-> ( ) [ ] { } , : = + - * / and # comments")


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


def _expected(exc: UnexpectedInput) -> list[str]:
    """What the parser could have taken instead, in words, the likely missing piece first."""
    names = getattr(exc, "accepts", None) or getattr(exc, "expected", None) or ()
    ordered = sorted(names, key=lambda t: (_FIRST.index(t) if t in _FIRST else len(_FIRST), t))
    words: list[str] = []
    for name in ordered:
        if _word(name) not in words:
            words.append(_word(name))
    return words


def _either(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _found(exc: UnexpectedInput, text: str) -> str:
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            return "end of file"
        if token.type == "_NL":
            return "end of line"
        if token.type == "_ARROW":  # its text may hold the newlines around it
            return "'->'"
        return str(token) if token.type == "STRING" else f"'{token}'"
    if isinstance(exc, UnexpectedCharacters) and exc.pos_in_stream < len(text):
        char = text[exc.pos_in_stream]
        return f"'{char}'" if char.isprintable() else f"the character {char!r}"
    return "end of file"


def _lexemes(lines: list[str], line: int, col: int) -> list[tuple[str, int, int]]:
    """(text, line, col) of each token-like piece before line:col, comments left out."""
    pieces = []
    for number, row in enumerate(lines[:line], 1):
        for match in _LEXEME.finditer(row):
            if number == line and match.start() + 1 >= col:
                break
            if not match.group().startswith("#"):
                pieces.append((match.group(), number, match.start() + 1))
    return pieces


def _syntax_error(exc: UnexpectedInput, text: str, file: str) -> SpecError:
    lines = source_lines(text)
    token = exc.token if isinstance(exc, UnexpectedToken) else None
    kind = token.type if token is not None else None
    line, col = max(exc.line, 1), max(exc.column, 1)
    if kind == "_NL" and token.value:
        # a newline token starts where the previous line ends
        line, col = token.line, token.column
    if isinstance(exc, UnexpectedEOF) or kind == "$END":
        kind, line, col = "$END", len(lines), len(lines[-1]) + 1
    width = 2 if kind == "_ARROW" else len(str(token)) if kind not in (None, "_NL", "$END") else 1
    span = Span(file, line, col, line, col + max(width, 1) - 1)
    found = _found(exc, text)
    lexemes = _lexemes(lines, line, col)
    located = (_unclosed(lexemes, lines, file, line, col, kind, found, _expected(exc))
               or _misspelt_keyword(exc, lexemes, lines, file, line)
               or _misplaced(lexemes, lines, file, line, col, kind)
               or _dangling_arrow(lexemes, lines, file, line)
               or _bad_number(lines, file, line, col, kind))
    if located is not None:
        return located
    if isinstance(exc, UnexpectedCharacters):
        if found in _QUOTES:
            return SpecError(f"a string is not closed: expected a closing {found} on the same line",
                             span, "strings are written on one line: pad='same'")
        return SpecError(f"unexpected character {found}", span, _CHARACTERS_HINT)
    message, hint = classify(exc, found)
    if hint is None and kind in ("NAME", "REPEAT"):
        hint = _keyword_meant(exc, str(token))
    if message is None:
        message = f"unexpected {found}"
        expected = _expected(exc)
        if expected:  # a long list is cut: its head holds the likely missing piece
            listed = _either(expected) if len(expected) <= 6 else ", ".join(expected[:4]) + ", ..."
            message += f"; expected {listed}"
    return SpecError(message, span, hint)


def _keyword_meant(exc: UnexpectedInput, word: str) -> str | None:
    """'did you mean' a word the parser would have taken here: `clas(10)`, `X 2`."""
    words = []
    for name in getattr(exc, "accepts", None) or getattr(exc, "expected", None) or ():
        pattern = parser().get_terminal(name).pattern if _has_terminal(name) else None
        if pattern is not None and pattern.type == "str" and pattern.value.isalpha():
            words.append(pattern.value)
    meant = closest(word, words)
    return f"did you mean '{meant}'?" if meant and meant != word else None


def _unclosed(lexemes, lines, file, line, col, kind, found, expected) -> SpecError | None:
    """A '(' or '[' left open at the end or before a new statement, or a block's '{'."""
    stack = []
    for piece, at_line, at_col in lexemes:
        if piece in _CLOSERS:
            stack.append((piece, at_line, at_col))
        elif stack and piece == _CLOSERS[stack[-1][0]]:
            stack.pop()
    if not stack:
        return None
    opener, open_line, open_col = stack[-1]
    closer = _CLOSERS[opener]
    if opener == "{":
        # a top-level line inside a block means a missing '}' when the file has one too few
        pieces = _LEXEME.findall("\n".join(lines))
        balance = pieces.count("{") - pieces.count("}")
        if kind not in ("$END", "BLOCK", "IMPORT", "NETWORK", "INPUT", "TARGET") or balance <= 0:
            return None
        return SpecError(f"a block's '{{' is not closed: expected '}}' but found {found}",
                         Span(file, open_line, open_col, open_line, open_col),
                         "end the block with '}' on a line of its own")
    starts_line = line > len(lines) or not lines[line - 1][:col - 1].strip()
    if kind != "$END" and (open_line >= line or not starts_line):
        return None
    piece, last_line, last_col = lexemes[-1]
    end = last_col + len(piece)
    where = "" if kind == "$END" else f" on line {line}"
    wanted = _either([f"'{closer}'"] + ["','"] * ("','" in expected))
    return SpecError(f"'{opener}' is not closed: expected {wanted} but found {found}{where}",
                     Span(file, last_line, end, last_line, end),
                     f"add '{closer}' here to close the '{opener}' at line {open_line}, "
                     f"column {open_col}")


def _misspelt_keyword(exc, lexemes, lines, file, line) -> SpecError | None:
    """A statement that starts with a word and goes on as no assignment does: `blok b(c) {`.

    The parser only notices at the second word; the mistake is the first.
    """
    expected = set(getattr(exc, "accepts", None) or getattr(exc, "expected", None) or ())
    on_line = [piece for piece in lexemes if piece[1] == line]
    if not expected <= {"COMMA", "EQUAL"} or len(on_line) != 1:
        return None
    word, _, col = on_line[0]
    if not re.fullmatch(r"[A-Za-z_]\w*", word) or word in KEYWORDS:
        return None
    span = Span(file, line, col, line, col + len(word) - 1)
    meant = closest(word, KEYWORDS)
    if meant is None:
        return SpecError(f"a statement cannot start with '{word}' followed by "
                         f"{_found(exc, chr(10).join(lines))}", span,
                         f"name a value with `{word} = ...`, or start with a keyword: "
                         + ", ".join(KEYWORDS))
    return SpecError(f"unknown keyword '{word}'", span, f"did you mean '{meant}'?")


def _misplaced(lexemes, lines, file, line, col, kind) -> SpecError | None:
    """A '}' with no block open, `in` or `out` outside a block, a top-level line inside one."""
    depth = sum((p == "{") - (p == "}") for p, at_line, _ in lexemes if at_line < line)
    if kind == "RBRACE" and sum((p == "{") - (p == "}") for p, _, _ in lexemes) <= 0:
        return SpecError("unexpected '}': there is no block to close", Span(file, line, col, line, col),
                         "remove it, or check the braces of the block above")
    row = lines[line - 1] if line <= len(lines) else ""
    match = re.match(r"\s*([A-Za-z_]\w*)\s*([=,]?)", row)
    if match is None or match.group(2):
        return None
    word, col = match.group(1), match.start(1) + 1
    span = Span(file, line, col, line, col + len(word) - 1)
    if word in ("in", "out") and depth <= 0:
        hint = ("a network's results are its losses: loss cross_entropy(logits, y)" if word == "out"
                else "a network declares its inputs: input x : [3, 32, 32]")
        return SpecError(f"`{word}` belongs inside a block, not at the top level", span, hint)
    if word in _TOP_LEVEL and depth > 0:
        return SpecError(f"{_TOP_LEVEL[word]} belongs at the top level, not inside a block", span,
                         "a block receives tensors through `in` and parameters in its ( )")
    return None


def _dangling_arrow(lexemes, lines, file, line) -> SpecError | None:
    """A line ending in '->' followed by a new statement instead of a layer."""
    earlier = [piece for piece in lexemes if piece[1] < line]
    if (not earlier or earlier[-1][0] != "->" or line > len(lines)
            or not (_STATEMENT.match(lines[line - 1]) or lines[line - 1].lstrip().startswith("}"))):
        return None
    _, at_line, at_col = earlier[-1]
    message, hint, _ = CATALOGUE["dangling arrow"]
    what = "the end of the block" if lines[line - 1].lstrip().startswith("}") else "a new statement"
    return SpecError(message.replace("{found}", f"{what} on line {line}"),
                     Span(file, at_line, at_col, at_line, at_col + 1), hint)


def _bad_number(lines, file, line, col, kind) -> SpecError | None:
    """A token that starts inside a word beginning with a digit: `1.2.3`, `1e`, `3x`."""
    if kind not in ("NUMBER", "INT", "NAME", "REPEAT") or line > len(lines):
        return None
    for match in re.finditer(r"[\w.]+", lines[line - 1]):
        if match.start() < col - 1 < match.end() and re.match(r"\.?\d", match.group()):
            start, end = match.start() + 1, match.end()
            return SpecError(f"malformed number '{match.group()}'", Span(file, line, start, line, end),
                             "a number is written like 64, 0.5, .5 or 1e-3; multiply with 3 * x")
    return None
