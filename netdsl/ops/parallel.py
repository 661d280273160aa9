"""How an op's host work spreads over threads: slabs of the batch, with threads the
runtime lends.

NumPy runs an op on one core and BLAS spreads only a GEMM over the others, so the
copies around a GEMM (padding, im2col, the output's layout) stay serial. An op may
instead split its batch (or its channels) into slabs and map a function over them,
which the runtime runs on its threads (netdsl.runtime.host provides `slabs`,
`slab_map` and `chunk_budget` for NumPy). Without a runtime, as when an op is called
alone, the whole batch is one slab.
"""
from __future__ import annotations

from netdsl.ops.routines import overridable

__all__ = ["MIN_SPLIT_BYTES", "CHUNK_BYTES", "SLABS_PER_THREAD", "even_slabs", "slabs", "slab_map", "chunk_budget",
           "split_pointwise", "batch_chunks", "chunk_examples", "matmul"]

# bytes an op must touch before splitting it pays for the threads' hand-over
MIN_SPLIT_BYTES = 1 << 20

# On the host each thread convolves a chunk of its slab at a time, the im2col columns
# of the chunks of all threads about this many bytes (one example at least): they are
# in the cache when the GEMM reads them (and col2im adds them), and the whole batch's
# columns, k*k times the input, are never held at once. Each chunk costs Python calls
# (col2im makes two per kernel offset) and a GEMM of fewer columns: the layers of
# LeNet-5 and ResNet-20 ran 10-40% slower with 1 MiB chunks, not faster with 8 or 16.
CHUNK_BYTES = 4 << 20

# slabs per thread: a thread that finishes early takes the next slab, so one whose core
# another process holds delays the op by a small slab at most
SLABS_PER_THREAD = 2


def even_slabs(total: int, threads: int, per_thread: int | None = None) -> list[slice]:
    """range(total) in even, contiguous slices, `per_thread` (SLABS_PER_THREAD) per
    thread (one slice on one thread): how a runtime splits an op, and what the memory
    plan counts."""
    per_thread = SLABS_PER_THREAD if per_thread is None else per_thread
    count = max(1, min(per_thread * threads if threads > 1 else 1, total))
    bounds = [total * i // count for i in range(count + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:])]


@overridable
def slabs(xp, total: int, size: int = MIN_SPLIT_BYTES) -> list[slice]:
    """range(total) as the slices an op over `size` bytes splits into: one slice, unless
    a runtime lends threads."""
    return [slice(0, total)]


@overridable
def slab_map(xp, fn, total: int, size: int = MIN_SPLIT_BYTES) -> list:
    """[fn(slab) for slab in slabs(xp, total, size)], on the runtime's threads if it
    lends any."""
    return [fn(slice(0, total))]


@overridable
def chunk_budget(xp, budget: int | None = None) -> int:
    """The bytes of one chunk of a slab's work: `budget`, by default CHUNK_BYTES (a
    runtime shares it among the slabs running at once, or sizes it for its device)."""
    return CHUNK_BYTES if budget is None else budget


@overridable
def matmul(xp, a, b, out=None):
    """a @ b, into `out` if given: a runtime may split the GEMM over threads of its own
    (the native target, in a pass whose recurrent loop splits its steps over its pool)."""
    return xp.matmul(a, b, out=out)


def split_pointwise(xp, fn, out, *arrays):
    """fn(*slabs, out=out slab) over slabs of the batch axis of `out` and `arrays`
    (all shaped alike): a large elementwise op on every core. Returns out."""
    if len(slabs(xp, len(out), out.nbytes)) == 1:
        return fn(*arrays, out=out)
    slab_map(xp, lambda part: fn(*(a[part] for a in arrays), out=out[part]), len(out),
             out.nbytes)
    return out


def batch_chunks(xp, batch: int, per_example: int, budget: int | None = None) -> list[slice]:
    """Slices of the batch of about chunk_budget / per_example examples each, as even as
    possible."""
    size = chunk_examples(batch, per_example, chunk_budget(xp, budget))
    return [slice(b, min(b + size, batch)) for b in range(0, batch, size)]


def chunk_examples(batch: int, per_example: int, budget: int = CHUNK_BYTES) -> int:
    """The examples in batch_chunks' largest chunk: about budget / per_example, one at
    least, the batch's chunks as even as possible."""
    count = -(-batch // max(1, budget // max(per_example, 1)))
    return -(-batch // count)
