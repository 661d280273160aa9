"""A live line plot of a training metric and its validation values, drawn with braille dots."""
from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

__all__ = ["LossPlot", "plot_rows", "plot_cells"]

_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # braille bit of (row, col)


def plot_cells(series: list[list[tuple[float, float]]], width: int,
               height: int) -> list[list[tuple[str, int | None]]]:
    """Several (x, y) series on one pair of axes, `width` characters by `height` rows:
    per cell its braille character and the series drawn last there (None: empty)."""
    cells = [[(0, None)] * width for _ in range(height)]
    points = [p for s in series for p in s]
    if not points or width < 1 or height < 1:
        return [[(" ", None)] * max(width, 0) for _ in range(max(height, 0))]
    cols, rows = width * 2, height * 4
    x_low, x_high = min(x for x, _ in points), max(x for x, _ in points)
    y_low, y_high = min(y for _, y in points), max(y for _, y in points)
    x_span, y_span = (x_high - x_low) or 1.0, (y_high - y_low) or 1.0
    for index, values in enumerate(series):
        if len(values) > cols:  # one point per dot column
            step = len(values) / cols
            values = [values[min(len(values) - 1, int(i * step))] for i in range(cols)]
        for x, y in values:
            col = round((x - x_low) / x_span * (cols - 1))
            row = rows - 1 - round((y - y_low) / y_span * (rows - 1))
            bits, _ = cells[row // 4][col // 2]
            cells[row // 4][col // 2] = (bits | _DOTS[row % 4][col % 2], index)
    return [[(chr(0x2800 + bits) if bits else " ", index) for bits, index in row]
            for row in cells]


def plot_rows(values: list[float], width: int, height: int) -> list[str]:
    """`values` as a braille line `width` characters wide and `height` rows tall."""
    return ["".join(char for char, _ in row)
            for row in plot_cells([list(enumerate(values))], width, height)]


class LossPlot(Widget):
    """Plots a training series as it grows (`add`, at the step it was seen) and the
    validation values at the ends of epochs (`add_validation`), in another colour."""

    DEFAULT_CSS = "LossPlot { height: 8; }"

    def __init__(self, title: str, colour: str = "#61afef", percent: bool = False,
                 validation_colour: str = "#e5c07b", **kwargs):
        super().__init__(**kwargs)
        self.title, self.colour, self.percent = title, colour, percent
        self.validation_colour = validation_colour
        self.values: list[float] = []      # training values, in the order seen
        self.steps: list[int] = []         # the step of each
        self.validation: list[tuple[int, float]] = []  # (step, value) at the end of epochs

    def add(self, value: float, step: int | None = None) -> None:
        self.steps.append(len(self.values) if step is None else step)
        self.values.append(value)
        self.refresh()

    def add_validation(self, value: float, step: int) -> None:
        self.validation.append((step, value))
        self.refresh()

    def clear(self) -> None:
        self.values, self.steps, self.validation = [], [], []
        self.refresh()

    def label(self, value: float) -> str:
        """As `netc run` prints it: accuracy 52.63%, loss 0.3588."""
        return f"{100 * value:.2f}%" if self.percent else f"{value:.4g}"

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        if not self.values:
            return Text(f"{self.title}: waiting for the first step", style="#7f848e")
        every = self.values + [v for _, v in self.validation]
        low, high = min(every), max(every)
        label_width = max(len(self.label(low)), len(self.label(high))) + 1
        text = Text(f"{self.title} {self.label(self.values[-1])}", style="bold")
        if self.validation:
            text.append(f"  validation {self.label(self.validation[-1][1])}",
                        style=f"bold {self.validation_colour}")
        text.append("\n")
        rows = plot_cells([list(zip(self.steps, self.values)), self.validation],
                          max(1, width - label_width - 1), max(1, height - 1))
        colours = (self.colour, self.validation_colour)
        for i, row in enumerate(rows):
            label = self.label(high) if i == 0 else self.label(low) if i == len(rows) - 1 else ""
            text.append(label.rjust(label_width) + "│", style="#7f848e")
            for char, series in row:
                text.append(char, style=colours[series] if series is not None else None)
            if i + 1 < len(rows):
                text.append("\n")
        return text
