"""The builder screen: spec text, graph and inspector, kept in agreement by checking the text.

Every change of the text (typed or made by a visual edit) schedules a check in a
worker thread; the check's result (errors, or the network, its costs and its
drawing) comes back as a `Checked` message and is ignored if the text changed
again meanwhile. Visual edits are text edits: they go through the editor, so
its undo history covers them, and they are applied only if the spec still checks.

The screen keeps the layout, the keys, the checking, the selection shared by text and
graph, and the graph view; the visual edits are in edit_flow.py and the file actions
in file_flow.py, mixed into the screen.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static, TextArea

from netdsl import edits
from netdsl.errors import SpecError
from netdsl.imports import spec_name
from netdsl.tui.checking import CheckResult, check_and_draw
from netdsl.tui.graph_canvas import Picture, draw_graph
from netdsl.tui.graph_layout import block_paths
from netdsl.tui.keys import Key, key_table
from netdsl.tui.screens.dialogs import AskPath, JumpTo
from netdsl.tui.screens.edit_flow import EditFlow
from netdsl.tui.screens.file_flow import FileFlow
from netdsl.tui.screens.help import HelpScreen
from netdsl.tui.screens.tint_flow import TintFlow
from netdsl.tui.screens.train import TrainScreen
from netdsl.tui.widgets.graph_view import GraphView
from netdsl.tui.widgets.inspector import Inspector
from netdsl.tui.widgets.spec_editor import SpecEditor

__all__ = ["BuilderScreen"]

CHECK_DELAY = 0.3      # seconds of quiet typing before a check


class BuilderScreen(EditFlow, FileFlow, TintFlow, Screen):
    """Edit a spec as text or as a graph; see docs/tui.md for the keys."""

    # every key, the mixed-in flows' too: Textual collects BINDINGS only from the classes
    # of its own widgets and screens, not from mixins
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("f2", "save_as", "Save as", priority=True),
        Binding("ctrl+o", "open", "Open", priority=True),
        Binding("f5", "train", "Train", priority=True),
        Binding("f6", "export", "Export", priority=True),
        Binding("f7", "zoom", "Zoom", priority=True),
        Binding("ctrl+z", "undo", "Undo", show=False),
        Binding("ctrl+y", "redo", "Redo", show=False),
        Binding("i", "insert", "Insert after"),
        Binding("d,delete", "delete", "Delete"),
        Binding("e", "edit_arguments", "Edit"),
        Binding("s", "skip", "Skip from/to"),
        Binding("c", "collapse", "Collapse"),
        Binding("C", "collapse_all", "Collapse all", show=False),
        Binding("E", "expand_all", "Expand all", show=False),
        Binding("ctrl+g", "jump", "Go to node", priority=True),
        Binding("slash", "jump", "Go to node", show=False),
        Binding("escape", "cancel_skip", "Cancel skip", show=False),
        Binding("f1", "help", "Keys", priority=True, show=False),
        Binding("question_mark", "help", "Keys", show=False),
        Binding("m", "colour_by", "Colour by diagnostics", show=False),
    ]

    @dataclass
    class Checked(Message):
        generation: int
        result: CheckResult

    def __init__(self, path: str | None, text: str, import_path=()):
        super().__init__()
        self.path = path
        self.import_path = tuple(import_path)  # folders imports may read besides the spec's
        self.saved_text = text
        self.initial_text = text
        self.generation = 0
        self.result: CheckResult | None = None  # the last check of the current text
        self.good: CheckResult | None = None    # the last check that succeeded
        self.collapsed: frozenset[str] = frozenset()
        # a collapsed block's box -> the node selected inside it, selected again on expanding
        self.selected_inside: dict[str, str] = {}
        self.compact = False
        self.skip_source: str | None = None  # the first node of a skip being added
        self.summary = ""  # what the last visual edit did, shown with the next check
        self._check_timer = None
        self._autosave_timer = None

    # ---- layout and accessors

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield SpecEditor(self.initial_text, id="editor")
            with Vertical(id="right"):
                yield GraphView(id="graph")
                yield Inspector(id="inspector")
        yield Static("", id="status")
        yield Footer()

    @property
    def editor(self) -> SpecEditor:
        return self.query_one(SpecEditor)

    @property
    def graph_view(self) -> GraphView:
        return self.query_one(GraphView)

    @property
    def inspector(self) -> Inspector:
        return self.query_one(Inspector)

    @property
    def dirty(self) -> bool:
        return self.editor.text != self.saved_text

    @property
    def file_name(self) -> str:
        return spec_name(self.path or "untitled.net")  # the name checking gives its spans

    def on_mount(self) -> None:
        self.editor.focus()
        self._update_title()
        self.start_check()

    def status(self, message: str) -> None:
        self.query_one("#status", Static).update(message)

    def _update_title(self) -> None:
        self.app.title = f"netc tui — {self.file_name}{' *' if self.dirty else ''}"

    # ---- checking

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self._update_title()
        if self._check_timer is not None:
            self._check_timer.stop()
        self._check_timer = self.set_timer(CHECK_DELAY, self.start_check)
        self.autosave_later()

    def start_check(self) -> None:
        self.generation += 1
        self.check(self.editor.text, self.generation, self.collapsed, self.compact)

    @work(thread=True, exclusive=True, group="check")
    def check(self, text: str, generation: int, collapsed: frozenset[str], compact: bool) -> None:
        result = check_and_draw(text, self.file_name, collapsed, compact, self.import_path)
        self.post_message(self.Checked(generation, result))

    def on_builder_screen_checked(self, message: "BuilderScreen.Checked") -> None:
        if message.generation != self.generation:
            return  # the text changed while this check ran
        result = message.result
        self.result = result
        editor = self.editor
        editor.diagnostics = result.errors or ()
        if result.network is not None:
            self.good = result
            editor.blocks = frozenset(result.network.module.blocks)
            editor.diagnostics = ()
            self.graph_view.show(result.picture)
            self._select_at_cursor()
            self._show_inspector()
            net = result.network
            done, self.summary = self.summary, ""
            self.status(f"{done + ' — ' if done else ''}ok: {net.name}, "
                        f"{net.graph.number_of_nodes():,} nodes, {net.param_count():,} parameters")
        else:
            count = len(result.errors)
            self.status(f"{count} error{'s' * (count > 1)}; the graph shows the last good check"
                        f" — {result.errors[0].message}")
            self._show_error_at_cursor()

    # ---- text <-> graph selection

    def on_text_area_selection_changed(self, event: TextArea.SelectionChanged) -> None:
        if self._show_error_at_cursor():
            return
        self._select_at_cursor()

    def _show_error_at_cursor(self) -> bool:
        row, col = self.editor.cursor_location
        found = self.editor.diagnostic_at(row, col)
        if found is not None:
            self.status(f"{self.file_name}:{found.row + 1}:{found.col + 1}: error: {found.message}")
        return found is not None

    def _select_at_cursor(self) -> None:
        """Select the innermost node written at the cursor (the current one if it still is)."""
        good = self.good
        if good is None or good.text != self.editor.text or not self.editor.has_focus:
            return
        row, col = self.editor.cursor_location
        graph, file = good.network.graph, self.file_name
        picture = good.picture
        current = self.graph_view.selected
        best, best_size = None, None
        for node, span in graph.nodes(data="span"):
            span = edits.edit_span(graph, node, file)
            if span is None or not _span_contains(span, row + 1, col + 1):
                continue
            size = (span.end_line - span.line, span.end_col - span.col)
            box = picture.box_of.get(node)
            if box == current:
                return
            if best_size is None or size < best_size:
                best, best_size = box, size
        if best is not None and best != current:
            self.graph_view.selected = best
            self._show_inspector()

    def on_graph_view_node_selected(self, message: GraphView.NodeSelected) -> None:
        self._show_inspector()
        good = self.good
        if good is None:
            return
        members = good.picture.boxes[message.box].members
        span = edits.edit_span(good.network.graph, members[0], self.file_name) if members else None
        if message.box.startswith("[") and members:  # a collapsed block: its call
            scope = good.network.graph.nodes[members[0]]["scope"]
            depth = message.box[1:-1].count("/") + 1
            span = scope[depth - 1].span if scope[depth - 1].span.file == self.file_name else span
        if span is not None and good.text == self.editor.text:
            self.editor.selection = ((span.line - 1, span.col - 1), (span.end_line - 1, span.end_col))
            self.editor.scroll_cursor_visible()

    def _show_inspector(self) -> None:
        good, box = self.good, self.graph_view.selected
        if good is None or box is None or box not in good.picture.boxes:
            self.inspector.show(None, {}, (), "")
            return
        members = good.picture.boxes[box].members
        self.inspector.show(good.network.graph, good.costs, members, box)

    # ---- graph view: collapse, zoom, jump

    def _relayout(self) -> None:
        if self.good is not None:
            self.layout_graph(self.good, self.collapsed, self.compact)

    @work(thread=True, exclusive=True, group="layout")
    def layout_graph(self, good: CheckResult, collapsed: frozenset[str], compact: bool) -> None:
        picture = draw_graph(good.network.graph, collapsed, compact)
        self.app.call_from_thread(self._show_picture, good, picture)

    def _show_picture(self, good: CheckResult, picture: Picture) -> None:
        if good is self.good:
            before = self.graph_view.selected
            box = self._carried_selection(good.picture, picture)
            good.picture = picture
            self.graph_view.show(picture)
            if box is not None and box != before:  # the same box: the text keeps its selection
                self.graph_view.select(box)
            self._show_inspector()

    def _node_of(self, picture: Picture, box: str) -> str:
        """The graph node a box stands for: a collapsed block's node selected when it was
        collapsed, or its first node."""
        if box in self.selected_inside:
            return self.selected_inside[box]
        members = picture.boxes[box].members if box in picture.boxes else ()
        return members[0] if members else box

    def _carried_selection(self, old: Picture, new: Picture) -> str | None:
        """The box of the new drawing that holds what was selected in the old one: a
        collapsed block's box, or, expanded, the node that was selected inside it."""
        box = self.graph_view.selected
        if box is None or box in new.rects:
            return box
        node = self._node_of(old, box)
        found = new.box_of.get(node)
        for path, drawn in new.boxes.items():  # remember the node inside each block collapsed
            if path.startswith("[") and node in drawn.members:
                self.selected_inside[path] = node
            elif path not in old.rects:  # collapsed now with the selection elsewhere
                self.selected_inside.pop(path, None)
        return found

    def on_graph_view_toggle_block(self, message: GraphView.ToggleBlock) -> None:
        self.action_collapse()

    def action_collapse(self) -> None:
        """Collapse the innermost block around the selected node, or expand a collapsed box."""
        good, box = self.good, self.graph_view.selected
        if good is None or box is None:
            self.status("select a node inside a block first")
            return
        if box.startswith("["):
            self.collapsed = self.collapsed - {box[1:-1]}
        else:
            scope = good.network.graph.nodes[box]["scope"]
            if not scope:
                self.status(f"'{box}' is not inside a block")
                return
            path = "/".join(f.name for f in scope)
            self.collapsed = self.collapsed | {path}
            self.status(f"collapsed {path}; Enter or c on its box expands it")
        self._relayout()  # the selection follows: the block's box, or back inside it

    def action_collapse_all(self) -> None:
        if self.good is not None:
            self.collapsed = frozenset(p for p in block_paths(self.good.network.graph) if "/" not in p)
            self._relayout()

    def action_expand_all(self) -> None:
        self.collapsed = frozenset()
        self._relayout()

    def action_zoom(self) -> None:
        self.compact = not self.compact
        self.status("overview: op names only" if self.compact else "detail: calls and shapes")
        self._relayout()

    def action_jump(self) -> None:
        if self.good is None:
            return
        names = list(self.good.network.graph.nodes)

        def chosen(node: str | None) -> None:
            if node is not None:
                self.go_to(node)

        self.app.push_screen(JumpTo(names), chosen)

    def go_to(self, node: str) -> None:
        """Select a node (a collapsed block's box when it is inside one) in the graph."""
        if self.good is not None:
            box = self.good.picture.box_of.get(node, node)
            self.graph_view.focus()
            self.graph_view.select(box)

    # ---- keys

    def keys(self) -> list[Key]:
        """Every key of the builder, from the bindings Textual dispatches."""
        return key_table(self.app, [("everywhere", self.app), ("graph", self),
                                    ("graph", self.graph_view)])

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.keys()))

    # ---- run and export

    def action_train(self) -> None:
        if self.result is None or self.result.network is None:
            self.status("the spec must check before it can train")
            return
        self.app.push_screen(TrainScreen(self.result.network,
                                         epochs=getattr(self.app, "train_epochs", None),
                                         examples=getattr(self.app, "train_examples", None),
                                         device=getattr(self.app, "device", "cpu"),
                                         spec=self.file_name))

    def action_export(self) -> None:
        if self.good is None:
            self.status("nothing to export: the spec has not checked yet")
            return
        default = os.path.splitext(self.file_name)[0] + ".svg"

        def chosen(path: str | None) -> None:
            if path:
                self.export(self.good.network.graph, path, self.collapsed)

        self.app.push_screen(AskPath("Export diagram (.svg .png .pdf .dot)", default), chosen)

    @work(thread=True, group="export")
    def export(self, graph, path: str, collapsed: frozenset[str]) -> None:
        from netdsl.draw import render as draw  # Graphviz loads when a diagram is exported

        warnings = []
        try:
            draw(graph, path, collapse=bool(collapsed), warn=warnings.append)
            message = f"wrote {path}" + (f"; {warnings[0]}" if warnings else "")
        except SpecError as exc:
            message = f"not exported: {exc}" + (f" ({exc.hint})" if exc.hint else "")
        self.app.call_from_thread(self.status, message)


def _span_contains(span, line: int, col: int) -> bool:
    return (span.line, span.col) <= (line, col) <= (span.end_line, span.end_col + 1)
