"""Training settings: the spec's train clause, overridden by command-line flags, checked.

A bad value is reported where it was given: at its item in the train clause when the
clause's spans are known (`Program.train_spans`, keyed like "batch", "optimizer.lr" or
"schedule.every"), else naming the flag that gave it.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

from netdsl.errors import Span, SpecError, SpecErrors, suggest
from netdsl.optimizers import OPTIMIZERS, configure
from netdsl.schedules import SCHEDULES, make_schedule

__all__ = ["TrainSettings", "resolve_settings", "check_clause", "FLAGS", "INIT_SCHEMES",
           "BUNDLED_DATA"]

# initialisation schemes (netdsl.runtime.init): auto picks one per layer by its activation
INIT_SCHEMES = ("auto", "torch", "he", "xavier", "fan_in")
# the named datasets that ship with the install (netdsl.runtime.data), for data='NAME'
BUNDLED_DATA = ("parity", "adding", "text", "skipgram", "cbow", "reverse")

# the command-line flag of each setting that has one
FLAGS = {name: f"--{name}" for name in ("epochs", "batch", "lr", "seed", "steps", "init", "val",
                                        "normalize")}
EARLY_STOP_METRICS = ("loss", "accuracy")


@dataclass(frozen=True)
class TrainSettings:
    """Everything a run needs to know besides the network and the data."""

    optimizer: str = "sgd"
    optimizer_settings: dict = field(default_factory=dict)  # lr absent: the optimiser's default
    batch: int = 32
    epochs: int = 10
    schedule: tuple | None = None       # (name, {keyword: value}) or None: constant
    l1: float = 0.0
    l2: float = 0.0
    clip: float | None = None           # max gradient norm
    early_stop: dict | None = None      # {"patience": n, "metric": "loss" | "accuracy"}
    seed: int = 0
    val: float = 0.1                    # fraction of the data held out for validation
    shuffle: bool = True
    normalize: bool = False
    init: str = "auto"
    gan_k: int | None = None            # discriminator steps per generator step
    steps: int | None = None            # stop after this many optimiser steps
    pixels: tuple = (0.0, 1.0)          # the range bundled images are scaled to
    data: str | None = None             # a named bundled dataset (BUNDLED_DATA)
    bptt: tuple | None = None           # truncated BPTT's (k1, k2); None: full BPTT
    checkpoint: int | None = None       # BPTT keeps a loop's states every this many steps
    sync_bn: bool = False               # data-parallel: batchnorm over the global batch


# ---------------------------------------------------------------------------------------
# Where a value came from


@dataclass(frozen=True)
class _Place:
    """An item of the train clause (its span, when known) or a command-line flag."""

    key: str                 # "batch", "optimizer.lr", "schedule.every"
    span: Span | None = None
    flag: str | None = None

    @property
    def name(self) -> str:
        """The setting as a message names it: `--batch`, or `training setting 'batch'`."""
        return self.flag or f"training setting '{self.key}'"

    def error(self, message: str, hint: str | None = None) -> SpecError:
        """An error about this place's value: located in the spec, or naming the flag."""
        if self.span is None and self.flag is None:
            hint = "fix it in the spec's train clause" + (f"; {hint}" if hint else "")
        return SpecError(message, self.span, hint)

    def example(self, value: str, clause_text: str | None = None) -> str:
        """A hint showing a good value: `--batch 32`, or `batch=32` (or `clause_text`)."""
        if self.flag:
            return f"for example {self.flag} {value}"
        return f"for example {clause_text or f'{self.key}={value}'}"


def _places(clause: dict[str, Any], overrides: dict[str, Any], spans: dict[str, Span]
            ) -> dict[str, _Place]:
    """The place of every setting and keyword: the flag where one overrides the clause."""
    places = {key: _Place(key, span) for key, span in spans.items()}
    for key in clause:
        places.setdefault(key, _Place(key))
    for key, value in overrides.items():
        if value is not None:
            name = "optimizer.lr" if key == "lr" else key
            places[name] = _Place(name, None, FLAGS.get(key, f"the override {key!r}"))
    return places


# ---------------------------------------------------------------------------------------
# Resolving


def resolve_settings(clause: dict[str, Any], overrides: dict[str, Any] | None = None,
                     spans: dict[str, Span] | None = None) -> TrainSettings:
    """Settings from a train clause (`graph.graph["train"]`), then flags that are not None.

    `spans` (`Program.train_spans`) locates the clause's items in the spec.

    Raises
    ------
    SpecError, SpecErrors
        Naming each bad setting, where it was given, and a value it accepts.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    values: dict[str, Any] = {}
    for key, value in clause.items():
        if key == "optimizer":
            name, kwargs = value
            values["optimizer"], values["optimizer_settings"] = name, dict(kwargs)
        else:
            values[key] = value
    for key, value in overrides.items():
        if key == "lr":
            values["optimizer_settings"] = {**values.get("optimizer_settings", {}), "lr": value}
        else:
            values[key] = value
    values = _checked(values, _places(clause, overrides, spans or {}))
    known = {f.name for f in fields(TrainSettings)}
    return replace(TrainSettings(), **{k: v for k, v in values.items() if k in known})


def check_clause(clause: dict[str, Any], spans: dict[str, Span]) -> None:
    """Check a train clause on its own, as `netc check` does: SpecError(s) at its items."""
    resolve_settings(clause, None, spans)


def _checked(values: dict[str, Any], places: dict[str, _Place]) -> dict[str, Any]:
    """`values` with whole numbers as ints and calls as the runtime reads them; every
    bad value becomes an error at its place, all of them raised together."""
    errors: list[SpecError] = []
    out = dict(values)
    for key, value in values.items():
        place = places.get(key) or _Place(key)
        try:
            if key in _RULES:
                out[key] = _RULES[key](value, place)
            elif key == "optimizer_settings":
                out[key] = _optimizer(values.get("optimizer", "sgd"), value, places, errors)
            elif key == "schedule":
                out[key] = _schedule(value, place, places, errors)
            elif key == "early_stop":
                out[key] = _early_stop(value, place, places, errors)
            elif key == "bptt":
                out[key], out["checkpoint"] = _bptt(value, place, places)
        except SpecError as exc:
            errors.append(exc)
    SpecErrors.collect(errors)
    return out


# ---------------------------------------------------------------------------------------
# Single values


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_whole(v) -> bool:
    return _is_number(v) and float(v).is_integer()


def _rule(test: Callable[[Any], bool], wanted: str, example: str, convert=None):
    """A check: the value, converted, if `test` accepts it, else an error at its place."""

    def check(value, place: _Place):
        if not test(value):
            raise place.error(f"{place.name} must be {wanted}, got {_text(value)}",
                              place.example(example))
        return convert(value) if convert else value

    return check


def _text(value) -> str:
    """A value as the spec writes it: true, 'he', [-1, 1], 0.5."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _one_of(names: tuple[str, ...], what: str, example: str):
    """A check that the value is one of `names`, suggesting the closest otherwise; the
    message says the value must `what` one of them."""

    def check(value, place: _Place) -> str:
        if value not in names:
            near = suggest(value, names) if isinstance(value, str) else None
            raise place.error(f"{place.name} must {what} one of {', '.join(names)}, got "
                              f"{_text(value)}", near or place.example(example))
        return value

    return check


def _bptt(value, place: _Place, places: dict[str, _Place]
          ) -> tuple[tuple[int, int] | None, int | None]:
    """bptt(truncate=k) or bptt(k1=.., k2=..) as (k1, k2): chunks of k1 steps, each state's
    gradient reaching k2 <= k1 steps back; and bptt(checkpoint=k): every k-th step's states
    kept, the steps between recomputed in backward. ((k1, k2) or None, k or None)."""
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict)):
        raise place.error(f"bptt takes its settings as a call, got {_text(value)}",
                          "for example bptt(truncate=20), or bptt(checkpoint=20)")
    _, keywords = value
    for key, number in keywords.items():
        if not (_is_whole(number) and number >= 1):
            place = _keyword_place(places, "bptt", key)
            raise place.error(f"{place.name} must be a whole number of steps, at least 1, got "
                              f"{_text(number)}", place.example("20", f"bptt({key}=20)"))
    checkpoint = keywords.get("checkpoint")
    checkpoint = None if checkpoint is None else int(checkpoint)
    k1 = keywords.get("k1", keywords.get("truncate"))
    if k1 is None:
        if "k2" in keywords:
            place = _keyword_place(places, "bptt", "k2")
            raise place.error("bptt k2 needs the chunk it reaches back in",
                              "give k1 too: bptt(k1=40, k2=20)")
        return None, checkpoint
    k2 = keywords.get("k2", keywords.get("truncate", k1))
    if k2 > k1:
        place = _keyword_place(places, "bptt", "k2")
        raise place.error(f"bptt k2={k2:g} reaches further back than a chunk of k1={k1:g} steps",
                          "use k2 <= k1 (bptt(truncate=k) sets both)")
    return (int(k1), int(k2)), checkpoint


def _pixels(value, place: _Place) -> tuple[float, float]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_number, value))
          and value[0] < value[1])
    if not ok:
        raise place.error(f"{place.name} must be a range [low, high] with low < high, got "
                          f"{_text(value)}", place.example("[-1, 1]"))
    return float(value[0]), float(value[1])


_at_least_one = (lambda v: _is_whole(v) and v >= 1, "a whole number of at least 1")
_RULES: dict[str, Callable[[Any, _Place], Any]] = {
    "batch": _rule(*_at_least_one, "32", int),
    "epochs": _rule(*_at_least_one, "10", int),
    "steps": _rule(*_at_least_one, "1000", int),
    "gan_k": _rule(*_at_least_one, "1", int),
    "seed": _rule(lambda v: _is_whole(v) and v >= 0, "a whole number >= 0", "0", int),
    "l1": _rule(lambda v: _is_number(v) and v >= 0, "a number >= 0", "1e-5"),
    "l2": _rule(lambda v: _is_number(v) and v >= 0, "a number >= 0", "1e-4"),
    "clip": _rule(lambda v: _is_number(v) and v > 0,
                  "a positive number (the largest gradient norm)", "5.0"),
    "val": _rule(lambda v: _is_number(v) and 0 <= v < 1, "a fraction in [0, 1)", "0.1"),
    "shuffle": _rule(lambda v: isinstance(v, bool), "true or false", "true"),
    "normalize": _rule(lambda v: isinstance(v, bool), "true or false", "true"),
    "sync_bn": _rule(lambda v: isinstance(v, bool), "true or false", "true"),
    "init": _one_of(INIT_SCHEMES, "be", "he"),
    "pixels": _pixels,
    "data": _one_of(BUNDLED_DATA, "name a bundled dataset,", "'parity'"),
}


# ---------------------------------------------------------------------------------------
# Calls: the optimiser, the schedule, early stopping


def _keyword_place(places: dict[str, _Place], call_key: str, keyword: str) -> _Place:
    """The place of `keyword` in a call: its own span, else the call's."""
    key = f"{call_key}.{keyword}"
    return places.get(key) or _Place(key, places.get(call_key, _Place(call_key)).span)


def _optimizer(name: str, settings: dict, places: dict[str, _Place],
               errors: list[SpecError]) -> dict:
    """The optimiser's settings, each checked by the optimiser itself, then together."""
    call = places.get("optimizer", _Place("optimizer"))
    if name not in OPTIMIZERS:
        errors.append(call.error(f"unknown optimiser '{name}'", suggest(name, OPTIMIZERS)
                                 or f"optimisers: {', '.join(OPTIMIZERS)}"))
        return settings
    defaults, found = OPTIMIZERS[name].defaults, len(errors)
    # a setting that is wrong only next to the defaults (nesterov without momentum) is
    # tried again next to the spec's other good settings
    good = {k: v for k, v in settings.items() if _optimizer_problem(name, {k: v}) is None}
    for key, value in settings.items():
        place = _keyword_place(places, "optimizer", key)
        example = "0.1" if key == "lr" else _text(defaults.get(key))
        if key == "lr" and not (_is_number(value) and value > 0):
            what = place.flag or "the learning rate lr"
            message = f"{what} must be a positive number, got {_text(value)}"
        elif key in good:
            continue
        else:
            message = _optimizer_problem(name, {**good, key: value})
            if message is None:
                continue
        errors.append(place.error(message, place.example(example, f"{name}({key}={example})")))
    if len(errors) == found:
        message = _optimizer_problem(name, settings)
        if message:  # settings that clash only together
            errors.append(call.error(message))
    return settings


def _optimizer_problem(name: str, settings: dict) -> str | None:
    """What the optimiser says is wrong with `settings` ("adam: beta1 must be in [0, 1),
    got 1.5"), or None."""
    try:
        configure(name, settings)
    except ValueError as exc:
        return str(exc)
    return None


def _schedule(value, place: _Place, places: dict[str, _Place], errors: list[SpecError]):
    """A (name, keywords) schedule whose keywords the schedule accepts."""
    if value is None:
        return None
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict)):
        raise place.error(f"{place.name} must be a schedule such as step(every=30), got "
                          f"{_text(value)}", "schedules: step(every, gamma), linear(to, epochs), "
                          "to_zero(), plateau(factor, patience)")
    name, keywords = value
    if name not in SCHEDULES:
        raise place.error(f"unknown schedule '{name}'", suggest(name, SCHEDULES)
                          or f"schedules: {', '.join(SCHEDULES)}")
    for key, given in keywords.items():
        try:
            make_schedule((name, {key: given}), 1.0, 1, 1)
        except ValueError as exc:
            default = SCHEDULES[name].keywords.get(key)
            keyword = _keyword_place(places, "schedule", key)
            errors.append(keyword.error(str(exc), None if default is None else
                                        f"for example {name}({key}={_text(default)})"))
    return value


def _early_stop(value, place: _Place, places: dict[str, _Place], errors: list[SpecError]):
    """{"patience": n, "metric": "loss" | "accuracy"} from early_stop(patience=n, ...)."""
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "early_stop":
        value = value[1]
    if not isinstance(value, dict):
        raise place.error(f"{place.name} must be a call, got {_text(value)}",
                          'for example early_stop(patience=5, metric="loss")')
    rule = dict(value)
    if "patience" in rule:
        patience = rule["patience"]
        if _is_whole(patience) and patience >= 1:
            rule["patience"] = int(patience)
        else:
            errors.append(_keyword_place(places, "early_stop", "patience").error(
                f"early_stop: patience must be a whole number of epochs, at least 1, got "
                f"{_text(patience)}", "for example early_stop(patience=5)"))
    metric = rule.get("metric", "loss")
    if metric not in EARLY_STOP_METRICS:
        errors.append(_keyword_place(places, "early_stop", "metric").error(
            f"early_stop: metric must be 'loss' or 'accuracy', got {_text(metric)}",
            'for example early_stop(metric="accuracy")'))
    return rule
