"""`netc tui`: the terminal network builder. Wiring only; the work is in screens/ and widgets/."""
from __future__ import annotations

import os

from textual.app import App, SystemCommand
from textual.binding import Binding

from netdsl.errors import SpecError
from netdsl.tui.commands import NodeCommands, action_commands
from netdsl.tui.files import NEW_SPEC, load_spec
from netdsl.tui.screens.builder import BuilderScreen

__all__ = ["NetApp"]


class NetApp(App):
    """The builder for one spec file (or a new, untitled one).

    Parameters
    ----------
    path : the spec to edit; a path that does not exist yet starts a new spec there.
    train_examples, train_epochs : override the spec's data size and epochs when training
        from the UI (tests keep runs short, or long enough to stop).
    device : "cpu", or "gpu" to train with CuPy (`netc tui --device gpu`).
    import_path : folders quoted imports may read besides the spec's own (`--import-path`).

    Raises
    ------
    SpecError
        When `path` exists but cannot be read as a spec (a folder, binary, not UTF-8).
    """

    CSS_PATH = "netdsl.tcss"
    TITLE = "netc tui"
    BINDINGS = [Binding("ctrl+q", "quit_safely", "Quit", priority=True)]
    COMMANDS = App.COMMANDS | {NodeCommands}

    def __init__(self, path: str | None = None, train_examples: int | None = None,
                 train_epochs: int | None = None, device: str = "cpu", import_path=()):
        super().__init__()
        self.path = path
        self.train_examples, self.train_epochs = train_examples, train_epochs
        self.device = device
        self.import_path = tuple(import_path)
        self.text = load_spec(path) if path is not None and os.path.exists(path) else NEW_SPEC

    @property
    def builder(self) -> BuilderScreen:
        return self._builder

    def on_mount(self) -> None:
        self._builder = BuilderScreen(self.path, self.text, self.import_path)
        self.push_screen(self._builder)
        self._builder.offer_recovery()

    def get_system_commands(self, screen):
        """The palette's actions: the builder's keys, and Textual's own (theme, screenshot)
        but its Quit, which would not ask about unsaved changes, and its Keys, which the
        builder's (the help screen) replaces."""
        for command in super().get_system_commands(screen):
            if command.title not in ("Quit", "Keys"):
                yield command
        if isinstance(screen, BuilderScreen):
            for title, help, callback in action_commands(screen.keys()):
                yield SystemCommand(title, help, callback)

    def action_quit_safely(self) -> None:
        self._builder.quit_safely()

