"""The terminal network builder (`netc tui`): spec text, graph and inspector on one screen."""
from __future__ import annotations

__all__ = ["main"]


def main(path: str | None = None) -> int:
    """Run the builder on `path` (a new spec when it does not exist); returns an exit code.

    Raises
    ------
    SpecError
        When `path` exists but cannot be read as a spec.
    """
    from netdsl.tui.app import NetApp

    NetApp(path).run()
    return 0
