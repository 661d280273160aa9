"""The `netc compile` table: one line per node and the totals, as plain aligned text."""
from __future__ import annotations

from netdsl.cost import cost_rows
from netdsl.errors import SpecError
from netdsl.lower import lower
from netdsl.optimizers import configure
from netdsl.settings import resolve_settings

__all__ = ["format_cost_table", "format_totals", "cost_json", "format_training_memory", "human"]


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


def format_cost_table(net, batch: int = 1) -> str:
    """Block path and node, op, output shape, parameters, FLOPs and memory per node, then totals.

    Plain text rather than a rich table: a 1,000-layer network prints in milliseconds.
    """
    rows = cost_rows(net.graph, batch)
    seq = any(net.graph.nodes[r.node]["type"].seq for r in rows)
    header = ("node", "op", "output", "params", "FLOPs", "memory")
    body = [(r.node, r.op, r.type, f"{r.params:,}" if r.params else "",
             human(r.flops) if r.flops else "", human(r.memory, "B")) for r in rows]
    total = (f"{len(rows)} nodes", "", "total", f"{sum(r.params for r in rows):,}",
             human(sum(r.flops for r in rows)), human(sum(r.memory for r in rows), "B"))
    widths = [max(len(line[i]) for line in [header, total, *body]) for i in range(len(header))]
    right = (False, False, False, True, True, True)

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    title = f"{net.name}: batch {batch}" + (", per time step" if seq else "")
    return "\n".join([title, line(header), rule, *map(line, body), rule, line(total)])


def format_totals(net, batch: int = 1) -> str:
    """One line: the network's nodes, parameters, FLOPs and activation memory."""
    rows = cost_rows(net.graph, batch)
    return (f"{net.name}: batch {batch}, {len(rows)} nodes, "
            f"{sum(r.params for r in rows):,} parameters, "
            f"{human(sum(r.flops for r in rows))} FLOPs, "
            f"{human(sum(r.memory for r in rows), 'B')} activations")


def cost_json(net, batch: int = 1) -> dict:
    """The table as data: a dict per node and the totals (numbers, not text)."""
    rows = cost_rows(net.graph, batch)
    nodes = [{"node": r.node, "path": r.path, "op": r.op, "output": r.type, "params": r.params,
              "flops": r.flops, "memory": r.memory} for r in rows]
    total = {key: sum(n[key] for n in nodes) for key in ("params", "flops", "memory")}
    return {"name": net.name, "batch": batch,
            "per_step": any(net.graph.nodes[r.node]["type"].seq for r in rows),
            "nodes": nodes, "total": total}


def format_training_memory(net, batch: int) -> str | None:
    """One line: the planned peak memory of a training step, or None if it cannot train."""
    try:
        lowered = lower(net.graph)
        settings = resolve_settings(net.graph.graph["train"])
    except SpecError:
        return None  # no loss, or a bad train clause: the table above is all there is
    if lowered.memory is None:
        return None  # buffer planning covers feed-forward steps; sequences run in a loop
    # the optimiser's state: momentum and Adagrad keep one parameter-sized array, Adam two
    _, rule = configure(settings.optimizer, settings.optimizer_settings)
    memory = lowered.memory.at(batch, len(rule.state))
    return (f"training step at batch {batch}: planned peak {human(memory.peak, 'B')} = "
            f"activations {human(memory.slot_bytes, 'B')} in {len(memory.slots)} shared buffers "
            f"(unshared {human(memory.unshared_bytes, 'B')}) + parameters and gradients "
            f"{human(2 * memory.param_bytes, 'B')} + optimiser state "
            f"{human(memory.optimizer_bytes, 'B')}")
