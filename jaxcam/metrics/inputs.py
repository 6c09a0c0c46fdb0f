"""Validation shared by the metrics: maps, masks and boxes in; clear errors out (never a NaN deep inside XLA)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InvalidArgumentError, MapError, MaskError
from ..postprocess import resize


def check_maps(cams, n: int | None = None, size: tuple[int, int] | None = None, name: str = "cams") -> jax.Array:
    """(N, H, W) float32 maps, finite. With ``size``, maps at another resolution (e.g. a CAM at feature resolution)
    are bilinearly resized to it (half-pixel centres, as torchcam and pytorch-grad-cam resize)."""
    arr = np.asarray(cams) if not isinstance(cams, jax.Array) else cams
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise MapError(f"{name} must have shape (N, H, W), got {tuple(arr.shape)}")
    if n is not None and arr.shape[0] != n:
        raise MapError(f"{name} holds {arr.shape[0]} maps for {n} images")
    arr = jnp.asarray(arr, jnp.float32)
    finite = np.asarray(jnp.isfinite(arr).all(axis=(1, 2)))
    if not finite.all():
        raise MapError(f"{name}[{int(np.argmin(finite))}] contains NaN or inf values")
    if size is not None and tuple(arr.shape[1:]) != tuple(size):
        arr = jax.vmap(lambda m: resize(m, tuple(size)))(arr)
    return arr


def check_masks(masks, n: int, size: tuple[int, int], name: str = "masks") -> jax.Array:
    """(N, H, W) boolean masks of the maps' size, none empty."""
    arr = np.asarray(masks)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape != (n, *size):
        raise MaskError(f"{name} must have shape {(n, *size)} (one mask per map), got {tuple(arr.shape)}")
    arr = arr.astype(bool)
    empty = ~arr.any(axis=(1, 2))
    if empty.any():
        raise MaskError(f"{name}[{int(np.argmax(empty))}] is empty: no ground-truth pixel to localise")
    return jnp.asarray(arr)


def box_text(box) -> str:
    """A box as ``[y0, x0, y1, x1]`` with its numbers as short as they go (``[8, 16, 40.5, 48]``)."""
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


def box_problem(box, h: int, w: int) -> str | None:
    """Why ``box`` ``(y0, x0, y1, x1)`` (pixels, exclusive ends) covers no pixel of an ``h`` x ``w`` image, or
    None when it covers at least one (a box that sticks out of the image is clipped to it)."""
    y0, x0, y1, x1 = (float(v) for v in box)
    if not all(np.isfinite((y0, x0, y1, x1))):
        return "holds NaN or inf coordinates"
    if y1 < y0 or x1 < x0:
        return "has its end before its start (y0 <= y1 and x0 <= x1: rows first, then columns)"
    if y1 == y0 or x1 == x0:
        return "is empty (zero height or width; ends are exclusive)"
    if y1 <= 0 or x1 <= 0 or y0 >= h or x0 >= w:
        return "lies outside the image"
    return None


def boxes_to_masks(boxes, size: tuple[int, int], names=None) -> np.ndarray:
    """Masks (N, H, W) from boxes ``(y0, x0, y1, x1)`` in pixels (exclusive ends), one box per image as an (N, 4)
    array or several per image as a list of (B_i, 4) arrays (their union). A box that sticks out of the image is
    clipped to it; one that covers no pixel of it (outside, empty, reversed, NaN) raises :class:`MaskError` naming
    the image (``names[i]`` when given, else its index), its size and the box."""
    h, w = size
    boxes = list(boxes)
    out = np.zeros((len(boxes), h, w), bool)
    for i, given in enumerate(boxes):
        image = f"image {names[i]!r}" if names is not None else f"image {i}"
        try:
            bs = np.asarray(given, np.float64).reshape(-1, 4)
        except (TypeError, ValueError):
            raise MaskError(f"boxes[{i}] ({image}) must be [y0, x0, y1, x1] or a list of them, got {given!r}") from None
        for box in bs:
            problem = box_problem(box, h, w)
            if problem:
                raise MaskError(f"boxes[{i}] = {box_text(box)} of {image} {problem}; the image is {h} x {w} (h x w) "
                                "pixels and boxes are (y0, x0, y1, x1) in its pixels, ends exclusive")
            y0, x0, y1, x1 = box
            ya, yb = int(np.clip(np.floor(y0), 0, h)), int(np.clip(np.ceil(y1), 0, h))
            xa, xb = int(np.clip(np.floor(x0), 0, w)), int(np.clip(np.ceil(x1), 0, w))
            out[i, ya:yb, xa:xb] = True
        if not out[i].any():
            raise MaskError(f"boxes[{i}] ({image}) holds no box: give at least one [y0, x0, y1, x1] per image")
    return out


def model_inputs(model, x, cams, targets):
    """Validated ``(x, cams at input size, class indices or None)`` for a metric that calls ``model``."""
    from ..targets import class_indices

    x = model.check_input(x)
    cams = check_maps(cams, x.shape[0], tuple(x.shape[1:3]))
    return x, cams, class_indices(targets, x.shape[0], model.num_classes)


def default_batch_size(batch_size: int | None) -> int:
    """The chunk of forward passes per step: 8 on CPU (small batches run fastest per image), 64 on accelerators."""
    if batch_size is None:
        return 8 if jax.default_backend() == "cpu" else 64
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def descending_ranks(cam: jax.Array) -> jax.Array:
    """Each pixel's rank (0 = highest value) in a stable descending order, flattened (H*W,)."""
    order = jnp.argsort(-cam.ravel(), stable=True)
    return jnp.zeros(order.shape, jnp.int32).at[order].set(jnp.arange(order.size, dtype=jnp.int32))
