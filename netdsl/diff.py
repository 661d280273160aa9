"""`netc diff A.net B.net`: what changed between two networks, by block path.

Nodes are matched by their path (`stage2/basic1/conv1`); with a depth, blocks that deep
are compared as wholes (cost.roll_up). The totals compare parameters, mult-adds and
activation memory; then each node (or block) that was added, removed, or whose op,
output shape, parameters or mult-adds changed; then the totals of each top-level block
whose costs changed.
"""
from __future__ import annotations

from netdsl.cost import Row, cost_rows, roll_up
from netdsl.report import human

__all__ = ["diff_rows", "diff_json", "format_diff"]

_COMPARED = ("op", "type", "params", "mult_adds")


def _rows(net, batch: int, depth: int | None) -> dict[str, Row]:
    rows = cost_rows(net.graph, batch)
    return {r.node: r for r in (roll_up(net.graph, rows, depth) if depth else rows)}


def diff_rows(a, b, batch: int = 1, depth: int | None = None) -> list[dict]:
    """Per node or block that differs: its name, "added" / "removed" / "changed", and
    for each side (None where it is missing) its op, output, parameters and mult-adds."""
    left, right = _rows(a, batch, depth), _rows(b, batch, depth)
    changes = []
    for name in [*left, *(n for n in right if n not in left)]:
        x, y = left.get(name), right.get(name)
        if x is not None and y is not None and all(
                getattr(x, f) == getattr(y, f) for f in _COMPARED):
            continue
        status = "added" if x is None else "removed" if y is None else "changed"
        changes.append({"node": name, "change": status,
                        "a": _side(x), "b": _side(y)})
    return changes


def _side(row: Row | None) -> dict | None:
    if row is None:
        return None
    return {"op": row.op, "output": row.type, "params": row.params, "mult_adds": row.mult_adds}


def _totals(net, batch: int) -> dict:
    rows = cost_rows(net.graph, batch)
    return {"params": sum(r.params for r in rows), "mult_adds": sum(r.mult_adds for r in rows),
            "memory": sum(r.memory for r in rows)}


def _blocks(net, batch: int) -> dict[str, dict]:
    """The costs of each top-level block (and of the nodes outside any, as '(top)')."""
    found: dict[str, dict] = {}
    for row in cost_rows(net.graph, batch):
        key = row.path.split("/")[0] if row.path else "(top)"
        entry = found.setdefault(key, {"params": 0, "mult_adds": 0})
        entry["params"] += row.params
        entry["mult_adds"] += row.mult_adds
    return found


def diff_json(a, b, batch: int = 1, depth: int | None = None) -> dict:
    blocks_a, blocks_b = _blocks(a, batch), _blocks(b, batch)
    blocks = {name: {"a": blocks_a.get(name), "b": blocks_b.get(name)}
              for name in [*blocks_a, *(n for n in blocks_b if n not in blocks_a)]
              if blocks_a.get(name) != blocks_b.get(name)}
    return {"a": a.name, "b": b.name, "batch": batch, "depth": depth,
            "total": {"a": _totals(a, batch), "b": _totals(b, batch)},
            "nodes": diff_rows(a, b, batch, depth), "blocks": blocks}


def _change(x: int, y: int, unit: str = "") -> str:
    if x == y:
        return "same"
    sign = "+" if y > x else "-"
    text = f"{x:,} -> {y:,}" if unit == "count" else f"{human(x, unit)} -> {human(y, unit)}"
    ratio = f" ({sign}{abs(y - x) / x:.1%})" if x else ""
    return text + ratio


def _pair(x: dict, y: dict, key: str, show) -> str:
    """`a -> b` where the two sides differ ('-' for a side without the node), else a."""
    left = show(x[key]) if key in x else "-"
    right = show(y[key]) if key in y else "-"
    return left if left == right else f"{left} -> {right}"


def format_diff(a, b, names: tuple[str, str], batch: int = 1, depth: int | None = None) -> str:
    """The diff as text: the totals, the nodes that changed, the blocks' totals."""
    data = diff_json(a, b, batch, depth)
    ta, tb = data["total"]["a"], data["total"]["b"]
    lines = [f"{names[0]} ({a.name}) -> {names[1]} ({b.name}), batch {batch}",
             f"parameters  {_change(ta['params'], tb['params'], 'count')}",
             f"mult-adds   {_change(ta['mult_adds'], tb['mult_adds'])}",
             f"memory      {_change(ta['memory'], tb['memory'], 'B')}"]
    if not data["nodes"]:
        lines.append("no node differs" + (f" to depth {depth}" if depth else ""))
        return "\n".join(lines)
    table = [("node", "change", "op", "output", "params", "mult-adds")]
    for entry in data["nodes"]:
        x, y = entry["a"] or {}, entry["b"] or {}
        table.append((entry["node"], entry["change"], *(
            _pair(x, y, key, show) for key, show in (
                ("op", str), ("output", str), ("params", "{:,}".format),
                ("mult_adds", human)))))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines.append("")
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    if data["blocks"]:
        lines.append("")
        lines.append("by block:")
        for name, sides in data["blocks"].items():
            x, y = sides["a"] or {"params": 0, "mult_adds": 0}, sides["b"] or {
                "params": 0, "mult_adds": 0}
            lines.append(f"  {name}: parameters {_change(x['params'], y['params'], 'count')}, "
                         f"mult-adds {_change(x['mult_adds'], y['mult_adds'])}")
    return "\n".join(lines)
