"""The `netc compile` table: one line per node and the totals, as plain aligned text."""
from __future__ import annotations

from netdsl.cost import cost_rows, roll_up
from netdsl.errors import SpecError
from netdsl.lower import lower
from netdsl.lower.loop_memory import recurrence_figures
from netdsl.ops.parallel import CHUNK_BYTES
from netdsl.optimizers import configure
from netdsl.settings import resolve_settings

__all__ = ["format_cost_table", "format_totals", "cost_json", "format_training_memory",
           "format_loop_memory", "human"]

# the sequence length `netc compile` reports a recurrence's stored states at, unless told
REPORT_STEPS = 1000


def human(value: float, unit: str = "") -> str:
    """1234567 -> '1.23M'; bytes get binary prefixes ('1.2 MiB')."""
    if unit == "B":
        for prefix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(value) < 1024 or prefix == "TiB":
                return f"{value:.0f} {prefix}" if prefix == "B" else f"{value:.1f} {prefix}"
            value /= 1024
    for prefix in ("", "K", "M", "G", "T"):
        if abs(value) < 1000 or prefix == "T":
            return f"{value:.0f}{prefix}" if prefix == "" else f"{value:.2f}{prefix}"
        value /= 1000
    return str(value)


CONVENTION = ("mult-adds as torchinfo counts them (each weight once per position it "
              "applies at); FLOPs = 2 x mult-adds")


def trained_params(net) -> set[str] | None:
    """The parameter keys (`node.weight`) training updates: those a loss's gradient
    reaches (not those behind stop_gradient alone); None when the spec has no loss."""
    try:
        return set(lower(net.graph).backward().params)
    except SpecError:
        return None


def _rows(net, batch: int, depth: int | None):
    rows = cost_rows(net.graph, batch)
    return roll_up(net.graph, rows, depth) if depth else rows


def _per_step(net) -> bool:
    """Whether the costs are per time step: the network has sequences."""
    return any(data["type"].seq for _, data in net.graph.nodes(data=True))


def _local(source: str, path: str) -> str:
    """An input's name as seen from a node in block `path`: its own block's prefix off."""
    prefix = f"{path}/" if path else ""
    return source[len(prefix):] if prefix and source.startswith(prefix) else source


def _split(rows, trained: set[str] | None) -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts."""
    total = sum(r.params for r in rows)
    if trained is None:
        return total, 0
    frozen = 0
    for row in rows:
        if row.params and not any(k in trained for k in row.param_names):
            frozen += row.params
    return total - frozen, frozen


def format_cost_table(net, batch: int = 1, depth: int | None = None,
                      trained: set[str] | None = None) -> str:
    """Node (or, to `depth`, block), op, inputs, output shape, parameters, mult-adds and
    memory per row, then the totals: trainable and non-trainable parameters, buffers,
    mult-adds and FLOPs. `trained` as `trained_params` gives it.

    Plain text rather than a rich table: a 1,000-layer network prints in milliseconds.
    """
    rows = _rows(net, batch, depth)
    seq = _per_step(net)
    header = ("node", "op", "inputs", "output", "params", "mult-adds", "memory")
    body = [(r.node, r.op, ", ".join(_local(i, r.path) for i in r.inputs), r.type,
             f"{r.params:,}" if r.params else "", human(r.mult_adds) if r.mult_adds else "",
             human(r.memory, "B")) for r in rows]
    total = (f"{len(rows)} {'rows' if depth else 'nodes'}", "", "", "total",
             f"{sum(r.params for r in rows):,}", human(sum(r.mult_adds for r in rows)),
             human(sum(r.memory for r in rows), "B"))
    widths = [max(len(line[i]) for line in [header, total, *body]) for i in range(len(header))]
    right = (False, False, False, False, True, True, True)

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    title = (f"{net.name}: batch {batch}" + (", per time step" if seq else "")
             + f"; {CONVENTION}")
    return "\n".join([title, line(header), rule, *map(line, body), rule, line(total),
                      *_summary(rows, trained)])


def _summary(rows, trained) -> list[str]:
    trainable, frozen = _split(rows, trained)
    buffers = sum(r.buffers for r in rows)
    mult_adds = sum(r.mult_adds for r in rows)
    return [f"parameters: {trainable:,} trainable, {frozen:,} non-trainable"
            + (f"; buffers: {buffers:,} (running statistics, not learned)" if buffers else ""),
            f"mult-adds: {human(mult_adds)} ({mult_adds:,}); FLOPs: {human(2 * mult_adds)}"]


def format_totals(net, batch: int = 1, trained: set[str] | None = None) -> str:
    """One line: the network's nodes, parameters, mult-adds and activation memory."""
    rows = cost_rows(net.graph, batch)
    trainable, frozen = _split(rows, trained)
    mult_adds = sum(r.mult_adds for r in rows)
    return (f"{net.name}: batch {batch}, {len(rows)} nodes, "
            f"{sum(r.params for r in rows):,} parameters ({frozen:,} non-trainable), "
            f"{human(mult_adds)} mult-adds ({human(2 * mult_adds)} FLOPs), "
            f"{human(sum(r.memory for r in rows), 'B')} activations")


def cost_json(net, batch: int = 1, depth: int | None = None,
              trained: set[str] | None = None) -> dict:
    """The table as data: a dict per row and the totals (numbers, not text)."""
    rows = _rows(net, batch, depth)
    listed = [{"node": r.node, "block": r.path, "op": r.op, "inputs": list(r.inputs),
               "output": r.type, "params": r.params, "mult_adds": r.mult_adds,
               "flops": 2 * r.mult_adds, "buffers": r.buffers, "memory": r.memory}
              for r in rows]
    trainable, frozen = _split(rows, trained)
    total = {key: sum(n[key] for n in listed)
             for key in ("params", "mult_adds", "flops", "buffers", "memory")}
    return {"name": net.name, "batch": batch, "depth": depth, "convention": CONVENTION,
            "per_step": _per_step(net),
            "rows": listed,
            "total": {**total, "trainable": trainable, "non_trainable": frozen}}


def format_training_memory(net, batch: int, target: str = "host", threads: int = 1
                           ) -> str | None:
    """One line: the planned peak memory of a training step on `target` (the native
    target's convolutions on `threads` threads), or None if it cannot train."""
    try:
        lowered = lower(net.graph, target)
        settings = resolve_settings(net.graph.graph["train"])
    except SpecError:
        return None  # no loss, or a bad train clause: the table above is all there is
    if lowered.memory is None:
        return None  # buffer planning covers feed-forward steps; sequences run in a loop
    # the optimiser's state: momentum and Adagrad keep one parameter-sized array, Adam two
    _, rule = configure(settings.optimizer, settings.optimizer_settings)
    memory = lowered.memory.at(batch, len(rule.state), threads)
    return (f"training step at batch {batch}: planned peak {human(memory.peak, 'B')} = "
            f"activations {human(memory.slot_bytes, 'B')} in {len(memory.slots)} shared buffers "
            f"(unshared {human(memory.unshared_bytes, 'B')}{_arena(memory)}) + parameters and gradients "
            f"{human(2 * memory.param_bytes, 'B')} + optimiser state "
            f"{human(memory.optimizer_bytes, 'B')}" + _scratch(memory))


def _arena(memory) -> str:
    """The arena among the shared buffers: one block made once, holding the values whose
    ops write where told that have a slot of their own."""
    if memory.arena is None:
        return ""
    count = len(memory.arena.offsets)
    return (f"; arena {human(memory.arena.bytes, 'B')} of them, made once for "
            f"{count} value{'s' if count != 1 else ''}")


def _scratch(memory) -> str:
    """The convolutions' scratch, when there is any: on the native target the largest of
    any kernel a layer may be timed to run (NumPy's im2col among them); elsewhere im2col's
    chunks of about CHUNK_BYTES."""
    if memory.convolutions:
        return (f" + convolution scratch {human(memory.scratch_bytes, 'B')} (largest "
                f"candidate kernel per layer, {memory.threads} "
                f"thread{'s' if memory.threads != 1 else ''})")
    if not memory.scratch_bytes:
        return ""
    return (f" + im2col scratch {human(memory.scratch_bytes, 'B')} (chunks of about "
            f"{human(CHUNK_BYTES, 'B')} of columns, one example's at least)")


def format_loop_memory(net, batch: int, steps: int = REPORT_STEPS, target: str = "host"
                       ) -> list[str]:
    """Per recurrence, one line: what a training step's forward keeps for BPTT over `steps`
    steps (float32), without checkpointing and with the spec's bptt(checkpoint=k) (k near
    the square root of `steps` when the spec sets none). Nothing for a spec that cannot
    train or has no recurrence."""
    try:
        lowered = lower(net.graph, target)
        settings = resolve_settings(net.graph.graph["train"])
    except SpecError:
        return []
    every = settings.checkpoint or max(1, round(steps ** 0.5))
    chosen = "" if settings.checkpoint else ", say"
    lines = []
    for segment, memory in recurrence_figures(lowered):
        full = memory.stored(steps, batch)
        spans = memory.stored(steps, batch, every=every)
        states = ", ".join(state.node for state in segment.loop.states)
        lines.append(f"recurrence of {states}: BPTT over {steps} steps at batch {batch} "
                     f"keeps {human(full, 'B')} of states and saved values "
                     f"({human(memory.kept * batch * 4, 'B')} a step); with "
                     f"bptt(checkpoint={every}){chosen}: {human(spans, 'B')}")
    return lines
