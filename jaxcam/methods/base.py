"""What a method sees: per-example arrays (``Inputs``) and the functions it may call (``Context``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..errors import InvalidArgumentError, UnknownNameError


class Inputs(NamedTuple):
    """One example at one layer. ``grads``/``hvp`` are None unless the method declared it needs them."""

    acts: jax.Array            # (h, w, K) target-layer activations A
    grads: jax.Array | None    # (h, w, K) dS/dA for the method's target score S
    hvp: jax.Array | None      # (h, w, K) Hessian-vector product (d^2 S / dA^2) A
    logits: jax.Array          # (C,)
    cls: jax.Array             # () int32, the class explained
    image: jax.Array           # (H, W, 3) the model input (normalised)
    key: jax.Array             # this example's PRNG key (methods that draw noise use it, nothing else does)
    attn: jax.Array | None = None  # (L, heads, T, T) a ViT's attention probabilities, for methods that declare it
    maps: jax.Array | None = None  # (h, w, C) the model's own class maps (Tapped.map_sites), for methods that declare it


@dataclass(frozen=True)
class Context:
    """Functions a method may call. ``replay(x, a)`` runs the model on inputs ``x`` (B, H, W, 3) with the target
    layer's activations replaced by ``a`` (B, h, w, K) and returns logits (B, C): a head-only pass, since under jit
    XLA drops the work before the layer that the replacement makes dead (and a layer inside a residual block stays
    correct: the skip path is computed from ``x``); ``forward`` maps a batch of model inputs to logits;
    ``score(logits (C,), cls)`` is the target."""

    replay: Callable[[jax.Array, jax.Array], jax.Array]
    forward: Callable[[jax.Array], jax.Array]
    score: Callable[[jax.Array, jax.Array], jax.Array]
    batch_size: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)   # the input normalisation, to recover RGB in [0, 1]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


def channel_sum(weighted: jax.Array) -> jax.Array:
    """(h, w, K) weighted activations -> (h, w) map."""
    return jnp.sum(weighted, axis=-1)


def first_component(t: jax.Array, sign: str = "max_abs") -> jax.Array:
    """Projection of the centred (h*w, K) matrix on its first right singular vector, as an (h, w) map
    (pytorch-grad-cam's ``get_2d_projection``). The SVD's sign is arbitrary: ``sign="max_abs"`` flips the map so
    that its largest magnitude is positive (Seg-Eigen-CAM's rule, deterministic); ``sign="svd"`` keeps LAPACK's."""
    h, w, k = t.shape
    x = t.reshape(h * w, k)
    x = x - jnp.mean(x, axis=0, keepdims=True)
    _, _, vt = jnp.linalg.svd(x, full_matrices=False)
    proj = (x @ vt[0]).reshape(h, w)
    if sign == "max_abs":
        return largest_magnitude_positive(proj)
    if sign != "svd":
        raise UnknownNameError(sign, ("max_abs", "svd"), "eigen_sign")
    return proj


def largest_magnitude_positive(m: jax.Array) -> jax.Array:
    """Flip the sign of a map whose most negative value outweighs its most positive one (Seg-Eigen-CAM's rule)."""
    return jnp.where(jnp.abs(jnp.min(m)) > jnp.abs(jnp.max(m)), -m, m)
