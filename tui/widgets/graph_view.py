"""The network drawn in the terminal: scrollable, only the rows on screen are rendered."""
from __future__ import annotations

from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from netdsl.tui.graph_canvas import Picture

__all__ = ["GraphView"]

STYLES = {
    "box.input": Style(color="#61afef"), "box.target": Style(color="#e5c07b"),
    "box.state": Style(color="#c678dd"), "box.loss": Style(color="#e06c75"),
    "box.op": Style(color="#dcdcdc"), "box.join": Style(color="#56b6c2", bold=True),
    "box.block": Style(color="#98c379"), "shape": Style(color="#7f848e", italic=True),
    "arrow": Style(color="#8a8a8a"), "recurrent": Style(color="#c678dd"),
    "frame": Style(color="#98c379", dim=True),
}
LINE = Style(color="#8a8a8a")
SELECTED = Style(reverse=True, bold=True)
MARKED = Style(bgcolor="#3d5a80")


class GraphView(ScrollView, can_focus=True):
    """A layered drawing of the checked network; arrows move between nodes.

    Set `picture` after each check; the view posts `NodeSelected` when the user
    picks a box and `ToggleBlock` when they ask to collapse or expand one.
    """

    BINDINGS = [
        # vi's keys as well as the arrows
        Binding("up,k", "move('up')", "Up", show=False),
        Binding("down,j", "move('down')", "Down", show=False),
        Binding("left,h", "move('left')", "Left", show=False),
        Binding("right,l", "move('right')", "Right", show=False),
        Binding("enter", "toggle_block", "Collapse/expand", show=False),
    ]

    selected: reactive[str | None] = reactive(None)
    marked: reactive[str | None] = reactive(None)  # the source of a skip being added

    @dataclass
    class NodeSelected(Message):
        view: "GraphView"
        box: str

    @dataclass
    class ToggleBlock(Message):
        view: "GraphView"
        box: str

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.picture: Picture | None = None
        self.tint: dict[str, Style] = {}  # node -> its colour by a diagnostic (tui.tint)

    def show(self, picture: Picture) -> None:
        """Display a new drawing, keeping the selection when its box is still there."""
        self.picture = picture
        self.virtual_size = Size(picture.width + 2, picture.height)
        if self.selected not in picture.rects:
            self.selected = None
        self.refresh()

    def watch_selected(self, old: str | None, new: str | None) -> None:
        if new is not None:
            self.scroll_to_box(new)
        self.refresh()

    def watch_marked(self) -> None:
        self.refresh()

    def scroll_to_box(self, box: str) -> None:
        if self.picture is None or box not in self.picture.rects:
            return
        r = self.picture.rects[box]
        self.scroll_to_region(Region(r.x, r.y, r.width, r.height), animate=False, force=True)

    def select(self, box: str) -> None:
        """Select a box as the user would: it is shown and `NodeSelected` is posted."""
        self.selected = box
        self.post_message(self.NodeSelected(self, box))

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        row = y + scroll_y
        picture = self.picture
        if picture is None or row >= picture.height:
            return Strip.blank(width)
        text = picture.row_text(row, scroll_x, scroll_x + width)
        styles = [LINE] * len(text)
        for x0, x1, name, box in picture.spans[row]:
            style = self.style_of(name, box)
            for x in range(max(x0, scroll_x), min(x1, scroll_x + width)):
                styles[x - scroll_x] = style
        segments, start = [], 0
        for i in range(1, len(text) + 1):  # one segment per run of one style
            if i == len(text) or styles[i] is not styles[start]:
                segments.append(Segment(text[start:i], styles[start]))
                start = i
        return Strip(segments, width)

    def style_of(self, name: str, box: str | None) -> Style:
        """The one place a drawn piece gets its style: by what it is (`name`, a key of
        STYLES) or a box's colour by a diagnostic (`tint`), then, for a box, whether it
        is selected or marked as a skip's source."""
        style = STYLES.get(name, LINE)
        if box in self.tint and name.startswith("box."):
            style = self.tint[box]
        if box is not None and box == self.selected:
            style = style + SELECTED
        elif box is not None and box == self.marked:
            style = style + MARKED
        return style

    def on_focus(self) -> None:
        if self.selected is None and self.picture is not None and self.picture.rects:
            self.select(next(iter(self.picture.rects)))

    def on_click(self, event) -> None:
        if self.picture is None:
            return
        box = self.picture.box_at(event.x + self.scroll_offset.x, event.y + self.scroll_offset.y)
        if box is not None:
            self.select(box)

    def action_toggle_block(self) -> None:
        if self.selected is not None:
            self.post_message(self.ToggleBlock(self, self.selected))

    def action_move(self, direction: str) -> None:
        picture = self.picture
        if picture is None or not picture.rects:
            return
        if self.selected not in picture.rects:
            self.select(next(iter(picture.rects)))
            return
        target = _neighbour(picture, self.selected, direction)
        if target is not None:
            self.select(target)


def _neighbour(picture: Picture, box: str, direction: str) -> str | None:
    """The nearest drawn box above, below, left or right of `box`."""
    here = picture.rects[box]
    cx, cy = here.x + here.width / 2, here.y + here.height / 2
    best, best_cost = None, None
    for other, r in picture.rects.items():
        if other == box:
            continue
        ox, oy = r.x + r.width / 2, r.y + r.height / 2
        dx, dy = ox - cx, oy - cy
        ahead = {"up": -dy, "down": dy, "left": -dx, "right": dx}[direction]
        if ahead <= 0 or (direction in ("left", "right") and r.y != here.y):
            continue
        side = abs(dx) if direction in ("up", "down") else abs(dy)
        cost = ahead + 3 * side
        if best_cost is None or cost < best_cost:
            best, best_cost = other, cost
    return best
