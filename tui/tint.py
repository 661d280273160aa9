"""The graph coloured by a run's diagnostics (`netc run --diagnose`): a colour per node
for one of its numbers, and the legend that says what the colours mean.

Fractions (dead units, saturated outputs) go from green at 0 to red at half the units
or more, the point where `netc run --diagnose` warns. Magnitudes (gradient norms, the
update ratio) go from blue, the smallest in the network, to red, the largest, on a
log scale: a layer far from its neighbours stands out.
"""
from __future__ import annotations

import math

from rich.style import Style

__all__ = ["CYCLE", "tint"]

# the numbers the builder colours by, in the order a key cycles through them
CYCLE = {"dead": "dead units", "saturated": "saturated outputs", "grad_norm": "gradient norm",
         "update_ratio": "update/weight ratio"}
FRACTIONS = ("#98c379", "#c3c35f", "#e5c07b", "#d19a66", "#e06c75")   # green .. red
MAGNITUDES = ("#61afef", "#56b6c2", "#98c379", "#e5c07b", "#e06c75")  # blue .. red
FULL = 0.5  # the fraction coloured red: where the run warns


def tint(values: dict[str, float], metric: str) -> tuple[dict[str, Style], str]:
    """Node -> the colour of its value of `metric`, and the legend."""
    name = CYCLE[metric]
    if metric in ("dead", "saturated"):
        levels = {node: min(value / FULL, 1.0) for node, value in values.items()}
        legend = f"green 0% … red {FULL:.0%} or more"
        scale = FRACTIONS
    else:
        positive = [v for v in values.values() if v > 0]
        low, high = (min(positive), max(positive)) if positive else (1.0, 1.0)
        span = math.log(high / low) or 1.0
        levels = {node: math.log(value / low) / span if value > 0 else 0.0
                  for node, value in values.items()}
        legend = f"blue {low:.2g} (or 0) … red {high:.2g}"
        scale = MAGNITUDES
    styles = {node: Style(color=scale[round(level * (len(scale) - 1))], bold=True)
              for node, level in levels.items()}
    return styles, f"colour by {name}: {legend}"
