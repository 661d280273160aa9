"""Spec files for the builder: reading with clear errors, atomic saves, crash recovery.

While a buffer has unsaved changes it is copied, at most a second after each change, to
a recovery file (one per spec path, in the user's state folder); a clean save or quit
removes it, so a recovery file found at start-up means the last session ended
without saving, and the builder offers it back.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass

from netdsl.atomic import write_text
from netdsl.driver import read_spec
from netdsl.errors import SpecError

__all__ = ["load_spec", "save_spec", "Recovery", "recovery_folder", "NEW_SPEC"]

NEW_SPEC = """network untitled
input  x : [64]
target y : class(10)

logits = x -> dense(10)
loss cross_entropy(logits, y)
train sgd(lr=0.1), batch=32, epochs=5
"""


def load_spec(path: str) -> str:
    """The text of a spec file.

    Raises
    ------
    SpecError
        When the file is missing, a folder, unreadable, binary or not UTF-8.
    """
    return read_spec(path)


def save_spec(path: str, text: str) -> None:
    """Write `text` to `path` atomically (a reader sees the old file or the new one).

    Raises
    ------
    SpecError
        When the folder does not exist or cannot be written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SpecError(f"cannot save {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise SpecError(f"cannot save {path}: it is a folder")
    try:
        write_text(path, text)
    except OSError as exc:
        raise SpecError(f"cannot save {path}: {exc.strerror}") from None


def recovery_folder() -> str:
    """Where recovery files live: $NETDSL_STATE, else $XDG_STATE_HOME/netdsl, else ~/.local/state."""
    if os.environ.get("NETDSL_STATE"):
        return os.environ["NETDSL_STATE"]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "netdsl", "recovery")


@dataclass
class Recovery:
    """The recovery file of one spec path (None: an untitled buffer)."""

    path: str | None

    @property
    def file(self) -> str:
        key = os.path.abspath(self.path) if self.path else "<untitled>"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return os.path.join(recovery_folder(), f"{digest}.json")

    def write(self, text: str) -> None:
        """Keep `text` for recovery; a failure to write it must not interrupt editing."""
        try:
            os.makedirs(os.path.dirname(self.file), exist_ok=True)
            record = {"path": self.path, "text": text, "time": time.time()}
            write_text(self.file, json.dumps(record))
        except OSError:
            pass

    def read(self) -> tuple[str, float] | None:
        """(text, when it was written), or None when there is nothing to recover."""
        try:
            with open(self.file, encoding="utf-8") as handle:
                record = json.load(handle)
            return str(record["text"]), float(record["time"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def clear(self) -> None:
        try:
            os.unlink(self.file)
        except OSError:
            pass
