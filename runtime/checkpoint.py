"""Checkpoints: one .npz per run directory, written atomically, enough to resume exactly.

Arrays (flat parameters, running statistics, optimiser state, the best parameters
for early stopping) are stored under prefixed names; everything else (epoch,
position in the epoch, random states, history, settings) is one JSON document.
"""
from __future__ import annotations

import io
import json
import os

import numpy as np

from netdsl.atomic import write_bytes

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "CHECKPOINT"]

CHECKPOINT = "checkpoint.npz"


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


def load_checkpoint(folder: str) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the JSON document of `folder/checkpoint.npz`.

    Raises
    ------
    CheckpointError
        When the file is missing or unreadable.
    """
    path = os.path.join(folder, CHECKPOINT)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint to resume from: {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({exc})") from None
    return arrays, meta
