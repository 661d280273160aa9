"""Memory checked before allocating: `netc run`, `eval`, `predict` and the builder's runs
compare the planned peak of what they will do (in float32, the dtype runs use) with the
memory this process may still take, and refuse, with the estimate and the largest batch
that fits, before a single parameter is made. `--force` runs anyway.

A network with a time axis is planned at its data's length: what BPTT keeps over the
sequence (netdsl.lower.loop_memory) and the sequence values made outside the loops, and
their gradients beside them in backward."""
from __future__ import annotations

from dataclasses import dataclass

from netdsl.errors import SpecError
from netdsl.lower import Lowered
from netdsl.lower.loop_memory import outside_sequence_numbers, recurrence_figures
from netdsl.lower.memory import MemoryPlan
from netdsl.optimizers import configure
from netdsl.report import human
from netdsl.runtime.host import host_threads
from netdsl.runtime.memory import available_bytes
from netdsl.settings import TrainSettings

__all__ = ["Estimate", "training_estimate", "forward_estimate", "check_memory", "fitting_batch",
           "check_training", "sequence_length", "FOR_NETC", "FOR_BUILDER"]

# while a trainer starts it holds the drawn parameters beside the flat parameter array
# they are copied into, and drops them before the optimiser's arrays and the gradient
# vector, which the first pass makes
STARTING_COPIES = 2
# how a refusal tells the user to change the batch and to run anyway (None: cannot)
FOR_NETC = ("pass --batch {batch}", "pass --force to run anyway")
FOR_BUILDER = ("set batch={batch} in the train clause", None)


@dataclass(frozen=True)
class Estimate:
    """Planned bytes at `batch`: `fixed` (parameters and what is sized like them) plus
    `per_example` for each example of a batch; `what` says what was planned."""

    batch: int
    fixed: int
    per_example: int
    what: str

    @property
    def peak(self) -> int:
        return self.fixed + self.batch * self.per_example

    def largest_batch(self, room: int) -> int:
        """The largest batch whose peak fits in `room` bytes (0: not even one example)."""
        if room < self.fixed + self.per_example:
            return 0
        return self.batch if self.per_example == 0 else (room - self.fixed) // self.per_example


def training_estimate(lowered: Lowered, settings: TrainSettings, steps: int | None = None
                      ) -> Estimate:
    """A training step at the settings' batch: the shared activation buffers, the
    convolutions' scratch (MemoryPlan.scratch_bytes), and what is sized like the
    parameters: the parameters, their gradients, the optimiser's state and
    scratch, and the best epoch's parameters under early stopping. A network with a time
    axis has no buffer plan (its length is the data's): its activations are planned over
    `steps` time steps (see the module's docstring); without them only what is sized like
    the parameters counts."""
    _, rule = configure(settings.optimizer, settings.optimizer_settings)
    scratch = bool(rule.weight_decay or rule.rho is not None or rule.nesterov)
    copies = 2 + len(rule.state) + scratch + (settings.early_stop is not None)
    fixed = max(copies, STARTING_COPIES) * _param_bytes(lowered)
    memory = lowered.memory
    if memory is None and steps is None:
        return Estimate(settings.batch, fixed, 0,
                        "parameters, gradients and optimiser state of a training run")
    if memory is None:
        return Estimate(settings.batch, fixed, _sequence_bytes(lowered, settings, steps),
                        f"training step over {steps:,} time steps")
    # at the batch itself: which values live in the gradient vector depends on it. The
    # convolutions' scratch (one chunk, or one call's per thread) is counted as fixed
    memory = memory.at(settings.batch, threads=host_threads())
    return Estimate(settings.batch, fixed + memory.scratch_bytes,
                    memory.slot_bytes // memory.batch, "training step")


def _sequence_bytes(lowered: Lowered, settings: TrainSettings, steps: int) -> int:
    """Per example, a training step's activations over `steps` time steps (a chunk of
    them under truncated BPTT), in float32. Forward: what the loops keep for BPTT (under
    bptt(checkpoint=k), every k-th step's states and the loops' outputs) and the sequence
    values made outside the loops. Backward, beside what forward kept: the gradients of
    the outside values and of the loops' outputs over every step, and within the span of
    steps it differentiates at a time (all of them, or k) gradients as large as what a
    step keeps. An estimate, not a plan of every array: with the loop's own bookkeeping a
    step takes 10-25% more for an LSTM (tests/test_memory_check.py), up to twice it for
    a narrow Elman cell."""
    if settings.bptt is not None:
        steps = min(steps, settings.bptt[0])  # a chunk runs forward and back at a time
    every = settings.checkpoint
    span = steps if every is None else min(every, steps)
    # a sequence value outside the loops (one a loop reads is dropped after it), or in
    # backward its gradient
    numbers = outside_sequence_numbers(lowered) * steps
    for _, memory in recurrence_figures(lowered):
        numbers += (memory.stored(steps, 1, 1, every) + memory.read_after * steps
                    + memory.kept * span)
    return 4 * numbers


def sequence_length(lowered: Lowered, data) -> int | None:
    """The time steps of a runtime Dataset's sequences (the longest) for a network with a
    time axis; None for one without."""
    if lowered.memory is not None:
        return None
    types = lowered.plan.types
    lengths = [array.shape[1] for name, array in data.arrays.items()
               if name in types and types[name].seq and array.ndim > 1]
    return max(lengths, default=None)


def forward_estimate(lowered: Lowered, batch: int, steps: int | None = None) -> Estimate:
    """Evaluation or prediction at `batch`: the parameters as a trainer starts, and the
    forward values, each alive from its step to its last forward reader
    (an upper bound: a value kept for backward is counted to the end of the forward pass).
    A network with a time axis has no buffer plan: its forward values are planned over
    `steps` time steps (`sequence_length` of the data); without them only the parameters
    count."""
    fixed = STARTING_COPIES * _param_bytes(lowered)
    memory = lowered.memory
    if memory is None and steps is not None:
        return Estimate(batch, fixed, _forward_sequence_bytes(lowered, steps),
                        f"forward pass over {steps:,} time steps")
    per_example = 0 if memory is None else _forward_peak(memory) // memory.batch
    return Estimate(batch, fixed, per_example, "forward pass")


def _forward_sequence_bytes(lowered: Lowered, steps: int) -> int:
    """Per example, a forward pass's values over `steps` time steps, in float32: what each
    loop keeps at every step (its stored members and what its ops save: an evaluation
    runs the same loop as training, without checkpoints) and the sequence values made
    outside the loops."""
    numbers = outside_sequence_numbers(lowered) * steps
    for _, memory in recurrence_figures(lowered):
        numbers += memory.kept * steps
    return 4 * numbers


def _param_bytes(lowered: Lowered) -> int:
    return 4 * sum(p.size for p in lowered.plan.params.values())  # float32, as runs use


def _forward_peak(memory: MemoryPlan) -> int:
    values = [b for b in memory.buffers if b.kind == "value"]
    last = max((b.start for b in values), default=0)
    live = [0] * (last + 1)
    for b in values:
        for t in range(b.start, min(b.end, last) + 1):
            live[t] += b.bytes
    return max(live, default=0)


def check_training(lowered: Lowered, settings: TrainSettings, data=None, force: bool = False,
                   advice: tuple[str, str | None] = FOR_NETC) -> None:
    """Refuse a training run that would not fit (see `check_memory`), in two checks made
    before a parameter is made: without `data` (before it is read), the planned peak of a
    feed-forward step, or what is sized like a recurrent network's parameters; with the
    runtime Dataset `data`, a recurrent network's step at the length of its sequences
    (nothing more to check for a feed-forward network)."""
    steps = None if data is None else sequence_length(lowered, data)
    if data is not None and steps is None:
        return
    check_memory(training_estimate(lowered, settings, steps), force, advice=advice)


def check_memory(estimate: Estimate, force: bool = False, room: int | None = None,
                 advice: tuple[str, str | None] = FOR_NETC) -> None:
    """Refuse a run whose planned peak exceeds the memory available to the process
    (`room`, else `runtime.memory.available_bytes`), unless `force`. `advice` says how
    to change the batch and how to run anyway (FOR_NETC, FOR_BUILDER).

    Raises
    ------
    SpecError
        With the estimate, what is available, and the largest batch that fits.
    """
    room = available_bytes() if room is None else room
    if force or room is None or estimate.peak <= room:
        return
    fits = estimate.largest_batch(room)
    batch_advice, force_advice = advice
    if fits == 0:
        fix = (f"even one example does not fit: the parameters alone plan "
               f"{human(estimate.fixed, 'B')}; make the network smaller")
        if estimate.per_example and estimate.fixed <= room:
            shorter = ("train on shorter sequences, or add bptt(truncate=k) or "
                       "bptt(checkpoint=k) to the train clause" if estimate.what.startswith(
                           "training") else "give it shorter sequences")
            fix = (f"even one example does not fit: the {estimate.what} plans "
                   f"{human(estimate.per_example, 'B')} for each; {shorter}")
    elif fits < estimate.batch:
        fix = (f"the largest batch that fits is {fits:,}: "
               + batch_advice.format(batch=fits))
    else:
        fix = "free memory"
    raise SpecError(
        f"not enough memory: the {estimate.what} at batch {estimate.batch:,} plans a peak of "
        f"{human(estimate.peak, 'B')}, and this process has {human(room, 'B')} available",
        None, f"{fix}, or {force_advice}" if force_advice else fix)


def fitting_batch(estimate: Estimate, force: bool = False, room: int | None = None) -> int:
    """The estimate's batch, or the largest smaller one whose peak fits (evaluation and
    prediction give the same numbers at any batch); refused when not even one example fits.

    Raises
    ------
    SpecError
        As `check_memory`, when no batch fits.
    """
    room = available_bytes() if room is None else room
    if force or room is None or estimate.peak <= room:
        return estimate.batch
    fits = estimate.largest_batch(room)
    if fits == 0:
        check_memory(estimate, force, room)
    return min(fits, estimate.batch)
