"""Target scores: what a CAM explains. Each is a pure function ``(logits (C,), class ()) -> scalar`` for one example.

Built-ins (names usable as ``target=`` in :func:`jaxcam.explain`):

- ``logit``: ``y_c`` (pytorch-grad-cam's ``ClassifierOutputTarget``).
- ``probability``: ``softmax(y)_c`` (``ClassifierOutputSoftmaxTarget``).
- ``rest``: ``y_c + log softmax(y)_c``, i.e. ``y_c - CE(y, c)`` (``ClassifierOutputReST``, ShapleyCAM's target).
- ``logit_difference``: DiffGradCAM's contrastive score ``y_c - sum_{j != c} w_j y_j`` with ``w_j = p_j / (1 - p_c)``
  (the softmax over the alternatives; the weights are held constant so the score is exactly invariant to a shared
  offset added to every logit). ``weights="uniform"`` and ``"hardest"`` are the other documented choices.
- ``finer(alpha, comparisons)``: Finer-CAM's ``sum_j p_j (y_c - alpha y_{d_j}) / (sum_j p_j + 1e-9)`` over the classes
  ``d_j`` ranked ``comparisons`` (default 1, 2, 3) by ``|y_j - y_c|``; ``p`` is not detached, as in the official code
  and pytorch-grad-cam 1.5.7 (``FinerWeightedTarget``).

Any other callable with the same signature is accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .errors import ClassIndexError, InvalidArgumentError, UnknownNameError

Target = Callable[[jax.Array, jax.Array], jax.Array]


def logit(logits, c):
    return logits[c]


def probability(logits, c):
    return jax.nn.softmax(logits)[c]


def rest(logits, c):
    return logits[c] + jax.nn.log_softmax(logits)[c]


def _logit_difference(logits, c, weights: str = "softmax"):
    others = jnp.arange(logits.shape[0]) != c
    if weights == "softmax":
        # p_j / (1 - p_c) computed as a softmax over the alternatives alone: the same value, but it sums to 1 to
        # float precision however far y_c leads (1 - p_c underflows once the lead passes about 17 in float32, and
        # weights that no longer sum to 1 let a shared offset back into the score)
        w = jax.lax.stop_gradient(jax.nn.softmax(jnp.where(others, logits, -jnp.inf)))
    elif weights == "uniform":
        w = others / (logits.shape[0] - 1)
    elif weights == "hardest":
        w = jax.nn.one_hot(jnp.argmax(jnp.where(others, logits, -jnp.inf)), logits.shape[0])
    else:
        raise UnknownNameError(weights, ("softmax", "uniform", "hardest"), "logit_difference weights")
    return logits[c] - jnp.dot(w, logits)


def logit_difference(weights: str = "softmax") -> Target:
    return partial(_logit_difference, weights=weights)


def _finer(logits, c, alpha: float, comparisons: tuple[int, ...]):
    ranks = [r for r in comparisons if r < logits.shape[0]]
    if not ranks:
        return logits[c]
    order = jnp.argsort(jnp.abs(logits - logits[c]), stable=True)
    refs = order[jnp.asarray(ranks)]
    p = jax.nn.softmax(logits)[refs]
    return jnp.sum(p * (logits[c] - alpha * logits[refs])) / (jnp.sum(p) + 1e-9)


def finer(alpha: float = 1.0, comparisons: tuple[int, ...] = (1, 2, 3)) -> Target:
    return partial(_finer, alpha=float(alpha), comparisons=tuple(comparisons))


TARGETS: dict[str, Target] = {"logit": logit, "probability": probability, "rest": rest,
                              "logit_difference": logit_difference(), "finer": finer()}


def resolve(target) -> Target:
    """A target name or callable to a target function."""
    if callable(target):
        return target
    try:
        return TARGETS[target]
    except (KeyError, TypeError):
        raise UnknownNameError(target, TARGETS, "target score") from None


def class_indices(targets, n: int, num_classes: int):
    """Validate ``targets`` (None, one class index, or one per image) for ``n`` images: an (n,) int32 array or
    None. Raises :class:`~jaxcam.ClassIndexError` naming the problem (the reference silently truncates)."""
    if targets is None:
        return None
    try:
        arr = np.asarray(targets)
    except (TypeError, ValueError, OverflowError):  # ragged nesting
        arr = np.asarray(targets, dtype=object)
    if arr.dtype == object and arr.ndim <= 1 and all(isinstance(v, int) and not isinstance(v, bool)
                                                     for v in arr.reshape(-1)):
        big = next(int(v) for v in arr.reshape(-1) if not 0 <= v < num_classes)  # Python ints past int64
        raise ClassIndexError(f"class index {big} out of range [0, {num_classes}) (the model has {num_classes} "
                              "classes)")
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim > 1:
        what = f"an array of shape {arr.shape}" if arr.ndim > 1 else f"{targets!r} ({type(targets).__name__})"
        raise ClassIndexError(f"targets must be None, a class index in [0, {num_classes}) or one such index per "
                              f"image, got {what}")
    arr = np.broadcast_to(arr, (n,)) if arr.ndim == 0 or arr.size == 1 else arr
    if arr.shape != (n,):
        raise ClassIndexError(f"got {arr.size} class indices for {n} images; pass one index or one per image")
    bad = arr[(arr < 0) | (arr >= num_classes)]
    if bad.size:
        raise ClassIndexError(f"class index {int(bad[0])} out of range [0, {num_classes}) (the model has "
                              f"{num_classes} classes; {n} image(s))")
    return jnp.asarray(arr, jnp.int32)
