"""The training loop: phases of optimiser steps over shuffled batches, validation,
schedules, early stopping, checkpoints that resume exactly, and NaN detection.

A step runs forward, autodiff's backward for the phase's losses, the L1/L2
penalties, gradient clipping and the optimiser update of the phase's parameters.
Most networks have one phase (every loss, every parameter). A GAN (`gan_k`, two
losses, one of them reaching only some of the other's parameters) has two: k
discriminator steps on the discriminator's loss and parameters, then one
generator step on the generator's loss and the parameters only it reaches.

On a GPU (any array module but NumPy) a step never waits for the device: its loss
values and accuracy counts stay there, and the loop reads them back together every
READ_EVERY steps, at the end of an epoch, when it stops and before a checkpoint. A
NaN or Inf is then found at such a read, some steps late. To name the node that made
it, as the CPU does, the loop keeps a copy of the training state (parameters, running
statistics, optimiser state, random state) as it was after the last read, on the
device: the diagnosis goes back to it and reruns the steps since, checking each, up
to the one whose loss was not finite.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from netdsl.errors import SpecError, SpecErrors
from netdsl.lower import Lowered, Plan
from netdsl.recurrences import training_errors
from netdsl.runtime.checkpoint import (CHECKPOINT, CheckpointError, check_arrays,
                                       load_checkpoint, save_checkpoint)
from netdsl.runtime.distributed import rank_seed
from netdsl.runtime.data import Dataset, DataError, steps_per_epoch
from netdsl.runtime.execute import Executor, NonFinite
from netdsl.runtime.host import on_host, read_scalars, to_host
from netdsl.runtime.init import initial_params
from netdsl.runtime.optim import clip_grad_norm, make_optimizer, penalize
from netdsl.runtime.replicas import DataParallel, Replicas
from netdsl.schedules import make_schedule
from netdsl.settings import TrainSettings

__all__ = ["Phase", "Trainer", "Reporter", "metric_nodes", "TrainingDiverged", "READ_EVERY"]

# on a GPU, the steps between reads of the losses and accuracy counts (each read waits
# for the device to finish what it was given); the progress display refreshes at each
READ_EVERY = 20


def truncation(plan: Plan, settings: TrainSettings) -> tuple[int, int] | None:
    """Truncated BPTT's (k1, k2) for a network with a recurrence, or None for full BPTT.

    k1 steps run forward per chunk (an optimiser step each, the states carried to the
    next chunk without a gradient); a state's gradient flows back k2 <= k1 steps.
    """
    if settings.bptt is None or not plan.loops:
        return None
    # `netc check` asked this of the train clause; settings given otherwise (the Python
    # API) meet the same check here
    SpecErrors.collect(training_errors(plan.graph, truncated=True, gan_k=False))
    return settings.bptt


class TrainingDiverged(SpecError):
    """The loss became NaN or Inf; located at the node that first produced it."""


@dataclass(frozen=True)
class Phase:
    """Optimiser steps on some losses and parameters, `repeat` times per cycle."""

    name: str
    losses: tuple[str, ...]
    params: tuple[str, ...]
    repeat: int = 1


class Reporter:
    """Receives progress; the command line and the terminal UI draw it."""

    def start(self, description: str, settings: TrainSettings, epochs: int, steps: int) -> None:
        pass

    def step(self, epoch: int, done: int, total: int, metrics: dict) -> None:
        pass

    def epoch(self, record: dict) -> None:
        pass

    def stopped(self, reason: str) -> None:
        pass

    def warning(self, text: str) -> None:
        """Something the run survives (a checkpoint it could not write), on one line."""
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def should_stop(self) -> bool:
        """The terminal UI's stop button; the loop checkpoints and returns."""
        return False

    def diagnosis(self, where: str, text: str, hint: str) -> None:
        """A warning about a node (`netc run --diagnose`) at `where`, its file:line:col in
        the spec, laid out as the checker's errors are."""
        print(f"{where}: warning: {text}\n  hint: {hint}", file=sys.stderr, flush=True)

    def log(self, entry: dict) -> None:
        """Every `Trainer.log_every` steps: the step, its epoch, its losses, the epoch's
        accuracy so far, the learning rate, samples/s and the gradient norm (a run
        record writes it to metrics.jsonl)."""


def metric_nodes(plan: Plan) -> dict[str, tuple[str, str, str]]:
    """Loss name -> (kind, prediction node, target node) for losses with an accuracy.

    The kind is "class", "class_seq" (a class per step: the scores' class axis is 2),
    "binary" or "sign".
    """
    found = {}
    for name, node in plan.losses.items():
        step = plan.step_of(node)
        if len(step.inputs) != 2 or plan.graph.nodes[step.inputs[1]]["kind"] != "target":
            continue
        kind = step.op.accuracy
        if kind == "class" and plan.types[step.inputs[0]].seq:
            kind = "class_seq"
        if kind:
            found[name] = (kind, step.inputs[0], step.inputs[1])
    return found


def correct(kind: str, prediction, target) -> int:
    """How many predictions are right (per position for pixel-wise labels)."""
    return int(hits(kind, prediction, target))


def hits(kind: str, prediction, target):
    """`correct` as a 0-d array of the predictions' array module (read nothing back)."""
    if kind in ("class", "class_seq"):
        return (prediction.argmax(axis=2 if kind == "class_seq" else 1) == target).sum()
    prediction = prediction.reshape(target.shape)  # a [1] score against a label per example
    if kind == "binary":
        return ((prediction > 0) == (target > 0.5)).sum()
    return ((prediction > 0) == (target > 0)).sum()


def phases(lowered: Lowered, settings: TrainSettings) -> list[Phase]:
    """One phase for most networks; a discriminator and a generator phase for a GAN."""
    plan = lowered.plan
    everything = Phase("train", tuple(plan.losses), tuple(lowered.backward().params))
    if settings.gan_k is None:
        return [everything]
    SpecErrors.collect(training_errors(plan.graph, truncated=False, gan_k=True))  # see truncation
    reach = {name: set(lowered.backward((name,)).params) for name in plan.losses}
    (a, pa), (b, pb) = reach.items()
    if pa < pb or pb < pa:
        disc, gen = (a, b) if pa < pb else (b, a)
    else:
        raise SpecError("gan_k: one loss must reach only the discriminator's parameters "
                        "(the other reaches the generator's too)", None,
                        "stop the discriminator's loss at the generator: stop_gradient(fake) -> D")
    gen_only = tuple(k for k in plan.params if k in reach[gen] - reach[disc])
    disc_params = tuple(k for k in plan.params if k in reach[disc])
    return [Phase("discriminator", (disc,), disc_params, settings.gan_k),
            Phase("generator", (gen,), gen_only, 1)]


@dataclass
class _Position:
    """Where a run is: the epoch, batches done in it, optimiser steps, and the history."""

    epoch: int = 0
    batch: int = 0
    iteration: int = 0
    history: list = field(default_factory=list)   # per epoch records
    losses: list = field(default_factory=list)    # per step losses
    best: float | None = None
    bad_epochs: int = 0
    sums: dict | None = None  # mid-epoch: the epoch's running sums, so a resume reports the same


def _plain(value):
    """A NumPy scalar as the Python number it is, which a checkpoint's JSON can hold."""
    return value.item() if hasattr(value, "item") else value


@dataclass
class _Unread:
    """A step's (or an evaluation batch's) numbers still on the device, read back later."""

    iteration: int
    size: int = 0                                # the examples of the (global) batch
    batch: dict | None = None                    # the step's batch (host arrays), to rerun it
    values: dict = field(default_factory=dict)   # loss name -> 0-d arrays, one per chunk
    checks: list = field(default_factory=list)   # (phase, its losses' 0-d arrays) per update
    correct: list = field(default_factory=list)  # 0-d counts of right predictions


class Trainer:
    """Trains a lowered network on a dataset with the given settings.

    Parameters
    ----------
    lowered : Lowered
        Lowered for the device `xp` is (target "host" for NumPy, "cuda" for CuPy).
    settings : TrainSettings
    checkpoint : str, optional
        A folder; the run state is written there atomically each epoch and every
        `checkpoint_every` seconds, and `resume` continues from it.
    xp : module
        numpy, or cupy for `--device gpu`: then steps do not wait for the device, and
        losses are read back every READ_EVERY steps (see the module's docstring).
    parallel : DataParallel, optional
        Train as one of several data-parallel workers (runtime.replicas): on this
        worker's part of every global batch, with the gradients summed over them.
        Rank 0 alone writes checkpoints.
    dtype : str
        The parameters' and activations' float type.
    """

    def __init__(self, lowered: Lowered, settings: TrainSettings, checkpoint: str | None = None,
                 checkpoint_every: float = 30.0, xp=np, reporter: Reporter | None = None,
                 parallel: DataParallel | None = None, dtype: str = "float32"):
        self.lowered, self.plan, self.settings, self.xp = lowered, lowered.plan, settings, xp
        plan = self.plan
        self.folder, self.every = checkpoint, checkpoint_every
        self.reporter = reporter or Reporter()
        self.phases = phases(lowered, settings)
        order = [k for phase in self.phases for k in phase.params]
        order += [k for k in plan.params if k not in order]
        params = initial_params(lowered.built, settings.init, settings.seed)
        rank = parallel.comm.rank if parallel else 0
        self.executor = Executor(lowered, params, rank_seed(settings.seed, rank), xp, dtype,
                                 order=order)
        del params  # copied into the executor's flat vector: not held beside the optimiser's
        # gradients are read between backward and the update only: the step's values may
        # live in the gradient vector until backward writes there
        self.executor.lodge_values = True
        self.truncation = truncation(plan, settings)
        if self.truncation and self.truncation[1] < self.truncation[0]:
            self.executor.reach = self.truncation[1]
        self.executor.checkpoint = settings.checkpoint if plan.loops else None
        self.optimizers = []
        for phase in self.phases:
            part = self.executor.param_slice(phase.params)
            self.optimizers.append((part, make_optimizer(
                settings.optimizer, settings.optimizer_settings, self.executor.flat_params[part],
                native=lowered.target.name == "native")))
        self.replicas = Replicas(parallel, self.executor, self.phases, settings)
        self.probe = None  # runtime.diagnostics.Probe: per-node statistics every N steps
        # the first loss with an accuracy is the one reported
        self.metric = next(iter(metric_nodes(plan).values()), None)
        self.position = _Position()
        self.best_params = None
        self._schedule_state = None
        self.extra_arrays: dict[str, np.ndarray] = {}  # stored with checkpoints (normalisation)
        # off the host, steps leave their numbers on the device until _read
        self.deferred = not on_host(xp)
        self._unread: list[_Unread] = []
        self._sums: dict = {}          # the running epoch's sums, which _read adds to
        self._last_losses: dict = {}   # the mean losses of the last step read
        self._since = None             # the training state before the first unread step
        self._grad_sq = 0.0            # the last step's squared gradient norm, before clipping
        self.log_every = 10            # steps between Reporter.log entries
        self._logged = 0               # the step of the last entry (fit starts it afresh)
        self.unsaved: str | None = None  # why the last checkpoint write failed
        self.saved_at: int | None = None  # the step the checkpoint on disk holds, of this run
        # what a failed checkpoint write does: "continue" to the next interval, or "stop"
        # the run, leaving the previous checkpoint to resume from
        self.on_write_error = "continue"

    # ---- the loop

    def fit(self, train: Dataset, val: Dataset | None, description: str = "") -> list[dict]:
        """Train for the configured epochs (or steps); return the per-epoch history."""
        # a NaN is caught and located by _diagnose; NumPy's warnings would only repeat it
        with np.errstate(all="ignore"), self.replicas.training():
            return self._fit(train, val, description)

    def _fit(self, train: Dataset, val: Dataset | None, description: str) -> list[dict]:
        s, pos, replicas = self.settings, self.position, self.replicas
        steps = steps_per_epoch(len(train), s.batch, replicas.size)
        self.schedule = make_schedule(s.schedule, self.optimizers[0][1].lr, s.epochs, steps)
        if self._schedule_state is not None:
            try:
                self.schedule.load_state_dict(self._schedule_state)
            except (ValueError, TypeError, AttributeError) as exc:  # another schedule's state
                raise SpecError(f"{self._restored_from} does not fit this run ({exc})", None,
                                "run without --resume to start over") from None
        self.reporter.start(description, s, s.epochs, steps)
        last_save = time.monotonic()
        self._logged = pos.iteration
        while pos.epoch < s.epochs:
            # each epoch's order comes from (seed, epoch) alone, so a resumed run repeats it
            # (and so does a run on another number of workers)
            shuffler = np.random.default_rng((s.seed, pos.epoch)) if s.shuffle else None
            batches = replicas.shards(train, s.batch, shuffler)
            resumed = pos.batch and pos.sums  # mid-epoch: the sums of its first batches
            sums = self._sums = {"samples": 0, "correct": 0, "positions": 0,
                                 "grad_norm": 0.0, "grad_steps": 0}
            if resumed:
                sums.update(pos.sums)
            started = time.perf_counter()
            for index, (batch, total) in enumerate(batches):
                if index < pos.batch:
                    continue  # resumed mid-epoch: these were done before the checkpoint
                losses = self._step(batch, steps, sums, total=total)
                replicas.stepped()
                pos.batch, pos.iteration = index + 1, pos.iteration + 1
                if self.deferred:  # read (and report) every READ_EVERY steps
                    stop = self._out_of_steps() or self.reporter.should_stop()
                    if stop or pos.batch == steps or len(self._unread) >= READ_EVERY:
                        self._report(self._read(), sums, started, steps)
                else:
                    pos.losses.append(losses)
                    self._report(losses, sums, started, steps)
                    stop = self._out_of_steps() or self.reporter.should_stop()
                if stop:
                    self._save()
                    self.reporter.stopped("stopped at step %d" % pos.iteration)
                    return pos.history
                if self.folder and replicas.agree(time.monotonic() - last_save > self.every):
                    self._save()
                    last_save = time.monotonic()
            self._read()
            record = self._end_epoch(train, val, sums, time.perf_counter() - started)
            self.reporter.epoch(record)
            stop = self._early_stop(record)
            self._save()
            last_save = time.monotonic()
            if stop:
                self.reporter.stopped(stop)
                break
        return pos.history

    def _report(self, losses: dict, sums: dict, started: float, steps_per_epoch: int) -> None:
        """Progress after a step (off the host, after a read: the last step read), and a
        log entry whenever the run has passed a multiple of `log_every` steps."""
        pos = self.position
        rate = sums["samples"] / max(time.perf_counter() - started, 1e-9)
        metrics = {**losses, **self._accuracy(sums), "samples/s": rate}
        self.reporter.step(pos.epoch, pos.batch, steps_per_epoch, metrics)
        norm = math.sqrt(float(self._grad_sq))  # off the host, just read back: no wait
        sums["grad_norm"] += norm
        sums["grad_steps"] += 1
        if pos.iteration // self.log_every > self._logged // self.log_every:
            self._logged = pos.iteration
            self.reporter.log({"step": pos.iteration, "epoch": pos.epoch + 1, **metrics,
                               "lr": self.schedule.lr(pos.epoch, max(pos.iteration - 1, 0)),
                               "grad_norm": norm})

    def _out_of_steps(self) -> bool:
        return self.settings.steps is not None and self.position.iteration >= self.settings.steps

    def _step(self, batch: dict, steps_per_epoch: int, sums: dict, check: bool = False,
              total: int | None = None) -> dict | None:
        """One cycle of the phases on one batch (on each chunk of it, under truncated
        BPTT); the mean loss values it saw, or None off the host, where they wait in
        `_unread` for `_read`. With `check` (a diagnosis rerunning it) a non-finite loss
        stops training at once, on the device too. A data-parallel worker's `batch` is
        its part of a global batch of `total` examples."""
        pos = self.position
        size = len(next(iter(batch.values())))
        total = total or size
        self.replicas.begin_batch(size, total)
        lr = self.schedule.lr(pos.epoch, pos.iteration)
        seen: dict[str, list] = {}
        carry = None
        record = None
        if self.deferred and not check:
            if not self._unread:  # the first step since a read: keep the state it starts from
                self._since = self._snapshot()
            record = _Unread(pos.iteration + 1, total, batch=batch)
        probe = self.probe
        if probe is not None and not check and probe.due(pos.iteration + 1):
            probe.begin(self.executor)
        else:
            probe = None
        try:
            for chunk in self._chunks(batch):
                out, values = self._update(chunk, lr, carry, record)
                carry = getattr(self.executor, "carry", None)
                if not check:
                    self._count(sums, out, chunk, record)
                for name, value in values.items():
                    seen.setdefault(name, []).append(value)
        finally:
            self.executor.observer = None
        if probe is not None:
            probe.finish(self.executor, pos.iteration + 1, pos.epoch + 1)
        sums["samples"] += total
        if record is not None:
            record.values = seen
            self._unread.append(record)
            return None
        means = {name: sum(v) / len(v) for name, v in seen.items()}
        for name, value in means.items():
            sums[name] = sums.get(name, 0.0) + value * total
        return means

    def _chunks(self, batch: dict):
        """The batch, or under truncated BPTT its consecutive pieces of k1 steps."""
        if self.truncation is None:
            yield batch
            return
        k1 = self.truncation[0]
        if any(n.endswith(".lengths") for n in batch):
            raise DataError("truncated BPTT cuts every sequence into chunks of the same steps, "
                            "so it cannot train on padded sequences of different lengths",
                            "remove bptt(...) from the train clause, or pad nothing")
        timed = [n for n in batch if n in self.plan.types and self.plan.types[n].seq]
        length = batch[timed[0]].shape[1]
        for start in range(0, length, k1):
            yield {n: a[:, start:start + k1] if n in timed else a for n, a in batch.items()}

    def _update(self, batch: dict, lr: float, carry, record: _Unread | None = None
                ) -> tuple[dict, dict]:
        """Forward, backward and the optimiser step of every phase on one batch. On the
        host a non-finite loss stops training at once; off it, `record` keeps the losses
        (0-d device arrays) for `_read` to check."""
        s, ex, replicas = self.settings, self.executor, self.replicas
        keep = {self.metric[1]} if self.metric else set()
        extra = {} if carry is None else {"carry": carry}
        seen: dict = {}
        self._grad_sq = 0.0
        for index, (phase, (part, optimizer)) in enumerate(zip(self.phases, self.optimizers)):
            for _ in range(phase.repeat):
                before = ex.rng_state()
                out = ex.forward(batch, True, keep, **extra)
                # the global batch's losses: every worker sees the same NaN
                values = replicas.mean({name: out[node] for name, node in self.plan.losses.items()})
                if record is None:
                    values = {name: float(value) for name, value in values.items()}
                    if not all(math.isfinite(values[name]) for name in phase.losses):
                        self._diagnose(batch, before, phase, extra)
                else:
                    record.checks.append((phase, [values[name] for name in phase.losses]))
                ex.backward(self.lowered.backward(phase.losses, phase.params),
                            hook=replicas.hook(index))
                replicas.finish(index)
                if ex.observer is not None:  # a step --diagnose records
                    ex.observer.parameters(ex, phase.params)
                grads = ex.flat_grads[part]
                self._grad_sq = self._grad_sq + grads @ grads  # a 0-d array off the host
                if s.l1 or s.l2:
                    penalize(ex.flat_params[part], grads, s.l1, s.l2)
                if s.clip:
                    clip_grad_norm(grads, s.clip)
                optimizer.step(grads, lr)
                seen.update(values)
        return out, seen

    def _count(self, sums: dict, out: dict, batch: dict, record: _Unread | None = None) -> None:
        """Add a batch's right predictions and positions to `sums`; off the host the
        count (a 0-d device array) goes to `record` instead, for `_read`."""
        if not self.metric:
            return
        kind, prediction, target = self.metric
        labels = batch[target]
        lengths = [a for n, a in batch.items() if n.endswith(".lengths")]
        if kind == "class_seq" and lengths:  # a padded batch: count the real steps only
            real = np.arange(labels.shape[1])[None, :] < np.asarray(lengths[0])[:, None]
            if record is None:
                right = out[prediction].argmax(axis=2) == labels
                sums["correct"] += int((right & real).sum())
            else:
                xp = self.xp
                right = out[prediction].argmax(axis=2) == xp.asarray(labels)
                record.correct.append((right & xp.asarray(real)).sum())
            sums["positions"] += int(real.sum())
            return
        if record is None:
            sums["correct"] += correct(kind, out[prediction], labels)
        else:
            record.correct.append(hits(kind, out[prediction], self.xp.asarray(labels)))
        sums["positions"] += labels.size

    def _fetch(self, records: list[_Unread]) -> list[tuple[dict, list, int]]:
        """Per record, its loss values (name -> floats), its checks ((phase, floats) per
        update) and its count of right predictions, read from the device in one transfer."""
        arrays: list = []
        slots: dict[int, int] = {}

        def slot(array) -> int:
            if id(array) not in slots:  # a loss value is also a check: read once
                slots[id(array)] = len(arrays)
                arrays.append(array)
            return slots[id(array)]

        layout = [({name: [slot(v) for v in values] for name, values in r.values.items()},
                   [(phase, [slot(v) for v in values]) for phase, values in r.checks],
                   [slot(c) for c in r.correct]) for r in records]
        host = read_scalars(self.xp, arrays)
        return [({name: [host[i] for i in at] for name, at in values.items()},
                 [(phase, [host[i] for i in at]) for phase, at in checks],
                 sum(int(host[i]) for i in correct)) for values, checks, correct in layout]

    def _read(self) -> dict:
        """Off the host: read the steps' numbers left on the device, in one transfer, add
        them to the epoch's sums and the per-step losses as the host's loop would have,
        and stop at the first non-finite loss. Returns the last step's mean losses."""
        if not self._unread:
            return self._last_losses
        records, self._unread = self._unread, []
        pos, sums = self.position, self._sums
        for index, (record, (values, checks, right)) in enumerate(
                zip(records, self._fetch(records))):
            if not all(math.isfinite(v) for _, losses in checks for v in losses):
                self._rerun(records[:index + 1])
            means = {name: sum(v) / len(v) for name, v in values.items()}
            for name, value in means.items():
                sums[name] = sums.get(name, 0.0) + value * record.size
            sums["correct"] += right
            pos.losses.append(means)
            self._last_losses = means
        return self._last_losses

    def _accuracy(self, sums: dict) -> dict:
        return {"accuracy": sums["correct"] / sums["positions"]} if sums["positions"] else {}

    def _diagnose(self, batch: dict | None, rng_state: dict, phase: Phase, extra: dict):
        """Replay the step checking every node, and raise at the first that made NaN or Inf
        (without a batch, raise saying only which step it was). Data-parallel workers
        each replay their own part and raise the same error: the first worker's find."""
        ex = self.executor
        where = None
        if batch is not None:
            ex.set_rng_state(rng_state)
            try:
                with self.replicas.paused():
                    ex.forward(batch, True, check_finite=True, **extra)
                    ex.backward(self.lowered.backward(phase.losses, phase.params),
                                check_finite=True)
            except NonFinite as exc:
                where = (exc.node, exc.phase)
        found = self.replicas.first_found(where)
        step = self.position.iteration + 1
        if found is None:
            raise TrainingDiverged(f"the loss became NaN or Inf at step {step}", None,
                                   "lower the learning rate, or clip gradients (clip=1.0)")
        rank, made, pass_ = found
        node = self.plan.step_of(made).origin or made
        data = self.plan.graph.nodes[node]
        on = f" on worker rank {rank}'s examples" if self.replicas.size > 1 else ""
        raise TrainingDiverged(
            f"the loss became NaN or Inf at step {step}: the {pass_} pass of "
            f"'{node}' ({data['op'].name}) produced it first{on}", data["span"],
            "lower the learning rate, clip gradients (clip=1.0) or normalise the inputs")

    def _snapshot(self) -> dict:
        """Off the host: a copy, on the device, of what a step changes (parameters,
        running statistics, optimiser state, random state, the step count)."""
        ex = self.executor
        return {"params": ex.flat_params.copy(),
                "buffers": {node: {k: v.copy() for k, v in entries.items()}
                            for node, entries in ex.buffers.items()},
                "optimizers": [optimizer.state_dict() for _, optimizer in self.optimizers],
                "rng": ex.rng_state(), "iteration": self.position.iteration}

    def _rerun(self, records: list[_Unread]) -> None:
        """Diagnose a non-finite loss found in the last of `records`, read late: go back
        to the state before the first of them and rerun them, checking each update as
        the host's loop does, which raises at the one that made it, naming the node."""
        ex, pos, since = self.executor, self.position, self._since
        ex.flat_params[...] = since["params"]
        for node, entries in ex.buffers.items():
            entries.clear()
            entries.update({k: v.copy() for k, v in since["buffers"].get(node, {}).items()})
        for (_, optimizer), state in zip(self.optimizers, since["optimizers"]):
            optimizer.load_state_dict(dict(state))
        ex.set_rng_state(since["rng"])
        pos.iteration = since["iteration"]
        scratch = {"samples": 0, "correct": 0, "positions": 0}
        for record in records:
            # raises at the bad update
            self._step(record.batch, 0, scratch, check=True, total=record.size)
            pos.iteration += 1
        # the rerun stayed finite (a GPU's atomic adds may round differently): say which step
        pos.iteration = records[-1].iteration - 1
        self._diagnose(None, {}, self.phases[0], {})

    def evaluate(self, data: Dataset, batch: int | None = None) -> dict:
        """Mean losses and accuracy over a dataset in evaluation mode (data-parallel
        workers each evaluate a part of it and sum what they found)."""
        sums = {"samples": 0, "correct": 0, "positions": 0,
                **{name: 0.0 for name in self.plan.losses}}
        keep = {self.metric[1]} if self.metric else set()
        records = []  # off the host: each batch's numbers, read back once at the end
        batch = batch or max(self.settings.batch, 256)
        self.replicas.starting("evaluate", len(data), batch)   # every worker's sizes
        data = self.replicas.part(data)
        for part in data.batches(batch, None):
            out = self.executor.forward(part, False, keep)
            size = len(next(iter(part.values())))
            sums["samples"] += size
            if self.deferred:
                record = _Unread(0, size, values={name: [out[node]] for name, node
                                                  in self.plan.losses.items()})
                self._count(sums, out, part, record)
                records.append(record)
                continue
            for name, node in self.plan.losses.items():
                sums[name] = sums.get(name, 0.0) + float(out[node]) * size
            self._count(sums, out, part)
        for record, (values, _, right) in zip(records, self._fetch(records)):
            for name, (value,) in values.items():
                sums[name] = sums.get(name, 0.0) + value * record.size
            sums["correct"] += right
        sums = self.replicas.total(sums)
        self.replicas.stepped()
        result = {name: sums[name] / sums["samples"] for name in self.plan.losses}
        result["loss"] = sum(result[name] for name in self.plan.losses)
        return {**result, **self._accuracy(sums)}

    def _end_epoch(self, train: Dataset, val: Dataset | None, sums: dict, seconds: float) -> dict:
        pos = self.position
        record = {"epoch": pos.epoch + 1}
        done = max(sums["samples"], 1)
        for name in self.plan.losses:
            if name in sums:
                record[name] = sums[name] / done
        record["loss"] = sum(record.get(name, 0.0) for name in self.plan.losses)
        # a worker counted its own examples' right predictions
        record.update(self._accuracy(self.replicas.total(
            {"correct": sums["correct"], "positions": sums["positions"]})))
        self.replicas.average_buffers()
        self.replicas.check_same(self.executor.flat_params)
        if val is not None and len(val):
            record.update({f"val_{k}": v for k, v in self.evaluate(val).items()})
        record["samples/s"] = sums["samples"] / max(seconds, 1e-9)
        if sums.get("grad_steps"):  # the mean of the steps' (off the host: the reads') norms
            record["grad_norm"] = sums["grad_norm"] / sums["grad_steps"]
        record["lr"] = self.schedule.lr(pos.epoch, max(pos.iteration - 1, 0))
        self.schedule.end_epoch(record.get("val_loss"))
        pos.history.append(record)
        pos.epoch, pos.batch = pos.epoch + 1, 0
        return record

    def _early_stop(self, record: dict) -> str | None:
        rule = self.settings.early_stop
        if rule is None:
            return None
        metric = rule.get("metric", "loss")
        value = record.get(f"val_{metric}")
        if value is None:
            return None
        score = -value if metric == "accuracy" else value
        pos = self.position
        if pos.best is None or score < pos.best:
            pos.best, pos.bad_epochs = score, 0
            self.best_params = self.executor.flat_params.copy()
            return None
        pos.bad_epochs += 1
        if pos.bad_epochs < int(rule.get("patience", 5)):
            return None
        self.executor.flat_params[...] = self.best_params
        return (f"early stop: validation {metric} has not improved for {pos.bad_epochs} "
                f"epochs; keeping the parameters of its best epoch")

    # ---- checkpoints

    def state(self) -> tuple[dict, dict]:
        """The arrays and the document that make a checkpoint (off the host, the steps'
        numbers are read back first: the document holds every step's losses)."""
        self._read()
        ex, pos, xp = self.executor.state_dict(), self.position, self.xp
        pos.sums = {k: _plain(v) for k, v in self._sums.items()} if pos.batch else None
        arrays = {"params": ex["params"], **self.extra_arrays}
        buffers = self.replicas.average(ex["buffers"], host=True)
        arrays.update({f"buffer/{k}": v for k, v in buffers.items()})
        for index, (_, optimizer) in enumerate(self.optimizers):
            for key, value in optimizer.state_dict().items():
                arrays[f"optimizer{index}/{key}"] = np.asarray(to_host(xp, value))
        if self.best_params is not None:
            arrays["best_params"] = np.asarray(to_host(xp, self.best_params))
        meta = {"layout": [[k, list(self.plan.params[k].shape), *self.executor.offsets[k]]
                           for k in self.plan.params],
                "rng": ex["rng"],
                "schedule": self.schedule.state_dict() if hasattr(self, "schedule") else None,
                "position": vars(pos)}
        rngs = self.replicas.gather_rngs(ex["rng"])
        if rngs is not None:
            meta["workers"] = {"count": len(rngs), "rng": rngs}
        return arrays, meta

    def _save(self) -> None:
        """Checkpoint: every data-parallel worker takes part, rank 0 writes.

        A write that fails (a full disk) leaves the previous checkpoint as it was (the
        write is atomic). With `on_write_error` "continue" the run says so and goes on to
        the next interval, when the write is tried again; `unsaved` says why the last
        write failed (None after one that succeeded), so that the command can end on an
        error when the final one does. With "stop" the run ends there, every worker
        together, raising a SpecError that names the step the checkpoint holds.
        """
        if not self.folder:
            return
        arrays, meta = self.state()
        if self.replicas.rank == 0:
            try:
                save_checkpoint(self.folder, arrays, meta)
                self.unsaved, self.saved_at = None, self.position.iteration
            except OSError as exc:
                self.unsaved = f"{exc.strerror or exc}"
        stop = self.on_write_error == "stop"
        # rank 0 alone wrote: the others learn from it whether to stop (a collective call,
        # made by every worker, which all run with the same flags)
        if stop and self.replicas.agree(self.unsaved is not None):
            raise self._stopped_unsaved()
        if self.unsaved is not None and not stop:
            self.reporter.warning(
                f"could not write the checkpoint at step {self.position.iteration} "
                f"({self.unsaved}); {os.path.join(self.folder, CHECKPOINT)} keeps "
                "the previous one; training goes on and tries again")

    def _stopped_unsaved(self) -> SpecError:
        """The error that ends a run whose checkpoint write failed (on_write_error "stop")."""
        path = os.path.join(self.folder, CHECKPOINT)
        said = f" ({self.unsaved})" if self.unsaved else ""
        failed = (f"could not write the checkpoint at step {self.position.iteration}{said}; "
                  "training stopped (--on-write-error stop)")
        if self.saved_at is None:
            return SpecError(f"{failed}; no checkpoint of this run was written", None,
                             "free space (or fix the folder) and run it again")
        return SpecError(f"{failed}; {path} holds step {self.saved_at}", None,
                         f"free space (or fix the folder), then run the same command with "
                         f"--resume to continue from step {self.saved_at}")

    def _check_arrays(self, path: str, arrays: dict) -> None:
        """The checkpoint's arrays are this run's: same names, shapes and types."""
        params = self.executor.flat_params
        expected = {name: (params.shape, params.dtype) for name in ("params", "best_params")}
        for index, (_, optimizer) in enumerate(self.optimizers):
            for key, value in optimizer.state_dict().items():
                value = np.asarray(to_host(self.xp, value))
                expected[f"optimizer{index}/{key}"] = (value.shape, value.dtype)
        check_arrays(path, arrays, expected, optional=("best_params",))
        for name, value in arrays.items():
            node = name[len("buffer/"):].rpartition(":")[0]
            if name.startswith("buffer/") and (node not in self.executor.buffers
                                               or value.dtype.kind != "f"):
                raise CheckpointError(f"{path}: {name} is not a running statistic of this "
                                      "network")

    def restore(self, folder: str) -> dict[str, np.ndarray]:
        """Continue from the checkpoint in `folder`; return its arrays (the application's
        own, such as the input normalisation, are among them).

        Raises
        ------
        CheckpointError
            When it is missing, unreadable or made by a different network.
        """
        arrays, meta = self.replicas.load(load_checkpoint, folder)
        path = os.path.join(folder, CHECKPOINT)
        layout = [[k, list(self.plan.params[k].shape), *self.executor.offsets[k]]
                  for k in self.plan.params]
        if meta["layout"] != layout:
            raise CheckpointError(f"the checkpoint in {folder} was made by a different "
                                  "network (its parameters differ from this spec's)")
        self._check_arrays(path, arrays)
        buffers = {k[len("buffer/"):]: v for k, v in arrays.items() if k.startswith("buffer/")}
        try:
            self.executor.load_state_dict({"params": arrays["params"], "buffers": buffers,
                                           "rng": self.replicas.resumed_rng(meta,
                                                                            self.settings.seed)})
            for index, (_, optimizer) in enumerate(self.optimizers):
                prefix = f"optimizer{index}/"
                state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
                state = {k: (v.item() if v.ndim == 0 else v) for k, v in state.items()}
                optimizer.load_state_dict(state)
            self.position = _Position(**meta["position"])
        except (ValueError, TypeError, KeyError) as exc:  # a document edited or damaged
            raise CheckpointError(f"{path} does not fit this run ({exc})") from None
        if "best_params" in arrays:
            self.best_params = self.xp.asarray(arrays["best_params"])
        self._schedule_state, self._restored_from = meta.get("schedule"), path
        self.saved_at = self.position.iteration
        return arrays
