"""The train clause: `train sgd(lr=0.1, momentum=0.9), batch=128, epochs=20`, checked by name."""
from __future__ import annotations

from typing import Any, Callable

from netdsl import ast
from netdsl.errors import Span, SpecError, leading, suggest
from netdsl.optimizers import OPTIMIZERS as DEFINITIONS
from netdsl.schedules import SCHEDULES
from netdsl.settings import check_clause

# optimiser -> the settings it accepts
OPTIMIZERS: dict[str, set[str]] = {name: set(d.defaults) for name, d in DEFINITIONS.items()}
# call-valued items and settings: name -> accepted keywords
CALLS: dict[str, set[str]] = {
    "bptt": {"truncate", "k1", "k2", "checkpoint"},
    **{name: set(s.keywords) for name, s in SCHEDULES.items() if name != "constant"},
    "early_stop": {"patience", "metric"},
}
SETTINGS = {
    "batch", "epochs", "schedule", "l1", "l2", "clip", "early_stop", "seed", "val", "shuffle",
    "normalize", "init", "gan_k", "bptt", "steps", "pixels", "data", "sync_bn",
}
# settings whose value is a call, and the calls each accepts
CALL_VALUED = {
    "schedule": tuple(name for name in SCHEDULES if name != "constant"),
    "early_stop": ("early_stop",),
    "bptt": ("bptt",),
}


def clause_key(item: ast.TrainSetting) -> str:
    """The key an item's value is stored under: "optimizer", "batch", "early_stop"..."""
    if item.name is not None:
        return item.name
    return "optimizer" if item.value.name in OPTIMIZERS else item.value.name


def clause_spans(stmt: ast.Train) -> dict[str, Span]:
    """Where each setting, and each keyword of a call, is written in the clause.

    Keys are those of `evaluate_train`'s dict, and "KEY.KEYWORD" for a call's keywords
    ("optimizer.lr", "schedule.every"), so errors found later can point at the item.
    """
    spans: dict[str, Span] = {}
    for item in stmt.items:
        key = clause_key(item)
        spans[key] = item.span
        if isinstance(item.value, ast.Call):
            for arg in item.value.args:
                if arg.name is not None:
                    spans[f"{key}.{arg.name}"] = arg.span
    return spans


def evaluate_train(stmt: ast.Train, scalar: Callable[[Any], Any]) -> dict[str, Any]:
    """Settings of a train clause as a dict; calls become (name, {keyword: value}).

    The optimiser is stored under "optimizer".
    """
    settings: dict[str, Any] = {}
    for item in stmt.items:
        if item.name is None:
            call = item.value
            if call.name in OPTIMIZERS:
                key = "optimizer"
            elif call.name in CALL_VALUED["schedule"]:  # alone it would be silently ignored
                raise SpecError(f"a schedule is a setting: write schedule={call.name}(...)",
                                call.name_span or call.span,
                                f"for example schedule={call.name}("
                                f"{', '.join(f'{k}=...' for k in sorted(CALLS[call.name]))})")
            elif call.name in CALLS:
                key = call.name
            else:
                hint = suggest(call.name, list(OPTIMIZERS) + list(CALLS)) or \
                    f"optimisers: {', '.join(OPTIMIZERS)}"
                raise SpecError(f"unknown optimiser or training setting '{call.name}'",
                                call.name_span or call.span, hint)
            value = _call(call, scalar, OPTIMIZERS.get(call.name) or CALLS[call.name])
        else:
            key = item.name
            if key not in SETTINGS:
                raise SpecError(f"unknown training setting '{key}'", item.span,
                                suggest(key, SETTINGS) or f"settings: {', '.join(sorted(SETTINGS))}")
            value = item.value
            if key == "init" and isinstance(value, ast.Name):
                value = value.id  # init=he reads as the scheme's name
            elif isinstance(value, ast.Call):
                _expect_call(key, value)
                value = _call(value, scalar, CALLS.get(value.name, set()))
            else:
                value = scalar(value)
        if key in settings:
            raise SpecError(f"'{key}' is set twice in the train clause", item.span)
        settings[key] = value
    check_clause(settings, clause_spans(stmt))
    return settings


def _expect_call(key: str, call: ast.Call) -> None:
    """A call-valued setting names one of the calls it accepts: schedule=step(...)."""
    accepted = CALL_VALUED.get(key)
    if accepted is None:
        raise SpecError(f"training setting '{key}' takes a value, not a call", call.span,
                        f"for example {key}=...")
    if call.name not in accepted:
        what = "unknown schedule" if key == "schedule" else f"'{key}' cannot be"
        raise SpecError(f"{what} '{call.name}'", call.name_span or call.span,
                        suggest(call.name, accepted) or
                        f"write {' or '.join(f'{name}(...)' for name in accepted)}")


def _call(call: ast.Call, scalar, accepted: set[str]):
    keywords = {}
    for arg in call.args:
        if arg.name is None:
            raise SpecError(f"{call.name} takes keyword arguments only", arg.span,
                            f"for example {call.name}({', '.join(f'{k}=...' for k in sorted(accepted)[:2])})")
        if arg.name not in accepted:
            raise SpecError(f"{call.name} has no setting '{arg.name}'", leading(arg.span, arg.name),
                            suggest(arg.name, accepted) or f"accepted: {', '.join(sorted(accepted))}")
        keywords[arg.name] = scalar(arg.value)
    return (call.name, keywords)
