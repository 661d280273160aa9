"""The quick path of parsing: a recursive-descent reading of grammar/netdsl.lark that
builds exactly the AST the Lark path of netdsl.parse builds, spans included, about five
times faster on a big spec (Lark's lexer alone takes about as long as this whole parser).

It reads the well-formed specs people write and nothing else: at anything unusual (a
syntax error, a keyword at the start of a statement it cannot start, a number out of
range, a statement nested deep) it gives up with `NotHandled`, and parse.py reads the text
again with Lark, whose errors netdsl.syntax_errors describes. So the language and its
messages have one definition, the grammar; tests/test_quick_parse.py compares the two
paths on every spec of the project and on fuzzed text.
"""
from __future__ import annotations

import math
import re

from netdsl import ast
from netdsl.errors import Span
from netdsl.switches import flag
from netdsl.whole_statements import read_run, statement_at

__all__ = ["NotHandled", "parse_quickly"]


class NotHandled(Exception):
    """Text this parser leaves to Lark: a mistake, or a construct too rare to duplicate."""


# one alternative per terminal of the grammar, in the order Lark's lexer tries them; the
# blanks after a token are matched with it (a third of the matches otherwise)
_TOKEN = re.compile(r"""
(?:(?P<skip>[\t \f]+|\\[\t \f]*\r?\n|\#[^\n]*)
|(?P<ARROW>(?:\r?\n[\t ]*)*->[\t ]*(?:\r?\n[\t ]*)*)
|(?P<NL>(?:\r?\n[\t ]*)+)
|(?P<NUMBER>\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\.\d+(?:[eE][-+]?\d+)?|\d+)
|(?P<NAME>[A-Za-z_][A-Za-z_0-9]*)
|(?P<STRING>'[^'\n]*'|"[^"\n]*")
|(?P<punct>\.\.?|[()\[\]{},:=+\-*/])
)[\t \f]*""", re.X)
# a number glued to a letter, a digit or a lone dot (`3x`, `1e`, `1.2.3`) is lexed by
# rules this parser does not repeat
_GLUED = re.compile(r"[A-Za-z_0-9]|\.(?!\.)")

# the words that start statements (and the type words): at the start of a statement one
# that does not belong there is left to Lark, whose contextual lexer decides what it is
_KEYWORDS = frozenset(("import", "network", "input", "target", "state", "block", "in", "out",
                       "loss", "train", "for", "share", "seq", "class"))
_TOP_LEVEL = frozenset(("import", "network", "input", "target", "state", "block", "loss",
                        "train", "for", "share"))
_IN_BODY = frozenset(("in", "out", "state", "loss", "train", "for", "share"))

# the tokens after a name or number that make it part of something larger: a call, a
# delay, a dimension, arithmetic
_OPERAND_GOES_ON = frozenset(("(", "[", ".", "+", "-", "*", "/"))
# as netdsl.parse: numbers beyond this are refused; sums longer than this are balanced
_LARGEST = 2**63
_LONG_SUM = 16
# a statement of at most this many tokens cannot nest past parse's limit of 100 levels
# (each token opens at most two levels of Lark's tree)
_SHALLOW = 49
# runs of the commonest statement are read by netdsl.whole_statements, one match each, the
# statements of a form met often made by a function compiled for it (valid_100k's parse:
# 1.2 -> 0.7 CPU s); NETDSL_WHOLE_STATEMENTS=0 reads them one at a time as before (`_chain`).
# None until the first spec is read: the switch is read then, not at import, so that
# netc, which imports this module before it can report errors, shows a bad value as one
# line
RUNS_OF_STATEMENTS: bool | None = None


def _runs_of_statements() -> bool:
    global RUNS_OF_STATEMENTS
    if RUNS_OF_STATEMENTS is None:
        RUNS_OF_STATEMENTS = flag("NETDSL_WHOLE_STATEMENTS", True)
    return RUNS_OF_STATEMENTS


def parse_quickly(text: str, file: str) -> tuple:
    """The items of a module, as parse.py's Lark path builds them, or NotHandled."""
    kinds, values, lines, cols = _tokens(text, file)
    try:
        return _Parser(file, kinds, values, lines, cols).module()
    except (IndexError, RecursionError):  # ran off the end, or nested very deep
        raise NotHandled from None


def _tokens(text: str, file: str = "<spec>"):
    """Kinds, texts, lines and columns of the tokens, newlines inside ( ) and [ ] dropped
    as lark_parser's post-lexer does; punctuation is its own kind. A statement of the
    commonest form is read whole: a run of them as one token of kind STMTS whose value
    is their syntax nodes, followed by a newline (or without RUNS_OF_STATEMENTS, each as a
    token of kind STMT whose value is its syntax node, `_CHAIN`)."""
    kinds, values, lines, cols = [], [], [], []
    line, line_start, depth, pos = 1, 0, 0, 0
    end = len(text)
    match, chain = _TOKEN.match, _CHAIN.match
    runs, makers, pending = _runs_of_statements(), {}, {}
    while pos < end:
        found = match(text, pos)
        if found is None:  # a character no terminal starts with
            raise NotHandled
        kind, start = found.lastgroup, pos
        value = found[kind]
        pos = found.end()
        if kind == "punct":
            kind = value
            if value in "([":
                depth += 1
            elif value in ")]":
                depth = max(0, depth - 1)
        elif kind == "NUMBER" and _GLUED.match(text, start + len(value)):
            raise NotHandled
        if kind != "skip" and not (kind == "NL" and depth):
            kinds.append(kind)
            values.append(value)
            lines.append(line)
            cols.append(start - line_start + 1)
        if "\n" in value:
            line += value.count("\n")
            line_start = start + value.rindex("\n") + 1
        if kind == "NL" and not depth and runs:  # statements start here
            statement = statement_at(text, pos)
            if statement is None:
                continue
            run, pos, line, line_start = read_run(statement, text, line, line_start, file,
                                                  _KEYWORDS, makers, pending)
            if run:  # as a token of kind STMTS, and the newline that ends the last one
                kinds += ("STMTS", "NL")
                values += (run, "\n")
                lines += (line, line)
                cols += (1, 1)
        elif kind == "NL" and not depth:  # a statement starts here
            statement = chain(text, pos)
            if statement is not None and statement["target"] not in _KEYWORDS:
                kinds.append("STMT")
                values.append(_chain(statement, file, line, line_start))
                lines.append(line)
                cols.append(pos - line_start + 1)
                pos = statement.end()
    kinds.append("EOF")
    values.append("")
    lines.append(line)
    cols.append(pos - line_start + 1)
    return kinds, values, lines, cols


# the commonest statement, read without tokens: a name given a name, or a call, and a
# chain of layers, each call's arguments names or whole numbers,
# `v2 = block(v1, 16) -> dense(16) -> relu`, alone on its line (no comment after it; the
# next line does not go on with `->`)
_BLANKS = r"[\t \f]*"
_NAME = r"[A-Za-z_][A-Za-z_0-9]*"
_ARGUMENT = rf"(?:{_NAME}|\d{{1,18}})"
_CALL = (rf"(?P<name>{_NAME}){_BLANKS}(?:\((?P<args>{_BLANKS}(?:{_ARGUMENT}{_BLANKS}"
         rf"(?:,{_BLANKS}{_ARGUMENT}{_BLANKS})*)?)(?P<close>\)){_BLANKS})?")
_CHAIN = re.compile(rf"(?P<target>{_NAME}){_BLANKS}={_BLANKS}(?P<source>{_CALL})"
                    rf"(?P<stages>(?:->{_BLANKS}{_CALL.replace('?P<', '?P<_')}){{0,16}})"
                    r"(?=\r?\n(?![\t \r\n]*->))")
_CHAIN_CALL = re.compile(_CALL)


def _chain(statement, file: str, line: int, line_start: int) -> ast.Assign:
    """The syntax node of a `_CHAIN` match, as _Parser.assign builds it."""
    first = line_start - 1  # a column is an offset less this
    start, stop = statement.span("target")
    target = Span(file, line, start - first, line, stop - line_start)
    value = _chain_call(_CHAIN_CALL.match(statement["source"]), statement.start("source"),
                        False, file, line, first)
    stages = []
    stages_text, offset = statement["stages"], statement.start("stages")
    for piece in stages_text.split("->")[1:]:  # no name or number holds an arrow
        offset += 2
        call = _chain_call(_CHAIN_CALL.match(piece, len(piece) - len(piece.lstrip(" \t\f"))),
                           offset, True, file, line, first)
        stages.append(ast.Stage(call, None, call.span))
        offset += len(piece)
    if stages:
        value = ast.Pipeline(value, tuple(stages), Span(file, line, value.span.col, line,
                                                        stages[-1].span.end_col))
    return ast.Assign((statement["target"],), value,
                      Span(file, line, target.col, line, value.span.end_col), (target,))


def _chain_call(found, offset: int, stage: bool, file: str, line: int, first: int):
    """The call `found` matched `offset` characters into its line's text (`first` is the
    offset of column 0): a Call, or for the source of a pipeline without brackets, a Name."""
    name_start, name_end = found.span("name")
    name = Span(file, line, offset + name_start - first, line, offset + name_end - first - 1)
    if found["close"] is None:
        return ast.Call(found["name"], (), name, name) if stage else ast.Name(found["name"], name)
    args = []
    at = offset + found.start("args") - first  # the column of the text between the brackets
    for piece in found["args"].split(","):
        text = piece.strip(" \t\f")
        if text:
            col = at + len(piece) - len(piece.lstrip(" \t\f"))
            where = Span(file, line, col, line, col + len(text) - 1)
            argument = (ast.Number(int(text), where, text) if text[0].isdigit()
                        else ast.Name(text, where))
            args.append(ast.Arg(None, argument, where))
        at += len(piece) + 1
    return ast.Call(found["name"], tuple(args),
                    Span(file, line, name.col, line, offset + found.end("close") - first - 1), name)


class _Parser:
    """One method per rule; each expression method returns (node, first line, first
    column, last line, end column): where the text of the node lies, its brackets
    included, which is what Lark's positions give the rule around it."""

    def __init__(self, file, kinds, values, lines, cols):
        self.file, self.kinds, self.values, self.lines, self.cols = file, kinds, values, lines, cols
        self.i = 0
        self.statement_start = 0

    # ---- tokens

    def expect(self, kind: str) -> int:
        i = self.i
        if self.kinds[i] != kind:
            raise NotHandled
        self.i = i + 1
        return i

    def name(self) -> int:
        """A NAME token, or NotHandled. Lark's contextual lexer takes a keyword for a name
        everywhere but at the start of a statement, where `item` tells them apart."""
        i = self.i
        if self.kinds[i] != "NAME":
            raise NotHandled
        self.i = i + 1
        return i

    def word(self, word: str) -> int:
        i = self.i
        if self.kinds[i] != "NAME" or self.values[i] != word:
            raise NotHandled
        self.i = i + 1
        return i

    def tok(self, i: int) -> Span:
        """The span of token i (a token never spans lines here)."""
        col = self.cols[i]
        return Span(self.file, self.lines[i], col, self.lines[i], col + len(self.values[i]) - 1)

    def end_of(self, i: int) -> tuple[int, int]:
        """(line, end column) of token i, the column after its last character."""
        return self.lines[i], self.cols[i] + len(self.values[i])

    def span(self, line, col, end_line, end_col) -> Span:
        """A rule's span from Lark-style positions (end_col is exclusive)."""
        return Span(self.file, line, col, end_line, end_col - 1 if end_col > col else col)

    # ---- the file

    def module(self) -> tuple:
        kinds = self.kinds
        items = []
        self.skip_newlines()
        while kinds[self.i] != "EOF":
            self.statement_start = self.i
            if kinds[self.i] == "STMTS":  # read whole by the lexer
                items += self.values[self.i]
                self.i += 1
            else:
                items.append(self.item(_TOP_LEVEL))
            if kinds[self.i] != "EOF":
                self.expect("NL")
                self.skip_newlines()
        return tuple(items)

    def skip_newlines(self) -> None:
        kinds, i = self.kinds, self.i
        while kinds[i] == "NL":
            i += 1
        self.i = i

    def item(self, keywords):
        """One statement; `keywords` are those that start a statement at this place."""
        i = self.i
        if self.kinds[i] != "NAME":
            if self.kinds[i] == "STMT":  # read whole by the lexer
                self.i = i + 1
                return self.values[i]
            raise NotHandled
        word = self.values[i]
        if word not in _KEYWORDS:
            node = self.assign()
        elif word not in keywords:
            raise NotHandled
        else:
            node = getattr(self, "stmt_" + word)()
        if self.i - self.statement_start > _SHALLOW and _lark_depth(node, 0) > 100:
            raise NotHandled  # parse.py refuses it, located, in its own words
        return node

    def body(self) -> tuple:
        """`{ ... }` of a block or a loop: returns (items, index of the closing brace)."""
        kinds = self.kinds
        self.expect("{")
        self.skip_newlines()
        items = []
        while kinds[self.i] != "}":
            if kinds[self.i] == "STMTS":  # read whole by the lexer
                items += self.values[self.i]
                self.i += 1
            else:
                items.append(self.item(_IN_BODY))
            if kinds[self.i] == "}":
                break
            self.expect("NL")
            self.skip_newlines()
        return tuple(items), self.expect("}")

    def stmt_import(self):
        first = self.i
        self.i += 1
        i = self.i
        if self.kinds[i] == "STRING":
            self.i += 1
            target, is_path = self.values[i][1:-1], True
        else:
            target, is_path = self.values[self.name()], False
        return ast.Import(target, is_path, self.span(self.lines[first], self.cols[first], *self.end_of(i)))

    def stmt_network(self):
        first = self.i
        self.i += 1
        name = self.name()
        return ast.NetworkDecl(self.values[name], self.span(self.lines[first], self.cols[first],
                                                            *self.end_of(name)))

    def stmt_input(self):
        return self.io_decl("input")

    def stmt_target(self):
        return self.io_decl("target")

    def io_decl(self, kind):
        first = self.i
        self.i += 1
        name = self.name()
        self.expect(":")
        type_, end = self.type()
        return ast.IODecl(kind, self.values[name], type_,
                          self.span(self.lines[first], self.cols[first], *end))

    def type(self):
        """(TypeExpr, its end): `seq`? then a shape or `class(n)` and a shape."""
        i = self.i
        start = self.lines[i], self.cols[i]
        seq = self.kinds[i] == "NAME" and self.values[i] == "seq"
        if seq:
            self.i += 1
        if self.kinds[self.i] == "[":
            dims, end = self.shape()
            classes = None
        else:
            self.word("class")
            self.expect("(")
            classes = self.expr()[0]
            end = self.end_of(self.expect(")"))
            dims = ()
            if self.kinds[self.i] == "[":
                dims, end = self.shape()
        return ast.TypeExpr(dims, classes, seq, self.span(*start, *end)), end

    def shape(self):
        self.expect("[")
        dims = []
        if self.kinds[self.i] != "]":
            dims.append(self.expr()[0])
            while self.kinds[self.i] == ",":
                self.i += 1
                dims.append(self.expr()[0])
        return tuple(dims), self.end_of(self.expect("]"))

    def stmt_state(self):
        first = self.i
        self.i += 1
        item, end = self.state_item()
        items = [item]
        while self.kinds[self.i] == ",":
            self.i += 1
            item, end = self.state_item()
            items.append(item)
        return ast.StateDecl(tuple(items), self.span(self.lines[first], self.cols[first], *end))

    def state_item(self):
        """(StateItem, its end)"""
        name = self.name()
        self.expect(":")
        type_, end = self.type()
        init = None
        if self.kinds[self.i] == "=":
            self.i += 1
            init, _, _, *end = self.expr()
        return ast.StateItem(self.values[name], type_, init,
                             self.span(self.lines[name], self.cols[name], *end)), end

    def stmt_block(self):
        first = self.i
        self.i += 1
        name = self.name()
        self.expect("(")
        params = []
        if self.kinds[self.i] != ")":
            params.append(self.param())
            while self.kinds[self.i] == ",":
                self.i += 1
                params.append(self.param())
        self.expect(")")
        body, close = self.body()
        return ast.Block(self.values[name], tuple(params), body,
                         self.span(self.lines[first], self.cols[first], *self.end_of(close)),
                         self.file)

    def param(self):
        name = self.name()
        default, end = None, self.end_of(name)
        if self.kinds[self.i] == "=":
            self.i += 1
            default, _, _, *end = self.expr()
        return ast.Param(self.values[name], default, self.span(self.lines[name], self.cols[name], *end))

    def stmt_in(self):
        first = self.i
        self.i += 1
        names = [self.name()]
        while self.kinds[self.i] == ",":
            self.i += 1
            names.append(self.name())
        return ast.In(tuple(self.values[n] for n in names),
                      self.span(self.lines[first], self.cols[first], *self.end_of(names[-1])))

    def stmt_out(self):
        first = self.i
        self.i += 1
        value, _, _, *end = self.expr()
        values = [value]
        while self.kinds[self.i] == ",":
            self.i += 1
            value, _, _, *end = self.expr()
            values.append(value)
        return ast.Out(tuple(values), self.span(self.lines[first], self.cols[first], *end))

    def assign(self):
        i = self.i
        if self.kinds[i + 1] == "=":  # one name, the common case
            self.i = i + 2
            value, _, _, end_line, end_col = self.expr()
            line = self.lines[i]
            return ast.Assign((self.values[i],), value, self.span(line, self.cols[i], end_line, end_col),
                              (self.tok(i),))
        names = [self.name()]
        while self.kinds[self.i] == ",":
            self.i += 1
            names.append(self.name())
        self.expect("=")
        value, _, _, end_line, end_col = self.expr()
        first = names[0]
        return ast.Assign(tuple(self.values[n] for n in names), value,
                          self.span(self.lines[first], self.cols[first], end_line, end_col),
                          tuple(self.tok(n) for n in names))

    def stmt_loss(self):
        first = self.i
        self.i += 1
        name = None
        if self.kinds[self.i] == "NAME" and self.kinds[self.i + 1] == ":":
            name = self.values[self.name()]
            self.i += 1
        value, _, _, end_line, end_col = self.expr()
        return ast.Loss(name, value, self.span(self.lines[first], self.cols[first], end_line, end_col))

    def stmt_train(self):
        first = self.i
        self.i += 1
        item, end = self.train_item()
        items = [item]
        while self.kinds[self.i] == ",":
            self.i += 1
            item, end = self.train_item()
            items.append(item)
        return ast.Train(tuple(items), self.span(self.lines[first], self.cols[first], *end))

    def train_item(self):
        """(TrainSetting, its end): `name=value` or an optimiser's call"""
        i = self.i
        if self.kinds[i] == "NAME" and self.kinds[i + 1] == "=":
            name = self.name()
            self.i += 1
            value, _, _, *end = self.expr()
            return ast.TrainSetting(self.values[name], value,
                                    self.span(self.lines[name], self.cols[name], *end)), end
        if self.kinds[i + 1] != "(":
            raise NotHandled
        call, _, _, *end = self.call()
        return ast.TrainSetting(None, call, call.span), end

    def stmt_for(self):
        first = self.i
        self.i += 1
        var = self.name()
        self.word("in")
        start = self.expr()[0]
        self.expect("..")
        stop = self.expr()[0]
        body, close = self.body()
        return ast.For(self.values[var], start, stop, body,
                       self.span(self.lines[first], self.cols[first], *self.end_of(close)))

    def stmt_share(self):
        first = self.i
        self.i += 1
        name = self.name()
        self.expect("=")
        call, _, _, end_line, end_col = self.callee()
        return ast.Share(self.values[name], call,
                         self.span(self.lines[first], self.cols[first], end_line, end_col))

    # ---- expressions: (node, first line, first column, last line, end column)

    def expr(self):
        i = self.i
        kinds = self.kinds
        kind = kinds[i]
        if (kind == "NAME" or kind == "NUMBER") and kinds[i + 1] not in _OPERAND_GOES_ON:
            source = self.plain(i)  # most operands: one name or number, without the descent
        else:
            source = self.sum()
        if kinds[self.i] != "ARROW":
            return source
        stages = []
        while kinds[self.i] == "ARROW":
            self.i += 1
            stage, end_line, end_col = self.stage()
            stages.append(stage)
        line, col = source[1], source[2]
        return (ast.Pipeline(source[0], tuple(stages), self.span(line, col, end_line, end_col)),
                line, col, end_line, end_col)

    def stage(self):
        call, line, col, end_line, end_col = self.callee()
        repeat = None
        i = self.i
        if self.kinds[i] == "NAME" and self.values[i] == "x":
            self.i += 1
            repeat, _, _, end_line, end_col = self.atom()
        return ast.Stage(call, repeat, self.span(line, col, end_line, end_col)), end_line, end_col

    def callee(self):
        i = self.i
        if self.kinds[i + 1] == "(":
            return self.call()
        name = self.name()
        span = self.tok(name)
        return ast.Call(self.values[name], (), span, span), span.line, span.col, span.line, span.end_col + 1

    def call(self):
        name = self.i
        kinds = self.kinds
        if kinds[name] != "NAME" or kinds[name + 1] != "(":
            raise NotHandled
        self.i = name + 2
        args = []
        keyword = False
        if kinds[self.i] != ")":
            while True:
                i = self.i
                if kinds[i] == "NAME" and kinds[i + 1] == "=":
                    arg_name = self.name()
                    self.i += 1
                    value, _, _, *end = self.expr()
                    args.append(ast.Arg(self.values[arg_name], value,
                                        self.span(self.lines[arg_name], self.cols[arg_name], *end)))
                    keyword = True
                else:
                    if keyword:  # the Lark path says what is wrong with it
                        raise NotHandled
                    value = self.expr()[0]
                    args.append(ast.Arg(None, value, value.span))
                if kinds[self.i] != ",":
                    break
                self.i += 1
        close = self.i
        if kinds[close] != ")":
            raise NotHandled
        self.i = close + 1
        line, col, text = self.lines[name], self.cols[name], self.values[name]
        end_line, end_col = self.lines[close], self.cols[close] + 1
        return (ast.Call(text, tuple(args), self.span(line, col, end_line, end_col),
                         Span(self.file, line, col, line, col + len(text) - 1)),
                line, col, end_line, end_col)

    def sum(self):
        first = self.product()
        kinds = self.kinds
        if kinds[self.i] not in ("+", "-"):
            return first
        terms, ops = [first], []
        while kinds[self.i] in ("+", "-"):
            ops.append(self.values[self.i])
            self.i += 1
            terms.append(self.product())
        if len(terms) > _LONG_SUM:
            return self.long_sum(terms, ops)
        if ops[0] == "+" and isinstance(first[0], ast.BinOp) and first[0].op == "+" \
                and (first[0].span.line, first[0].span.col) != first[1:3]:
            raise NotHandled  # (a + b) + c: parse.py's balancing sees through the brackets
        return self.chain(terms, ops)

    def chain(self, terms, ops):
        """a op b op c ..., grouped to the left as the grammar does."""
        node, line, col, end_line, end_col = terms[0]
        for op, (right, _, _, end_line, end_col) in zip(ops, terms[1:]):
            node = ast.BinOp(op, node, right, self.span(line, col, end_line, end_col))
        return node, line, col, end_line, end_col

    def long_sum(self, terms, ops):
        """A sum of many terms, grouped as parse.py's _balance_sums groups it."""
        if "-" in ops or any(not _bare(term) for term in terms):
            raise NotHandled  # runs of + between - signs, bracketed terms: left to Lark
        half = len(terms) // 2
        _, line, col, _, _ = terms[0]
        end_line, end_col = terms[-1][3:]
        return (ast.BinOp("+", self.balanced(terms[:half]), self.balanced(terms[half:]),
                          self.span(line, col, end_line, end_col)), line, col, end_line, end_col)

    def balanced(self, terms):
        if len(terms) == 1:
            return terms[0][0]
        half = len(terms) // 2
        first, last = terms[0], terms[-1]
        return ast.BinOp("+", self.balanced(terms[:half]), self.balanced(terms[half:]),
                         self.span(first[1], first[2], last[3], last[4]), True)

    def product(self):
        first = self.unary()
        kinds = self.kinds
        if kinds[self.i] not in ("*", "/"):
            return first
        terms, ops = [first], []
        while kinds[self.i] in ("*", "/"):
            ops.append(self.values[self.i])
            self.i += 1
            terms.append(self.unary())
        return self.chain(terms, ops)

    def unary(self):
        i = self.i
        if self.kinds[i] != "-":
            return self.atom()
        self.i += 1
        operand, _, _, end_line, end_col = self.unary()
        line, col = self.lines[i], self.cols[i]
        return ast.Neg(operand, self.span(line, col, end_line, end_col)), line, col, end_line, end_col

    def plain(self, i):
        """A name or number at token i that nothing after it extends, as `atom` reads it."""
        self.i = i + 1
        text = self.values[i]
        line, col = self.lines[i], self.cols[i]
        end_col = col + len(text)
        span = Span(self.file, line, col, line, end_col - 1)
        if self.kinds[i] == "NAME":
            return ast.Name(text, span), line, col, line, end_col
        return ast.Number(_number(text), span, text), line, col, line, end_col

    def atom(self):
        i = self.i
        kind = self.kinds[i]
        if kind == "NAME":
            following = self.kinds[i + 1]
            if following == "(":
                return self.indexed(self.call())
            if following == "[":
                return self.delayed()
            if following == ".":
                return self.dimension()
            self.name()
            span = self.tok(i)
            return ast.Name(self.values[i], span), span.line, span.col, span.line, span.end_col + 1
        if kind == "NUMBER":
            self.i += 1
            text = self.values[i]
            span = self.tok(i)
            return ast.Number(_number(text), span, text), span.line, span.col, span.line, span.end_col + 1
        if kind == "STRING":
            self.i += 1
            span = self.tok(i)
            return (ast.String(self.values[i][1:-1], span), span.line, span.col, span.line,
                    span.end_col + 1)
        if kind == "[":
            self.i += 1
            items = []
            if self.kinds[self.i] != "]":
                items.append(self.expr()[0])
                while self.kinds[self.i] == ",":
                    self.i += 1
                    items.append(self.expr()[0])
            end = self.end_of(self.expect("]"))
            line, col = self.lines[i], self.cols[i]
            return ast.ListExpr(tuple(items), self.span(line, col, *end)), line, col, *end
        if kind == "(":
            self.i += 1
            node = self.expr()[0]
            end = self.end_of(self.expect(")"))
            return (node, self.lines[i], self.cols[i], *end)  # the brackets widen what it covers
        raise NotHandled

    def indexed(self, call):
        """A call, or an item of the list it gives: `shape(x)[0]`."""
        if self.kinds[self.i] != "[":
            return call
        self.i += 1
        index = self.expr()[0]
        close = self.end_of(self.expect("]"))
        node, line, col = call[:3]
        return ast.Index(node, index, self.span(line, col, *close)), line, col, *close

    def dimension(self):
        tensor = self.name()
        self.expect(".")
        name = self.name()
        line, col = self.lines[tensor], self.cols[tensor]
        end = self.end_of(name)
        return (ast.Dimension(ast.Name(self.values[tensor], self.tok(tensor)), self.values[name],
                              self.span(line, col, *end), self.tok(name)), line, col, *end)

    def delayed(self):
        name = self.name()
        self.expect("[")
        index = self.expect("NAME")
        self.expect("-")
        delay = self.expect("NUMBER")
        close = self.end_of(self.expect("]"))
        text = self.values[delay]
        if self.values[index] != "t" or not text.isdigit() or len(text) > 6 or int(text) < 1:
            raise NotHandled  # parse.py's messages for these
        line, col = self.lines[name], self.cols[name]
        return (ast.Delayed(self.values[name], int(text), self.span(line, col, *close)),
                line, col, *close)


def _number(text: str):
    """The value of a NUMBER token, or NotHandled for one parse.py refuses."""
    try:
        value = int(text) if text.isdigit() else float(text)
    except ValueError:  # more digits than Python converts
        value = math.inf
    if abs(value) > _LARGEST:
        raise NotHandled
    return value


def _bare(term) -> bool:
    """A term whose text is the node itself on one line: no brackets around it."""
    node, line, col, end_line, end_col = term
    span = node.span
    return (line == end_line == span.line == span.end_line and col == span.col
            and end_col - 1 == span.end_col)


def _lark_depth(node, depth: int) -> int:
    """At least how deep parse.py's Lark tree of `node` nests (a level of the AST is at
    most two of Lark's), counted up to a little past 100."""
    deepest = depth + 2  # the node's tree and its tokens
    if depth > 101:
        return deepest
    for child in _CHILDREN.get(type(node), _no_children)(node):
        if child is not None:
            deepest = max(deepest, _lark_depth(child, depth + 2))
    return deepest


def _no_children(node):
    return ()


_CHILDREN = {
    ast.BinOp: lambda n: (n.left, n.right), ast.Neg: lambda n: (n.operand,),
    ast.ListExpr: lambda n: n.items, ast.Call: lambda n: [a.value for a in n.args],
    ast.Pipeline: lambda n: (n.source, *n.stages), ast.Stage: lambda n: (n.call, n.repeat),
    ast.TypeExpr: lambda n: (*n.dims, n.classes), ast.IODecl: lambda n: (n.type,),
    ast.StateDecl: lambda n: n.items, ast.StateItem: lambda n: (n.type, n.init),
    ast.Assign: lambda n: (n.value,), ast.Loss: lambda n: (n.value,),
    ast.Train: lambda n: [i.value for i in n.items], ast.Share: lambda n: (n.call,),
    ast.For: lambda n: (n.start, n.stop, *n.body), ast.Out: lambda n: n.values,
    ast.Block: lambda n: (*[p.default for p in n.params], *n.body),
    ast.Dimension: lambda n: (n.tensor,), ast.Index: lambda n: (n.value, n.index),
}
