"""Run under mpirun by tests/test_distributed.py and tests/test_nccl.py: train each case
named on the command line as one of the workers, float64, and write this worker's
results to OUT/CASE-rankR.npz.

    mpirun -np 2 python tests/distributed_worker.py [--on fake-gpu|gpu] OUT CASE...

--on fake-gpu trains on NumPy behind CuPy's namespace (tests/test_cupy_compat.py's
strict_xp, so the trainer takes its device path) and sums with runtime.nccl's
NcclCommunicator over stand-ins for CUDA and NCCL (tests/nccl_fakes.py); --on gpu on
CuPy, one GPU per worker, with NCCL.
"""
import argparse
import os

import numpy as np

from distributed_cases import BUCKET_BYTES, CASES, build, results
from netdsl.runtime.distributed import connect
from netdsl.runtime.replicas import DataParallel
from netdsl.runtime.train import Trainer


def device(on: str, comm):
    """The array module and the communicator of the workers' arrays."""
    if on == "fake-gpu":
        from nccl_fakes import fake_nccl  # the stand-ins, for this mode alone
        from test_cupy_compat import strict_xp  # CuPy's namespace over NumPy

        return strict_xp, fake_nccl(comm)
    if on == "gpu":
        import cupy  # a GPU machine's, for this mode alone

        from netdsl.runtime.nccl import NcclCommunicator, use_local_gpu

        use_local_gpu(comm)
        return cupy, NcclCommunicator(comm, cupy)
    return np, comm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--on", choices=("cpu", "fake-gpu", "gpu"), default="cpu")
    parser.add_argument("out")
    parser.add_argument("cases", nargs="+")
    args = parser.parse_args()
    host = connect(timeout=60)
    xp, comm = device(args.on, host)
    for name in args.cases:
        lowered, settings, train, val = build(name)
        parallel = DataParallel(comm, CASES[name].overlap, BUCKET_BYTES)
        trainer = Trainer(lowered, settings, xp=xp, parallel=parallel, dtype="float64")
        trainer.fit(train, val)
        buckets = max(len(b.buckets) for b in trainer.replicas.buckets)
        np.savez(os.path.join(args.out, f"{name}-rank{comm.rank}.npz"), buckets=buckets,
                 **results(trainer))


if __name__ == "__main__":
    main()
