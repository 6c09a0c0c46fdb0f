"""Localisation: does the map point at the object? Maps (N, H, W) against ground-truth masks (N, H, W) or boxes.

All are map-only per-example functions, vmapped under one ``jax.jit``; masks come from :func:`boxes_to_masks` when
boxes are given. An empty mask raises :class:`~jaxcam.MaskError` (there is nothing to localise); a map without
positive mass scores 0 on the mass-based metrics (it puts nothing on the object).

- :func:`pointing_game` (Zhang et al., ECCV 2016): a hit when a maximal pixel of the map lies within ``tolerance``
  pixels (Euclidean) of the mask; the original protocol uses 15 px, Quantus' ``PointingGame`` none (``tolerance=0``,
  the default here, where "a maximal pixel" means any pixel attaining the maximum, as in Quantus).
- :func:`energy_pointing_game` (Wang et al., Score-CAM): the share of the map's energy inside the box(es),
  ``sum_{mask} L / sum L`` on the non-negative part of the map.
- :func:`relevance_mass_accuracy` (Arras et al., 2022; Quantus ``RelevanceMassAccuracy``): the same ratio on the map
  as given (signed); Quantus divides by the total without clamping.
- :func:`relevance_rank_accuracy` (Arras et al.; Quantus ``RelevanceRankAccuracy``): with K the mask's size, the
  fraction of the K highest-ranked pixels that fall inside it (ties broken in stable raster order).
- :func:`iou` : intersection over union of the pixels where the map is at least ``threshold`` and the mask.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InvalidArgumentError
from .inputs import boxes_to_masks, check_maps, check_masks, descending_ranks


def _inputs(cams, masks=None, boxes=None):
    cams = check_maps(cams)
    size = tuple(cams.shape[1:])
    if (masks is None) == (boxes is None):
        raise InvalidArgumentError("pass exactly one of masks= and boxes=")
    if boxes is not None:
        if len(boxes) != cams.shape[0]:
            raise InvalidArgumentError(f"got boxes for {len(boxes)} images and {cams.shape[0]} maps")
        masks = boxes_to_masks(boxes, size)
    return cams, check_masks(masks, cams.shape[0], size)


def _disk(radius: int) -> np.ndarray:
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy ** 2 + xx ** 2 <= radius ** 2).astype(np.float32)


def _dilate(mask, radius):
    if radius <= 0:
        return mask
    k = jnp.asarray(_disk(radius))[:, :, None, None]
    m = mask.astype(jnp.float32)[None, :, :, None]
    out = jax.lax.conv_general_dilated(m, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out[0, :, :, 0] > 0.5


@partial(jax.jit, static_argnums=2)
def _pointing(cams, masks, tolerance):
    def one(cam, mask):
        top = cam >= cam.max()
        return jnp.any(top & _dilate(mask, tolerance)).astype(jnp.float32)
    return jax.vmap(one)(cams, masks)


def pointing_game(cams, masks=None, *, boxes=None, tolerance: float = 0) -> jax.Array:
    """(N,) 1.0 for a hit, 0.0 for a miss."""
    cams, masks = _inputs(cams, masks, boxes)
    if tolerance < 0:
        raise InvalidArgumentError(f"tolerance must be >= 0 pixels, got {tolerance!r}")
    return _pointing(cams, masks, float(tolerance))


@partial(jax.jit, static_argnums=2)
def _mass(cams, masks, positive):
    def one(cam, mask):
        a = jax.nn.relu(cam) if positive else cam
        total = a.sum()
        inside = jnp.where(mask, a, 0.0).sum()
        return jnp.where(total != 0, inside / jnp.where(total != 0, total, 1.0), 0.0)
    return jax.vmap(one)(cams, masks)


def energy_pointing_game(cams, masks=None, *, boxes=None) -> jax.Array:
    """(N,) share of the map's (non-negative) energy inside the ground truth; 0 for an all-zero map."""
    cams, masks = _inputs(cams, masks, boxes)
    return _mass(cams, masks, True)


def relevance_mass_accuracy(cams, masks=None, *, boxes=None) -> jax.Array:
    """(N,) ``sum_{mask} a / sum a`` on the map as given; 0 when the map sums to 0."""
    cams, masks = _inputs(cams, masks, boxes)
    return _mass(cams, masks, False)


@jax.jit
def _rank_accuracy(cams, masks):
    def one(cam, mask):
        k = mask.sum()
        hits = jnp.sum((descending_ranks(cam) < k) & mask.ravel())
        return hits / k
    return jax.vmap(one)(cams, masks)


def relevance_rank_accuracy(cams, masks=None, *, boxes=None) -> jax.Array:
    """(N,) fraction of the |mask| top-ranked pixels inside the mask."""
    cams, masks = _inputs(cams, masks, boxes)
    return _rank_accuracy(cams, masks)


@jax.jit
def _iou(cams, masks, threshold):
    def one(cam, mask):
        on = cam >= threshold
        return jnp.sum(on & mask) / jnp.sum(on | mask)
    return jax.vmap(one)(cams, masks)


def iou(cams, masks=None, *, boxes=None, threshold: float = 0.5) -> jax.Array:
    """(N,) IoU of ``{map >= threshold}`` with the ground truth (maps in [0, 1]; 0.5 is a common choice, the
    weakly-supervised localisation literature sweeps it)."""
    cams, masks = _inputs(cams, masks, boxes)
    return _iou(cams, masks, jnp.float32(threshold))
