"""How long `netc compile` takes on generated deep specs (median of repeats).

    python benchmarks/compile_speed.py [--layers 1000] [--repeats 7]

Prints one row per spec shape and the time of each front-end pass.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

from netdsl.cost import cost_rows
from netdsl.driver import check_text
from netdsl.expand import expand
from netdsl.graph import build_graph
from netdsl.parse import parse
from netdsl.shapes import infer_shapes


def chain_spec(layers: int) -> str:
    """One pipeline of `layers` dense+relu layers, each stage on its own line."""
    stages = "\n".join("  -> dense(64) -> relu" for _ in range(layers // 2))
    return f"input x : [64]\ntarget y : class(10)\nh = x\n{stages}\nloss cross_entropy(h -> dense(10), y)\n"


def block_spec(layers: int) -> str:
    """Residual blocks repeated: the same layer count through block inlining."""
    per_block = 7  # conv, bn, relu, conv, bn, add, relu
    return (
        "input x : [16, 8, 8]\ntarget y : class(10)\n"
        "block basic(c) {\n  in x\n"
        "  y = x -> conv(c, 3, pad=1, bias=false) -> batchnorm -> relu -> conv(c, 3, pad=1, bias=false)"
        " -> batchnorm\n  out relu(x + y)\n}\n"
        f"h = x -> basic(16) x {layers // per_block}\n"
        "loss cross_entropy(h -> gap -> dense(10), y)\n"
    )


def time_passes(text: str) -> dict[str, float]:
    times = {}
    start = time.perf_counter()
    module = parse(text, "bench.net")
    times["parse"] = time.perf_counter() - start
    program = expand(module)
    times["expand"] = time.perf_counter() - start - sum(times.values())
    graph = build_graph(program)
    times["graph"] = time.perf_counter() - start - sum(times.values())
    graph = infer_shapes(graph)
    times["shapes"] = time.perf_counter() - start - sum(times.values())
    cost_rows(graph)
    times["cost"] = time.perf_counter() - start - sum(times.values())
    times["total"] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("| spec | nodes | parse | expand | graph | shapes | cost | total (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, make in (("chain", chain_spec), ("blocks", block_spec)):
        text = make(args.layers)
        nodes = check_text(text, "bench.net").graph.number_of_nodes()
        runs = [time_passes(text) for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        cells = " | ".join(f"{med[k] * 1000:.0f} ms" for k in ("parse", "expand", "graph", "shapes", "cost"))
        print(f"| {name} {args.layers} layers | {nodes} | {cells} | **{med['total'] * 1000:.0f} ms** |")


if __name__ == "__main__":
    main()
