"""The GPU's convolution (runtime.cuda.conv) on the host: its im2col and col2im kernels,
compiled from their CUDA source for the CPU, and its GEMMs in NumPy, against the
host convolution (ops.convolve) forward and backward."""
import numpy as np
import pytest

from netdsl.ops.convolve import conv_nd, conv_nd_backward
from netdsl.ops.windows import Geometry
from netdsl.runtime.cuda import conv as gpu_conv

CASES = {
    "3x3 pad 1": ((2, 3, 7, 6), (4, 3, 3, 3), (1, 1), [(1, 1), (1, 1)], (1, 1)),
    "5x5 stride 2, uneven pads": ((2, 2, 9, 8), (3, 2, 5, 5), (2, 2), [(2, 1), (0, 2)], (1, 1)),
    "dilation 2, stride 3": ((1, 2, 11, 10), (2, 2, 3, 2), (3, 2), [(1, 1), (0, 0)], (2, 2)),
    "1x1": ((3, 5, 4, 4), (6, 5, 1, 1), (1, 1), [(0, 0), (0, 0)], (1, 1)),
    "1x1 stride 2": ((2, 3, 5, 5), (2, 3, 1, 1), (2, 2), [(0, 0), (0, 0)], (1, 1)),
    "rank 1": ((2, 3, 12), (4, 3, 3), (2,), [(1, 2)], (1,)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gpu_convolution_equals_the_host_one(kernels_on_host, case):
    x_shape, w_shape, stride, pads, dilation = CASES[case]
    rng = np.random.default_rng(0)
    x, weight = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    bias = rng.standard_normal(w_shape[0])
    g = Geometry.of(x_shape[2:], w_shape[2:], stride, dilation, pads)
    expected = conv_nd(np, x, weight, bias, g, 1)
    y = gpu_conv.conv2d(np, x, weight, bias, g)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    gy = rng.standard_normal(y.shape)
    theirs = conv_nd_backward(np, gy, x, weight, g, 1)
    ours = gpu_conv.conv2d_backward(np, gy, x, weight, g)
    for name, a, b in zip(("dx", "dweight", "dbias"), ours, theirs):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11, err_msg=name)
    assert gpu_conv.conv2d_backward(np, gy, x, weight, g, False)[0] is None


def test_gpu_convolution_runs_fewer_windows_than_fit(kernels_on_host):
    """A transposed convolution's backward convolves with fewer windows than fit (those
    that read x): the kernels take the geometry's count."""
    rng = np.random.default_rng(1)
    x, weight = rng.standard_normal((2, 3, 8, 9)), rng.standard_normal((4, 3, 3, 3))
    g = Geometry.of((8, 9), (3, 3), (2, 2), (1, 1), [(1, 1), (1, 1)], out=(3, 4))
    y = gpu_conv.conv2d(np, x, weight, None, g)
    assert y.shape == (2, 4, 3, 4)
    np.testing.assert_allclose(y, conv_nd(np, x, weight, None, g, 1), rtol=1e-12)
    gy = rng.standard_normal(y.shape)
    for a, b in zip(gpu_conv.conv2d_backward(np, gy, x, weight, g),
                    conv_nd_backward(np, gy, x, weight, g, 1)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)

