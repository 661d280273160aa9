"""The run panel: trains the current spec in a worker thread with a live plot and a stop button."""
from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Label, ProgressBar, RichLog

from netdsl.app.progress import metric_text
from netdsl.app.record import run_folder
from netdsl.errors import SpecError
from netdsl.tui.training import EpochDone, PostingReporter, Progress, RunStarted, RunStopped, \
    RunWarning, train_network
from netdsl.tui.widgets.loss_plot import LossPlot

__all__ = ["TrainScreen"]


class TrainScreen(ModalScreen[None]):
    """Trains `graph` once; Stop asks the loop to end after the current step."""

    BINDINGS = [Binding("escape", "close", "Close"), Binding("s", "stop", "Stop")]

    class Event(Message):
        """A report from the training thread."""

        def __init__(self, event: object):
            super().__init__()
            self.event = event

    def __init__(self, network, epochs: int | None = None, examples: int | None = None,
                 device: str = "cpu", spec: str = ""):
        super().__init__()
        self.network, self.epochs, self.examples = network, epochs, examples
        self.device, self.spec = device, spec
        self.reporter = PostingReporter(lambda event: self.post_message(self.Event(event)))
        self.running = False
        self.step = 0  # steps done in the whole run: the plots' x axis

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog train"):
            yield Label(f"Training {self.network.name}", classes="question", id="title")
            yield Label("starting...", id="status")
            yield ProgressBar(id="progress", show_eta=True)
            with Horizontal(classes="plots"):
                yield LossPlot("loss", id="loss-plot")
                yield LossPlot("accuracy", colour="#98c379", percent=True, id="accuracy-plot")
            # wrapped: an epoch's line is longer than the panel is wide
            yield RichLog(id="log", max_lines=500, wrap=True, min_width=20)
            with Horizontal(classes="buttons"):
                yield Button("Stop", id="stop", variant="error")
                yield Button("Close", id="close")

    def on_mount(self) -> None:
        self.running = True
        self.train()

    @work(thread=True, exclusive=True, group="train")
    def train(self) -> None:
        try:
            train_network(self.network, self.reporter, self.epochs, self.examples, self.device,
                          run_folder(self.network.name, self.spec, new_run=True), self.spec)
            self.post_message(self.Event(RunStopped("finished")))
        except SpecError as exc:
            self.post_message(self.Event(RunStopped(f"cannot train: {exc}"
                                                    + (f" ({exc.hint})" if exc.hint else ""))))
        except Exception as exc:  # shown, not raised: the builder must survive a failed run
            self.post_message(self.Event(RunStopped(f"training failed: {exc!r}")))

    def on_train_screen_event(self, message: "TrainScreen.Event") -> None:
        event = message.event
        status = self.query_one("#status", Label)
        log = self.query_one("#log", RichLog)
        if isinstance(event, RunStarted):
            self.query_one("#progress", ProgressBar).update(total=event.steps, progress=0)
            log.write(f"data: {event.description}" if event.description else "data: bundled")
            log.write(f"{event.epochs} epochs of {event.steps} steps")
            if event.folder:
                log.write(f"run record and checkpoints in {event.folder}/")
        elif isinstance(event, Progress):
            self.query_one("#progress", ProgressBar).update(total=event.total, progress=event.done)
            self.step = event.epoch * event.total + event.done
            loss = event.metrics.get("loss")
            if loss is None:  # named losses: plot their sum
                loss = sum(v for k, v in event.metrics.items()
                           if k not in ("accuracy", "samples/s") and isinstance(v, float))
            self.query_one("#loss-plot", LossPlot).add(loss, self.step)
            shown = [metric_text("loss", loss)]
            if "accuracy" in event.metrics:
                self.query_one("#accuracy-plot", LossPlot).add(event.metrics["accuracy"],
                                                               self.step)
                shown.append(metric_text("accuracy", event.metrics["accuracy"]))
            status.update(f"epoch {event.epoch + 1}  step {event.done}/{event.total}  "
                          + "  ".join(shown))
        elif isinstance(event, EpochDone):
            record = event.record
            for key, plot in (("val_loss", "#loss-plot"), ("val_accuracy", "#accuracy-plot")):
                if isinstance(record.get(key), float):
                    self.query_one(plot, LossPlot).add_validation(record[key], self.step)
            log.write("  ".join(metric_text(k, v) for k, v in record.items()))
        elif isinstance(event, RunWarning):
            log.write(f"warning: {event.text}")
        elif isinstance(event, RunStopped):
            if self.running:
                self.running = False
                status.update(event.reason)
                log.write(event.reason)
                self.query_one("#stop", Button).disabled = True

    def action_stop(self) -> None:
        self.reporter.stop_requested.set()

    def action_close(self) -> None:
        self.reporter.stop_requested.set()
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "stop":
            self.action_stop()
        else:
            self.action_close()
