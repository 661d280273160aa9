"""Draw a typed graph with Graphviz: blocks as clusters, shapes on edges, recurrence drawn back.

`to_dot` builds a `graphviz.Digraph` without running Graphviz; `render` writes it as svg,
png or pdf (which needs Graphviz's `dot` program) or as DOT text (which does not).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
from dataclasses import dataclass, field, replace
from itertools import accumulate

import graphviz
import networkx as nx

from netdsl.errors import SpecError
from netdsl.ops.base import REQUIRED

__all__ = ["to_dot", "render", "FORMATS", "INSTALL_HINT"]

FORMATS = ("svg", "png", "pdf", "dot")
INSTALL_HINT = ("install Graphviz: apt-get install graphviz (Debian/Ubuntu), "
                "brew install graphviz (macOS), or write -o file.dot")

node_styles = {
    "input": {"shape": "invhouse", "style": "filled", "fillcolor": "#cfe2ff"},
    "target": {"shape": "invhouse", "style": "filled", "fillcolor": "#ffe5b4"},
    "state": {"shape": "box", "style": "rounded,filled,dashed", "fillcolor": "#e5d8ff"},
    "loss": {"shape": "doubleoctagon", "style": "filled", "fillcolor": "#f8c8c8"},
    "op": {"shape": "box", "style": "rounded,filled", "fillcolor": "#f4f4f4"},
    "block": {"shape": "box3d", "style": "filled", "fillcolor": "#d9f2d9"},
    "join": {"shape": "circle", "style": "filled", "fillcolor": "#ffffff", "fontsize": "10",
             "width": "0.3", "height": "0.3", "margin": "0.02"},
}
# joins are drawn small, with a symbol instead of a call
join_labels = {"add": "+", "sub": "−", "mul": "×", "div": "÷", "concat": "concat", "crop": "crop"}
_RECURRENT = {"color": "#7a3db8", "fontcolor": "#7a3db8"}
_CLUSTER = {"style": "rounded,dashed", "color": "#999999", "fontsize": "10", "labeljust": "l"}


@dataclass
class _Drawn:
    """One shape in the picture: its Graphviz attributes and the clusters it sits in."""

    attrs: dict
    path: tuple = ()          # ((cluster key, label), ...), outermost first
    seq: bool = False         # a per-step value: copied once per step when unrolled
    op: str | None = None     # the op's name
    state: object = None      # the StateDef of a state node


@dataclass
class _Edge:
    u: str
    v: str
    delay: int
    state: str | None = None                   # a recurrent edge: the state node it feeds
    types: list = field(default_factory=list)  # the tensors it carries
    init: object = None                        # the StateDef of that state


def to_dot(graph: nx.DiGraph, *, collapse: bool | int = False, unroll: int | None = None
           ) -> graphviz.Digraph:
    """Build the Graphviz diagram of a typed graph (the result of `infer_shapes`).

    Parameters
    ----------
    graph : the typed graph, e.g. `check_file(path).graph`.
    collapse : False draws every block instance as a cluster of its layers; True draws
        each top-level instance as one box, and consecutive instances of one `x N` stage
        as one "basic x 3" box; an int n keeps n-1 levels of clusters and collapses level n.
    unroll : draw this many time steps side by side; values are suffixed `@t`, and each
        state's initial value is an init node.

    Raises
    ------
    SpecError
        When `collapse` is negative, `unroll` is below 1, or there is no sequence to unroll.

    Example
    -------
    >>> to_dot(check_file("specs/resnet20.net").graph, collapse=True).source  # doctest: +SKIP
    """
    if int(collapse) < 0:
        raise SpecError(f"collapse depth must be 0 or more, got {collapse}")
    nodes, edges = _view(graph, int(collapse), unroll is not None)
    if unroll is not None:
        if unroll < 1:
            raise SpecError(f"--unroll needs at least one step, got {unroll}")
        if not any(d.seq for d in nodes.values()):
            raise SpecError(f"nothing to unroll: network {graph.graph['name']} has no sequences",
                            None, "--unroll draws recurrent and sequence networks step by step")
        nodes, edges = _unroll(nodes, edges, unroll)
    return _emit(graph.graph["name"], nodes, edges, unroll)


# ---- the view: graph nodes, or collapsed blocks, and the edges between them


def _view(graph: nx.DiGraph, depth: int, steps: bool) -> tuple[dict[str, _Drawn], list[_Edge]]:
    boxes = _boxes(graph, depth) if depth else {}
    drawn_as = {n: boxes[n][0] if n in boxes else n for n in graph}
    nodes: dict[str, _Drawn] = {}
    seq = {n: bool(getattr(t, "seq", False)) for n, t in graph.nodes(data="type")}
    for node, data in graph.nodes(data=True):
        if node not in boxes:
            nodes[node] = _Drawn(_node_attrs(graph, node), _path(data["scope"]), seq[node],
                                 data["op"] and data["op"].name, data["state"])
        elif drawn_as[node] not in nodes:
            nodes[drawn_as[node]] = _Drawn(_box_attrs(graph, boxes[node], drawn_as, steps),
                                           _path(data["scope"][:depth - 1]),
                                           any(seq[m] for m in boxes[node][3]))
    edges: dict[tuple, _Edge] = {}
    for u, v, data in graph.edges(data=True):
        key = (drawn_as[u], drawn_as[v], data["delay"], v if data["delay"] else None)
        if key[0] == key[1] and not data["delay"]:
            continue  # inside one collapsed box
        init = graph.nodes[v]["state"] if data["delay"] else None
        edges.setdefault(key, _Edge(*key, init=init)).types.append(graph.nodes[u]["type"])
    return nodes, list(edges.values())


def _boxes(graph: nx.DiGraph, depth: int) -> dict[str, tuple]:
    """Each node inside a block instance at `depth` -> its box (id, block, instance names,
    members); consecutive instances made by one `x N` stage share a box."""
    by_path, boxes, previous = {}, {}, None
    for node, data in graph.nodes(data=True):  # definition order
        scope = data["scope"]
        if len(scope) < depth:
            previous = None
            continue
        path, frame = tuple(f.name for f in scope[:depth]), scope[depth - 1]
        if path not in by_path:
            joins = (previous and frame.repeat and previous[1].repeat == frame.repeat
                     and previous[0][:-1] == path[:-1])
            by_path[path] = by_path[previous[0]] if joins else (
                "[" + "/".join(path) + "]", frame.block, [], [])
            by_path[path][2].append(frame.name)
        previous = (path, frame)
        boxes[node] = by_path[path]
        boxes[node][3].append(node)
    return boxes


def _path(frames) -> tuple:
    keys = accumulate((f.name for f in frames), lambda a, b: f"{a}/{b}")
    return tuple((key, f"{f.name} : {f.block}") for key, f in zip(keys, frames))


def _node_attrs(graph: nx.DiGraph, node: str) -> dict:
    data = graph.nodes[node]
    kind, op = data["kind"], data["op"]
    losses = {n: name for name, n in graph.graph["losses"].items()}
    tip = {"tooltip": f"{node}  {data['span']}" if data["span"] else node}
    if kind in ("input", "target"):
        return {**node_styles[kind], **tip, "label": _lines(f"{kind} {node}")}
    if kind == "state":
        init = f"state = {data['state'].init}"
        return {**node_styles["state"], **tip, "label": _lines(node, init)}
    if node in losses:
        name = "loss" if losses[node] == "loss" else f"loss {losses[node]}"
        return {**node_styles["loss"], **tip, "label": _lines(name, _call(op))}
    local = node.rsplit("/", 1)[-1]
    made_up = re.fullmatch(re.escape(op.name) + r"\d+", local)  # a name the expander chose
    if op.name in join_labels:
        named = {} if made_up else {"xlabel": graphviz.escape(local)}
        return {**node_styles["join"], **tip, **named, "label": join_labels[op.name]}
    shares = [f"shares {data['shares']}"] if data.get("shares") else []
    return {**node_styles["op"], **tip,
            "label": _lines(_call(op) if made_up else f"{local} = {_call(op)}", *shares)}


def _box_attrs(graph: nx.DiGraph, box: tuple, drawn_as: dict, steps: bool) -> dict:
    box_id, block, names, members = box
    outputs = [m for m in members if any(drawn_as[s] != box_id for s in graph.successors(m))]
    types = [graph.nodes[m]["type"] for m in outputs or members[-1:]]
    shapes = ", ".join(dict.fromkeys(str(t.step() if steps else t) for t in types))
    title = ([f"{block} x {len(names)}", f"{names[0]} .. {names[-1]}"] if len(names) > 1
             else [f"{names[0]} : {block}"])
    return {**node_styles["block"], "label": _lines(*title, shapes), "tooltip": box_id}


def _call(op) -> str:
    """An op as a spec writes it, defaults left out: conv(16, 3, pad=1, bias=false)."""
    parts = []
    for arg in type(op).args:
        value = op.attrs.get(arg.name, arg.default)
        if arg.default is REQUIRED:
            parts.append(_literal(value))
        elif _literal(value) != _literal(arg.default):  # 1 and (1,) read the same
            parts.append(f"{arg.name}={_literal(value)}")
    return f"{op.name}({', '.join(parts)})" if parts else op.name


def _literal(value) -> str:
    if isinstance(value, (tuple, list)):
        return _literal(value[0]) if len(value) == 1 else f"[{', '.join(map(_literal, value))}]"
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _lines(*lines: str) -> str:
    return r"\n".join(graphviz.escape(line) for line in lines)


# ---- unrolling: one copy of the step graph per time step


def _unroll(nodes: dict[str, _Drawn], edges: list[_Edge], steps: int):
    def at(node, t):
        return node if t is None or not nodes[node].seq else f"{node}@{t}"

    out: dict[str, _Drawn] = {}
    for node, d in nodes.items():
        if d.state is not None:
            continue  # a state at step t is the value it delays, from step t-k
        for t in range(steps) if d.seq else [None]:
            step = ((f"t{t}", f"t = {t}"), *((f"{k}@{t}", label) for k, label in d.path))
            out[at(node, t)] = replace(d, path=step) if d.seq else d
    result = []
    for edge in _bypass_states(edges, {n for n, d in nodes.items() if d.state is not None}):
        if edge.delay:
            result += _delayed_copies(edge, out, at, steps)
            continue
        for s, t in _step_pairs(nodes[edge.u], nodes[edge.v], steps):
            result.append(replace(edge, u=at(edge.u, s), v=at(edge.v, t)))
    return out, list({(e.u, e.v): e for e in result}.values())


def _bypass_states(edges: list[_Edge], states: set) -> list[_Edge]:
    """Replace value -> state -> consumer by one delayed edge value -> consumer."""
    feeds = {e.v: e for e in edges if e.v in states}
    kept = [e for e in edges if e.u not in states and e.v not in states]
    return kept + [replace(feeds[e.u], v=e.v, types=e.types) for e in edges if e.u in states]


def _step_pairs(u: _Drawn, v: _Drawn, steps: int) -> list[tuple]:
    """(source step, target step) pairs of a forward edge; None where a side is not per step."""
    if v.seq:
        return [(steps - 1 - t if v.op == "reverse" else t, t) for t in range(steps)]
    reads = {"last": [steps - 1], "first": [0]}.get(v.op, range(steps))
    return [(s, None) for s in reads] if u.seq else [(None, None)]


def _delayed_copies(edge: _Edge, out: dict, at, steps: int) -> list[_Edge]:
    """Step t reads step t-k, or the state's initial value (an init node) while t < k."""
    init = f"{edge.state}@init"
    if init not in out:
        label = _lines(f"{edge.init.name}0: {edge.init.init}")
        out[init] = _Drawn({**node_styles["state"], "label": label, "tooltip": init})
    return [replace(edge, u=at(edge.u, t - edge.delay), v=at(edge.v, t)) if t >= edge.delay
            else replace(edge, u=init, v=at(edge.v, t), delay=0) for t in range(steps)]


# ---- emitting DOT


def _emit(name: str, nodes: dict[str, _Drawn], edges: list[_Edge], steps: int | None):
    dot = graphviz.Digraph(name=name)
    dot.attr(rankdir="TB", newrank="true", label=graphviz.escape(name), labelloc="t",
             fontname="Helvetica")
    dot.attr("node", fontname="Helvetica", fontsize="11")
    dot.attr("edge", fontname="Helvetica", fontsize="9", arrowsize="0.7")
    _fill(dot, [(node, d.path, d.attrs) for node, d in nodes.items()])
    layers = _layers(edges)
    styled = (_edge_style(edge, steps is not None, *layers) for edge in edges)
    for tail, head, attrs in {(t, h, a["label"]): (t, h, a) for t, h, a in styled}.values():
        dot.edge(tail, head, **attrs)  # one loop per box, however many states it holds
    if steps is not None:  # steps left to right: an invisible anchor fans out to them in order
        first = next(n for n in nodes if n.endswith("@0"))[:-2]
        dot.node("@steps", shape="point", style="invis", ordering="out")
        for t in range(steps):
            dot.edge("@steps", f"{first}@{t}", style="invis")
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
            sub.attr(label=graphviz.escape(label), **_CLUSTER)
            _fill(sub, inner)


def _layers(edges: list[_Edge]) -> tuple[dict, dict]:
    """Each node's layer (longest forward path to it) and fan-out, over the forward edges."""
    dag = nx.DiGraph((e.u, e.v) for e in edges if not e.delay and e.u != e.v)
    try:
        return ({n: i for i, gen in enumerate(nx.topological_generations(dag)) for n in gen},
                dict(dag.out_degree))
    except nx.NetworkXUnfeasible:
        return {}, {}  # a shared block used twice in a row; leave the layout to dot


def _edge_style(edge: _Edge, unrolled: bool, layer: dict, fanout: dict) -> tuple[str, str, dict]:
    """(tail, head, attributes) of an edge, laid out by how many layers it spans."""
    shapes = ", ".join(dict.fromkeys(str(t.step() if unrolled else t) for t in edge.types))
    attrs = {**_RECURRENT, "label": shapes} if edge.state else {"label": shapes}
    span = layer.get(edge.v, 0) - layer.get(edge.u, 0)
    if edge.delay and not unrolled:  # drawn back to the state it feeds
        return edge.u, edge.v, {**attrs, "style": "dashed", "constraint": "false",
                                "label": f"t-{edge.delay}"}
    if edge.delay and span < 0:  # declared head to tail, so step t+1 cannot sink below step t
        return edge.v, edge.u, {**attrs, "dir": "back", "weight": "0"}
    if edge.delay:
        return edge.u, edge.v, {**attrs, "constraint": "false"}
    if span > 1 and fanout.get(edge.u, 0) > 1 and layer[edge.u]:
        attrs["weight"] = "0"  # a skip out of an inner fork: the main path stays straight
    return edge.u, edge.v, attrs


# ---- writing files


def render(graph: nx.DiGraph, path: str, fmt: str | None = None, **options) -> str:
    """Draw `graph` into the file `path`, atomically; `fmt` defaults to its extension.

    `options` are those of `to_dot`. DOT text needs no Graphviz install. Returns `path`.

    Raises
    ------
    SpecError
        For a format other than svg, png, pdf or dot; for svg, png or pdf when Graphviz's
        `dot` program is not installed; when the file cannot be written.
    """
    fmt = (fmt or os.path.splitext(path)[1].lstrip(".")).lower()
    if fmt not in FORMATS:
        raise SpecError(f"cannot draw '{path}': unknown format '{fmt}'", None,
                        "use one of " + ", ".join(f".{f}" for f in FORMATS))
    dot = to_dot(graph, **options)
    _write_atomic(path, dot.source.encode() if fmt == "dot" else _pipe(dot, fmt, path))
    return path


def _pipe(dot: graphviz.Digraph, fmt: str, path: str) -> bytes:
    try:
        if shutil.which("dot") is None:
            raise graphviz.ExecutableNotFound(["dot"])
        return dot.pipe(format=fmt, quiet=True)
    except graphviz.ExecutableNotFound:
        raise SpecError(f"cannot draw {path}: Graphviz's `dot` program is not installed",
                        None, INSTALL_HINT) from None
    except graphviz.CalledProcessError as exc:
        raise SpecError(f"Graphviz failed to draw {path}: {(exc.stderr or b'').decode()}",
                        None, "write -o file.dot to see the DOT text") from None


def _write_atomic(path: str, data: bytes) -> None:
    """Write a temporary file in the same folder, then rename it over `path`."""
    folder, name = os.path.split(os.path.abspath(path))
    temp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open, not mkstemp: the drawing gets the umask's mode, not 0600
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except OSError as exc:
        if os.path.exists(temp):
            os.unlink(temp)
        raise SpecError(f"cannot write {path}: {exc.strerror}", None,
                        "check that its folder exists and is writable") from None
