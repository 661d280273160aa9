"""Visual edits as minimal rewrites of the spec text.

Each edit finds the piece of syntax a graph node came from (by its span) and
returns one `TextEdit`: a range of the text and what replaces it. Everything
outside that range, comments and layout included, stays as it was. Whether the
result still checks is decided by checking it; these functions only refuse
edits the text itself cannot express, with an `EditRefused` that says why.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import networkx as nx

from netdsl import ast
from netdsl.spelling import literal as _literal
from netdsl.errors import Span, SpecError
from netdsl.fmt import expr as expr_text
from netdsl.ops import OPS
from netdsl.ops.base import REQUIRED
from netdsl.parse import parse

__all__ = ["TextEdit", "EditRefused", "Site", "find_site", "insert_after", "delete_node",
           "argument_fields", "set_arguments", "add_skip", "layer_call", "Field", "BlockUse",
           "block_use", "only_this_call"]


class EditRefused(Exception):
    """An edit the text cannot express; the message says why and what to do instead."""


@dataclass(frozen=True)
class TextEdit:
    """Replace text[start:end] (character offsets) with `text`; `summary` says what it does."""

    start: int
    end: int
    text: str
    summary: str = ""

    def apply(self, source: str) -> str:
        return source[:self.start] + self.text + source[self.end:]


@dataclass(frozen=True)
class Site:
    """Where a node is written: a stage of a pipeline, or an expression."""

    span: Span
    expr: ast.Expr | None = None            # the call or expression (for a stage: its call)
    pipeline: ast.Pipeline | None = None    # set for a stage
    index: int = -1                         # the stage's position in the pipeline
    assign: ast.Assign | None = None        # the assignment whose whole value it is
    body: tuple = ()                        # the statements of the scope it is written in


class _Text:
    """Offsets of line:column positions in one text."""

    def __init__(self, text: str):
        self.text = text
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def offset(self, line: int, col: int) -> int:
        return self.starts[line - 1] + col - 1

    def start(self, span: Span) -> int:
        return self.offset(span.line, span.col)

    def end(self, span: Span) -> int:
        """Just past the span (spans are inclusive)."""
        return self.offset(span.end_line, span.end_col) + 1

    def slice(self, span: Span) -> str:
        return self.text[self.start(span):self.end(span)]


# ---- finding where a node is written


def _children(obj):
    if isinstance(obj, (tuple, list)):
        yield from obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, Span):
        for f in dataclasses.fields(obj):
            yield getattr(obj, f.name)


def _walk(obj, body=(), assign=None):
    """(node, enclosing statements, assignment) for every AST node under `obj`."""
    stack = [(obj, body, assign)]
    while stack:
        node, body, assign = stack.pop()
        if isinstance(node, (ast.Block, ast.For)):
            body = node.body
        if isinstance(node, ast.Assign):
            assign = node
        elif isinstance(node, (ast.Block, ast.For, ast.Loss, ast.Out, ast.Train)):
            assign = None
        yield node, body, assign
        stack.extend((child, body, assign) for child in _children(node))


def edit_span(graph: nx.DiGraph, node: str, file: str) -> Span | None:
    """The span in `file` that stands for a node: its own, or the call of the block it sits in."""
    data = graph.nodes[node]
    if data["span"] is not None and data["span"].file == file:
        return data["span"]
    for frame in reversed(data["scope"]):  # a layer of an imported block: edit the call
        if frame.span.file == file:
            return frame.span
    return None


def find_site(module: ast.Module, span: Span) -> Site | None:
    """The stage or expression of `module` written at `span`."""
    best = None
    for node, body, assign in _walk(module.items, module.items):
        if isinstance(node, ast.Pipeline):
            for index, stage in enumerate(node.stages):
                if stage.call.span == span or stage.span == span:
                    whole = assign if assign is not None and assign.value is node else None
                    return Site(stage.span, stage.call, node, index, whole, body)
        elif getattr(node, "span", None) == span and isinstance(node, (
                ast.Call, ast.BinOp, ast.Neg, ast.Name, ast.Pipeline)) and best is None:
            whole = assign if assign is not None and assign.value is node else None
            best = Site(span, node, assign=whole, body=body)
    return best


def _site(text: str, graph: nx.DiGraph, node: str) -> tuple[Site, _Text]:
    data = graph.nodes[node]
    if data["kind"] in ("input", "target"):
        raise EditRefused(f"'{node}' is a declared {data['kind']}; edit its line in the text")
    if data["kind"] == "state":
        raise EditRefused(f"'{node}' is a state's earlier value; edit the state's declaration")
    file = graph.graph["file"]
    span = edit_span(graph, node, file)
    module = parse(text, file)
    site = find_site(module, span) if span is not None else None
    if site is None:
        raise EditRefused(f"cannot find where '{node}' is written in this file")
    return site, _Text(text)


# ---- the edits


def layer_call(name: str, values: dict[str, str], order: list[str], required: set[str]) -> str:
    """A call as written in a spec: required arguments by position, the rest as name=value.

    `values` holds argument texts (empty: leave out, the default applies).
    """
    parts, keyword = [], False
    for arg in order:
        value = values.get(arg, "").strip()
        if not value:
            if arg in required:
                raise EditRefused(f"{name} needs a value for '{arg}'")
            keyword = True  # a later argument must say its name
            continue
        if arg in required and not keyword:
            parts.append(value)
        else:
            parts.append(f"{arg}={value}")
            keyword = True
    return f"{name}({', '.join(parts)})" if parts else name


def insert_after(text: str, graph: nx.DiGraph, node: str, layer: str) -> TextEdit:
    """Insert `layer` (text such as `dense(64)`) on the output of `node`."""
    if node in graph.graph["losses"].values():
        raise EditRefused("a loss ends the network; insert before it instead")
    site, where = _site(text, graph, node)
    end = where.end(site.span)
    if site.pipeline is not None or site.assign is not None:
        return TextEdit(end, end, f" -> {layer}", f"inserted {layer} after {node}")
    start = where.start(site.span)
    inner = text[start:end]
    return TextEdit(start, end, f"({inner} -> {layer})", f"inserted {layer} after {node}")


def delete_node(text: str, graph: nx.DiGraph, node: str) -> TextEdit:
    """Remove a layer; its input takes its place.

    Raises
    ------
    EditRefused
        For declarations, losses and joins (a join has no one input to take its place).
    """
    if node in graph.graph["losses"].values():
        raise EditRefused("deleting a loss leaves nothing to train; delete its line in the text")
    site, where = _site(text, graph, node)
    if site.pipeline is not None:
        return _delete_stage(where, site, node)
    expr = site.expr
    if isinstance(expr, ast.Call) and expr.args and expr.args[0].name is None:
        inputs = len(graph.nodes[node]["inputs"])
        if inputs != 1:
            raise EditRefused(f"'{node}' joins {inputs} inputs; delete one of its branches instead")
        first = where.slice(expr.args[0].span)
        return TextEdit(where.start(site.span), where.end(site.span), first, f"deleted {node}")
    if isinstance(expr, ast.BinOp):
        raise EditRefused(f"'{node}' joins two values ({expr.op}); delete one of its branches, "
                          "or edit the expression in the text")
    raise EditRefused(f"cannot delete '{node}' here; edit it in the text")


def _delete_stage(where: _Text, site: Site, node: str) -> TextEdit:
    text = where.text
    start, end = where.start(site.span), where.end(site.span)
    arrow = re.search(r"->\s*\Z", text[:start])
    if arrow is None:
        raise EditRefused(f"cannot find the '->' before '{node}'; edit it in the text")
    a = arrow.start()
    line_start = text.rfind("\n", 0, a) + 1
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    rest = text[end:line_end]
    if not text[line_start:a].strip():  # the arrow starts its line: `   -> layer ...`
        if not rest.strip() or rest.strip().startswith("#"):
            return TextEdit(line_start, min(line_end + 1, len(text)), "", f"deleted {node}")
        following = re.match(r"\s*->\s*", rest)
        if following:
            return TextEdit(a, end + following.start() + rest[following.start():].index("->"),
                            "", f"deleted {node}")
    before = len(text[line_start:a]) - len(text[line_start:a].rstrip(" \t"))
    return TextEdit(a - before, end, "", f"deleted {node}")


@dataclass(frozen=True)
class Field:
    """One argument of a layer's form: its name, the text written now, and its default."""

    name: str
    value: str
    default: str | None  # None: required


def _op_fields(name: str, module: ast.Module | None) -> tuple[list[Field], bool]:
    """The arguments a layer or block takes, and whether it is a block."""
    blocks = module.blocks if module is not None else {}
    if name in blocks:
        return [Field(p.name, "", None if p.default is None else expr_text(p.default))
                for p in blocks[name].params], True
    if name not in OPS:
        raise EditRefused(f"unknown layer '{name}'")
    return [Field(a.name, "", None if a.default is REQUIRED else _literal(a.default))
            for a in OPS[name].args], False


def layer_fields(name: str, module: ast.Module | None = None) -> list[Field]:
    """Empty form fields for a new `name` layer (or block of `module`)."""
    return _op_fields(name, module)[0]


def argument_fields(text: str, graph: nx.DiGraph, node: str) -> tuple[str, list[Field]]:
    """The layer name and the current argument texts of the call a node is written as."""
    site, where = _site(text, graph, node)
    call = site.expr
    if not isinstance(call, ast.Call):
        raise EditRefused(f"'{node}' is not written as a layer call")
    fields, _ = _op_fields(call.name, parse(text, graph.graph["file"]))
    tensors = 0 if site.pipeline is not None else _tensor_args(call, graph, node)
    written = {}
    for position, arg in enumerate(call.args[tensors:]):
        key = arg.name if arg.name is not None else (
            fields[position].name if position < len(fields) else None)
        if key is not None:
            written[key] = where.slice(arg.value.span)
    return call.name, [Field(f.name, written.get(f.name, ""), f.default) for f in fields]


def _tensor_args(call: ast.Call, graph: nx.DiGraph, node: str) -> int:
    data = graph.nodes[node]
    if data["kind"] != "op":  # a block's call: its `in` names are its tensor arguments
        return 0
    return min(len(data["inputs"]), sum(a.name is None for a in call.args))


def set_arguments(text: str, graph: nx.DiGraph, node: str, values: dict[str, str]) -> TextEdit:
    """Rewrite the arguments of the call a node is written as; tensor arguments are kept."""
    site, where = _site(text, graph, node)
    call = site.expr
    name, fields = argument_fields(text, graph, node)
    tensors = 0 if site.pipeline is not None else _tensor_args(call, graph, node)
    kept = [where.slice(a.span) for a in call.args[:tensors]]
    written = layer_call(name, {f.name: values.get(f.name, f.value) for f in fields},
                         [f.name for f in fields], {f.name for f in fields if f.default is None})
    if kept:
        inner = written[len(name) + 1:-1] if written != name else ""
        written = f"{name}({', '.join(kept + ([inner] if inner else []))})"
    start = where.start(call.span)
    return TextEdit(start, where.end(call.span), written, f"changed {node} to {written}")


def add_skip(text: str, graph: nx.DiGraph, source: str, target: str) -> TextEdit:
    """Add `source` to the output of `target`: target's value becomes `target + source`.

    Raises
    ------
    EditRefused
        When `source` has no name in `target`'s scope (an unnamed stage of a pipeline).
    """
    if source == target:
        raise EditRefused("a skip connection joins two different nodes")
    if nx.has_path(graph, target, source):
        raise EditRefused(f"'{source}' comes after '{target}'; select the earlier node first")
    site, where = _site(text, graph, target)
    name = _name_in_scope(text, graph, source, target, site)
    if site.pipeline is not None:
        start = where.start(site.pipeline.source.span)
        end = where.end(site.span)
        return TextEdit(start, end, f"({text[start:end]}) + {name}",
                        f"added a skip from {source} to {target}")
    start, end = where.start(site.span), where.end(site.span)
    return TextEdit(start, end, f"({text[start:end]} + {name})",
                    f"added a skip from {source} to {target}")


def _name_in_scope(text: str, graph: nx.DiGraph, source: str, target: str, site: Site) -> str:
    """The name `source`'s value has where `target` is written."""
    data = graph.nodes[source]
    outer = [f.name for f in graph.nodes[target]["scope"]]
    scope = data["scope"]
    name = source.rsplit("/", 1)[-1]
    own = None
    if [f.name for f in scope[:len(outer)]] != outer:
        name = None
    elif len(scope) > len(outer):  # inside a block called here: the value of that call
        own = find_site(parse(text, graph.graph["file"]), scope[len(outer)].span)
    elif data["kind"] == "op":
        own, _ = _site(text, graph, source)
    if own is not None:  # named as the whole value of an assignment, or one of its outputs
        last = own.pipeline is None or own.index == len(own.pipeline.stages) - 1
        targets = own.assign.targets if own.assign and last else ()
        multi = len(scope) == len(outer) and data["kind"] == "op" and data["op"].multi_output
        if len(targets) == 1 or (multi and len(targets) > 1):
            name = targets[data["op"].index if multi else 0]  # `a, b = split(h, 2)`: b is output 1
        else:
            name = None
    declared = set()
    for statement in site.body:
        if isinstance(statement, ast.Assign):
            declared.update(statement.targets)
        elif isinstance(statement, ast.In):
            declared.update(statement.names)
        elif isinstance(statement, ast.IODecl):
            declared.add(statement.name)
    if name is not None and name in declared:
        return name
    raise EditRefused(f"'{source}' has no name where '{target}' is written; name it first "
                      f"(split its pipeline: a = ...) and select that value")


# ---- an edit inside a block: every instance, or only one call's


@dataclass(frozen=True)
class BlockUse:
    """The block a node is written in, and how the network uses it."""

    block: str
    instances: int        # instances of the block in the network
    call: Span            # the call that made the node's instance
    call_instances: int   # instances that call makes (a repeat `x n`, a call in a shared block)
    copy: str             # the name a copy for that call alone would get: basic_2


def block_use(text: str, graph: nx.DiGraph, node: str) -> BlockUse | None:
    """How the block whose body (in this file) holds `node` is used; None when the node is
    not written in a block of this file, so an edit of it changes that place only."""
    data = graph.nodes[node]
    file, scope = graph.graph["file"], data["scope"]
    if not scope or data["span"] is None or data["span"].file != file:
        return None
    frame = scope[-1]
    if frame.span.file != file:
        return None
    instances, by_call = set(), set()
    for _, other in graph.nodes(data="scope"):
        for depth, f in enumerate(other):
            if f.block == frame.block:
                path = tuple(g.name for g in other[:depth + 1])
                instances.add(path)
                if f.span == frame.span:
                    by_call.add(path)
    module = parse(text, file)
    taken = set(module.blocks) | set(OPS)
    copy = next(f"{frame.block}_{k}" for k in range(2, 10**6) if f"{frame.block}_{k}" not in taken)
    return BlockUse(frame.block, len(instances), frame.span, len(by_call), copy)


def only_this_call(text: str, graph: nx.DiGraph, node: str, edit: TextEdit) -> TextEdit:
    """`edit` (of a node in a block's body) made to a copy of the block instead, under a
    new name that only the node's call uses: one TextEdit that renames the call and writes
    the edited copy after the block.

    Raises
    ------
    EditRefused
        When the node is not in a block of this file, or the edit reaches outside the block.
    """
    use = block_use(text, graph, node)
    if use is None:
        raise EditRefused(f"'{node}' is not written in a block of this file")
    where = _Text(text)
    block = parse(text, graph.graph["file"]).blocks[use.block]
    start, end = where.start(block.span), where.end(block.span)
    if not start <= edit.start <= edit.end <= end:
        raise EditRefused(f"the edit reaches outside block {use.block}; make it in the text")
    edited = text[start:edit.start] + edit.text + text[edit.end:end]
    header = re.match(r"block\s+" + re.escape(use.block) + r"\b", edited)
    call = where.start(use.call)
    if header is None or text[call:call + len(use.block)] != use.block:
        raise EditRefused(f"cannot find the name of block {use.block} to copy it; "
                          "copy it in the text")
    copy = "\n\nblock " + use.copy + edited[header.end():]
    rename = (call, call + len(use.block))
    if call > end:  # the call after the block: copy, then what lies between, then the call
        replaced = copy + text[end:call] + use.copy
        first, last = end, rename[1]
    else:
        replaced = use.copy + text[rename[1]:end] + copy
        first, last = call, end
    return TextEdit(first, last, replaced,
                    f"{edit.summary} in {use.copy}, a copy of {use.block} for this call only")


def check_syntax(value: str) -> str | None:
    """Why an argument text is not an expression, or None when it is one."""
    try:
        parse(f"a = f({value})\n")
    except SpecError as exc:
        return exc.message
    return None
