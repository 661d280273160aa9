"""A user's data file: an .npz archive or a .csv table, read for the inputs and targets a
spec declares.

Every problem (a missing array or column, a header that names nothing the spec reads,
a cell that is not a number) becomes a `DataError` that names the file, and the line and
column or the array, and says how to fix it. The arrays read are then checked against
the declared types (see `checks`).
"""
from __future__ import annotations

import bisect
import csv
import itertools
import os
from collections import Counter

import numpy as np

from netdsl.runtime.data.checks import check_arrays, first_bad
from netdsl.runtime.data.dataset import COUNT, DataError, Dataset, Field, describe_fields
from netdsl.runtime.npz import ArchiveError, Npz, check_regular_file

__all__ = ["load_file", "FORMATS"]

FORMATS = ".npz (one array per input and target, named like them) or .csv (with a header row)"
# cells of a .csv file parsed at a time: their text is all a read holds besides the arrays
CSV_CHUNK_CELLS = 1 << 15


def load_file(path: str, fields: list[Field], declared: list[Field] | None = None) -> Dataset:
    """A Dataset of `fields` from a user's .npz or .csv file, checked against the declared
    types. `declared` lists all the spec's inputs and targets: in a .csv file, columns
    named for one that is not read are not taken for the input."""
    declared = fields if declared is None else declared
    others = [f for f in declared if f not in fields]
    if not os.path.exists(path):
        raise DataError(f"{path}: no such data file", f"check the path; data files are {FORMATS}")
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, not a data file",
                        f"name a file inside it; data files are {FORMATS}")
    ext = os.path.splitext(path)[1].lower()
    lengths = {}
    try:  # a FIFO would block for ever, /dev/zero never end
        check_regular_file(path)
    except ArchiveError as exc:
        raise DataError(str(exc), f"name a data file: {FORMATS}") from None
    if ext == ".npz":
        raw, place = _read_npz(path, fields, others), _array_place(path)
        lengths = {k: raw.pop(k) for k in list(raw) if k.endswith(".lengths")}
    elif ext == ".csv":
        raw, place = _read_csv(path, fields, others)
    else:
        kind = f"{ext} files" if ext else "files without an extension"
        raise DataError(f"{path}: cannot read {kind} as data", f"use {FORMATS}")
    arrays = check_arrays(path, raw, fields, place)
    arrays.update(_checked_lengths(path, lengths, arrays))
    padded = f"; padded sequences, with {', '.join(lengths)}" if lengths else ""
    return Dataset(arrays, f"data from {os.path.basename(path)}: {COUNT} examples of "
                           f"{describe_fields(fields)}{padded}")


def _checked_lengths(path: str, lengths: dict, arrays: dict) -> dict[str, np.ndarray]:
    checked = {}
    for key, a in lengths.items():
        name = key[:-len(".lengths")]
        examples, steps = arrays[name].shape[:2]
        hint = (f"save one whole number per example, from 1 to the {steps} steps of {name}: "
                f"np.savez(..., **{{'{key}': lengths}})")
        if a.shape != (examples,) or a.dtype.kind not in "iu":
            raise DataError(f"{path}: {key} must hold one whole number per example of {name} "
                            f"({examples}), but it is {a.dtype} of shape {list(a.shape)}", hint)
        if a.min() < 1 or a.max() > steps:
            raise DataError(f"{path}: {key} must lie in 1..{steps} (the steps of {name}), but "
                            f"it holds {int(a.min())}..{int(a.max())}", hint)
        checked[key] = a.astype(np.int64)
    return checked


def _savez_hint(path: str, fields: list[Field]) -> str:
    names = ", ".join(f"{f.name}=..." for f in fields)
    return f"write it with numpy: np.savez({os.path.basename(path)!r}, {names})"


def _read_npz(path: str, fields: list[Field], others: list[Field] = ()
              ) -> dict[str, np.ndarray]:
    """The arrays of `fields` from an .npz archive, and the `NAME.lengths` of padded
    sequences (how many steps of each are real); extra arrays are ignored (`others`, the
    spec's arrays that are not read, are named in messages as optional). Never unpickles,
    and checks the sizes the members declare against the memory available first."""
    hint = _savez_hint(path, fields)
    try:
        with Npz(path) as archive:
            missing = [f.name for f in fields if f.name not in archive]
            if missing:
                has = ", ".join(archive.names) or "no arrays"
                raise DataError(f"{path} has no array named {', '.join(missing)}: it has "
                                f"{has}; {_needs(fields, others)}", hint)
            names = [f.name for f in fields]
            names += [f"{f.name}.lengths" for f in fields
                      if f.type.seq and f"{f.name}.lengths" in archive]
            archive.check_memory(names)
            return {name: archive.read(name) for name in names}
    except ArchiveError as exc:
        raise DataError(str(exc), hint) from None


def _needs(fields: list[Field], others: list[Field]) -> str:
    """What the data must hold, in words: `the spec reads x (input [64]), y (...)`."""
    wants = ", ".join(f"{f.name} ({f.kind} {f.type})" for f in fields)
    if not others:
        return f"the spec reads {wants}"
    return f"the data must hold {wants}; {', '.join(f.name for f in others)} may be left out"


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _read_csv(path: str, fields: list[Field], others: list[Field] = ()):
    """The columns of each of `fields` as (N, k) arrays (float32, class labels float64),
    and a function that names the line and column of a value (see `_array_place`).
    Columns named for `others` are skipped. The rows are parsed a chunk at a time into
    arrays made once, so a read holds little more than the arrays it returns."""
    sequences = [f for f in fields if f.type.seq]
    if sequences:
        raise DataError(f"{path}: {sequences[0]} is a sequence, which a .csv file cannot hold",
                        "save sequences in an .npz file, as arrays of shape "
                        "(examples, steps, ...)")
    reader = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            rows = ((row, reader.line_num) for row in reader if any(c.strip() for c in row))
            header = _csv_header(path, next(rows, (None, 0))[0], fields)
            first = next(rows, None)
            if first is None:
                raise DataError(f"{path} has a header row but no data",
                                "add one line per example")
            columns = _csv_columns(path, header, fields, others)
            table = _CsvTable(path, header, fields, columns, _row_bound(path))
            table.read(itertools.chain([first], rows))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file", "a .csv file holds comma-separated numbers "
                        "under a header row") from None
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({_reason(exc)})") from None
    return table.arrays, table.place


def _array_place(path: str):
    """A function naming value j of example i of an array, e.g. `data.npz: x[3, 0, 7]`.

    Its arguments are the array's name, i, j (counted in the flattened example) and the
    shape of one example.
    """

    def place(name: str, i: int, j: int, shape: tuple[int, ...]) -> str:
        index = (i,) + tuple(int(k) for k in np.unravel_index(j, shape)) if shape else (i,)
        return f"{path}: {name}[{', '.join(map(str, index))}]"

    return place


def _header_example(fields: list[Field]) -> str:
    names = [f.name if f.type.size == 1 else f"{f.name}0,...,{f.name}{f.type.size - 1}"
             for f in fields]
    return ",".join(names)


def _csv_header(path: str, header: list[str] | None, fields: list[Field]) -> list[str]:
    """The header row's names, once it is known to name every column once."""
    example = f"add a first line that names the columns, e.g. {_header_example(fields)}"
    if header is None:
        raise DataError(f"{path} is empty", example)
    header = [cell.strip() for cell in header]
    if all(_is_number(cell) for cell in header):
        raise DataError(f"{path} has no header row: its first line holds numbers", example)
    repeated = sorted(name for name, n in Counter(header).items() if n > 1)
    if repeated:
        raise DataError(f"{path}: the header names column {repeated[0]!r} more than once",
                        "give every column its own name")
    return header


def _row_bound(path: str) -> int:
    """At least the rows of the file: its line breaks (counted in binary, at disk speed),
    plus one. Arrays this long cost only the pages written: the rest are never touched."""
    breaks = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            breaks += block.count(b"\n")
    return breaks + 1


class _Lines:
    """The line of each data row, kept as the runs of consecutive lines (a blank line or a
    quoted line break starts a new run), not one number per row."""

    def __init__(self):
        self.rows: list[int] = []   # the first row of each run
        self.lines: list[int] = []  # and its line

    def add(self, row: int, line: int) -> None:
        if not self.rows or line != self[row - 1] + 1:
            self.rows.append(row)
            self.lines.append(line)

    def __getitem__(self, row: int) -> int:
        run = bisect.bisect_right(self.rows, row) - 1
        return self.lines[run] + row - self.rows[run]


class _CsvTable:
    """The arrays of a .csv file's fields, filled a chunk of rows at a time."""

    def __init__(self, path: str, header: list[str], fields: list[Field],
                 columns: dict[str, list[int]], bound: int):
        self.path, self.header, self.columns = path, header, columns
        self.fields = [f for f in fields if f.name in columns]
        # class labels stay float64 until checked as whole numbers; values go to float32
        self.arrays = {f.name: np.empty((bound, len(columns[f.name])),
                                        np.float64 if f.is_class else np.float32)
                       for f in self.fields}
        self.lines = _Lines()
        self.count = 0

    def place(self, name: str, i: int, j: int, shape: tuple[int, ...]) -> str:
        column = self.columns[name][j]
        return f"{self.path}, line {self.lines[i]}, column {column + 1} ({self.header[column]})"

    def read(self, rows) -> None:
        width = len(self.header)
        per_chunk = max(1, CSV_CHUNK_CELLS // width)
        chunk, lines = [], []
        for row, line in rows:
            if len(row) != width:
                raise DataError(f"{self.path}, line {line}: {len(row)} values, but the header "
                                f"names {width} columns", "give every line one value per column")
            chunk.append(row)
            lines.append(line)
            if len(chunk) == per_chunk:
                self._store(chunk, lines)
                chunk, lines = [], []
        if chunk:
            self._store(chunk, lines)
        for a in self.arrays.values():  # shrinking in place gives the untouched pages back
            a.resize((self.count, a.shape[1]), refcheck=False)

    def _store(self, chunk: list[list[str]], lines: list[int]) -> None:
        start, end = self.count, self.count + len(chunk)
        for a in self.arrays.values():
            if end > len(a):  # more rows than line breaks: cannot happen, but never overrun
                a.resize((max(end, len(a) * 3 // 2), a.shape[1]), refcheck=False)
        for i, line in enumerate(lines):
            self.lines.add(start + i, line)
        table = _csv_numbers(self.path, self.header, chunk, lines)
        for f in self.fields:
            part = table[:, self.columns[f.name]]
            if not f.is_class:
                with np.errstate(over="ignore"):
                    small = part.astype(np.float32)
                first_bad(f, part, np.isfinite(part) & ~np.isfinite(small),
                          lambda name, i, j, shape: self.place(name, start + i, j, shape),
                          "is too large for float32", "rescale the data")
                part = small
            self.arrays[f.name][start:end] = part
        self.count = end


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_columns(path: str, header: list[str], fields: list[Field],
                 others: list[Field] = ()) -> dict[str, list[int]]:
    """Which columns hold each of `fields`.

    A field is a column named like it (one value per example) or columns name0, name1, ...
    in order; a spec's only input may instead take all the columns the others leave.
    Columns named for `others` (fields a file may hold that are not read) are never taken.
    """
    index = {name: j for j, name in enumerate(header)}
    skipped = {index[name] for f in others
               for name in [f.name, *(f"{f.name}{i}" for i in range(f.type.size))]
               if name in index}
    columns, unnamed = {}, []
    for f in fields:
        found = _named_columns(path, f, index)
        if found is None:
            unnamed.append(f)
        else:
            columns[f.name] = found
    only_input = sum(f.kind == "input" for f in [*fields, *others]) == 1
    for f in unnamed:
        if f.kind != "input" or not only_input:
            raise DataError(f"{path} has no column{'s' if f.type.size > 1 else ''} for "
                            f"the {f.kind} {f}", f"name the columns like this: "
                            f"{_header_example(fields)}")
        used = skipped | {j for cols in columns.values() for j in cols}
        rest = [j for j in range(len(header)) if j not in used]
        if len(rest) != f.type.size:
            besides = f" besides {', '.join(c for c in columns)}" if columns else ""
            raise DataError(f"{path}: the input {f} needs {f.type.size} values per example, "
                            f"but the file has {len(rest)} columns{besides}",
                            f"name the columns like this: {_header_example(fields)}")
        columns[f.name] = rest
    return columns


def _named_columns(path: str, f: Field, index: dict[str, int]) -> list[int] | None:
    """The columns named for `f`, or None when none are."""
    size = f.type.size
    if f.name in index:
        if size == 1:
            return [index[f.name]]
        raise DataError(f"{path}: column {f.name} holds one value per example, but {f} needs "
                        f"{size}", f"name {size} columns {f.name}0 to {f.name}{size - 1}")
    numbered = [f"{f.name}{i}" for i in range(size)]
    present = [name for name in numbered if name in index]
    if len(present) == size:
        return [index[name] for name in numbered]
    if present:
        missing = [name for name in numbered if name not in index]
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{path}: {f} needs columns {f.name}0 to {f.name}{size - 1}, but "
                        f"{', '.join(missing[:3])}{more} are missing",
                        f"{f} holds {size} values per example, one column each")
    return None


def _csv_numbers(path: str, header: list[str], rows: list[list[str]],
                 lines: list[int]) -> np.ndarray:
    """The cells as floats, or a DataError naming the first cell that is not a number."""
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        pass
    for row, line in zip(rows, lines):
        for j, cell in enumerate(row):
            if not _is_number(cell):
                what = f"{cell.strip()!r} is not a number" if cell.strip() else "empty cell"
                raise DataError(f"{path}, line {line}, column {j + 1} ({header[j]}): {what}",
                                "apart from the header row, every cell must be a number")
    return np.array([[float(cell) for cell in row] for row in rows], dtype=np.float64)
