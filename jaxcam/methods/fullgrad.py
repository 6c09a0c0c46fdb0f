"""FullGrad (Srinivas & Fleuret, NeurIPS 2019), in pytorch-grad-cam 1.5.7's form.

``map = minmax( sum_c minmax(|dS/dx * x|_c) + sum_l resize( sum_k minmax_k(|b_lk * dS/dz_lk|) ) )`` over every
bias-carrying layer l (BatchNorm with its effective bias ``beta - mean gamma / sqrt(var + eps)``, convolutions with a
bias), with pytorch-grad-cam's per-channel min-max (eps 1e-7) and bilinear resize. It ignores the target layer.
Cost: 1F + one backward to the input (the driver takes every layer's gradient from that one backward). Because the
resize is linear, each layer's channels are summed before one resize instead of resized one by one (identical up to
float rounding, and why it is fast where the reference makes tens of thousands of resize calls).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..postprocess import minmax, resize


def _channel_minmax_sum(t):
    """(h, w, K) -> (h, w): each channel min-maxed, then summed."""
    return jnp.sum(jax.vmap(minmax, in_axes=-1, out_axes=-1)(t), axis=-1)


def fullgrad(x, gx, gtaps, biases, size):
    """The un-normalised FullGrad map (H, W) of one example."""
    total = _channel_minmax_sum(jnp.abs(gx * x))
    for g, b in zip(gtaps, biases):
        total = total + resize(_channel_minmax_sum(jnp.abs(g * b[None, None])), size)
    return total
