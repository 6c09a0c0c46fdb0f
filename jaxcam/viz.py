"""Pictures of maps: heat-map overlays on the photographs (NumPy and matplotlib's colormaps, no JAX)."""

from __future__ import annotations

import io

import numpy as np

from .errors import MapError, MissingDependencyError


def _colormap(name: str):
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise MissingDependencyError("pictures need matplotlib: pip install matplotlib") from exc
    try:
        return matplotlib.colormaps[name]
    except KeyError:
        from .errors import UnknownNameError

        raise UnknownNameError(name, sorted(matplotlib.colormaps), "colormap") from None


def _image_u8(image) -> np.ndarray:
    from .data import to_rgb

    rgb = to_rgb(image)  # (H, W, 3) float in [0, 1], whatever came in
    return np.round(rgb * 255).astype(np.uint8)


def colorize(cam, cmap: str = "inferno") -> np.ndarray:
    """A map in [0, 1] (h, w) as an RGB uint8 picture through a perceptually uniform colormap (default inferno)."""
    cam = np.asarray(cam, np.float32)
    if cam.ndim != 2:
        raise MapError(f"a map to draw must be 2-D (h, w), got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise MapError("the map holds NaN or infinite values")
    rgba = _colormap(cmap)(np.clip(cam, 0.0, 1.0))
    return np.round(rgba[..., :3] * 255).astype(np.uint8)


def resize_map(cam, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map to ``hw`` (no-op when it already has that size)."""
    cam = np.asarray(cam, np.float32)
    if cam.shape == tuple(hw):
        return cam
    from PIL import Image

    return np.asarray(Image.fromarray(cam, mode="F").resize((hw[1], hw[0]), Image.BILINEAR), np.float32)


def overlay(image, cam, alpha: float = 0.5, cmap: str = "inferno") -> np.ndarray:
    """The photograph with the map blended on top: ``(1 - alpha) * image + alpha * colormap(map)``, uint8 (H, W, 3).
    The map is resized to the image; ``alpha`` in [0, 1] is the heat map's opacity."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha (the heat map's opacity) must be in [0, 1], got {alpha}")
    img = _image_u8(image)
    heat = colorize(resize_map(cam, img.shape[:2]), cmap).astype(np.float32)
    return np.round((1.0 - alpha) * img.astype(np.float32) + alpha * heat).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 array as PNG file contents."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
