"""Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018), every step of every image in one program.

Pixels are ranked once per image by the map, descending (a stable sort: ties keep raster order, as torchcam's
``argsort(descending=True, stable=True)``), one rank shared by the three channels. Deletion replaces the top-k pixels
of the input by a substrate; insertion starts from a substrate and restores the top-k pixels. The pixel counts are
``0, s, 2s, ..., HW`` with ``s = ceil(HW / steps)`` (torchcam's rule; RISE's ``step`` pixels per step is the same
with ``steps = ceil(HW / step)``). The score is the softmax probability of the explained class (RISE wraps the model
with a softmax; torchcam's examples pass ``logits_fn=softmax``). The AUC is the trapezoid rule against the fraction of
pixels perturbed (torchcam's ``torch.trapezoid``; RISE's uniform-spacing formula agrees whenever ``s`` divides HW).

Substrates: ``"zeros"`` (the zero of the normalised input, i.e. the dataset-mean colour: RISE's code and torchcam's
default baseline), ``"black"`` (pixel value 0, normalised), ``"blur"`` (RISE's insertion substrate: an 11 x 11 Gaussian
of sigma 5, built as RISE builds it with ``scipy.ndimage.gaussian_filter`` of a delta, applied per channel with zero
padding to the normalised input), ``"mean"`` (each image's per-channel mean) or an array broadcastable to the input.
Defaults follow RISE: zeros for deletion, blur for insertion. torchcam uses its baseline for both curves: pass
``insertion_substrate="zeros"`` to compare with it. Only one argsort per image builds every step's mask: the
(image, step) jobs run through ``lax.map`` in chunks of ``batch_size`` forwards inside one compiled program.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import targets as targets_mod
from ..errors import InvalidArgumentError, UnknownNameError
from .inputs import default_batch_size, descending_ranks, model_inputs

SUBSTRATES = ("zeros", "black", "blur", "mean")
CALLS = {"deletion_insertion": 0}  # programs traced (a test counts them)


class Curves(NamedTuple):
    """``fractions`` (S,): fraction of pixels perturbed at each point; ``deletion``/``insertion`` (N, S): the
    score along each curve; ``deletion_auc``/``insertion_auc`` (N,)."""

    fractions: jax.Array
    deletion: jax.Array
    insertion: jax.Array
    deletion_auc: jax.Array
    insertion_auc: jax.Array


def pixel_counts(n_pixels: int, steps: int) -> tuple[int, ...]:
    step = -(-n_pixels // steps)
    return tuple(range(0, n_pixels, step)) + (n_pixels,)


@lru_cache(maxsize=None)
def _rise_kernel(size: int = 11, sigma: float = 5.0) -> np.ndarray:
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    from scipy.ndimage import gaussian_filter  # imported on use: scipy.ndimage costs 0.2 s at import

    return gaussian_filter(delta, sigma).astype(np.float32)


def rise_blur(x: jax.Array, size: int = 11, sigma: float = 5.0) -> jax.Array:
    """RISE's blur of an (N, H, W, C) batch: a per-channel 2-D convolution with zero padding."""
    c = x.shape[-1]
    k = jnp.asarray(_rise_kernel(size, sigma))[:, :, None, None] * jnp.ones((1, 1, 1, c), x.dtype)
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       feature_group_count=c, precision=jax.lax.Precision.HIGHEST)


def substrate(spec, x: jax.Array, mean, std) -> jax.Array:
    """The substrate batch (N, H, W, C) named by ``spec`` for a normalised batch ``x``."""
    if isinstance(spec, str):
        if spec == "zeros":
            return jnp.zeros_like(x)
        if spec == "black":
            return jnp.broadcast_to(-jnp.asarray(mean, x.dtype) / jnp.asarray(std, x.dtype), x.shape)
        if spec == "blur":
            return rise_blur(x)
        if spec == "mean":
            return jnp.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
        raise UnknownNameError(spec, SUBSTRATES, "substrate")
    arr = jnp.asarray(spec, x.dtype)
    try:
        return jnp.broadcast_to(arr, x.shape)
    except ValueError:
        raise InvalidArgumentError(f"substrate of shape {arr.shape} does not broadcast to the input {x.shape}") from None


def deletion_insertion(model, x, cams, targets=None, *, steps: int = 20, deletion_substrate="zeros",
                       insertion_substrate="blur", target="probability", batch_size: int | None = None) -> Curves:
    """Deletion and insertion curves and AUCs of maps ``cams`` (N, H, W) for a preprocessed batch ``x``.

    Args:
      targets: None (each image's predicted class) or class indices.
      steps: the number of intervals (at most ``steps + 1`` points; torchcam's default 20, RISE's 224-pixel steps
        at 224 x 224 are ``steps=224``).
      deletion_substrate, insertion_substrate: see the module docstring.
      target: the score along the curves (default the softmax probability).
      batch_size: forwards per chunk (bounds memory; default 8 on CPU, 64 on accelerators).
    Deletion: lower is better. Insertion: higher is better.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InvalidArgumentError(f"steps must be a positive int, got {steps!r}")
    x, cams, classes = model_inputs(model, x, cams, targets)
    counts = pixel_counts(x.shape[1] * x.shape[2], int(steps))
    mean, std = model.mean, model.std
    d_sub = substrate(deletion_substrate, x, mean, std)
    shared = isinstance(deletion_substrate, str) and deletion_substrate == insertion_substrate
    i_sub = d_sub if shared else substrate(insertion_substrate, x, mean, std)
    fractions, deletion, insertion = _curves(model.tapped.plain, targets_mod.resolve(target), counts, shared,
                                             default_batch_size(batch_size), model.params, x, cams, classes,
                                             d_sub, i_sub)
    return Curves(fractions, deletion, insertion, auc(deletion, fractions), auc(insertion, fractions))


def deletion_auc(model, x, cams, targets=None, **options) -> jax.Array:
    """The ``deletion_auc`` metric (N,): the deletion curve's AUC from :func:`deletion_insertion` (lower is
    better). Computing both AUCs? Call :func:`deletion_insertion` once instead."""
    return deletion_insertion(model, x, cams, targets, **options).deletion_auc


def insertion_auc(model, x, cams, targets=None, **options) -> jax.Array:
    """The ``insertion_auc`` metric (N,): the insertion curve's AUC from :func:`deletion_insertion` (higher is
    better)."""
    return deletion_insertion(model, x, cams, targets, **options).insertion_auc


def auc(curve: jax.Array, fractions: jax.Array) -> jax.Array:
    """Trapezoid-rule area under ``curve`` (..., S) against ``fractions`` (S,)."""
    widths = jnp.broadcast_to(jnp.diff(fractions), curve[..., 1:].shape)
    return jnp.sum((curve[..., 1:] + curve[..., :-1]) * widths / 2, axis=-1)


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _curves(stage_range, score, counts, shared, batch_size, params, x, cams, classes, d_sub, i_sub):
    CALLS["deletion_insertion"] += 1
    forward = jax.tree_util.Partial(stage_range, params)
    n, h, w, _ = x.shape
    logits = forward(x)
    cls = jnp.argmax(logits, -1).astype(jnp.int32) if classes is None else classes
    base = jax.vmap(score)(logits, cls)
    rk = jax.vmap(descending_ranks)(cams).reshape(n, h, w, 1)
    s = len(counts)
    # jobs per image: deletion points 1..S-1, insertion points 0..S-2 (its point 0, the all-substrate image, is the
    # last deletion point when both curves share one substrate)
    first_ins = 1 if shared else 0
    job_curve = np.array([0] * (s - 1) + [1] * (s - 1 - first_ins), np.int32)
    job_count = np.array(list(counts[1:]) + list(counts[first_ins:-1]), np.int32)
    jobs = len(job_curve)

    def one(k):
        i, j = k // jobs, k % jobs
        top = rk[i] < jnp.asarray(job_count)[j]
        deleted = jnp.where(top, d_sub[i], x[i])
        inserted = jnp.where(top, x[i], i_sub[i])
        img = jnp.where(jnp.asarray(job_curve)[j] == 0, deleted, inserted)
        return score(forward(img[None])[0], cls[i])

    out = jax.lax.map(one, jnp.arange(n * jobs), batch_size=batch_size).reshape(n, jobs)
    deletion = jnp.concatenate([base[:, None], out[:, :s - 1]], axis=1)
    ins = out[:, s - 1:]
    if shared:
        ins = jnp.concatenate([deletion[:, -1:], ins], axis=1)
    insertion = jnp.concatenate([ins, base[:, None]], axis=1)
    fractions = jnp.asarray(np.asarray(counts, np.float32) / (h * w))
    return fractions, deletion, insertion
