"""Plain-text pictures of a running Textual app, for snapshot tests."""
from __future__ import annotations

import io

from rich.console import Console


def screen_text(app) -> str:
    """The current screen as the user sees it, without colours, trailing spaces trimmed."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True,
                                                        screen_stack=app._background_screens))
    lines = console.export_text(styles=False).split("\n")
    return "\n".join(line.rstrip() for line in lines[:height]).rstrip("\n") + "\n"
