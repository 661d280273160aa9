"""The quick parser's reading of runs of the commonest statement, a name given a name or a
call and a chain of layers, `v2 = block(v1, 16) -> dense(16) -> relu`, each alone on its
line: one regular-expression match per statement, no tokens, and the layout of each
distinct chain of layers (`-> dense(16) -> relu`: names, arguments, columns) worked out
once per file, so a statement's nodes are made from it with its line and column alone.

Builds exactly the nodes netdsl.fast_parse's token-by-token reading (and so Lark's path)
builds, spans included; tests/test_quick_parse.py holds them together.
"""
from __future__ import annotations

import dataclasses
import re
from functools import partial

from netdsl import ast
from netdsl.errors import Span

__all__ = ["read_run"]

_BLANKS = r"[\t \f]*"
_NAME = r"[A-Za-z_][A-Za-z_0-9]*"
_ARGUMENT = rf"(?:{_NAME}|\d{{1,18}})"
# a layer: a name, with its arguments in brackets or without them
_CALL = (rf"{_NAME}(?:{_BLANKS}\({_BLANKS}(?:{_ARGUMENT}{_BLANKS}"
         rf"(?:,{_BLANKS}{_ARGUMENT}{_BLANKS})*)?\))?")
# target = source -> stage -> ..., then the line's end and the newlines (and blanks) after
# it, unless the next line goes on with `->`; at most 16 stages, as the token path reads
_STATEMENT = re.compile(
    rf"({_NAME}){_BLANKS}={_BLANKS}({_CALL}){_BLANKS}((?:->{_BLANKS}{_CALL}{_BLANKS}){{0,16}})"
    r"(?=\r?\n(?![\t \r\n]*->))((?:\r?\n[\t ]*)+[\t \f]*)")
_STAGE = re.compile(rf"->{_BLANKS}({_CALL})")
_CALL_PARTS = re.compile(rf"({_NAME}){_BLANKS}(?:\(([^)]*)\))?")
# a file's distinct chains beyond this many are made from their layouts without a
# function of their own (compiling one takes about as long as 20 statements)
MOST_COMPILED = 256


def read_run(text: str, pos: int, line: int, line_start: int, file: str, keywords,
             chains: dict):
    """The statements of the commonest form from `pos` on, a statement's start on `line`,
    which starts at offset `line_start`: their Assign nodes, and the position, line and
    line start after the newlines that end the last of them. `keywords` are the words a
    statement's target may not be (the token path reads those); `chains` keeps the
    maker of each chain's stages for the rest of the file."""
    match = _STATEMENT.match
    nodes = []
    found = match(text, pos)
    while found is not None:
        target, source, stages, newline = found.groups()
        if target in keywords:
            break
        regs = found.regs  # the groups' places, all at once
        first = line_start - 1  # a column is an offset less this
        target_col = regs[1][0] - first
        target_end = regs[1][1] - line_start
        col = regs[2][0] - first
        if "(" in source:
            value = _call(_call_layout(source), file, line, col)
        else:
            value = ast.Name(source, Span(file, line, col, line, col + len(source) - 1))
        if stages:
            make = chains.get(stages)
            if make is None:
                layout = _stages_layout(stages)
                make = chains[stages] = (_compiled(layout) if len(chains) < MOST_COMPILED
                                         else partial(_assign, layout))
            nodes.append(make(file, line, target, target_col, target_end, value, col,
                              regs[3][0] - first))
        else:
            end = col + len(source) - 1
            nodes.append(ast.Assign((target,), value, Span(file, line, target_col, line, end),
                                    (Span(file, line, target_col, line, target_end),)))
        pos = regs[0][1]
        if newline == "\n":  # the usual end: no blank line, no indent, no CR
            line += 1
            line_start = pos
        else:
            line += newline.count("\n")
            line_start = pos - len(newline) + newline.rindex("\n") + 1
        found = match(text, pos)
    return nodes, pos, line, line_start


# what every chain's maker is given: the statement's file and line, its target's name and
# columns, the source's node and column, and the column where the chain's text starts
_MAKER_PARAMETERS = "file, line, target, target_col, target_end, value, value_col, col"


def _assign(layout, file, line, target, target_col, target_end, value, value_col, col):
    """The statement's Assign, its chain made from `layout` (see `_stages_layout`)."""
    stages = []
    for offset, call in layout:
        call = _call(call, file, line, col + offset)
        stages.append(ast.Stage(call, None, call.span))
    end = call.span.end_col
    return ast.Assign((target,), ast.Pipeline(value, tuple(stages),
                                              Span(file, line, value_col, line, end)),
                      Span(file, line, target_col, line, end),
                      (Span(file, line, target_col, line, target_end),))


def _compiled(layout):
    """`_assign` for one layout, as a function with the layout's names, numbers and
    columns written in: a chain repeated on many lines is made without a loop or a
    look-up per layer, and each node without a call of its class (see `_making`)."""
    lines, stages = [], []
    for k, (offset, (name, name_last, last, args)) in enumerate(layout):
        lines += _making(f"n{k}", Span, "file", "line", f"col + {offset}", "line",
                         f"col + {offset + name_last}")
        if args is None:
            lines += _making(f"c{k}", ast.Call, repr(name), "()", f"n{k}", f"n{k}")
            lines += _making(f"t{k}", ast.Stage, f"c{k}", "None", f"n{k}")
            stages.append(f"t{k}")
            end = offset + name_last
            continue
        lines += _making(f"s{k}", Span, "file", "line", f"col + {offset}", "line",
                         f"col + {offset + last}")
        made = []
        for j, (first, arg_last, value, text) in enumerate(args):
            where, node, arg = f"w{k}_{j}", f"v{k}_{j}", f"a{k}_{j}"
            lines += _making(where, Span, "file", "line", f"col + {offset + first}", "line",
                             f"col + {offset + arg_last}")
            lines += (_making(node, ast.Name, repr(value), where) if text is None
                      else _making(node, ast.Number, repr(value), where, repr(text)))
            lines += _making(arg, ast.Arg, "None", node, where)
            made.append(f"{arg}, ")
        lines += _making(f"c{k}", ast.Call, repr(name), f"({''.join(made)})", f"s{k}", f"n{k}")
        lines += _making(f"t{k}", ast.Stage, f"c{k}", "None", f"s{k}")
        stages.append(f"t{k}")
        end = offset + last
    lines.append(f"end = col + {end}")
    lines += _making("p", Span, "file", "line", "value_col", "line", "end")
    lines += _making("chain", ast.Pipeline, "value", f"({', '.join(stages)},)", "p")
    lines += _making("whole", Span, "file", "line", "target_col", "line", "end")
    lines += _making("named", Span, "file", "line", "target_col", "line", "target_end")
    lines += _making("statement", ast.Assign, "(target,)", "chain", "whole", "(named,)")
    lines.append("return statement")
    source = f"def make({_MAKER_PARAMETERS}):\n" + "".join(f"    {x}\n" for x in lines)
    namespace = dict(_SETTERS, new=object.__new__)
    exec(source, namespace)  # noqa: S102 - made above from names, digits and numbers alone
    return namespace["make"]


def _making(var: str, cls, *values: str) -> list[str]:
    """Lines of Python that make `var` a `cls` of these fields (Python expressions, in the
    fields' order) as its `__init__` does (netdsl.frozen.quick_init: each slot set by its
    own setter), without the call of the class and its `__init__`, a sixth of the time."""
    names = [field.name for field in dataclasses.fields(cls)]
    assert len(values) == len(names), f"{cls.__name__} has the fields {names}"
    return [f"{var} = new({cls.__name__})",
            *(f"{cls.__name__}_{name}({var}, {value})" for name, value in zip(names, values))]


# the classes the makers make, and the setters of their slots (`_making`)
_SETTERS = {f"{cls.__name__}{key}": value
            for cls in (Span, ast.Assign, ast.Pipeline, ast.Stage, ast.Call, ast.Arg, ast.Name,
                        ast.Number)
            for key, value in [("", cls)] + [(f"_{field.name}", cls.__dict__[field.name].__set__)
                                             for field in dataclasses.fields(cls)]}


def _call(layout, file, line, col):
    """A Call from its layout, its text starting at column `col`."""
    name, name_last, last, args = layout
    name_span = Span(file, line, col, line, col + name_last)
    if args is None:
        return ast.Call(name, (), name_span, name_span)
    made = []
    for first, arg_last, value, number_text in args:
        where = Span(file, line, col + first, line, col + arg_last)
        made.append(ast.Arg(None, ast.Name(value, where) if number_text is None
                            else ast.Number(value, where, number_text), where))
    return ast.Call(name, tuple(made), Span(file, line, col, line, col + last), name_span)


def _stages_layout(stages: str) -> tuple:
    """(offset, call layout) of each `-> call` of a chain's text."""
    return tuple((found.start(1), _call_layout(found[1])) for found in _STAGE.finditer(stages))


def _call_layout(text: str) -> tuple:
    """A call's text taken apart: (name, offset of the name's last character, of the
    text's last, arguments or None without brackets); an argument is (offset of its
    first character, of its last, its value, its text if a number, else None)."""
    parts = _CALL_PARTS.match(text)
    name = parts[1]
    if parts[2] is None:
        return name, len(name) - 1, len(name) - 1, None
    args = []
    at = parts.start(2)
    for piece in parts[2].split(","):  # no name or number holds a comma
        word = piece.strip(" \t\f")
        if word:
            first = at + len(piece) - len(piece.lstrip(" \t\f"))
            number = word[0].isdigit()
            args.append((first, first + len(word) - 1, int(word) if number else word,
                         word if number else None))
        at += len(piece) + 1
    return name, len(name) - 1, len(text) - 1, tuple(args)
