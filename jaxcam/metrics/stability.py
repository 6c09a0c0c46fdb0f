"""Stability of explanations under small input noise: the method is re-run on noisy copies of each image.

- :func:`sensitivity` (Yeh et al., NeurIPS 2019; Quantus ``MaxSensitivity``/``AvgSensitivity``): each of
  ``samples`` draws adds uniform noise ``U(-radius, radius)`` to every input value (an L-infinity ball in the model's
  input space, Quantus' default radius 0.2), re-explains the same class, and measures
  ``||L(x) - L(x')||_F / ||L(x)||_F``. ``max`` is the maximum over draws, ``avg`` the mean. An all-zero clean map
  uses a denominator of 1 (Captum's convention) rather than dividing by zero.
- :func:`local_lipschitz` (Alvarez-Melis and Jaakkola, 2018; Quantus ``LocalLipschitzEstimate``): Gaussian noise of
  standard deviation ``std`` (0.1), the maximum over draws of ``||L(x) - L(x')||_2 / ||x - x'||_2``.

The explained class is the clean image's (predicted, or given by ``targets``) for every noisy copy. Every draw comes
from the explicit ``key``; the draws run sequentially through ``lax.map`` inside one compiled program, each one the
method's batched program over all images, so memory stays that of one explain call.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InvalidArgumentError
from ..keys import as_key
from ..targets import class_indices


class Sensitivity(NamedTuple):
    max: jax.Array
    avg: jax.Array


def _setup(model, x, method, targets, layer, samples, key, options):
    if not isinstance(samples, (int, np.integer)) or samples < 1:
        raise InvalidArgumentError(f"samples must be a positive int, got {samples!r}")
    from .._explain import explainer  # the methods engine imports metrics.road: import it at call time

    fn = explainer(model, method, layer, **options)
    x = model.check_input(x)
    classes = class_indices(targets, x.shape[0], model.num_classes)
    key = as_key(key)
    return fn, x, classes, key


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _stability(stage_range, fn, kind, samples, scale, params, x, classes, key):
    logits = stage_range(params, x)
    cls = jnp.argmax(logits, -1).astype(jnp.int32) if classes is None else classes
    k_method, k_noise = jax.random.split(key)
    clean = fn(params, x, cls, k_method)
    flat = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731

    def one(k):
        if kind == "uniform":
            noise = jax.random.uniform(k, x.shape, x.dtype, -scale, scale)
        else:
            noise = scale * jax.random.normal(k, x.shape, x.dtype)
        diff = jnp.linalg.norm(flat(fn(params, x + noise, cls, k_method) - clean), axis=1)
        if kind == "uniform":
            den = jnp.linalg.norm(flat(clean), axis=1)
        else:
            den = jnp.linalg.norm(flat(noise), axis=1)
        return diff / jnp.where(den > 0, den, 1.0)

    return jax.lax.map(one, jax.random.split(k_noise, samples))  # (samples, N)


def sensitivity(model, x, method: str = "gradcam", targets=None, *, layer=None, radius: float = 0.2,
                samples: int = 10, key=0, **explain_options) -> Sensitivity:
    """Max- and avg-sensitivity (N,) each of ``method``'s maps on a preprocessed batch ``x``; lower is more stable.
    ``explain_options`` are passed to the method (see :func:`jaxcam.explain`). Quantus draws 200 samples; the
    default here is 10 (each sample is one full explain call over the batch)."""
    if radius <= 0:
        raise InvalidArgumentError(f"radius must be > 0, got {radius!r}")
    fn, x, classes, key = _setup(model, x, method, targets, layer, samples, key, explain_options)
    r = _stability(model.tapped.plain, fn, "uniform", int(samples), float(radius), model.params, x, classes, key)
    return Sensitivity(r.max(axis=0), r.mean(axis=0))


def max_sensitivity(model, x, method: str = "gradcam", targets=None, **options) -> jax.Array:
    """The ``max_sensitivity`` metric (N,): the ``max`` of :func:`sensitivity` (lower is more stable)."""
    return sensitivity(model, x, method, targets, **options).max


def avg_sensitivity(model, x, method: str = "gradcam", targets=None, **options) -> jax.Array:
    """The ``avg_sensitivity`` metric (N,): the ``avg`` of :func:`sensitivity` (lower is more stable)."""
    return sensitivity(model, x, method, targets, **options).avg


def local_lipschitz(model, x, method: str = "gradcam", targets=None, *, layer=None, std: float = 0.1,
                    samples: int = 10, key=0, **explain_options) -> jax.Array:
    """(N,) local Lipschitz estimate of ``method``'s maps; lower is more stable."""
    if std <= 0:
        raise InvalidArgumentError(f"std must be > 0, got {std!r}")
    fn, x, classes, key = _setup(model, x, method, targets, layer, samples, key, explain_options)
    r = _stability(model.tapped.plain, fn, "gaussian", int(samples), float(std), model.params, x, classes, key)
    return r.max(axis=0)
