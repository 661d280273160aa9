"""Checkpoints: one .npz per run directory, written atomically, enough to resume exactly.

Arrays (flat parameters, running statistics, optimiser state, the best parameters
for early stopping) are stored under prefixed names; everything else (epoch,
position in the epoch, random states, history, settings) is one JSON document.

A checkpoint is validated before use: `load_checkpoint` refuses a file that is not a
checkpoint (empty, truncated, a .npy, pickled objects, a document without its fields),
and `check_arrays` one whose arrays are not those of this network (missing, of another
size or of another type: int32 parameters would load and silently give chance accuracy).
"""
from __future__ import annotations

import io
import json
import os
import re

import numpy as np

from netdsl.atomic import check_writable, remove_stale, write_bytes
from netdsl.runtime.npz import ArchiveError, Npz

__all__ = ["save_checkpoint", "load_checkpoint", "check_arrays", "prepare_folder",
           "CheckpointError", "CHECKPOINT"]

CHECKPOINT = "checkpoint.npz"
# the JSON document's fields and their types
META_FIELDS = {"layout": list, "rng": dict, "position": dict}
# the temporary files of atomic writes before they were named after their target
LEGACY_TEMP = re.compile(r"\.[a-z0-9_]{8}\.tmp")


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not belong to this network."""


def save_checkpoint(folder: str, arrays: dict[str, np.ndarray], meta: dict) -> str:
    """Write `folder/checkpoint.npz` atomically; return its path."""
    os.makedirs(folder, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
             **arrays)
    path = os.path.join(folder, CHECKPOINT)
    write_bytes(path, buffer.getvalue())
    return path


def prepare_folder(folder: str) -> None:
    """Before training: delete temporary files of killed checkpoint writes, and make sure
    a checkpoint can be written in `folder` (created if missing).

    Raises
    ------
    CheckpointError
        When it cannot: better at once than after the first epoch.
    """
    path = os.path.join(folder, CHECKPOINT)
    why = check_writable(path)
    if why is not None:
        raise CheckpointError(f"cannot write checkpoints in {folder} ({why})")
    remove_stale(path)
    for name in os.listdir(folder):  # earlier versions named them .XXXXXXXX.tmp
        if LEGACY_TEMP.fullmatch(name):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass  # gone already; it harms nothing


def load_checkpoint(folder: str) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the JSON document of `folder/checkpoint.npz`.

    Raises
    ------
    CheckpointError
        When the file is missing or is not a checkpoint.
    """
    path = os.path.join(folder, CHECKPOINT)
    if not os.path.lexists(path):
        raise CheckpointError(f"no checkpoint to resume from: {path} does not exist")
    try:
        with Npz(path) as archive:
            archive.check_memory(archive.names)
            arrays = {name: archive.read(name) for name in archive.names}
    except ArchiveError as exc:
        raise CheckpointError(f"not a readable checkpoint: {exc}") from None
    return arrays, _meta(path, arrays.pop("__meta__", None))


def _meta(path: str, raw: np.ndarray | None) -> dict:
    """The JSON document stored as bytes under __meta__, with the fields a resume reads."""
    if raw is None:
        raise CheckpointError(f"{path} is not a checkpoint: it has no __meta__ document")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{path}: its __meta__ document is not JSON") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its __meta__ document is not a JSON object")
    for name, kind in META_FIELDS.items():
        if not isinstance(meta.get(name), kind):
            raise CheckpointError(f"{path}: its __meta__ document lacks '{name}' "
                                  f"(a JSON {'array' if kind is list else 'object'})")
    if not isinstance(meta.get("schedule"), (dict, type(None))):
        raise CheckpointError(f"{path}: its __meta__ document's 'schedule' is not a JSON object")
    return meta


def check_arrays(path: str, arrays: dict[str, np.ndarray],
                 expected: dict[str, tuple[tuple[int, ...], np.dtype]],
                 optional: tuple[str, ...] = ()) -> None:
    """Raise CheckpointError unless every array of `expected` (name: (shape, dtype)) is in
    `arrays` with that shape and dtype; those in `optional` may be missing."""
    for name, (shape, dtype) in expected.items():
        if name not in arrays:
            if name in optional:
                continue
            why = ("it was written with another optimizer" if name.startswith("optimizer")
                   else "it is damaged or was not written by netdsl")
            raise CheckpointError(f"{path} lacks the array {name}: {why}")
        array = arrays[name]
        if tuple(array.shape) != tuple(shape):
            raise CheckpointError(f"{path}: {name} has shape {list(array.shape)} but this "
                                  f"network's has {list(shape)}")
        if array.dtype != dtype:
            raise CheckpointError(f"{path}: {name} holds {array.dtype} values but this run "
                                  f"needs {np.dtype(dtype)}")
