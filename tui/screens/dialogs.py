"""Modal dialogs: a question, a path, a node to jump to, and the layer form."""
from __future__ import annotations

import math

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.fuzzy import Matcher
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static

from netdsl.edits import Field, check_syntax

__all__ = ["Choice", "AskPath", "JumpTo", "LayerForm", "PickLayer", "fuzzy_matches"]


class Choice(ModalScreen[str]):
    """A question with buttons; dismisses with the chosen button's id (escape: 'cancel')."""

    BINDINGS = [Binding("escape", "dismiss('cancel')", "Cancel")]

    def __init__(self, question: str, choices: list[tuple[str, str]]):
        super().__init__()
        self.question, self.choices = question, choices

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question")
            with Horizontal(classes="buttons"):
                for ident, label in self.choices:
                    yield Button(label, id=ident, variant="primary" if ident == self.choices[0][0]
                                 else "default")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)


class AskPath(ModalScreen[str | None]):
    """Asks for a file path; dismisses with it, or None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, value: str = ""):
        super().__init__()
        self.title_text, self.value = title, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="question")
            yield Input(self.value, placeholder="path/to/file", id="path")
            yield Label("Enter to accept, Escape to cancel", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


class _Finder(ModalScreen[str | None]):
    """Picks one of `names` by typing part of it; dismisses with the name, or None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]
    question = placeholder = list_id = ""
    shown = 200  # the list stays short however many names there are

    def __init__(self, names: list[str]):
        super().__init__()
        self.names = names

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question")
            yield Input(placeholder=self.placeholder, id="query")
            yield OptionList(*self._matches("")[:self.shown], id=self.list_id)

    def _matches(self, query: str) -> list[str]:
        raise NotImplementedError

    def on_input_changed(self, event: Input.Changed) -> None:
        options = self.query_one(f"#{self.list_id}", OptionList)
        options.clear_options()
        options.add_options(self._matches(event.value)[:self.shown])

    def on_input_submitted(self, event: Input.Submitted) -> None:
        found = self._matches(event.value)
        self.dismiss(found[0] if found else None)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(str(event.option.prompt))


class JumpTo(_Finder):
    """Finds a node by a few letters of its name, in order (`s2b1c1` finds
    stage2/basic1/conv1), as the command palette does; dismisses with the node's id."""

    question, placeholder, list_id = "Jump to node", "name, e.g. stage2/basic1/conv1 or s2b1c1", \
        "matches"

    def _matches(self, query: str) -> list[str]:
        return fuzzy_matches(query, self.names)


def fuzzy_matches(query: str, names: list[str]) -> list[str]:
    """The names holding the query's letters in order, best first (an exact name before
    all); ties keep their order in `names`, the graph's definition order."""
    query = query.strip()
    if not query:
        return list(names)
    matcher = Matcher(query)
    scored = [(-(math.inf if n.lower() == query.lower() else matcher.match(n)), i, n)
              for i, n in enumerate(names)]
    return [n for score, _, n in sorted(scored) if score < 0]


class PickLayer(_Finder):
    """Chooses a layer (an op or a block of the spec) by typing part of its name."""

    question, placeholder, list_id = "Insert which layer?", "e.g. relu, dense, conv", "layers"

    def _matches(self, query: str) -> list[str]:
        query = query.strip().lower()
        return sorted((n for n in self.names if query in n.lower()),
                      key=lambda n: (not n.startswith(query), n))


class LayerForm(ModalScreen[dict | None]):
    """The arguments of a layer, one field each; dismisses with {name: text}.

    Each field must hold an expression of the language; the whole edit is then
    checked by the screen, which calls `show_error` when the spec would not check.
    """

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, fields: list[Field], submitted=None):
        super().__init__()
        self.title_text, self.fields = title, fields
        # called with the values; the form stays open until the caller dismisses it
        self.submitted = submitted

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog form"):
            yield Label(self.title_text, classes="question")
            with VerticalScroll(classes="fields"):
                if not self.fields:
                    yield Label("(no arguments)", classes="hint")
                for f in self.fields:
                    hint = "required" if f.default is None else f"default {f.default}"
                    yield Label(f"{f.name}  [dim]{hint}[/dim]")
                    yield Input(f.value, placeholder=hint, id=f"arg-{f.name}")
            yield Static("", id="form-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("OK", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        if self.fields:
            self.query_one(f"#arg-{self.fields[0].name}", Input).focus()
        else:
            self.query_one("#ok", Button).focus()

    def values(self) -> dict[str, str]:
        return {f.name: self.query_one(f"#arg-{f.name}", Input).value for f in self.fields}

    def show_error(self, message: str) -> None:
        self.query_one("#form-error", Static).update(message)

    def _submit(self) -> None:
        for name, value in self.values().items():
            problem = check_syntax(value) if value.strip() else None
            if problem:
                self.show_error(f"{name}: {problem}")
                return
        if self.submitted is not None:
            self.show_error("checking...")
            self.submitted(self.values())
        else:
            self.dismiss(self.values())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self._submit()
        else:
            self.dismiss(None)
