"""Map post-processing: ReLU, min-max, resizing (stated pixel conventions), multi-layer fusion.

The default chain reproduces pytorch-grad-cam 1.5.7 exactly (design rule 7: parity is a preset): per layer
``relu -> minmax -> resize to the input size``; across layers ``relu -> mean -> minmax``, where
``minmax(m) = (m - min m) / (1e-7 + max(m - min m))``. A constant or all-zero map becomes all zeros, never NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-7


def minmax(m: jax.Array, eps: float = EPS) -> jax.Array:
    """Per-map min-max normalisation to [0, 1] (over all axes of ``m``)."""
    m = m - jnp.min(m)
    return m / (eps + jnp.max(m))


def resize(m: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of an (h, w) map with half-pixel centres and edge clamping, no antialiasing: the convention
    of ``cv2.resize(..., INTER_LINEAR)`` used by pytorch-grad-cam when upsampling."""
    if tuple(m.shape) == tuple(size):
        return m
    return jnp.einsum("ih,hw,jw->ij", jnp.asarray(_linear_matrix(m.shape[0], size[0])), m,
                      jnp.asarray(_linear_matrix(m.shape[1], size[1])), precision=jax.lax.Precision.HIGHEST)


def resize_align_corners(m: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of the two leading axes of ``m`` with ``align_corners=True`` (torch's
    ``UpsamplingBilinear2d``, used by Score-CAM's masks): corner pixels map to corner pixels."""
    return jnp.einsum("ih,hw...,jw->ij...", jnp.asarray(_corner_matrix(m.shape[0], size[0])), m,
                      jnp.asarray(_corner_matrix(m.shape[1], size[1])), precision=jax.lax.Precision.HIGHEST)


def _linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0, n_in - 1)
    return _interp_matrix(src, n_in)


def _corner_matrix(n_in: int, n_out: int) -> np.ndarray:
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    return _interp_matrix(src, n_in)


def _interp_matrix(src: np.ndarray, n_in: int) -> np.ndarray:
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (src - lo).astype(np.float64)
    m = np.zeros((len(src), n_in), np.float64)
    np.add.at(m, (np.arange(len(src)), lo), 1 - frac)
    np.add.at(m, (np.arange(len(src)), hi), frac)
    return m.astype(np.float32)


def layer_map(raw: jax.Array, size: tuple[int, int]) -> jax.Array:
    """One layer's raw map (h, w) to the input resolution: ``resize(minmax(relu(raw)))``."""
    return resize(minmax(jax.nn.relu(raw)), size)


def fuse(maps: list[jax.Array]) -> jax.Array:
    """Several layers' maps (each (H, W)) to one: ``minmax(mean(relu(maps)))``."""
    return minmax(jnp.mean(jax.nn.relu(jnp.stack(maps)), axis=0))


def postprocess(raws: list[jax.Array], size: tuple[int, int]) -> jax.Array:
    """The pytorch-grad-cam chain for one example: per-layer raw maps to one map in [0, 1] at ``size``."""
    return fuse([layer_map(r, size) for r in raws])
