"""The spec text: a TextArea with .net highlighting and the checker's errors marked.

Highlights come from `netdsl.highlight` (the Lark lexer) instead of a
tree-sitter query: this fills TextArea's internal highlight map, which is why
Textual is pinned to one minor version.
"""
from __future__ import annotations

from dataclasses import dataclass

from rich.style import Style
from rich.segment import Segment
from textual.strip import Strip
from textual.widgets import TextArea
from textual.widgets.text_area import TextAreaTheme

from netdsl.highlight import highlight_line

__all__ = ["SpecEditor", "Diagnostic", "SPEC_THEME"]

SPEC_THEME = TextAreaTheme(
    name="netdsl",
    syntax_styles={
        "comment": Style(color="#7f848e", italic=True),
        "string": Style(color="#98c379"),
        "number": Style(color="#d19a66"),
        "operator": Style(color="#56b6c2"),
        "punctuation": Style(color="#abb2bf"),
        "punctuation.bracket": Style(color="#abb2bf"),
        "keyword": Style(color="#c678dd", bold=True),
        "function": Style(color="#61afef"),
        "type": Style(color="#e5c07b"),
        "constant": Style(color="#d19a66", italic=True),
        "variable": Style(color="#e06c75"),
        "error": Style(color="white", bgcolor="#8b0000"),
        "diagnostic": Style(underline=True, bgcolor="#5a1e1e"),
    },
)
_MARK = Style(color="#ff5f5f", bold=True)


@dataclass(frozen=True)
class Diagnostic:
    """A checker error in editor coordinates: rows and columns from 0, end exclusive."""

    row: int
    col: int
    end_row: int
    end_col: int
    message: str

    def contains(self, row: int, col: int) -> bool:
        return (self.row, self.col) <= (row, col) <= (self.end_row, self.end_col)


def _byte_offsets(line: str) -> list[int]:
    """Byte offset of each character (TextArea's highlight map counts UTF-8 bytes)."""
    offsets, total = [], 0
    for char in line:
        offsets.append(total)
        total += len(char.encode("utf-8"))
    offsets.append(total)
    return offsets


class SpecEditor(TextArea):
    """Edits a .net spec: highlighted as you type, with errors marked on their lines.

    Set `diagnostics` to mark errors; a ● in the gutter flags each line that has one.
    """

    def __init__(self, text: str = "", **kwargs):
        # set first: TextArea builds the highlight map while it initialises
        self._diagnostics: tuple[Diagnostic, ...] = ()
        self._error_rows: frozenset[int] = frozenset()
        self._blocks: frozenset[str] = frozenset()
        super().__init__(text, show_line_numbers=True, tab_behavior="focus", **kwargs)
        self.register_theme(SPEC_THEME)
        self.theme = "netdsl"
        self.indent_width = 2
        self.soft_wrap = False  # one screen row per line: spans and markers line up

    @property
    def blocks(self) -> frozenset[str]:
        """Names of the spec's blocks, highlighted as types."""
        return self._blocks

    @blocks.setter
    def blocks(self, value: frozenset[str]) -> None:
        if value != self._blocks:
            self._blocks = value
            self._build_highlight_map()
            self.refresh()

    @property
    def diagnostics(self) -> tuple[Diagnostic, ...]:
        return self._diagnostics

    @diagnostics.setter
    def diagnostics(self, value) -> None:
        self._diagnostics = tuple(value)
        self._error_rows = frozenset(row for d in self._diagnostics
                                     for row in range(d.row, d.end_row + 1))
        self._build_highlight_map()
        self.refresh()

    def diagnostic_at(self, row: int, col: int) -> Diagnostic | None:
        """The error under the cursor, else the first one on its line."""
        on_line = [d for d in self._diagnostics if d.row <= row <= d.end_row]
        return next((d for d in on_line if d.contains(row, col)), on_line[0] if on_line else None)

    def _build_highlight_map(self) -> None:
        """Fill TextArea's highlight map from the lexer, then add the error spans."""
        self._line_cache.clear()
        highlights = self._highlights
        highlights.clear()
        lines = self.document.lines
        for row, line in enumerate(lines):
            tokens = highlight_line(line, self._blocks)
            if tokens:
                offsets = _byte_offsets(line)
                highlights[row] = [(offsets[t.start], offsets[t.end], t.style) for t in tokens]
        for d in self._diagnostics:
            for row in range(d.row, min(d.end_row, len(lines) - 1) + 1):
                line = lines[row]
                offsets = _byte_offsets(line)
                start = min(d.col, len(line)) if row == d.row else 0
                end = min(d.end_col, len(line)) if row == d.end_row else len(line)
                if end <= start:  # an error at the end of a line marks its last character
                    start, end = max(0, len(line) - 1), len(line)
                highlights[row].append((offsets[start], offsets[end], "diagnostic"))

    def _render_line(self, y: int) -> Strip:
        strip = super()._render_line(y)
        if not self.show_line_numbers or not self._error_rows:
            return strip
        try:
            row, section = self.wrapped_document._offset_to_line_info[y + self.scroll_offset.y]
        except (IndexError, TypeError):
            return strip
        if row not in self._error_rows or section:
            return strip
        return Strip.join([Strip([Segment("●", _MARK)], 1), strip.crop(1)])
