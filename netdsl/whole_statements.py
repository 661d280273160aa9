"""The quick parser's reading of runs of the commonest statement, a name given a name or a
call and a chain of layers, `v2 = block(v1, 16) -> dense(16) -> relu`, each alone on its
line: one regular-expression match per statement and no tokens.

A statement's form is its chain's text (`-> dense(16) -> relu`) and its source's shape,
the source's text with each letter written `a` and each digit `9` (`pair(v1, 16)`:
`aaaa(a9, 99)`), which says where the source's name and arguments lie. The statements of
one form are made from its layout, worked out once; once the form has been met often
(COMPILE_AFTER), by a function compiled for it with its columns, names and numbers written
in, which slices the source's name and arguments out of its text. A big spec repeats a few
forms on thousands of lines.

Builds exactly the nodes netdsl.fast_parse's token-by-token reading (and so Lark's path)
builds, spans included; tests/test_quick_parse.py holds them together.
"""
from __future__ import annotations

import dataclasses
import re
import string
from functools import partial

from netdsl import ast
from netdsl.errors import Span

__all__ = ["read_run", "statement_at"]

# possessive: blanks, and a name's characters, are never given back to the rest of the
# pattern (nothing after them could start with one), which a tenth of the matching took
_BLANKS = r"[\t \f]*+"
_NAME = r"[A-Za-z_][A-Za-z_0-9]*+"
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
# a source's shape: a name's characters become `a` (so a name starts with one), digits `9`
_SHAPE = str.maketrans(dict.fromkeys(string.ascii_letters + "_", "a")
                       | dict.fromkeys(string.digits, "9"))
# the same for an ASCII source's bytes, five times quicker
_ASCII_SHAPE = bytes.maketrans((string.ascii_letters + "_" + string.digits).encode(),
                               b"a" * 53 + b"9" * 10)
# a form's first statements in a file are made from its layout by `_assign`, those after
# this many by a function compiled for it (`_compiled`): about a quarter quicker a
# statement (2.5 microseconds here), it takes about 0.8 ms to compile
COMPILE_AFTER = 256


# a statement of the commonest form at an offset of a text, or None
statement_at = _STATEMENT.match


def read_run(found, text: str, line: int, line_start: int, file: str, keywords,
             makers: dict, pending: dict):
    """The statements of the commonest form from the one `found` (`statement_at`) on
    `line`, which starts at offset `line_start`: their Assign nodes, and the position,
    line and line start after the newlines that end the last of them (where `found`
    starts if its target is a keyword). `keywords` are the words a statement's target
    may not be (the token path reads those); `makers` keeps the maker compiled for a form
    of statement for the rest of the file, `pending` the forms met fewer than
    COMPILE_AFTER times (see `_maker`)."""
    match = _STATEMENT.match
    nodes = []
    pos = found.start()
    while found is not None:
        target, source, stages, newline = found.groups()
        if target in keywords:
            break
        regs = found.regs  # the groups' places, all at once
        first = line_start - 1  # a column is an offset less this
        form = ((source.encode().translate(_ASCII_SHAPE) if source.isascii()
                 else source.translate(_SHAPE), stages) if "(" in source else stages)
        make = makers.get(form)
        if make is None:
            make = _maker(form, makers, pending)
        nodes.append(make(file, line, target, regs[1][0] - first, regs[1][1] - line_start,
                          source, regs[2][0] - first, regs[3][0] - first))
        pos = regs[0][1]
        if newline == "\n":  # the usual end: no blank line, no indent, no CR
            line += 1
            line_start = pos
        else:
            line += newline.count("\n")
            line_start = pos - len(newline) + newline.rindex("\n") + 1
        found = match(text, pos)
    return nodes, pos, line, line_start


def _maker(form, makers: dict, pending: dict):
    """The maker of a statement of `form` (see read_run) not yet compiled: `_assign` with
    the form's layout, or after the form's first COMPILE_AFTER statements, a function
    compiled for it, kept in `makers`. `pending` keeps (statements, maker) of each form
    until then."""
    statements, make = pending.get(form) or (0, None)
    if make is None:
        shape, stages = form if isinstance(form, tuple) else (None, form)
        shape = shape.decode() if isinstance(shape, bytes) else shape
        make = partial(_assign, (None if shape is None else _call_layout(shape),
                                 tuple((found.start(1), _call_layout(found[1]))
                                       for found in _STAGE.finditer(stages))))
    if statements < COMPILE_AFTER:
        pending[form] = statements + 1, make
        return make
    pending.pop(form, None)
    make = makers[form] = _compiled(*make.args[0])
    return make


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


# what every maker is given: the statement's file and line, its target's name and columns,
# the source's text and column, and the column where the chain's text starts
_MAKER_PARAMETERS = "file, line, target, target_col, target_end, source, source_col, chain_col"


def _assign(layout, file, line, target, target_col, target_end, source, source_col,
            chain_col):
    """A statement's Assign from its form's layout, without a compiled maker."""
    source_layout, stages_layout = layout
    if source_layout is None:
        end = source_col + len(source) - 1
        value = ast.Name(source, Span(file, line, source_col, line, end))
    else:
        value = _call(source_layout, file, line, source_col, source)
        end = value.span.end_col
    if stages_layout:
        stages = []
        for offset, call in stages_layout:
            call = _call(call, file, line, chain_col + offset, None)
            stages.append(ast.Stage(call, None, call.span))
        end = call.span.end_col
        value = ast.Pipeline(value, tuple(stages), Span(file, line, source_col, line, end))
    return ast.Assign((target,), value, Span(file, line, target_col, line, end),
                      (Span(file, line, target_col, line, target_end),))


def _call(layout, file, line, col, source):
    """A Call from its layout, its text starting at column `col`; its name and arguments
    sliced from `source` if given (a layout from a shape), else the layout's own."""
    name, name_last, last, args = layout
    if source is not None:
        name = source[:name_last + 1]
    name_span = Span(file, line, col, line, col + name_last)
    if args is None:
        return ast.Call(name, (), name_span, name_span)
    made = []
    for first, arg_last, value, number_text in args:
        where = Span(file, line, col + first, line, col + arg_last)
        if source is not None:
            text = source[first:arg_last + 1]
            value, number_text = (text, None) if number_text is None else (int(text), text)
        made.append(ast.Arg(None, ast.Name(value, where) if number_text is None
                            else ast.Number(value, where, number_text), where))
    return ast.Call(name, tuple(made), Span(file, line, col, line, col + last), name_span)


def _compiled(source_layout, stages_layout):
    """`_assign` for one layout, as a function with the layout's columns, names and
    numbers written in: a form repeated on many lines is made without a loop or a
    look-up per layer, and each node without a call of its class (see `_making`)."""
    if source_layout is None:
        end = "value_end"
        lines = ["value_end = source_col + len(source) - 1",
                 *_making("where", Span, "file", "line", "source_col", "line", "value_end"),
                 *_making("value", ast.Name, "source", "where")]
    else:
        lines, last = _call_lines("value", source_layout, "source_col", sliced=True)
        end = f"source_col + {last}"
    stages = []
    for k, (offset, call) in enumerate(stages_layout):
        made, last = _call_lines(f"c{k}", call, f"chain_col + {offset}", sliced=False)
        lines += made
        lines += _making(f"t{k}", ast.Stage, f"c{k}", "None", f"c{k}_span")
        stages.append(f"t{k}, ")
        end = f"chain_col + {offset + last}"
    lines.append(f"end = {end}")
    if stages:
        lines += _making("whole", Span, "file", "line", "source_col", "line", "end")
        lines += _making("chain", ast.Pipeline, "value", f"({''.join(stages)})", "whole")
        lines.append("value = chain")
    lines += _making("whole", Span, "file", "line", "target_col", "line", "end")
    lines += _making("named", Span, "file", "line", "target_col", "line", "target_end")
    lines += _making("statement", ast.Assign, "(target,)", "value", "whole", "(named,)")
    lines.append("return statement")
    source = f"def make({_MAKER_PARAMETERS}):\n" + "".join(f"    {x}\n" for x in lines)
    namespace = dict(_SETTERS, new=object.__new__)
    exec(source, namespace)  # noqa: S102 - made above from names, digits and numbers alone
    return namespace.pop("make")  # not left in its own globals: no cycle for the collector


def _call_lines(var: str, layout, col: str, sliced: bool):
    """Lines that make `var` the Call of `layout` at column `col` (an expression), with
    `{var}_span` its span; its name and arguments sliced from `source` if `sliced`.
    Returns them and the offset of the call's last character."""
    name, name_last, last, args = layout
    name = f"source[:{name_last + 1}]" if sliced else repr(name)
    lines = _making(f"{var}_name", Span, "file", "line", col, "line", f"{col} + {name_last}")
    if args is None:
        lines.append(f"{var}_span = {var}_name")
        return lines + _making(var, ast.Call, name, "()", f"{var}_name", f"{var}_name"), name_last
    lines += _making(f"{var}_span", Span, "file", "line", col, "line", f"{col} + {last}")
    made = []
    for j, (first, arg_last, value, text) in enumerate(args):
        where, node, arg = f"{var}_w{j}", f"{var}_v{j}", f"{var}_a{j}"
        lines += _making(where, Span, "file", "line", f"{col} + {first}", "line",
                         f"{col} + {arg_last}")
        is_name = text is None
        if sliced:
            sliced_text = f"{var}_text{j}"
            lines.append(f"{sliced_text} = source[{first}:{arg_last + 1}]")
            value, text = (sliced_text, None) if is_name else (f"int({sliced_text})", sliced_text)
        else:
            value, text = repr(value), repr(text)
        lines += (_making(node, ast.Name, value, where) if is_name
                  else _making(node, ast.Number, value, where, text))
        lines += _making(arg, ast.Arg, "None", node, where)
        made.append(f"{arg}, ")
    return lines + _making(var, ast.Call, name, f"({''.join(made)})", f"{var}_span",
                           f"{var}_name"), last


def _making(var: str, cls, *values: str) -> list[str]:
    """Lines of Python that make `var` a `cls` of these fields (Python expressions, in the
    fields' order) as its `__init__` does (netdsl.frozen.quick_init: each slot set by its
    own setter), without the call of the class and its `__init__` (about a sixth less time)."""
    names = [field.name for field in dataclasses.fields(cls)]
    if len(values) != len(names):
        raise TypeError(f"{cls.__name__} has the fields {names}, not {len(values)}")
    return [f"{var} = new({cls.__name__})",
            *(f"{cls.__name__}_{name}({var}, {value})" for name, value in zip(names, values))]


# the classes the makers make, and the setters of their slots (`_making`)
_SETTERS = {f"{cls.__name__}{key}": value
            for cls in (Span, ast.Assign, ast.Pipeline, ast.Stage, ast.Call, ast.Arg, ast.Name,
                        ast.Number)
            for key, value in [("", cls)] + [(f"_{field.name}", cls.__dict__[field.name].__set__)
                                             for field in dataclasses.fields(cls)]}
