"""The GPU's batch normalisation (runtime.cuda.norm) on the host: its kernels, compiled
from their CUDA source for the CPU, against ops.numeric.batch_norm on NumPy."""
import numpy as np
import pytest

from netdsl.ops.numeric import batch_norm, batch_norm_backward
from netdsl.runtime.cuda import norm as gpu_norm


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (7, 2), (1, 4, 9)], ids=str)
def test_gpu_batch_norm_equals_the_host_one(kernels_on_host, shape):
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    ours, theirs = {}, {}   # the running statistics of each
    for step in range(2):   # the second step starts from updated running statistics
        x = rng.standard_normal(shape) * 3 + 10   # an offset the variance must not lose
        forward = gpu_norm.batch_norm(np, x, weight, bias, 1e-5, 0.1, ours, True)
        expected = batch_norm(np, x, weight, bias, 1e-5, 0.1, theirs, True)
        for name, a, b in zip(("y", "xhat", "inv_std"), forward, expected):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=name)
        for key in ("running_mean", "running_var"):
            np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-12)
    gy = rng.standard_normal(shape)
    _, xhat, inv_std = forward
    for batch_stats in (True, False):
        got = gpu_norm.batch_norm_backward(np, gy, xhat, inv_std, weight, batch_stats)
        wanted = batch_norm_backward(np, gy, xhat, inv_std, weight, batch_stats)
        for name, a, b in zip(("dx", "dweight", "dbias"), got, wanted):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(gpu_norm.batch_norm(np, x, weight, bias, 1e-5, 0.1, ours, False)[0],
                               batch_norm(np, x, weight, bias, 1e-5, 0.1, theirs, False)[0],
                               rtol=1e-12)

