"""Damaged, foreign and hostile files, and writes that fail: each is refused with one clear
message naming the file (exit 1 on the command line, no traceback), or survived."""
import errno
import io
import json
import os
import threading
import zipfile

import numpy as np
import pytest

from conftest import cli_main
from netdsl import cli
from netdsl.driver import check_text
from netdsl.errors import SpecError
from netdsl.lower import lower
from netdsl.runtime import checkpoint as checkpoints
from netdsl.runtime import npz
from netdsl.runtime.checkpoint import CHECKPOINT, CheckpointError, prepare_folder
from netdsl.runtime.data import DataError, Dataset, load_data
from netdsl.runtime.train import Reporter, Trainer
from netdsl.settings import resolve_settings

TINY = """\
network tiny
input  x : [4]
target y : class(3)
logits = x -> dense(3)
loss cross_entropy(logits, y)
"""


def tiny_trainer(folder=None, reporter=None, **settings):
    settings = resolve_settings({}, {"epochs": 1, "batch": 4, **settings})
    return Trainer(lower(check_text(TINY, "tiny.net")), settings, folder, 0.0,
                   reporter=reporter)


def tiny_data(n=16):
    rng = np.random.default_rng(0)
    return Dataset({"x": rng.standard_normal((n, 4)).astype(np.float32),
                    "y": rng.integers(0, 3, n)}, "test data")


@pytest.fixture
def trained(tmp_path):
    """A folder holding the checkpoint of the tiny network after one step."""
    folder = tmp_path / "run"
    tiny_trainer(str(folder), steps=1).fit(tiny_data(), None)
    assert (folder / CHECKPOINT).exists()
    return folder


def _rewrite(path, change):
    """Save the checkpoint at `path` again after `change(arrays)`."""
    with np.load(path) as saved:
        arrays = dict(saved)
    change(arrays)
    np.savez(path, **arrays)


def _meta(arrays, **fields):
    meta = json.loads(arrays["__meta__"].tobytes())
    meta.update(fields)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)


def _unknown_compression(path):
    """Every member marked as compressed by a method no reader knows (99)."""
    data = bytearray(path.read_bytes())
    for magic, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = data.find(magic)
        while at >= 0:
            data[at + offset:at + offset + 2] = (99).to_bytes(2, "little")
            at = data.find(magic, at + 4)
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:300]), "is truncated or damaged"),
    "unknown compression": (_unknown_compression, "is truncated or damaged"),
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "a .npy": (lambda p: np.save(open(p, "wb"), np.zeros(3)), "a single .npy array"),
    "no params": (lambda p: _rewrite(p, lambda a: a.pop("params")), "lacks the array params"),
    "wrong size": (lambda p: _rewrite(p, lambda a: a.update(params=a["params"][:5])),
                   "params has shape [5] but this network's has [15]"),
    "int32": (lambda p: _rewrite(p, lambda a: a.update(params=a["params"].astype(np.int32))),
              "params holds int32 values but this run needs float32"),
    "pickled": (lambda p: _rewrite(p, lambda a: a.update(params=np.array([None] * 15))),
                "holds Python objects"),
    "no layout": (lambda p: _rewrite(p, lambda a: _meta(a, layout=None)), "lacks 'layout'"),
    "another network": (lambda p: _rewrite(p, lambda a: _meta(a, layout=[["w", [2], 0, 2]])),
                        "made by a different network"),
    "bad position": (lambda p: _rewrite(p, lambda a: _meta(a, position={"epoch": 0, "x": 1})),
                     "does not fit this run"),
}


class TestCheckpointsAreValidated:
    @pytest.mark.parametrize("damage", DAMAGE)
    def test_a_damaged_checkpoint_is_refused_naming_it(self, trained, damage):
        spoil, says = DAMAGE[damage]
        spoil(trained / CHECKPOINT)
        with pytest.raises(CheckpointError) as info:
            tiny_trainer().restore(str(trained))
        assert says in str(info.value) and str(trained) in str(info.value)

    def test_another_schedules_state_is_refused_before_training(self, trained):
        _rewrite(trained / CHECKPOINT, lambda a: _meta(a, schedule={"best": 1.0}))
        trainer = tiny_trainer(steps=2)
        trainer.restore(str(trained))
        with pytest.raises(SpecError, match="checkpoint.npz does not fit this run"):
            trainer.fit(tiny_data(), None)
        assert trainer.position.iteration == 1

    def test_eval_of_a_truncated_checkpoint_is_one_line(self, trained, tmp_path):
        spec = tmp_path / "tiny.net"
        spec.write_text(TINY)
        DAMAGE["truncated"][0](trained / CHECKPOINT)
        result = cli_main("eval", str(spec), "--checkpoint", str(trained))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith(f"error: not a readable checkpoint: "
                                        f"{trained / CHECKPOINT} is truncated or damaged")

    def test_stale_temporary_files_are_removed_at_the_next_run(self, trained):
        stale = trained / f".{CHECKPOINT}.k1ll3d_9.tmp"
        stale.write_bytes(b"half a checkpoint")
        legacy = trained / ".a1b2c3d_.tmp"  # as earlier versions named them
        legacy.write_bytes(b"half a checkpoint")
        other = trained / "notes.tmp"
        other.write_text("not ours")
        prepare_folder(str(trained))
        assert not stale.exists() and not legacy.exists()
        assert other.exists() and (trained / CHECKPOINT).exists()


class RecordingReporter(Reporter):
    def __init__(self):
        self.warnings = []

    def warning(self, text):
        self.warnings.append(text)


def _fill_up_after(count):
    """A checkpoint writer whose disk is full after `count` writes; it lists its calls."""
    real = checkpoints.write_bytes

    def write(path, data):
        write.calls.append(path)
        if len(write.calls) > count:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    write.calls = []
    return write


class TestWrites:
    def test_a_full_disk_keeps_the_last_checkpoint_and_training_goes_on(self, tmp_path,
                                                                          monkeypatch):
        write = _fill_up_after(1)
        monkeypatch.setattr(checkpoints, "write_bytes", write)
        reporter = RecordingReporter()
        trainer = tiny_trainer(str(tmp_path), reporter, steps=3)
        trainer.fit(tiny_data(), None)
        assert trainer.position.iteration == 3 and len(write.calls) == 3  # each step tried
        assert len(reporter.warnings) == 2 and trainer.unsaved == os.strerror(errno.ENOSPC)
        assert all("\n" not in w and "keeps the previous one" in w for w in reporter.warnings)
        arrays, meta = checkpoints.load_checkpoint(str(tmp_path))
        assert meta["position"]["iteration"] == 1  # the first write, whole

    def test_stop_on_a_failed_write_ends_the_run_with_the_last_checkpoint(self, tmp_path,
                                                                        monkeypatch):
        monkeypatch.setattr(checkpoints, "write_bytes", _fill_up_after(1))
        trainer = tiny_trainer(str(tmp_path), RecordingReporter(), steps=3)
        trainer.on_write_error = "stop"
        with pytest.raises(SpecError) as info:
            trainer.fit(tiny_data(), None)
        assert trainer.position.iteration == 2  # the second write failed: no third step
        assert info.value.message == (
            f"could not write the checkpoint at step 2 ({os.strerror(errno.ENOSPC)}); "
            f"training stopped (--on-write-error stop); {tmp_path / CHECKPOINT} holds step 1")
        assert "--resume to continue from step 1" in info.value.hint
        assert trainer.reporter.warnings == []  # the error says it all
        _, meta = checkpoints.load_checkpoint(str(tmp_path))
        assert meta["position"]["iteration"] == 1

    def test_netc_run_stops_on_a_failed_write_and_resume_continues(self, tmp_path,
                                                                   monkeypatch, capsys):
        spec = tmp_path / "tiny.net"
        spec.write_text(TINY)
        folder = tmp_path / "run"
        argv = ["run", str(spec), "--checkpoint", str(folder), "--steps", "4", "--quiet",
                "--checkpoint-every", "0", "--on-write-error", "stop"]
        real = checkpoints.write_bytes
        monkeypatch.setattr(checkpoints, "write_bytes", _fill_up_after(2))
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert f"error: could not write the checkpoint at step 3 ({os.strerror(errno.ENOSPC)})" \
            in err and "Traceback" not in err and "warning" not in err
        assert f"{folder / CHECKPOINT} holds step 2\n" in err
        monkeypatch.setattr(checkpoints, "write_bytes", real)  # space freed
        assert cli.main(argv + ["--resume"]) == 0
        assert f"resuming from {folder / CHECKPOINT} at epoch 1, step 2" in capsys.readouterr().err
        _, meta = checkpoints.load_checkpoint(str(folder))
        assert meta["position"]["iteration"] == 4

    def test_stop_before_any_checkpoint_of_the_run_says_so(self, tmp_path, monkeypatch):
        monkeypatch.setattr(checkpoints, "write_bytes", _fill_up_after(0))
        trainer = tiny_trainer(str(tmp_path), steps=3)
        trainer.on_write_error = "stop"
        with pytest.raises(SpecError, match="no checkpoint of this run was written"):
            trainer.fit(tiny_data(), None)
        assert not (tmp_path / CHECKPOINT).exists()

    def test_metrics_lines_that_cannot_be_written_are_one_warning(self, tmp_path, monkeypatch,
                                                                  capsys):
        import builtins

        from netdsl.app import record

        def full_for_appends(path, mode="r", *args, **kwargs):
            if mode == "a":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return builtins.open(path, mode, *args, **kwargs)

        monkeypatch.setattr(record, "open", full_for_appends, raising=False)
        spec = tmp_path / "tiny.net"
        spec.write_text(TINY)
        folder = tmp_path / "run"
        assert cli.main(["run", str(spec), "--checkpoint", str(folder), "--steps", "25",
                         "--quiet"]) == 0
        warnings = [line for line in capsys.readouterr().err.splitlines()
                    if line.startswith("warning:")]
        assert warnings == [f"warning: could not append to {folder / 'metrics.jsonl'} "
                            f"({os.strerror(errno.ENOSPC)}); training goes on, its lines are "
                            "missing until one can be written"]
        _, meta = checkpoints.load_checkpoint(str(folder))
        assert meta["position"]["iteration"] == 25

    def test_an_unwritable_checkpoint_folder_is_refused_before_training(self, tmp_path):
        spec = tmp_path / "tiny.net"
        spec.write_text(TINY)
        (tmp_path / "file").write_text("")
        folder = tmp_path / "file" / "run"
        result = cli_main("run", str(spec), "--checkpoint", str(folder), "--steps", "1")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith(f"error: cannot write checkpoints in {folder}")
        assert "training:" not in result.stdout + result.stderr

    @pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
    def test_a_read_only_folder_is_refused(self, tmp_path):
        tmp_path.chmod(0o555)
        try:
            with pytest.raises(CheckpointError, match="cannot write checkpoints"):
                prepare_folder(str(tmp_path))
        finally:
            tmp_path.chmod(0o755)

    def test_predictions_to_a_missing_folder_are_one_line(self, tmp_path):
        spec = tmp_path / "tiny.net"
        spec.write_text(TINY)
        result = cli_main("predict", str(spec), "-o", "/nonexistent/p.npz")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: cannot write predictions to /nonexistent/p.npz: "
                                        "the folder /nonexistent does not exist\n")


class TestDataFiles:
    def graph(self):
        return check_text(TINY, "tiny.net").graph

    def test_a_member_that_is_not_an_array(self, tmp_path):
        path = tmp_path / "d.npz"
        with zipfile.ZipFile(path, "w") as archive:
            buffer = io.BytesIO()
            np.save(buffer, np.zeros((2, 4)))
            archive.writestr("x.npy", buffer.getvalue())
            archive.writestr("y.npy", b"not an array at all")
        with pytest.raises(DataError) as info:
            load_data(self.graph(), str(path))
        assert info.value.message == f"{path}: cannot read array y: it is not a NumPy array"

    def test_declared_sizes_are_checked_against_memory_before_reading(self, tmp_path,
                                                                        monkeypatch):
        path = tmp_path / "bomb.npz"
        np.savez_compressed(path, x=np.zeros((1 << 18, 4)), y=np.zeros(1 << 18, np.int64))
        assert path.stat().st_size < 100_000  # 10 MiB of zeros, compressed
        monkeypatch.setattr(npz, "available_bytes", lambda: 1 << 20)
        monkeypatch.setattr(npz.Npz, "read", lambda *a: pytest.fail("read before the check"))
        with pytest.raises(DataError) as info:
            load_data(self.graph(), str(path))
        assert info.value.message == (f"{path}: its arrays x, y take 10.0 MiB uncompressed, "
                                      "more than the 1.0 MiB of memory available")

    def test_only_regular_files_are_read(self, tmp_path):
        fifo = tmp_path / "d.csv"
        os.mkfifo(fifo)
        # a reader that opened the pipe would wait for a writer: one comes after 2 s
        writer = threading.Timer(2.0, lambda: open(fifo, "w").close())
        writer.start()
        try:
            with pytest.raises(DataError) as info:
                load_data(self.graph(), str(fifo))
        finally:
            writer.cancel()
        assert info.value.message == f"{fifo} is a named pipe (FIFO), not a regular file"
        zero = tmp_path / "zero.npz"
        zero.symlink_to("/dev/zero")
        with pytest.raises(DataError, match="is a device, not a regular file"):
            load_data(self.graph(), str(zero))
