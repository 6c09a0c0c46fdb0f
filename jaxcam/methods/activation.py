"""Activation-only methods (no gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..postprocess import minmax, resize
from .base import Context, Inputs


def eigencam(inp: Inputs, ctx: Context):
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): first principal component of the centred activations
    (the driver projects). Class-agnostic, no gradients: 1F + one small SVD. Matches pytorch-grad-cam 1.5.7 up to
    the SVD's arbitrary sign; jaxcam fixes the sign (see ``eigen_sign``)."""
    return inp.acts


def micam(inp: Inputs, ctx: Context, bins: int = 32):
    """MI-CAM (Iyer et al., arXiv 2507.09092; the estimator is [ours], the paper's was not recoverable): channel
    weight ``w_k`` = mutual information (nats) between the image's luminance and ``minmax(upsample(A_k))``, both
    quantised into ``bins`` bins over the H*W pixels (joint histogram); map ``sum_k w_k A_k``. Class-agnostic.
    Cost 1F + K histograms, chunked over channels."""
    rgb = inp.image * jnp.asarray(ctx.std)[None, None] + jnp.asarray(ctx.mean)[None, None]
    gray = jnp.clip(rgb @ jnp.asarray([0.299, 0.587, 0.114]), 0.0, 1.0)
    hw = gray.size
    g1 = jax.nn.one_hot(jnp.minimum((gray.ravel() * bins).astype(jnp.int32), bins - 1), bins)
    pg = g1.mean(axis=0)

    def mi(k):
        m = minmax(resize(inp.acts[..., k], gray.shape), 1e-8)
        a1 = jax.nn.one_hot(jnp.minimum((m.ravel() * bins).astype(jnp.int32), bins - 1), bins)
        joint = g1.T @ a1 / hw
        pa = a1.mean(axis=0)
        outer = pg[:, None] * pa[None, :]
        return jnp.sum(jnp.where(joint > 0, joint * jnp.log(joint / jnp.where(outer > 0, outer, 1.0)), 0.0))

    weights = jax.lax.map(mi, jnp.arange(inp.acts.shape[-1]), batch_size=ctx.batch_size)
    return inp.acts * weights[None, None]
