"""ROAD: Remove And Debias (Rong et al., ICML 2022), pytorch-grad-cam 1.5.7's variant, jit-able.

Noisy linear imputation: every removed pixel equals the weighted mean of its in-image 8-neighbours (1/6 for edge
neighbours, 1/12 for diagonal ones, the weights renormalised where neighbours fall outside the image), known pixels
fixed. The reference solves that sparse system per image with ``scipy.sparse.linalg.spsolve`` on the CPU; here it
is solved matrix-free by conjugate gradients (the system is symmetric positive semi-definite), vmapped over images
and percentiles inside one program. Noise ``noise * N(0, 1)`` is added to the imputed pixels from an explicit key
(the reference's noise is unseeded; compare with ``noise=0``).

``RemoveMostRelevantFirst(p)`` keeps the pixels whose map value is below the p-th percentile and imputes the rest
(so MoRF at p removes the top ``100 - p`` %); least-relevant-first applies the same to ``1 - map``. Each score is
``target(f(x_imputed)) - target(f(x))``; the averaged variants average over ``percentiles`` and
``combined = (LeRF - MoRF) / 2``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
_OFFSETS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
            ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def _neighbour_sum(v):
    """sum over in-image 8-neighbours of weight * v, for (H, W, C) arrays (zero outside the image)."""
    h, w = v.shape[:2]
    pad = jnp.pad(v, ((1, 1), (1, 1), (0, 0)))
    return sum(wt * pad[1 + di:1 + di + h, 1 + dj:1 + dj + w] for (di, dj), wt in _OFFSETS)


def impute(img, keep, noise: float = 0.0, key=None, maxiter: int = 2000, tol: float = 1e-7):
    """Noisy linear imputation of the pixels where ``keep`` (H, W) is False, for one (H, W, C) image."""
    u = (~keep).astype(img.dtype)[..., None]
    valid = _neighbour_sum(jnp.ones_like(img[..., :1]))
    b = u * _neighbour_sum(img * (1 - u))

    def operator(x):
        return u * (valid * x - _neighbour_sum(u * x)) + (1 - u) * x

    x, _ = jax.scipy.sparse.linalg.cg(operator, b, x0=u * img.mean(axis=(0, 1), keepdims=True), tol=tol,
                                      maxiter=maxiter)
    if noise:
        x = x + noise * jax.random.normal(key, img.shape, img.dtype)
    return jnp.where(u > 0, x, img)


def _keep_mask(cam, percentile, most_relevant_first: bool):
    m = cam if most_relevant_first else 1 - cam
    return m < jnp.percentile(m, percentile)


def road_scores(forward, score, x, cams, cls, percentiles=PERCENTILES, most_relevant_first: bool = True,
                noise: float = 0.0, key=None, batch_size: int = 16):
    """(N,) mean over ``percentiles`` of ``target(f(imputed)) - target(f(x))``: ROAD MoRF or LeRF averaged."""
    n = x.shape[0]
    key = jax.random.key(0) if key is None else key
    base = jax.vmap(score)(forward(x), cls)
    pct = jnp.asarray(percentiles, x.dtype)
    keys = jax.random.split(key, (n, len(percentiles)))

    def one(i_p):
        i, p = i_p // len(percentiles), i_p % len(percentiles)
        keep = _keep_mask(cams[i], pct[p], most_relevant_first)
        xi = impute(x[i], keep, noise, keys[i, p])
        return score(forward(xi[None])[0], cls[i])

    after = jax.lax.map(one, jnp.arange(n * len(percentiles)), batch_size=batch_size)
    return after.reshape(n, len(percentiles)).mean(axis=1) - base


def road_combined(forward, score, x, cams, cls, percentiles=PERCENTILES, noise: float = 0.0, key=None,
                  batch_size: int = 16):
    """pytorch-grad-cam's ``ROADCombined``: (LeRF average - MoRF average) / 2, per image."""
    k1, k2 = jax.random.split(jax.random.key(0) if key is None else key)
    lerf = road_scores(forward, score, x, cams, cls, percentiles, False, noise, k1, batch_size)
    morf = road_scores(forward, score, x, cams, cls, percentiles, True, noise, k2, batch_size)
    return (lerf - morf) / 2


def road(model, x, cams, targets=None, *, which: str = "combined", percentiles=PERCENTILES, noise: float = 0.01,
         key=0, target="probability", batch_size: int = 16):
    """ROAD scores (N,) of maps ``cams`` (N, H, W) in [0, 1] for a preprocessed batch ``x`` under ``model``.

    ``which``: "combined", "morf" or "lerf" (the averaged variants; one percentile gives pytorch-grad-cam's
    single-threshold classes). ``target``: the score the change is measured in (default: the softmax
    probability, as pytorch-grad-cam's examples use). ``targets``: None (predicted classes) or class indices.
    Matches pytorch-grad-cam 1.5.7 with ``noise=0``.
    """
    from .. import targets as targets_mod

    if which not in ("combined", "morf", "lerf"):
        raise ValueError(f"unknown ROAD variant {which!r}; valid: 'combined', 'morf', 'lerf'")
    x = model.check_input(x)
    cams = jnp.asarray(cams, jnp.float32)
    if cams.shape != x.shape[:3]:
        raise ValueError(f"cams must have shape {tuple(x.shape[:3])} (one map per image at input size), "
                         f"got {tuple(cams.shape)}")
    classes = targets_mod.class_indices(targets, x.shape[0], model.num_classes)
    key = jax.random.key(key) if isinstance(key, int) else key
    return _road_program(model.forward_fn.func, targets_mod.resolve(target), which, tuple(percentiles),
                         float(noise), batch_size)(model.params, x, cams, classes, key)


_PROGRAMS: dict = {}


def _road_program(stage_range, score, which, percentiles, noise, batch_size):
    cache_key = (stage_range, score, which, percentiles, noise, batch_size)
    if cache_key not in _PROGRAMS:
        def run(params, x, cams, classes, key):
            forward = jax.tree_util.Partial(stage_range, params)
            cls = jnp.argmax(forward(x), -1) if classes is None else classes
            if which == "combined":
                return road_combined(forward, score, x, cams, cls, percentiles, noise, key, batch_size)
            return road_scores(forward, score, x, cams, cls, percentiles, which == "morf", noise, key, batch_size)
        _PROGRAMS[cache_key] = jax.jit(run)
    return _PROGRAMS[cache_key]
