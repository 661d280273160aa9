"""Training from the builder: a run prepared as `netc run` prepares one, with a Reporter
that forwards progress.

`train_network` is the same session as `netc run` (netdsl.app.session: settings, the
lowering for the device, bundled data, validation split, normalisation) without
checkpoints: a run from the builder is a quick look at whether the network learns. It
blocks, so the run panel calls it from a worker thread; every report goes to `post`,
which must be thread-safe.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from netdsl.app.session import prepare
from netdsl.runtime.train import Reporter

__all__ = ["Progress", "EpochDone", "RunStopped", "RunStarted", "PostingReporter", "train_network"]


@dataclass(frozen=True)
class RunStarted:
    description: str
    epochs: int
    steps: int


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


class PostingReporter(Reporter):
    """Turns the Trainer's calls into events for `post`; `stop` asks the loop to end."""

    def __init__(self, post: Callable[[object], None], every: float = 0.1):
        self.post = post
        self.stop_requested = threading.Event()
        self.every = every  # seconds between step reports: the screen need not see each step
        self._last = 0.0

    def start(self, description, settings, epochs, steps):
        self.post(RunStarted(description, epochs, steps))

    def step(self, epoch, done, total, metrics):
        now = time.monotonic()
        if now - self._last >= self.every or done == total:
            self._last = now
            self.post(Progress(epoch, done, total, dict(metrics)))

    def epoch(self, record):
        self.post(EpochDone(dict(record)))

    def stopped(self, reason):
        self.post(RunStopped(reason))

    def should_stop(self) -> bool:
        return self.stop_requested.is_set()


def train_network(network, reporter: PostingReporter, epochs: int | None = None,
                  examples: int | None = None, device: str = "cpu") -> list[dict]:
    """Train a checked network (or its graph) on its bundled data, on the CPU or
    (`device` "gpu") with CuPy; returns the per-epoch history.

    Raises
    ------
    SpecError
        When the network cannot train (no loss, a bad train clause, no data), or the
        GPU cannot be used (netdsl.runtime.device.array_module).
    """
    session = prepare(network, {"epochs": epochs}, device)
    data = session.load_data(examples=examples)
    train, val = session.split(data)
    trainer = session.trainer(reporter=reporter)
    return trainer.fit(train, val if len(val) else None, data.description)
