"""`netc tui`: the terminal network builder. Wiring only; the work is in screens/ and widgets/."""
from __future__ import annotations

import time

from textual.app import App
from textual.binding import Binding

from netdsl.errors import SpecError
from netdsl.tui.files import NEW_SPEC, Recovery, load_spec
from netdsl.tui.screens.builder import BuilderScreen
from netdsl.tui.screens.dialogs import Choice

__all__ = ["NetApp"]


class NetApp(App):
    """The builder for one spec file (or a new, untitled one).

    Parameters
    ----------
    path : the spec to edit; a path that does not exist yet starts a new spec there.
    train_examples, train_epochs : override the spec's data size and epochs when training
        from the UI (tests keep runs short, or long enough to stop).
    device : "cpu", or "gpu" to train with CuPy (`netc tui --device gpu`).

    Raises
    ------
    SpecError
        When `path` exists but cannot be read as a spec (a folder, binary, not UTF-8).
    """

    CSS_PATH = "netdsl.tcss"
    TITLE = "netc tui"
    BINDINGS = [Binding("ctrl+q", "quit_safely", "Quit", priority=True)]

    def __init__(self, path: str | None = None, train_examples: int | None = None,
                 train_epochs: int | None = None, device: str = "cpu"):
        super().__init__()
        self.path = path
        self.train_examples, self.train_epochs = train_examples, train_epochs
        self.device = device
        self.text = load_spec(path) if path is not None and _exists(path) else NEW_SPEC

    @property
    def builder(self) -> BuilderScreen:
        return self._builder

    def on_mount(self) -> None:
        self._builder = BuilderScreen(self.path, self.text)
        self.push_screen(self._builder)
        self._offer_recovery()

    def _offer_recovery(self) -> None:
        recovered = Recovery(self.path).read()
        if recovered is None:
            return
        text, when = recovered
        if text == self.text:
            Recovery(self.path).clear()
            return
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when))

        def answered(choice: str) -> None:
            if choice == "recover":
                self._builder.editor.load_text(text)  # unsaved until the user saves
                self._builder.start_check()
                self._builder._update_title()
                self._builder.status(f"recovered unsaved changes from {stamp}; ctrl+s saves them")
            elif choice == "discard":
                Recovery(self.path).clear()

        self.push_screen(Choice(f"Unsaved changes to {self.path or 'an untitled spec'} were kept "
                                f"from {stamp} (the editor did not close cleanly). Recover them?",
                                [("recover", "Recover"), ("discard", "Discard"),
                                 ("cancel", "Decide later")]), answered)

    def action_quit_safely(self) -> None:
        builder = self._builder
        if not builder.dirty:
            Recovery(builder.path).clear()
            self.exit()
            return

        def answered(choice: str) -> None:
            if choice == "save":
                builder.action_save()
                if not builder.dirty:
                    self.exit()
            elif choice == "discard":
                Recovery(builder.path).clear()
                self.exit()

        self.push_screen(Choice(f"{builder.file_name} has unsaved changes.",
                                [("save", "Save and quit"), ("discard", "Quit without saving"),
                                 ("cancel", "Keep editing")]), answered)


def _exists(path: str) -> bool:
    import os

    return os.path.exists(path)
