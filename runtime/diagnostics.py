"""Per-node statistics of a training step, for `netc run --diagnose` (app.diagnose).

Every `every` steps the trainer lends a step to a Probe: the executor then shows it each
value a graph node makes and the gradient of the loss with respect to it, and the probe
reduces them on the spot to a few numbers per node. No value is kept or copied for it
(only the parameters, once per recorded step, for the update ratio); in the other steps
the executor's `observer` is None and training runs as it does without.

Per node (the graph's op nodes, not a lowering's parts of them; losses left out):

    mean, std        of its output over the batch (and the time steps)
    dead             for an op whose units can die (`Op.dead_value`, ReLU): the fraction
                     of its units (positions of one example's output) that give that
                     value for every example of the batch
    saturated        for a squashing op (`Op.asymptotes`, sigmoid, tanh): the fraction
                     of its outputs within SATURATION_MARGIN of an asymptote
    grad_norm        the 2-norm of d loss / d output over the batch, summed over the
                     step's backward passes (a GAN's phases, truncated BPTT's chunks)
    param_grad_norm  for a node that owns parameters: the 2-norm of their gradients,
                     before penalties and clipping
    update_ratio     |w_after - w_before| / |w_before| of its parameters across the step

A recurrence's nodes, on the host, are seen at every time step and their numbers are
over all steps (a unit is dead when it is off at every step of every example). The
native target runs a loop as one compiled call: the members it keeps whole (state
sources, values read after the loop) are seen after it, over all steps, without their
gradients; the others, the inner nodes of a fused elementwise run, and a batchnorm
run inside the chain after it (its parameters' numbers are recorded), are not seen.
"""
from __future__ import annotations

import math
from typing import Callable

from netdsl.lower import Plan
from netdsl.runtime.host import read_scalars, to_host

__all__ = ["Probe", "SATURATION_MARGIN", "HISTOGRAM_BINS"]

SATURATION_MARGIN = 0.01
HISTOGRAM_BINS = 30


class _Sums:
    """What a node's values and gradients add up to during one recorded step (0-d arrays
    of the array module, read back together at its end)."""

    def __init__(self):
        self.count = 0
        self.total = self.squares = self.saturated = self.grad_sq = None
        self.alive = None          # per unit: on for some example
        self.edges = self.counts = None  # the histogram, with the `histograms` option


def _add(a, b):
    return b if a is None else a + b


class Probe:
    """Records per-node statistics every `every` optimiser steps.

    Parameters
    ----------
    plan : Plan
        The lowered plan the executor runs.
    every : int
        Steps between recorded steps: a step is recorded when its number (from 1) is a
        multiple of it.
    report : callable
        report(step, epoch, stats, histograms): stats maps a node to its numbers (a dict
        of floats, see the module), histograms a node to (bucket edges, counts) when the
        `histograms` option is on, else {}.
    histograms : bool
        Also count each node's output into HISTOGRAM_BINS buckets (for TensorBoard).
    """

    def __init__(self, plan: Plan, every: int, report: Callable, histograms: bool = False):
        self.every, self.report, self.histograms = every, report, histograms
        graph = plan.graph
        self.facts: dict[str, tuple] = {}  # node -> (unit dims, dead value, asymptotes)
        for step in plan.steps:
            if step.origin is not None or step.node not in graph:
                continue  # a part of a node (hoisting's), or a lowering's own value
            data = graph.nodes[step.node]
            op = data.get("op")
            if data["kind"] != "op" or op.is_loss:
                continue
            self.facts[step.node] = (plan.types[step.node].dims, op.dead_value, op.asymptotes)
        self.owners = {key: param.node for key, param in plan.params.items()}
        self._sums: dict[str, _Sums] = {}
        self._param_sq: dict = {}
        self._before = None
        self.xp = None

    def due(self, step: int) -> bool:
        return step % self.every == 0

    # ---- during a recorded step

    def begin(self, ex) -> None:
        """A recorded step starts: the executor shows this probe what it computes."""
        self.xp, self._sums, self._param_sq = ex.xp, {}, {}
        self._before = ex.flat_params.copy()
        ex.observer = self

    def value(self, node: str, y) -> None:
        """A node's output: (B, *dims), or with a time axis (T, B, *dims) or (T*B, *dims)."""
        facts = self.facts.get(node)
        if facts is None or y.dtype.kind != "f":
            return
        dims, dead, asymptotes = facts
        xp, sums = self.xp, self._sums.setdefault(node, _Sums())
        sums.count += y.size
        sums.total = _add(sums.total, y.sum(dtype=xp.float64))
        sums.squares = _add(sums.squares, xp.square(y, dtype=xp.float64).sum())
        if dead is not None:
            on = (y != dead).reshape((-1,) + dims).any(axis=0)
            sums.alive = on if sums.alive is None else sums.alive | on
        if asymptotes is not None:
            low, high = asymptotes
            near = ((y <= low + SATURATION_MARGIN) | (y >= high - SATURATION_MARGIN)).sum()
            sums.saturated = _add(sums.saturated, near)
        if self.histograms:
            self._histogram(sums, y)

    def _histogram(self, sums: _Sums, y) -> None:
        """Buckets over the range of the node's first value (a loop's later steps falling
        outside it count in the end buckets)."""
        xp = self.xp
        if sums.edges is None:
            low, high = float(y.min()), float(y.max())
            sums.edges = xp.linspace(low, high if high > low else low + 1.0, HISTOGRAM_BINS + 1)
        clipped = xp.clip(y, sums.edges[0], sums.edges[-1])
        counts = xp.histogram(clipped, bins=sums.edges)[0]
        sums.counts = counts if sums.counts is None else sums.counts + counts

    def gradient(self, node: str, gy) -> None:
        """The gradient of the loss with respect to a node's output."""
        if node not in self.facts:
            return
        sums = self._sums.setdefault(node, _Sums())
        sums.grad_sq = _add(sums.grad_sq, self.xp.square(gy, dtype=self.xp.float64).sum())

    def parameters(self, ex, keys) -> None:
        """After a backward pass: the gradients of the parameters `keys` (before
        penalties and clipping change them)."""
        xp = self.xp
        for key in keys:
            owner = self.owners[key]
            grad = ex.grads[key]
            self._param_sq[owner] = _add(self._param_sq.get(owner),
                                         xp.square(grad, dtype=xp.float64).sum())

    def finish(self, ex, step: int, epoch: int) -> None:
        """The recorded step is over: read the numbers back and report them."""
        ex.observer = None
        xp, after, before = self.xp, ex.flat_params, self._before
        moved, size = {}, {}
        for key, (a, b) in ex.offsets.items():
            owner = self.owners[key]
            moved[owner] = _add(moved.get(owner),
                                xp.square(after[a:b] - before[a:b], dtype=xp.float64).sum())
            size[owner] = _add(size.get(owner), xp.square(before[a:b], dtype=xp.float64).sum())
        self._before = None
        # every number in one list, read from the device in one transfer
        arrays, slots = [], []

        def slot(value):
            if value is None:
                return None
            arrays.append(value)
            return len(arrays) - 1

        for node, sums in self._sums.items():
            dead = None if sums.alive is None else sums.alive.size - sums.alive.sum()
            slots.append((node, sums, slot(sums.total), slot(sums.squares), slot(dead),
                          slot(sums.saturated), slot(sums.grad_sq)))
        owned = [(node, slot(self._param_sq.get(node)), slot(moved[node]), slot(size[node]))
                 for node in moved]
        numbers = read_scalars(xp, arrays)

        def read(index):
            return None if index is None else numbers[index]

        stats: dict[str, dict] = {}
        histograms: dict[str, tuple] = {}
        for node, sums, total, squares, dead, saturated, grad_sq in slots:
            entry = stats.setdefault(node, {})
            if total is not None:
                mean = read(total) / sums.count
                entry["mean"] = mean
                entry["std"] = math.sqrt(max(read(squares) / sums.count - mean * mean, 0.0))
            if dead is not None:
                entry["dead"] = read(dead) / sums.alive.size
            if saturated is not None:
                entry["saturated"] = read(saturated) / sums.count
            if grad_sq is not None:
                entry["grad_norm"] = math.sqrt(read(grad_sq))
            if sums.counts is not None:
                histograms[node] = (to_host(xp, sums.edges), to_host(xp, sums.counts))
        for node, grad_sq, delta, weight in owned:
            entry = stats.setdefault(node, {})
            if grad_sq is not None:
                entry["param_grad_norm"] = math.sqrt(read(grad_sq))
            norm = math.sqrt(read(weight))
            entry["update_ratio"] = math.sqrt(read(delta)) / norm if norm > 0 else None
        self._sums, self._param_sq = {}, {}
        self.report(step, epoch, stats, histograms)
