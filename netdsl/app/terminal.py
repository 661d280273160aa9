"""Where netc writes: results to stdout, diagnostics and progress to stderr, each a rich
Console that wraps and colours only on a terminal.

Rich wraps at 80 columns when its stream is not a terminal and colours unless NO_COLOR
is set; piped output (`netc run SPEC | cat`, `netc runs > runs.txt`) must keep its lines
whole, so a console off a terminal is as wide as the longest line it prints.
"""
from __future__ import annotations

import os
import sys

from rich.console import Console

__all__ = ["console", "WIDE"]

# a console off a terminal: wide enough that no line of netc's wraps
WIDE = 10_000


def console(stderr: bool = False, quiet: bool = False) -> Console:
    """A console on stdout (results) or stderr (progress, diagnostics); `quiet` drops
    everything it is given."""
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(stderr=stderr, highlight=False, quiet=quiet,
                   width=None if terminal else WIDE, soft_wrap=not terminal,
                   no_color=bool(os.environ.get("NO_COLOR")) or None)
