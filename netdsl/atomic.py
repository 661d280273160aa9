"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The temporary file is `.NAME.XXXXXXXX.tmp` beside NAME; a write killed before its rename
leaves one behind, which `remove_stale` deletes at the next run.
"""
from __future__ import annotations

import glob
import os
import tempfile

__all__ = ["write_text", "write_bytes", "remove_stale", "check_writable"]


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
