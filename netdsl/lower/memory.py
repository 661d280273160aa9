"""Lowering pass, plan_memory: buffer lifetimes over a training step, and the memory plan.

A training step is a timeline: the forward steps, then the backward steps of
autodiff's schedule. Every tensor gets an interval on it:

- a forward value lives from its step to its last forward reader, or to the
  backward step of a reader that keeps it (an op's `keeps` names its inputs, `y`
  its output, and arrays of its own such as dropout's mask);
- a value's gradient lives from the first backward step that contributes to it
  to the backward step of its node.

Two kinds of arrays are one buffer, as the host executor runs them: a host chain's
follower (`Step.in_place`) writes its result over its predecessor's output, and an op
with `Op.grad_over_gy` writes its input's gradient over its output's gradient when that
is an array of the pass's own (made fresh by its reader's backward, or summed); so does
a convolution that took the chain after it (lower.conv_chain, `masks_gy`) with the
chain's gradient, which otherwise is an array of its own during its backward step.

The flat gradient vector exists through the whole step, but a parameter's part of it
holds nothing until backward first writes that gradient. A value whose interval ends
before then may live there instead (`MemoryPlan.lodge`), as PyTorch's allocator hands
a freed activation's memory to a gradient made later: the step then allocates nothing
for it. Its op must write its result where it is told (`Op.fills_out`).

A convolution's work arrays are made and freed inside its call: the NumPy path's
im2col columns in chunks (`Op.scratch`), and on the native target the compiled
kernels' scratch, one per slab running at once (lower.native_conv.kernel_scratch).
Which kernel a layer runs is timed at run time, so the plan counts the largest any of
its candidates may hold, at the threads a run lends (`MemoryPlan.threads`).

Buffers whose intervals do not overlap share memory: a first-fit assignment of
intervals to slots gives the planned peak. The executors follow the same
lifetimes (they drop each array at the end of its interval), so the plan is what
a step holds, give or take the allocator.

The values the gradient vector could hold but does not, an executor keeps in an arena
(netdsl.lower.arena): one block made at its first step, each value at a fixed offset.
The plan counts the arena as one more slot (`arena_slot`), in place of the slots those
values took, and only where that raises the planned peak by nothing (NETDSL_ARENA=1;
off by default: each value allocated at its step).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from netdsl.lower.arena import Arena, aliases_end, plan_arena, slots_arena
from netdsl.lower.autodiff import Backward
from netdsl.lower.native_conv import geometry_sizes, largest_scratch
from netdsl.lower.plan import Plan
from netdsl.ops.base import input_names
from netdsl.ops.parallel import chunk_examples
from netdsl.switches import flag

__all__ = ["Buffer", "MemoryPlan", "plan_memory"]

_BYTES = {"float32": 4, "float64": 8, "int64": 8, "int32": 4}
# saved arrays no bigger than a channel vector, or parameters the plan counts apart
SMALL_SAVED = {"inv_std", "weight", "bias", "bn_weight", "weight_shape", "x_shape", "sizes"}
# executors keep the values that write where told in an arena made once (lower.arena;
# NETDSL_ARENA=1). Off by default: alternating with the old path it won 44-45% of the
# pairs on W2 and W3 (150 each, load 5-11) and nothing measured in its favour
ARENA = flag("NETDSL_ARENA", False)


@dataclass(frozen=True)
class Buffer:
    """One array of a step: `kind` is value, saved or grad; alive over [start, end]."""

    name: str
    kind: str
    bytes: int
    start: int
    end: int


@dataclass
class MemoryPlan:
    """Lifetimes, their assignment to shared slots, and the totals `netc compile` reports."""

    batch: int
    buffers: list[Buffer]
    slots: list[int]              # bytes of each shared slot
    assignment: dict[str, int]    # buffer name -> slot
    param_bytes: int
    optimizer_bytes: int
    # per step with work arrays of its own (Op.scratch): bytes per example of what sizes
    # its chunks, and of what a chunk holds
    scratch_per_example: tuple[tuple[int, int], ...] = ()
    # values that may live in the gradient vector: name -> elements per example; the step
    # at which backward first writes each parameter's gradient; the parameters' sizes in
    # the plan's flat layout
    lodgeable: dict[str, int] = field(default_factory=dict)
    written_at: dict[str, int] = field(default_factory=dict)
    param_sizes: dict[str, int] = field(default_factory=dict)
    lodged: dict[str, int] = field(default_factory=dict)  # value -> element offset there
    # a host chain's follower -> the chain's first step, whose buffer it writes over
    followers: dict[str, str] = field(default_factory=dict)
    # on the native target, lower.native_conv's GEOMETRY values of each convolution its
    # compiled kernels may run, and the host threads their slabs run on
    convolutions: tuple[tuple[int, ...], ...] = ()
    threads: int = 1
    # the arena's layout (None: no value in it), and its index in `slots`
    arena: Arena | None = None
    arena_slot: int | None = None
    plan: Plan | None = field(default=None, repr=False)
    # values an op's unnamed inputs (`*xs`: a fused chain's, concat's) read -> the last
    # step that reads them, until its backward where it keeps them (`Op.keeps_variadic`).
    # The buffers' intervals leave those reads out; the arena counts them
    variadic_reads: dict[str, int] = field(default_factory=dict)

    def value_ends(self) -> dict[str, int]:
        """Each value buffer's last step, its unnamed inputs' reads counted."""
        ends = {b.name: b.end for b in self.buffers if b.kind == "value"}
        for name, step in self.variadic_reads.items():
            if name in ends:
                ends[name] = max(ends[name], step)
        return ends

    @property
    def activation_peak(self) -> int:
        """Most bytes alive at one time: values, saved arrays and gradients."""
        ends = max((b.end for b in self.buffers), default=0)
        live = [0] * (ends + 2)
        for b in self.buffers:
            for t in range(b.start, b.end + 1):
                live[t] += b.bytes
        return max(live, default=0)

    @property
    def slot_bytes(self) -> int:
        return sum(self.slots)

    @property
    def unshared_bytes(self) -> int:
        return sum(b.bytes for b in self.buffers)

    @property
    def im2col_bytes(self) -> int:
        """The largest im2col work array set one step holds at once: a chunk of about
        CHUNK_BYTES of columns, one example's at least, which the step frees."""
        return max((chunk_examples(self.batch, sizing) * held
                    for sizing, held in self.scratch_per_example if held), default=0)

    @property
    def convolution_bytes(self) -> int:
        """On the native target, the largest scratch a convolution's candidate kernels
        may hold in one call over the batch on `threads` threads (float32, as runs use)."""
        return max((largest_scratch("float32", sizes, self.batch, self.threads)
                    for sizes in self.convolutions), default=0)

    @property
    def scratch_bytes(self) -> int:
        """The largest work arrays one call of the step holds at once, which it frees: the
        im2col columns' chunk, or a native convolution kernel's scratch."""
        return max(self.im2col_bytes, self.convolution_bytes)

    @property
    def peak(self) -> int:
        """Planned peak of a training step: shared slots, scratch, parameters, gradients,
        optimiser state."""
        return (self.slot_bytes + self.scratch_bytes + 2 * self.param_bytes
                + self.optimizer_bytes)

    def at(self, batch: int, optimizer_slots: int = 0, threads: int | None = None
           ) -> "MemoryPlan":
        """This plan, made for batch 1, at `batch` and with an optimiser that keeps
        `optimizer_slots` parameter-sized arrays (and native convolutions on `threads`
        threads, unless the same). Every buffer grows by the same factor; which values
        fit in the gradient vector depends on the batch."""
        scale = batch // self.batch
        buffers = [replace(b, bytes=b.bytes * scale) for b in self.buffers]
        memory = _shared(batch, buffers, self.param_bytes, optimizer_slots * self.param_bytes,
                         self.scratch_per_example, self.lodgeable, self.written_at,
                         self.param_sizes, self.followers, self.plan, self.variadic_reads)
        memory.convolutions = self.convolutions
        memory.threads = self.threads if threads is None else threads
        return memory

    def lodge(self, batch: int, spans: dict[str, tuple[int, int]]) -> dict[str, int]:
        """Where in a flat gradient vector laid out as `spans` (parameter key -> its
        [start, stop) in elements) each value that fits at `batch` lives: value -> start.
        A value goes, largest first, where every parameter it covers gets its gradient
        after the value's last use, and no value placed there is alive at the same time."""
        # a value is read until the last reader of any view of it (flatten's). A fused
        # chain's unnamed inputs' reads are left out as before: the chain writes its
        # output over its input element by element, where both lodge at one place
        plain = {b.name: b.end for b in self.buffers if b.kind == "value"}
        last = aliases_end(self.plan, plain) if self.plan is not None else plain
        ends = {b.name: (b.start, max(b.end, last.get(b.name, b.end)))
                for b in self.buffers if b.name in self.lodgeable}
        never = max(self.written_at.values(), default=0) + 1  # not written by this pass
        order = sorted((a, b, self.written_at.get(key, never)) for key, (a, b) in spans.items())
        placed: list[tuple[int, int, int, int]] = []   # (lo, hi, start, end)
        homes = {}
        for name in sorted(ends, key=lambda n: (-self.lodgeable[n], n)):
            start, end = ends[name]
            need = self.lodgeable[name] * batch
            busy = sorted((lo, hi) for lo, hi, s, e in placed if s <= end and start <= e)
            for lo, hi in _stretches(order, end):
                at = _first_gap(lo, hi, need, busy)
                if at is not None:
                    homes[name] = at
                    placed.append((at, at + need, start, end))
                    break
        return homes


# a lodged value starts at a multiple of this many elements (64 bytes of float32): the
# alignment NumPy gives its own arrays' SIMD loops
ALIGN = 16


def _stretches(order: list[tuple[int, int, int]], end: int) -> list[list[int]]:
    """The longest stretches [lo, hi) of the flat vector whose gradients are all written
    after step `end`; `order` is (start, stop, written at) per parameter, by start."""
    stretches: list[list[int]] = []
    for a, b, written in order:
        if written <= end:
            continue
        if stretches and stretches[-1][1] == a:
            stretches[-1][1] = b
        else:
            stretches.append([a, b])
    return stretches


def _first_gap(lo: int, hi: int, need: int, busy: list[tuple[int, int]]) -> int | None:
    """The first aligned start in [lo, hi) with `need` elements clear of `busy`."""
    at = -(-lo // ALIGN) * ALIGN
    for a, b in busy:
        if at + need <= a:
            break
        if b > at:
            at = -(-b // ALIGN) * ALIGN
    return at if at + need <= hi else None


def _shared(batch: int, buffers: list[Buffer], param_bytes: int, optimizer_bytes: int,
            scratch, lodgeable: dict, written_at: dict, param_sizes: dict,
            followers: dict, plan: Plan | None = None,
            variadic_reads: dict | None = None) -> MemoryPlan:
    """The plan at `batch`: the values that fit in the gradient vector lodged there, the
    others that may be in the arena, the other buffers in first-fit slots."""
    memory = MemoryPlan(batch, buffers, [], {}, param_bytes, optimizer_bytes, scratch,
                        lodgeable, written_at, param_sizes, followers=followers, plan=plan,
                        variadic_reads=variadic_reads or {})
    spans, start = {}, 0
    for key, size in param_sizes.items():
        spans[key] = (start, start + size)
        start += size
    memory.lodged = memory.lodge(batch, spans)
    rest = [b for b in buffers if b.name not in memory.lodged]
    memory.slots, memory.assignment = _first_fit(rest)
    if ARENA and plan is not None:
        _with_arena(memory, plan, rest)
    for follower, first in followers.items():  # its first step's slot, unless lodged
        if first in memory.assignment:
            memory.assignment[follower] = memory.assignment[first]
    return memory


def _with_arena(memory: MemoryPlan, plan: Plan, rest: list[Buffer]) -> None:
    """Put in an arena the slots that hold only values it may hold (lodgeable, not
    lodged, alive apart even through views): one more slot in place of theirs, so the
    plan's peak stays what it was. A slot that a gradient shares with a value that died
    before it keeps its own memory: the arena, reserved for the whole step, cannot be
    handed to that gradient as the allocator hands it a freed value's. Nor may the arena
    raise the most bytes alive at once, what the executors' traced peak follows: slots
    whose values are dead at that step leave it until it does not."""
    candidates = {n: e for n, e in memory.lodgeable.items() if n not in memory.lodged}
    members: dict[int, list[str]] = {}
    for b in rest:
        members.setdefault(memory.assignment[b.name], []).append(b.name)
    values = {b.name: b for b in memory.buffers if b.kind == "value"}
    last = aliases_end(plan, memory.value_ends())
    chosen = [slot for slot, names in members.items()
              if all(n in candidates for n in names)
              and _apart(sorted((values[n].start, last[n]) for n in names))]
    while chosen:
        arena = plan_arena(plan, memory,
                           {n: candidates[n] for s in chosen for n in members[s]})
        if arena.bytes > sum(memory.slots[slot] for slot in chosen):
            # the slots end to end, each value at its slot's start
            arena = slots_arena(memory.batch, [(memory.slots[s] // _BYTES["float32"],
                                                {n: candidates[n] for n in members[s]})
                                               for s in chosen], arena.intervals)
        dead = _dead_at_peak(rest, arena, values)
        if not dead:
            break
        # a slot whose values are all dead when the most is alive would hold memory there
        # that the allocator hands to a gradient: the slot that holds most of it goes
        chosen.remove(max(chosen, key=lambda s: (sum(dead.get(n, 0) for n in members[s]),
                                                 -s)))
    if not chosen:
        return
    kept = [slot for slot in range(len(memory.slots)) if slot not in chosen]
    index = {slot: i for i, slot in enumerate(kept)}
    memory.arena, memory.arena_slot = arena, len(kept)
    memory.slots = [memory.slots[slot] for slot in kept] + [arena.bytes]
    memory.assignment = {name: (memory.arena_slot if slot in chosen else index[slot])
                         for name, slot in memory.assignment.items()}


def _dead_at_peak(rest: list[Buffer], arena: Arena, values: dict) -> dict[str, int]:
    """The arena's values dead at the step where the most bytes are alive without the
    arena (the traced peak the executors reach), by their bytes, where the arena raises
    that peak; {} where it does not."""
    ends = max(b.end for b in rest)
    live = [0] * (ends + 2)
    held = [0] * (ends + 2)   # the arena's values' own bytes alive at each step
    for b in rest:
        for t in range(b.start, b.end + 1):
            live[t] += b.bytes
            if b.name in arena.offsets:
                held[t] += b.bytes
    with_arena = [arena.bytes + live[t] - held[t] for t in range(len(live))]
    if max(with_arena) <= max(live):
        return {}
    peak = max(range(len(live)), key=with_arena.__getitem__)
    dead = {n: values[n].bytes for n in arena.offsets
            if not values[n].start <= peak <= values[n].end}
    return dead or {n: values[n].bytes for n in arena.offsets}   # its layout's gaps


def _apart(intervals: list[tuple[int, int]]) -> bool:
    """Whether intervals sorted by start overlap nowhere."""
    return all(a[1] < b[0] for a, b in zip(intervals, intervals[1:]))


def _bytes(plan: Plan, node: str, batch: int) -> int:
    t = plan.types[node]
    return t.size * batch * _BYTES.get(t.dtype, 4)


def plan_memory(plan: Plan, backward: Backward, batch: int = 1,
                optimizer_slots: int = 0, outputs=frozenset(), native: bool = False
                ) -> MemoryPlan:
    """Lifetimes and slots for one training step at `batch` (`MemoryPlan.at` scales it).

    `optimizer_slots` is how many parameter-sized arrays the optimiser keeps
    (momentum 1, Adam 2). `outputs` are values a pass may return, which must outlive it
    and so never live in the gradient vector. `native`: the step runs on the native
    target, whose compiled convolution kernels hold scratch of their own.
    """
    n = len(plan.steps)
    at = {step.node: i for i, step in enumerate(plan.steps)}
    back_at = {node: n + j for j, node in enumerate(backward.order)}
    end = dict.fromkeys(plan.inputs, 0)
    buffers: list[Buffer] = []
    # a chain's follower holds its value in the buffer of the chain's first step
    holder: dict[str, str] = {}
    size: dict[str, int] = {}
    for i, step in enumerate(plan.steps):
        if step.in_place:
            holder[step.node] = holder.get(step.inputs[0], step.inputs[0])
        own = holder.get(step.node, step.node)
        end.setdefault(own, i)
        size[own] = max(size.get(own, 0), _bytes(plan, step.node, batch))
        names = input_names(type(step.op))
        bwd = back_at.get(step.node, i)
        for source, name in zip(step.inputs, names):
            kept = name in step.op.keeps and step.node in back_at
            source = holder.get(source, source)
            end[source] = max(end[source], bwd if kept else i)
        if "y" in step.op.keeps and "y" not in names:
            end[own] = max(end[own], bwd)
        for extra in step.op.keeps:
            if extra not in names and extra != "y" and extra not in SMALL_SAVED \
                    and extra not in step.params and step.node in back_at:
                buffers.append(Buffer(f"{step.node}:{extra}", "saved",
                                      _bytes(plan, step.inputs[0] if step.inputs else step.node,
                                             batch), i, bwd))
    for name, last in end.items():
        start = at.get(name, 0)
        bytes_ = size.get(name) or _bytes(plan, name, batch)
        buffers.append(Buffer(name, "value", bytes_, start, last))
    buffers += _gradients(plan, backward, back_at, batch)
    params = sum(p.size for p in plan.params.values()) * 4
    scratch = tuple(s for s in (step.op.scratch(*step.input_types) for step in plan.steps)
                    if s[1])
    memory = _shared(batch, buffers, params, optimizer_slots * params, scratch,
                     _lodgeable(plan, holder, size, outputs, batch),
                     _written_at(plan, backward, back_at),
                     {key: p.size for key, p in plan.params.items()}, holder, plan,
                     _variadic_reads(plan, holder, back_at))
    memory.convolutions = _native_convolutions(plan) if native else ()
    return memory


def _variadic_reads(plan: Plan, holder: dict, back_at: dict) -> dict[str, int]:
    """Value -> the last step at which an op's unnamed input (`*xs`) reads it: its
    forward step, or its backward's where it keeps them (`Op.keeps_variadic`)."""
    reads: dict[str, int] = {}
    for i, step in enumerate(plan.steps):
        named = len(input_names(type(step.op)))
        kept = step.op.keeps_variadic and step.node in back_at
        for source in step.inputs[named:]:
            source = holder.get(source, source)
            reads[source] = max(reads.get(source, 0), back_at[step.node] if kept else i)
    return reads


def _native_convolutions(plan: Plan) -> tuple[tuple[int, ...], ...]:
    """GEOMETRY's values of each convolution the native target's compiled kernels may
    run (`Op.convolves`: rank 1 or 2, no groups; runtime.native.conv's `covered`)."""
    found = []
    for step in plan.steps:
        convolution = step.op.convolves(*step.input_types)
        if convolution is None or convolution[1] != 1 or len(convolution[0].kernel) > 2:
            continue
        x = step.input_types[0]
        weight = step.op.params(*step.input_types)["weight"]
        found.append(geometry_sizes(x.dims[0], weight[0], convolution[0]))
    return tuple(found)


def _lodgeable(plan: Plan, holder: dict, size: dict, outputs, batch: int) -> dict[str, int]:
    """The values that may live in the gradient vector, with their elements per example:
    made outside loops by an op that writes where it is told, in the executors' float
    type, and never returned by a pass. Only a network with one loss: each of a GAN's
    phases runs a backward of its own, which writes gradients in another order."""
    if plan.sequential or plan.loops or len(plan.losses) != 1:
        return {}
    returned = set(outputs) | set(plan.losses.values())
    returned |= {holder[n] for n in returned if n in holder}
    found = {}
    for step in plan.steps:
        if (step.node in holder or step.node in returned or not step.op.fills_out
                or plan.types[step.node].dtype != "float32"):
            continue
        found[step.node] = size[step.node] // (batch * _BYTES["float32"])
    return found


def _written_at(plan: Plan, backward: Backward, back_at: dict) -> dict[str, int]:
    """Per parameter key, the step at which backward first writes its gradient."""
    written: dict[str, int] = {}
    for node in backward.order:
        for key in plan.step_of(node).params.values():
            written.setdefault(key, back_at[node])
    return written


def _gradients(plan: Plan, backward: Backward, back_at: dict, batch: int) -> list[Buffer]:
    """The values' gradients: each lives from its first contribution to its node's
    backward step, and one an op writes over its output's gradient (`Op.grad_over_gy`)
    continues that buffer instead of taking one of its own."""
    readers: dict[str, list[str]] = {}
    for node in backward.order:
        for source in backward.grad_inputs[node]:
            if source is not None and node not in readers.setdefault(source, []):
                readers[source].append(node)
    grads: dict[str, list] = {}   # value -> [buffer name, bytes, start, end]
    for node in backward.order:
        step = plan.step_of(node)
        for position, source in enumerate(backward.grad_inputs[node]):
            if source is None or source not in back_at or source in grads:
                continue
            mine = grads.get(node)
            if (mine is not None and position == 0 and step.op.grad_over_gy
                    and readers[source] == [node] and _owned(plan, readers.get(node, ()))
                    and plan.types[source] == plan.types[node]):
                mine[3] = back_at[source]   # written over dnode, read until source's step
                grads[source] = mine
                continue
            grads[source] = [f"d{source}", _bytes(plan, source, batch), back_at[node],
                             back_at[source]]
    unique = {id(g): g for g in grads.values()}
    made = [Buffer(name, "grad", bytes_, start, end)
            for name, bytes_, start, end in unique.values()]
    # an op whose backward first takes gy back through a chain it applied (`masks_gy`)
    # writes that over gy where the pass owns it, else into an array of its own
    for node in backward.order:
        if plan.step_of(node).op.masks_gy and node in back_at \
                and not _owned(plan, readers.get(node, ())):
            made.append(Buffer(f"d{node}:chain", "grad", _bytes(plan, node, batch),
                               back_at[node], back_at[node]))
    return made


def _owned(plan: Plan, readers) -> bool:
    """Whether a value's gradient is an array of the pass's own: summed from several
    contributions, or one that its reader's backward made fresh."""
    return len(readers) > 1 or (len(readers) == 1
                                and plan.step_of(readers[0]).op.fresh_grads)


def _first_fit(buffers: list[Buffer]) -> tuple[list[int], dict[str, int]]:
    """Give each buffer a slot free over its lifetime, largest first; a slot grows to fit."""
    slots: list[int] = []
    busy: list[list[tuple[int, int]]] = []
    assignment = {}
    for b in sorted(buffers, key=lambda b: (-b.bytes, b.start)):
        for index, intervals in enumerate(busy):
            if all(b.end < s or b.start > e for s, e in intervals):
                break
        else:
            index = len(slots)
            slots.append(0)
            busy.append([])
        busy[index].append((b.start, b.end))
        slots[index] = max(slots[index], b.bytes)
        assignment[b.name] = index
    return slots, assignment
