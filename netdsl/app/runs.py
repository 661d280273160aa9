"""`netc runs [DIR]`: the runs recorded under DIR (runs/) with their best metrics.

A run is a folder with a run record (app.record): run.json, metrics.jsonl, or at least a
checkpoint. Its summary comes from its epoch lines: the best of each loss (the lowest)
and accuracy (the highest), and where it stands (epochs, steps).
"""
from __future__ import annotations

import json
import os

from rich.console import Console
from rich.table import Table

from netdsl.app.record import METRICS, RUN, read_metrics, read_run
from netdsl.errors import SpecError

__all__ = ["list_runs", "summarize", "find_run", "runs_command", "METRIC_KEYS"]

# the metrics a summary gives the best of, in the table's order
METRIC_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
_MARKERS = (RUN, METRICS, "checkpoint.npz")


def _is_run(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in _MARKERS)


def list_runs(root: str) -> list[str]:
    """The run folders in `root` (or `root` itself when it is one), by name."""
    if _is_run(root):
        return [root]
    if not os.path.isdir(root):
        raise SpecError(f"{root}: no such folder", None,
                        "train a spec first (netc run SPEC writes runs/NAME), or name the "
                        "folder that holds the runs")
    return [os.path.join(root, name) for name in sorted(os.listdir(root))
            if _is_run(os.path.join(root, name))]


def find_run(name: str) -> str:
    """A run's folder: `name` itself, or runs/NAME.

    Raises
    ------
    SpecError
        When neither is a run folder.
    """
    for folder in (name, os.path.join("runs", name)):
        if os.path.isdir(folder) and _is_run(folder):
            return folder
    raise SpecError(f"no run {name}: neither {name} nor runs/{name} holds a run record",
                    None, "netc runs lists the runs; name one by its folder")


def _best(key: str, values: list[float]) -> float:
    return max(values) if "accuracy" in key else min(values)


def summarize(folder: str) -> dict:
    """A run's summary: its name, spec, progress, and best and last epoch metrics."""
    run, metrics = read_run(folder), read_metrics(folder)
    epochs = [e for e in metrics if e.get("kind") == "epoch"]
    best = {}
    for key in METRIC_KEYS:
        values = [e[key] for e in epochs if isinstance(e.get(key), (int, float))]
        if values:
            best[key] = _best(key, values)
    last = epochs[-1] if epochs else {}
    return {"run": os.path.basename(os.path.normpath(folder)), "folder": folder,
            "spec": run.get("spec"), "sha256": run.get("sha256"),
            "epochs": last.get("epoch", 0),
            "steps": max((e.get("step", 0) for e in metrics), default=0),
            "started": run.get("started"), "best": best,
            "last": {k: last[k] for k in METRIC_KEYS if k in last}}


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    return f"{100 * value:.2f}%" if "accuracy" in key else f"{value:.4g}"


def runs_table(summaries: list[dict]) -> Table:
    table = Table(title=None, box=None, header_style="bold", pad_edge=False)
    for title, right in (("run", False), ("spec", False), ("epochs", True), ("steps", True),
                         *((f"best {k.replace('_', ' ')}", True) for k in METRIC_KEYS),
                         ("started", False)):
        table.add_column(title, justify="right" if right else "left", no_wrap=True)
    for s in summaries:
        table.add_row(s["run"], s["spec"] or "", str(s["epochs"]), str(s["steps"]),
                      *(_cell(k, s["best"].get(k)) for k in METRIC_KEYS),
                      (s["started"] or "").replace("T", " ").split("+")[0])
    return table


def runs_command(args, console: Console) -> int:
    """Print the runs in args.folder as a table, or with --json as a JSON array."""
    summaries = [summarize(folder) for folder in list_runs(args.folder)]
    if args.json:
        print(json.dumps(summaries, indent=2))
    elif not summaries:
        console.print(f"no runs in {args.folder}/", style=None)
    else:
        console.print(runs_table(summaries))
    return 0
