"""Data-parallel training: two MPI workers against one process, the pieces on their own,
and the command line (netc run --workers, errors, a killed worker, resuming)."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from distributed_cases import CASES, WORKERS, build, results
from netdsl.runtime.distributed import rank_seed
from netdsl.runtime.train import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
RTOL = 1e-10


def mpirun_available() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return shutil.which("mpirun", path=os.path.dirname(sys.executable)) is not None


needs_mpi = pytest.mark.skipif(not mpirun_available(), reason="needs mpi4py and mpirun "
                               "(pip install 'netdsl[mpi]')")


def mpirun(*command: str, workers: int = WORKERS, timeout: float = 300, **kwargs):
    """`mpirun -np WORKERS --oversubscribe COMMAND`, allowed as root, as CI runs it."""
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    runner = shutil.which("mpirun", path=os.path.dirname(sys.executable))
    return subprocess.run([runner, "-np", str(workers), "--oversubscribe", "--bind-to", "none",
                           *command], env=env, capture_output=True, text=True, timeout=timeout,
                          **kwargs)


@pytest.fixture(scope="module")
def workers_ran(tmp_path_factory):
    """Every case, trained once by two workers under one mpirun: name -> per-rank results."""
    out = tmp_path_factory.mktemp("workers")
    result = mpirun(sys.executable, os.path.join(HERE, "distributed_worker.py"), str(out),
                    *CASES, cwd=HERE)
    assert result.returncode == 0, result.stdout + result.stderr
    ran = {}
    for name in CASES:
        ran[name] = []
        for rank in range(WORKERS):
            with np.load(out / f"{name}-rank{rank}.npz") as saved:
                ran[name].append(dict(saved))
    return ran


def one_process(name: str) -> list[dict]:
    """The case trained by one process on whole global batches (the same results for
    every rank)."""
    lowered, settings, data = build(name)
    trainer = Trainer(lowered, settings, dtype="float64")
    trainer.fit(data, None)
    return [results(trainer)] * WORKERS


def one_process_as_workers(name: str) -> list[dict]:
    """The case trained by one process that does each worker's part of a global batch in
    turn, with that worker's random stream and batchnorm statistics, sums their gradients
    weighted by their shares and makes one update: what the workers compute, without MPI."""
    lowered, settings, data = build(name)
    trainer = Trainer(lowered, settings, dtype="float64")
    ex, plan = trainer.executor, trainer.plan
    states = [np.random.default_rng(rank_seed(settings.seed, r)).bit_generator.state
              for r in range(WORKERS)]
    buffers = [{node: {} for node in ex.buffers} for _ in range(WORKERS)]
    shuffler = [np.random.default_rng((settings.seed, 0)) for _ in range(WORKERS)]
    parts = zip(*(data.shards(settings.batch, shuffler[r], r, WORKERS) for r in range(WORKERS)))
    for _, shards in zip(range(settings.steps), parts):
        seen = {}
        for phase, (part, optimizer) in zip(trainer.phases, trainer.optimizers):
            for _ in range(phase.repeat):
                summed = np.zeros_like(ex.flat_grads[part])
                values = dict.fromkeys(plan.losses, 0.0)
                for rank, (batch, total) in enumerate(shards):
                    weight = len(next(iter(batch.values()))) / total
                    ex.set_rng_state(states[rank])
                    ex.buffers = buffers[rank]
                    out = ex.forward(batch, True)
                    ex.backward(lowered.backward(phase.losses, phase.params))
                    summed += weight * ex.flat_grads[part]
                    for name_, node in plan.losses.items():
                        values[name_] += weight * float(out[node])
                    states[rank] = ex.rng_state()
                ex.flat_grads[part] = summed
                optimizer.step(ex.flat_grads[part], optimizer.lr)
                seen.update(values)
        trainer.position.losses.append(seen)
    runs = []
    for rank in range(WORKERS):
        ex.buffers = buffers[rank]
        runs.append(results(trainer))
    return runs


REFERENCES = {"plain": one_process, "workers": one_process_as_workers}


@needs_mpi
@pytest.mark.parametrize("name", sorted(CASES))
def test_two_workers_train_as_one_process(workers_ran, name):
    """The losses of every step, the parameters and the running statistics of two
    workers equal one process's at the same global batch, in float64."""
    ran, reference = workers_ran[name], REFERENCES[CASES[name].reference](name)
    assert ran[0]["params"].tobytes() == ran[1]["params"].tobytes(), "the workers drifted apart"
    for rank, (mine, theirs) in enumerate(zip(ran, reference)):
        assert mine["losses"].shape == theirs["losses"].shape
        np.testing.assert_allclose(mine["losses"], theirs["losses"], rtol=RTOL)
        np.testing.assert_allclose(mine["params"], theirs["params"], rtol=RTOL, atol=1e-13)
        np.testing.assert_allclose(mine["history"], theirs["history"], rtol=RTOL)
        buffers = sorted(k for k in theirs if k.startswith("buffer/"))
        assert buffers == sorted(k for k in mine if k.startswith("buffer/"))
        for key in buffers:
            np.testing.assert_allclose(mine[key], theirs[key], rtol=RTOL, atol=1e-13,
                                       err_msg=f"rank {rank}: {key}")
    if CASES[name].overlap:
        assert ran[0]["buckets"] > 1 or name == "lstm_tbptt" and ran[0]["buckets"] >= 1


def test_per_worker_batchnorm_differs_from_one_process():
    """The reference of per-worker statistics is not the plain one: the comparison above
    can tell them apart."""
    plain, workers = one_process("resnet20"), one_process_as_workers("resnet20")
    assert not np.allclose(plain[0]["losses"], workers[0]["losses"], rtol=1e-6)
