"""Random draws off the host: a generator whose whole state is two host numbers.

NumPy's generator state can be read and restored, which a checkpoint does; CuPy keeps
its generator's state in device memory, where a checkpoint cannot read it. So on a
device every forward pass draws from a stream of its own (`CountedRng`).
"""
from __future__ import annotations

import json
import zlib

import numpy as np

__all__ = ["CountedRng"]


class CountedRng:
    """A random generator whose state is two host numbers, (seed, count).

    NumPy's generator state can be read and restored (a checkpoint stores it); CuPy's
    lives in device memory, and its Generator exposes none. So on a device each forward
    pass draws from a stream of its own: `advance` (an executor calls it as a pass starts)
    counts the passes, and the pass draws from the generator seeded with
    SeedSequence([seed, count]), made on its first draw (passes without dropout, noise or
    `normal` make none). Reading or setting `state` never touches the device, so the
    training loop may take it every step and a resumed run draws what the whole run
    drew. Draws are CuPy's Philox4x32-10 (cheap to seed: no skip-ahead per thread) where
    `xp.random` has it, else `xp.random.default_rng`.
    """

    def __init__(self, xp, seed: int = 0):
        self.xp, self.seed, self.count = xp, int(seed), 0
        self._generator = None

    def advance(self) -> None:
        """Start the next pass's stream."""
        self.count += 1
        self._generator = None

    @property
    def state(self) -> dict:
        """{"seed": int, "count": int}: a JSON document, as a checkpoint stores it."""
        return {"seed": self.seed, "count": self.count}

    @state.setter
    def state(self, value: dict) -> None:
        if isinstance(value, dict) and set(value) == {"seed", "count"}:
            self.seed, self.count = int(value["seed"]), int(value["count"])
        else:  # another generator's state (a checkpoint written on the CPU): a stream from it
            text = json.dumps(value, sort_keys=True, default=str)
            self.seed, self.count = zlib.crc32(text.encode()), 0
        self._generator = None

    def generator(self):
        """The generator of the current pass's stream."""
        if self._generator is None:
            sequence = np.random.SeedSequence([self.seed, self.count])
            random = self.xp.random
            if hasattr(random, "Philox4x3210"):
                self._generator = random.Generator(random.Philox4x3210(sequence))
            else:
                self._generator = random.default_rng(sequence)
        return self._generator

    def random(self, size=None, dtype="float64"):
        return self.generator().random(size, dtype=dtype)

    def standard_normal(self, size=None, dtype="float64"):
        return self.generator().standard_normal(size, dtype=dtype)

    def __getattr__(self, name):  # the generator's other distributions
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.generator(), name)
