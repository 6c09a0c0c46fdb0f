"""Similarity of two saliency maps: rank and linear correlation, SSIM, HOG correlation, top-k overlap, L1.

Every measure is a pure per-example function ``f(a, b) -> scalar`` of two (H, W) maps of equal shape, written in
jax.numpy (jit-, vmap- and grad-transparent; no host round trips). :func:`similarity` is the batch wrapper: it
vmaps one of them over (N, H, W) stacks under ``jax.jit`` (chunked with ``lax.map`` when ``batch_size`` is given).

These are the measures of Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018; code
adebayoj/sanity_checks_saliency): Spearman rank correlation with and without absolute values, SSIM, and the
correlation of HOG features; and of Quantus' randomisation metrics (MPRT uses Spearman, RandomLogit SSIM).

Degenerate inputs are defined, never a silent NaN: a correlation with a constant map (no rank or linear
information; scipy returns NaN with a warning) is ``constant_value``, 0.0 by default ("no evidence of similarity").
The choice is an argument of every correlation, and :data:`CONSTANT_VALUE` names the default.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InvalidArgumentError, MapError, UnknownNameError

CONSTANT_VALUE = 0.0  # the correlation reported when either map (or HOG vector) is constant
BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")


def _check_pair(a, b, name: str):
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim != 2 or a.shape != b.shape:
        raise MapError(f"{name} compares two (H, W) maps of the same shape, got shapes {tuple(a.shape)} and "
                              f"{tuple(b.shape)}; for (N, H, W) batches use similarity({name!r}, a, b)")
    if a.size < 2:
        raise MapError(f"{name} needs maps of at least 2 pixels, got shape {tuple(a.shape)}")
    dt = jnp.result_type(a.dtype, b.dtype, jnp.float32)
    return a.astype(dt), b.astype(dt)


# -- correlations -------------------------------------------------------------------------------------------------

def ranks(x: jax.Array) -> jax.Array:
    """Average ranks (1-based) of the flattened ``x``: tied values share the mean of the positions they occupy, as
    ``scipy.stats.rankdata(x.ravel(), method="average")``. Exact with ties: one sort and two binary searches
    (``rank = (#{v < x} + #{v <= x} + 1) / 2``)."""
    v = jnp.ravel(x)
    s = jnp.sort(v)
    lo = jnp.searchsorted(s, v, side="left")
    hi = jnp.searchsorted(s, v, side="right")
    return (lo + hi + 1).astype(v.dtype) / 2


def _correlation(xc: jax.Array, yc: jax.Array, degenerate: jax.Array, constant_value: float) -> jax.Array:
    """Pearson's r of two centred vectors, clipped to [-1, 1]; ``constant_value`` where ``degenerate``."""
    sxx = jnp.sum(xc * xc)
    syy = jnp.sum(yc * yc)
    sxy = jnp.sum(xc * yc)
    bad = degenerate | (sxx <= 0) | (syy <= 0)
    den = jnp.where(bad, 1.0, jnp.sqrt(sxx) * jnp.sqrt(syy))
    return jnp.where(bad, jnp.asarray(constant_value, xc.dtype), jnp.clip(sxy / den, -1.0, 1.0))


def _constant(x: jax.Array) -> jax.Array:
    return jnp.max(x) == jnp.min(x)


def _pearson_vectors(x: jax.Array, y: jax.Array, constant_value: float) -> jax.Array:
    x, y = jnp.ravel(x), jnp.ravel(y)
    return _correlation(x - jnp.mean(x), y - jnp.mean(y), _constant(x) | _constant(y), constant_value)


def _spearman_vectors(x: jax.Array, y: jax.Array, constant_value: float) -> jax.Array:
    rx, ry = ranks(x), ranks(y)
    mid = (rx.size + 1) / 2  # the mean of average ranks, exactly: centred ranks are exact half-integers
    return _correlation(rx - mid, ry - mid, _constant(x) | _constant(y), constant_value)


def spearman(a: jax.Array, b: jax.Array, *, constant_value: float = CONSTANT_VALUE) -> jax.Array:
    """Spearman's rank correlation of two maps: Pearson's r of their average ranks over all H*W pixels.

    Equals ``scipy.stats.spearmanr(a.ravel(), b.ravel()).statistic`` (ties get average ranks) to float32 precision.
    If either map is constant scipy returns NaN; here the result is ``constant_value`` (default 0.0: a constant
    map carries no rank information). As in Adebayo et al. and Quantus MPRT (``correlation_spearman``)."""
    a, b = _check_pair(a, b, "spearman")
    return _spearman_vectors(a, b, constant_value)


def spearman_abs(a: jax.Array, b: jax.Array, *, constant_value: float = CONSTANT_VALUE) -> jax.Array:
    """Spearman's rank correlation of ``|a|`` and ``|b|`` (Adebayo et al.'s "absolute value" variant, computed on
    ``|m| / max|m|``, which ranks as ``|m|`` does). For jaxcam's default maps (ReLU + min-max, so in [0, 1]) this is
    identical to :func:`spearman`; it differs for signed maps (``raw=True``, or gradient-style attributions), where
    it ignores the sign and compares importance magnitudes only. Constant ``|a|`` or ``|b|``: ``constant_value``."""
    a, b = _check_pair(a, b, "spearman_abs")
    return _spearman_vectors(jnp.abs(a), jnp.abs(b), constant_value)


def pearson(a: jax.Array, b: jax.Array, *, constant_value: float = CONSTANT_VALUE) -> jax.Array:
    """Pearson's linear correlation of the H*W pixel values, ``sum(a_c b_c) / sqrt(sum a_c^2 sum b_c^2)`` with
    ``x_c = x - mean(x)``, clipped to [-1, 1]; equals ``scipy.stats.pearsonr(a.ravel(), b.ravel()).statistic``
    (Quantus ``correlation_pearson``). A constant map (``max == min``; scipy: NaN) gives ``constant_value``."""
    a, b = _check_pair(a, b, "pearson")
    return _pearson_vectors(a, b, constant_value)


# -- SSIM ---------------------------------------------------------------------------------------------------------

def _valid_filter(stack: jax.Array, k: np.ndarray) -> jax.Array:
    """Correlation of each (H, W) map in ``stack`` (M, H, W) with the 2-D window ``outer(k, k)``, 'valid' part only
    (no padding): what skimage keeps after cropping. One convolution at full float32 precision."""
    window = jnp.asarray(np.outer(k, k), stack.dtype)[:, :, None, None]
    out = jax.lax.conv_general_dilated(stack[:, :, :, None], window, (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       precision=jax.lax.Precision.HIGHEST)
    return out[:, :, :, 0]


def _gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """scipy.ndimage's Gaussian taps: ``exp(-x^2 / (2 sigma^2))`` on ``-radius..radius``, normalised to sum 1."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / sigma ** 2 * t ** 2)
    return phi / phi.sum()


def ssim(a: jax.Array, b: jax.Array, *, data_range: float = 1.0, gaussian_weights: bool = False, sigma: float = 1.5,
         win_size: int | None = None, K1: float = 0.01, K2: float = 0.03,
         use_sample_covariance: bool = True) -> jax.Array:
    """Mean structural similarity (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004) of two maps.

    Local statistics in a sliding window (``w``: uniform ``win_size`` x ``win_size``, default 7; or, with
    ``gaussian_weights=True``, Gaussian weights of ``sigma`` 1.5 truncated at 3.5 sigma, an 11 x 11 window, as Wang
    et al.): ``mu_x = w * x``, ``v_x = c (w * x^2 - mu_x^2)``, ``v_xy = c (w * xy - mu_x mu_y)`` with the sample
    covariance factor ``c = n / (n - 1)``, ``n = win_size^2`` (``c = 1`` if ``use_sample_covariance=False``);
    ``S = (2 mu_x mu_y + C1)(2 v_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(v_x + v_y + C2))``, ``C1 = (K1 L)^2``,
    ``C2 = (K2 L)^2``, ``L = data_range``; the result is the mean of S over the pixels whose window lies inside the
    map (skimage crops ``(win_size - 1) // 2`` pixels at each border).

    Equals ``skimage.metrics.structural_similarity(a, b, data_range=data_range, gaussian_weights=...,
    sigma=..., use_sample_covariance=...)`` (scikit-image 0.26) to float32 precision.

    ``data_range`` defaults to 1.0, the range of jaxcam's [0, 1] maps, as Quantus 0.6 ``ssim`` uses for maps with
    values in [-1, 1] (skimage requires it for float input). Adebayo et al.'s code called skimage 0.14's
    ``compare_ssim(..., gaussian_weights=True)`` without it, which for float images implied ``data_range=2``;
    ``ssim(a, b, data_range=2.0, gaussian_weights=True)`` reproduces that. With ``L > 0`` the constants keep every
    term finite: two identical maps, constant or not, give exactly 1.
    """
    a, b = _check_pair(a, b, "ssim")
    if not data_range > 0:
        raise InvalidArgumentError(f"ssim: data_range must be > 0, got {data_range!r}")
    if gaussian_weights:
        if win_size is not None:
            raise InvalidArgumentError("ssim: with gaussian_weights=True the window is set by sigma (2 * int(3.5 sigma + 0.5) "
                             "+ 1 pixels); leave win_size=None")
        radius = int(3.5 * sigma + 0.5)
        kernel = _gaussian_kernel(sigma, radius)
        win_size = 2 * radius + 1
    else:
        win_size = 7 if win_size is None else int(win_size)
        if win_size < 1 or win_size % 2 != 1:
            raise InvalidArgumentError(f"ssim: win_size must be a positive odd int, got {win_size!r}")
        kernel = np.full(win_size, 1.0 / win_size)
    if min(a.shape) < win_size:
        raise MapError(f"ssim: maps of shape {tuple(a.shape)} are smaller than the {win_size}x{win_size} "
                              "window; use larger maps or a smaller win_size")
    n = win_size ** 2
    cov = n / (n - 1) if use_sample_covariance else 1.0
    ux, uy, uxx, uyy, uxy = _valid_filter(jnp.stack([a, b, a * a, b * b, a * b]), kernel)
    vx = cov * (uxx - ux * ux)
    vy = cov * (uyy - uy * uy)
    vxy = cov * (uxy - ux * uy)
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return jnp.mean(s)


# -- HOG ----------------------------------------------------------------------------------------------------------

def hog(image: jax.Array, orientations: int = 9, pixels_per_cell: tuple[int, int] = (8, 8),
        cells_per_block: tuple[int, int] = (3, 3), block_norm: str = "L2-Hys") -> jax.Array:
    """Histogram of Oriented Gradients of a 2-D map, in JAX: ``skimage.feature.hog(image, orientations,
    pixels_per_cell, cells_per_block, block_norm)`` (scikit-image 0.26, ``transform_sqrt=False``,
    ``feature_vector=True``) to float32 precision, with the same defaults.

    1. Gradients by central differences, ``g_r[i] = x[i+1] - x[i-1]`` (zero on the first and last row; likewise
       columns); magnitude ``hypot(g_r, g_c)``, unsigned orientation ``atan2(g_r, g_c)`` in degrees mod 180.
    2. Each pixel votes its magnitude into the bin ``o`` with ``180 o / n <= angle < 180 (o + 1) / n`` of its cell;
       the cell histogram is the mean vote over the cell's pixels. Cells tile the map from the top-left corner;
       leftover border rows and columns are dropped.
    3. Blocks of ``cells_per_block`` cells, stride one cell, each normalised (eps 1e-5): L2-Hys = L2 normalise,
       clip at 0.2, L2 normalise again; or L1, L1-sqrt, L2.
    Output: the (n_blocks_row, n_blocks_col, b_row, b_col, orientations) array flattened, as skimage's.
    """
    x = jnp.asarray(image)
    if x.ndim != 2:
        raise MapError(f"hog takes one (H, W) map, got shape {tuple(x.shape)}")
    if block_norm not in BLOCK_NORMS:
        raise UnknownNameError(block_norm, BLOCK_NORMS, "hog block_norm")
    x = x.astype(jnp.result_type(x.dtype, jnp.float32))
    (c_row, c_col), (b_row, b_col) = pixels_per_cell, cells_per_block
    h, w = x.shape
    n_cr, n_cc = h // c_row, w // c_col
    n_br, n_bc = n_cr - b_row + 1, n_cc - b_col + 1
    if n_br <= 0 or n_bc <= 0:
        raise MapError(f"hog: a map of shape {(h, w)} is too small for cells of {tuple(pixels_per_cell)} pixels "
                              f"and blocks of {tuple(cells_per_block)} cells; it needs at least "
                              f"{b_row * c_row} rows and {b_col * c_col} columns (or pass a smaller "
                              "pixels_per_cell / cells_per_block)")
    g_row = jnp.zeros_like(x).at[1:-1, :].set(x[2:, :] - x[:-2, :])
    g_col = jnp.zeros_like(x).at[:, 1:-1].set(x[:, 2:] - x[:, :-2])
    mag = jnp.hypot(g_col, g_row)
    angle = jnp.arctan2(g_row, g_col) * (180 / np.pi) % 180
    # bin o holds edge_o <= angle < edge_{o+1}; edges are single precision, as in skimage's Cython loop
    edges = [np.float32(180.0 / orientations * (i + 1)) for i in range(orientations - 1)]
    idx = sum((angle >= e).astype(jnp.int32) for e in edges)
    votes = jax.nn.one_hot(idx, orientations, dtype=x.dtype) * mag[:, :, None]
    cells = votes[:n_cr * c_row, :n_cc * c_col].reshape(n_cr, c_row, n_cc, c_col, orientations)
    hist = cells.mean(axis=(1, 3))  # (n_cr, n_cc, orientations)
    blocks = jnp.stack([jnp.stack([hist[r:r + n_br, c:c + n_bc] for c in range(b_col)], axis=2)
                        for r in range(b_row)], axis=2)  # (n_br, n_bc, b_row, b_col, orientations)
    eps = 1e-5
    axes = (2, 3, 4)
    if block_norm == "L1":
        out = blocks / (jnp.sum(jnp.abs(blocks), axis=axes, keepdims=True) + eps)
    elif block_norm == "L1-sqrt":
        out = jnp.sqrt(blocks / (jnp.sum(jnp.abs(blocks), axis=axes, keepdims=True) + eps))
    elif block_norm == "L2":
        out = blocks / jnp.sqrt(jnp.sum(blocks ** 2, axis=axes, keepdims=True) + eps ** 2)
    else:
        out = blocks / jnp.sqrt(jnp.sum(blocks ** 2, axis=axes, keepdims=True) + eps ** 2)
        out = jnp.minimum(out, 0.2)
        out = out / jnp.sqrt(jnp.sum(out ** 2, axis=axes, keepdims=True) + eps ** 2)
    return out.ravel()


def hog_pearson(a: jax.Array, b: jax.Array, *, orientations: int = 9, pixels_per_cell: tuple[int, int] = (16, 16),
                cells_per_block: tuple[int, int] = (3, 3), block_norm: str = "L2-Hys",
                constant_value: float = CONSTANT_VALUE) -> jax.Array:
    """Pearson correlation of the HOG features (:func:`hog`) of the two maps, the paper's "Pearson correlation of
    the histogram of gradients" (Adebayo et al. 2018). ``pixels_per_cell=(16, 16)`` is their code's setting
    (``skimage.feature.hog(mask, pixels_per_cell=(16, 16))``, skimage's other defaults), so maps need at least
    48 x 48 pixels; pass ``pixels_per_cell=(8, 8)`` (skimage's default) for smaller maps. Maps without gradients
    give all-zero (constant) features: the result is then ``constant_value``."""
    a, b = _check_pair(a, b, "hog_pearson")
    kw = dict(orientations=orientations, pixels_per_cell=pixels_per_cell, cells_per_block=cells_per_block,
              block_norm=block_norm)
    return _pearson_vectors(hog(a, **kw), hog(b, **kw), constant_value)


def hog_spearman(a: jax.Array, b: jax.Array, *, orientations: int = 9, pixels_per_cell: tuple[int, int] = (16, 16),
                 cells_per_block: tuple[int, int] = (3, 3), block_norm: str = "L2-Hys",
                 constant_value: float = CONSTANT_VALUE) -> jax.Array:
    """Spearman rank correlation of the HOG features: what Adebayo et al.'s released notebooks compute
    (``spearmanr(hog(a, pixels_per_cell=(16, 16)), hog(b, ...))``), where the paper says Pearson
    (:func:`hog_pearson`). Constant features: ``constant_value``."""
    a, b = _check_pair(a, b, "hog_spearman")
    kw = dict(orientations=orientations, pixels_per_cell=pixels_per_cell, cells_per_block=cells_per_block,
              block_norm=block_norm)
    return _spearman_vectors(hog(a, **kw), hog(b, **kw), constant_value)


# -- overlap and distance -----------------------------------------------------------------------------------------

def topk_count(n: int, fraction: float) -> int:
    """The number of pixels :func:`topk_iou` keeps: ``round(fraction * n)`` (half to even), at least 1."""
    if not 0 < fraction <= 1:
        raise InvalidArgumentError(f"topk_iou: fraction must be in (0, 1], got {fraction!r}")
    return max(1, min(n, round(fraction * n)))


def topk_iou(a: jax.Array, b: jax.Array, fraction: float = 0.1) -> jax.Array:
    """Intersection over union of the top-``fraction`` pixel sets of the two maps: with ``k =``
    :func:`topk_count` ``(H*W, fraction)`` and ``T(x)`` the ``k`` pixels of largest value, ``|T(a) & T(b)| /
    |T(a) | T(b)| = i / (2k - i)``. Ties at the threshold are broken by position: the pixel earlier in row-major
    order wins (``jax.lax.top_k``'s rule), so the result is deterministic; a constant map selects its first ``k``
    pixels. In [0, 1] (k >= 1, so never NaN)."""
    a, b = _check_pair(a, b, "topk_iou")
    n = a.size
    k = topk_count(n, fraction)

    def top(x):
        return jnp.zeros(n, bool).at[jax.lax.top_k(x.ravel(), k)[1]].set(True)

    inter = jnp.sum(top(a) & top(b)).astype(a.dtype)
    return inter / (2 * k - inter)


def _unit_range(x: jax.Array) -> jax.Array:
    lo, hi = jnp.min(x), jnp.max(x)
    span = hi - lo
    return jnp.where(span > 0, (x - lo) / jnp.where(span > 0, span, 1), jnp.zeros_like(x))


def normalised_l1(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean absolute difference of the min-max normalised maps, ``mean |n(a) - n(b)|`` with
    ``n(x) = (x - min x) / (max x - min x)`` (a constant map normalises to all zeros). A distance in [0, 1]:
    0 for maps equal up to a positive affine change, lower = more similar (unlike the other measures here)."""
    a, b = _check_pair(a, b, "normalised_l1")
    return jnp.mean(jnp.abs(_unit_range(a) - _unit_range(b)))


SIMILARITIES: dict[str, Callable] = {
    "spearman": spearman,
    "spearman_abs": spearman_abs,
    "pearson": pearson,
    "ssim": ssim,
    "hog_pearson": hog_pearson,
    "hog_spearman": hog_spearman,
    "topk_iou": topk_iou,
    "normalised_l1": normalised_l1,
}


def resolve(name_or_fn) -> Callable:
    """A registered similarity by name, or a callable ``f(a, b) -> scalar`` passed through."""
    if callable(name_or_fn):
        return name_or_fn
    if isinstance(name_or_fn, str) and name_or_fn in SIMILARITIES:
        return SIMILARITIES[name_or_fn]
    raise UnknownNameError(name_or_fn, SIMILARITIES, "similarity")


@functools.lru_cache(maxsize=256)
def _batched(fn: Callable, kwargs: tuple, batch_size: int | None):
    f = functools.partial(fn, **dict(kwargs)) if kwargs else fn
    if batch_size is None:
        return jax.jit(jax.vmap(f))
    return jax.jit(lambda *args: jax.lax.map(lambda xs: f(*xs), args, batch_size=batch_size))


def _hashable(v):
    return tuple(_hashable(x) for x in v) if isinstance(v, (list, tuple)) else v


def similarity(name_or_fn: str | Callable, a, b, *, batch_size: int | None = None, **kwargs) -> jax.Array:
    """Per-example similarity of two (N, H, W) stacks of maps: an (N,) array, ``out[i] = f(a[i], b[i], **kwargs)``.

    ``name_or_fn`` is a name in :data:`SIMILARITIES` or any per-example ``f(a, b) -> scalar``. One jit-compiled
    vmap per (function, keyword values, shapes); ``batch_size`` chunks the batch with ``lax.map`` to bound memory.
    Raises :class:`~jaxcam.UnknownNameError` for an unknown name, :class:`~jaxcam.MapError` for stacks of
    different or non-(N, H, W) shapes, :class:`~jaxcam.MapError` for NaN or infinite values.
    """
    fn = resolve(name_or_fn)
    a, b = jnp.asarray(a), jnp.asarray(b)
    label = name_or_fn if isinstance(name_or_fn, str) else getattr(fn, "__name__", "similarity")
    if a.ndim != 3 or a.shape != b.shape or a.shape[0] == 0:
        raise MapError(f"similarity({label!r}) takes two non-empty (N, H, W) stacks of the same shape, got "
                              f"{tuple(a.shape)} and {tuple(b.shape)}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise InvalidArgumentError(f"batch_size must be a positive int or None, got {batch_size!r}")
    a, b = a.astype(jnp.result_type(a.dtype, jnp.float32)), b.astype(jnp.result_type(b.dtype, jnp.float32))
    if not bool(jnp.isfinite(a).all() & jnp.isfinite(b).all()):
        raise MapError(f"similarity({label!r}): the maps hold NaN or infinite values")
    kw = tuple(sorted((k, _hashable(v)) for k, v in kwargs.items()))
    return _batched(fn, kw, batch_size)(a, b)


__all__ = ["BLOCK_NORMS", "CONSTANT_VALUE", "SIMILARITIES", "hog", "hog_pearson", "hog_spearman", "normalised_l1",
           "pearson", "ranks", "resolve", "similarity", "spearman", "spearman_abs", "ssim", "topk_count", "topk_iou"]
