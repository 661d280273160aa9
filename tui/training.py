"""Training from the builder: the runtime's Trainer with a Reporter that forwards progress.

`train_network` is the same sequence as `netc run` (plan, settings, bundled data,
validation split, normalisation) without checkpoints: a run from the builder is a
quick look at whether the network learns. It blocks, so the run panel calls it
from a worker thread; every report goes to `post`, which must be thread-safe.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from netdsl.runtime.train import Reporter, Trainer

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
        import time

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


def train_network(graph, reporter: PostingReporter, epochs: int | None = None,
                  examples: int | None = None, device: str = "cpu") -> list[dict]:
    """Train a checked graph on its bundled data, on the CPU or (`device` "gpu") with
    CuPy; returns the per-epoch history.

    Raises
    ------
    SpecError
        When the network cannot train (no loss, a bad train clause, no data), or the
        GPU cannot be used (netdsl.runner.array_module).
    """
    from netdsl.runner import array_module
    from netdsl.runtime.data import load_data, normalize
    from netdsl.lower import lower
    from netdsl.settings import resolve_settings

    xp = array_module(device)
    lowered = lower(graph, "cuda" if device == "gpu" else "host")
    settings = resolve_settings(graph.graph["train"], {"epochs": epochs} if epochs else {})
    data = load_data(graph, settings.data, settings.seed, examples)
    train, val = data.split(settings.val, settings.seed)
    if settings.normalize and data.normalize:
        _, (train, val) = normalize(train, val)
    trainer = Trainer(lowered, settings, None, xp=xp, reporter=reporter)
    return trainer.fit(train, val if len(val) else None, data.description)
