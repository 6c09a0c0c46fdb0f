"""ROAD: Remove And Debias (Rong et al., ICML 2022), pytorch-grad-cam 1.5.7's variant, jit-able.

Noisy linear imputation: every removed pixel equals the weighted mean of its in-image 8-neighbours (1/6 for edge
neighbours, 1/12 for diagonal ones, the weights renormalised where neighbours fall outside the image), known pixels
fixed. The reference solves that sparse system per image with ``scipy.sparse.linalg.spsolve`` on the CPU; here it
is solved matrix-free by conjugate gradients (the system is symmetric positive semi-definite), vmapped over images
and percentiles inside one program. Noise ``noise * N(0, 1)`` is added to the imputed pixels from an explicit key
(the reference's noise is unseeded; compare with ``noise=0``). The official ROAD code imputes the un-normalised
[0, 1] image, pytorch-grad-cam the normalised tensor; the imputation itself is the same either way (each removed
pixel is a weighted mean, which commutes with the per-channel affine normalisation), so the two differ only in the
units of the noise: ``space="pixel"`` (default, the official code) draws it in pixel units, i.e. ``noise / std`` per
channel of the normalised input; ``space="normalised"`` is pytorch-grad-cam's.

``RemoveMostRelevantFirst(p)`` keeps the pixels whose map value is below the p-th percentile and imputes the rest
(so MoRF at p removes the top ``100 - p`` %); least-relevant-first applies the same to ``1 - map``. Each score is
``target(f(x_imputed)) - target(f(x))``; the averaged variants average over ``percentiles`` and
``combined = (LeRF - MoRF) / 2``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..errors import InvalidArgumentError, UnknownNameError
from ..imputation import PERCENTILES, impute, road_combined_scores, road_scores  # noqa: F401 - re-exported
from ..keys import as_key

def road(model, x, cams, targets=None, *, which: str = "combined", percentiles=PERCENTILES, noise: float = 0.01,
         key=0, target="probability", batch_size: int | None = None, space: str = "pixel"):
    """ROAD scores (N,) of maps ``cams`` (N, H, W) in [0, 1] for a preprocessed batch ``x`` under ``model``.

    ``which``: "combined", "morf" or "lerf" (the averaged variants; one percentile gives pytorch-grad-cam's
    single-threshold classes). ``target``: the score the change is measured in (default: the softmax
    probability, as pytorch-grad-cam's examples use). ``targets``: None (predicted classes) or class indices.
    ``batch_size``: imputed images per forward (default 8 on CPU, 64 on accelerators).
    ``space``: the units of ``noise`` ("pixel": the official ROAD code; "normalised": pytorch-grad-cam's).
    Matches pytorch-grad-cam 1.5.7 with ``noise=0`` (or with its noise, ``space="normalised"``).
    """
    from .. import targets as targets_mod
    from .inputs import default_batch_size, model_inputs

    if which not in ("combined", "morf", "lerf"):
        raise UnknownNameError(which, ("combined", "morf", "lerf"), "ROAD variant")
    if not percentiles or not all(0 < p < 100 for p in percentiles):
        raise InvalidArgumentError(f"percentiles must be a non-empty sequence of values in (0, 100), got {percentiles!r}")
    if space not in ("pixel", "normalised"):
        raise UnknownNameError(space, ("pixel", "normalised"), "ROAD noise space")
    x, cams, classes = model_inputs(model, x, cams, targets)
    noise = tuple(float(noise) / s for s in model.std) if space == "pixel" else float(noise)
    key = as_key(key)
    return _road_program(model.tapped.plain, targets_mod.resolve(target), which, tuple(percentiles),
                         noise, default_batch_size(batch_size))(model.params, x, cams, classes, key)


def road_combined(model, x, cams, targets=None, **options) -> jax.Array:
    """The ``road_combined`` metric (N,): :func:`road` with ``which="combined"`` (higher is better)."""
    return road(model, x, cams, targets, which="combined", **options)


def road_morf(model, x, cams, targets=None, **options) -> jax.Array:
    """The ``road_morf`` metric (N,): :func:`road` with ``which="morf"`` (most relevant first; lower is better)."""
    return road(model, x, cams, targets, which="morf", **options)


def road_lerf(model, x, cams, targets=None, **options) -> jax.Array:
    """The ``road_lerf`` metric (N,): :func:`road` with ``which="lerf"`` (least relevant first; higher is better)."""
    return road(model, x, cams, targets, which="lerf", **options)


_PROGRAMS: dict = {}


def _road_program(stage_range, score, which, percentiles, noise, batch_size):
    cache_key = (stage_range, score, which, percentiles, noise, batch_size)
    if cache_key not in _PROGRAMS:
        def run(params, x, cams, classes, key):
            forward = jax.tree_util.Partial(stage_range, params)
            cls = jnp.argmax(forward(x), -1) if classes is None else classes
            if which == "combined":
                return road_combined_scores(forward, score, x, cams, cls, percentiles, noise, key, batch_size)
            return road_scores(forward, score, x, cams, cls, percentiles, which == "morf", noise, key, batch_size)
        _PROGRAMS[cache_key] = jax.jit(run)
    return _PROGRAMS[cache_key]
