"""The `netc compile` table, drawn with rich."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from netdsl.cost import cost_rows

__all__ = ["print_cost_table", "human"]


def human(value: float, unit: str = "") -> str:
    """1234567 -> '1.23M'; bytes get binary prefixes."""
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


def print_cost_table(net, batch: int = 1, console: Console | None = None) -> None:
    """Print one row per node (block path, op, output shape, parameters, FLOPs, memory) and totals."""
    console = console or Console(width=140)
    rows = cost_rows(net.graph, batch)
    seq = any(net.graph.nodes[r.node]["type"].seq for r in rows)
    table = Table(title=Text(f"{net.name}: batch {batch}" + (", per time step" if seq else "")),
                  show_footer=True, header_style="bold")
    total_params = sum(r.params for r in rows)
    total_flops = sum(r.flops for r in rows)
    total_memory = sum(r.memory for r in rows)
    table.add_column("node", footer=f"{len(rows)} nodes")
    table.add_column("op")
    table.add_column("output", footer="total")
    table.add_column("params", justify="right", footer=f"{total_params:,}")
    table.add_column("FLOPs", justify="right", footer=human(total_flops))
    table.add_column("memory", justify="right", footer=human(total_memory, "B"))
    for r in rows:
        table.add_row(Text(r.node), r.op, Text(r.type), f"{r.params:,}" if r.params else "",
                      human(r.flops) if r.flops else "", human(r.memory, "B"))
    console.print(table)
