"""Damaged, foreign and hostile files, and writes that fail: each is refused with one clear
message naming the file (exit 1 on the command line, no traceback), or survived."""
import io
import os
import threading
import zipfile

import numpy as np
import pytest

from netdsl.driver import check_text
from netdsl.runtime import npz
from netdsl.runtime.data import DataError, load_data

TINY = """\
network tiny
input  x : [4]
target y : class(3)
logits = x -> dense(3)
loss cross_entropy(logits, y)
"""



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
