"""A small line chart in text, for `netc plot` without -o: no plotting library needed.

Each series is drawn with its own mark on a grid of characters; the y axis is labelled
with its range, the x axis with the first and last step.
"""
from __future__ import annotations

__all__ = ["text_chart", "MARKS"]

MARKS = "*o+x#@%&"


def text_chart(title: str, series: list[tuple[str, list[float], list[float]]],
               width: int = 72, height: int = 12, percent: bool = False) -> str:
    """`series` is (label, xs, ys) each; ys as fractions when `percent`. Returns the lines
    of the chart, its title first and a legend last."""
    points = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys)]
    if not points:
        return f"{title}: nothing recorded"
    scale = 100 if percent else 1
    low = min(y for _, y in points) * scale
    high = max(y for _, y in points) * scale
    first, last = min(x for x, _ in points), max(x for x, _ in points)
    label = (lambda v: f"{v:.1f}%") if percent else (lambda v: f"{v:.4g}")
    margin = max(len(label(low)), len(label(high)))
    columns = max(width - margin - 2, 10)
    grid = [[" "] * columns for _ in range(height)]
    for index, (_, xs, ys) in enumerate(series):
        mark = MARKS[index % len(MARKS)]
        for x, y in zip(xs, ys):
            col = round((x - first) / (last - first) * (columns - 1)) if last > first else 0
            row = round((high - y * scale) / (high - low) * (height - 1)) if high > low else 0
            grid[row][col] = mark
    lines = [title]
    for row, cells in enumerate(grid):
        tick = label(high) if row == 0 else label(low) if row == height - 1 else ""
        lines.append(f"{tick:>{margin}} |{''.join(cells)}".rstrip())
    lines.append(" " * margin + " +" + "-" * columns)
    steps = f"step {first:g}"
    lines.append(" " * (margin + 2) + steps + f"{last:g}".rjust(columns - len(steps)))
    lines.append("  ".join(f"{MARKS[i % len(MARKS)]} {name}"
                           for i, (name, _, _) in enumerate(series)))
    return "\n".join(lines)
