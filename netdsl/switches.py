"""On/off switches read from the environment: each once, where its module loads (or,
for a module netc imports before it can report an error, at its first use).

A switch is "1" (on) or "0" (off), or unset (its default). Any other value stops the
import with a message naming the variable (`SwitchError`, which netc shows as one line,
exit code 1), so that a typo does not quietly run the other path. Every NETDSL_ switch
of the compiler and the runtime is read here (tests/test_switches.py lists them).
"""
from __future__ import annotations

import os

from netdsl.errors import SpecError

__all__ = ["flag", "choice", "SwitchError"]


class SwitchError(SpecError):
    """An environment switch set to a value it does not take."""


def flag(name: str, default: bool) -> bool:
    """The switch `name`: True for "1", False for "0", `default` where unset or empty.

    Raises
    ------
    SwitchError
        For any other value.
    """
    return _setting(name, ("0", "1"), str(int(default)), "1 (on) or 0 (off)", "1 or 0") == "1"


def choice(name: str, options: tuple[str, ...], default: str) -> str:
    """The setting `name`: one of `options`, `default` where unset or empty (a switch of
    more than two ways, such as NETDSL_LAYOUT's).

    Raises
    ------
    SwitchError
        For any other value.
    """
    listed = ", ".join(options)
    return _setting(name, options, default, f"one of {listed}", f"one of {listed}")


def _setting(name: str, options, default: str, expected: str, hint: str) -> str:
    value = os.environ.get(name, "").strip()
    if value == "":
        return default
    if value not in options:
        raise SwitchError(f"{name}={value!r}: expected {expected}; unset, it is {default}",
                          hint=f"set {name} to {hint}, or unset it")
    return value
