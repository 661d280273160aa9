"""Who multiplies each of a dense layer's GEMMs on the native target, chosen by a timing
at first use and remembered, as the convolutions choose their kernels
(runtime.native.conv's `choose`).

A GEMM's key names its dtype, shape, operands' layout, the thread counts each candidate
runs the call on (the own GEMM's parts, BLAS's threads at the call: within a pass whose
ops split BLAS runs on one, whatever the pass's count), and a hash of the own GEMM's
source (runtime.native.dense). The first time a key is seen its
candidates run in turn, ROUNDS rounds in rotated order, and the one whose shortest run
was the shortest is kept: in memory and in `dense_choices.json` beside the compiled
kernels (runtime.native.choice_file). The wall clock counts, not the CPU time: on two
threads OpenBLAS's workers and the C pool's spin between calls, which CPU time would
charge to whichever candidate ran next; the shortest of several runs leaves out those
another process interrupted.
"""
from __future__ import annotations

import time
from typing import Callable

from netdsl.runtime.native.choice_file import ChoiceFile, fastest

__all__ = ["CANDIDATES", "CHOICES", "CHOICES_FILE", "ROUNDS", "choices", "choose",
           "timing_seconds"]

CANDIDATES = ("numpy", "own")
CHOICES_FILE = "dense_choices.json"
# rounds of runs of each candidate when a key is first seen: a GEMM of W1 takes 30 us
# to 2 ms, so the timing costs a few milliseconds a shape
ROUNDS = 5

# key -> candidate, this process's and the file's
CHOICES = ChoiceFile(CHOICES_FILE, lambda value: value in CANDIDATES)
# seconds spent timing candidates in this process
timing_seconds = [0.0]


def choices() -> dict[str, str]:
    """key -> candidate: this process's and those on disk."""
    return CHOICES.choices()


def _fastest(candidates: dict[str, Callable]) -> str:
    """The candidate whose shortest run was the shortest, by the wall clock. (The runs'
    outputs are not used: where they share an `out`, it holds the last run's.)"""
    return fastest(candidates, ROUNDS, time.perf_counter, rotate=True)[0]


def choose(key: str, candidates: dict[str, Callable]) -> str:
    """The candidate for `key`: known, or timed now on these calls and remembered."""
    known = CHOICES.get(key)
    if known in candidates:
        return known
    began = time.perf_counter()
    name = _fastest(candidates)
    CHOICES.remember(key, name)
    timing_seconds[0] += time.perf_counter() - began
    return name
