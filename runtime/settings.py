"""Training settings: the spec's train clause, overridden by command-line flags, checked."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from netdsl.errors import SpecError
from netdsl.runtime.init import SCHEMES

__all__ = ["TrainSettings", "resolve_settings"]


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


def resolve_settings(clause: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainSettings:
    """Settings from a train clause (`graph.graph["train"]`), then flags that are not None.

    Raises
    ------
    SpecError
        Naming the setting and what it accepts.
    """
    values: dict[str, Any] = {}
    for key, value in clause.items():
        if key == "optimizer":
            name, kwargs = value
            values["optimizer"], values["optimizer_settings"] = name, dict(kwargs)
        elif key == "bptt":
            continue  # recurrence settings; feed-forward training ignores them
        elif key == "early_stop" and isinstance(value, tuple):
            values[key] = dict(value[1])
        else:
            values[key] = value
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "lr":
            values["optimizer_settings"] = {**values.get("optimizer_settings", {}), "lr": value}
        else:
            values[key] = value
    settings = replace(TrainSettings(), **{k: v for k, v in values.items()
                                           if k in {f.name for f in fields(TrainSettings)}})
    _check(settings)
    return settings


def _fail(name: str, wanted: str, got) -> SpecError:
    return SpecError(f"training setting '{name}' must be {wanted}, got {got!r}", None,
                     "fix it in the spec's train clause or on the command line")


def _check(s: TrainSettings) -> None:
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool) or \
        isinstance(v, float) and v.is_integer()
    for name in ("batch", "epochs"):
        value = getattr(s, name)
        if not whole(value) or value < 1:
            raise _fail(name, "a whole number of at least 1", value)
    for name in ("l1", "l2"):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise _fail(name, "a number >= 0", value)
    if s.clip is not None and (isinstance(s.clip, bool) or not isinstance(s.clip, (int, float))
                               or s.clip <= 0):
        raise _fail("clip", "a positive number (the largest gradient norm)", s.clip)
    if isinstance(s.val, bool) or not isinstance(s.val, (int, float)) or not 0 <= s.val < 1:
        raise _fail("val", "a fraction in [0, 1)", s.val)
    for name in ("shuffle", "normalize"):
        if not isinstance(getattr(s, name), bool):
            raise _fail(name, "true or false", getattr(s, name))
    if s.init not in SCHEMES:
        raise _fail("init", f"one of {', '.join(repr(x) for x in SCHEMES)}", s.init)
    if s.gan_k is not None and (not whole(s.gan_k) or s.gan_k < 1):
        raise _fail("gan_k", "a whole number of at least 1", s.gan_k)
    if s.steps is not None and (not whole(s.steps) or s.steps < 1):
        raise _fail("steps", "a whole number of at least 1", s.steps)
    if not whole(s.seed):
        raise _fail("seed", "a whole number", s.seed)
    lr = s.optimizer_settings.get("lr", 1.0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        raise _fail("lr", "a positive number", lr)
    if s.early_stop is not None:
        metric = s.early_stop.get("metric", "loss")
        if metric not in ("loss", "accuracy"):
            raise _fail("early_stop metric", "'loss' or 'accuracy'", metric)
