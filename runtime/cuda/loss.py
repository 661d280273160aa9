"""Softmax cross-entropy on the GPU: one kernel and a sum forward, one kernel backward.

For logits (B, C, *S) and labels (B, *S), each position's row of C logits is
normalised by one thread: the max, the sum of exponentials, the probabilities (kept
for backward) and the position's share of the loss, -log p_y / (B * S). A reduction
sums the shares. Backward writes (p - onehot(y)) * gy / (B * S) in one pass, gy read
on the device, so nothing waits for the GPU. Class weights take the generic path. This
module provides ops.loss's softmax cross-entropy for CuPy.
"""
from __future__ import annotations

from netdsl.lower.cuda import Kernel
from netdsl.ops import loss
from netdsl.runtime.cuda.launch import launch

__all__ = ["KERNELS", "ROWS", "GRADIENT", "cross_entropy", "cross_entropy_backward"]

_LAYOUT = "const long long C, const long long S"

# i indexes the rows (B, S); a row's classes lie S apart
ROWS = Kernel("ce_rows", "const T* __restrict__ logits, const long long* __restrict__ labels, "
              f"T* __restrict__ probs, T* __restrict__ shares, const T scale, {_LAYOUT}", """
    const T* z = logits + (i / S) * C * S + i % S;
    T* p = probs + (i / S) * C * S + i % S;
    T top = z[0];
    for (long long c = 1; c < C; ++c) top = z[c * S] > top ? z[c * S] : top;
    T total = 0;
    for (long long c = 0; c < C; ++c) total += exp(z[c * S] - top);
    for (long long c = 0; c < C; ++c) p[c * S] = exp(z[c * S] - top) / total;
    shares[i] = (top + log(total) - z[labels[i] * S]) * scale;
""")

# i indexes the logits (B, C, S)
GRADIENT = Kernel("ce_gradient", "const T* __restrict__ probs, const long long* __restrict__ "
                  f"labels, const T* __restrict__ gy, T* __restrict__ dlogits, const T scale, "
                  f"{_LAYOUT}", """
    const long long c = (i / S) % C;
    const long long row = (i / (C * S)) * S + i % S;
    dlogits[i] = (probs[i] - (labels[row] == c ? (T)1 : (T)0)) * gy[0] * scale;
""")

KERNELS = (ROWS, GRADIENT)


def cross_entropy(xp, logits, labels):
    """(loss as a 0-d array, probs): the mean of -log softmax(logits)_y over positions."""
    logits = xp.ascontiguousarray(logits)
    labels = xp.ascontiguousarray(labels, dtype=xp.int64)
    c = logits.shape[1]
    s = logits.size // (logits.shape[0] * c)
    probs = xp.empty_like(logits)
    shares = xp.empty(labels.shape, dtype=logits.dtype)
    scale = logits.dtype.type(1 / labels.size)
    launch(ROWS, labels.size, (logits, labels, probs, shares, scale, c, s), logits.dtype)
    return xp.asarray(shares.sum()), probs   # 0-d, as the other losses return


def cross_entropy_backward(xp, gy, probs, labels):
    c = probs.shape[1]
    s = probs.size // (probs.shape[0] * c)
    dlogits = xp.empty_like(probs)
    gy = xp.asarray(gy, dtype=probs.dtype).reshape(1)
    scale = probs.dtype.type(1 / labels.size)
    launch(GRADIENT, probs.size, (probs, xp.ascontiguousarray(labels, dtype=xp.int64), gy,
                                  dlogits, scale, c, s), probs.dtype)
    return dlogits


@loss.softmax_cross_entropy.provide("cupy")
def _softmax_cross_entropy(xp, logits, y, weights=None):
    return cross_entropy(xp, logits, y) if weights is None else NotImplemented


@loss.softmax_cross_entropy_backward.provide("cupy")
def _softmax_cross_entropy_backward(xp, gy, probs, y, weights=None):
    return cross_entropy_backward(xp, gy, probs, y) if weights is None else NotImplemented
