"""Training from the builder: a run prepared as `netc run` prepares one, with a Reporter
that forwards progress.

`train_network` is the same session as `netc run` (netdsl.app.session: settings, the
lowering for the device, bundled data, validation split, normalisation) and, given a
folder (the run panel gives runs/NAME, as `netc run` does), leaves the same run record
and checkpoint there (netdsl.app.record): `netc eval`, `netc runs` and `netc plot` read
it. It blocks, so the run panel calls it from a worker thread; every report goes to
`post`, which must be thread-safe.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Callable

from netdsl.app.memory_check import FOR_BUILDER, check_training
from netdsl.app.record import RecordingReporter
from netdsl.app.session import prepare
from netdsl.errors import SpecError
from netdsl.runtime.checkpoint import CHECKPOINT, CheckpointError, prepare_folder
from netdsl.runtime.train import Reporter

__all__ = ["Progress", "EpochDone", "RunStopped", "RunStarted", "RunWarning", "PostingReporter",
           "train_network"]


@dataclass(frozen=True)
class RunStarted:
    description: str
    epochs: int
    steps: int
    folder: str | None = None   # where the record and checkpoint go


@dataclass(frozen=True)
class Progress:
    epoch: int        # counting from 0
    done: int         # steps of this epoch
    total: int
    metrics: dict


@dataclass(frozen=True)
class EpochDone:
    record: dict


@dataclass(frozen=True)
class RunStopped:
    reason: str


@dataclass(frozen=True)
class RunWarning:
    text: str   # something the run survives: a checkpoint it could not write


class PostingReporter(Reporter):
    """Turns the Trainer's calls into events for `post`; `stop` asks the loop to end."""

    def __init__(self, post: Callable[[object], None], every: float = 0.1):
        self.post = post
        self.folder: str | None = None
        self.stop_requested = threading.Event()
        self.every = every  # seconds between step reports: the screen need not see each step
        self._last = 0.0

    def start(self, description, settings, epochs, steps):
        self.post(RunStarted(description, epochs, steps, self.folder))

    def step(self, epoch, done, total, metrics):
        now = time.monotonic()
        if now - self._last >= self.every or done == total:
            self._last = now
            self.post(Progress(epoch, done, total, dict(metrics)))

    def epoch(self, record):
        self.post(EpochDone(dict(record)))

    def stopped(self, reason):
        self.post(RunStopped(reason))

    def warning(self, text):
        self.post(RunWarning(text))  # to the panel's log: stderr would draw over the screen

    def should_stop(self) -> bool:
        return self.stop_requested.is_set()


def train_network(network, reporter: PostingReporter, epochs: int | None = None,
                  examples: int | None = None, device: str = "cpu", folder: str | None = None,
                  spec: str = "") -> list[dict]:
    """Train a checked network on its bundled data, on the CPU or (`device` "gpu") with
    CuPy; returns the per-epoch history. With `folder`, the run record (of the spec
    named `spec`) and the checkpoints go there; an earlier checkpoint is kept as
    previous.npz, as `netc run` keeps it.

    Raises
    ------
    SpecError
        When the network cannot train (no loss, a bad train clause, no data), the GPU
        cannot be used (netdsl.runtime.device.array_module), `folder` cannot be written,
        or the run would not fit in memory (checked as `netc run` checks it, before a
        parameter is made; the builder has no --force).
    """
    session = prepare(network, {"epochs": epochs}, device)
    check_training(session.lowered, session.settings, advice=FOR_BUILDER)
    if folder is not None:
        _start_folder(folder)
    data = session.load_data(examples=examples)
    check_training(session.lowered, session.settings, data, advice=FOR_BUILDER)
    train, val = session.split(data)
    trainer = session.trainer(folder, reporter=reporter)
    record = None
    if folder is not None:
        reporter.folder = folder
        record = RecordingReporter(trainer, folder, network, spec,
                                   command="netc tui " + spec, device=device)
    try:
        return trainer.fit(train, val if len(val) else None, data.description)
    finally:
        if record is not None:   # the builder goes on: its TensorBoard files whole now
            record.close()


def _start_folder(folder: str) -> None:
    """Checkpoints writable in `folder`, and an earlier one kept as previous.npz."""
    try:
        prepare_folder(folder)
        path = os.path.join(folder, CHECKPOINT)
        if os.path.exists(path):
            shutil.copyfile(path, os.path.join(folder, "previous.npz"))
    except (CheckpointError, OSError) as exc:
        raise SpecError(f"cannot keep the run in {folder} ({exc})", None,
                        "make the folder writable, or start netc tui elsewhere") from None
