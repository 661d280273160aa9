"""`netc plot RUN... [-o FILE]`: loss and accuracy curves of one or several runs.

The training loss comes from the step lines of metrics.jsonl (the epoch lines when a run
logged no steps), the training accuracy and the validation metrics from the epoch lines,
placed at the step where each epoch ended: runs of different lengths share one x axis.
With -o, matplotlib (the `plot` extra) draws them to .png, .svg or .pdf; without, a text
chart goes to the terminal.
"""
from __future__ import annotations

import io
import os
import shutil

from netdsl.app.chart import text_chart
from netdsl.app.record import read_metrics
from netdsl.app.runs import find_run
from netdsl.atomic import write_bytes
from netdsl.errors import SpecError, UsageError

__all__ = ["curves", "plot_command", "FORMATS"]

FORMATS = ("png", "svg", "pdf")
PLOT_HELP = "pip install 'netdsl[plot]' (matplotlib), or leave out -o for a chart in the terminal"


def curves(folder: str) -> dict[str, tuple[list[float], list[float]]]:
    """Metric -> (steps, values) of a run: loss, val_loss, accuracy, val_accuracy (those
    it recorded)."""
    metrics = read_metrics(folder)
    epochs = [e for e in metrics if e.get("kind") == "epoch"]
    steps = [e for e in metrics if e.get("kind") == "step"]
    found = {}
    for key, lines in (("loss", steps or epochs), ("val_loss", epochs),
                       ("accuracy", epochs), ("val_accuracy", epochs)):
        pairs = [(e["step"], e[key]) for e in lines
                 if isinstance(e.get(key), (int, float)) and isinstance(e.get("step"), int)]
        if pairs:
            found[key] = ([p[0] for p in pairs], [p[1] for p in pairs])
    return found


def _runs(names: list[str]) -> dict[str, dict]:
    runs = {}
    for name in names:
        folder = find_run(name)
        found = curves(folder)
        if not found:
            raise SpecError(f"{folder} has no metrics recorded yet (metrics.jsonl)", None,
                            "train it with netc run, which records them")
        runs[os.path.basename(os.path.normpath(folder))] = found
    return runs


def _panels(runs: dict[str, dict]) -> list[tuple[str, list]]:
    """(title, [(label, xs, ys, the run's index, validation)]) for the loss, and the
    accuracy where any run has one."""
    panels = []
    for metric in ("loss", "accuracy"):
        series = [(f"{run} {key.replace('_', ' ')}" if len(runs) > 1 else key.replace("_", " "),
                   *found[key], index, key.startswith("val_"))
                  for index, (run, found) in enumerate(runs.items())
                  for key in (metric, f"val_{metric}") if key in found]
        if series:
            panels.append((metric, series))
    return panels


def plot_command(args) -> int:
    runs = _runs(args.runs)
    panels = _panels(runs)
    if args.output is None:
        width = min(shutil.get_terminal_size((80, 24)).columns, 100)
        for title, series in panels:
            print(text_chart(title, [s[:3] for s in series], width,
                             percent=title == "accuracy"))
        return 0
    fmt = os.path.splitext(args.output)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise UsageError(f"cannot draw a plot as {args.output}", None,
                        "name a .png, .svg or .pdf file")
    write_bytes(args.output, _figure(panels, fmt))
    print(f"wrote {args.output}")
    return 0


def _figure(panels: list[tuple[str, list]], fmt: str) -> bytes:
    try:
        import matplotlib  # the plot extra: only -o needs it
    except ImportError:
        raise SpecError("netc plot -o needs matplotlib, which is not installed", None,
                        PLOT_HELP) from None
    matplotlib.use("Agg")  # no display: files only
    from matplotlib.figure import Figure  # the same optional package, once its backend is set

    figure = Figure(figsize=(6 * len(panels), 4), layout="constrained")
    for index, (title, series) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for label, xs, ys, run, validation in series:  # a colour per run, dashed validation
            values = [100 * y for y in ys] if title == "accuracy" else ys
            axes.plot(xs, values, label=label, color=f"C{run % 10}",
                      linestyle="--" if validation else "-",
                      marker="o" if validation or len(xs) < 30 else None, markersize=3)
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.set_ylabel("%" if title == "accuracy" else title)
        if title == "loss" and all(y > 0 for _, _, ys, _, _ in series for y in ys):
            axes.set_yscale("log")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=120)
    return buffer.getvalue()
