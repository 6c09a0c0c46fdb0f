"""Confidence-based faithfulness: scores of the model on images masked or perturbed by the map.

- :func:`average_drop` and :func:`increase_in_confidence` (Chattopadhay et al., Grad-CAM++, WACV 2018): the
  explanation map ``E = x * L`` is scored against ``x``. ``Y = s(x)``, ``O = s(E)``; Average Drop
  ``max(0, Y - O) / (Y + eps)`` (per image; the paper reports 100 x the mean), Increase ``1[Y < O]``. torchcam 0.5.0's
  ``ClassificationMetric`` multiplies the normalised input (``space="normalised"``, eps 1e-7); the paper's explanation
  map is an image, so jaxcam's default multiplies in pixel space and normalises again (``space="pixel"``), which
  sends masked pixels to black rather than to the dataset-mean colour.
- :func:`cam_mult_confidence_change`: pytorch-grad-cam 1.5.7's ``CamMultImageConfidenceChange``, ``s(x * L) - s(x)``
  on the normalised input. Its ``DropInConfidence`` is ``max(0, -change)`` (an absolute drop, not divided by Y) and
  ``IncreaseInConfidence`` is ``change > 0``.
- :func:`relative_confidence_drop` (Finer-CAM, Zhang et al., CVPR 2025): the top ``fraction`` (5 %) of pixels by the
  map are set to the dataset mean (0 in normalised space) and the drop of the class's confidence is reported
  relative to the clean image, either of the probability or (``contrast=True``) of the margin ``p_c - p_d`` over the
  most similar class ``d`` (the class whose logit is nearest the explained one's, Finer-CAM's rank-1 comparison).
- :func:`faithfulness_correlation` (Bhatt et al., IJCAI 2020; Quantus' defaults): for ``runs`` random subsets of
  ``subset_size`` pixels set to the baseline, the Pearson correlation across runs between the summed map over the
  subset and the drop ``f(x) - f(x~)`` of the class logit. Quantus ranks channel-pixels separately; jaxcam removes
  whole pixels (all channels), the convention of torchcam and xplique for one-channel CAMs. Its "black" baseline is
  each image's minimum value, as in Quantus.

Every function takes a preprocessed batch ``x`` (N, H, W, 3) and maps ``cams`` (N, H, W) in [0, 1] (resized to the
input if needed) and returns one value per image, computed in one compiled program.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .. import targets as targets_mod
from ..errors import InvalidArgumentError, UnknownNameError
from ..keys import as_key
from .inputs import default_batch_size, descending_ranks, model_inputs
from .similarity import _pearson_vectors

SPACES = ("pixel", "normalised")


def _masked(x, cams, space, mean, std):
    if space == "normalised":
        return x * cams[..., None]
    if space != "pixel":
        raise UnknownNameError(space, SPACES, "masking space")
    mean, std = jnp.asarray(mean, x.dtype).reshape(1, 1, 1, -1), jnp.asarray(std, x.dtype).reshape(1, 1, 1, -1)
    return ((x * std + mean) * cams[..., None] - mean) / std


@partial(jax.jit, static_argnums=(0, 1))
def _before_after(stage_range, score, params, x, x_after, classes):
    forward = jax.tree_util.Partial(stage_range, params)
    logits = forward(x)
    cls = jnp.argmax(logits, -1).astype(jnp.int32) if classes is None else classes
    return jax.vmap(score)(logits, cls), jax.vmap(score)(forward(x_after), cls)


def _scores(model, x, cams, targets, space, target):
    x, cams, classes = model_inputs(model, x, cams, targets)
    after = _masked(x, cams, space, model.mean, model.std)
    return _before_after(model.tapped.plain, targets_mod.resolve(target), model.params, x, after, classes)


def average_drop(model, x, cams, targets=None, *, space: str = "pixel", target="probability",
                 eps: float = 1e-7) -> jax.Array:
    """(N,) ``max(0, Y - O) / (Y + eps)``; lower is better. torchcam parity: ``space="normalised"``."""
    y, o = _scores(model, x, cams, targets, space, target)
    return jax.nn.relu(y - o) / (y + eps)


def increase_in_confidence(model, x, cams, targets=None, *, space: str = "pixel",
                           target="probability") -> jax.Array:
    """(N,) 1.0 where the explanation map scores higher than the image, else 0.0; higher is better."""
    y, o = _scores(model, x, cams, targets, space, target)
    return (y < o).astype(jnp.float32)


def cam_mult_confidence_change(model, x, cams, targets=None, *, target="probability",
                               space: str = "normalised") -> jax.Array:
    """(N,) ``s(x * L) - s(x)`` (pytorch-grad-cam's ``CamMultImageConfidenceChange``)."""
    y, o = _scores(model, x, cams, targets, space, target)
    return o - y


def _top_mask(cam, fraction):
    k = max(1, int(round(fraction * cam.size)))
    return (descending_ranks(cam) < k).reshape(cam.shape)


@partial(jax.jit, static_argnums=(0, 1, 2))
def _finer_drop(stage_range, fraction, contrast, params, x, cams, classes, eps):
    forward = jax.tree_util.Partial(stage_range, params)
    logits = forward(x)
    cls = jnp.argmax(logits, -1).astype(jnp.int32) if classes is None else classes
    masked = jnp.where(jax.vmap(lambda c: _top_mask(c, fraction))(cams)[..., None], 0.0, x)
    logits_m = forward(masked)

    def margin(lg, lg_ref, c):
        p = jax.nn.softmax(lg)
        if not contrast:
            return p[c]
        d = jnp.argsort(jnp.abs(lg_ref - lg_ref[c]), stable=True)[1]  # the nearest other class, on the clean logits
        return p[c] - p[d]

    before = jax.vmap(margin)(logits, logits, cls)
    after = jax.vmap(margin)(logits_m, logits, cls)
    return (before - after) / jnp.maximum(before, eps)


def relative_confidence_drop(model, x, cams, targets=None, *, fraction: float = 0.05, contrast: bool = False,
                             eps: float = 1e-7) -> jax.Array:
    """(N,) Finer-CAM's relative drop when the top ``fraction`` of pixels are masked to the dataset mean; higher is
    better (the map found what the class depends on). ``contrast=True`` measures the margin ``p_c - p_d`` over the
    most similar class instead of ``p_c`` (the denominator is clamped at ``eps``)."""
    if not 0 < fraction <= 1:
        raise InvalidArgumentError(f"fraction must be in (0, 1], got {fraction!r}")
    x, cams, classes = model_inputs(model, x, cams, targets)
    return _finer_drop(model.tapped.plain, float(fraction), bool(contrast), model.params, x, cams, classes, eps)


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _faithfulness_correlation(stage_range, score, runs, subset_size, batch_size, params, x, cams, classes, key):
    forward = jax.tree_util.Partial(stage_range, params)
    n, h, w, _ = x.shape
    logits = forward(x)
    cls = jnp.argmax(logits, -1).astype(jnp.int32) if classes is None else classes
    base = jax.vmap(score)(logits, cls)
    floor = x.min(axis=(1, 2, 3))
    keys = jax.random.split(key, (n, runs))

    def one(k):
        i, r = k // runs, k % runs
        subset = jax.random.permutation(keys[i, r], h * w)[:subset_size]
        m = jnp.zeros(h * w, bool).at[subset].set(True).reshape(h, w)
        img = jnp.where(m[..., None], floor[i], x[i])
        return score(forward(img[None])[0], cls[i]), jnp.sum(jnp.where(m, cams[i], 0.0))

    drop, mass = jax.lax.map(one, jnp.arange(n * runs), batch_size=batch_size)
    drop = base[:, None] - drop.reshape(n, runs)
    return jax.vmap(lambda a, b: _pearson_vectors(a, b, 0.0))(mass.reshape(n, runs), drop)


def faithfulness_correlation(model, x, cams, targets=None, *, runs: int = 100, subset_size: int = 224,
                             target="logit", key=0, batch_size: int | None = None) -> jax.Array:
    """(N,) Pearson correlation between the map's mass on random pixel subsets and the score drop when they are
    removed; higher is better. A constant map or an unmoved score has no correlation to measure: 0."""
    if not isinstance(runs, (int, np.integer)) or runs < 2:
        raise InvalidArgumentError(f"runs must be an int >= 2, got {runs!r}")
    x, cams, classes = model_inputs(model, x, cams, targets)
    if not 1 <= subset_size <= x.shape[1] * x.shape[2]:
        raise InvalidArgumentError(f"subset_size must be in [1, {x.shape[1] * x.shape[2]}] pixels, got {subset_size!r}")
    key = as_key(key)
    return _faithfulness_correlation(model.tapped.plain, targets_mod.resolve(target), int(runs),
                                     int(subset_size), default_batch_size(batch_size), model.params, x, cams,
                                     classes, key)
