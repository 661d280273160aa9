"""A scaling model on paper for data-parallel training beyond one machine (W1-W6).

    python benchmarks/scaling_model.py

Prints the tables of docs/distributed.md's scaling model: for each workload its
parameters (counted from its spec in benchmarks/specs/), the gradient bytes one step
sums (float32), the time of a ring allreduce of them at 25 and 100 Gbit/s, and the
efficiency to expect at 8, 64 and 512 workers, with and without overlap; then what
synchronised batchnorm costs W3 when the global batch is fixed.

The model, per step of one worker:

- compute: netdsl's measured step on one 2-core machine at the workload's CPU batch
  (docs/benchmarks.md: train_speed.py and sequence_speed.py, two threads), STEP_MS;
- a ring allreduce of B bytes over N workers sends and receives 2 (N - 1) / N * B bytes
  per worker, in 2 (N - 1) messages per bucket: t = 2 (N - 1) / N * B / bandwidth
  + 2 (N - 1) * latency * buckets, the buckets being runtime.buckets' (1 MiB);
- overlap: the sums run while backward does, about two thirds of a step, so what is left
  exposed is max(0, t - 2/3 * compute); without overlap all of t is;
- efficiency: compute / (compute + exposed), the samples/s of N workers over N times
  one worker's;
- latency: 10 us a message at 25 Gbit/s (Ethernet, MPI over TCP), 2 us at 100 Gbit/s
  (InfiniBand or RoCE, RDMA). Small sums (batchnorm's statistics) go by recursive
  doubling, log2(N) messages.

It ignores what makes real clusters slower (stragglers, the sums' own arithmetic taking
cores from backward, contention in the network's core) and faster (NCCL's and MPI's tree
algorithms for large N, which cut the latency term to about log2(N) messages).
"""
from __future__ import annotations

import math
from pathlib import Path

from netdsl.cost import node_params, param_count
from netdsl.driver import check_file

SPECS = Path(__file__).resolve().parent / "specs"
BUCKET = 1 << 20                       # runtime.buckets.BUCKET_BYTES
NETWORKS = {"25 Gbit/s": (25e9 / 8, 10e-6), "100 Gbit/s": (100e9 / 8, 2e-6)}
WORKERS = (8, 64, 512)
BACKWARD_SHARE = 2 / 3                 # of a step, during which sums can run

# id: (spec, CPU batch, netdsl ms/step on 2 threads at that batch, GPU batch); the
# steps of docs/benchmarks.md of 2026-12-04 on the target `netc run` picks: the host's
# for the feed-forward workloads, the native one (compiled loops) for W4 and W5
WORKLOADS = {
    "W1": ("w1_mlp.net", 128, 0.71, 4096),
    "W2": ("w2_lenet5.net", 64, 10.6, 1024),
    "W3": ("w3_resnet20.net", 32, 188.1, 256),
    "W4": ("w4_lstm.net", 32, 10.8, 256),
    "W5": ("w5_elman.net", 32, 2.7, 256),
    "W6": ("w6_inception.net", 16, 317.1, 128),
}


def ring_seconds(nbytes: float, workers: int, bandwidth: float, latency: float) -> float:
    """A ring allreduce of `nbytes` in buckets of BUCKET bytes over `workers`."""
    buckets = max(1, math.ceil(nbytes / BUCKET))
    steps = 2 * (workers - 1)
    return steps / workers * nbytes / bandwidth + steps * latency * buckets


def efficiency(compute: float, comm: float, overlap: bool) -> float:
    exposed = max(0.0, comm - BACKWARD_SHARE * compute) if overlap else comm
    return compute / (compute + exposed)


def batchnorm_calls(graph) -> tuple[int, list[int]]:
    """How many batchnorm computations a forward makes, and their channels: batchnorm
    layers and the projections that change a shape (a 1x1 convolution and batchnorm)."""
    channels = []
    for node, data in graph.nodes(data=True):
        op = data.get("op")
        if op is None:
            continue
        if op.name == "batchnorm" or (op.name == "project" and node_params(graph, node)):
            channels.append(data["type"].dims[0])
    return len(channels), channels


def main() -> None:
    rows = []
    for wid, (spec, batch, step_ms, _) in WORKLOADS.items():
        graph = check_file(str(SPECS / spec)).graph
        params = param_count(graph)
        rows.append((wid, spec, batch, step_ms / 1e3, params, 4 * params))

    print("| W | parameters | bytes summed per step | compute per step | ring allreduce, "
          "8 / 64 / 512 workers, 25 Gbit/s | the same, 100 Gbit/s |")
    print("|---|---|---|---|---|---|")
    for wid, _, batch, compute, params, nbytes in rows:
        times = {name: " / ".join(f"{ring_seconds(nbytes, n, *net) * 1e3:.2f}"
                                  for n in WORKERS) for name, net in NETWORKS.items()}
        print(f"| {wid} | {params:,} | {nbytes / 2 ** 20:.2f} MiB | {compute * 1e3:g} ms "
              f"(batch {batch}) | {times['25 Gbit/s']} ms | {times['100 Gbit/s']} ms |")

    print()
    print("Efficiency at a fixed batch per worker (the CPU batch), overlap on (off):")
    print()
    header = " | ".join(f"{n} workers" for n in WORKERS)
    print(f"| W | network | {header} |")
    print("|---|---|" + "---|" * len(WORKERS))
    for wid, _, _, compute, _, nbytes in rows:
        for name, net in NETWORKS.items():
            cells = []
            for n in WORKERS:
                comm = ring_seconds(nbytes, n, *net)
                cells.append(f"{100 * efficiency(compute, comm, True):.0f}% "
                             f"({100 * efficiency(compute, comm, False):.0f}%)")
            print(f"| {wid} | {name} | " + " | ".join(cells) + " |")

    print()
    print("A fixed global batch (the GPU batch) shared by more workers, 100 Gbit/s, overlap "
          "on; compute taken as shrinking with the batch (optimistic):")
    print()
    print(f"| W | global batch | {header} |")
    print("|---|---|" + "---|" * len(WORKERS))
    bandwidth, latency = NETWORKS["100 Gbit/s"]
    for wid, _, batch, compute, _, nbytes in rows:
        global_batch = WORKLOADS[wid][3]
        cells = []
        for n in WORKERS:
            if global_batch < n:
                cells.append("fewer examples than workers")
                continue
            mine = compute * (global_batch / n) / batch
            comm = ring_seconds(nbytes, n, bandwidth, latency)
            cells.append(f"{global_batch // n} each: {100 * efficiency(mine, comm, True):.0f}%")
        print(f"| {wid} | {global_batch} | " + " | ".join(cells) + " |")

    graph = check_file(str(SPECS / WORKLOADS["W3"][0])).graph
    calls, channels = batchnorm_calls(graph)
    print()
    print(f"W3 with sync_bn: {calls} batchnorm computations a step, each 2 sums forward "
          "(C + 1 and C values) and 1 backward (2C + 1), on the critical path:")
    print()
    print(f"| workers | 25 Gbit/s | 100 Gbit/s | W3 compute at a global batch of 256 |")
    print("|---|---|---|---|")
    for n in WORKERS:
        cells = []
        for bandwidth, latency in NETWORKS.values():
            seconds = sum(2 * math.log2(n) * latency + 2 * (n - 1) / n * 4 * size / bandwidth
                          for c in channels for size in (c + 1, c, 2 * c + 1))
            cells.append(f"{seconds * 1e3:.2f} ms")
        mine = WORKLOADS["W3"][2] * (256 / n) / WORKLOADS["W3"][1]
        share = f"{mine:.1f} ms" if n <= 256 else "fewer examples than workers"
        print(f"| {n} | {cells[0]} | {cells[1]} | {share} |")


if __name__ == "__main__":
    main()
