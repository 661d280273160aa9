"""How long `netc export` takes on ResNet-50 (median of repeats), by format and stage.

    python benchmarks/export_speed.py [--spec specs/resnet50.net] [--repeats 5]

The weights are the initial ones (made once, not timed): an export reads them from a
checkpoint, whose loading `netc run` and `netc eval` share. Prints one row per format:
the graph's view, the format's lowering, serialising, and the total; the goal is under 5 s.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from netdsl.driver import check_file
from netdsl.export import select
from netdsl.export.onnx import to_onnx
from netdsl.export.torch import to_torch
from netdsl.export.weights import encode, network_tensors
from netdsl.lower import lower
from netdsl.runtime.init import initial_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(stages: dict) -> dict[str, float]:
    """Run the stages in order, each given the previous one's result; seconds of each."""
    seconds, value = {}, None
    for name, stage in stages.items():
        start = time.perf_counter()
        value = stage(value)
        seconds[name] = time.perf_counter() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=os.path.join(ROOT, "specs", "resnet50.net"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    net = check_file(args.spec)
    lowered = lower(net.graph)
    params = initial_params(lowered.built, "auto", 0)
    formats = {
        "onnx": {"view": lambda _: select(net.graph),
                 "lower": lambda view: to_onnx(view, params),
                 "serialise": lambda model: model.SerializeToString()},
        "torch": {"view": lambda _: select(net.graph),
                  "lower": lambda view: to_torch(view, net.sources),
                  "serialise": lambda module: encode(
                      {name: params[source[1]] for name, source in module.state.items()
                       if source[0] == "param"}, {})},
        "safetensors": {"view": lambda _: lowered.plan,
                        "lower": lambda plan: network_tensors(plan, params, {}),
                        "serialise": lambda tensors: encode(tensors, {})},
    }
    print(f"{net.name}: {sum(p.size for p in params.values()):,} parameters; "
          f"{platform.processor() or platform.machine()}, Python {sys.version.split()[0]}")
    print("| format | view | lowering | serialising | total (median) |")
    print("|---|---|---|---|---|")
    for name, stages in formats.items():
        runs = [timed(stages) for _ in range(args.repeats)]
        median = {stage: statistics.median(r[stage] for r in runs) for stage in stages}
        total = statistics.median(sum(r.values()) for r in runs)
        print(f"| {name} | " + " | ".join(f"{median[s] * 1000:.0f} ms" for s in stages)
              + f" | **{total:.2f} s** |")


if __name__ == "__main__":
    main()
