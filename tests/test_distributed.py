"""Data-parallel training: two MPI workers against one process, the pieces on their own,
and the command line (netc run --workers, errors, a killed worker, resuming)."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, cli_main
from distributed_cases import CASES, WORKERS, build, results
from netdsl.runtime import distributed
from netdsl.runtime.distributed import MpiCommunicator, WorkerLost, rank_seed
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
    lowered, settings, train, val = build(name)
    trainer = Trainer(lowered, settings, dtype="float64")
    trainer.fit(train, val)
    return [results(trainer)] * WORKERS


def one_process_as_workers(name: str) -> list[dict]:
    """The case trained by one process that does each worker's part of a global batch in
    turn, with that worker's random stream and batchnorm statistics, sums their gradients
    weighted by their shares and makes one update: what the workers compute, without MPI."""
    lowered, settings, data, val = build(name)
    assert val is None, "the reference makes no epoch records"
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
        if CASES[name].val:  # validation sums reduced over the workers' parts
            assert np.isfinite(mine["history"][:, 2:]).all()
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


# ---- waiting for the other workers


class _Request:
    """A collective that completes `after` seconds from now (never, with None)."""

    def __init__(self, after: float | None):
        self.at = None if after is None else time.monotonic() + after

    def Test(self) -> bool:  # noqa: N802  mpi4py's name
        return self.at is not None and time.monotonic() >= self.at


class _World:
    """Two ranks on this host, the other one this process (alive, so it hangs)."""

    def Get_rank(self) -> int:  # noqa: N802
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 2

    def Split_type(self, kind):  # noqa: N802
        return self

    def Free(self) -> None:  # noqa: N802
        pass

    def allgather(self, value) -> list:
        return [value, value]


def _communicator(timeout: float) -> MpiCommunicator:
    return MpiCommunicator(_World(), type("Mpi", (), {"COMM_TYPE_SHARED": 0}), timeout)


def test_the_first_step_waits_its_allowance_then_the_timeout_holds(monkeypatch):
    monkeypatch.setattr(distributed, "FIRST_STEP_ALLOWANCE", 2.0)
    comm = _communicator(0.2)
    comm.wait(_Request(0.6), "a sum")   # a first step 0.6 s apart: not a hang
    comm.first_step_done()
    began = time.monotonic()
    with pytest.raises(WorkerLost, match="no answer from worker rank 1 for 0.2 s while "
                                         "rank 0 waited for a sum"):
        comm.wait(_Request(None), "a sum")
    assert time.monotonic() - began < 1.5


def test_a_hang_before_the_first_step_ends_is_named_after_the_allowance(monkeypatch):
    monkeypatch.setattr(distributed, "FIRST_STEP_ALLOWANCE", 0.5)
    with pytest.raises(WorkerLost, match="no answer from worker rank 1 for 0.5 s"):
        _communicator(0.1).wait(_Request(None), "a gather")
    assert _communicator(600).patience() == 600   # a longer timeout holds from the start


def test_the_trainer_tells_the_communicator_its_first_step_ended(monkeypatch):
    """Replicas.stepped, after each training step: the communicator hears of it."""
    from netdsl.runtime.replicas import Replicas

    heard = []
    replicas = Replicas.__new__(Replicas)
    replicas.size, replicas.comm = 2, type("Comm", (), {
        "first_step_done": lambda self: heard.append(True)})()
    replicas.stepped()
    assert heard == [True]


# ---- the command line

W1 = os.path.join(ROOT, "benchmarks", "specs", "w1_mlp.net")


def netc(*args: str, timeout: float = 300, background: bool = False):
    """`netc ARGS` in a subprocess (started as root is allowed to start mpirun)."""
    code = "import sys; from netdsl.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, *args]
    env = dict(os.environ)
    if background:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def losses(folder) -> list[float]:
    from netdsl.runtime.checkpoint import load_checkpoint

    return [step["loss"] for step in load_checkpoint(str(folder))[1]["position"]["losses"]]


def position(folder) -> dict | None:
    from netdsl.runtime.checkpoint import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(str(folder))[1]["position"]
    except (CheckpointError, ValueError):
        return None


def worker_pid(rank: int, marker: str, deadline: float = 120) -> int:
    """The pid of the worker of `rank` whose command line holds `marker`."""
    import time

    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if marker.encode() not in handle.read():
                        continue
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    if f"OMPI_COMM_WORLD_RANK={rank}\0".encode() in handle.read():
                        return int(pid)
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no worker of rank {rank} appeared")


def wait_for(folder, epoch: int, batch: int, proc, deadline: float = 180) -> None:
    import time

    stop = time.monotonic() + deadline
    while time.monotonic() < stop and proc.poll() is None:
        at = position(folder)
        if at and (at["epoch"], at["batch"]) >= (epoch, batch):
            return
        time.sleep(0.005)
    said = proc.communicate(timeout=60)[1][-3000:] if proc.poll() is not None else ""
    raise AssertionError(f"the run did not reach epoch {epoch + 1}, batch {batch}\n{said}")


@needs_mpi
class TestCommandLine:
    FLAGS = ("--epochs", "3", "--checkpoint-every", "0", "--quiet", "--seed", "4")

    def test_a_killed_worker_stops_the_others_and_resume_continues_the_curve(self, tmp_path):
        import signal

        whole = tmp_path / "whole"
        result = netc("run", W1, "--workers", "2", "--checkpoint", str(whole), *self.FLAGS)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("epoch 3 ") == 1, "rank 0 alone prints"
        assert "2 workers (MPI), 64 examples each" in result.stderr
        killed = tmp_path / "killed"
        proc = netc("run", W1, "--workers", "2", "--checkpoint", str(killed), *self.FLAGS,
                    background=True)
        victim = worker_pid(1, str(killed))
        wait_for(killed, 1, 3, proc)
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert "worker rank 1 was killed (SIGKILL)" in err and "--resume" in err, err
        assert "Traceback" not in err and "prterun" not in err, err
        stopped = position(killed)
        assert stopped is not None and stopped["epoch"] < 3, "the checkpoint is intact"
        for workers in ("1", "2"):
            again = tmp_path / f"resumed{workers}"
            shutil.copytree(killed, again)
            resume = netc if workers == "2" else cli_main   # one process: called here
            result = resume("run", W1, "--workers", workers, "--checkpoint", str(again),
                            *self.FLAGS, "--resume")
            assert result.returncode == 0, result.stderr
            assert "resuming" in result.stderr
            if workers == "2":  # the same workers: the same numbers
                assert losses(again) == losses(whole)
            else:               # one process sums in another order: float32's rounding
                np.testing.assert_allclose(losses(again), losses(whole), rtol=1e-5)

    def test_a_worker_that_hangs_is_named_after_the_timeout(self, tmp_path):
        # the ranks' first steps (imports, kernels, choices) can end 3 s apart on two busy
        # cores: the waits allow for that until the first step has ended, then --timeout
        import signal

        folder = tmp_path / "hung"
        proc = netc("run", W1, "--workers", "2", "--checkpoint", str(folder), "--epochs", "200",
                    "--checkpoint-every", "0", "--quiet", "--timeout", "3", background=True)
        victim = worker_pid(1, str(folder))
        try:
            wait_for(folder, 0, 2, proc)
            os.kill(victim, signal.SIGSTOP)
            _, err = proc.communicate(timeout=60)
        finally:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert proc.returncode == 1
        assert "no answer from worker rank 1 for 3 s" in err and "intact" in err, err
        assert position(folder) is not None

    def test_a_slow_first_step_on_one_rank_is_not_a_hang(self, tmp_path):
        """Rank 1's first step ends 6 s after rank 0 has begun waiting for it (as a
        compilation or a kernel's timing would make it), with --timeout 3: the first
        step's allowance waits for it."""
        began = tmp_path / "rank 0 began"
        slow_first_step = (
            "import os, sys, time\n"
            "from netdsl.runtime.train import Trainer\n"
            "real, steps = Trainer._step, []\n"
            "def step(self, *args, **kwargs):\n"
            "    if not steps and os.environ['OMPI_COMM_WORLD_RANK'] == '0':\n"
            f"        open({str(began)!r}, 'w').close()\n"
            "    elif not steps:\n"
            f"        while not os.path.exists({str(began)!r}):\n"
            "            time.sleep(0.01)\n"
            "        time.sleep(6)\n"
            "    steps.append(1)\n"
            "    return real(self, *args, **kwargs)\n"
            "Trainer._step = step\n"
            "from netdsl.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
        folder = tmp_path / "run"
        result = mpirun(sys.executable, "-c", slow_first_step, "run", W1, "--checkpoint",
                        str(folder), "--steps", "3", "--quiet", "--timeout", "3", cwd=ROOT)
        assert result.returncode == 0, result.stderr
        assert position(folder)["iteration"] == 3

    def test_workers_with_different_spec_files_are_refused(self, tmp_path):
        for rank, width in enumerate((256, 128)):
            os.makedirs(tmp_path / f"d{rank}")
            with open(W1) as source, open(tmp_path / f"d{rank}" / "spec.net", "w") as copy:
                copy.write(source.read().replace("dense(256)", f"dense({width})"))
        command = [sys.executable, "-m", "netdsl.cli", "run", "spec.net", "--steps", "1"]
        env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        runner = shutil.which("mpirun", path=os.path.dirname(sys.executable))
        result = subprocess.run([runner, "--bind-to", "none",
                                 "--wdir", str(tmp_path / "d0"), "-np", "1", *command, ":",
                                 "--wdir", str(tmp_path / "d1"), "-np", "1", *command],
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode != 0
        assert result.stderr.count("worker rank 1 read a different spec.net than rank 0") == 1
        assert "Traceback" not in result.stderr

    def test_a_failed_checkpoint_write_stops_every_worker_and_resume_continues(self,
                                                                                 tmp_path):
        """--on-write-error stop: rank 0's third write meets a full disk; both workers end
        (mpirun's exit code is not 0), rank 0 alone says which step the checkpoint holds."""
        full_after_two = (
            "import errno, os, sys\n"
            "from netdsl.runtime import checkpoint\n"
            "real, writes = checkpoint.write_bytes, []\n"
            "def write(path, data):\n"
            "    writes.append(path)\n"
            "    if len(writes) > 2:\n"
            "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
            "    real(path, data)\n"
            "checkpoint.write_bytes = write\n"
            "from netdsl.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
        folder = tmp_path / "run"
        flags = ("run", W1, "--checkpoint", str(folder), *self.FLAGS)
        result = mpirun(sys.executable, "-c", full_after_two, *flags, "--on-write-error",
                        "stop", cwd=ROOT)
        assert result.returncode != 0
        said = "error: could not write the checkpoint at step 3 (No space left on device)"
        assert result.stderr.count(said) == 1, result.stderr
        assert f"{folder / 'checkpoint.npz'} holds step 2" in result.stderr
        assert "Traceback" not in result.stderr
        assert position(folder)["iteration"] == 2
        result = cli_main(*flags, "--resume", "--steps", "4")  # one process resumes it too
        assert result.returncode == 0, result.stderr
        assert "at epoch 1, step 2" in result.stderr and position(folder)["iteration"] == 4

    def test_a_batch_smaller_than_the_workers_is_one_clear_line(self, tmp_path):
        result = netc("run", W1, "--workers", "2", "--batch", "1", "--checkpoint",
                      str(tmp_path / "run"))
        assert result.returncode == 1
        assert result.stderr.count("a batch of 1 cannot be shared by 2 workers") == 1
        assert "Traceback" not in result.stderr and "prterun" not in result.stderr


def test_without_mpi4py_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # unimportable, as where not installed
    result = cli_main("run", W1, "--workers", "2")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--workers 2 needs mpi4py" in result.stderr and "netdsl[mpi]" in result.stderr
    # a worker that mpirun started
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    result = cli_main("run", W1, "--checkpoint", str(tmp_path / "r"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "started as 2 processes, but mpi4py is not installed" in result.stderr
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    result = cli_main("run", W1, "--checkpoint", str(tmp_path / "r"))
    assert result.returncode == 1 and result.stderr == "", "rank 0 alone says it"


# ---- the benchmark and the scaling model

@needs_mpi
def test_the_parallel_benchmark_runs_and_reports_what_it_measured(tmp_path):
    out = tmp_path / "speed.json"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "parallel_speed.py"),
                             "--only", "W1", "--quick", "--cores", "2", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| W1 MLP 64-256-256-10 | 128 | 0.32 MiB |" in result.stdout
    import json

    [w1] = json.loads(out.read_text())["results"]
    assert w1["params"] == 85002
    assert set(w1["samples_per_s"]) == {"1 process", "2 workers", "2 workers, no overlap"}
    assert all(rate > 0 for rate in w1["samples_per_s"].values())
    assert w1["allreduce_ms"] > 0 and w1["hidden"] is not None


def test_the_scaling_model_prints_the_tables_of_the_docs():
    """docs/distributed.md holds the model's tables as it prints them."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "scaling_model.py")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with open(os.path.join(ROOT, "docs", "distributed.md")) as handle:
        docs = handle.read()
    rows = [line for line in result.stdout.splitlines() if line.startswith("| W") or
            line[:3] in ("| 8", "| 6", "| 5")]
    assert len(rows) >= 6 + 12 + 6 + 3
    for row in rows:
        cells = row.split(" | ", 1)[1]  # the docs' headers are worded for reading
        assert cells in docs, row
