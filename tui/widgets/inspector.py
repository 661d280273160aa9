"""What the selected node is and costs, and the network's totals."""
from __future__ import annotations

import math

import networkx as nx
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from netdsl.cost import Row
from netdsl.report import human
from netdsl.shapes import input_types

__all__ = ["Inspector", "describe"]


def describe(graph: nx.DiGraph, costs: dict[str, Row], members: tuple[str, ...],
             title: str) -> Table:
    """A table of one node (or the members of a collapsed block) and the network's totals."""
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold #7f848e", no_wrap=True)
    table.add_column()
    table.add_row("node", Text(title, style="bold"))
    if len(members) == 1:
        node = members[0]
        data = graph.nodes[node]
        table.add_row("op", data["op"].name if data["op"] is not None else data["kind"])
        if data["op"] is not None and data["op"].attrs:
            table.add_row("attrs", "  ".join(f"{k}={_value(v)}" for k, v in data["op"].attrs.items()))
        inputs = input_types(graph, node)
        table.add_row("inputs", ", ".join(map(str, inputs)) if inputs else "-")
        table.add_row("output", str(data.get("type")))
        if data["scope"]:
            table.add_row("block", "/".join(f"{f.name} : {f.block}" for f in data["scope"]))
        if data["span"] is not None:
            table.add_row("source", str(data["span"]))
    else:
        table.add_row("nodes", str(len(members)))
    rows = [costs[m] for m in members if m in costs]
    table.add_row("params", f"{sum(r.params for r in rows):,}")
    table.add_row("FLOPs", human(sum(r.flops for r in rows)))
    table.add_row("memory", human(sum(r.memory for r in rows), "B"))
    table.add_row("network", Text(
        f"{graph.graph['name']}: {graph.number_of_nodes():,} nodes, "
        f"{sum(r.params for r in costs.values()):,} params, "
        f"{human(sum(r.flops for r in costs.values()))} FLOPs, "
        f"{human(sum(r.memory for r in costs.values()), 'B')} (batch 1)", style="bold"))
    return table


def _value(value) -> str:
    if isinstance(value, (tuple, list)):
        return ", ".join(map(_value, value)) if len(value) != 1 else _value(value[0])
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


class Inspector(Static):
    """Shows `describe` for the selected node; a hint when nothing is selected."""

    def show(self, graph: nx.DiGraph | None, costs: dict[str, Row], members: tuple[str, ...],
             title: str) -> None:
        if graph is None or not members:
            self.update("select a node in the graph (Tab, then the arrow keys)")
        else:
            self.update(describe(graph, costs, members, title))
