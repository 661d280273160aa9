"""Reading .npz archives that may be damaged or hostile: checkpoints and users' data files.

A crash or a partial copy leaves empty and truncated files; a mistake leaves a .npy or
some other file under the name; a hostile file holds pickled objects (never unpickled
here) or members that declare gigabytes. Each of these is an `ArchiveError` whose message
names the file and what is wrong, raised before anything large is allocated: the file
must be a regular file (a FIFO would block, /dev/zero never ends), and the members' declared
uncompressed sizes must fit in the memory available.
"""
from __future__ import annotations

import os
import stat
import zipfile
import zlib

import numpy as np

from netdsl.runtime.memory import available_bytes

__all__ = ["ArchiveError", "Npz", "check_regular_file"]

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry, or an empty zip
NPY_MAGIC = b"\x93NUMPY"


class ArchiveError(Exception):
    """An .npz archive that cannot be read; the message names the file."""


def check_regular_file(path: str) -> None:
    """Raise ArchiveError unless `path` is a regular file (or a link to one)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a named pipe (FIFO)"
                if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or
                stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        raise ArchiveError(f"{path} is {kind}, not a regular file")


class Npz:
    """The members of an .npz archive, read one by one as numeric arrays.

    Raises ArchiveError when the file is not a readable archive.
    """

    def __init__(self, path: str):
        check_regular_file(path)
        self.path = path
        try:
            with open(path, "rb") as handle:
                head = handle.read(6)
        except OSError as exc:
            raise ArchiveError(f"{path}: cannot read it ({exc.strerror})") from None
        if not head:
            raise ArchiveError(f"{path} is empty")
        if head == NPY_MAGIC:
            raise ArchiveError(f"{path} is a single .npy array, not an .npz archive")
        if head[:4] not in ZIP_MAGIC:
            raise ArchiveError(f"{path} is not an .npz archive")
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ArchiveError(f"{path} is truncated or damaged ({exc})") from None
        # np.savez names members NAME.npy
        self.members = {(i.filename[:-4] if i.filename.endswith(".npy") else i.filename): i
                        for i in self.zip.infolist()}

    @property
    def names(self) -> list[str]:
        return list(self.members)

    def __contains__(self, name: str) -> bool:
        return name in self.members

    def __enter__(self) -> Npz:
        return self

    def __exit__(self, *exc) -> None:
        self.zip.close()

    def check_memory(self, names) -> None:
        """Raise ArchiveError when the members `names` declare more bytes, uncompressed,
        than the memory available (a zip bomb, or a file too big for this machine)."""
        declared = sum(self.members[n].file_size for n in names)
        room = available_bytes()
        if room is not None and declared > room:
            raise ArchiveError(f"{self.path}: its arrays {', '.join(names)} take "
                               f"{_size(declared)} uncompressed, more than the "
                               f"{_size(room)} of memory available")

    def read(self, name: str) -> np.ndarray:
        """Member `name` as an array of numbers (never a pickled object)."""
        place = f"{self.path}: cannot read array {name}"
        try:
            with self.zip.open(self.members[name]) as member:
                if member.read(len(NPY_MAGIC)) != NPY_MAGIC:
                    raise ArchiveError(f"{place}: it is not a NumPy array")
            with self.zip.open(self.members[name]) as member:
                array = np.lib.format.read_array(member, allow_pickle=False)
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise ArchiveError(f"{place}: it holds Python objects, not numbers") from None
            raise ArchiveError(f"{place}: it is damaged ({exc})") from None
        except (EOFError, OSError, zipfile.BadZipFile, zlib.error,
                NotImplementedError, RuntimeError) as exc:  # a damaged method or flag bits
            raise ArchiveError(f"{place}: it is truncated or damaged ({exc})") from None
        except MemoryError:  # a header that declares more than its data holds
            raise ArchiveError(f"{place}: it declares a shape too large to allocate") from None
        if array.dtype.kind not in "biuf":
            raise ArchiveError(f"{self.path}: {name} holds {array.dtype} values, not numbers")
        return array


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
