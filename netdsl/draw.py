"""Draw a typed graph with Graphviz: blocks as clusters, shapes on edges, recurrence drawn back.

`to_dot` builds a `graphviz.Digraph` without running Graphviz; `render` writes it as svg,
png or pdf (which needs Graphviz's `dot` program) or as DOT text (which does not).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from itertools import accumulate

import graphviz
import networkx as nx

from netdsl.atomic import write_bytes
from netdsl.errors import SpecError, UsageError
from netdsl.spelling import call as _call
from netdsl.unroll import INIT_KIND, unroll as unroll_steps

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
_RECURRENT = {"color": "#7a3db8", "fontcolor": "#7a3db8"}
_CLUSTER = {"style": "rounded,dashed", "color": "#999999", "fontsize": "10", "labeljust": "l"}
# unrolled, each layer's copies share one fill, so shared weights show across the steps
_WEIGHT_FILLS = ("#e2f0cb", "#cde7f0", "#fff1c1", "#dfe7fd", "#fde2e4", "#d7f2e3", "#fce1c8",
                 "#eaeaea")


@dataclass
class _Drawn:
    """One shape in the picture: its Graphviz attributes and the clusters it sits in."""

    attrs: dict
    path: tuple = ()          # ((cluster key, label), ...), outermost first
    step: int | None = None   # unrolled: the time step it belongs to (0: an initial value)


@dataclass
class _Edge:
    u: str
    v: str
    delay: int
    recurrent: bool = False                    # carries a state from one step to the next
    types: list = field(default_factory=list)  # the tensors it carries


def to_dot(graph: nx.DiGraph, *, collapse: bool | int = False, unroll: int | None = None
           ) -> graphviz.Digraph:
    """Build the Graphviz diagram of a typed graph (the result of `infer_shapes`).

    Parameters
    ----------
    graph : the typed graph, e.g. `check_file(path).graph`.
    collapse : False draws every block instance as a cluster of its layers; True draws
        each top-level instance as one box, and consecutive instances of one `x N` stage
        as one "basic x 3" box; an int n keeps n-1 levels of clusters and collapses level n.
    unroll : draw this many time steps side by side (`netdsl.unroll` names the copies
        `h@1` .. `h@T` and a state's initial value `h@0`); each layer's copies share a
        fill colour, as they share their weights.

    Raises
    ------
    SpecError
        When `collapse` is negative, `unroll` is below 1, or there is no state to unroll.

    Example
    -------
    >>> to_dot(check_file("specs/resnet20.net").graph, collapse=True).source  # doctest: +SKIP
    """
    if int(collapse) < 0:
        raise SpecError(f"collapse depth must be 0 or more, got {collapse}")
    if unroll is not None:
        graph = unroll_steps(graph, unroll)
    nodes, edges = _view(graph, int(collapse), unroll is not None)
    return _emit(graph.graph["name"], nodes, edges, unroll)


# ---- the view: graph nodes, or collapsed blocks, and the edges between them


def _view(graph: nx.DiGraph, depth: int, steps: bool) -> tuple[dict[str, _Drawn], list[_Edge]]:
    boxes = _boxes(graph, depth) if depth else {}
    drawn_as = {n: boxes[n][0] if n in boxes else n for n in graph}
    nodes: dict[str, _Drawn] = {}
    for node, data in graph.nodes(data=True):
        step = data.get("step")
        if node not in boxes:
            nodes[node] = _Drawn(_node_attrs(graph, node), _path(data["scope"], step), step)
        elif drawn_as[node] not in nodes:
            nodes[drawn_as[node]] = _Drawn(_box_attrs(graph, boxes[node], drawn_as, steps),
                                           _path(data["scope"][:depth - 1], step), step)
    edges: dict[tuple, _Edge] = {}
    for u, v, data in graph.edges(data=True):
        key = (drawn_as[u], drawn_as[v], data["delay"], v if data["delay"] else None)
        if key[0] == key[1] and not data["delay"]:
            continue  # inside one collapsed box
        recurrent = bool(data["delay"]) or graph.nodes[u]["kind"] == INIT_KIND
        edges.setdefault(key, _Edge(*key[:3], recurrent)).types.append(graph.nodes[u]["type"])
    return nodes, list(edges.values())


def _boxes(graph: nx.DiGraph, depth: int) -> dict[str, tuple]:
    """Each node inside a block instance at `depth` -> its box (id, block, instance names,
    members); consecutive instances made by one `x N` stage share a box. Unrolled, each
    step has its own boxes, `[cell1]@2`, and initial values stay outside them."""
    by_path, boxes, previous = {}, {}, None
    for node, data in graph.nodes(data=True):  # definition order
        scope, step = data["scope"], data.get("step")
        if len(scope) < depth or data["kind"] == INIT_KIND:
            previous = None
            continue
        path, frame = (step, *(f.name for f in scope[:depth])), scope[depth - 1]
        if path not in by_path:
            joins = (previous and frame.repeat and previous[1].repeat == frame.repeat
                     and previous[0][:-1] == path[:-1])
            at = f"@{step}" if step is not None else ""
            by_path[path] = by_path[previous[0]] if joins else (
                "[" + "/".join(path[1:]) + "]" + at, frame.block, [], [])
            by_path[path][2].append(frame.name)
        previous = (path, frame)
        boxes[node] = by_path[path]
        boxes[node][3].append(node)
    return boxes


def _path(frames, step: int | None = None) -> tuple:
    """The clusters a node sits in; unrolled, a step's cluster holds its block instances."""
    if step == 0:
        return ()  # an initial value belongs to no step
    at = f"@{step}" if step is not None else ""
    keys = accumulate((f.name for f in frames), lambda a, b: f"{a}/{b}")
    blocks = tuple((key + at, f"{f.name} : {f.block}") for key, f in zip(keys, frames))
    return blocks if step is None else ((f"t{step}", f"t = {step}"), *blocks)


def _node_attrs(graph: nx.DiGraph, node: str) -> dict:
    data = graph.nodes[node]
    kind, op = data["kind"], data["op"]
    name = data.get("origin", node)  # unrolled copies are drawn as the node they copy
    losses = {n: loss for loss, n in graph.graph["losses"].items()}
    tip = {"tooltip": f"{node}  {data['span']}" if data["span"] else node}
    if kind in ("input", "target"):
        return {**node_styles[kind], **tip, "label": _lines(f"{kind} {name}")}
    if kind == INIT_KIND:
        tip = {"tooltip": f"{node}: the initial value of state {data['state'].name}  {data['span']}"}
        return {**node_styles["state"], **tip, "label": _lines(f"{node} = {data['state'].init}")}
    if kind == "state":
        init = [] if "step" in data else [f"state = {data['state'].init}"]  # unrolled: its h@0
        return {**node_styles["state"], **tip, "label": _lines(name, *init)}
    if name in losses:
        title = "loss" if losses[name] == "loss" else f"loss {losses[name]}"
        return {**node_styles["loss"], **tip, "label": _lines(title, _call(op))}
    local = name.rsplit("/", 1)[-1]
    made_up = re.fullmatch(re.escape(op.name) + r"\d+", local)  # a name the expander chose
    if op.join is not None:  # joins are drawn small, with a symbol instead of a call
        named = {} if made_up else {"xlabel": graphviz.escape(local)}
        return {**node_styles["join"], **tip, **named, "label": op.join}
    shares = [f"shares {data['shares']}"] if data.get("shares") else []
    return {**node_styles["op"], **tip, **_weight_style(graph, node),
            "label": _lines(_call(op) if made_up else f"{local} = {_call(op)}", *shares)}


def _weight_style(graph: nx.DiGraph, node: str) -> dict:
    """Unrolled: one fill per set of weights, and a tooltip naming whose weights a copy uses."""
    owner = graph.nodes[node].get("params")
    if owner is None:
        return {}
    fill = _WEIGHT_FILLS[list(graph.graph["weights"]).index(owner) % len(_WEIGHT_FILLS)]
    tip = f"{node}: the weights of {owner}, the same at every step  {graph.nodes[node]['span']}"
    return {"fillcolor": fill, "tooltip": tip}


def _box_attrs(graph: nx.DiGraph, box: tuple, drawn_as: dict, steps: bool) -> dict:
    box_id, block, names, members = box
    outputs = [m for m in members if any(drawn_as[s] != box_id for s in graph.successors(m))]
    types = [graph.nodes[m]["type"] for m in outputs or members[-1:]]
    shapes = ", ".join(dict.fromkeys(str(t.step() if steps else t) for t in types))
    title = ([f"{block} x {len(names)}", f"{names[0]} .. {names[-1]}"] if len(names) > 1
             else [f"{names[0]} : {block}"])
    shared = steps and any(graph.nodes[m].get("params") for m in members)
    tip = f"{box_id}: the same weights at every step" if shared else box_id
    return {**node_styles["block"], "label": _lines(*title, shapes), "tooltip": tip}


def _lines(*lines: str) -> str:
    return r"\n".join(graphviz.escape(line) for line in lines)


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
    if steps is not None:  # steps left to right: one node's copies in a row, chained in order
        first = next(n for n, d in nodes.items() if d.step == 1).rpartition("@")[0]
        with dot.subgraph() as row:
            row.attr(rank="same")
            for t in range(1, steps):
                row.edge(f"{first}@{t}", f"{first}@{t + 1}", style="invis")
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
    attrs = {**_RECURRENT, "label": shapes} if edge.recurrent else {"label": shapes}
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


# Graphviz's cairo renderer shrinks a bitmap larger than it can make (32767 pixels a side)
# and says so on stderr: "Scaling by 0.0852 to fit"
_SCALED = re.compile(r"[Ss]caling by ([0-9.]+)")
RASTER = ("png",)


def render(graph: nx.DiGraph, path: str, fmt: str | None = None, warn=None, **options) -> str:
    """Draw `graph` into the file `path`, atomically; `fmt` defaults to its extension.

    `options` are those of `to_dot`. DOT text needs no Graphviz install. `warn(text)` is
    told when Graphviz shrank a bitmap to fit its size limit (its labels unreadable).
    Returns `path`.

    Raises
    ------
    UsageError
        For a format other than svg, png, pdf or dot.
    SpecError
        For svg, png or pdf when Graphviz's `dot` program is not installed; when the
        file cannot be written.
    """
    fmt = (fmt or os.path.splitext(path)[1].lstrip(".")).lower()
    if fmt not in FORMATS:
        raise UsageError(f"cannot draw '{path}': unknown format '{fmt}'", None,
                         "use one of " + ", ".join(f".{f}" for f in FORMATS))
    dot = to_dot(graph, **options)
    data = dot.source.encode() if fmt == "dot" else _pipe(dot, fmt, path, warn)
    try:
        write_bytes(path, data)
    except OSError as exc:
        raise SpecError(f"cannot write {path}: {exc.strerror}", None,
                        "check that its folder exists and is writable") from None
    return path


def _pipe(dot: graphviz.Digraph, fmt: str, path: str, warn) -> bytes:
    """Graphviz's rendering of `dot` as `fmt`; a shrunken bitmap is told to `warn`."""
    program = shutil.which("dot")
    if program is None:
        raise SpecError(f"cannot draw {path}: Graphviz's `dot` program is not installed",
                        None, INSTALL_HINT)
    done = subprocess.run([program, f"-T{fmt}"], input=dot.source.encode(),
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise SpecError(f"Graphviz failed to draw {path}: {done.stderr.decode().strip()}",
                        None, "write -o file.dot to see the DOT text")
    scaled = _SCALED.search(done.stderr.decode(errors="replace"))
    if scaled and fmt in RASTER and warn is not None:
        stem = os.path.splitext(path)[0]
        warn(f"{path}: the network is too large for a {fmt.upper()} image, so Graphviz "
             f"shrank it to {float(scaled[1]):.0%}, too small to read its labels; draw "
             f"it as {stem}.svg, or with --collapse (blocks as single boxes)")
    return done.stdout
