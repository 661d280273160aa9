"""Memory checked before allocating: `netc run`, `eval` and `predict` compare the planned
peak of what they will do (in float32, the dtype runs use) with the memory this process
may still take, and refuse, with the estimate and the largest batch that fits, before a
single parameter is made. `--force` runs anyway."""
from __future__ import annotations

from dataclasses import dataclass

from netdsl.errors import SpecError
from netdsl.lower import Lowered
from netdsl.lower.memory import MemoryPlan
from netdsl.optimizers import configure
from netdsl.report import human
from netdsl.runtime.memory import available_bytes
from netdsl.settings import TrainSettings

__all__ = ["Estimate", "training_estimate", "forward_estimate", "check_memory", "fitting_batch"]

# while a trainer starts it holds the drawn parameters beside the flat parameter and
# gradient arrays they are copied into (and drops them before the optimiser's arrays)
STARTING_COPIES = 3


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


def training_estimate(lowered: Lowered, settings: TrainSettings) -> Estimate:
    """A training step at the settings' batch: the shared activation buffers, and what is
    sized like the parameters: the parameters, their gradients, the optimiser's state and
    scratch, and the best epoch's parameters under early stopping. A network with a time
    axis has no buffer plan (its length is the data's): there only the latter counts."""
    _, rule = configure(settings.optimizer, settings.optimizer_settings)
    scratch = bool(rule.weight_decay or rule.rho is not None or rule.nesterov)
    copies = 2 + len(rule.state) + scratch + (settings.early_stop is not None)
    fixed = max(copies, STARTING_COPIES) * _param_bytes(lowered)
    memory = lowered.memory
    if memory is None:
        return Estimate(settings.batch, fixed, 0,
                        "parameters, gradients and optimiser state of a training run")
    return Estimate(settings.batch, fixed, memory.slot_bytes // memory.batch, "training step")


def forward_estimate(lowered: Lowered, batch: int) -> Estimate:
    """Evaluation or prediction at `batch`: the parameters as a trainer starts, and the
    forward values, each alive from its step to its last forward reader
    (an upper bound: a value kept for backward is counted to the end of the forward pass)."""
    memory = lowered.memory
    per_example = 0 if memory is None else _forward_peak(memory) // memory.batch
    return Estimate(batch, STARTING_COPIES * _param_bytes(lowered), per_example, "forward pass")


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


def check_memory(estimate: Estimate, force: bool = False, room: int | None = None) -> None:
    """Refuse a run whose planned peak exceeds the memory available to the process
    (`room`, else `runtime.memory.available_bytes`), unless `force`.

    Raises
    ------
    SpecError
        With the estimate, what is available, and the largest batch that fits.
    """
    room = available_bytes() if room is None else room
    if force or room is None or estimate.peak <= room:
        return
    fits = estimate.largest_batch(room)
    if fits == 0:
        fix = (f"even one example does not fit: the parameters alone plan "
               f"{human(estimate.fixed, 'B')}; make the network smaller")
    elif fits < estimate.batch:
        fix = f"the largest batch that fits is {fits:,}: pass --batch {fits}"
    else:
        fix = "free memory"
    raise SpecError(
        f"not enough memory: the {estimate.what} at batch {estimate.batch:,} plans a peak of "
        f"{human(estimate.peak, 'B')}, and this process has {human(room, 'B')} available",
        None, f"{fix}, or pass --force to run anyway")


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
