"""The terminal network builder (`netc tui`): spec text, graph and inspector on one screen."""
from __future__ import annotations

from netdsl.runtime.device import array_module
from netdsl.tui.app import NetApp

__all__ = ["main"]


def main(path: str | None = None, device: str = "cpu", import_path=()) -> int:
    """Run the builder on `path` (a new spec when it does not exist); returns an exit code.
    With `device` "gpu" its runs train with CuPy, which must work before the builder opens.

    Raises
    ------
    SpecError
        When `path` exists but cannot be read as a spec, or the GPU cannot be used.
    """
    if device != "cpu":
        array_module(device)  # one clear line now, not a failed run later
    NetApp(path, device=device, import_path=import_path).run()
    return 0
