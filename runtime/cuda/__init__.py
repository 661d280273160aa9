"""The GPU: CUDA kernels launched through CuPy, for the routines a GPU runs its own way.

Importing this package registers its implementations of the ops' routines for CuPy
(ops.routines): convolution, max-pooling, batch normalisation, softmax cross-entropy,
the program runner of generated kernels, a chunk size fit for a device and CuPy's
scatter-add. CuPy itself is imported only when a kernel is first compiled, so the
package imports, and is tested, without it.
"""
from netdsl.ops import numeric, parallel
from netdsl.runtime.cuda import conv, launch, loss, norm, pool  # noqa: F401  they register

__all__ = ["DEVICE_CHUNK_BYTES"]

# On a GPU, which wants few, large kernels, a chunk is the whole batch unless its
# columns would pass this: those of a batch of large images (VGG-16's first layers: 3.7
# GB at batch 32) would otherwise take much of the device's memory, and a few chunks
# of 1 GiB keep every kernel large.
DEVICE_CHUNK_BYTES = 1 << 30


@parallel.chunk_budget.provide("cupy")
def _chunk_budget(xp, budget: int | None = None) -> int:
    return DEVICE_CHUNK_BYTES  # whatever the caller's: a host budget is sized for a cache


@numeric.scatter_add.provide("cupy")
def _scatter_add(xp, target, index, values):
    if hasattr(xp.add, "at"):
        return NotImplemented
    import cupyx  # an older CuPy has no add.at; cupyx comes with it

    cupyx.scatter_add(target, index, values)
    return target
