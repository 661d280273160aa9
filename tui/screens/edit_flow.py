"""The builder's visual edits: insert, delete, edit arguments, add a skip, undo and redo.

An edit of a node written in a block that other calls use too asks first whether to
change the block (every instance) or only this call (a copy of the block, under a new
name, that only this call uses).

An edit is computed on the text (netdsl.edits) from the node selected in the graph,
checked in a worker thread, and applied through the editor only if the spec still
checks, so the editor's undo history covers it; a refused edit says why in the status
line, or in the form it came from.
"""
from __future__ import annotations

from dataclasses import dataclass

from textual import work
from textual.message import Message

from netdsl import edits
from netdsl.errors import SpecError
from netdsl.ops import OPS
from netdsl.tui.checking import CheckResult, check_and_draw
from netdsl.tui.screens.dialogs import Choice, LayerForm, PickLayer

__all__ = ["EditFlow"]


class EditFlow:
    """The visual-edit actions of BuilderScreen, which mixes this in: they use its editor,
    graph view, status line and last good check."""

    # namespaced so that its handler keeps the screen's name, on_builder_screen_edit_checked
    @dataclass
    class EditChecked(Message, namespace="builder_screen"):
        edit: edits.TextEdit
        result: CheckResult
        form: LayerForm | None

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

    def _in_which_scope(self, then) -> None:
        """Call `then(scope)` once it is known what an edit of the selected node changes:
        None, its own place; "block", every instance of the block it is written in;
        "call", a copy of that block for its call alone. The user is asked when the
        block has instances that other calls make; cancelling does nothing."""
        node = self._selected_node()
        if node is None:
            return
        try:
            use = edits.block_use(self.editor.text, self.good.network.graph, node)
        except SpecError:
            use = None
        if use is None or use.instances <= use.call_instances:
            then(None)
            return
        many = f", which makes {use.call_instances} of them" if use.call_instances > 1 else ""
        question = (f"'{node}' is written in block {use.block}, which the network uses "
                    f"{use.instances} times. Change the block (every instance), or only "
                    f"this call (line {use.call.line}{many}): a copy of the block named "
                    f"{use.copy} that only this call uses?")
        self.app.push_screen(
            Choice(question, [("block", f"Block ({use.instances})"), ("call", "This call"),
                              ("cancel", "Cancel")]),
            lambda chosen: then(chosen) if chosen in ("block", "call") else None)

    def _propose(self, make, form: LayerForm | None = None, scope: str | None = None) -> None:
        """Compute an edit; check its result in a worker and apply it only if it checks.
        With `scope` "call", the edit goes to a copy of the node's block for its call."""
        node = self._selected_node()
        if node is None:
            return
        text, graph = self.editor.text, self.good.network.graph
        try:
            edit = make(text, graph, node)
            if scope == "call":
                edit = edits.only_this_call(text, graph, node, edit)
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
        result = check_and_draw(edit.apply(text), self.file_name, self.collapsed, self.compact,
                                self.import_path)
        self.post_message(self.EditChecked(edit, result, form))

    def on_builder_screen_edit_checked(self, message: "EditFlow.EditChecked") -> None:
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
        self._in_which_scope(self._insert)

    def _insert(self, scope: str | None) -> None:
        if self._selected_node() is None:
            return
        module_blocks = sorted(self.good.network.module.blocks)
        names = sorted(n for n in OPS if not OPS[n].is_loss) + module_blocks

        def picked(name: str | None) -> None:
            if name is None:
                return
            fields = edits.layer_fields(name, self.good.network.module if self.good else None)
            if not fields:
                self._propose(lambda t, g, n: edits.insert_after(t, g, n, name), scope=scope)
                return
            form = LayerForm(f"Insert {name} after {self._selected_node()}", fields)
            form.submitted = lambda values: self._insert_from_form(name, fields, values, form,
                                                                   scope)
            self.app.push_screen(form)

        self.app.push_screen(PickLayer(names), picked)

    def _insert_from_form(self, name, fields, values, form, scope=None) -> None:
        try:
            call = edits.layer_call(name, values, [f.name for f in fields],
                                    {f.name for f in fields if f.default is None})
        except edits.EditRefused as exc:
            form.show_error(str(exc))
            return
        self._propose(lambda t, g, n: edits.insert_after(t, g, n, call), form, scope)

    def action_delete(self) -> None:
        node = self._selected_node()
        if node is None:
            return
        try:  # a deletion the text cannot express is refused before asking where
            edits.delete_node(self.editor.text, self.good.network.graph, node)
        except (edits.EditRefused, SpecError) as exc:
            self._refuse(str(exc), None)
            return
        self._in_which_scope(lambda scope: self._propose(edits.delete_node, scope=scope))

    def action_edit_arguments(self) -> None:
        node = self._selected_node()
        if node is None:
            return
        try:
            name, fields = edits.argument_fields(self.editor.text, self.good.network.graph, node)
        except (edits.EditRefused, SpecError) as exc:
            self._refuse(str(exc), None)
            return

        def edit_in(scope: str | None) -> None:
            form = LayerForm(f"Arguments of {node} ({name})", fields)
            form.submitted = lambda values: self._propose(
                lambda t, g, n: edits.set_arguments(t, g, n, values), form, scope)
            self.app.push_screen(form)

        self._in_which_scope(edit_in)

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
