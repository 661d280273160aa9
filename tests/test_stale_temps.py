"""Temporary files of killed writes are removed by the next write into their folder, for
every file netdsl writes (run records, metrics, drawings, exports, fmt, predictions), and
never a write's that is still going on."""
import os
import subprocess
import sys
import time

import pytest

from netdsl import atomic, cli
from netdsl.atomic import STALE_AFTER, remove_stale, write_text

TINY = """\
network tiny
input  x : [4]
target y : class(3)
logits = x -> dense(3)
loss cross_entropy(logits, y)
train sgd(lr=0.1), batch=4, epochs=1
"""


@pytest.fixture(scope="module")
def dead_pid():
    """The pid of a process of this machine that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def temp_name(target: str, pid: int, host: str | None = None) -> str:
    """A temporary file's name as a write of `target` by process `pid` gives it."""
    return f".{target}.netdsl-{host or atomic._host()}-{pid}-k1ll3d_9.tmp"


def leave_temps(folder, dead_pid):
    """Temporary files of every kind in `folder`: name -> whether a write removes it."""
    old = time.time() - STALE_AFTER - 60
    made = {
        temp_name("spec.net", dead_pid): True,                     # its writer was killed
        temp_name("model.onnx", os.getpid()): False,               # a write going on
        temp_name("run.json", os.getpid()) + "-old": None,         # not the pattern: kept
        temp_name("p.npz", dead_pid, host="abcdef"): False,        # another machine's, fresh
        temp_name("q.npz", dead_pid, host="abcdef") + "~": None,   # not the pattern either
        temp_name("old.npz", os.getpid()): True,                   # untouched for too long
        temp_name("m_torch", dead_pid): True,                      # a folder write's
        ".notes.tmp": None,
    }
    for name in made:
        path = folder / name
        if name.startswith(".m_torch"):
            path.mkdir()
            (path / "model.py").write_text("half")
        else:
            path.write_text("half a file")
        if name.startswith(".old.npz"):
            os.utime(path, (old, old))
    return {name: gone is True for name, gone in made.items()}


def assert_cleaned(folder, expected):
    for name, gone in expected.items():
        assert (folder / name).exists() != gone, (name, "left" if not gone else "kept")


def test_a_write_removes_the_stale_temporary_files_of_its_folder_alone(tmp_path, dead_pid):
    expected = leave_temps(tmp_path, dead_pid)
    write_text(str(tmp_path / "notes.txt"), "hello")
    assert_cleaned(tmp_path, expected)
    assert (tmp_path / "notes.txt").read_text() == "hello"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".notes.txt.")]


def test_a_live_writer_keeps_its_file_until_it_is_untouched_for_long(tmp_path):
    live = tmp_path / temp_name("a.npz", os.getpid())
    live.write_text("being written")
    assert remove_stale(str(tmp_path / "b.npz")) == []
    later = time.time() + STALE_AFTER + 1
    assert remove_stale(str(tmp_path / "b.npz"), now=later) == [str(live)]


def test_a_killed_write_leaves_a_file_of_the_pattern(tmp_path):
    """A real writer killed in the middle of its write: its temporary file is named as
    remove_stale expects, and the next write removes it."""
    code = ("import os, netdsl.atomic as a\n"
            "def stop(*_): os._exit(9)\n"
            "os.fsync = stop  # killed after writing, before the rename\n"
            f"a.write_bytes({str(tmp_path / 'x.bin')!r}, b'1' * 1000)\n")
    subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), check=False, timeout=60)
    left = [name for name in os.listdir(tmp_path)]
    assert len(left) == 1 and atomic._TEMP.fullmatch(left[0]), left
    write_text(str(tmp_path / "y.txt"), "")
    assert sorted(os.listdir(tmp_path)) == ["y.txt"]


def test_a_folder_set_aside_by_a_killed_write_is_put_back(tmp_path, dead_pid):
    """Killed between write_folder's two renames: the old folder is set aside, the new one
    complete but not renamed in. The next write there leaves the old folder as it was."""
    atomic.write_folder(str(tmp_path / "m_torch"), {"model.py": b"old"})
    stem = f".m_torch.netdsl-{atomic._host()}-{dead_pid}-"
    (tmp_path / "m_torch").rename(tmp_path / f"{stem}a1b2c3d4{atomic.ASIDE}")
    (tmp_path / f"{stem}e5f6g7h8.tmp").mkdir()
    (tmp_path / f"{stem}e5f6g7h8.tmp" / "model.py").write_text("new")
    write_text(str(tmp_path / "notes.txt"), "")
    assert sorted(os.listdir(tmp_path)) == ["m_torch", "notes.txt"]
    assert (tmp_path / "m_torch" / "model.py").read_text() == "old"
    atomic.write_folder(str(tmp_path / "m_torch"), {"model.py": b"newer"})
    assert sorted(os.listdir(tmp_path)) == ["m_torch", "notes.txt"]
    assert (tmp_path / "m_torch" / "model.py").read_text() == "newer"


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "tiny.net"
    path.write_text(TINY)
    return path


# the commands that write files, and the folder each writes into
WRITERS = {
    "fmt -w": lambda spec, out: (["fmt", "-w", str(spec)], spec.parent),
    "draw": lambda spec, out: (["draw", str(spec), "-o", str(out / "t.dot")], out),
    "run (record, metrics, checkpoint)": lambda spec, out: (
        ["run", str(spec), "--steps", "1", "--quiet", "--checkpoint", str(out)], out),
    "predict -o": lambda spec, out: (["predict", str(spec), "--checkpoint", str(spec.parent
                                                                                / "run"),
                                      "-o", str(out / "p.npz"), "--quiet"], out),
    "export": lambda spec, out: (["export", str(spec), "--to", "safetensors", "--checkpoint",
                                  str(spec.parent / "run"), "-o", str(out / "t.safetensors")],
                                 out),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_every_command_that_writes_removes_stale_temporary_files(spec, tmp_path, dead_pid,
                                                                 writer, capsys):
    spec.write_text(TINY.replace("->", " -> ").replace("  ", " "))  # for fmt -w to rewrite
    trained = tmp_path / "run"
    assert cli.main(["run", str(spec), "--steps", "1", "--quiet", "--checkpoint",
                     str(trained)]) == 0
    out = tmp_path / "out"
    out.mkdir()
    argv, folder = WRITERS[writer](spec, out)
    expected = leave_temps(folder, dead_pid)
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert_cleaned(folder, expected)
