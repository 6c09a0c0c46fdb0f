"""Noise robustness of CAMs: RM = Consistency x Responsiveness over Quickshift regions ranked by RBO.

Paper: Sarkar, Bora, Kaushal, George & Raja, the noise-robustness metric RM (arXiv 2508.18154; Image and Vision
Computing 163, art. 105717, 2025). Confirmed from the paper: RM is the product of
*Consistency* (the CAM stays stable under perturbations that do not change the prediction) and *Responsiveness*
(it changes when the prediction changes); images are segmented with Quickshift; the similarity is Rank-Biased
Overlap. Everything else here is our reconstruction (``reference/methods.md`` section 1, marked **[ours]**) and
must be checked against Sec. 3-4 of the paper before a number is called paper-faithful:

1. ``S_n = quickshift(x_n)`` on the clean image only, reused for every perturbed copy **[ours]**; Quickshift with
   LIME's parameters ``kernel_size=4, max_dist=200, ratio=0.2`` **[ours]** (:func:`quickshift_regions`).
2. Region importance ``r_j = mean_{q in s_j} L(q)`` (``reduce="sum"`` as the alternative) **[ours]**, ranking
   ``pi = argsort(-r)``, ties broken by region index **[ours]** (:func:`region_scores`).
3. ``rho = RBO_ext(pi, pi'; p)``, extrapolated RBO (Webber, Moffat & Zobel 2010, eq. 32) with ``p = 0.9``
   **[ours]** (:func:`rbo`, :func:`rbo_regions`).
4. ``C = mean_{U} rho`` over pairs whose prediction did not change, ``Rsp = mean_{Delta} (1 - rho)`` over pairs
   whose prediction changed **[ours: form of each term]**, ``RM = C * Rsp`` (confirmed: product), pooled over the
   data set per (model, CAM, noise, severity) **[ours]**; an empty set gives NaN, never 0 or 1 (:func:`summarise`,
   :func:`summary_table`).

The similarity is pluggable (:data:`ROBUSTNESS_SIMILARITIES`): every entry is a per-example
``f(cam_clean, cam_noisy, labels, m, **options) -> scalar`` (jit- and vmap-able with static options), so one
compiled program can evaluate any of them; :func:`robustness_similarity` is the batched wrapper.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import (ImageDtypeError, ImageError, ImageShapeError, InvalidArgumentError,
                      MapError, NonFiniteImageError, UnknownNameError)
from ..table import Table
from .similarity import _batched, normalised_l1, pearson, spearman, ssim, topk_iou
from .statistics import StatisticsError, _as_key, _column, _indices

__all__ = [
    "COMBINE", "DEFAULT_P", "ROBUSTNESS_SIMILARITIES", "quickshift_regions", "rbo", "rbo_regions", "region_scores",
    "robustness_similarity", "summarise", "summary_table",
]

DEFAULT_P = 0.9  # RBO persistence [ours]: expected evaluation depth 1 / (1 - p) = 10 regions
_REDUCE = ("mean", "sum")


# -- segmentation (host side) -------------------------------------------------------------------------------------

def quickshift_regions(images, *, kernel_size: float = 4, max_dist: float = 200, ratio: float = 0.2,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Quickshift superpixels of each clean image: ``(labels (N, H, W) int32, counts (N,) int32)``.

    ``images``: (N, H, W, 3) RGB floats in [0, 1] (the un-normalised pixels, before the model's mean/std).
    Runs ``skimage.segmentation.quickshift(image, ratio=ratio, kernel_size=kernel_size, max_dist=max_dist,
    rng=seed)`` (CIELAB conversion on, skimage's default) on the host, outside jit, once per image; the result is
    reused for every perturbed copy of that image (methods.md 1.2 step 2, **[ours]**). The defaults are LIME's
    (``lime_image``: ``kernel_size=4, max_dist=200, ratio=0.2``), the convention methods.md adopts because the
    paper's settings could not be read **[ours]**; ``seed`` feeds Quickshift's tie-breaking noise.

    Labels are renumbered ``0 .. m_n - 1`` in order of first occurrence in raster (row-major) order, so the
    result depends only on the partition and is deterministic; ``counts[n] = m_n`` is the number of regions of
    image n (report it). Pass ``labels[n]`` and ``counts[n]`` to the similarities, with a static
    ``num_regions >= max(counts)``.
    """
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3 or 0 in x.shape:
        hint = "; for one image pass images[None]" if x.ndim == 3 else ""
        raise ImageShapeError(f"quickshift_regions takes a non-empty (N, H, W, 3) batch of RGB images, got shape "
                              f"{x.shape}{hint}")
    if x.dtype.kind != "f":
        raise ImageDtypeError(f"quickshift_regions takes float images in [0, 1], got dtype {x.dtype}"
                              + ("; divide uint8 images by 255" if x.dtype == np.uint8 else ""))
    bad = ~np.isfinite(x).all(axis=(1, 2, 3))
    if bad.any():
        raise NonFiniteImageError(f"quickshift_regions: image(s) {np.flatnonzero(bad).tolist()} hold NaN or inf")
    out = ((x < 0) | (x > 1)).any(axis=(1, 2, 3))
    if out.any():
        raise ImageError(f"quickshift_regions takes RGB images in [0, 1] (before mean/std normalisation); image(s) "
                         f"{np.flatnonzero(out).tolist()} fall outside, range [{x.min():g}, {x.max():g}]")
    from skimage.segmentation import quickshift

    labels = np.empty(x.shape[:3], np.int32)
    counts = np.empty(x.shape[0], np.int32)
    for n in range(x.shape[0]):
        seg = quickshift(x[n].astype(np.float64), ratio=ratio, kernel_size=kernel_size, max_dist=max_dist,
                         rng=seed)
        labels[n], counts[n] = _relabel(seg)
    return labels, counts


def _relabel(seg: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered 0..m-1 by first raster occurrence."""
    values, first, inverse = np.unique(seg.ravel(), return_index=True, return_inverse=True)
    new = np.empty(values.size, np.int32)
    new[np.argsort(first, kind="stable")] = np.arange(values.size, dtype=np.int32)
    return new[inverse].reshape(seg.shape), int(values.size)


# -- region scores and RBO (per example, in JAX) -----------------------------------------------------------------

def region_scores(cam: jax.Array, labels: jax.Array, num_regions: int, reduce: str = "mean") -> jax.Array:
    """Importance of each region of one map: ``r_j = mean_{q in s_j} cam(q)`` (``reduce="mean"``, the default
    **[ours]**) or ``sum_{q in s_j} cam(q)`` (``"sum"``, which favours large regions); an (M,) array.

    ``cam`` (H, W); ``labels`` (H, W) ints in ``[0, num_regions)``; ``num_regions`` = M is static (shapes), the
    image's real count m <= M may vary (it is passed to :func:`rbo`). Regions without pixels (indices >= m, the
    padding) score 0; :func:`rbo` excludes them from the ranking. Labels outside ``[0, M)`` are dropped
    (``jax.ops.segment_sum``'s rule). One ``segment_sum`` per map; jit/vmap-able.
    """
    if reduce not in _REDUCE:
        raise UnknownNameError(reduce, _REDUCE, "region reduce")
    if not isinstance(num_regions, (int, np.integer)) or num_regions < 1:
        raise InvalidArgumentError(f"num_regions must be a static positive int, got {num_regions!r}")
    cam, labels = jnp.asarray(cam), jnp.asarray(labels)
    if cam.ndim != 2 or labels.shape != cam.shape:
        raise MapError(f"region_scores takes an (H, W) map and (H, W) labels, got shapes {tuple(cam.shape)} and "
                       f"{tuple(labels.shape)}")
    cam = cam.astype(jnp.result_type(cam.dtype, jnp.float32))
    ids = labels.ravel().astype(jnp.int32)
    sums = jax.ops.segment_sum(cam.ravel(), ids, num_segments=int(num_regions))
    if reduce == "sum":
        return sums
    sizes = jax.ops.segment_sum(jnp.ones_like(cam.ravel()), ids, num_segments=int(num_regions))
    return sums / jnp.maximum(sizes, 1)


def _ranks(scores: jax.Array, m: jax.Array) -> jax.Array:
    """0-based rank of each region, real regions (index < m) first by descending score, ties by index; the padded
    regions take the ranks m..M-1. NaN scores rank last among the real regions; -0.0 ties 0.0 (lax.sort)."""
    size = scores.shape[0]
    idx = jnp.arange(size, dtype=jnp.int32)
    padded = (idx >= m).astype(jnp.int32)
    order = jax.lax.sort((padded, -scores, idx), num_keys=3)[2]
    return jnp.zeros(size, jnp.int32).at[order].set(idx)


def rbo(scores_a: jax.Array, scores_b: jax.Array, m, p=DEFAULT_P, depth=None) -> jax.Array:
    """Extrapolated rank-biased overlap of the rankings induced by two score vectors over the first m entries.

    Webber, Moffat & Zobel, "A similarity measure for indefinite rankings", ACM TOIS 28(4), 2010, eq. 32 for two
    rankings of the same m items (methods.md 1.2 step 5). With the rankings ``pi_a = argsort(-scores_a)`` and
    ``pi_b`` (descending, ties broken by the lower index first: a stable sort), ``X_d = |pi_a[:d] & pi_b[:d]|``
    and ``A_d = X_d / d``::

        RBO_ext@k = A_k p^k + (1 - p)/p * sum_{d=1}^{k} A_d p^d,      k = min(depth, m)  (depth=None: k = m)

    computed as ``1 - [(1 - A_k) p^k + (1 - p)/p * sum_{d<=k} (1 - A_d) p^d]`` (the weights sum to 1), so
    identical rankings give exactly 1; in [0, 1]. ``depth=k`` evaluates RBO_ext *at depth k*: only the top-k
    prefixes are seen and the agreement ``A_k`` is assumed to hold for every depth beyond k (the paper's
    extrapolation), i.e. RBO_ext of the two top-k lists; equal to ``rbo.RankingSimilarity(a[:k], b[:k])
    .rbo_ext(p)`` and ``.rbo(k, p, ext=True)`` of the ``rbo`` package. With k = m the full rankings are compared
    (for two complete rankings of the same items ``A_m = 1``, so the tail adds ``p^m``).

    ``scores_a``, ``scores_b``: (M,) with M static; ``m``: the number of real items (traced int, clipped to
    [0, M]); entries ``m..M-1`` are padding and are excluded whatever their scores. ``p`` in (0, 1) (default 0.9
    **[ours]**: expected depth 1/(1-p) = 10); ``p`` and ``depth`` may be traced. ``m = 0`` (or k < 1) gives NaN.
    Cost: one sort per ranking (O(M log M)) and a histogram of ``max(rank_a, rank_b)`` whose cumulative sum is
    ``X_d``; jit- and vmap-able.
    """
    a, b = jnp.asarray(scores_a), jnp.asarray(scores_b)
    if a.ndim != 1 or a.shape != b.shape or a.shape[0] == 0:
        raise MapError(f"rbo takes two non-empty (M,) score vectors of the same shape, got {tuple(a.shape)} and "
                       f"{tuple(b.shape)}")
    if isinstance(p, (int, float, np.floating)) and not 0 < p < 1:
        raise InvalidArgumentError(f"rbo: p must lie in (0, 1), got {p!r}")
    if isinstance(depth, (int, np.integer)) and depth < 1:
        raise InvalidArgumentError(f"rbo: depth must be a positive int or None, got {depth!r}")
    dt = jnp.result_type(a.dtype, b.dtype, jnp.float32)
    a, b = a.astype(dt), b.astype(dt)
    size = a.shape[0]
    m = jnp.clip(jnp.asarray(m, jnp.int32), 0, size)
    k = m if depth is None else jnp.minimum(jnp.asarray(depth, jnp.int32), m)
    both = jnp.maximum(_ranks(a, m), _ranks(b, m))  # item i is in both top-d prefixes iff both < d
    hist = jnp.zeros(size, jnp.int32).at[both].add((jnp.arange(size) < m).astype(jnp.int32))
    x = jnp.cumsum(hist)  # x[d - 1] = X_d
    d = jnp.arange(1, size + 1, dtype=jnp.int32)
    miss = (d - x).astype(dt) / d.astype(dt)  # 1 - A_d, exact 0 where the prefixes agree
    p = jnp.asarray(p, dt)
    weights = (1 - p) * p ** (d - 1).astype(dt)
    loss = jnp.sum(jnp.where(d <= k, weights * miss, 0)) + p ** k.astype(dt) * jnp.sum(jnp.where(d == k, miss, 0))
    return jnp.where(k >= 1, 1 - loss, jnp.nan).astype(dt)


# -- per-example similarities with one signature ------------------------------------------------------------------

def rbo_regions(cam_clean: jax.Array, cam_noisy: jax.Array, labels: jax.Array, m, *, num_regions: int | None = None,
                p=DEFAULT_P, depth=None, reduce: str = "mean") -> jax.Array:
    """The default robustness similarity: ``RBO_ext`` (:func:`rbo`) of the region rankings of the clean and the
    perturbed map over the clean image's regions ``labels`` (m real regions). ``num_regions`` (static, >= m;
    default ``H * W``, always enough but slow: pass ``max(counts)`` or let :func:`robustness_similarity` do it)."""
    cam_clean, cam_noisy = jnp.asarray(cam_clean), jnp.asarray(cam_noisy)
    size = int(np.prod(cam_clean.shape)) if num_regions is None else num_regions
    ra = region_scores(cam_clean, labels, size, reduce)
    rb = region_scores(cam_noisy, labels, size, reduce)
    return rbo(ra, rb, m, p=p, depth=depth)


def _pixel_similarity(fn: Callable, name: str, doc: str) -> Callable:
    def pixel(cam_clean, cam_noisy, labels, m, **options):
        return fn(cam_clean, cam_noisy, **options)

    pixel.__name__ = pixel.__qualname__ = name
    pixel.__doc__ = doc
    return pixel


def _one_minus_normalised_l1(cam_clean, cam_noisy, labels, m):
    """``1 - normalised_l1(a, b)``: the normalised L1 distance (:func:`jaxcam.metrics.normalised_l1`, in [0, 1])
    turned into a similarity in [0, 1] (1 = maps equal up to a positive affine change)."""
    return 1 - normalised_l1(cam_clean, cam_noisy)


ROBUSTNESS_SIMILARITIES: dict[str, Callable] = {
    "rbo": rbo_regions,
    "spearman": _pixel_similarity(spearman, "spearman", "Spearman rank correlation of the pixels "
                                  "(:func:`jaxcam.metrics.spearman`), in [-1, 1]; labels and m unused."),
    "pearson": _pixel_similarity(pearson, "pearson", "Pearson correlation of the pixels "
                                 "(:func:`jaxcam.metrics.pearson`), in [-1, 1]; labels and m unused."),
    "ssim": _pixel_similarity(ssim, "ssim", "Mean SSIM of the two maps (:func:`jaxcam.metrics.ssim`); labels and "
                              "m unused."),
    "topk_iou": _pixel_similarity(topk_iou, "topk_iou", "IoU of the top-fraction pixels "
                                  "(:func:`jaxcam.metrics.topk_iou`), in [0, 1]; labels and m unused."),
    "normalised_l1": _one_minus_normalised_l1,
}
"""Per-example ``f(cam_clean, cam_noisy, labels, m, **options) -> scalar``, higher = more similar. ``"rbo"`` (the
default) ranks regions; the rest compare pixels and ignore ``labels``/``m``; ``"normalised_l1"`` is ``1 - d``.
For similarities that can be negative (Spearman, Pearson, SSIM) ``1 - rho`` exceeds 1, so Rsp and RM leave [0, 1]."""


def resolve(name_or_fn) -> Callable:
    """A registered robustness similarity by name, or a callable with the uniform signature passed through."""
    if callable(name_or_fn):
        return name_or_fn
    if isinstance(name_or_fn, str) and name_or_fn in ROBUSTNESS_SIMILARITIES:
        return ROBUSTNESS_SIMILARITIES[name_or_fn]
    raise UnknownNameError(name_or_fn, ROBUSTNESS_SIMILARITIES, "robustness similarity")


def _hashable(v):
    return tuple(_hashable(x) for x in v) if isinstance(v, (list, tuple)) else v


def robustness_similarity(name_or_fn: str | Callable, cams_clean, cams_noisy, labels, counts, *,
                          batch_size: int | None = None, **options) -> jax.Array:
    """``rho[i] = f(cams_clean[i], cams_noisy[i], labels[i], counts[i], **options)`` for (N, H, W) stacks: one
    jit-compiled vmap (``lax.map`` chunks of ``batch_size``) per (function, options, shapes).

    ``labels`` (N, H, W) and ``counts`` (N,) from :func:`quickshift_regions` (index them by image when several
    perturbed copies share one clean image). For a function with a ``num_regions`` option (``"rbo"``) left unset,
    it is ``max(counts)`` rounded up to a multiple of 64, so similar batches share one compilation (padding never
    changes the value). Raises MapError for bad shapes, NaN/inf maps, or labels outside ``[0, counts[i])``.
    """
    fn = resolve(name_or_fn)
    a, b = np.asarray(cams_clean), np.asarray(cams_noisy)
    lab, cnt = np.asarray(labels), np.asarray(counts)
    if a.ndim != 3 or a.shape != b.shape or a.shape[0] == 0 or lab.shape != a.shape or cnt.shape != a.shape[:1]:
        raise MapError(f"robustness_similarity takes (N, H, W) clean and noisy maps, (N, H, W) labels and (N,) "
                       f"counts, got {a.shape}, {b.shape}, {lab.shape}, {cnt.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise MapError("robustness_similarity: the maps hold NaN or infinite values")
    if lab.dtype.kind not in "iu" or cnt.dtype.kind not in "iu":
        raise MapError(f"labels and counts must be integers, got {lab.dtype} and {cnt.dtype}")
    bad = (lab.min(axis=(1, 2)) < 0) | (lab.max(axis=(1, 2)) >= cnt)
    if bad.any():
        raise MapError(f"labels of pair(s) {np.flatnonzero(bad).tolist()[:10]} fall outside [0, counts[i])")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise InvalidArgumentError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if "num_regions" in _parameters(fn) and options.get("num_regions") is None:
        options["num_regions"] = int(64 * math.ceil(int(cnt.max()) / 64))
    dt = np.result_type(a.dtype, np.float32)
    kw = tuple(sorted((k, _hashable(v)) for k, v in options.items()))
    return _batched(fn, kw, batch_size)(a.astype(dt), b.astype(dt), lab.astype(np.int32), cnt.astype(np.int32))


def _parameters(fn) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()


# -- Consistency, Responsiveness, RM ------------------------------------------------------------------------------

def _harmonic(c, r):
    c, r = np.asarray(c, float), np.asarray(r, float)
    s = c + r
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(s == 0, 0.0, 2 * c * r / np.where(s == 0, 1.0, s))


COMBINE: dict[str, Callable] = {"product": lambda c, r: np.asarray(c, float) * np.asarray(r, float),
                                "harmonic": _harmonic}
"""``RM = combine(C, Rsp)``: ``"product"`` (``C * Rsp``, the paper's), ``"harmonic"`` (``2 C Rsp / (C + Rsp)``,
0 when both are 0) **[ours: alternative]**."""


def _combine(combine) -> Callable:
    if callable(combine):
        return combine
    if isinstance(combine, str) and combine in COMBINE:
        return COMBINE[combine]
    raise UnknownNameError(combine, COMBINE, "RM combine")


def _boot_means(x: np.ndarray, key, n_resamples: int) -> np.ndarray:
    """Means of ``n_resamples`` resamples of ``x``: the index stream of :func:`~jaxcam.metrics.bootstrap_ci` under
    ``key`` (so the percentile interval equals ``bootstrap_ci(x, key)``'s), in chunks of at most 2**22 indices."""
    n = x.size
    chunk = max(1, 2 ** 22 // n)
    return np.concatenate([x[_indices(key, n, s, min(s + chunk, n_resamples))].mean(axis=1)
                           for s in range(0, n_resamples, chunk)])


def summarise(rho, changed, *, combine: str | Callable = "product", key=None, n_resamples: int = 1000,
              confidence: float = 0.95) -> dict:
    """Consistency, Responsiveness and RM of a set of (clean, perturbed) pairs.

    ``rho`` (P,): the similarity of each pair's clean and perturbed maps; ``changed`` (P,) bools: whether the
    prediction on the perturbed input differs from the clean one. With U the unchanged and Delta the changed pairs::

        C = mean_{U} rho,    Rsp = mean_{Delta} (1 - rho),    RM = combine(C, Rsp)  (default C * Rsp)

    (methods.md 1.2 steps 6-9: the product is the paper's; the form of C and Rsp and the pooling are **[ours]**).
    An empty U gives C = NaN, an empty Delta Rsp = NaN, and either makes RM NaN, never 0 or 1; the counts are
    always reported. NaN ``rho`` values are dropped and counted (``n_nan``), as in ``bootstrap_ci``.

    ``combine``: ``"product"``, ``"harmonic"`` or a callable ``f(C, Rsp)`` that also works elementwise on NumPy
    arrays (it is applied to the bootstrap replicates). ``key`` (a jax.random key or int seed): when given, adds
    percentile bootstrap intervals at ``confidence``: C resamples U with ``fold_in(key, 0)``, Rsp resamples Delta
    with ``fold_in(key, 1)`` (each interval equals ``bootstrap_ci`` on that set with that key), and RM combines
    the b-th replicates of the two independent resamplings. Deterministic per key.

    Returns a dict: ``n_unchanged, n_changed, n_nan, consistency, responsiveness, rm`` and, with a key,
    ``consistency_low, consistency_high, responsiveness_low, responsiveness_high, rm_low, rm_high``.
    """
    r = np.asarray(rho, dtype=float)
    ch = np.asarray(changed)
    if r.ndim != 1 or ch.shape != r.shape:
        raise StatisticsError(f"rho and changed must be 1-D of the same length, got shapes {r.shape} and {ch.shape}")
    if ch.dtype != bool:
        if ch.dtype.kind not in "iuf" or not np.isin(ch, (0, 1)).all():
            raise StatisticsError(f"changed must hold booleans (or 0/1), got dtype {ch.dtype}")
        ch = ch.astype(bool)
    f = _combine(combine)
    nan = np.isnan(r)
    u, d = r[~ch & ~nan], 1 - r[ch & ~nan]
    c = float(u.mean()) if u.size else math.nan
    rsp = float(d.mean()) if d.size else math.nan
    rm = float(f(c, rsp)) if u.size and d.size else math.nan
    out = dict(n_unchanged=int(u.size), n_changed=int(d.size), n_nan=int(nan.sum()), consistency=c,
               responsiveness=rsp, rm=rm)
    if key is None:
        return out
    if not 0 < confidence < 1:
        raise StatisticsError(f"confidence must lie in (0, 1), got {confidence!r}")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise StatisticsError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    key = _as_key(key)
    tail = (1 - confidence) / 2
    levels = np.array([tail, 1 - tail])
    boot_c = _boot_means(u, jax.random.fold_in(key, 0), int(n_resamples)) if u.size else None
    boot_r = _boot_means(d, jax.random.fold_in(key, 1), int(n_resamples)) if d.size else None
    boot_rm = None
    if boot_c is not None and boot_r is not None:
        boot_rm = np.asarray(f(boot_c, boot_r), dtype=float)
        if boot_rm.shape != boot_c.shape:
            raise StatisticsError(f"combine must work elementwise on arrays: it returned shape {boot_rm.shape} "
                                  f"for inputs of shape {boot_c.shape}")
    for name, boot in (("consistency", boot_c), ("responsiveness", boot_r), ("rm", boot_rm)):
        low, high = (math.nan, math.nan) if boot is None else (float(q) for q in np.quantile(boot, levels))
        out[f"{name}_low"], out[f"{name}_high"] = low, high
    return out


def summary_table(table: Table, by: str | Sequence[str] = ("method", "noise", "severity"), *,
                  similarity_column: str = "rho", changed_column: str = "changed",
                  combine: str | Callable = "product", key=None, n_resamples: int = 1000,
                  confidence: float = 0.95) -> Table:
    """:func:`summarise` per group of the ``by`` columns of a tidy table of pairs (one row per (image, perturbation,
    draw) pair, pooled per group as methods.md 1.2 step 9 **[ours]**): one row per group, in first-seen order.

    Columns: the ``by`` columns, ``n_unchanged, n_changed, n_nan, consistency, responsiveness, rm`` and, when
    ``key`` is given, the interval bounds ``*_low``/``*_high``; group ``i`` uses ``jax.random.fold_in(key, i)``.
    """
    by = [by] if isinstance(by, str) else list(by)
    if not by:
        raise StatisticsError("summary_table needs at least one `by` column")
    cols = [_column(table, c, "by").tolist() for c in by]
    rho = _column(table, similarity_column, "similarity")
    changed = _column(table, changed_column, "changed")
    key = None if key is None else _as_key(key)
    groups: dict[tuple, list[int]] = {}
    for i, g in enumerate(zip(*cols)):
        groups.setdefault(g, []).append(i)
    rows = []
    for gi, (g, idx) in enumerate(groups.items()):
        res = summarise(np.asarray(rho[idx], float), np.asarray(changed[idx].tolist()), combine=combine,
                        key=None if key is None else jax.random.fold_in(key, gi), n_resamples=n_resamples,
                        confidence=confidence)
        rows.append({**dict(zip(by, g)), **res})
    names = ["n_unchanged", "n_changed", "n_nan", "consistency", "responsiveness", "rm"]
    if key is not None:
        names += [f"{s}_{b}" for s in ("consistency", "responsiveness", "rm") for b in ("low", "high")]
    return Table.from_rows(rows, columns=[*by, *names])
