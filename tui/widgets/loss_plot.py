"""A live line plot of training loss and accuracy, drawn with braille dots."""
from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

__all__ = ["LossPlot", "plot_rows"]

_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # braille bit of (row, col)


def plot_rows(values: list[float], width: int, height: int) -> list[str]:
    """`values` as a braille line `width` characters wide and `height` rows tall."""
    if not values or width < 1 or height < 1:
        return [" " * max(width, 0)] * max(height, 0)
    cols, rows = width * 2, height * 4
    step = max(1, len(values) / cols)
    sampled = [values[min(len(values) - 1, int(i * step))] for i in range(min(cols, len(values)))]
    low, high = min(sampled), max(sampled)
    span = (high - low) or 1.0
    cells = [[0] * width for _ in range(height)]
    for x, value in enumerate(sampled):
        y = rows - 1 - round((value - low) / span * (rows - 1))
        cells[y // 4][x // 2] |= _DOTS[y % 4][x % 2]
    return ["".join(chr(0x2800 + c) if c else " " for c in row) for row in cells]


class LossPlot(Widget):
    """Plots a series as it grows; `add` appends a point and redraws."""

    DEFAULT_CSS = "LossPlot { height: 8; }"

    def __init__(self, title: str, colour: str = "#61afef", percent: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.title, self.colour, self.percent = title, colour, percent
        self.values: list[float] = []

    def add(self, value: float) -> None:
        self.values.append(value)
        self.refresh()

    def clear(self) -> None:
        self.values = []
        self.refresh()

    def _label(self, value: float) -> str:
        return f"{100 * value:.1f}%" if self.percent else f"{value:.4g}"

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        if not self.values:
            return Text(f"{self.title}: waiting for the first step", style="#7f848e")
        low, high = min(self.values), max(self.values)
        label_width = max(len(self._label(low)), len(self._label(high))) + 1
        rows = plot_rows(self.values, max(1, width - label_width - 1), max(1, height - 1))
        text = Text(f"{self.title} {self._label(self.values[-1])}\n", style="bold")
        for i, row in enumerate(rows):
            label = self._label(high) if i == 0 else self._label(low) if i == len(rows) - 1 else ""
            text.append(label.rjust(label_width) + "│", style="#7f848e")
            text.append(row + ("\n" if i + 1 < len(rows) else ""), style=self.colour)
        return text
