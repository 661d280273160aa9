"""Training progress on a terminal: a progress bar per epoch and a line per epoch.

The epoch lines are the run's results and go to stdout; the bar, what the data and the
settings are, and why a run stopped are progress, on stderr (app.terminal).
"""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from netdsl.runtime.train import Reporter

__all__ = ["RichReporter", "metric_text"]


class RichReporter(Reporter):
    """A progress bar per epoch (on `err`, a terminal's) and one line of metrics when it
    ends (on `out`)."""

    def __init__(self, out: Console, err: Console, quiet: bool = False):
        self.out, self.console, self.quiet = out, err, quiet
        self.progress = None

    def start(self, description, settings, epochs, steps):
        self.epochs = epochs
        if description:
            self.console.print(f"data: {description}")
        opt = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in settings.optimizer_settings.items())
        self.console.print(f"training: {settings.optimizer}({opt}), batch {settings.batch}, "
                           f"{epochs} epochs of {steps} steps, seed {settings.seed}")

    def step(self, epoch, done, total, metrics):
        if self.quiet or not self.console.is_terminal:
            return
        if self.progress is None:
            self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total}"),
                                     TextColumn("{task.fields[metrics]}"), TimeRemainingColumn(),
                                     console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("", total=total, epoch="", metrics="")
        text = "  ".join(metric_text(k, v) for k, v in metrics.items())
        self.progress.update(self.task, completed=done, total=total,
                             epoch=f"{epoch + 1}/{self.epochs}", metrics=text)

    def epoch(self, record):
        self._close()
        self.out.print("  ".join(metric_text(k, v) for k, v in record.items()), soft_wrap=True)

    def stopped(self, reason):
        self._close()
        self.console.print(reason)

    def warning(self, text):
        self._close()  # the bar would be drawn over the line
        super().warning(text)

    def diagnosis(self, where, text, hint):
        self._close()
        super().diagnosis(where, text, hint)

    def should_stop(self):
        return False

    def _close(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def metric_text(key: str, value) -> str:
    """A metric as a person reads it: `accuracy 97.50%`, `loss 0.3588`."""
    if key == "epoch":
        return f"epoch {value}"
    if "accuracy" in key:
        return f"{key} {100 * value:.2f}%"
    if key == "samples/s":
        return f"{value:,.0f} samples/s"
    if isinstance(value, float):
        return f"{key} {value:.4g}"
    return f"{key} {value}"
