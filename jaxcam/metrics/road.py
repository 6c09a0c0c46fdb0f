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
import numpy as np

from ..errors import InvalidArgumentError, UnknownNameError
from ..keys import as_key

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
_OFFSETS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
            ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def _neighbour_sum(v):
    """sum over in-image 8-neighbours of weight * v, for (H, W, C) arrays (zero outside the image)."""
    h, w = v.shape[:2]
    pad = jnp.pad(v, ((1, 1), (1, 1), (0, 0)))
    return sum(wt * pad[1 + di:1 + di + h, 1 + dj:1 + dj + w] for (di, dj), wt in _OFFSETS)


def impute(img, keep, noise: float | tuple = 0.0, key=None, maxiter: int = 2000, tol: float = 1e-7):
    """Noisy linear imputation of the pixels where ``keep`` (H, W) is False, for one (H, W, C) image."""
    u = (~keep).astype(img.dtype)[..., None]
    valid = _neighbour_sum(jnp.ones_like(img[..., :1]))
    b = u * _neighbour_sum(img * (1 - u))

    def operator(x):
        return u * (valid * x - _neighbour_sum(u * x)) + (1 - u) * x

    # start from the mean of the known pixels; with none known the system is singular (any constant solves it) and
    # the start, 0, is kept: pytorch-grad-cam's spsolve returns 0 there too
    known = jnp.maximum(jnp.sum(1 - u), 1.0)
    x0 = u * jnp.sum(img * (1 - u), axis=(0, 1), keepdims=True) / known
    x, _ = jax.scipy.sparse.linalg.cg(operator, b, x0=x0, tol=tol, maxiter=maxiter)
    scale = jnp.asarray(noise, img.dtype)
    if scale.ndim:  # one noise level per channel
        scale = scale.reshape(1, 1, -1)
    if np.any(np.asarray(noise)):
        x = x + scale * jax.random.normal(key, img.shape, img.dtype)
    return jnp.where(u > 0, x, img)


def _keep_mask(cam, percentile, most_relevant_first: bool):
    m = cam if most_relevant_first else 1 - cam
    return m < jnp.percentile(m, percentile)


def road_scores(forward, score, x, cams, cls, percentiles=PERCENTILES, most_relevant_first: bool = True,
                noise: float = 0.0, key=None, batch_size: int = 16, sequential: bool | None = None):
    """(N,) mean over ``percentiles`` of ``target(f(imputed)) - target(f(x))``: ROAD MoRF or LeRF averaged.

    The (image, percentile) imputations run in chunks of ``batch_size``, each chunk's imputed images scored by one
    batched forward. Within a chunk the imputations run one after another (``sequential``, the default on CPU: each
    conjugate-gradient solve stops at its own convergence instead of the slowest one's) or vmapped (accelerators).
    """
    n, n_p = x.shape[0], len(percentiles)
    key = jax.random.key(0) if key is None else key
    sequential = jax.default_backend() == "cpu" if sequential is None else sequential
    base = jax.vmap(score)(forward(x), cls)
    pct = jnp.asarray(percentiles, x.dtype)
    keys = jax.random.split(key, (n, n_p))
    total = n * n_p
    b = min(batch_size, total)
    chunks = -(-total // b)

    # jobs percentile-major: a chunk holds one percentile's images, whose solves take similar iteration counts
    def impute_one(k):
        p, i = k // n, k % n
        return impute(x[i], _keep_mask(cams[i], pct[p], most_relevant_first), noise, keys[i, p])

    def chunk(ks):
        imgs = jax.lax.map(impute_one, ks) if sequential else jax.vmap(impute_one)(ks)
        return jax.vmap(score)(forward(imgs), cls[ks % n])

    idx = (jnp.arange(chunks * b) % total).reshape(chunks, b)  # the last chunk wraps round: no ragged shapes
    after = jax.lax.map(chunk, idx).reshape(-1)[:total]
    return after.reshape(n_p, n).mean(axis=0) - base


def road_combined_scores(forward, score, x, cams, cls, percentiles=PERCENTILES, noise: float = 0.0, key=None,
                         batch_size: int = 16):
    """pytorch-grad-cam's ``ROADCombined``: (LeRF average - MoRF average) / 2, per image."""
    k1, k2 = jax.random.split(jax.random.key(0) if key is None else key)
    lerf = road_scores(forward, score, x, cams, cls, percentiles, False, noise, k1, batch_size)
    morf = road_scores(forward, score, x, cams, cls, percentiles, True, noise, k2, batch_size)
    return (lerf - morf) / 2


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
    noise = tuple(float(noise) / s for s in model.arch.std) if space == "pixel" else float(noise)
    key = as_key(key)
    return _road_program(model.forward_fn.func, targets_mod.resolve(target), which, tuple(percentiles),
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
