"""The GPU's max-pooling (runtime.cuda.pool) on the host: its kernels, compiled from their
CUDA source for the CPU, against the maxpool op on NumPy."""
import numpy as np
import pytest

from netdsl.ops import OPS
from netdsl.ops.base import Ctx, bind
from netdsl.runtime.cuda import pool as gpu_pool
from netdsl.types import floats

CASES = {   # input shape, maxpool's arguments
    "2x2": ((2, 3, 8, 6), {"kernel": 2}),
    "3x3 stride 2 pad 1, overlapping": ((2, 2, 9, 7), {"kernel": 3, "stride": 2, "pad": 1}),
    "3x3 stride 1 pad 1": ((1, 3, 5, 5), {"kernel": 3, "stride": 1, "pad": 1}),
    "ceil mode": ((2, 2, 7, 7), {"kernel": 2, "ceil": True}),
    "rank 1": ((2, 3, 11), {"kernel": 3, "stride": 2, "pad": 1}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gpu_maxpool_equals_the_op(kernels_on_host, case):
    shape, attrs = CASES[case]
    op = bind(OPS["maxpool"], [], attrs)
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, shape).astype(np.float64)   # many ties: the first one wins
    ctx = Ctx(np, training=True)
    y = op.forward(ctx, x)
    g = op.geometry(floats(*shape[1:]))
    kernel, stride, pad, out = g.kernel, g.stride, g.lows, g.out
    ours, indices = gpu_pool.maxpool(np, x, kernel, stride, pad, out)
    np.testing.assert_array_equal(ours, y)
    np.testing.assert_array_equal(indices, ctx.saved["indices"])
    gy = rng.standard_normal(y.shape)
    (dx,), _ = op.backward(ctx, gy)
    np.testing.assert_allclose(gpu_pool.maxpool_backward(np, gy, indices, x.shape, kernel,
                                                         stride, pad), dx, rtol=1e-14)

