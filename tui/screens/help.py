"""`?`: every key of the builder, generated from its bindings (tui/keys.py)."""
from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from netdsl.tui.keys import Key

__all__ = ["HelpScreen"]


class HelpScreen(ModalScreen[None]):
    """A table of keys; any of escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss(None)", "Close")]

    def __init__(self, keys: list[Key]):
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold #e5c07b", no_wrap=True)
        table.add_column()
        table.add_column(style="#7f848e")
        for key in self.keys:
            table.add_row(key.keys, key.description, key.where)
        with Vertical(classes="dialog help"):
            yield Label("Keys (escape closes; ctrl+p finds actions and nodes by name)",
                        classes="question")
            with VerticalScroll():
                yield Static(table, id="keys")
