"""A CAM as a ranked set of regions: threshold, connected components, minimum area, ranking (issue 16).

Region ablation asks whether the pixels a CAM highlights are the ones the model uses: remove each highlighted
region and watch the explained class's probability (:mod:`jaxcam.metrics.ablation`). That needs the map turned
into discrete regions first, the usual weakly-supervised-localisation recipe (Zhou et al., CVPR 2016, section 3):
keep the pixels with ``cam >= threshold`` (or the top ``top`` fraction of pixels), split them into 8-connected
components (``scipy.ndimage.label``), drop components smaller than ``min_area`` pixels, and rank the rest by their
mean CAM score (ties: the larger region first, then raster order), so region 1 is the one the map believes in most.

``snap="quickshift"`` first snaps the thresholded mask to Quickshift superpixels of the image (a superpixel is kept
when at least half its pixels pass the threshold), so regions follow object edges rather than the upsampled CAM
grid; the superpixels are :func:`jaxcam.metrics.quickshift_regions` (scikit-image, LIME's defaults).
Runs on the host (NumPy/SciPy): the result has a data-dependent number of regions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidArgumentError, MapError, UnknownNameError

SNAPS = ("none", "quickshift")
_EIGHT = np.ones((3, 3), bool)


class EmptyRegionsError(MapError):
    """A CAM whose threshold (and minimum area) leaves no region to ablate."""


@dataclass(frozen=True)
class Regions:
    """``labels`` (H, W) int32: 0 outside every region, ``k`` in 1..K for the region ranked k-th (highest mean
    CAM first); ``areas`` (K,) pixel counts; ``scores`` (K,) mean CAM per region; ``threshold`` the CAM value
    used (the computed cut when a ``top`` fraction was asked for)."""

    labels: np.ndarray
    areas: np.ndarray
    scores: np.ndarray
    threshold: float

    @property
    def count(self) -> int:
        return len(self.areas)

    def mask(self, k: int | None = None) -> np.ndarray:
        """(H, W) bool: every region (``k=None``) or region ``k`` (1-based rank)."""
        if k is None:
            return self.labels > 0
        if not 1 <= k <= self.count:
            raise InvalidArgumentError(f"region k must be in 1..{self.count} (1 = highest mean CAM), got {k}")
        return self.labels == k

    def masks(self, max_regions: int | None = None) -> np.ndarray:
        """(R, H, W) bool, one mask per region in rank order, padded with empty masks to ``max_regions``."""
        r = self.count if max_regions is None else int(max_regions)
        return np.arange(1, r + 1)[:, None, None] == self.labels[None]


def _check_cam(cam) -> np.ndarray:
    cam = np.asarray(cam)
    if cam.ndim != 2 or 0 in cam.shape:
        hint = "; pass one map cams[i], not a batch" if cam.ndim == 3 else ""
        raise MapError(f"cam must be one non-empty (H, W) map in [0, 1], got shape {cam.shape}{hint}")
    if cam.dtype.kind not in "fiub":
        raise MapError(f"cam must hold numbers, got dtype {cam.dtype}")
    cam = cam.astype(np.float64)
    if not np.isfinite(cam).all():
        raise MapError("cam holds NaN or inf; explain again or pass a finite map in [0, 1]")
    if cam.min() < 0 or cam.max() > 1:
        raise MapError(f"cam must lie in [0, 1] (jaxcam.explain's maps do), got range [{cam.min():g}, "
                       f"{cam.max():g}]; rescale it first")
    return cam


def _snap_quickshift(keep: np.ndarray, image, shape, options: dict) -> np.ndarray:
    if image is None:
        raise InvalidArgumentError('snap="quickshift" needs image=(H, W, 3) RGB in [0, 1], the image the CAM explains')
    image = np.asarray(image)
    if image.shape != (*shape, 3):
        raise InvalidArgumentError(f"image must be (H, W, 3) = {(*shape, 3)} to match the cam, got shape "
                                   f"{image.shape}")
    from .metrics.robustness import quickshift_regions

    seg, count = quickshift_regions(image[None].astype(np.float32), **options)
    seg = seg[0]
    frac = np.bincount(seg.ravel(), keep.ravel(), minlength=int(count[0])) / np.bincount(seg.ravel())
    return frac[seg] >= 0.5


def cam_regions(cam, *, threshold: float | None = 0.5, top: float | None = None, min_area: int = 1,
                max_regions: int | None = None, snap: str = "none", image=None,
                snap_options: dict | None = None) -> Regions:
    """The regions of one map ``cam`` (H, W) in [0, 1], ranked by mean CAM score (see the module docstring).

    ``threshold``: keep ``cam >= threshold``; or ``top`` in (0, 1]: keep the top fraction of pixels (the cut is the
    ``1 - top`` quantile; ``top`` overrides ``threshold``). ``min_area``: drop components with fewer pixels.
    ``max_regions``: keep only the best-ranked ones. ``snap``: "none" or "quickshift" (needs ``image``;
    ``snap_options`` go to :func:`jaxcam.metrics.quickshift_regions`: LIME's ``max_dist=200`` merges a small image
    into one superpixel, use ``kernel_size=2, max_dist=10`` or so at 32-48 px).
    Raises :class:`EmptyRegionsError` (naming the threshold) when nothing survives.
    """
    from scipy import ndimage

    if snap not in SNAPS:
        raise UnknownNameError(snap, SNAPS, "region snapping (snap=)")
    if top is not None:
        if not 0 < float(top) <= 1:
            raise InvalidArgumentError(f"top must be a fraction of pixels in (0, 1], got {top!r}")
    elif threshold is None or not 0 <= float(threshold) <= 1:
        raise InvalidArgumentError(f"threshold must be a CAM value in [0, 1] (or pass top=), got {threshold!r}")
    if isinstance(min_area, bool) or not isinstance(min_area, (int, np.integer)) or min_area < 1:
        raise InvalidArgumentError(f"min_area must be a positive int (pixels), got {min_area!r}")
    if max_regions is not None and (isinstance(max_regions, bool) or not isinstance(max_regions, (int, np.integer))
                                    or max_regions < 1):
        raise InvalidArgumentError(f"max_regions must be a positive int or None, got {max_regions!r}")
    cam = _check_cam(cam)
    cut = float(np.quantile(cam, 1 - float(top))) if top is not None else float(threshold)
    keep = cam >= cut
    if snap == "quickshift":
        keep = _snap_quickshift(keep, image, cam.shape, dict(snap_options or {}))
    comp, n = ndimage.label(keep, structure=_EIGHT)
    ids = np.arange(1, n + 1)
    areas = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    sums = np.bincount(comp.ravel(), cam.ravel(), minlength=n + 1)[1:]
    largest = int(areas.max()) if n else 0
    big = areas >= min_area
    ids, areas, scores = ids[big], areas[big], sums[big] / np.maximum(areas[big], 1)
    if len(ids) == 0:
        what = f"top={top} (cut {cut:.4g})" if top is not None else f"threshold={cut:g}"
        snapped = (" after snapping to Quickshift superpixels (one is kept when half its pixels pass the cut: try "
                   "smaller superpixels, snap_options)") if snap == "quickshift" else ""
        raise EmptyRegionsError(f"no region of the cam survives {what} and min_area={min_area}{snapped} (cam max "
                                f"{cam.max():.4g}, largest component {largest} px)"
                                f"; lower the threshold or min_area")
    # components are numbered in raster order, so a stable sort on (-score, -area) breaks remaining ties by position
    order = np.lexsort((-areas, -scores))
    if max_regions is not None:
        order = order[:max_regions]
    lut = np.zeros(n + 1, np.int32)
    lut[ids[order]] = np.arange(1, len(order) + 1, dtype=np.int32)
    return Regions(labels=lut[comp], areas=areas[order].astype(np.int64), scores=scores[order], threshold=cut)
