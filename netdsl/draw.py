"""Draw a typed graph with Graphviz: blocks as clusters, shapes on edges, recurrence drawn back.

`to_dot` builds a `graphviz.Digraph` without running Graphviz; `render` writes it as
svg, png or pdf (which needs the `dot` program) or as DOT text (which does not).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from itertools import accumulate

import graphviz
import networkx as nx

from netdsl.errors import SpecError
from netdsl.ops.base import REQUIRED

__all__ = ["to_dot", "render", "FORMATS"]

FORMATS = ("svg", "png", "pdf", "dot")
INSTALL_HINT = ("install Graphviz: apt-get install graphviz (Debian/Ubuntu), "
                "brew install graphviz (macOS), or write -o file.dot")

_FILLED = {"style": "rounded,filled"}
node_styles = {
    "input": {"shape": "invhouse", "style": "filled", "fillcolor": "#cfe2ff"},
    "target": {"shape": "invhouse", "style": "filled", "fillcolor": "#ffe5b4"},
    "state": {"shape": "box", "style": "rounded,filled,dashed", "fillcolor": "#e5d8ff"},
    "loss": {"shape": "doubleoctagon", "style": "filled", "fillcolor": "#f8c8c8"},
    "op": {"shape": "box", **_FILLED, "fillcolor": "#f4f4f4"},
    "block": {"shape": "box3d", "style": "filled", "fillcolor": "#d9f2d9"},
    "join": {"shape": "circle", "style": "filled", "fillcolor": "#ffffff", "fontsize": "10",
             "width": "0.3", "height": "0.3", "margin": "0.02"},
}
# joins and forks are drawn small, with a symbol instead of a call
join_labels = {"add": "+", "sub": "−", "mul": "×", "div": "÷", "concat": "concat", "crop": "crop"}
_RECURRENT = {"color": "#7a3db8", "fontcolor": "#7a3db8", "constraint": "false"}


@dataclass
class _Drawn:
    """One box in the picture: its Graphviz attributes and the clusters it sits in."""

    attrs: dict
    path: tuple = ()       # ((cluster key, label), ...), outermost first
    seq: bool = False      # a per-step value, copied once per step when unrolled
    op: object = None
    state: object = None   # the StateDef of a state node


@dataclass
class _Edge:
    u: str
    v: str
    delay: int
    types: list = field(default_factory=list)  # the tensors it carries
    state: str | None = None                   # the state node a delayed edge feeds
    init: object = None                        # and its StateDef


@dataclass
class _Box:
    """A collapsed block instance, or a run of instances made by one `x N` stage."""

    id: str
    block: str
    parents: tuple
    names: list = field(default_factory=list)
    members: list = field(default_factory=list)


def to_dot(graph: nx.DiGraph, *, collapse: bool | int = False, unroll: int | None = None
           ) -> graphviz.Digraph:
    """Build the Graphviz diagram of a typed graph (after `infer_shapes`).

    Parameters
    ----------
    graph : the typed graph, e.g. `check_file(path).graph`.
    collapse : False draws every block instance as a cluster of its layers; True draws
        each top-level instance as one box (a repeated stage as one "basic x 3" box);
        an int n keeps n-1 levels of clusters and collapses the level below.
    unroll : draw this many time steps side by side, each value suffixed `@t`.

    Raises
    ------
    SpecError
        When `collapse` is negative, `unroll` is below 1, or there is nothing to unroll.

    Example
    -------
    >>> to_dot(check_file("specs/resnet20.net").graph, collapse=True).source  # doctest: +SKIP
    """
    if collapse is not False and int(collapse) < 0:
        raise SpecError(f"collapse depth must be 0 or more, got {collapse}")
    nodes, edges = _view(graph, int(collapse) or None)
    if unroll is not None:
        if unroll < 1:
            raise SpecError(f"--unroll needs at least one step, got {unroll}")
        if not any(d.seq for d in nodes.values()):
            raise SpecError(f"nothing to unroll: network {graph.graph['name']} has no sequences",
                            None, "--unroll draws recurrent and sequence networks step by step")
        nodes, edges = _unroll(nodes, edges, unroll)
    return _emit(graph.graph["name"], nodes, edges, unrolled=unroll is not None)


# ---- the view: graph nodes, or collapsed blocks, with their edges


def _view(graph: nx.DiGraph, depth: int | None) -> tuple[dict[str, _Drawn], list[_Edge]]:
    boxes = _boxes(graph, depth) if depth else {}
    drawn_as = {n: boxes[n].id if n in boxes else n for n in graph}
    nodes: dict[str, _Drawn] = {}
    for node, data in graph.nodes(data=True):
        if node not in boxes:
            nodes[node] = _Drawn(_node_attrs(graph, node), _path(data["scope"]),
                                 _is_seq(data), data["op"], data["state"])
        elif drawn_as[node] not in nodes:
            box = boxes[node]
            nodes[box.id] = _Drawn(_box_attrs(graph, box, drawn_as), _path(box.parents),
                                   any(_is_seq(graph.nodes[m]) for m in box.members))
    edges: dict[tuple, _Edge] = {}
    for u, v, data in graph.edges(data=True):
        key = (drawn_as[u], drawn_as[v], data["delay"])
        if key[0] == key[1] and not data["delay"]:
            continue  # inside one collapsed box
        state = (v, graph.nodes[v]["state"]) if data["delay"] else (None, None)
        edge = edges.setdefault(key, _Edge(*key, [], *state))
        edge.types.append(graph.nodes[u]["type"])
    return nodes, list(edges.values())


def _boxes(graph: nx.DiGraph, depth: int) -> dict[str, _Box]:
    """Each node inside a block instance at `depth` -> its box; consecutive repeats share one."""
    by_path: dict[tuple, _Box] = {}
    boxes, previous = {}, None
    for node, data in graph.nodes(data=True):  # definition order
        scope = data["scope"]
        if len(scope) < depth:
            previous = None
            continue
        path, frame = tuple(f.name for f in scope[:depth]), scope[depth - 1]
        if path not in by_path:
            joins = (previous and frame.repeat and previous[1].repeat == frame.repeat
                     and previous[0][:-1] == path[:-1])
            by_path[path] = by_path[previous[0]] if joins else _Box(
                "[" + "/".join(path) + "]", frame.block, scope[:depth - 1])
            by_path[path].names.append(frame.name)
        previous = (path, frame)
        boxes[node] = by_path[path]
        boxes[node].members.append(node)
    return boxes


def _path(frames) -> tuple:
    keys = accumulate((f.name for f in frames), lambda a, b: f"{a}/{b}")
    return tuple((key, f"{f.name} : {f.block}") for key, f in zip(keys, frames))


def _is_seq(data) -> bool:
    return bool(getattr(data.get("type"), "seq", False))


def _node_attrs(graph: nx.DiGraph, node: str) -> dict:
    data = graph.nodes[node]
    kind, op = data["kind"], data["op"]
    losses = {n: name for name, n in graph.graph["losses"].items()}
    tip = {"tooltip": f"{node}  {data['span']}" if data["span"] else node}
    if kind in ("input", "target"):
        return {**node_styles[kind], **tip, "label": f"{kind} {node}"}
    if kind == "state":
        return {**node_styles["state"], **tip, "label": _lines(node, f"state = {data['state'].init}")}
    if node in losses:
        name = "loss" if losses[node] == "loss" else f"loss {losses[node]}"
        return {**node_styles["loss"], **tip, "label": _lines(name, _call(op))}
    if op.name in join_labels:
        return {**node_styles["join"], **tip, "label": join_labels[op.name]}
    local = node.rsplit("/", 1)[-1]
    auto = re.fullmatch(re.escape(op.name) + r"\d+", local)  # a name the expander made up
    text = _call(op) if auto else f"{local} = {_call(op)}"
    shares = [f"shares {data['shares']}"] if data.get("shares") else []
    return {**node_styles["op"], **tip, "label": _lines(text, *shares)}


def _box_attrs(graph: nx.DiGraph, box: _Box, drawn_as: dict) -> dict:
    outputs = [m for m in box.members
               if any(drawn_as[s] != box.id for s in graph.successors(m))] or box.members[-1:]
    shapes = ", ".join(dict.fromkeys(str(graph.nodes[m]["type"]) for m in outputs))
    n = len(box.names)
    title = f"{box.block} x {n}" if n > 1 else f"{box.names[0]} : {box.block}"
    which = [f"{box.names[0]} .. {box.names[-1]}"] if n > 1 else []
    return {**node_styles["block"], "label": _lines(title, *which, shapes), "tooltip": box.id}


def _call(op) -> str:
    """An op as a spec would write it, defaults left out: conv(16, 3, pad=1, bias=false)."""
    parts = []
    for arg in type(op).args:
        value = op.attrs.get(arg.name, arg.default)
        if arg.default is REQUIRED:
            parts.append(_literal(value))
        elif not _is_default(arg, value):
            parts.append(f"{arg.name}={_literal(value)}")
    return f"{op.name}({', '.join(parts)})" if parts else op.name


def _is_default(arg, value) -> bool:
    try:
        return value == arg.default or value == arg.convert(arg.default)
    except (TypeError, ValueError):
        return False


def _literal(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "none"}[value]
    if isinstance(value, (tuple, list)):
        return _literal(value[0]) if len(value) == 1 else f"[{', '.join(map(_literal, value))}]"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def _lines(*lines: str) -> str:
    return r"\n".join(graphviz.escape(line) for line in lines)


# ---- unrolling: one copy of the step graph per time step


def _unroll(nodes: dict[str, _Drawn], edges: list[_Edge], steps: int):
    states = {n for n, d in nodes.items() if d.state is not None}
    at = lambda node, t: f"{node}@{t}" if nodes[node].seq else node  # noqa: E731
    out: dict[str, _Drawn] = {}
    for node, d in nodes.items():
        if node in states:
            continue  # a state at step t is the value it delays, from step t-k
        if not d.seq:
            out[node] = d
        for t in range(steps) if d.seq else ():
            path = ((f"t{t}", f"t = {t}"), *((f"{key}@{t}", label) for key, label in d.path))
            out[at(node, t)] = replace(d, path=path)
    result = []
    for edge in _bypass_states(edges, states):
        if edge.delay:
            result += _delayed_copies(edge, out, at, steps)
            continue
        for s, t in _step_pairs(nodes[edge.u], nodes[edge.v], steps):
            u, v = (at(edge.u, s) if s is not None else edge.u), (at(edge.v, t) if t is not None else edge.v)
            result.append(replace(edge, u=u, v=v))
    unique = {(e.u, e.v, e.delay): e for e in result}
    return out, list(unique.values())


def _bypass_states(edges: list[_Edge], states: set) -> list[_Edge]:
    """Replace value -> state -> consumer by one delayed edge value -> consumer."""
    feeds = {e.v: e for e in edges if e.v in states}
    kept = [e for e in edges if e.u not in states and e.v not in states]
    return kept + [replace(feeds[e.u], v=e.v, types=e.types) for e in edges if e.u in states]


def _step_pairs(u: _Drawn, v: _Drawn, steps: int):
    """(source step, target step) pairs of a forward edge; None where a side is not per step."""
    if v.seq:
        reverse = getattr(v.op, "name", None) == "reverse"
        return [((steps - 1 - t if reverse else t) if u.seq else None, t) for t in range(steps)]
    if not u.seq:
        return [(None, None)]
    reads = {"last": [steps - 1], "first": [0]}.get(getattr(v.op, "name", None), range(steps))
    return [(s, None) for s in reads]


def _delayed_copies(edge: _Edge, out: dict, at, steps: int) -> list[_Edge]:
    """Step t reads step t-k, or the state's initial value (an init node) while t < k."""
    init = f"{edge.state}@init"
    if init not in out:
        label = _lines(f"{edge.init.name}0: {edge.init.init}")
        out[init] = _Drawn({**node_styles["state"], "label": label, "tooltip": init})
    sources = [at(edge.u, t - edge.delay) if t >= edge.delay else init for t in range(steps)]
    return [replace(edge, u=u, v=at(edge.v, t)) for t, u in enumerate(sources)]


# ---- emitting DOT


def _emit(name: str, nodes: dict[str, _Drawn], edges: list[_Edge], unrolled: bool) -> graphviz.Digraph:
    dot = graphviz.Digraph(name=name)
    dot.attr(rankdir="TB", newrank="true", compound="true", label=name, labelloc="t",
             fontname="Helvetica")
    dot.attr("node", fontname="Helvetica", fontsize="11")
    dot.attr("edge", fontname="Helvetica", fontsize="9", arrowsize="0.7")
    _fill(dot, [(node, d.path, d.attrs) for node, d in nodes.items()])
    styled = [(e.u, e.v, _edge_attrs(e, unrolled)) for e in edges]
    _loosen_skips(styled)
    for u, v, attrs in styled:
        dot.edge(u, v, **attrs)
    return dot


def _fill(g: graphviz.Digraph, items) -> None:
    """Add nodes to `g`, nesting those with a cluster path in subgraphs."""
    groups: dict[tuple, list] = {}
    for node, path, attrs in items:
        if path:
            groups.setdefault(path[0], []).append((node, path[1:], attrs))
        else:
            g.node(node, **attrs)
    for (key, label), inner in groups.items():
        with g.subgraph(name=f"cluster_{key}") as sub:
            sub.attr(label=graphviz.escape(label), style="rounded,dashed", color="#999999",
                     fontsize="10", labeljust="l")
            _fill(sub, inner)


def _edge_attrs(edge: _Edge, unrolled: bool) -> dict:
    shapes = ", ".join(dict.fromkeys(str(t.step() if unrolled else t) for t in edge.types))
    if edge.delay and not unrolled:  # drawn back to the state it feeds
        return {**_RECURRENT, "style": "dashed", "label": f"t-{edge.delay}"}
    if edge.delay:
        return {**_RECURRENT, "label": shapes}
    return {"label": shapes}


def _loosen_skips(edges: list) -> None:
    """A long edge out of a fork (a skip connection) gets weight 0, so the main path stays straight."""
    dag = nx.DiGraph((u, v) for u, v, a in edges if a.get("constraint") != "false" and u != v)
    try:
        rank = {n: i for i, gen in enumerate(nx.topological_generations(dag)) for n in gen}
    except nx.NetworkXUnfeasible:
        return  # a shared block used twice in a row; leave the layout to dot
    for u, v, attrs in edges:
        if u in rank and v in rank and rank[v] - rank[u] > 1 and dag.out_degree(u) > 1:
            attrs["weight"] = "0"


# ---- writing files


def render(graph: nx.DiGraph, path: str, fmt: str | None = None, **options) -> str:
    """Draw `graph` to `path` atomically; `fmt` defaults to the file's extension.

    Options are those of `to_dot`. Returns the path written.

    Raises
    ------
    SpecError
        For a format other than svg, png, pdf or dot; when svg, png or pdf is asked for and
        Graphviz's `dot` program is not installed; when the file cannot be written.
    """
    fmt = (fmt or os.path.splitext(path)[1].lstrip(".")).lower()
    if fmt not in FORMATS:
        raise SpecError(f"cannot draw to '{path}': unknown format '{fmt}'", None,
                        "use one of " + ", ".join(f".{f}" for f in FORMATS))
    dot = to_dot(graph, **options)
    data = dot.source.encode() if fmt == "dot" else _pipe(dot, fmt, path)
    _write_atomic(path, data)
    return path


def _pipe(dot: graphviz.Digraph, fmt: str, path: str) -> bytes:
    missing = SpecError(f"cannot draw {path}: Graphviz's `dot` program is not installed",
                        None, INSTALL_HINT)
    if shutil.which("dot") is None:
        raise missing
    try:
        return dot.pipe(format=fmt, quiet=True)
    except graphviz.ExecutableNotFound:
        raise missing from None
    except graphviz.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip()
        raise SpecError(f"Graphviz failed to draw {path}: {detail}", None,
                        "write -o file.dot to inspect the DOT text") from None


def _write_atomic(path: str, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as exc:
        raise SpecError(f"cannot write {path}: {exc.strerror}", None, "check that the folder exists") from None
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except OSError as exc:
        os.unlink(temp)
        raise SpecError(f"cannot write {path}: {exc.strerror}") from None
