"""What an editor asks of a spec, as plain data: its diagnostics, what a name under the
cursor is (shape, parameters, mult-adds), where a block is defined, and what may be typed
next. netdsl.lsp serves these over the Language Server Protocol.

Lines and columns count from 0 here and ends are exclusive, as in the protocol; the
checker's spans count from 1 with inclusive ends.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources

from netdsl import ast
from netdsl.cost import cost_rows, node_params
from netdsl.dims import CLASSES, NAMES
from netdsl.driver import CheckFailed, Network, check_text
from netdsl.errors import Span, SpecError
from netdsl.highlight import block_names
from netdsl.ops import OPS
from netdsl.parse import parse
from netdsl.report import human
from netdsl.optimizers import OPTIMIZERS
from netdsl.vocabulary import (
    CONSTANTS,
    keywords,
    layer_arguments,
    layer_names,
    optimizer_names,
    optimizer_usage,
    usage,
)

__all__ = ["Place", "Diagnostic", "Completion", "SpecIndex", "file_of"]

_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_QUOTED_OR_COMMENT = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|#[^\n]*")
_STDLIB = "<stdlib>/"
MAX_LISTED = 8  # instances listed in a hover; the rest are counted


@dataclass(frozen=True)
class Place:
    """A range of a file: 0-based lines and columns, the end exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int


@dataclass(frozen=True)
class Diagnostic:
    place: Place
    message: str
    related: tuple[tuple[str, Place], ...] = ()  # (what, where): notes, an imported file's line


@dataclass(frozen=True)
class Completion:
    label: str
    kind: str  # "layer", "block", "optimizer", "argument", "keyword", "constant" or "dimension"
    detail: str
    insert: str


def file_of(name: str) -> str:
    """The file on disk a span's file name refers to (`<stdlib>/rnn.net` is in the package)."""
    if name.startswith(_STDLIB):
        return str(resources.files("netdsl.stdlib").joinpath(name[len(_STDLIB):]))
    return name


def place_of(span: Span) -> Place:
    return Place(file_of(span.file), span.line - 1, span.col - 1, span.end_line - 1, span.end_col)


class SpecIndex:
    """One version of a spec's text, checked, with the answers an editor asks of it.

    `previous` is the index of an earlier version: while the text does not parse (as it
    mostly does not, mid-keystroke), blocks are looked up in the last version that did.
    """

    def __init__(self, text: str, path: str, previous: SpecIndex | None = None):
        self.text, self.path = text, path
        self.lines = text.split("\n")
        self.network: Network | None = None
        self.errors: list[SpecError] = []
        try:
            self.network = check_text(text, path)
            self.sources = self.network.sources
        except CheckFailed as exc:
            self.errors, self.sources = exc.errors, exc.sources
        except Exception as exc:  # a checker bug must not take the editor's server down
            self.errors, self.sources = [SpecError(f"internal error: {exc!r}")], {path: text}
        self.module = self.network.module if self.network else _parse_or_none(text, path)
        if self.module is not None:
            self.blocks = self._block_definitions()
        else:
            self.blocks = previous.blocks if previous is not None else {}
        self._rows = {r.node: r for r in cost_rows(self.network.graph)} if self.network else {}

    # ---- diagnostics

    def diagnostics(self) -> list[Diagnostic]:
        """The checker's errors, on this file's lines: an error inside an imported file is
        shown at the import, pointing to the place in that file."""
        found = []
        for error in self.errors:
            message = error.message + (f"\nhint: {error.hint}" if error.hint else "")
            related = tuple((text, place_of(where)) for text, where in getattr(error, "notes", ()))
            span = error.span
            if span is not None and span.file == self.path:
                found.append(Diagnostic(place_of(span), message, related))
                continue
            if span is None:  # about the whole spec: shown on its first line
                found.append(Diagnostic(Place(self.path, 0, 0, 0, len(self.lines[0])), message,
                                        related))
                continue
            related = ((f"{os.path.basename(span.file)}:{span.line}: {error.message}",
                        place_of(span)), *related)
            found.append(Diagnostic(self._import_place(span.file),
                                    f"in {span.file}:{span.line}:{span.col}: {message}", related))
        return found

    def _import_place(self, file: str) -> Place:
        """Where this file imports `file` (its first import if not directly, or line 1)."""
        imports = [i for i in (self.module.items if self.module else ()) if isinstance(i, ast.Import)]
        for item in imports:
            if self._imported_name(item) == file:
                return place_of(item.span)
        if imports:
            return place_of(imports[0].span)
        return Place(self.path, 0, 0, 0, len(self.lines[0]))

    def _imported_name(self, item: ast.Import, importing: str | None = None) -> str:
        """The file name the checker gives an imported module (as netdsl.driver finds it)."""
        if not item.is_path:
            return f"{_STDLIB}{item.target}.net"
        importing = importing or self.path
        base = os.path.dirname(importing) if os.path.exists(importing) else os.getcwd()
        return os.path.normpath(os.path.join(base, item.target))

    # ---- blocks, across imports

    def _block_definitions(self) -> dict[str, ast.Block]:
        """Every block this file can call: its own, then those of the files it imports
        (and they import), first definition first."""
        found: dict[str, ast.Block] = {}
        pending, seen = [self.module], {self.path}
        while pending:
            module = pending.pop(0)
            for name, block in module.blocks.items():
                found.setdefault(name, block)
            for item in module.items:
                if isinstance(item, ast.Import):
                    name = self._imported_name(item, module.file)
                    if name not in seen:
                        seen.add(name)
                        imported = self._load(name)
                        if imported is not None:
                            pending.append(imported)
        return found

    def _load(self, name: str) -> ast.Module | None:
        text = self._source_text(name)
        return _parse_or_none(text, name) if text is not None else None

    def _source_text(self, name: str) -> str | None:
        """The text of a file the spec uses: as checked, else as it is on disk."""
        if name in self.sources:
            return self.sources[name]
        try:
            with open(file_of(name), encoding="utf-8") as handle:
                return handle.read()
        except OSError:
            return None

    # ---- go to definition

    def definition(self, line: int, col: int) -> Place | None:
        """Where the block (or shared instance, or imported module) under the cursor is."""
        found = self._word_at(line, col)
        if found is None:
            return None
        word, _, _ = found
        if self.module is not None:
            for item in self.module.items:
                if isinstance(item, ast.Import) and item.span.line - 1 == line:
                    return Place(file_of(self._imported_name(item)), 0, 0, 0, 0)
                if isinstance(item, ast.Share) and item.name == word:
                    return self._name_place(item.span, word)
        block = self.blocks.get(word)
        return self._name_place(block.span, word) if block is not None else None

    def _name_place(self, span: Span, word: str) -> Place:
        """The place of `word` on the first line of a definition (`block basic(`)."""
        lines = (self._source_text(span.file) or "").split("\n")
        text = lines[span.line - 1] if 0 < span.line <= len(lines) else ""
        match = re.search(rf"\b{re.escape(word)}\b", text[span.col - 1:])
        col = span.col - 1 + (match.start() if match else 0)
        return Place(file_of(span.file), span.line - 1, col, span.line - 1, col + len(word))

    # ---- hover

    def hover(self, line: int, col: int) -> str | None:
        """Markdown about the name under the cursor: a layer or block call's nodes with their
        output shapes, parameters and mult-adds; a value's node; a layer's usage."""
        found = self._word_at(line, col)
        if found is None:
            return None
        word, start, end = found
        after = self.lines[line][end:].lstrip()
        before = self.lines[line][:start].rstrip()
        is_callee = after.startswith("(") or before.endswith("->")
        if self.network is not None:
            if is_callee:
                text = self._hover_call(word, line, start)
                if text:
                    return text
            else:
                text = self._hover_value(word, line)
                if text:
                    return text
        if word in OPS:
            return _layer_doc(word)
        if word in self.blocks:
            return self._block_doc(self.blocks[word])
        return None

    def _hover_call(self, word: str, line: int, start: int) -> str | None:
        graph = self.network.graph
        at = (line + 1, start + 1)
        nodes = [n for n, d in graph.nodes(data=True) if _starts_at(d["span"], self.path, at)]
        if nodes:
            title = f"**{word}**" + (f" `{usage(word)}`" if word in OPS else "")
            return self._describe(title, nodes)
        instances: dict[str, list[str]] = {}  # instance path -> its nodes
        for node, data in graph.nodes(data=True):
            for depth, frame in enumerate(data["scope"]):
                if _starts_at(frame.span, self.path, at):
                    path = "/".join(f.name for f in data["scope"][:depth + 1])
                    instances.setdefault(path, []).append(node)
        if not instances:
            return None
        shared = {i.name: i.call.name for i in self.module.items if isinstance(i, ast.Share)}
        if word in shared:
            lines = [f"**{word}**: the one shared instance of block `{shared[word]}`", ""]
        else:
            lines = [f"**block {word}**" + (f" `{_signature(self.blocks[word])}`"
                                            if word in self.blocks else ""), ""]
        for path, members in list(instances.items())[:MAX_LISTED]:
            inside = set(members)
            outputs = [n for n in members if any(s not in inside for s in graph.successors(n))]
            shapes = ", ".join(str(graph.nodes[n]["type"]) for n in outputs) or "none"
            params = sum(self._rows[n].params for n in members)
            mult_adds = sum(self._rows[n].mult_adds for n in members)
            lines.append(f"- `{path}`: output `{shapes}`, {len(members)} nodes, "
                         f"parameters {params:,}, {_mult_adds(mult_adds)}")
        lines += _more(len(instances))
        lines += ["", _per(any(graph.nodes[n]["type"].seq for m in instances.values() for n in m))]
        return "\n".join(lines)

    def _hover_value(self, word: str, line: int) -> str | None:
        names = self.network.program.names
        block = self._enclosing_block(line)
        if block is None and word in names:
            return self._describe(f"**{word}**", [names[word]])
        if block is not None:  # a block's local name: its node in every instance
            graph = self.network.graph
            nodes = [n for n, d in graph.nodes(data=True) if d["scope"]
                     and d["scope"][-1].block == block.name and n.rsplit("/", 1)[-1] == word]
            if nodes:
                return self._describe(f"**{word}** in block {block.name}", nodes)
        return None

    def _describe(self, title: str, nodes: list[str]) -> str:
        """A title, then per node its op, output type, parameters and mult-adds."""
        graph = self.network.graph
        lines = [title, ""] if len(nodes) == 1 else [title + f": {len(nodes)} instances", ""]
        for node in nodes[:MAX_LISTED]:
            row = self._rows[node]
            shapes = node_params(graph, node)
            owned = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
            shares = graph.nodes[node].get("shares")
            params = f"parameters {row.params:,}" + (f" ({owned})" if owned else "") \
                + (f", shared with `{shares}`" if shares else "")
            lines.append(f"- `{node}` ({row.op}): output `{row.type}`, {params}, "
                         f"{_mult_adds(row.mult_adds)}")
        lines += _more(len(nodes))
        lines += ["", _per(any(graph.nodes[n]["type"].seq for n in nodes))]
        return "\n".join(lines)

    def _block_doc(self, block: ast.Block) -> str:
        where = f"{block.span.file}:{block.span.line}"
        return f"**block** `{_signature(block)}`, defined at {where}"

    def _enclosing_block(self, line: int) -> ast.Block | None:
        if self.module is None:
            return None
        for block in self.module.blocks.values():
            if block.span.line - 1 <= line <= block.span.end_line - 1:
                return block
        return None

    def word_place(self, line: int, col: int) -> Place | None:
        """The name under the cursor, which a hover is about."""
        found = self._word_at(line, col)
        return Place(self.path, line, found[1], line, found[2]) if found else None

    def _word_at(self, line: int, col: int) -> tuple[str, int, int] | None:
        if not 0 <= line < len(self.lines):
            return None
        for match in _WORD.finditer(self.lines[line]):
            if match.start() <= col <= match.end():
                return match.group(), match.start(), match.end()
        return None

    # ---- completion

    def completions(self, line: int, col: int) -> list[Completion]:
        """What may be typed at the cursor: a call's keyword arguments inside its
        parentheses, layer and block names (optimisers in a train clause), constants, and
        keywords at a line's start."""
        text = self.lines[line][:col] if 0 <= line < len(self.lines) else ""
        word = re.search(r"[A-Za-z_0-9]*$", text).group()
        before = "\n".join(self.lines[:line] + [text[:len(text) - len(word)]])
        items: list[Completion] = []
        if re.search(r"(?<![\w.])[A-Za-z_]\w*\.$", text[:len(text) - len(word)]):  # x.channels
            return [Completion(n, "dimension", f"a dimension of a tensor: x.{n}", n)
                    for n in (*NAMES, CLASSES) if n.startswith(word.lower())]
        call = _open_call(before)
        if call is not None and before.rstrip().endswith(("(", ",")):
            name, given = call
            items += self._arguments(name, given)
        if text[:len(text) - len(word)].strip() == "":  # a statement starts here
            items += [Completion(k, "keyword", "keyword", k) for k in keywords()]
        if re.match(r"\s*train\b", self.lines[line]):  # a train clause calls an optimiser
            items += [Completion(n, "optimizer", optimizer_usage(n), n) for n in optimizer_names()]
        items += [Completion(n, "layer", usage(n), n) for n in layer_names()]
        blocks = dict(self.blocks)
        for name in sorted(block_names(self.text) - set(blocks)):
            blocks[name] = None
        items += [Completion(n, "block", _signature(b) if b else f"{n}(...)", n)
                  for n, b in sorted(blocks.items())]
        items += [Completion(c, "constant", "constant", c) for c in CONSTANTS]
        return [i for i in items if i.label.lower().startswith(word.lower())]

    def _arguments(self, name: str, given: set[str]) -> list[Completion]:
        if name in OPS:
            names = [a.name for a in layer_arguments(name)]
            detail = usage(name)
        elif name in self.blocks:
            names = [p.name for p in self.blocks[name].params]
            detail = _signature(self.blocks[name])
        elif name in OPTIMIZERS:
            names, detail = list(OPTIMIZERS[name].defaults), optimizer_usage(name)
        else:
            return []
        return [Completion(n, "argument", detail, f"{n}=") for n in names if n not in given]


def _parse_or_none(text: str, path: str) -> ast.Module | None:
    try:
        return parse(text, path)
    except SpecError:
        return None


def _starts_at(span: Span | None, path: str, at: tuple[int, int]) -> bool:
    return span is not None and span.file == path and (span.line, span.col) == at


def _mult_adds(mult_adds: int) -> str:
    # counted as torchinfo and `netc compile` count them (Op.mult_adds); FLOPs are twice
    return f"mult-adds {human(mult_adds)} ({human(2 * mult_adds)} FLOPs)"


def _per(seq: bool) -> str:
    return "per example" + (" and time step" if seq else "") + "; a multiply-add counts as 2 FLOPs"


def _more(count: int) -> list[str]:
    return [f"- ... and {count - MAX_LISTED} more"] if count > MAX_LISTED else []


def _signature(block: ast.Block) -> str:
    return f"{block.name}({', '.join(p.name + ('=...' if p.default is not None else '') for p in block.params)})"


def _layer_doc(name: str) -> str:
    doc = (OPS[name].__doc__ or "").strip().split("\n")[0]
    return f"**layer** `{usage(name)}`" + (f"\n\n{doc}" if doc else "")


def _open_call(text: str) -> tuple[str, set[str]] | None:
    """The callee of the innermost parenthesis still open at the end of `text`, with the
    keyword arguments it already has; None outside any call."""
    text = _QUOTED_OR_COMMENT.sub(lambda m: " " * len(m.group()), text)  # their ( ) do not count
    depth, index = 0, len(text) - 1
    while index >= 0:
        char = text[index]
        if char == ")":
            depth += 1
        elif char == "(":
            if depth == 0:
                match = re.search(r"([A-Za-z_][A-Za-z_0-9]*)\s*$", text[:index])
                if match is None:
                    return None
                given = set(re.findall(r"([A-Za-z_][A-Za-z_0-9]*)\s*=(?!=)", text[index:]))
                return match.group(1), given
            depth -= 1
        index -= 1
    return None

