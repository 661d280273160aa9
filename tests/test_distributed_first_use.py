"""Data-parallel waits allow for first-use work beyond the first step
(runtime/distributed.py): in a step or pass of a kind a worker has not run before (an
epoch's last, partial batch, whose size compiles and times kernels again; the first
evaluation) a wait for the others lasts at least FIRST_STEP_ALLOWANCE, as in the first
step; once one of a kind has ended, --timeout alone again."""
import os
import sys
import time

import pytest

from conftest import ROOT
from netdsl.runtime import distributed
from netdsl.runtime.distributed import WorkerLost
from test_distributed import W1, _communicator, _Request, mpirun, needs_mpi, position


def test_a_new_kind_waits_its_allowance_and_a_known_one_the_timeout(monkeypatch):
    monkeypatch.setattr(distributed, "FIRST_STEP_ALLOWANCE", 2.0)
    comm = _communicator(0.2)
    comm.starting(("train", 128))
    comm.wait(_Request(0.5), "a sum")   # the first step
    comm.first_step_done()
    for kind in (("train", 44), ("evaluate", 30, 256)):   # a partial batch, an evaluation
        comm.starting(kind)
        assert comm.patience() == 2.0
        comm.wait(_Request(0.5), "a sum")
        comm.first_step_done()
        comm.starting(kind)            # its kernels made: a hang is one now
        assert comm.patience() == 0.2
        began = time.monotonic()
        with pytest.raises(WorkerLost, match="for 0.2 s"):
            comm.wait(_Request(None), "a sum")
        assert time.monotonic() - began < 1.5
        comm.first_step_done()
    comm.starting(("train", 128))
    assert comm.patience() == 0.2


def test_the_trainer_names_each_step_and_evaluation_to_the_communicator():
    from netdsl.runtime.replicas import Replicas

    heard = []
    replicas = Replicas.__new__(Replicas)
    replicas.size, replicas.buckets = 2, []
    replicas.comm = type("Comm", (), {"starting": lambda self, kind: heard.append(kind),
                                      "first_step_done": lambda self: heard.append("done")})()
    replicas.begin_batch(22, 44)
    replicas.stepped()
    replicas.starting("evaluate", 30, 256)
    assert heard == [("train", 44), "done", ("evaluate", 30, 256)]


@needs_mpi
def test_a_slow_first_partial_batch_on_one_rank_is_not_a_hang(tmp_path):
    """300 examples in batches of 128: the epoch's third step is a batch of 44, whose
    first use rank 1 makes 4 s slower than rank 0's (as compiling and timing kernels for
    the new size would), with --timeout 2."""
    began = tmp_path / "rank 0 began"
    slow_partial_batch = (
        "import os, sys, time\n"
        "from netdsl.runtime.train import Trainer\n"
        "real = Trainer._step\n"
        "def step(self, *args, total=None, **kwargs):\n"
        "    if total == 44 and os.environ['OMPI_COMM_WORLD_RANK'] == '0':\n"
        f"        open({str(began)!r}, 'w').close()\n"
        "    elif total == 44:\n"
        f"        while not os.path.exists({str(began)!r}):\n"
        "            time.sleep(0.01)\n"
        "        time.sleep(4)\n"
        "    return real(self, *args, total=total, **kwargs)\n"
        "Trainer._step = step\n"
        "from netdsl.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    folder = tmp_path / "run"
    result = mpirun(sys.executable, "-c", slow_partial_batch, "run", W1, "--checkpoint",
                    str(folder), "--examples", "300", "--val", "0", "--epochs", "1",
                    "--checkpoint-every", "0", "--quiet", "--timeout", "2", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert os.path.exists(began) and position(folder)["iteration"] == 3
