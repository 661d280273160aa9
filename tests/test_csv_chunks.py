""".csv data read in linear time and in chunks: a wide header costs what its length
does, and a read holds little more than the arrays it returns."""
import os
import time
import tracemalloc

import numpy as np
import pytest

from netdsl.runtime.data import DataError
from netdsl.runtime.data import files
from netdsl.runtime.data.dataset import Field
from netdsl.runtime.data.files import load_file
from netdsl.types import TensorType


def fields(width: int) -> list[Field]:
    return [Field("x", "input", TensorType((width,))),
            Field("y", "target", TensorType((), classes=10))]


def write_table(path, x: np.ndarray, y: np.ndarray) -> None:
    with open(path, "w") as handle:
        handle.write(",".join([f"x{i}" for i in range(x.shape[1])] + ["y"]) + "\n")
        np.savetxt(handle, np.column_stack([x, y]), delimiter=",", fmt="%.6g")


def test_a_header_of_40000_columns_reads_in_linear_time(tmp_path):
    """Checking the header for repeated names went through it once per name: 15 s for
    40,000 columns (over a minute on a busy machine). Now well under a second."""
    width = 40_000
    path = tmp_path / "wide.csv"
    write_table(path, np.ones((2, width)), np.array([1, 2]))
    started = time.perf_counter()
    data = load_file(str(path), fields(width))
    assert time.perf_counter() - started < 5
    assert data.arrays["x"].shape == (2, width) and list(data.arrays["y"]) == [1, 2]


def test_the_memory_peak_is_within_twice_the_arrays(tmp_path):
    """Measured with tracemalloc (NumPy reports its arrays to it, Python its strings):
    the whole file as strings used to be held at once, twenty times the arrays."""
    rng = np.random.default_rng(0)
    x, y = rng.random((16_000, 64)).astype(np.float32), rng.integers(0, 10, 16_000)
    path = tmp_path / "big.csv"
    write_table(path, x, y)
    tracemalloc.start()
    try:
        data = load_file(str(path), fields(64))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = sum(a.nbytes for a in data.arrays.values())
    assert peak < 2 * size, peak / size
    assert np.allclose(data.arrays["x"], x, rtol=1e-5) and np.array_equal(data.arrays["y"], y)
    assert data.arrays["x"].dtype == np.float32 and data.arrays["y"].dtype == np.int64


@pytest.mark.parametrize("chunk", [1, 3, 1 << 15])
def test_chunks_keep_lines_and_values(tmp_path, monkeypatch, chunk):
    """Blank lines and quoted line breaks between chunks: every value in place, and a bad
    value named by its line, whatever the chunk size."""
    monkeypatch.setattr(files, "CSV_CHUNK_CELLS", chunk)
    path = tmp_path / "d.csv"
    path.write_text('x0,x1,y\n1,2,3\n\n4,"5\n",6\n7,8,9\n\n\n1e39,0,1\n')
    with pytest.raises(DataError) as info:
        load_file(str(path), [Field("x", "input", TensorType((2,))),
                              Field("y", "target", TensorType((), classes=10))])
    assert info.value.message == f"{path}, line 9, column 1 (x0): 1e+39 is too large for float32"
    path.write_text('x0,x1,y\n1,2,3\n\n4,"5\n",6\n7,8,9\n\n\n0,x,1\n')
    with pytest.raises(DataError, match="line 9, column 2 \\(x1\\): 'x' is not a number"):
        load_file(str(path), fields(2))
    path.write_text('x0,x1,y\n1,2,3\n\n4,"5\n",6\n7,8,9\n\n\n0,0,12\n')
    with pytest.raises(DataError, match="line 9, column 3 \\(y\\): 12 is outside 0 to 9"):
        load_file(str(path), fields(2))
    path.write_text('x0,x1,y\n1,2,3\n\n4,"5\n",6\n7,8,9\n\n\n0,0,1\n')
    data = load_file(str(path), fields(2))
    assert data.arrays["x"].tolist() == [[1, 2], [4, 5], [7, 8], [0, 0]]
    assert data.arrays["y"].tolist() == [3, 6, 9, 1]


def test_a_fifo_and_dev_zero_named_as_csv_are_refused(tmp_path):
    fifo = tmp_path / "d.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="named pipe"):
        load_file(str(fifo), fields(2))
    zero = tmp_path / "zero.csv"
    zero.symlink_to("/dev/zero")
    with pytest.raises(DataError, match="is a device, not a regular file"):
        load_file(str(zero), fields(2))
