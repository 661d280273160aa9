"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The temporary file is `.NAME.XXXXXXXX.tmp` beside NAME; a write killed before its rename
leaves one behind, which `remove_stale` deletes at the next run. A folder of files
(`write_folder`) is made whole as such a temporary folder, then renamed into place.
"""
from __future__ import annotations

import glob
import os
import shutil
import tempfile

__all__ = ["write_text", "write_bytes", "write_folder", "remove_stale", "check_writable"]


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
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
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{path} is a file")
    others = _others(path, set(files) | set(replaces))
    if others:
        raise FileExistsError(f"{path} holds {', '.join(others[:3])}"
                              + (f" and {len(others) - 3} more" if len(others) > 3 else ""))
    remove_stale(path)
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
            old = tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=folder)
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
    return f".{os.path.basename(path)}."


def remove_stale(path: str) -> list[str]:
    """Delete the temporary files that killed writes of `path` left; return their paths.
    Only one process writes a given path at a time (a run owns its checkpoint folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    pattern = os.path.join(glob.escape(folder), glob.escape(_prefix(path)) + "*.tmp")
    removed = []
    for stale in glob.glob(pattern):
        try:
            if os.path.isdir(stale) and not os.path.islink(stale):
                shutil.rmtree(stale)  # a folder write's (write_folder)
            else:
                os.unlink(stale)
            removed.append(stale)
        except OSError:
            pass  # gone already, or not ours to delete: it harms nothing
    return removed


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
