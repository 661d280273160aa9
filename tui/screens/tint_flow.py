"""Colouring the graph by the diagnostics of the spec's run (runs/NAME, written by
`netc run SPEC --diagnose`): `m` cycles through the numbers recorded, then off."""
from __future__ import annotations

from netdsl.app.diagnostics import node_metric
from netdsl.app.record import run_folder
from netdsl.tui.tint import CYCLE, tint

__all__ = ["TintFlow"]


class TintFlow:
    """The colouring action of BuilderScreen, which mixes this in: it uses its graph
    view, status line and last good check."""

    tint_metric: str | None = None

    def action_colour_by(self) -> None:
        good = self.good
        if good is None:
            self.status("the spec must check before its run's diagnostics can colour it")
            return
        folder = run_folder(good.network.name, self.file_name, new_run=False)
        recorded = {metric: values for metric in CYCLE
                    if (values := node_metric(folder, metric))}
        order = [None, *recorded]
        at = order.index(self.tint_metric) if self.tint_metric in order else 0
        self.tint_metric = order[(at + 1) % len(order)]
        view = self.graph_view
        if self.tint_metric is None:
            view.tint = {}
            self.status("colours: by kind of node" if recorded else
                        f"no diagnostics in {folder}/: train with netc run SPEC --diagnose")
        else:
            view.tint, legend = tint(recorded[self.tint_metric], self.tint_metric)
            self.status(f"{legend} ({folder}; m: next)")
        view.refresh()
