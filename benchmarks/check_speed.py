"""How long `netc check` takes on big and hostile specs: each one a fresh process, as a
user (or the builder's check-as-you-type) would meet it.

    python benchmarks/check_speed.py [--only NAME,...] [--timeout 120] [--json FILE]
    python benchmarks/check_speed.py --passes [--only NAME,...] [--rounds 5]

Specs, generated:

- valid_100k: a valid spec of 100,000 lines (chains of layers, blocks, loops, states);
- errors_10k: 10,000 lines full of errors (undefined names, unknown layers, bad arguments);
- delays_4000: one state read at 4,000 distinct delays h[t-1] .. h[t-4000];
- sum_10000: one sum of 10,000 terms;
- nested_for: an empty `for` of 100,000 steps inside another (refused by the budget);
- nested_blocks: a block repeated 1,000 times inside a block repeated 1,000 times (refused).

Prints one row per spec: seconds (wall), CPU seconds (user and system: the figure to
compare on a busy machine), exit code, the peak memory of the process, and the first line
netc printed.

`--passes` times each pass of the check instead, in this process, as netc check runs them
(netdsl.driver.check_text, then the parameter count; the cyclic collector off): the least
and the median CPU seconds of each pass over the rounds, and the parse once more per
round with the quick parser reading whole statements one at a time as before
(NETDSL_WHOLE_STATEMENTS=0), in turn with the default, so the two compare in the same
minutes of a busy machine.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def valid_100k(lines: int = 100_000) -> str:
    """Blocks, a loop and a state over a sequence up front, then a long chain of assignments."""
    head = [
        "network big",
        "input x : seq[16]",  # the state h runs over its steps
        "target y : class(4)",
        "state h : [16]",
        "block pair(n) {",
        "  in a",
        "  b = a -> dense(n) -> relu",
        "  out b + a",
        "}",
        "v0 = x + h[t-1]",
        "for i in 1..8 {",
        "  v0 = v0 -> pair(16)",
        "}",
    ]
    body = [f"v{i} = v{i - 1} -> dense(16) -> relu" if i % 3 else f"v{i} = pair(v{i - 1}, 16)"
            for i in range(1, lines - len(head) - 3)]
    last = len(body)
    tail = [f"h = v{last}", f"loss cross_entropy(v{last} -> dense(4), y)",
            "train adam(lr=1e-3), batch=32, epochs=1"]
    return "\n".join(head + body + tail) + "\n"


def errors_10k(lines: int = 10_000) -> str:
    """Every line a mistake of one of four kinds, each on its own names."""
    out = ["input x : [8]", "target y : class(2)"]
    kinds = (lambda i: f"a{i} = undefined{i} -> dense(4)",
             lambda i: f"b{i} = x -> dnese{i}(4)",
             lambda i: f"c{i} = x -> dense(-{i})",
             lambda i: f"d{i} = x -> dense(4, 5, 6, 7)")
    out += [kinds[i % 4](i) for i in range(lines - 3)]
    out.append("loss cross_entropy(x -> dense(2), y)")
    return "\n".join(out) + "\n"


def delays_4000(n: int = 4000) -> str:
    terms = " + ".join(f"h[t-{k}]" for k in range(1, n + 1))
    return (f"input x : seq[4]\ntarget y : [4]\nstate h : [4]\nh = x + {terms}\n"
            "loss mse(h -> last, y)\n")


def sum_10000(n: int = 10_000) -> str:
    terms = " + ".join(["x"] * n)
    return f"input x : [4]\ntarget y : [4]\ns = {terms}\nloss mse(s, y)\n"


def nested_for(n: int = 100_000) -> str:
    return (f"input x : [4]\ntarget y : [4]\nfor i in 1..{n} {{\n  for j in 1..{n} {{\n  }}\n}}\n"
            "loss mse(x, y)\n")


def nested_blocks(n: int = 1000) -> str:
    return ("input x : [4]\ntarget y : [4]\n"
            "block inner(k) {\n  in a\n  b = a -> dense(k)\n  out b\n}\n"
            f"block outer(k) {{\n  in a\n  b = a -> inner(k) x {n}\n  out b\n}}\n"
            f"z = x -> outer(4) x {n}\nloss mse(z, y)\n")


SPECS = {f.__name__: f for f in (valid_100k, errors_10k, delays_4000, sum_10000, nested_for,
                                 nested_blocks)}


def time_check(path: str, timeout: float) -> dict:
    """`netc check PATH` in a fresh process, as netc runs: seconds, CPU seconds, exit code,
    peak RSS (the child's own, from wait4), first line."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "netdsl.cli", "check", path],
                                 stdout=out, stderr=subprocess.STDOUT, text=True, cwd=HERE)
        timer = threading.Timer(timeout, child.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        text = out.read().strip().splitlines()
    if child.returncode == -signal.SIGKILL and seconds >= timeout:
        return {"seconds": None, "cpu": None, "rc": None, "peak_mib": None,
                "first": f"over {timeout:.0f} s"}
    return {"seconds": round(seconds, 2), "cpu": round(usage.ru_utime + usage.ru_stime, 2),
            "rc": child.returncode, "peak_mib": round(usage.ru_maxrss / 1024),
            "first": text[0][:110] if text else ""}


def time_passes(text: str, rounds: int) -> dict[str, list[float]]:
    """CPU seconds of each pass of checking `text`, per round (see --passes)."""
    sys.path.insert(0, str(HERE))
    from netdsl import fast_parse
    from netdsl.cost import param_count
    from netdsl.driver import _Loader, cycle_collection_paused
    from netdsl.expand import IndependentErrors, expand
    from netdsl.graph import graph_and_order
    from netdsl.imports import import_roots
    from netdsl.parse import parse
    from netdsl.recurrences import check_recurrences
    from netdsl.shapes import typed_graph

    def timed(name, work, *args):
        start = time.process_time()
        result = work(*args)
        times.setdefault(name, []).append(time.process_time() - start)
        return result

    def expanded(module):
        try:
            return expand(module, _Loader({"spec.net": text}, import_roots("spec.net")))
        except IndependentErrors as exc:
            return exc.program

    times: dict[str, list[float]] = {}
    runs = fast_parse.RUNS_OF_STATEMENTS
    for _ in range(rounds):
        with cycle_collection_paused():
            fast_parse.RUNS_OF_STATEMENTS = False
            timed("parse, one statement at a time", parse, text, "spec.net")
            fast_parse.RUNS_OF_STATEMENTS = runs
            module = timed("parse", parse, text, "spec.net")
            program = timed("expand", expanded, module)
            graph, order = timed("graph", graph_and_order, program)
            graph, _ = timed("shapes", typed_graph, graph, False, order)
            timed("recurrences", check_recurrences, graph, program.train_spans)
            timed("parameter count", param_count, graph)
            del module, program, graph, order
        gc.collect()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated spec names")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--passes", action="store_true",
                        help="CPU seconds of each pass, in this process (see above)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --passes")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SPECS)
    if args.passes:
        print(f"passes of netc check, CPU seconds, least and median of {args.rounds} rounds, "
              f"load average {os.getloadavg()[0]:.1f} at the start")
        for name in names:
            times = time_passes(SPECS[name](), args.rounds)
            for step, seconds in times.items():
                print(f"{name:14} {step:32} {min(seconds):7.3f} {statistics.median(seconds):7.3f}")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
        return
    load = os.getloadavg()[0]
    print(f"netc check, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the start")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):  # the checks inherit it
        print("PYTHONDONTWRITEBYTECODE is set: a check compiles the netdsl modules that have "
              "no cached bytecode yet, about 0.1 s more than an installed netdsl takes")
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            path = os.path.join(folder, f"{name}.net")
            text = SPECS[name]()
            Path(path).write_text(text)
            row = time_check(path, args.timeout)
            row["lines"] = text.count("\n")
            rows[name] = row
            print(f"{name:14} {row['lines']:>7} lines  {row['seconds']!s:>7} s  "
                  f"cpu {row['cpu']!s:>6} s  rc {row['rc']}  peak {row['peak_mib']} MiB  "
                  f"{row['first']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average": load, "rows": rows}, indent=1))


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a runaway case fails, not the machine
    main()
