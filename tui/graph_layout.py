"""Layered layout of a typed graph for the terminal: which boxes, in which layer, at which column.

The view graph has one box per node, except that every node inside a collapsed block
instance is drawn as that instance's box. Layers come from the longest forward path
(sources sink to just above their first consumer, so a target does not drag a line
down the whole picture); edges that span several layers pass through one-column
dummy boxes, so a skip connection is a line of its own beside the main path. The
order inside a layer comes from barycentre sweeps and the columns from an
order-preserving least-squares fit to the neighbours' centres, which keeps chains
straight and centres forks and joins over their branches.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import networkx as nx

from netdsl.spelling import call as call_text  # one spelling of a layer for both drawings

__all__ = ["ViewBox", "ViewGraph", "view_graph", "assign_layers", "order_layers", "place_columns",
           "block_paths", "box_label", "frame_label"]

DUMMY = "dummy"
MAX_LABEL = 36


@dataclass
class ViewBox:
    """One box of the picture: a graph node, a collapsed block instance, or a dummy."""

    id: str
    kind: str                      # input, target, state, op, loss, join, block or dummy
    label: str = ""
    shape: str = ""                # the tensor it sends on, as text
    members: tuple[str, ...] = ()  # the graph nodes it stands for
    layer: int = 0
    x: int = 0
    width: int = 1


@dataclass
class ViewGraph:
    """Boxes, forward edges between them (a pair twice when a node reads one value twice),
    and the delayed (recurrent) edges apart."""

    boxes: dict[str, ViewBox]
    edges: list[tuple[str, str]]
    delayed: list[tuple[str, str, int]] = field(default_factory=list)
    box_of: dict[str, str] = field(default_factory=dict)  # graph node -> box id
    # expanded block instance path -> its frame's label and the boxes inside it, outer first
    frames: dict[str, tuple[str, list[str]]] = field(default_factory=dict)


def block_paths(graph: nx.DiGraph) -> dict[str, str]:
    """Every block instance path ('stage1', 'stage1/basic2') -> the block's name."""
    paths = {}
    for _, scope in graph.nodes(data="scope"):
        for depth in range(1, len(scope) + 1):
            paths.setdefault("/".join(f.name for f in scope[:depth]), scope[depth - 1].block)
    return paths


def frame_label(path: str, frame) -> str:
    """A block instance as its frame names it: its path and its call with the values
    (`stage2/basic1 : basic(32, stride=2)`), without the repetition note errors give."""
    return f"{path} : {frame.call.split(', the ', 1)[0] or frame.block}"


def _collapsed_path(scope, collapsed: frozenset[str]) -> str | None:
    """The outermost collapsed block instance the node sits in."""
    for depth in range(1, len(scope) + 1):
        path = "/".join(f.name for f in scope[:depth])
        if path in collapsed:
            return path
    return None


def box_label(graph: nx.DiGraph, node: str, compact: bool = False) -> tuple[str, str]:
    """(kind, label) of a graph node's box."""
    data = graph.nodes[node]
    kind, op = data["kind"], data["op"]
    local = node.rsplit("/", 1)[-1]
    if kind in ("input", "target"):
        return kind, f"{kind} {local}"
    if kind == "state":
        source = data["inputs"][0][0].rsplit("/", 1)[-1]
        return "state", f"{local} ⟲ {source}"
    losses = {n: name for name, n in graph.graph["losses"].items()}
    if node in losses:
        name = "loss" if losses[node] == "loss" else f"loss {losses[node]}"
        return "loss", name if compact else f"{name}: {op.name}"
    if op.operator is not None:  # arithmetic joins are drawn as their symbol
        return "join", op.join
    made_up = re.fullmatch(re.escape(op.name) + r"\d+", local)  # a name the expander chose
    text = op.name if compact else call_text(op)
    return "op", _clip(text if made_up or compact else f"{local} = {text}")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[:MAX_LABEL - 1] + "…"


def view_graph(graph: nx.DiGraph, collapsed: frozenset[str] = frozenset(),
               compact: bool = False) -> ViewGraph:
    """The boxes and edges to draw, with the blocks in `collapsed` drawn as one box each."""
    paths = block_paths(graph)
    boxes: dict[str, ViewBox] = {}
    box_of: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    frames: dict[str, tuple[str, list[str]]] = {}
    for node, data in graph.nodes(data=True):  # definition order
        path = _collapsed_path(data["scope"], collapsed)
        if path is None:
            kind, label = box_label(graph, node, compact)
            boxes[node] = ViewBox(node, kind, label, _shape(graph, node), (node,))
            box_of[node] = node
        else:
            box_id = f"[{path}]"
            box_of[node] = box_id
            members.setdefault(box_id, []).append(node)
            if box_id not in boxes:
                name = path.rsplit("/", 1)[-1]
                boxes[box_id] = ViewBox(box_id, "block", f"▸ {name} : {paths[path]}")
        scope = data["scope"]
        for depth in range(1, len(scope) + 1):  # the expanded blocks around the box
            inside = "/".join(f.name for f in scope[:depth])
            if inside == path:
                break
            frames.setdefault(inside, (frame_label(inside, scope[depth - 1]), []))[1] \
                .append(box_of[node])
    # one edge per input a node reads (`x * x` reads x twice: two edges, drawn apart), one
    # per source into a collapsed block's box
    edges: dict[tuple, None] = {}
    delayed: dict[tuple[str, str], int] = {}
    for u, v, data in graph.edges(data=True):
        a, b = box_of[u], box_of[v]
        if data["delay"]:
            delayed.setdefault((a, b), data["delay"])
        elif a != b:
            for port in data["ports"] if b == v else (None,):
                edges[(a, b, port)] = None
    for box_id, nodes in members.items():
        box = boxes[box_id]
        box.members = tuple(nodes)
        outputs = [n for n in nodes if any(box_of[s] != box_id for s in graph.successors(n))]
        box.shape = ", ".join(dict.fromkeys(_shape(graph, n) for n in outputs or nodes[-1:]))
        if not compact:
            box.label = _clip(f"{box.label}  ({len(nodes)} nodes)")
    outer_first = sorted(frames.items(), key=lambda f: f[0].count("/"))
    return ViewGraph(boxes, [(a, b) for a, b, _ in edges],
                     [(a, b, k) for (a, b), k in delayed.items()], box_of,
                     {path: (label, list(dict.fromkeys(inside)))
                      for path, (label, inside) in outer_first})


def _shape(graph: nx.DiGraph, node: str) -> str:
    t = graph.nodes[node].get("type")
    return str(t) if t is not None else "?"


def assign_layers(view: ViewGraph) -> list[list[str]]:
    """Layers of box ids, top to bottom, with dummy boxes on edges that skip layers.

    Edges that span layers are replaced in `view.edges` by chains through the dummies.
    """
    dag = nx.DiGraph()
    dag.add_nodes_from(view.boxes)
    dag.add_edges_from(view.edges)
    if not nx.is_directed_acyclic_graph(dag):  # a shared block used twice in a row
        dag.remove_edges_from([e for e in nx.find_cycle(dag)][-1:])
    layer: dict[str, int] = {}
    for node in nx.topological_sort(dag):
        layer[node] = max((layer[p] + 1 for p in dag.predecessors(node)), default=0)
    # sources sit just above their first consumer
    for node in dag:
        if dag.in_degree(node) == 0 and dag.out_degree(node):
            layer[node] = max(layer[node], min(layer[s] for s in dag.successors(node)) - 1)
    edges = []
    times = Counter(view.edges)
    for u, v in dag.edges:  # without the edge that closed a cycle
        for lane in range(times[(u, v)]):  # a second edge of a pair: dummies of its own
            chain = [u]
            for step in range(layer[u] + 1, layer[v]):
                dummy = f"{u}→{v}#{step}" + (f"~{lane}" if lane else "")
                view.boxes[dummy] = ViewBox(dummy, DUMMY, shape=view.boxes[u].shape)
                layer[dummy] = step
                chain.append(dummy)
            chain.append(v)
            edges += list(zip(chain, chain[1:]))
    view.edges = edges
    layers: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for node in view.boxes:  # definition order is the first guess at the order
        view.boxes[node].layer = layer[node]
        layers[layer[node]].append(node)
    return layers


def order_layers(view: ViewGraph, layers: list[list[str]], sweeps: int = 4) -> None:
    """Reduce crossings in place: sort each layer by its neighbours' mean position."""
    preds: dict[str, list[str]] = {n: [] for n in view.boxes}
    succs: dict[str, list[str]] = {n: [] for n in view.boxes}
    for u, v in view.edges:
        preds[v].append(u)
        succs[u].append(v)
    for sweep in range(sweeps):
        down = sweep % 2 == 0
        indices = range(1, len(layers)) if down else range(len(layers) - 2, -1, -1)
        neighbours = preds if down else succs
        for i in indices:
            adjacent = {n: k for k, n in enumerate(layers[i - 1 if down else i + 1])}
            current = {n: k for k, n in enumerate(layers[i])}

            def key(node, adjacent=adjacent, current=current):
                near = [adjacent[m] for m in neighbours[node] if m in adjacent]
                return sum(near) / len(near) if near else current[node]

            layers[i].sort(key=key)


def place_columns(view: ViewGraph, layers: list[list[str]], gap: int = 2) -> int:
    """Set each box's x, in layer order, under its first input; returns the width.

    Top down, a box wants the centre of its leftmost input and is pushed right only
    as far as its left neighbour needs: the first branch of a fork continues
    straight down, later branches step aside, and a join sits under its first
    branch, so the main path of a network with hundreds of residual blocks stays one
    straight column. Sources (targets, states) follow their consumers afterwards.
    """
    preds: dict[str, list[str]] = {n: [] for n in view.boxes}
    succs: dict[str, list[str]] = {n: [] for n in view.boxes}
    for u, v in view.edges:
        preds[v].append(u)
        succs[u].append(v)
    boxes = view.boxes

    def centre(node: str) -> int:
        return boxes[node].x + boxes[node].width // 2

    def leftmost(nodes: list[str]) -> int:
        return min(centre(n) for n in nodes)

    for layer in layers:
        layer.sort(key=lambda n: not preds[n])  # stable: sources after the boxes fed from above
        edge = None
        for node in layer:
            box = boxes[node]
            wish = leftmost(preds[node]) - box.width // 2 if preds[node] else 0
            box.x = wish if edge is None else max(wish, edge + gap)
            edge = box.x + box.width
    for i in range(len(layers) - 1, -1, -1):  # sources move to sit over their consumers
        layer = layers[i]
        for k, node in enumerate(layer):
            if preds[node] or not succs[node]:
                continue
            box = boxes[node]
            low = boxes[layer[k - 1]].x + boxes[layer[k - 1]].width + gap if k else -10**9
            high = boxes[layer[k + 1]].x - gap - box.width if k + 1 < len(layer) else 10**9
            box.x = min(max(leftmost(succs[node]) - box.width // 2, low), high) \
                if low <= high else box.x
    left = min((b.x for b in boxes.values()), default=0)
    for box in boxes.values():
        box.x -= left
    return max((b.x + b.width for b in boxes.values()), default=0)


def _fit_in_order(wanted: list[float], spans: list[int]) -> list[int]:
    """Positions closest (least squares) to `wanted` with x[i+1] >= x[i] + spans[i].

    Pool-adjacent-violators on the positions shifted by their running offsets.
    """
    offsets, total = [], 0
    for span in spans:
        offsets.append(total)
        total += span
    blocks: list[list[float]] = []  # [mean, count]
    for w, off in zip(wanted, offsets):
        blocks.append([w - off, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * count) / (blocks[-1][1] + count),
                          blocks[-1][1] + count]
    shifted = [mean for mean, count in blocks for _ in range(count)]
    return [round(s) + off for s, off in zip(shifted, offsets)]
