"""Run under mpirun by tests/test_distributed.py: train each case named on the command
line as one of the workers, float64, and write this worker's results to
OUT/CASE-rankR.npz.

    mpirun -np 2 python tests/distributed_worker.py OUT CASE...
"""
import os
import sys

import numpy as np

from distributed_cases import BUCKET_BYTES, CASES, build, results
from netdsl.runtime.distributed import connect
from netdsl.runtime.replicas import DataParallel
from netdsl.runtime.train import Trainer


def main(out: str, names: list[str]) -> None:
    comm = connect(timeout=60)
    for name in names:
        lowered, settings, data = build(name)
        parallel = DataParallel(comm, CASES[name].overlap, BUCKET_BYTES)
        trainer = Trainer(lowered, settings, parallel=parallel, dtype="float64")
        trainer.fit(data, None)
        buckets = max(len(b.buckets) for b in trainer.replicas.buckets)
        np.savez(os.path.join(out, f"{name}-rank{comm.rank}.npz"), buckets=buckets,
                 **results(trainer))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
