"""Who multiplies each of a dense layer's GEMMs on the native target, chosen by a timing
at first use and remembered, as the convolutions choose their kernels
(runtime.native.conv's `choose`).

A GEMM's key names its dtype, shape, operands' layout and thread count, and a hash of
the own GEMM's source (runtime.native.dense). The first time a key is seen its
candidates run in turn, ROUNDS rounds in rotated order, and the one whose shortest run
was the shortest is kept: in memory and in `dense_choices.json` beside the compiled
kernels (written atomically; a damaged file is ignored and rewritten). The wall clock
counts, not the CPU time: on two threads OpenBLAS's workers and the C pool's spin
between calls, which CPU time would charge to whichever candidate ran next; the
shortest of several runs leaves out those another process interrupted.
"""
from __future__ import annotations

import json
import math
import time
from typing import Callable

from netdsl import atomic
from netdsl.runtime.native.toolchain import cache_dir

__all__ = ["CANDIDATES", "CHOICES_FILE", "ROUNDS", "choices", "choose", "timing_seconds"]

CANDIDATES = ("numpy", "own")
CHOICES_FILE = "dense_choices.json"
# rounds of runs of each candidate when a key is first seen: a GEMM of W1 takes 30 us
# to 2 ms, so the timing costs a few milliseconds a shape
ROUNDS = 5

_choices: dict[str, str] = {}
_loaded_from: str | None = None
# seconds spent timing candidates in this process
timing_seconds = [0.0]


def _path():
    return cache_dir() / CHOICES_FILE


def choices() -> dict[str, str]:
    """key -> candidate: this process's and those on disk (read once per cache folder; a
    file that does not parse counts as empty, and is rewritten)."""
    global _loaded_from
    path = _path()
    if _loaded_from != str(path):
        _choices.clear()
        _loaded_from = str(path)
        try:
            stored = json.loads(path.read_text())
            if isinstance(stored, dict):
                _choices.update({k: v for k, v in stored.items() if v in CANDIDATES})
        except (OSError, ValueError):
            pass
    return _choices


def _save() -> None:
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        atomic.write_text(str(_path()), json.dumps(_choices, indent=1, sort_keys=True))
    except OSError:
        pass   # an unwritable cache only costs the timing again next run


def _fastest(candidates: dict[str, Callable]) -> str:
    """The candidate whose shortest run was the shortest. (The runs' outputs are not
    kept: where they share an `out`, it holds the last run's, not the fastest's.)"""
    names = list(candidates)
    shortest = dict.fromkeys(names, math.inf)
    for round_ in range(ROUNDS):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            began = time.perf_counter()
            candidates[name]()
            shortest[name] = min(shortest[name], time.perf_counter() - began)
    return min(names, key=shortest.__getitem__)


def choose(key: str, candidates: dict[str, Callable]) -> str:
    """The candidate for `key`: known, or timed now on these calls and remembered."""
    known = choices().get(key)
    if known in candidates:
        return known
    began = time.perf_counter()
    name = _choices[key] = _fastest(candidates)
    _save()
    timing_seconds[0] += time.perf_counter() - began
    return name
