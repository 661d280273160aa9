"""The builder screen: spec text, graph and inspector, kept in agreement by checking the text.

Every change of the text (typed or made by a visual edit) schedules a check in a
worker thread; the check's result (errors, or the network, its costs and its
drawing) comes back as a `Checked` message and is ignored if the text changed
again meanwhile. Visual edits are text edits: they go through the editor, so
its undo history covers them, and they are applied only if the spec still checks.
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
from netdsl.driver import CheckFailed, Network, check_text
from netdsl.errors import SpecError, render
from netdsl.ops import OPS
from netdsl.tui.files import NEW_SPEC, Recovery, load_spec, save_spec
from netdsl.tui.graph_canvas import Picture, draw_graph
from netdsl.tui.graph_layout import block_paths
from netdsl.tui.screens.dialogs import AskPath, Choice, JumpTo, LayerForm, PickLayer
from netdsl.tui.widgets.graph_view import GraphView
from netdsl.tui.widgets.inspector import Inspector
from netdsl.tui.widgets.spec_editor import Diagnostic, SpecEditor

__all__ = ["BuilderScreen"]

CHECK_DELAY = 0.3      # seconds of quiet typing before a check
AUTOSAVE_DELAY = 3.0   # seconds after a change before the recovery copy is written


@dataclass
class CheckResult:
    """What one check of the text found: a network with its costs and drawing, or errors."""

    text: str
    network: Network | None = None
    costs: dict | None = None
    picture: Picture | None = None
    errors: list[Diagnostic] | None = None
    first_error: str = ""


def check_and_draw(text: str, file: str, collapsed: frozenset[str], compact: bool) -> CheckResult:
    """Check `text`; on success also cost and draw it (all of this runs off the UI thread)."""
    from netdsl.cost import cost_rows

    try:
        network = check_text(text, file)
    except CheckFailed as exc:
        return CheckResult(text, errors=_diagnostics(exc, file),
                           first_error=render(exc.errors[0], exc.sources))
    except Exception as exc:  # a checker bug must not take the editor down with it
        return CheckResult(text, errors=[Diagnostic(0, 0, 0, 0, f"internal error: {exc!r}")],
                           first_error=f"internal error: {exc!r}")
    costs = {row.node: row for row in cost_rows(network.graph)}
    return CheckResult(text, network, costs, draw_graph(network.graph, collapsed, compact))


def _diagnostics(exc: CheckFailed, file: str) -> list[Diagnostic]:
    found = []
    for error in exc.errors:
        message = error.message + (f" (hint: {error.hint})" if error.hint else "")
        span = error.span
        if span is None or span.file != file:  # unreadable import, or an error in one
            where = f"{span}: " if span else ""
            found.append(Diagnostic(0, 0, 0, 0, where + message))
        else:
            found.append(Diagnostic(span.line - 1, span.col - 1, span.end_line - 1, span.end_col,
                                    message))
    return found


class BuilderScreen(Screen):
    """Edit a spec as text or as a graph; see docs/tui.md for the keys."""

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
        Binding("escape", "cancel_skip", "Cancel", show=False),
    ]

    @dataclass
    class Checked(Message):
        generation: int
        result: CheckResult

    @dataclass
    class EditChecked(Message):
        edit: edits.TextEdit
        result: CheckResult
        form: LayerForm | None

    def __init__(self, path: str | None, text: str):
        super().__init__()
        self.path = path
        self.saved_text = text
        self.initial_text = text
        self.generation = 0
        self.result: CheckResult | None = None  # the last check of the current text
        self.good: CheckResult | None = None    # the last check that succeeded
        self.collapsed: frozenset[str] = frozenset()
        self.compact = False
        self.skip_source: str | None = None
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
        return self.path or "untitled.net"

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
        if self._autosave_timer is not None:
            self._autosave_timer.stop()
        self._autosave_timer = self.set_timer(AUTOSAVE_DELAY, self.autosave)

    def start_check(self) -> None:
        self.generation += 1
        self.check(self.editor.text, self.generation, self.collapsed, self.compact)

    @work(thread=True, exclusive=True, group="check")
    def check(self, text: str, generation: int, collapsed: frozenset[str], compact: bool) -> None:
        result = check_and_draw(text, self.file_name, collapsed, compact)
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

    def autosave(self) -> None:
        if self.dirty:
            Recovery(self.path).write(self.editor.text)

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
            good.picture = picture
            self.graph_view.show(picture)
            self._show_inspector()

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
            self.graph_view.selected = None
        else:
            scope = good.network.graph.nodes[box]["scope"]
            if not scope:
                self.status(f"'{box}' is not inside a block")
                return
            path = "/".join(f.name for f in scope)
            self.collapsed = self.collapsed | {path}
            self.graph_view.selected = None
            self.status(f"collapsed {path}; Enter or c on its box expands it")
        self._relayout()

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
            if node is not None and self.good is not None:
                box = self.good.picture.box_of.get(node, node)
                self.graph_view.focus()
                self.graph_view.select(box)

        self.app.push_screen(JumpTo(names), chosen)

    # ---- visual edits

    def _selected_node(self) -> str | None:
        """The graph node of the selection (a collapsed block: its output node)."""
        good, box = self.good, self.graph_view.selected
        if good is None or box is None or good.text != self.editor.text:
            self.status("select a node in the graph first (the text must check)"
                        if good is None or box is None else "wait for the check to finish")
            return None
        members = good.picture.boxes[box].members
        graph = good.network.graph
        outputs = [m for m in members if any(good.picture.box_of[s] != box
                                             for s in graph.successors(m))]
        return (outputs or list(members))[-1]

    def _propose(self, make, form: LayerForm | None = None) -> None:
        """Compute an edit; check its result in a worker and apply it only if it checks."""
        node = self._selected_node()
        if node is None:
            return
        text, graph = self.editor.text, self.good.network.graph
        try:
            edit = make(text, graph, node)
        except (edits.EditRefused, SpecError) as exc:
            self._refuse(str(exc), form)
            return
        self.trial_check(edit, text, form)

    def _refuse(self, message: str, form: LayerForm | None) -> None:
        if form is not None:
            form.show_error(message)
        else:
            self.status(f"not done: {message}")
            self.app.notify(message, title="Edit not done", severity="warning")

    @work(thread=True, exclusive=True, group="edit")
    def trial_check(self, edit: edits.TextEdit, text: str, form: LayerForm | None) -> None:
        result = check_and_draw(edit.apply(text), self.file_name, self.collapsed, self.compact)
        self.post_message(self.EditChecked(edit, result, form))

    def on_builder_screen_edit_checked(self, message: "BuilderScreen.EditChecked") -> None:
        edit, result, form = message.edit, message.result, message.form
        if result.network is None:
            self._refuse(f"the spec would not check: {result.errors[0].message}", form)
            return
        if form is not None:
            form.dismiss(None)
        self.summary = edit.summary
        self.apply_edit(edit)
        self.status(edit.summary)

    def apply_edit(self, edit: edits.TextEdit) -> None:
        """Replace the edit's range in the editor as one undoable step."""
        editor = self.editor
        document = editor.document
        start = document.get_location_from_index(edit.start)
        end = document.get_location_from_index(edit.end)
        editor.history.checkpoint()
        editor.replace(edit.text, start, end, maintain_selection_offset=False)
        editor.history.checkpoint()

    def action_insert(self) -> None:
        if self._selected_node() is None:
            return
        module_blocks = sorted(self.good.network.module.blocks)
        names = sorted(n for n in OPS if not OPS[n].is_loss) + module_blocks

        def picked(name: str | None) -> None:
            if name is None:
                return
            fields = edits.layer_fields(name, self.good.network.module if self.good else None)
            if not fields:
                self._propose(lambda t, g, n: edits.insert_after(t, g, n, name))
                return
            form = LayerForm(f"Insert {name} after {self._selected_node()}", fields)
            form.submitted = lambda values: self._insert_from_form(name, fields, values, form)
            self.app.push_screen(form)

        self.app.push_screen(PickLayer(names), picked)

    def _insert_from_form(self, name, fields, values, form) -> None:
        try:
            call = edits.layer_call(name, values, [f.name for f in fields],
                                    {f.name for f in fields if f.default is None})
        except edits.EditRefused as exc:
            form.show_error(str(exc))
            return
        self._propose(lambda t, g, n: edits.insert_after(t, g, n, call), form)

    def action_delete(self) -> None:
        self._propose(edits.delete_node)

    def action_edit_arguments(self) -> None:
        node = self._selected_node()
        if node is None:
            return
        try:
            name, fields = edits.argument_fields(self.editor.text, self.good.network.graph, node)
        except (edits.EditRefused, SpecError) as exc:
            self._refuse(str(exc), None)
            return
        form = LayerForm(f"Arguments of {node} ({name})", fields)
        form.submitted = lambda values: self._propose(
            lambda t, g, n: edits.set_arguments(t, g, n, values), form)
        self.app.push_screen(form)

    def action_skip(self) -> None:
        node = self._selected_node()
        if node is None:
            return
        if self.skip_source is None:
            self.skip_source = node
            self.graph_view.marked = self.graph_view.selected
            self.status(f"skip from {node}: select the node to add it to and press s "
                        "(Escape cancels)")
            return
        source, self.skip_source = self.skip_source, None
        self.graph_view.marked = None
        self._propose(lambda t, g, n: edits.add_skip(t, g, source, n))

    def action_cancel_skip(self) -> None:
        if self.skip_source is not None:
            self.skip_source = None
            self.graph_view.marked = None
            self.status("skip cancelled")

    def action_undo(self) -> None:
        self.editor.undo()

    def action_redo(self) -> None:
        self.editor.redo()

    # ---- files

    def action_save(self) -> None:
        if self.path is None:
            self.action_save_as()
        else:
            self.save_to(self.path)

    def save_to(self, path: str) -> bool:
        text = self.editor.text
        try:
            save_spec(path, text)
        except SpecError as exc:
            self.status(f"not saved: {exc}")
            self.app.notify(str(exc), title="Not saved", severity="error")
            return False
        if path != self.path:
            Recovery(self.path).clear()
        self.path, self.saved_text = path, text
        Recovery(path).clear()
        self._update_title()
        self.status(f"saved {path}")
        return True

    def action_save_as(self) -> None:
        def chosen(path: str | None) -> None:
            if path:
                self.save_to(path)

        self.app.push_screen(AskPath("Save as", self.path or "untitled.net"), chosen)

    def action_open(self) -> None:
        def chosen(path: str | None) -> None:
            if path:
                self.open_file(path)

        def answered(choice: str) -> None:
            if choice == "discard":
                self.app.push_screen(AskPath("Open spec", os.path.dirname(self.path or "") or "."),
                                     chosen)

        if self.dirty:
            self.app.push_screen(Choice(f"{self.file_name} has unsaved changes.",
                                        [("cancel", "Keep editing"), ("discard", "Discard them")]),
                                 answered)
        else:
            answered("discard")

    def open_file(self, path: str) -> None:
        try:
            text = load_spec(path)
        except SpecError as exc:
            self.status(f"cannot open: {exc}")
            self.app.notify(str(exc), title="Cannot open", severity="error")
            return
        Recovery(self.path).clear()
        self.path, self.saved_text = path, text
        self.editor.load_text(text)
        self.collapsed = frozenset()
        self.graph_view.selected = None
        self._update_title()
        self.start_check()

    # ---- run and export

    def action_train(self) -> None:
        from netdsl.tui.screens.train import TrainScreen

        if self.result is None or self.result.network is None:
            self.status("the spec must check before it can train")
            return
        self.app.push_screen(TrainScreen(self.result.network.graph,
                                         epochs=getattr(self.app, "train_epochs", None),
                                         examples=getattr(self.app, "train_examples", None),
                                         device=getattr(self.app, "device", "cpu")))

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
        from netdsl.draw import render as draw

        try:
            draw(graph, path, collapse=bool(collapsed))
            message = f"wrote {path}"
        except SpecError as exc:
            message = f"not exported: {exc}" + (f" ({exc.hint})" if exc.hint else "")
        self.app.call_from_thread(self.status, message)


def _span_contains(span, line: int, col: int) -> bool:
    return (span.line, span.col) <= (line, col) <= (span.end_line, span.end_col + 1)
