"""`netc run --diagnose [N]`: per-node statistics every N steps in the run record, and
warnings that name the node's line in the spec.

The numbers come from runtime.diagnostics; this module writes them to
diagnostics.jsonl (format in app.diagnostics) and, with the `tensorboard` extra, to
TensorBoard (scalars `diagnostics/NODE/METRIC`, histograms `activations/NODE`), and
warns on stderr, once per node and kind, when a condition has held for PATIENCE
records in a row:

    vanishing   a node's gradient norm below VANISHING times the loss side's (the
                largest gradient norm among the values the losses read)
    exploding   a node's gradient norm above EXPLODING times the loss side's
    dead        more than DEAD of a ReLU's units dead (0 for every example of the batch)
    saturated   more than SATURATED of a sigmoid's or tanh's outputs within 0.01 of an
                asymptote

A resumed run keeps the lines up to its checkpoint's step, and the warnings given
before it are not given again.
"""
from __future__ import annotations

import json
import os

from netdsl.app.diagnostics import DIAGNOSTICS, read_diagnostics
from netdsl.atomic import write_text
from netdsl.runtime.diagnostics import Probe

__all__ = ["DiagnosticsRecorder", "DEFAULT_EVERY", "VANISHING", "EXPLODING", "DEAD",
           "SATURATED", "PATIENCE", "node_places"]

DEFAULT_EVERY = 50
VANISHING, EXPLODING = 1e-3, 1e3
DEAD = SATURATED = 0.5
PATIENCE = 3

_HINTS = {
    "vanishing": "gradients this small barely train it: look for dead or saturated units "
                 "between it and the loss; ReLU with init=he, batchnorm or a residual "
                 "connection keep gradients up",
    "exploding": "lower the learning rate, clip gradients (clip=1.0 in the train clause) "
                 "or normalise (batchnorm)",
    "dead": "a unit that is 0 for every example gets no gradient and stays dead: lower the "
            "learning rate, use init=he, or leaky_relu",
    "saturated": "a saturated unit passes almost no gradient: scale its input down "
                 "(normalise the inputs, batchnorm before it, a lower learning rate)",
}


def node_places(graph, nodes) -> dict[str, dict]:
    """Each node's op and place in the spec ("at": file:line:col) and, for a node inside
    a block, the call that made it ("in": "lstm(128) at file:line:col")."""
    places = {}
    for node in nodes:
        data = graph.nodes[node]
        op, span, frames = data.get("op"), data.get("span"), data.get("scope") or ()
        place = {"op": op.name if op is not None else data["kind"],
                 "at": str(span) if span else None}
        if frames:
            outer = frames[0]
            place["in"] = f"{outer.call or outer.block} at {outer.span}"
        places[node] = place
    return places


class DiagnosticsRecorder:
    """Records `trainer`'s per-node statistics every `every` steps into `folder`.

    Parameters
    ----------
    trainer : Trainer
        Its plan says what is recorded; its reporter shows the warnings.
    folder : str
        The run's folder.
    every : int
    record : RecordingReporter, optional
        The run record's writer, whose TensorBoard writer (if any) gets the numbers too.
    resumed_at : int, optional
        The checkpoint's step when the run resumes from it: later lines are dropped.
    """

    def __init__(self, trainer, folder: str, every: int = DEFAULT_EVERY, record=None,
                 resumed_at: int | None = None):
        plan = trainer.plan
        self.trainer, self.folder, self.record = trainer, folder, record
        histograms = record is not None and _has_tensorboard()
        self.probe = trainer.probe = Probe(plan, every, self.write, histograms)
        recorded = list(self.probe.facts) + [n for n in dict.fromkeys(self.probe.owners.values())
                                             if n not in self.probe.facts]
        self.places = node_places(plan.graph, recorded)
        # the loss side: the values the losses read, whose gradients the others compare to
        self.loss_side = {source for node in plan.losses.values()
                          for source in plan.step_of(node).inputs if source in self.probe.facts}
        self.streaks: dict[tuple[str, str], int] = {}
        self.warned: set[tuple[str, str]] = set()
        self._prepare(every, resumed_at)

    def _prepare(self, every: int, resumed_at: int | None) -> None:
        kept = []
        if resumed_at is not None:
            kept = [e for e in read_diagnostics(self.folder) if e.get("kind") != "nodes"
                    and isinstance(e.get("step"), int) and e["step"] <= resumed_at]
            self.warned = {(e.get("node"), e.get("warning")) for e in kept
                           if e.get("kind") == "warning"}
        head = {"kind": "nodes", "every": every, "nodes": self.places}
        os.makedirs(self.folder, exist_ok=True)
        write_text(os.path.join(self.folder, DIAGNOSTICS),
                   "".join(json.dumps(e) + "\n" for e in [head, *kept]))

    def _append(self, entry: dict) -> None:
        # one write of a whole line, in append mode: readers never see half of one
        line = json.dumps(entry) + "\n"
        with open(os.path.join(self.folder, DIAGNOSTICS), "a", encoding="utf-8") as handle:
            handle.write(line)

    def write(self, step: int, epoch: int, stats: dict, histograms: dict) -> None:
        """The probe's report of a recorded step: a line, TensorBoard's, the warnings."""
        self._append({"kind": "step", "step": step, "epoch": epoch, "nodes": stats})
        self._tensorboard(step, stats, histograms)
        for node, kind, message in self._findings(stats):
            self._append({"kind": "warning", "step": step, "node": node, "warning": kind,
                          "message": message})
            place = self.places.get(node, {})
            inside = f" (in {place['in']})" if place.get("in") else ""
            self.trainer.reporter.diagnosis(place.get("at") or node, message + inside,
                                            _HINTS[kind])

    def _findings(self, stats: dict):
        """(node, kind, message) of each warning due now: its condition has held for
        PATIENCE records in a row and it was not given before."""
        reference = max((stats[n].get("grad_norm") or 0.0 for n in self.loss_side
                         if n in stats), default=0.0)
        for node, numbers in stats.items():
            op = self.places.get(node, {}).get("op")
            who = f"'{node}' ({op})"
            grad = numbers.get("grad_norm")
            ratio = grad / reference if grad is not None and reference > 0 else None
            checks = {
                "vanishing": (ratio is not None and node not in self.loss_side
                              and ratio < VANISHING,
                              lambda: f"vanishing gradient at {who}: its gradient norm "
                                      f"{grad:.3g} is {ratio:.1e} of the loss side's "
                                      f"({reference:.3g})"),
                "exploding": (ratio is not None and ratio > EXPLODING,
                              lambda: f"exploding gradient at {who}: its gradient norm "
                                      f"{grad:.3g} is {ratio:.3g} times the loss side's "
                                      f"({reference:.3g})"),
                "dead": ((numbers.get("dead") or 0.0) > DEAD,
                         lambda: f"dead units at {who}: {100 * numbers['dead']:.0f}% of its "
                                 "units are 0 for every example of the batch"),
                "saturated": ((numbers.get("saturated") or 0.0) > SATURATED,
                              lambda: f"saturated units at {who}: "
                                      f"{100 * numbers['saturated']:.0f}% of its outputs are "
                                      "within 0.01 of its asymptotes"),
            }
            for kind, (holds, message) in checks.items():
                key = (node, kind)
                self.streaks[key] = self.streaks.get(key, 0) + 1 if holds else 0
                if self.streaks[key] >= PATIENCE and key not in self.warned:
                    self.warned.add(key)
                    yield node, kind, (f"{message()}, for {PATIENCE} records in a row")

    def _tensorboard(self, step: int, stats: dict, histograms: dict) -> None:
        events = getattr(self.record, "events", None)
        if events is None:
            return
        for node, numbers in stats.items():
            for metric, value in numbers.items():
                if value is not None:
                    events.add_scalar(f"diagnostics/{node}/{metric}", value, step)
        for node, (edges, counts) in histograms.items():
            numbers, total = stats.get(node, {}), float(counts.sum())
            mean, std = numbers.get("mean", 0.0), numbers.get("std", 0.0)
            events.add_histogram_raw(
                f"activations/{node}", min=float(edges[0]), max=float(edges[-1]), num=total,
                sum=mean * total, sum_squares=(std * std + mean * mean) * total,
                bucket_limits=[float(e) for e in edges[1:]],
                bucket_counts=[float(c) for c in counts], global_step=step)


def _has_tensorboard() -> bool:
    try:
        import tensorboardX  # noqa: F401  the tensorboard extra, optional: histograms for it
    except ImportError:
        return False
    return True
