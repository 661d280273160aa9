"""Choices made by a one-time timing, kept for the process and in a JSON file beside the
compiled kernels (runtime.native.toolchain's cache_dir), and the timing that makes them.

A `ChoiceFile` is one such file of key -> choice (runtime.native.conv's `choices.json`,
runtime.native.dense_choice's `dense_choices.json`). It is read once per cache folder
into a memo: a file that is missing, damaged or unreadable counts as empty, without a
word (an unusable cache only costs the timing again). A new choice goes into the memo,
then into the file: under a lock beside it (where the folder allows one), what another
process wrote since is read and merged in, and the whole written atomically (a temporary
file renamed over it). A folder that cannot be written keeps the choices in memory.

`fastest` times candidates against each other, as all of them do.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

from netdsl import atomic
from netdsl.runtime.native.toolchain import cache_dir

try:
    import fcntl
except ImportError:   # not a POSIX system: writes merge without the lock
    fcntl = None

__all__ = ["ChoiceFile", "fastest"]

# what toolchain.cache_dir reads: the file's path is made again only when one changes
_SETTINGS = ("NETDSL_CACHE", "XDG_CACHE_HOME", "HOME")


class ChoiceFile:
    """The choices kept in `name` in the cache folder (or in `folder`, where given):
    key -> a JSON value for which `valid` holds (others on disk are left out)."""

    def __init__(self, name: str, valid: Callable[[object], bool], folder: Path | None = None):
        self.name, self.valid, self.folder = name, valid, folder
        self._memo: dict[str, object] = {}
        self._loaded_from: Path | None = None
        self._paths: dict[tuple, Path] = {}

    def path(self, memo: bool = True) -> Path:
        """The file's path; with `memo`, made once per value of the cache settings (making
        it took 60-180 us, at every convolution call)."""
        if self.folder is not None:
            return self.folder / self.name
        if not memo:
            return cache_dir() / self.name
        settings = tuple(os.environ.get(name) for name in _SETTINGS)
        found = self._paths.get(settings)
        if found is None:
            found = self._paths[settings] = cache_dir() / self.name
        return found

    def choices(self, memo: bool = True) -> dict:
        """key -> choice: this process's and those on disk (read once per path)."""
        path = self.path(memo)
        if path is not self._loaded_from and path != self._loaded_from:
            self._memo.clear()
            self._memo.update(self._read(path))
            self._loaded_from = path
        return self._memo

    def get(self, key: str, memo: bool = True):
        return self.choices(memo).get(key)

    def remember(self, key: str, choice) -> None:
        """Keep `choice` for `key`, in memory and on disk, with what others wrote since."""
        known = self.choices()
        known[key] = choice
        path = self.path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(path):
                for other, value in self._read(path).items():
                    known.setdefault(other, value)
                atomic.write_text(str(path), json.dumps(known, indent=1, sort_keys=True))
        except OSError:
            pass   # an unwritable cache only costs the timing again next run

    def forget(self) -> None:
        """Nothing known in this process, as in a new one: the file is read again."""
        self._memo.clear()
        self._loaded_from = None

    def _read(self, path: Path) -> dict:
        """The valid choices in the file at `path`; none where it is missing or damaged."""
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(stored, dict):
            return {}
        return {key: value for key, value in stored.items() if self.valid(value)}


@contextlib.contextmanager
def _locked(path: Path):
    """Hold `.NAME.lock` beside `path` while a write reads, merges and renames; without it
    where the folder has none and cannot make one (then the write fails there too)."""
    try:
        handle = open(path.parent / f".{path.name}.lock", "a") if fcntl else None
    except OSError:
        handle = None
    if handle is None:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fastest(candidates: dict[str, Callable], rounds: int,
            clock: Callable[[], float] = time.process_time,
            rotate: bool = False) -> tuple[str, object]:
    """(name, result) of the candidate whose shortest run was the shortest: `rounds`
    rounds, each running every candidate once (in turn from a later one each round,
    with `rotate`), timed by `clock`. Only the fastest run's result is kept: beside the
    run under way, one result's memory. (Where the runs share an output array, it holds
    the last run's, not the fastest's.)"""
    names = list(candidates)
    fastest_name, kept, shortest = None, None, math.inf
    for round_ in range(rounds):
        start = round_ % len(names) if rotate else 0
        for name in names[start:] + names[:start]:
            began = clock()
            out = candidates[name]()
            took = clock() - began
            if took < shortest:
                fastest_name, kept, shortest = name, out, took
            del out
    return fastest_name, kept
