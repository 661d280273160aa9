"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The temporary file is `.NAME.netdsl-HOST-PID-XXXXXXXX.tmp` beside NAME (HOST a short hash
of the machine's name, PID the writer's process). A write killed before its rename leaves
one behind; every write removes those of its folder that are stale (`remove_stale`): whose
writer, on this machine, is gone, or that nothing has touched for STALE_AFTER seconds. The
temporary file of a write still going on, in this process or another, is left alone. A
folder of files (`write_folder`) is made whole as such a temporary folder, then renamed
into place.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
import time

__all__ = ["write_text", "write_bytes", "write_folder", "remove_stale", "check_writable",
           "STALE_AFTER"]

# a temporary file untouched this long is a killed write's whatever its writer's pid
# says (a pid is reused; another machine's pids cannot be asked): a live write touches
# its file with every block it writes
STALE_AFTER = 300.0
_TEMP = re.compile(r"\.(?P<name>.+)\.netdsl-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[a-z0-9_]{8}"
                   r"(?P<aside>\.old)?\.tmp")
# the end of the name of a folder `write_folder` set aside for the moment it swaps in the
# new one: a killed write may leave it as the only copy, which `remove_stale` puts back
ASIDE = ".old.tmp"
# earlier versions' names, without a writer: `.NAME.XXXXXXXX.tmp`, matched per target
_LEGACY = "[a-z0-9_]" * 8


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename
    (after removing the stale temporary files of killed writes there)."""
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private: keep the mode of the file replaced, else give
        # the one a plain open() would under the user's umask
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path)
                 else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_folder(path: str, files: dict[str, bytes], replaces=frozenset()) -> None:
    """Make the folder `path` holding exactly `files` (name -> bytes), as a whole.

    The folder is written as a temporary one beside `path` and renamed into place: a
    failed or killed write leaves `path` as it was. An existing folder at `path` is
    replaced only once the new one is complete, and only when it holds nothing but
    the names in `files` and `replaces` (what an earlier write made): the folder a user
    keeps other things in is never deleted. The folder and files get the modes a plain
    mkdir and open() give under the user's umask.

    Raises
    ------
    FileExistsError
        When `path` is a file, or a folder holding other things (its first few named).
    """
    remove_stale(path)  # first: it may put back a folder a killed write had set aside
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{path} is a file")
    others = _others(path, set(files) | set(replaces))
    if others:
        raise FileExistsError(f"{path} holds {', '.join(others[:3])}"
                              + (f" and {len(others) - 3} more" if len(others) > 3 else ""))
    folder = os.path.dirname(os.path.abspath(path))
    tmp = tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=folder)
    try:
        for name, data in files.items():
            with open(os.path.join(tmp, name), "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private
        if os.path.isdir(path):
            # out of the way, then the new one in: rename cannot swap two folders, so
            # `path` is missing for the moment between the two renames
            old = tempfile.mkdtemp(prefix=_prefix(path), suffix=ASIDE, dir=folder)
            os.rename(path, old)  # onto the empty folder made for it
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)  # the old one back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _others(path: str, ours: set[str]) -> list[str]:
    """What the folder `path` holds besides the names in `ours`."""
    if not os.path.isdir(path):
        return []
    return sorted(name for name in os.listdir(path) if name not in ours)


def _umask() -> int:
    mask = os.umask(0)  # reading it means setting it: set it back at once
    os.umask(mask)
    return mask


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _prefix(path: str) -> str:
    """The start of a temporary name for `path`: its name, this machine and this process."""
    return f".{os.path.basename(path)}.netdsl-{_host()}-{os.getpid()}-"


def remove_stale(path: str, now: float | None = None) -> list[str]:
    """Delete the temporary files that killed writes left in `path`'s folder (of any
    target: the file of a killed `netc draw` goes at the next write there); return their
    paths. A temporary file is stale when its writer was a process of this machine that
    has ended, or when nothing touched it for STALE_AFTER seconds. Earlier versions'
    temporary files of `path` itself (named without their writer) are stale too. A
    folder `write_folder` set aside, whose target a kill left missing, is put back."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        names = os.listdir(folder)
    except OSError:
        return []  # no folder yet: nothing left in it; an unreadable one: the write says
    now = time.time() if now is None else now
    legacy = re.compile(re.escape(f".{os.path.basename(path)}.") + _LEGACY + r"\.tmp")
    removed = []
    for name in names:
        found = _TEMP.fullmatch(name)
        stale = os.path.join(folder, name)
        if found and not _abandoned(stale, found, now):
            continue
        if not found and not legacy.fullmatch(name):
            continue
        target = os.path.join(folder, found["name"]) if found else None
        if found and found["aside"] and not os.path.lexists(target):
            try:  # killed between its two renames: the old folder back, as if never begun
                os.rename(stale, target)
                continue
            except OSError:
                pass  # taken since: it goes as a stale one
        try:
            if os.path.isdir(stale) and not os.path.islink(stale):
                shutil.rmtree(stale)  # a folder write's (write_folder)
            else:
                os.unlink(stale)
            removed.append(stale)
        except OSError:
            pass  # gone already, or not ours to delete: it harms nothing
    return removed


def _abandoned(temp: str, found: re.Match, now: float) -> bool:
    """Whether the temporary file `temp` (its name matched) is no write's any more."""
    try:
        touched = os.lstat(temp).st_mtime
        if os.path.isdir(temp) and not os.path.islink(temp):  # its files, as they are written
            touched = max([touched] + [os.lstat(os.path.join(temp, f)).st_mtime
                                       for f in os.listdir(temp)])
    except OSError:
        return False  # gone already: its writer renamed it
    if now - touched > STALE_AFTER:
        return True
    return found["host"] == _host() and not _running(int(found["pid"]))


def _running(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (one of another user's counts)."""
    try:
        os.kill(pid, 0)  # signal 0: delivers nothing, only checks
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        return True  # another user's (PermissionError), or cannot tell: keep its file
    return True


def check_writable(path: str) -> str | None:
    """Why `path` cannot be written atomically (its folder is created if missing), or None.

    It writes a temporary file beside it, as a write would: permission bits alone do not
    tell (root ignores them; a read-only mount does not show in them)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return None
