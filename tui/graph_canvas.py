"""Draw a laid-out view graph as rows of box-drawing characters, once per check.

The picture is sparse (a dict of cells per row) so a 2,000-layer network costs
memory in proportion to what is drawn, and the widget renders only the rows and
columns on screen. Lines are merged per cell from direction bits, so a fork reads
as ┬ and a join as ┴, and crossings as ┼.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from netdsl.tui.graph_layout import (DUMMY, ViewBox, ViewGraph, assign_layers, order_layers,
                                     place_columns, view_graph)

__all__ = ["Picture", "Rect", "draw_graph"]

UP, DOWN, LEFT, RIGHT = 1, 2, 4, 8
LINES = {
    UP | DOWN: "│", LEFT | RIGHT: "─", DOWN | RIGHT: "╭", DOWN | LEFT: "╮", UP | RIGHT: "╰",
    UP | LEFT: "╯", UP | DOWN | RIGHT: "├", UP | DOWN | LEFT: "┤", LEFT | RIGHT | DOWN: "┬",
    LEFT | RIGHT | UP: "┴", UP | DOWN | LEFT | RIGHT: "┼", UP: "│", DOWN: "│", LEFT: "─",
    RIGHT: "─",
}
CROSSING = "│"  # a line across passing under one going down: not ┼, which reads as a joint
# border characters by box kind: (top-left, top, top-right, side, bottom-left, bottom-right)
BORDERS = {
    "block": "╔═╗║╚╝", "state": "╭┄╮┆╰╯", "loss": "┏━┓┃┗┛",
}
ROUNDED = "╭─╮│╰╯"


@dataclass(frozen=True)
class Rect:
    """Where a box was drawn: columns x..x+width-1, rows y..y+height-1."""

    x: int
    y: int
    width: int
    height: int

    def contains(self, x: int, y: int) -> bool:
        return self.x <= x < self.x + self.width and self.y <= y < self.y + self.height


@dataclass
class Picture:
    """The drawing: cells per row, styled spans per row, and where each box is."""

    width: int = 0
    height: int = 0
    cells: list[dict[int, str]] = field(default_factory=list)
    # per row: (x0, x1, style, box id) for boxes, labels and recurrent lines
    spans: list[list[tuple[int, int, str, str | None]]] = field(default_factory=list)
    rects: dict[str, Rect] = field(default_factory=dict)
    boxes: dict[str, ViewBox] = field(default_factory=dict)
    box_of: dict[str, str] = field(default_factory=dict)
    layers: list[list[str]] = field(default_factory=list)

    def row_text(self, y: int, x0: int = 0, x1: int | None = None) -> str:
        """The characters of row y between columns x0 and x1."""
        row = self.cells[y] if 0 <= y < self.height else {}
        return "".join(row.get(x, " ") for x in range(x0, self.width if x1 is None else x1))

    def text(self) -> str:
        """The whole picture as plain text (tests and snapshots)."""
        return "\n".join(self.row_text(y).rstrip() for y in range(self.height))

    def box_at(self, x: int, y: int) -> str | None:
        for x0, x1, _, box in self.spans[y] if 0 <= y < self.height else ():
            if box is not None and x0 <= x < x1 and box in self.rects:
                return box
        return None


class _Canvas:
    def __init__(self):
        self.cells: dict[int, dict[int, str]] = {}
        self.bits: dict[tuple[int, int], int] = {}
        self.spans: dict[int, list] = {}
        self.width = 0

    def put(self, x: int, y: int, text: str, style: str | None = None, box: str | None = None):
        row = self.cells.setdefault(y, {})
        for i, char in enumerate(text):
            row[x + i] = char
        self.width = max(self.width, x + len(text))
        if style:
            self.spans.setdefault(y, []).append((x, x + len(text), style, box))

    def line(self, x0: int, y0: int, x1: int, y1: int, owner: str | None = None):
        """An axis-aligned segment, merged with the lines already there. `owner` is the
        edge's source: lines of one source join (a fork), lines of two only cross."""
        if x0 == x1:
            top, bottom = sorted((y0, y1))
            for y in range(top, bottom + 1):
                self._add(x0, y, (UP if y > top else 0) | (DOWN if y < bottom else 0), owner)
        else:
            left, right = sorted((x0, x1))
            for x in range(left, right + 1):
                self._add(x, y0, (LEFT if x > left else 0) | (RIGHT if x < right else 0), owner)

    def _add(self, x: int, y: int, bits: int, owner: str | None) -> None:
        owners = self.bits.setdefault((x, y), {})
        owners[owner] = owners.get(owner, 0) | bits

    def flush_lines(self):
        for (x, y), owners in self.bits.items():
            bits = 0
            for part in owners.values():
                bits |= part
            if bits and x not in self.cells.get(y, {}):
                self.put(x, y, CROSSING if _crossing(owners) else LINES[bits])
        self.bits.clear()


def _crossing(owners: dict) -> bool:
    """Whether lines of different sources only cross in a cell, one across, one down:
    drawn as the vertical passing over, so it does not read as a fork or a join."""
    across = any(b & (LEFT | RIGHT) and not b & (UP | DOWN) for b in owners.values())
    down = any(b & (UP | DOWN) and not b & (LEFT | RIGHT) for b in owners.values())
    return len(owners) > 1 and across and down and not any(
        b & (LEFT | RIGHT) and b & (UP | DOWN) for b in owners.values())


def draw_graph(graph: nx.DiGraph, collapsed: frozenset[str] = frozenset(),
               compact: bool = False) -> Picture:
    """Lay out and draw a typed graph.

    Parameters
    ----------
    graph : a checked graph (`check_text(...).graph`).
    collapsed : block instance paths ('stage1', 'stage1/basic2') drawn as one box each.
    compact : one-row boxes with op names only and no shapes: the overview zoom.
    """
    view = view_graph(graph, collapsed, compact)
    pad = 2 if compact else 4  # border and a space each side
    for box in view.boxes.values():
        box.width = 1 if box.kind == DUMMY else len(box.label) + pad
    layers = assign_layers(view)
    order_layers(view, layers)
    width = place_columns(view, layers, gap=2 if compact else 3)
    canvas, rects = _Canvas(), {}
    box_height = 1 if compact else 3
    preds: dict[str, list[str]] = {n: [] for n in view.boxes}
    for u, v in view.edges:
        preds[v].append(u)
    y = 0
    for i, layer in enumerate(layers):
        for node in layer:
            box = view.boxes[node]
            if box.kind == DUMMY:
                canvas.line(box.x, y, box.x, y + box_height - 1)
                canvas.line(box.x, y - 1, box.x, y + box_height)  # joins the gaps either side
            else:
                rects[node] = Rect(box.x, y, box.width, box_height)
                _draw_box(canvas, box, y, compact)
        y += box_height
        if i + 1 < len(layers):
            y = _draw_gap(canvas, view, layer, layers[i + 1], y, compact)
    canvas.flush_lines()
    y = _draw_delayed(canvas, view, rects, width, y)
    _draw_frames(canvas, view, rects)
    height = max(y, max(canvas.cells, default=-1) + 1)
    return Picture(max(width, canvas.width), height,
                   [canvas.cells.get(r, {}) for r in range(height)],
                   [canvas.spans.get(r, []) for r in range(height)],
                   rects, view.boxes, view.box_of, layers)


def _draw_frames(canvas: _Canvas, view: ViewGraph, rects: dict[str, Rect]) -> None:
    """A bracket right of each expanded block instance, from its first box's row to its
    last one's, just clear of what is drawn on those rows; a nested block's bracket right
    of its parent's. The label (path and call) follows the brackets on the frame's first
    row, or on the next row when an enclosing frame's label is there."""
    spans = {}
    for path, (label, inside) in view.frames.items():  # outer frames first
        drawn = [rects[b] for b in inside if b in rects]
        if drawn:
            spans[path] = (min(r.y for r in drawn), max(r.y + r.height - 1 for r in drawn),
                           label)
    right = {y: max(row, default=-1) for y, row in canvas.cells.items()}
    column: dict[str, int] = {}
    for path, (top, bottom, _) in spans.items():
        parent = path.rsplit("/", 1)[0] if "/" in path else None
        while parent is not None and parent not in column:  # a collapsed parent: none drawn
            parent = parent.rsplit("/", 1)[0] if "/" in parent else None
        column[path] = max([2 + right.get(y, -1) for y in range(top, bottom + 1)]
                           + ([column[parent] + 2] if parent else []))
        x = column[path]
        if top == bottom:
            canvas.put(x, top, "]", "frame", None)
            continue
        canvas.put(x, top, "╮", "frame", None)
        for y in range(top + 1, bottom):
            canvas.put(x, y, "│", "frame", None)
        canvas.put(x, bottom, "╯", "frame", None)
    taken: set[int] = set()
    for path, (top, bottom, label) in spans.items():
        row = next(y for y in range(top, top + len(spans) + 1) if y not in taken)
        taken.add(row)
        covering = [column[p] for p, (t, b, _) in spans.items() if t <= row <= b]
        x = 2 + max([column[path], *covering])
        canvas.put(x, row, label, "frame", None)


def _draw_box(canvas: _Canvas, box: ViewBox, y: int, compact: bool) -> None:
    style = f"box.{box.kind}"
    if compact:
        canvas.put(box.x, y, f"[{box.label}]", style, box.id)
        return
    tl, top, tr, side, bl, br = BORDERS.get(box.kind, ROUNDED)
    inner = box.width - 2
    canvas.put(box.x, y, tl + top * inner + tr, style, box.id)
    canvas.put(box.x, y + 1, side + f" {box.label} ".ljust(inner) + side, style, box.id)
    canvas.put(box.x, y + 2, bl + top * inner + br, style, box.id)


def _centre(box: ViewBox) -> int:
    return box.x + box.width // 2


def _slots(box: ViewBox, count: int, compact: bool) -> list[int]:
    """The columns where `count` edges arrive on a box, left to right: the centre for one;
    for more, the first at the centre (under the input the box sits below) and the others
    beside it, spread over the whole top when they do not fit, so no two share a line."""
    centre = _centre(box)
    if count <= 1 or box.kind == DUMMY:
        return [centre] * count
    # inside the corners; the overview's boxes have none, `[×]` takes arrows on its brackets
    left, right = (box.x, box.x + box.width - 1) if compact else (box.x + 1, box.x + box.width - 2)
    step = 2 if centre + 2 * (count - 1) <= right else 1
    if centre + step * (count - 1) <= right:
        return [centre + step * k for k in range(count)]
    return [left + round(k * (right - left) / (count - 1)) for k in range(count)]


def _draw_gap(canvas: _Canvas, view: ViewGraph, upper: list[str], lower: list[str], y: int,
              compact: bool) -> int:
    """Edges from one layer to the next; returns the row where the next layer starts.

    Each edge into a box arrives in a column of its own (`_slots`), its sources taken
    left to right, so two inputs of a join, or one value read twice, stay two lines.
    """
    boxes = view.boxes
    in_upper = set(upper)
    arriving: dict[str, list[str]] = {}
    for u, v in view.edges:
        if u in in_upper:
            arriving.setdefault(v, []).append(u)
    by_source: dict[str, list[int]] = {}  # source -> the columns its edges arrive at
    for v, sources in arriving.items():
        sources = sorted(sources, key=lambda u: _centre(boxes[u]))  # stable: a pair stays
        for u, x in zip(sources, _slots(boxes[v], len(sources), compact)):
            by_source.setdefault(u, []).append(x)
    by_source = {u: by_source[u] for u in upper if u in by_source}  # the layer's order
    # one track (row) per source whose edges bend; sources whose spans overlap get different ones
    spans = []
    for u, targets in by_source.items():
        xs = [_centre(boxes[u])] + targets
        if min(xs) != max(xs):
            spans.append((min(xs), max(xs), u))
    tracks: list[int] = []  # right end of what each track holds
    track_of = {}
    for left, right, u in sorted(spans):
        for t, end in enumerate(tracks):
            if end < left - 1:
                tracks[t] = right
                track_of[u] = t
                break
        else:
            tracks.append(right)
            track_of[u] = len(tracks) - 1
    label_rows = 0 if compact else 1
    first_track = y + label_rows
    arrow_row = first_track + len(tracks)
    stems = sorted(_centre(boxes[u]) for u in by_source)
    for u, targets in by_source.items():
        sx = _centre(boxes[u])
        real_source = boxes[u].kind != DUMMY
        if real_source and not compact:
            canvas.put(sx, y - 1, "┬", f"box.{boxes[u].kind}", u)  # on the bottom border
            room = next((x for x in stems if x > sx), 10**9) - sx - 3
            if boxes[u].shape and room > 2:  # the shape beside the stem, cut before the next
                shape = boxes[u].shape
                canvas.put(sx + 2, y, shape if len(shape) <= room else shape[:room - 1] + "…",
                           "shape", None)
        bend = first_track + track_of[u] if u in track_of else None
        # from the bottom border's ┬; a dummy's line, or an overview box, has none: from
        # the row above, so a bend on the first row still turns up into its source
        top = y if real_source and not compact else y - 1
        for tx in targets:
            if bend is None:
                canvas.line(sx, top, sx, arrow_row, u)
            else:
                canvas.line(sx, top, sx, bend, u)
                canvas.line(sx, bend, tx, bend, u)
                canvas.line(tx, bend, tx, arrow_row, u)
    for v in lower:
        if boxes[v].kind != DUMMY and v in arriving:
            for x in sorted(set(x for targets in by_source.values() for x in targets)
                            & set(_slots(boxes[v], len(arriving[v]), compact))):
                canvas.put(x, arrow_row, "▼" if not compact else "↓", "arrow", None)
    return arrow_row + 1


def _draw_delayed(canvas: _Canvas, view: ViewGraph, rects: dict[str, Rect], width: int,
                  bottom: int) -> int:
    """Recurrent edges: dashed, up the right margin, from the value back to its state."""
    for k, (u, v, delay) in enumerate(view.delayed):
        if u not in rects or v not in rects:
            continue
        su, sv = rects[u], rects[v]
        margin = width + 3 + 4 * k
        yu, yv = su.y + su.height // 2, sv.y + sv.height // 2
        occupied = canvas.cells
        for x in range(su.x + su.width, margin):
            if x not in occupied.get(yu, {}):
                canvas.put(x, yu, "╌", "recurrent", None)
        for x in range(sv.x + sv.width + 1, margin):
            if x not in occupied.get(yv, {}):
                canvas.put(x, yv, "╌", "recurrent", None)
        canvas.put(sv.x + sv.width, yv, "◀", "recurrent", None)
        top, low = sorted((yu, yv))
        for y in range(top + 1, low):
            canvas.put(margin, y, "┆", "recurrent", None)
        canvas.put(margin, yu, "╯" if yu > yv else "╮", "recurrent", None)
        canvas.put(margin, yv, "╮" if yu > yv else "╯", "recurrent", None)
        label = f"t-{delay}"
        canvas.put(margin + 1, (top + low) // 2, label, "recurrent", None)
    return bottom
