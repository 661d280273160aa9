"""Batch normalisation on the GPU: two kernels forward, two backward.

The array-module path makes a dozen launches per batchnorm on a GPU (sums, centring,
squares, scalings, the running statistics). Here, for x viewed as (B, C, N):

- forward: one block per channel sums x - x0 and its square (x0, the channel's first
  value, keeps the one-pass variance accurate), and writes the mean, the variance,
  1/std and the updated running statistics; then one elementwise kernel writes xhat
  and y. In eval mode only the elementwise kernel runs, on the running statistics.
- backward: one block per channel sums gy and gy * xhat (the bias and weight
  gradients); then one elementwise kernel writes dx.

The per-channel kernels reduce in shared memory over a block of lower.cuda.THREADS.
With one thread and the blocks run one by one, which is how the tests run this source
on the CPU, the same code is a plain loop. This module provides ops.numeric's
`batch_norm` and `batch_norm_backward` for CuPy.
"""
from __future__ import annotations

import numpy as np

from netdsl.lower.cuda import Kernel
from netdsl.ops import numeric
from netdsl.runtime.cuda.launch import launch

__all__ = ["KERNELS", "STATISTICS", "NORMALISE", "SUMS", "INPUT_GRAD", "batch_norm",
           "batch_norm_backward"]

# a block's two partial sums, `a` and `b`, added up over its threads in shared memory:
# partial[0] and partial[blockDim.x] hold the totals (a block has at most 256 threads).
# They add in double: a thread sums B * N / 256 values (1024 for ResNet-20's first
# layers at batch 256), too many for float32 without losing the variance's last digits
# and batchnorm's gradient, which subtracts a mean from each value
_BLOCK_SUMS = """
    __shared__ double partial[2 * 256];
    partial[threadIdx.x] = a;
    partial[blockDim.x + threadIdx.x] = b;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            partial[threadIdx.x] += partial[threadIdx.x + half];
            partial[blockDim.x + threadIdx.x] += partial[blockDim.x + threadIdx.x + half];
        }
        __syncthreads();
    }
"""

# one block per channel c; n = B * N values; the running statistics are updated in place
STATISTICS = Kernel("bn_statistics", "const T* __restrict__ x, T* __restrict__ mean, "
                    "T* __restrict__ inv_std, T* __restrict__ running_mean, "
                    "T* __restrict__ running_var, const T eps, const T momentum, "
                    "const long long B, const long long C, const long long N", """
    const long long c = blockIdx.x;
    const long long n = B * N;
    const T shift = x[c * N];
    double a = 0, b = 0;  // the sums of x - shift and of its square
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const T d = x[((j / N) * C + c) * N + j % N] - shift;
        a += d;
        b += d * d;
    }
""" + _BLOCK_SUMS + """
    if (threadIdx.x == 0) {
        const T centred = (T)(partial[0] / n);
        const T var = (T)(partial[blockDim.x] / n - partial[0] / n * (partial[0] / n));
        mean[c] = shift + centred;
        inv_std[c] = (T)1 / sqrt((var > 0 ? var : (T)0) + eps);
        running_mean[c] = ((T)1 - momentum) * running_mean[c] + momentum * (shift + centred);
        running_var[c] = ((T)1 - momentum) * running_var[c]
                         + momentum * (var > 0 ? var : (T)0) * n / (n > 1 ? n - 1 : 1);
    }
""", per_block=True)

# i indexes (B, C, N)
NORMALISE = Kernel("bn_normalise", "const T* __restrict__ x, const T* __restrict__ mean, "
                   "const T* __restrict__ inv_std, const T* __restrict__ weight, "
                   "const T* __restrict__ bias, T* __restrict__ xhat, T* __restrict__ y, "
                   "const long long C, const long long N", """
    const long long c = (i / N) % C;
    const T h = (x[i] - mean[c]) * inv_std[c];
    xhat[i] = h;
    y[i] = h * weight[c] + bias[c];
""")

SUMS = Kernel("bn_sums", "const T* __restrict__ gy, const T* __restrict__ xhat, "
              "T* __restrict__ dbias, T* __restrict__ dweight, const long long B, "
              "const long long C, const long long N", """
    const long long c = blockIdx.x;
    const long long n = B * N;
    double a = 0, b = 0;  // the sums of gy and of gy * xhat
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const long long at = ((j / N) * C + c) * N + j % N;
        a += gy[at];
        b += gy[at] * xhat[at];
    }
""" + _BLOCK_SUMS + """
    if (threadIdx.x == 0) {
        dbias[c] = (T)partial[0];
        dweight[c] = (T)partial[blockDim.x];
    }
""", per_block=True)

# i indexes (B, C, N); with batch statistics the mean terms couple the batch
INPUT_GRAD = Kernel("bn_input_grad", "const T* __restrict__ gy, const T* __restrict__ xhat, "
                    "const T* __restrict__ weight, const T* __restrict__ inv_std, "
                    "const T* __restrict__ dbias, const T* __restrict__ dweight, "
                    "T* __restrict__ dx, const int batch, const long long B, "
                    "const long long C, const long long N", """
    const long long c = (i / N) % C;
    const T scale = weight[c] * inv_std[c];
    dx[i] = batch ? scale * (gy[i] - (dbias[c] + xhat[i] * dweight[c]) / (T)(B * N))
                  : scale * gy[i];
""")

# the per-channel kernels (per_block) run one block of lower.cuda.THREADS, 256, the size of
# `partial`, per channel
KERNELS = (STATISTICS, NORMALISE, SUMS, INPUT_GRAD)


@numeric.batch_norm.provide("cupy")
def batch_norm(xp, x, weight, bias, eps, momentum, buffers: dict, training: bool):
    """As ops.numeric.batch_norm: y, xhat and inv_std (1, C, 1...); the running
    statistics in `buffers` are updated in training."""
    b, channels = x.shape[:2]
    if "running_mean" not in buffers:
        buffers["running_mean"] = xp.zeros(channels, dtype=x.dtype)
        buffers["running_var"] = xp.ones(channels, dtype=x.dtype)
    x = xp.ascontiguousarray(x)
    n = x.size // (b * channels)
    dtype = x.dtype.type
    if training:
        mean = xp.empty(channels, dtype=x.dtype)
        inv_std = xp.empty(channels, dtype=x.dtype)
        launch(STATISTICS, channels, (x, mean, inv_std, buffers["running_mean"],
                                      buffers["running_var"], dtype(eps), dtype(momentum), b,
                                      channels, n), x.dtype)
    else:
        mean = buffers["running_mean"]
        inv_std = 1 / xp.sqrt(buffers["running_var"] + eps)
    xhat, y = xp.empty_like(x), xp.empty_like(x)
    launch(NORMALISE, x.size, (x, mean, inv_std, weight, bias, xhat, y, channels, n), x.dtype)
    return y, xhat, inv_std.reshape((1, -1) + (1,) * (x.ndim - 2))


@numeric.batch_norm_backward.provide("cupy")
def batch_norm_backward(xp, gy, xhat, inv_std, weight, batch_stats: bool):
    """As ops.numeric.batch_norm_backward: (dx, dweight, dbias)."""
    b, channels = gy.shape[:2]
    gy = xp.ascontiguousarray(gy)
    n = gy.size // (b * channels)
    dbias = xp.empty(channels, dtype=gy.dtype)
    dweight = xp.empty(channels, dtype=gy.dtype)
    launch(SUMS, channels, (gy, xhat, dbias, dweight, b, channels, n), gy.dtype)
    dx = xp.empty_like(gy)
    launch(INPUT_GRAD, gy.size, (gy, xhat, weight, inv_std.reshape(channels), dbias, dweight,
                                 dx, np.int32(batch_stats), b, channels, n), gy.dtype)
    return dx, dweight, dbias
