"""The builder's files: open, save, save as, quitting with unsaved changes, and the
recovery copy of those changes.

A change of the text restarts a timer; when it runs out the unsaved text is copied to
the spec's recovery file (netdsl.tui.files.Recovery), which a save, an opened file or a
clean quit clears. A recovery file found at start-up is offered back.
"""
from __future__ import annotations

import os
import time

from netdsl.errors import SpecError
from netdsl.tui.files import Recovery, load_spec, save_spec
from netdsl.tui.screens.dialogs import AskPath, Choice

__all__ = ["FileFlow", "AUTOSAVE_DELAY"]

# the longest a change waits for its recovery copy: all the typing a kill can lose
AUTOSAVE_DELAY = 1.0


class FileFlow:
    """The file actions of BuilderScreen, which mixes this in: they use its path, editor,
    title, status line and check. The app's quit key and start-up call them too."""

    def autosave_later(self) -> None:
        """Write the recovery copy AUTOSAVE_DELAY seconds from now, unless a write is due
        already: typing without a pause is kept every AUTOSAVE_DELAY seconds."""
        if self._autosave_timer is None:
            self._autosave_timer = self.set_timer(AUTOSAVE_DELAY, self.autosave)

    def autosave(self) -> None:
        self._autosave_timer = None
        if self.dirty:
            Recovery(self.path).write(self.editor.text)

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

    def offer_recovery(self) -> None:
        """Offer back the unsaved changes that a session which ended without saving kept."""
        recovery = Recovery(self.path)
        recovered = recovery.read()
        if recovered is None:
            return
        text, when = recovered
        if text == self.initial_text:
            recovery.clear()
            return
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when))

        def answered(choice: str) -> None:
            if choice == "recover":
                self.editor.load_text(text)  # unsaved until the user saves
                self.start_check()
                self._update_title()
                self.status(f"recovered unsaved changes from {stamp}; ctrl+s saves them")
            elif choice == "discard":
                recovery.clear()

        self.app.push_screen(Choice(f"Unsaved changes to {self.path or 'an untitled spec'} were "
                                    f"kept from {stamp} (the editor did not close cleanly). "
                                    "Recover them?",
                                    [("recover", "Recover"), ("discard", "Discard"),
                                     ("cancel", "Decide later")]), answered)

    def quit_safely(self) -> None:
        """Quit the app; with unsaved changes, first ask whether to save them."""
        if not self.dirty:
            Recovery(self.path).clear()
            self.app.exit()
            return

        def answered(choice: str) -> None:
            if choice == "save":
                self.action_save()
                if not self.dirty:
                    self.app.exit()
            elif choice == "discard":
                Recovery(self.path).clear()
                self.app.exit()

        self.app.push_screen(Choice(f"{self.file_name} has unsaved changes.",
                                    [("save", "Save and quit"), ("discard", "Quit without saving"),
                                     ("cancel", "Keep editing")]), answered)
