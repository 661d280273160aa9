"""The front end as a readable list of passes, from a file name to a checked graph."""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources

import networkx as nx

from netdsl import ast
from netdsl.cost import param_count
from netdsl.errors import SpecError, SpecErrors, errors_of, suggest
from netdsl.expand import IndependentErrors, expand
from netdsl.graph import graph_and_order
from netdsl.imports import import_roots, is_path_name, resolve_import, spec_name
from netdsl.parse import parse
from netdsl.program import Program
from netdsl.recurrences import check_recurrences
from netdsl.shapes import typed_graph

__all__ = ["Network", "check_file", "check_text", "read_spec", "CheckFailed",
           "cycle_collection_paused"]

MAX_SPEC_BYTES = 10 * 1024 * 1024


class CheckFailed(SpecErrors):
    """A spec failed to check: its errors and the source texts needed to show them."""

    def __init__(self, errors: list[SpecError], sources: dict[str, str]):
        super().__init__(errors)
        self.sources = sources


@dataclass
class Network:
    """A checked spec: the syntax tree, the expanded program and the typed graph."""

    module: ast.Module
    program: Program
    graph: nx.DiGraph
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.graph.graph["name"]

    def param_count(self) -> int:
        """Learned parameters; a shared instance counts once."""
        return param_count(self.graph)


def read_spec(path: str) -> str:
    """The text of a spec file, or a SpecError that says what is wrong with the file."""
    if not os.path.exists(path):
        raise SpecError(f"{path}: no such file", None, "check the path")
    if os.path.isdir(path):
        raise SpecError(f"{path} is a directory, not a spec file", None,
                        f"name a .net file inside it, e.g. {os.path.join(path, '*.net')}")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read it ({exc.strerror})", None) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{path} is larger than 10 MiB; is it really a spec?", None)
    if b"\0" in data:
        raise SpecError(f"{path} is a binary file, not a .net spec", None)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path} is not UTF-8 text (bad byte at offset {exc.start})", None) from None


class _Loader:
    """Reads and parses imported files once each, remembering their text for error messages.
    A quoted import reads only inside `roots` (see netdsl.imports)."""

    def __init__(self, sources: dict[str, str], roots: tuple[str, ...]):
        self.sources = sources
        self.roots = roots
        self.modules: dict[str, ast.Module] = {}  # by real path: one file, one module

    def add(self, module: ast.Module) -> None:
        """Know the checked spec itself, so a spec importing itself is the same module."""
        if is_path_name(module.file):
            self.modules[os.path.realpath(module.file)] = module

    def __call__(self, target: str, is_path: bool, importing: str, span) -> ast.Module:
        if is_path:
            path = resolve_import(target, importing, self.roots, span)
            key = os.path.realpath(path)
            if key in self.modules:
                return self.modules[key]
            try:
                text = read_spec(path)
            except SpecError as exc:  # located at the import, not at the unreadable file
                raise SpecError(f"cannot import '{target}': {exc.message}", span, exc.hint) from None
        else:
            path = key = f"<stdlib>/{target}.net"
            stdlib = resources.files("netdsl.stdlib")
            if not stdlib.joinpath(f"{target}.net").is_file():
                names = [p.name[:-4] for p in stdlib.iterdir() if p.name.endswith(".net")]
                raise SpecError(f"no standard library module '{target}'", span,
                                suggest(target, names) or f"available: {', '.join(sorted(names))}")
            if key in self.modules:
                return self.modules[key]
            text = stdlib.joinpath(f"{target}.net").read_text()
        self.sources[path] = text
        module = parse(text, path)
        self.modules[key] = module
        return module


@contextmanager
def cycle_collection_paused():
    """The passes make hundreds of thousands of objects that live until the check ends,
    and no garbage cycles worth collecting: Python's cyclic collector, run over all of
    them again and again, made checking grow faster than the spec (30,000 lines: 30 s
    with it, 12 s without). Reference counting still frees what is dropped."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def check_text(text: str, file: str = "<spec>", import_path=()) -> Network:
    """Parse, expand, build and shape-check a spec given as text.

    `file` names the spec (its folder is where quoted imports may read); `import_path`
    adds folders imports may read, as `--import-path` does.

    Raises
    ------
    CheckFailed
        With every error found and the sources to render them.
    """
    file = spec_name(file)                              # ./a.net and a.net are one file
    sources = {file: text}
    errors: list[SpecError] = []  # those that let the later passes run, reported together
    loader = _Loader(sources, import_roots(file, import_path))
    with cycle_collection_paused():
        try:
            module = parse(text, file)                  # text -> AST with spans
            loader.add(module)
            try:
                program = expand(module, loader)        # blocks, repeats, loops inlined
            except IndependentErrors as exc:            # the program is whole all the same
                program, errors = exc.program, list(exc.errors)
            graph, order = graph_and_order(program)     # networkx graph; cycles need a delay
            graph, found = typed_graph(graph, copy=False, order=order)  # typed, or located errors
            errors += found + check_recurrences(graph, program.train_spans)  # loops over time
            SpecErrors.collect(errors)
        except (SpecError, SpecErrors) as exc:
            raise CheckFailed(_detached(_unique(errors + errors_of(exc))), sources) from None
        except RecursionError:  # parse bounds expression depth; this is a chain of blocks too long
            error = SpecError(f"{file}: blocks call blocks too deeply to check", None,
                              "flatten some of the blocks into their callers")
            raise CheckFailed([error], sources) from None
    return Network(module, program, graph, sources)


def _detached(errors: list[SpecError]) -> list[SpecError]:
    """The errors without the tracebacks and exceptions they were raised with: those hold
    the frames of the passes, and so all they made, in cycles that only the collector
    frees; an error is shown by its message and place alone."""
    for error in errors:
        error.__traceback__ = error.__context__ = None
    return errors


def _unique(errors: list[SpecError]) -> list[SpecError]:
    """One error per place and message (an error of an earlier pass may be raised again)."""
    return list({(e.span, e.message): e for e in reversed(errors)}.values())[::-1]


def check_file(path: str, import_path=()) -> Network:
    """Check a spec file; see `check_text`."""
    try:
        text = read_spec(path)
    except SpecError as exc:
        raise CheckFailed([exc], {}) from None
    return check_text(text, path, import_path)
