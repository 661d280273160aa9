"""A run's record in its folder (runs/NAME): what was run, how, and how it went.

    spec.net        the spec as run (its imports are named, with their hashes, in run.json)
    run.json        the spec's path and SHA-256, the command, the device, the data, the
                    resolved training settings, when it started (and was resumed)
    metrics.jsonl   one JSON object per line: {"kind": "step", ...} every Trainer.log_every
                    steps and {"kind": "epoch", ...} at the end of every epoch
    checkpoint.npz  written by the trainer (runtime.checkpoint)
    events.out.tfevents.*  the same numbers for TensorBoard, where tensorboardX (the
                    `tensorboard` extra) is installed: `tensorboard --logdir runs`

Lines are appended one write each and flushed, so a reader (`netc runs`, `netc plot`, a
`tail -f`) sees whole lines; a kill can cut only the last, which readers skip. A resumed
run first drops the lines logged after its checkpoint's step, so that the file reads as
one run that was never interrupted. A line that cannot be written (a full disk) is left
out with a warning, once until a line is written again: the run goes on.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import json
import os

from netdsl import __version__
from netdsl.atomic import write_text
from netdsl.runtime.train import Reporter

__all__ = ["RecordingReporter", "read_metrics", "read_run", "run_folder", "spec_hash",
           "METRICS", "RUN", "SPEC_COPY"]

METRICS, RUN, SPEC_COPY = "metrics.jsonl", "run.json", "spec.net"


def spec_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_metrics(folder: str, name: str = METRICS) -> list[dict]:
    """The lines of folder/metrics.jsonl (or another JSON-lines file of the record, `name`)
    as dicts ([] without one); a line cut by a kill, or not JSON, is skipped."""
    path = os.path.join(folder, name)
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def read_run(folder: str) -> dict:
    """folder/run.json ({} without a readable one)."""
    try:
        with open(os.path.join(folder, RUN), encoding="utf-8") as handle:
            run = json.load(handle)
    except (OSError, ValueError):
        return {}
    return run if isinstance(run, dict) else {}


def run_folder(name: str, spec: str | None, new_run: bool) -> str:
    """The run folder of a spec when --checkpoint names none: runs/NAME, unless that folder
    holds the run of another spec file with the same network name (two variants of one
    network); then runs/NAME-2, runs/NAME-3, ... So training a variant never replaces
    another file's run. A new run takes the first folder that is free or holds this spec
    file's run (a rerun of a file replaces its own run, keeping previous.npz); a reader
    (--resume, eval, predict, export, the builder's colours) the first that holds this
    spec file's run, else runs/NAME."""
    base = os.path.join("runs", name)
    if spec is None:
        return base
    for folder in itertools.chain([base], (f"{base}-{k}" for k in itertools.count(2))):
        if not os.path.exists(folder):
            return folder if new_run else base
        recorded = read_run(folder).get("spec")
        if recorded is None or _same_file(recorded, spec):
            return folder
    raise AssertionError("unreachable: the candidate folders never end")


def _same_file(recorded: str, spec: str) -> bool:
    """Whether a record's spec path (as the user named it, from the folder netc ran in)
    names `spec`."""
    return os.path.realpath(recorded) == os.path.realpath(spec)


def _event_writer(folder: str, resumed_at: int | None):
    """A TensorBoard event writer for `folder`, or None without tensorboardX. It asks
    TensorBoard to drop the events of earlier writers from the first step it writes: a
    resumed run's after the checkpoint's step (as metrics.jsonl drops its lines), a run
    that starts over all of them."""
    try:
        from tensorboardX import SummaryWriter  # the tensorboard extra, optional
    except ImportError:
        return None
    first = 0 if resumed_at is None else resumed_at + 1
    return SummaryWriter(logdir=folder, flush_secs=10, purge_step=first)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _plain(value):
    """Settings as JSON: tuples as lists, anything else JSON lacks as its text."""
    return json.loads(json.dumps(value, default=str))


class RecordingReporter(Reporter):
    """Writes the run record of `folder`, taking the place of `trainer`'s reporter, to
    which it passes every report on.

    Parameters
    ----------
    trainer : Trainer
        Its settings are recorded, and its position gives each epoch line its step.
    network : netdsl.driver.Network
        The checked spec: its main source is copied, every source hashed.
    spec : str
        The spec's path as the user named it (or the builder's file name).
    resumed_at : int, optional
        The checkpoint's step when the run resumes from it: later lines are dropped.
    command, device : str
        For run.json: the command line and where it trains.
    """

    def __init__(self, trainer, folder: str, network, spec: str,
                 resumed_at: int | None = None, command: str = "", device: str = "cpu"):
        self.inner, self.trainer, self.folder = trainer.reporter, trainer, folder
        self.network, self.spec = network, spec
        self.resumed_at, self.command, self.device = resumed_at, command, device
        self.events = None  # a tensorboardX SummaryWriter, when the extra is installed
        self.unwritten = False  # whether the last metrics line could not be written
        trainer.reporter = self

    def start(self, description, settings, epochs, steps):
        self._write_run(description)
        self._prepare_metrics()
        self.events = _event_writer(self.folder, self.resumed_at)
        self.inner.start(description, settings, epochs, steps)

    def _write_run(self, description: str) -> None:
        sources = dict(self.network.sources)
        main = self.spec if self.spec in sources else next(iter(sources), None)
        text = sources.get(main, "")
        earlier = read_run(self.folder) if self.resumed_at is not None else {}
        run = {
            "name": self.network.name,
            "spec": self.spec,
            "sha256": spec_hash(text),
            "imports": {path: spec_hash(body) for path, body in sources.items()
                        if path != main},
            "command": self.command,
            "device": self.device,
            "data": description,
            "settings": _plain(dataclasses.asdict(self.trainer.settings)),
            "started": earlier.get("started", _now()),
            "resumed": earlier.get("resumed", []) + ([_now()] if earlier else []),
            "netdsl": __version__,
        }
        if earlier.get("sha256") not in (None, run["sha256"]):
            self.inner.warning(f"{self.spec} has changed since this run started; "
                               f"{os.path.join(self.folder, SPEC_COPY)} now holds the new text")
        os.makedirs(self.folder, exist_ok=True)
        write_text(os.path.join(self.folder, SPEC_COPY), text)
        write_text(os.path.join(self.folder, RUN), json.dumps(run, indent=2) + "\n")

    def _prepare_metrics(self) -> None:
        """A fresh run starts an empty file; a resumed one keeps the lines up to its
        checkpoint's step (rewritten atomically)."""
        kept = []
        if self.resumed_at is not None:
            kept = [e for e in read_metrics(self.folder)
                    if isinstance(e.get("step"), int) and e["step"] <= self.resumed_at]
        write_text(os.path.join(self.folder, METRICS),
                   "".join(json.dumps(e) + "\n" for e in kept))

    def _append(self, entry: dict) -> None:
        # one write of a whole line, in append mode: readers never see half of one
        line = json.dumps(entry, default=float) + "\n"
        path = os.path.join(self.folder, METRICS)
        try:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError as exc:  # a full disk: the metrics matter less than the training
            if not self.unwritten:
                self.inner.warning(f"could not append to {path} ({exc.strerror or exc}); "
                                   "training goes on, its lines are missing until one "
                                   "can be written")
            self.unwritten = True
            return
        self.unwritten = False

    def log(self, entry):
        self._append({"kind": "step", **entry})
        self._scalars("train", entry, entry["step"])
        self.inner.log(entry)

    def epoch(self, record):
        step = self.trainer.position.iteration
        self._append({"kind": "epoch", "step": step, **record})
        self._scalars("epoch", record, step)
        if self.events is not None:
            self.events.flush()
        self.inner.epoch(record)

    def _scalars(self, group: str, entry: dict, step: int) -> None:
        """TensorBoard's scalars: train/loss, epoch/accuracy, val/loss (val_ numbers under
        val/ whatever the group), lr, samples_per_s, grad_norm."""
        if self.events is None:
            return
        for key, value in entry.items():
            if key in ("step", "epoch") or not isinstance(value, (int, float)):
                continue
            if key.startswith("val_"):
                tag = f"val/{key[4:]}"
            elif key in ("lr", "grad_norm", "samples/s"):
                tag = f"{group}/{key.replace('/', '_per_')}"
            else:
                tag = f"{group}/{key}"
            self.events.add_scalar(tag, value, step)

    def step(self, epoch, done, total, metrics):
        self.inner.step(epoch, done, total, metrics)

    def stopped(self, reason):
        if self.events is not None:
            self.events.flush()
        self.inner.stopped(reason)

    def close(self) -> None:
        """The TensorBoard files made whole: a flushed writer's thread may still hold the
        last events, which a process that goes on (the workbench, a test) would not see."""
        if self.events is not None:
            self.events.close()
            self.events = None

    def warning(self, text):
        self.inner.warning(text)

    def diagnosis(self, where, text, hint):
        self.inner.diagnosis(where, text, hint)

    def should_stop(self):
        return self.inner.should_stop()
