"""Batchnorm over the global batch of data-parallel workers (the train clause's sync_bn).

By default each worker normalises with its own examples' statistics, as PyTorch's
DistributedDataParallel does. With `sync_bn=true` the statistics are those of the
global batch: the per-channel sums (and the count) are summed over the workers before
the mean, and the centred squares before the variance; backward sums the two sums its
input gradient needs. The parameter gradients it returns stay the worker's own, since
the gradient buckets sum those.

This is the runtime providing ops.numeric's `batch_norm` and `batch_norm_backward`
(an `@overridable` routine) for the training loop's array module (NumPy or CuPy) while
it runs; in eval
mode, and while `paused` (a diagnosis replaying one worker's step), the implementation
that was there before runs. The op itself knows nothing of it.
"""
from __future__ import annotations

import contextlib

from netdsl.ops import numeric
from netdsl.ops.numeric import channel_dots, channel_sums
from netdsl.runtime.distributed import Communicator

__all__ = ["SynchronisedBatchNorm"]

def _column(v):
    """A (C,) vector broadcast against (B, C, N)."""
    return v.reshape(-1, 1)


class SynchronisedBatchNorm:
    """A context in which batchnorm's training statistics of arrays of `xp` are summed
    over `comm`."""

    def __init__(self, comm: Communicator, xp):
        self.comm = comm
        # routines find their provider by the array module's name
        self.module = xp.__name__
        self.active = True
        self._before: dict = {}

    def __enter__(self):
        for routine, mine in ((numeric.batch_norm, self._forward),
                              (numeric.batch_norm_backward, self._backward)):
            # the routine's table of providers: ours in front, theirs kept to restore
            before = routine.provided.get(self.module)
            self._before[(routine, self.module)] = before
            routine.provided[self.module] = self._providing(routine, before, mine)
        return self

    def __exit__(self, *exc) -> None:
        for (routine, module), before in self._before.items():
            if before is None:
                routine.provided.pop(module, None)
            else:
                routine.provided[module] = before
        self._before.clear()

    @contextlib.contextmanager
    def paused(self):
        """Each worker's own statistics meanwhile (no collective calls)."""
        self.active, was = False, self.active
        try:
            yield
        finally:
            self.active = was

    def _providing(self, routine, before, mine):
        def provider(xp, *args, **kwargs):
            if self.active:
                result = mine(xp, *args, **kwargs)
                if result is not NotImplemented:
                    return result
            if before is not None:
                result = before(xp, *args, **kwargs)
                if result is not NotImplemented:
                    return result
            return routine.generic(xp, *args, **kwargs)
        return provider

    def _forward(self, xp, x, weight, bias, eps, momentum, buffers: dict, training: bool):
        """As ops.numeric.batch_norm, with the statistics of every worker's examples."""
        if not training:
            return NotImplemented
        b, channels = x.shape[:2]
        if "running_mean" not in buffers:
            buffers["running_mean"] = xp.zeros(channels, dtype=x.dtype)
            buffers["running_var"] = xp.ones(channels, dtype=x.dtype)
        x3 = xp.ascontiguousarray(x).reshape(b, channels, -1)
        sums = xp.empty(channels + 1, dtype=x.dtype)
        sums[:channels] = channel_sums(xp, x3)
        sums[channels] = b * x3.shape[2]
        self.comm.sum(sums)
        n = sums[channels]
        mean = sums[:channels] / n
        xhat = x3 - _column(mean)
        var = self.comm.sum(channel_dots(xp, xhat, xhat)) / n
        inv_std = 1 / xp.sqrt(var + eps)
        xhat *= _column(inv_std)
        y = xhat * _column(weight)
        y += _column(bias)
        unbiased = var * (n / xp.maximum(n - 1, 1))
        buffers["running_mean"] = (1 - momentum) * buffers["running_mean"] + momentum * mean
        buffers["running_var"] = (1 - momentum) * buffers["running_var"] + momentum * unbiased
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return y.reshape(x.shape), xhat.reshape(x.shape), inv_std.reshape(shape)

    def _backward(self, xp, gy, xhat, inv_std, weight, batch_stats: bool):
        """As ops.numeric.batch_norm_backward; dx couples every worker's examples."""
        if not batch_stats:
            return NotImplemented
        b, channels = gy.shape[:2]
        g3 = xp.ascontiguousarray(gy).reshape(b, channels, -1)
        h3 = xhat.reshape(b, channels, -1)
        mine = xp.empty(2 * channels + 1, dtype=gy.dtype)
        mine[:channels] = channel_sums(xp, g3)
        mine[channels:-1] = channel_dots(xp, g3, h3)
        mine[-1] = b * g3.shape[2]
        every = self.comm.sum(mine.copy())
        n = every[-1]
        dx = h3 * _column(every[channels:-1] / -n)
        dx += g3
        dx -= _column(every[:channels] / n)
        dx *= _column(weight * inv_std.reshape(channels))
        return dx.reshape(gy.shape), mine[channels:-1].copy(), mine[:channels].copy()
