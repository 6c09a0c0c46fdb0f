"""Complexity of a map: how concentrated its mass is. Map-only, per example, vmapped under one jit.

- :func:`sparseness` (Chalasani et al., ICML 2020; Quantus ``Sparseness``): the Gini index of ``|a| + eps`` over the
  pixels, ``sum_i (2i - n - 1) a_(i) / (n sum_i a_(i))`` with ``a`` sorted ascending; 1 = all mass on one pixel, 0 =
  uniform. Higher is sparser. Matches Quantus 0.6.0 on (N, 1, H, W) maps.
- :func:`entropy` (Bhatt et al., IJCAI 2020; Quantus ``Complexity``): the Shannon entropy (nats) of
  ``p = |a| / sum |a|`` over the pixels; lower is simpler. Matches Quantus 0.6.0 with the default ``channels=1``:
  Quantus does not broadcast a one-channel map to the image's channels (its preprocessing only adds the channel
  axis), so an (N, 1, H, W) map beside (N, 3, H, W) images gives exactly this number, checked against the committed
  Quantus goldens. ``channels=C`` is the entropy of the map repeated over C channels (``+ log C``), for comparison
  with a tool that explains each channel separately; it is not Quantus' number. An all-zero map is treated as
  uniform (the maximal entropy, ``log n``), as ``|a| + eps`` with any eps > 0 makes it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..errors import InvalidArgumentError
from .inputs import check_maps


@jax.jit
def _gini(cams, eps):
    def one(cam):
        a = jnp.sort(jnp.abs(cam).ravel()) + eps
        n = a.size
        i = jnp.arange(1, n + 1, dtype=a.dtype)
        return jnp.sum((2 * i - n - 1) * a) / (n * jnp.sum(a))
    return jax.vmap(one)(cams)


def sparseness(cams, *, eps: float = 1e-7) -> jax.Array:
    """(N,) Gini index of each map's absolute values; higher is sparser."""
    return _gini(check_maps(cams), jnp.float32(eps))


@jax.jit
def _entropy(cams, log_channels):
    def one(cam):
        a = jnp.abs(cam).ravel()
        total = a.sum()
        p = jnp.where(total > 0, a / jnp.where(total > 0, total, 1.0), 1.0 / a.size)
        return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)) + log_channels
    return jax.vmap(one)(cams)


def entropy(cams, *, channels: int = 1) -> jax.Array:
    """(N,) Shannon entropy (nats) of each map's normalised absolute values. ``channels=1`` (default) is Quantus
    0.6.0's ``Complexity``; ``channels=C`` adds ``log C`` (the map repeated over C channels; see the module docs)."""
    if not isinstance(channels, (int,)) or isinstance(channels, bool) or channels < 1:
        raise InvalidArgumentError(f"channels must be >= 1, got {channels!r}")
    return _entropy(check_maps(cams), jnp.log(jnp.float32(channels)))
