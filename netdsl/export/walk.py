"""The walk every exporter makes over a View: the steps in order, each value laid out as
the op that reads it needs.

An op's lowering sees its values as its forward does (`Op.onnx`): one row per example,
or, for a per-step op reading a sequence outside a recurrence, one row per example and
time step. So a value lives in up to three layouts, made when first needed:

    step     (B, *dims)      a value without a time axis, or one step inside a loop
    seq      (B, T, *dims)   a sequence, as the exported model's inputs and outputs hold it
    folded   (B*T, *dims)    a sequence as a per-step op outside a loop reads it

A format implements `fold`, `unfold` and `over_time` (which repeats a value without a
time axis at every step of a sequence), `declare` and `finish` for the model's inputs
and outputs, `emit` for one op, and `loop` for a recurrence, whose body `body_args`
feeds.
"""
from __future__ import annotations

from netdsl.errors import SpecError
from netdsl.export.view import Cell, LoopParts, View
from netdsl.lower.plan import Step
from netdsl.ops.base import NoLowering
from netdsl.shapes import whole_positions

__all__ = ["Walker", "STEP", "SEQ", "FOLDED"]

STEP, SEQ, FOLDED = "step", "seq", "folded"


class Walker:
    """Walks a View once, keeping each value's handles (a format's names for them)."""

    format = ""

    def __init__(self, view: View):
        self.view = view
        self.forms: dict[str, dict[str, object]] = {}  # node -> layout -> handle
        # a sequence node -> the handle of a (B, T, ...) value with its time axis, which
        # unfolding reads T from, and the name of that axis
        self.timeref: dict[str, object] = {}
        self.time: dict[str, str] = {}
        # losses and what is computed from losses alone: one number, neither batch nor time
        self.unbatched: set[str] = set()

    def is_seq(self, node: str) -> bool:
        """Whether a value has a time axis (a loss over a sequence is one number all the
        same)."""
        return self.view.type(node).seq and node not in self.unbatched

    def run(self) -> None:
        for name, node in self.view.inputs.items():
            t = self.view.type(node)
            handle = self.declare(name, node)
            self.forms[node] = {SEQ if t.seq else STEP: handle}
            if t.seq:
                self.timeref[node], self.time[node] = handle, self.view.time[node]
        for item in self.view.schedule:
            if isinstance(item, LoopParts):
                self.loop(item)
            elif isinstance(item, Cell):
                self.cell(item)
            else:
                self.outside(item)
        self.finish({name: self.get(node, SEQ if self.is_seq(node) else STEP)
                     for name, node in self.view.outputs.items()})

    # ---- layouts

    def get(self, node: str, layout: str, like: str | None = None):
        """The handle of `node` in `layout`; `like` is the sequence whose steps a value
        without a time axis is repeated over, when it is wanted folded."""
        forms = self.forms[node]
        if layout in forms:
            return forms[layout]
        if layout == FOLDED and SEQ not in forms:
            return self.over_time(forms[STEP], self.timeref[like], node)
        if layout == FOLDED:
            handle = self.fold(forms[SEQ], node)
        else:
            handle = self.unfold(forms[FOLDED], self.timeref[node], node)
        forms[layout] = handle
        return handle

    def outside(self, step: Step) -> None:
        """A step outside any loop: a per-step op reading a sequence reads it folded."""
        seqs = [self.is_seq(source) for source in step.inputs]
        if step.op.is_loss or (step.inputs and all(s in self.unbatched for s in step.inputs)):
            self.unbatched.add(step.node)
        seq_out = self.is_seq(step.node)
        whole = whole_positions(step.op)
        if not step.op.per_step:
            args = [self.get(s, SEQ if seq else STEP) for s, seq in zip(step.inputs, seqs)]
            layout = SEQ if seq_out else STEP
            timed = step.inputs[0]
        else:
            timed = next((s for i, (s, seq) in enumerate(zip(step.inputs, seqs))
                          if seq and i not in whole), None)
            args = [self.get(s, SEQ if seq else STEP) if i in whole or timed is None
                    else self.get(s, FOLDED, timed)
                    for i, (s, seq) in enumerate(zip(step.inputs, seqs))]
            layout = FOLDED if timed and seq_out else STEP
        if seq_out and layout == FOLDED:
            self.timeref[step.node], self.time[step.node] = self.timeref[timed], self.time[timed]
        elif seq_out:
            self.time[step.node] = self.time[timed]
        handle = self.emit(step, args, layout, timed)
        self.forms[step.node] = {layout: handle}
        if seq_out and layout == SEQ:
            self.timeref[step.node] = handle

    def body_args(self, step: Step, local: dict[str, object]) -> list:
        """A loop member's inputs: members, states and scanned steps from `local` (this
        step's handles), values without a time axis as they are, and the sequences it
        reads whole (attention's memory) laid out (B, T, ...)."""
        whole = whole_positions(step.op)
        args = []
        for i, source in enumerate(step.inputs):
            if source in local:
                args.append(local[source])
            elif i in whole and self.is_seq(source):
                args.append(self.get(source, SEQ))
            else:
                args.append(self.get(source, STEP))
        return args

    def stacked(self, part: LoopParts, handles: dict[str, object]) -> None:
        """Record a loop's results, (B, T, ...) each, with the time axis of what it scans."""
        first = part.scanned[0]
        for node, handle in handles.items():
            self.forms[node] = {SEQ: handle}
            self.timeref[node], self.time[node] = handle, self.time[first]

    def lowering(self, step: Step, call):
        """`call()`, the op's lowering, with a missing one reported at its spec line."""
        try:
            return call()
        except NoLowering as exc:
            hint = f"the nearest in {exc.format} is {exc.nearest}" if exc.nearest else None
            raise SpecError(f"{step.op.name} ({step.node}) has no {exc.format} lowering",
                            self.view.span(step.node), hint) from None

    # ---- what a format implements

    def declare(self, name: str, node: str):
        raise NotImplementedError

    def finish(self, outputs: dict[str, object]) -> None:
        raise NotImplementedError

    def emit(self, step: Step, args: list, layout: str, timed: str | None):
        raise NotImplementedError

    def fold(self, handle, node: str):
        raise NotImplementedError

    def unfold(self, handle, ref, node: str):
        raise NotImplementedError

    def over_time(self, handle, ref, node: str):
        raise NotImplementedError

    def loop(self, part: LoopParts) -> None:
        raise NotImplementedError

    def cell(self, cell: Cell) -> None:
        raise NotImplementedError
