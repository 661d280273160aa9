"""The files of choices made by a timing, beside the native target's compiled kernels
(runtime/native/choice_file.py), and the timing they share:

- a damaged, unreadable or foreign file counts as empty, without a traceback, and is
  rewritten at the next choice; entries that are not choices are left out;
- two writers (two processes' files, or real processes at once) keep each other's
  choices: a write merges what the file holds;
- a cache folder that cannot be written keeps the choices in memory;
- the file's path follows the cache settings; the files users have (choices.json,
  dense_choices.json) read as before;
- `fastest` keeps the fastest candidate and its result.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from netdsl.runtime.native import choice_file
from netdsl.runtime.native.choice_file import ChoiceFile, fastest

VALID = ("numpy", "own")


def _file(folder, name="choices.json") -> ChoiceFile:
    return ChoiceFile(name, lambda value: value in VALID, folder)


@pytest.mark.parametrize("data", [b'{"a": "own", "b', b"", b"[1, 2]", b"\xff\xfe{", b"null"])
def test_a_damaged_file_counts_as_empty_and_is_rewritten(tmp_path, data, capsys):
    (tmp_path / "choices.json").write_bytes(data)
    choices = _file(tmp_path)
    assert choices.choices() == {}
    choices.remember("k", "own")
    assert json.loads((tmp_path / "choices.json").read_text()) == {"k": "own"}
    assert capsys.readouterr() == ("", "")


def test_a_file_that_cannot_be_read_counts_as_empty(tmp_path):
    (tmp_path / "choices.json").mkdir()   # a folder where the file should be
    choices = _file(tmp_path)
    assert choices.choices() == {}
    choices.remember("k", "own")          # cannot replace it: kept in memory
    assert choices.get("k") == "own"


def test_entries_that_are_not_choices_are_left_out(tmp_path):
    (tmp_path / "choices.json").write_text(json.dumps({"a": "own", "b": "blas", "c": 3}))
    assert _file(tmp_path).choices() == {"a": "own"}


def test_two_writers_keep_each_others_choices(tmp_path):
    """Two processes' files, each read before the other wrote: each write merges."""
    first, second = _file(tmp_path), _file(tmp_path)
    assert first.choices() == second.choices() == {}
    first.remember("a", "own")
    second.remember("b", "numpy")
    first.remember("c", "numpy")
    stored = json.loads((tmp_path / "choices.json").read_text())
    assert stored == {"a": "own", "b": "numpy", "c": "numpy"}
    assert first.choices() == stored   # what the other wrote is known here since
    fresh = _file(tmp_path)
    assert fresh.choices() == stored


_WRITER = """
import sys
from pathlib import Path
from netdsl.runtime.native.choice_file import ChoiceFile
choices = ChoiceFile("choices.json", lambda v: v == "own", Path(sys.argv[1]))
choices.choices()
for i in range(40):
    choices.remember(f"{sys.argv[2]}{i}", "own")
"""


def test_writers_at_once_lose_nothing(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), name],
                                env=env) for name in ("a", "b", "c")]
    assert all(w.wait(timeout=120) == 0 for w in writers)
    stored = json.loads((tmp_path / "choices.json").read_text())
    assert len(stored) == 120
    leftovers = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert leftovers == []


def test_a_read_only_cache_folder_keeps_the_choices_in_memory(tmp_path, monkeypatch):
    (tmp_path / "choices.json").write_text(json.dumps({"old": "numpy"}))
    os.chmod(tmp_path, 0o555)
    try:
        if os.geteuid() == 0:   # root writes anyway: refuse as a read-only mount does
            def refuse(path, text):
                raise OSError(30, "Read-only file system", path)
            monkeypatch.setattr(choice_file.atomic, "write_text", refuse)
        choices = _file(tmp_path)
        choices.remember("new", "own")
        assert choices.choices() == {"old": "numpy", "new": "own"}
        assert json.loads((tmp_path / "choices.json").read_text()) == {"old": "numpy"}
    finally:
        os.chmod(tmp_path, 0o755)


def test_a_cache_folder_that_cannot_be_made_keeps_the_choices_in_memory(tmp_path):
    (tmp_path / "a file").write_text("")
    choices = _file(tmp_path / "a file" / "native")
    choices.remember("k", "own")
    assert choices.get("k") == "own"


def test_the_path_follows_the_cache_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("NETDSL_CACHE", str(tmp_path / "one"))
    choices = ChoiceFile("dense_choices.json", lambda value: value in VALID)
    for memo in (True, False):
        assert choices.path(memo) == tmp_path / "one" / "native" / "dense_choices.json"
    choices.remember("k", "own")
    assert (tmp_path / "one" / "native" / "dense_choices.json").exists()
    monkeypatch.setenv("NETDSL_CACHE", str(tmp_path / "two"))
    assert choices.path() == tmp_path / "two" / "native" / "dense_choices.json"
    assert choices.choices() == {}   # another folder's file
    choices.forget()
    monkeypatch.setenv("NETDSL_CACHE", str(tmp_path / "one"))
    assert choices.choices() == {"k": "own"}


def test_the_files_users_have_read_as_before(tmp_path, monkeypatch):
    """choices.json and dense_choices.json as earlier versions wrote them."""
    from netdsl.runtime.native import conv, dense_choice

    conv_key = "float32 x(2, 3, 9, 9) w(4, 3, 3, 3) s(1, 1) ... c0123456789"
    (tmp_path / conv.CHOICES_FILE).write_text(json.dumps(
        {conv_key: {"forward": "winograd", "backward": "gemm"},
         "gone": {"forward": "fft", "backward": "gemm"}}, indent=1, sort_keys=True))
    (tmp_path / dense_choice.CHOICES_FILE).write_text(json.dumps(
        {"float32 37x65x70 nt t2 c0123456789": "own"}, indent=1, sort_keys=True))
    monkeypatch.setattr(conv, "CHOICES", ChoiceFile(conv.CHOICES_FILE, conv.CHOICES.valid,
                                                    tmp_path))
    monkeypatch.setattr(dense_choice, "CHOICES",
                        ChoiceFile(dense_choice.CHOICES_FILE, dense_choice.CHOICES.valid,
                                   tmp_path))
    assert conv.choices() == {conv_key: {"forward": "winograd", "backward": "gemm"}}
    assert dense_choice.choices() == {"float32 37x65x70 nt t2 c0123456789": "own"}
    assert dense_choice.choose("float32 37x65x70 nt t2 c0123456789",
                               {"numpy": pytest.fail, "own": pytest.fail}) == "own"


def test_fastest_keeps_the_fastest_candidate_and_its_result():
    runs = []

    def slow():
        runs.append("slow")
        time.sleep(0.005)
        return "slow's"

    def fast():
        runs.append("fast")
        return "fast's"

    assert fastest({"slow": slow, "fast": fast}, 3, time.perf_counter) == ("fast", "fast's")
    assert runs == ["slow", "fast"] * 3
    runs.clear()
    assert fastest({"slow": slow, "fast": fast}, 3, time.perf_counter, rotate=True)[0] == "fast"
    assert runs == ["slow", "fast", "fast", "slow", "slow", "fast"]
