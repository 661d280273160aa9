"""The CPU training benchmarks of two checkouts, interleaved: is a change slower?

    python benchmarks/compare_trees.py --base DIR [--rounds 3] [--repeats 3] [--only W1,W5]
                                       [--json FILE]

DIR is another checkout of netdsl (an earlier commit) with its own virtual environment
in DIR/.venv. Each round runs `train_speed.py` and `sequence_speed.py` of one checkout,
then of the other (the order alternating between rounds), each with its own Python; so
load changes during the run hit both. Every run times netdsl against PyTorch in one
process, and PyTorch is the same in both: a workload's ratio (netdsl samples/s over
torch's) is what compares the checkouts, with netdsl's own step time beside it. The
table shows, per workload, the median over all runs of each checkout, and new / base.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def run(tree: Path, script: str, args: list[str]) -> dict:
    """One benchmark script of a checkout, with that checkout's Python; its JSON."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        python = tree / ".venv" / "bin" / "python"
        subprocess.run([str(python), script, *args, "--json", str(out)], cwd=tree / "benchmarks",
                       check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


# the workloads of each script
SCRIPTS = {"train_speed.py": ("W1", "W2", "W3", "W6"), "sequence_speed.py": ("W4", "W5")}


def figures(tree: Path, repeats: int, only: set[str]) -> dict[str, tuple[float, float]]:
    """Workload -> (ratio, netdsl ms per step) of one round of both scripts."""
    found = {}
    train = [w for w in SCRIPTS["train_speed.py"] if w in only]
    if train:
        result = run(tree, "train_speed.py", ["--repeats", str(repeats), "--only", ",".join(train)])
        for w in result["workloads"]:
            found[w["id"]] = (w["ratio"]["median"],
                              statistics.median(w["netdsl"]["repeat_medians_s"]) * 1e3)
    for w in (w for w in SCRIPTS["sequence_speed.py"] if w in only):
        result = run(tree, "sequence_speed.py", ["--repeats", str(repeats), "--only", w])
        for r in result["results"]:
            found[r["id"]] = (r["ratio"], r["netdsl_ms"])
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the earlier checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="repeats per script run")
    parser.add_argument("--only", default="W1,W2,W3,W4,W5,W6", help="workloads, e.g. W1,W5")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args()
    trees = {"base": args.base.resolve(), "new": HERE}
    runs: dict[str, list[dict]] = {"base": [], "new": []}
    load = os.getloadavg()[0]
    for r in range(args.rounds):
        for name in (("new", "base") if r % 2 == 0 else ("base", "new")):
            runs[name].append(figures(trees[name], args.repeats,
                                      {w.strip().upper() for w in args.only.split(",")}))
            print(f"round {r + 1}: {name} done", file=sys.stderr)
    workloads = sorted(runs["new"][0])
    print(f"load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
          f"{args.rounds} rounds of {args.repeats} repeats each, interleaved")
    print("| workload | ratio base | ratio new | new / base | netdsl ms base | netdsl ms new |")
    print("|---|---|---|---|---|---|")
    for w in workloads:
        ratio = {k: statistics.median(run[w][0] for run in runs[k]) for k in runs}
        ms = {k: statistics.median(run[w][1] for run in runs[k]) for k in runs}
        print(f"| {w} | {ratio['base']:.2f} | {ratio['new']:.2f} | "
              f"{ratio['new'] / ratio['base']:.2f} | {ms['base']:.2f} | {ms['new']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"load_start": load, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
