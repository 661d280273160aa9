"""Checking the builder's text: the network with its costs and drawing, or its errors.

The builder runs `check_and_draw` in worker threads, off the UI thread: for the text
being typed, and for the text a visual edit would produce.
"""
from __future__ import annotations

from dataclasses import dataclass

from netdsl.cost import cost_rows
from netdsl.driver import CheckFailed, Network, check_text
from netdsl.errors import render
from netdsl.imports import spec_name
from netdsl.tui.graph_canvas import Picture, draw_graph
from netdsl.tui.widgets.spec_editor import Diagnostic

__all__ = ["CheckResult", "check_and_draw"]


@dataclass
class CheckResult:
    """What one check of the text found: a network with its costs and drawing, or errors."""

    text: str
    network: Network | None = None
    costs: dict | None = None
    picture: Picture | None = None
    errors: list[Diagnostic] | None = None
    first_error: str = ""


def check_and_draw(text: str, file: str, collapsed: frozenset[str], compact: bool,
                   import_path=()) -> CheckResult:
    """Check `text` as `file`, its imports confined as `netc check` confines them (to the
    file's folder tree and `import_path`); on success also cost and draw it (all of this
    runs off the UI thread)."""
    file = spec_name(file)
    try:
        network = check_text(text, file, import_path)
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
