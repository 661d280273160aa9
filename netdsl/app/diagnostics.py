"""A run's diagnostics as `netc run --diagnose` records them (app.diagnose), read back:
`netc diagnose RUN`'s table, and each node's last value of a metric for a drawing.

runs/NAME/diagnostics.jsonl holds one JSON object a line:

    {"kind": "nodes", "every": N, "nodes": {NODE: {"op": ..., "at": "file:line:col",
                                               "in": "CALL at file:line:col"}, ...}}
    {"kind": "step", "step": S, "epoch": E, "nodes": {NODE: {"mean": ..., ...}, ...}}
    {"kind": "warning", "step": S, "node": NODE, "warning": KIND, "message": ...}

"in" is there for a node inside a block: the call in the spec that made it. A step's
numbers per node are those of runtime.diagnostics (METRICS); a node lacks those that do
not apply to it (`dead` to anything but a ReLU, `update_ratio` to a node without
parameters).
"""
from __future__ import annotations

import json
import os

from rich.table import Table

from netdsl.app.record import read_metrics
from netdsl.app.runs import find_run
from netdsl.errors import SpecError

__all__ = ["DIAGNOSTICS", "METRICS", "WARNINGS", "read_diagnostics", "last_values",
           "node_metric", "diagnose_command"]

DIAGNOSTICS = "diagnostics.jsonl"
# a node's numbers, in the table's order, with their column titles
METRICS = {"mean": "mean", "std": "std", "dead": "dead", "saturated": "saturated",
           "grad_norm": "grad norm", "param_grad_norm": "param grad", "update_ratio": "update/w"}
# the warnings' kinds, as their lines name them
WARNINGS = ("vanishing", "exploding", "dead", "saturated")


def read_diagnostics(folder: str) -> list[dict]:
    """The lines of folder/diagnostics.jsonl ([] without one; a cut line is skipped)."""
    return read_metrics(folder, DIAGNOSTICS)


def last_values(entries: list[dict]) -> tuple[dict, dict]:
    """Per node, the last recorded value of each metric, and the step it was recorded at
    (a node seen in some steps only keeps its own last values)."""
    values: dict[str, dict] = {}
    steps: dict[str, int] = {}
    for entry in entries:
        if entry.get("kind") != "step" or not isinstance(entry.get("nodes"), dict):
            continue
        for node, numbers in entry["nodes"].items():
            if isinstance(numbers, dict):
                values.setdefault(node, {}).update(
                    {k: v for k, v in numbers.items() if v is not None})
                steps[node] = entry.get("step", 0)
    return values, steps


def node_metric(folder: str, metric: str) -> dict[str, float]:
    """Per node id, the last recorded value of `metric` (one of METRICS) in the run record
    in `folder`: what a drawing colours its nodes by. Nodes without it are absent ({}
    for a run without diagnostics).

    Raises
    ------
    ValueError
        For a metric that diagnostics do not record.
    """
    if metric not in METRICS:
        raise ValueError(f"no diagnostic named {metric!r}; there are {', '.join(METRICS)}")
    values, _ = last_values(read_diagnostics(folder))
    return {node: numbers[metric] for node, numbers in values.items() if metric in numbers}


def _places(entries: list[dict]) -> tuple[dict, int | None]:
    for entry in entries:
        if entry.get("kind") == "nodes" and isinstance(entry.get("nodes"), dict):
            return entry["nodes"], entry.get("every")
    return {}, None


def summary(folder: str, name: str) -> dict:
    """What `netc diagnose` shows: every node with its place, op, last values and the
    warnings about it, in the order the network computes them.

    Raises
    ------
    SpecError
        When the run has no recorded diagnostics.
    """
    entries = read_diagnostics(folder)
    values, steps = last_values(entries)
    places, every = _places(entries)
    if not values:
        why = (f"it was trained with --diagnose {every}, but no step it ran was a multiple "
               f"of {every}" if every else "it was trained without --diagnose")
        raise SpecError(f"the run {name} has no diagnostics: {why}",
                        None, "rerun it with them: netc run SPEC --diagnose N "
                              f"--checkpoint {folder} (every N steps; 50 without N)")
    warnings = [e for e in entries if e.get("kind") == "warning"]
    order = list(places) + [node for node in values if node not in places]
    nodes = []
    for node in order:
        if node not in values:
            continue
        place = places.get(node, {})
        nodes.append({"node": node, "op": place.get("op"), "at": place.get("at"),
                      "in": place.get("in"), "step": steps[node], **values[node],
                      "warnings": [w.get("warning") for w in warnings if w.get("node") == node]})
    last = max(steps.values())
    epoch = max((e.get("epoch", 0) for e in entries
                 if e.get("kind") == "step" and e.get("step") == last), default=None)
    return {"run": name, "folder": folder, "every": every, "step": last, "epoch": epoch,
            "nodes": nodes,
            "warnings": [{k: w.get(k) for k in ("step", "node", "warning", "message")}
                         for w in warnings]}


def _cell(metric: str, value) -> str:
    if value is None:
        return ""
    if metric in ("dead", "saturated"):
        return f"{100 * value:.1f}%"
    return f"{value:.3g}"


def diagnostics_table(data: dict) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("node", no_wrap=True)
    table.add_column("op", no_wrap=True)
    table.add_column("spec line", no_wrap=True)
    for title in METRICS.values():
        table.add_column(title, justify="right", no_wrap=True)
    table.add_column("warnings", no_wrap=True)
    for row in data["nodes"]:
        where = row["at"] or ""
        if row["in"]:
            where += f" (in {row['in']})"
        table.add_row(row["node"], row["op"] or "", where,
                      *(_cell(m, row.get(m)) for m in METRICS), ", ".join(row["warnings"]))
    return table


def _every(steps: int) -> str:
    return "every step" if steps == 1 else f"every {steps} steps"


def diagnose_command(args, console) -> int:
    """`netc diagnose RUN`: the last recorded diagnostics of each node and the warnings,
    as a table (or --json)."""
    folder = find_run(args.run)
    name = os.path.basename(os.path.normpath(folder))
    data = summary(folder, args.run)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    console.print(f"{name}: step {data['step']}"
                  + (f" (epoch {data['epoch']})" if data["epoch"] else "")
                  + (f", recorded {_every(data['every'])}" if data["every"] else ""))
    console.print(diagnostics_table(data))
    for warning in data["warnings"]:
        console.print(f"warning at step {warning['step']}: {warning['message']}",
                      markup=False)
    return 0
