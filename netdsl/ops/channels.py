"""Per-channel programs: elementwise formulas with sums over each channel between them.

Batch normalisation is elementwise once each channel's statistics are known, and its
statistics are sums over the channel. A `ChannelProgram` states such an op over arrays
viewed as (B, C, N), per channel c:

1. `stages`, in order, each a pass over the channel: its `sums` (expressions of the
   elements read and of the channel's values so far, each summed over the channel's
   B * N elements in double precision), then its `lets`, per-channel values from the
   sums, the vectors read at c (`vectors`), the scalars and `count` = B * N (two stages
   take a variance as NumPy does: the mean, then the sum of squares about it);
2. `channel_writes`: (C,) arrays of per-channel values;
3. `lets`, then `writes`: per element, from the elements read and the channel's values.

Expressions are ops.expr's, so the native CPU target renders a program as one C
function, a pass over each channel per stage and one writing pass (netdsl.lower.native),
from the formulas an op states, and `evaluate_channels` runs the same formulas with NumPy, which is how the
tests check a program against the op's NumPy code. `run_channels` runs one: evaluated
so by default, compiled where a runtime provides it (netdsl.runtime.native).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from netdsl.ops.expr import Expr, evaluate, names
from netdsl.ops.routines import overridable

__all__ = ["ChannelProgram", "Stage", "evaluate_channels", "run_channels"]


class Stage(NamedTuple):
    """One pass over a channel: sums over its elements, then per-channel values."""

    sums: tuple[tuple[str, Expr], ...]
    lets: tuple[tuple[str, Expr], ...]


@dataclass(frozen=True, eq=False)
class ChannelProgram:
    """Sums per channel, then per-channel values, then elementwise writes (see above)."""

    name: str
    reads: tuple[str, ...]                       # (B, C, N) arrays read
    vectors: tuple[str, ...]                     # (C,) arrays read
    scalars: tuple[str, ...]                     # numbers per call (eps, momentum)
    stages: tuple[Stage, ...]
    channel_writes: tuple[tuple[str, Expr], ...]  # new (C,) arrays
    lets: tuple[tuple[str, Expr], ...]
    writes: tuple[tuple[str, Expr], ...]          # new (B, C, N) arrays

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.channel_writes) + tuple(n for n, _ in self.writes)

    @property
    def element_names(self) -> frozenset[str]:
        """The names an elementwise expression may read at index i."""
        return frozenset(self.reads) | {n for n, _ in self.lets}

    def channel_names_read(self, named) -> tuple[str, ...]:
        """The per-channel values (sums, lets, vectors) that the elementwise expressions
        of `named` ((name, expr) pairs) read."""
        used = set().union(*(names(e) for _, e in named))
        known = [n for stage in self.stages for n, _ in (*stage.sums, *stage.lets)]
        return tuple(n for n in known + list(self.vectors) if n in used)


def evaluate_channels(program: ChannelProgram, arrays: dict, scalars: dict, xp,
                      dtype: str, into: dict | None = None) -> dict:
    """Run a program with `xp` over whole arrays: those read, (B, C, ...) and (C,).

    Returns the written arrays by name, the elementwise ones shaped as the first array
    read and the per-channel ones (C,): those named in `into` written there. Sums and
    per-channel values are computed in float64, as the kernel does, and rounded to
    `dtype` where an element reads them.
    """
    first = arrays[program.reads[0]]
    b, c = first.shape[:2]
    env = {n: arrays[n].reshape(b, c, -1) for n in program.reads}
    channel = {n: xp.asarray(arrays[n], dtype="float64") for n in program.vectors}
    channel.update({n: xp.asarray(scalars[n], dtype="float64") for n in program.scalars})
    channel["count"] = xp.asarray(float(first.size // c), dtype="float64")

    def per_element(named):   # the channel's values an element reads, in its precision
        for name in program.channel_names_read(named):
            env[name] = xp.asarray(channel[name], dtype=dtype).reshape(c, 1)

    for stage in program.stages:
        per_element(stage.sums)
        for name, e in stage.sums:
            terms = xp.broadcast_to(evaluate(e, env, xp, dtype), env[program.reads[0]].shape)
            channel[name] = terms.astype("float64").sum(axis=(0, 2))
        for name, e in stage.lets:
            channel[name] = evaluate(e, channel, xp, "float64")
    results = {name: xp.asarray(evaluate(e, channel, xp, "float64"), dtype=dtype)
               for name, e in program.channel_writes}
    per_element((*program.lets, *program.writes))
    for name, e in program.lets:
        env[name] = evaluate(e, env, xp, dtype)
    shape = env[program.reads[0]].shape
    for name, e in program.writes:
        value = xp.broadcast_to(evaluate(e, env, xp, dtype), shape)
        results[name] = xp.asarray(value, dtype=dtype).reshape(first.shape)
        if into and into.get(name) is not None:
            into[name][...] = results[name]
            results[name] = into[name]
    return results


@overridable
def run_channels(xp, program: ChannelProgram, arrays: dict, scalars: dict | None = None,
                 dtype: str = "float32", into: dict | None = None) -> dict:
    """The program's written arrays by name: new, but for the elementwise ones named in
    `into` (contiguous, of the arrays' shape and dtype, overlapping none read), written
    there. The elementwise arrays read share one shape, (B, C, ...); the vectors are
    (C,). Here the program is evaluated with `xp`; a runtime may run it as compiled
    code."""
    return evaluate_channels(program, arrays, scalars or {}, xp, dtype, into)
