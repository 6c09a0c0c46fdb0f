"""Images in: paths, PIL images or arrays, to a model's input batch (N, H, W, 3) float32, NHWC.

Accepted images: a path (str or ``os.PathLike``), a ``PIL.Image.Image``, or an array that is HxW (grayscale),
HxWx1, HxWx3 (RGB) or HxWx4 (RGBA: alpha is dropped, as ``PIL.Image.convert("RGB")`` does). Integer arrays are
uint8 (0..255) or uint16 (0..65535); float arrays must already lie in [0, 1] and be finite; bool arrays are 0/1.
A batch is a list/tuple of such images or an NxHxWxC array. Anything else raises an :class:`~jaxcam.ImageError`
subclass that names the problem.

Resizing is bilinear with antialiasing (PIL, per channel in float32: torchvision's ``Resize`` with antialias),
either straight to ``size x size`` (``resize="stretch"``, the default: the CAM then covers the whole photograph) or
torchvision's ImageNet evaluation transform (``resize="center_crop"``: shorter side to ``size * 256 / 224``, then a
central ``size x size`` crop).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from importlib import resources

import numpy as np

from .errors import ImageDtypeError, ImageError, ImageFileError, ImageShapeError, NonFiniteImageError

SAMPLE_IMAGES = ("chelsea", "coffee", "astronaut", "rocket")
RESIZE_MODES = ("stretch", "center_crop")


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in index order (torchvision's list)."""
    text = resources.files("jaxcam").joinpath("resources/imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    assert len(names) == 1000, "jaxcam/resources/imagenet_classes.txt must hold 1000 names"
    return names


def sample_images(names: Sequence[str] = SAMPLE_IMAGES) -> dict[str, np.ndarray]:
    """scikit-image's bundled photographs (uint8 RGB), the default input of demos and tests."""
    from skimage import data as skdata

    out = {}
    for name in names:
        if name not in SAMPLE_IMAGES and not callable(getattr(skdata, name, None)):
            raise ImageFileError(f"unknown sample image {name!r}; try one of {', '.join(SAMPLE_IMAGES)}")
        out[name] = to_rgb(getattr(skdata, name)())
    return out


def _read_file(path: os.PathLike | str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageFileError(f"image file not found: {path!r}")
    if not os.path.isfile(path):
        raise ImageFileError(f"not a file: {path!r}")
    try:
        with Image.open(path) as im:
            im.load()
            return _from_pil(im)
    except UnidentifiedImageError:
        raise ImageFileError(f"not a readable image file: {path!r}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageFileError(f"corrupt or truncated image file {path!r}: {exc}") from None


def _from_pil(im) -> np.ndarray:
    if im.mode.startswith("I;16"):
        return np.asarray(im, dtype=np.float32) / 65535.0
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def to_rgb(image, name: str = "image") -> np.ndarray:
    """One image (path, PIL image or array) as a float32 HxWx3 array in [0, 1]. Validates everything."""
    if isinstance(image, (str, os.PathLike)):
        arr = _read_file(image)
    elif type(image).__module__.startswith("PIL."):
        arr = _from_pil(image)
    else:
        try:
            arr = np.asarray(image)
        except Exception as exc:  # noqa: BLE001 - anything numpy cannot take is a wrong input type
            raise ImageDtypeError(f"{name}: cannot read an image from a {type(image).__name__}: {exc}") from None
    arr = _to_unit_float(arr, name)
    return _to_three_channels(arr, name)


def _to_unit_float(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if arr.size:
            bad = ~np.isfinite(arr)
            if bad.any():
                raise NonFiniteImageError(f"{name} has {int(bad.sum())} NaN or infinite pixel value(s)")
            lo, hi = float(arr.min()), float(arr.max())
            if lo < -1e-6 or hi > 1 + 1e-6:
                raise ImageError(f"{name}: float images must lie in [0, 1], got values in [{lo:g}, {hi:g}]"
                                 + ("; divide by 255 or pass uint8" if hi <= 255.0 and lo >= 0 else ""))
        return np.clip(arr, 0.0, 1.0)
    raise ImageDtypeError(f"{name} has dtype {arr.dtype}; expected uint8, uint16, bool or float in [0, 1]")


def _to_three_channels(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ImageShapeError(f"{name} has shape {arr.shape}; expected HxW, HxWx1, HxWx3 or HxWx4"
                              + (" (for a batch, pass a list or an NxHxWxC array)" if arr.ndim == 4 else ""))
    if arr.shape[-1] not in (1, 3, 4):
        hint = " It looks channel-first: use np.moveaxis(image, 0, -1)." if arr.shape[0] in (1, 3, 4) else ""
        raise ImageShapeError(f"{name} has shape {arr.shape}; the last axis must be 1, 3 or 4 channels.{hint}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageShapeError(f"{name} is empty: shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def as_image_list(images) -> list:
    """Split a batch argument into single images: a list/tuple, an NxHxWxC array, or one image."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageShapeError("no images given (empty list)")
        return list(images)
    if hasattr(images, "ndim") and hasattr(images, "shape") and images.ndim == 4:
        if images.shape[0] == 0:
            raise ImageShapeError("no images given (batch of size 0)")
        return list(np.asarray(images))
    return [images]


def resize(image: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """Resize an HxWx3 float image in [0, 1] to ``size x size`` (see the module docstring for the modes)."""
    from PIL import Image

    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; valid modes: {', '.join(RESIZE_MODES)}")
    h, w = image.shape[:2]
    if mode == "stretch":
        target = (size, size)
    else:
        short = round(size * 256 / 224)
        target = (short, max(short, round(h * short / w))) if w <= h else (max(short, round(w * short / h)), short)
    if (w, h) != target:
        image = np.stack([np.asarray(Image.fromarray(image[..., c], mode="F").resize(target, Image.BILINEAR))
                          for c in range(3)], axis=-1)
    if mode == "center_crop":
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        image = image[top:top + size, left:left + size]
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def preprocess(images, *, size: int = 224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
               resize_mode: str = "stretch") -> np.ndarray:
    """Images (see module docstring) to a normalised (N, size, size, 3) float32 batch: ``(rgb - mean) / std``."""
    batch = as_image_list(images)
    out = np.empty((len(batch), size, size, 3), np.float32)
    for i, img in enumerate(batch):
        out[i] = resize(to_rgb(img, name=f"image {i}" if len(batch) > 1 else "image"), size, resize_mode)
    return (out - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
