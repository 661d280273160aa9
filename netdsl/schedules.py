"""Learning-rate schedules: the train clause's `schedule=` setting.

The clause gives a schedule as `(name, {keyword: value})`, e.g. `("step", {"every": 30})`
for `schedule=step(every=30)`, or None for a constant rate. Every schedule but plateau
is a pure function of the epoch and the global iteration; plateau watches the
validation loss at the end of each epoch and so has state to checkpoint.
"""
from __future__ import annotations

from typing import Any

from netdsl.optimizers import check_integer, check_number

__all__ = ["Schedule", "StepDecay", "Linear", "ToZero", "Plateau", "SCHEDULES", "make_schedule"]


class Schedule:
    """A constant learning rate, and the interface every schedule follows."""

    name = "constant"
    keywords: dict[str, Any] = {}  # accepted keywords and their defaults (None: computed)

    def __init__(self, base_lr: float):
        self.base_lr = base_lr

    @classmethod
    def from_spec(cls, keywords: dict, base_lr: float, epochs: int, steps_per_epoch: int):
        """Build from the train clause's keywords, already known to be accepted ones."""
        return cls(base_lr)

    def lr(self, epoch: int, iteration: int) -> float:
        """The rate for `iteration` (global, 0-based) in `epoch` (0-based)."""
        return self.base_lr

    def end_epoch(self, val_loss: float | None) -> None:
        """Called after each epoch with its validation loss (None when there is none)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(f"schedule {self.name}: state has keys {sorted(state)}, "
                             f"expected {sorted(expected)}")
        for key, value in state.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in vars(self).items())})"


class StepDecay(Schedule):
    """base_lr * gamma ** (epoch // every): torch's StepLR stepped once per epoch."""

    name = "step"
    keywords = {"every": 30, "gamma": 0.1}

    def __init__(self, base_lr: float, every: int, gamma: float):
        super().__init__(base_lr)
        self.every, self.gamma = every, gamma

    @classmethod
    def from_spec(cls, keywords, base_lr, epochs, steps_per_epoch):
        every = check_integer("step", "every", keywords["every"], 1)
        gamma = check_number("step", "gamma", keywords["gamma"], lambda x: x > 0, "> 0")
        return cls(base_lr, every, gamma)

    def lr(self, epoch, iteration):
        return self.base_lr * self.gamma ** (epoch // self.every)


class Linear(Schedule):
    """Linear decay per iteration from base_lr to the rate `to` at iteration tau, then `to`.

    lr = (1 - k / tau) * base_lr + (k / tau) * to for iteration k < tau (Goodfellow,
    Bengio & Courville 2016, section 8.3.1). The spec's `epochs=N` sets
    tau = N * steps_per_epoch (default: all epochs); `to` defaults to base_lr / 100.
    """

    name = "linear"
    keywords = {"to": None, "epochs": None}

    def __init__(self, base_lr: float, to: float, tau: int):
        super().__init__(base_lr)
        self.to, self.tau = to, tau

    @classmethod
    def from_spec(cls, keywords, base_lr, epochs, steps_per_epoch):
        to = keywords["to"]
        to = base_lr / 100 if to is None else check_number("linear", "to", to,
                                                             lambda x: x >= 0, ">= 0")
        until = keywords["epochs"]
        until = epochs if until is None else check_integer("linear", "epochs", until, 1)
        return cls(base_lr, to, until * steps_per_epoch)

    def lr(self, epoch, iteration):
        if iteration >= self.tau:
            return self.to
        a = iteration / self.tau
        return (1 - a) * self.base_lr + a * self.to


class ToZero(Schedule):
    """base_lr * (1 - k / total) for iteration k of total = epochs * steps_per_epoch.

    The first update uses base_lr and the last base_lr / total; the rate would reach 0
    at iteration `total`, which is never run (and is held at 0 beyond it).
    """

    name = "to_zero"

    def __init__(self, base_lr: float, total: int):
        super().__init__(base_lr)
        self.total = total

    @classmethod
    def from_spec(cls, keywords, base_lr, epochs, steps_per_epoch):
        return cls(base_lr, epochs * steps_per_epoch)

    def lr(self, epoch, iteration):
        return self.base_lr * max(0.0, 1 - iteration / self.total)


class Plateau(Schedule):
    """Multiply the rate by `factor` when the validation loss stops improving.

    As torch's ReduceLROnPlateau (mode "min", threshold 1e-4 relative, no cooldown, no
    minimum): a loss improves if it is below best * (1 - 1e-4); after more than
    `patience` epochs in a row without improvement the rate is reduced and the count
    restarts. An epoch without a validation loss changes nothing.
    """

    name = "plateau"
    keywords = {"factor": 0.5, "patience": 2}
    THRESHOLD = 1e-4  # relative improvement that counts
    MIN_CHANGE = 1e-8  # as torch: smaller reductions are skipped, so the rate stops near 0

    def __init__(self, base_lr: float, factor: float, patience: int):
        super().__init__(base_lr)
        self.factor, self.patience = factor, patience
        self.best, self.bad_epochs, self.scale = float("inf"), 0, 1.0

    @classmethod
    def from_spec(cls, keywords, base_lr, epochs, steps_per_epoch):
        factor = check_number("plateau", "factor", keywords["factor"], lambda x: 0 < x < 1,
                              "in (0, 1)")
        patience = check_integer("plateau", "patience", keywords["patience"], 0)
        return cls(base_lr, factor, patience)

    def lr(self, epoch, iteration):
        return self.base_lr * self.scale

    def end_epoch(self, val_loss):
        if val_loss is None:
            return
        loss = float(val_loss)
        if loss < self.best * (1 - self.THRESHOLD):
            self.best, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.bad_epochs = 0
            old = self.base_lr * self.scale
            if old - old * self.factor > self.MIN_CHANGE:
                self.scale *= self.factor

    def state_dict(self):
        return {"best": self.best, "bad_epochs": self.bad_epochs, "scale": self.scale}


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (Schedule, StepDecay, Linear, ToZero, Plateau)}


def make_schedule(spec: tuple[str, dict] | None, base_lr: float, epochs: int,
                  steps_per_epoch: int) -> Schedule:
    """The schedule for a train clause's `schedule=` value; None means a constant rate."""
    base_lr = check_number("schedule", "base_lr", base_lr, lambda x: x >= 0, ">= 0")
    epochs = check_integer("schedule", "epochs", epochs, 1)
    steps_per_epoch = check_integer("schedule", "steps_per_epoch", steps_per_epoch, 1)
    name, given = ("constant", {}) if spec is None else spec
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule '{name}'; known: {', '.join(SCHEDULES)}")
    cls = SCHEDULES[name]
    unknown = sorted(set(given) - set(cls.keywords))
    if unknown:
        accepted = ", ".join(cls.keywords) or "none"
        raise ValueError(f"schedule {name} has no setting '{unknown[0]}'; accepted: {accepted}")
    return cls.from_spec({**cls.keywords, **given}, base_lr, epochs, steps_per_epoch)
