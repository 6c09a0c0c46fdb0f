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

Image files are untrusted input, and every one jaxcam reads (paths, bytes from a dataset, masks, the CLI's checks)
goes through one decoder, :func:`decode_image`:

- the header's pixel count is checked against a cap *before* any pixel is decoded (a 69-byte PNG can claim
  60000x60000 pixels: 10 GB once decoded); above it :class:`~jaxcam.ImageTooLargeError` names the file, its size,
  the cap and how to raise it. The cap is ``max_pixels=`` where images are read, else ``$JAXCAM_MAX_PIXELS``, else
  :data:`DEFAULT_MAX_PIXELS` (150 megapixels: a 10000x10000 photo passes). PIL's own bomb limit is switched off for
  the header read only (under a lock, then restored), so its ``DecompressionBombError``/``Warning`` never reach you;
- a photo much larger than the size it will be resized to (``size_hint``, which :func:`preprocess` passes) is
  decoded at reduced scale: JPEG by DCT scaling inside the decoder (``draft``), other formats by ``Image.reduce``
  (box averaging in uint8) before any float conversion, keeping the shorter side at least ``2 * size_hint``.
  Photos whose shorter side is under ``4 * size_hint`` are decoded exactly as before (bit-identical arrays);
- EXIF orientation is applied (``ImageOps.exif_transpose``'s table), so a phone photo is explained upright, as
  browsers show it;
- a missing file, a directory, a symlink loop, an empty, truncated, bit-flipped or non-image file each raise one
  :class:`~jaxcam.ImageFileError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import stat
import threading
from collections.abc import Sequence
from importlib import resources

import numpy as np

from .errors import (ImageDtypeError, ImageError, ImageFileError, ImageShapeError, ImageTooLargeError,
                     InvalidArgumentError, JaxcamError, NonFiniteImageError, UnknownNameError)

SAMPLE_IMAGES = ("chelsea", "coffee", "astronaut", "rocket")
RESIZE_MODES = ("stretch", "center_crop")
MAX_PIXELS_ENV = "JAXCAM_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 150_000_000  # a 10000x10000 photo (100 MP) passes; 150 MP of RGB is 450 MB as uint8
ORIENTATION_TAG = 0x0112  # EXIF Orientation
_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
              7: "TRANSVERSE", 8: "ROTATE_90"}  # ImageOps.exif_transpose's table: orientation -> PIL transpose
_REDUCIBLE_MODES = ("L", "RGB", "I", "F")  # reduced as they are; other modes become RGB first (alpha is dropped)
_PIL_LIMIT_LOCK = threading.Lock()
_scoped_cap: list[int] = []  # max_pixels_scope's caps, innermost last


class ImageNotFoundError(ImageFileError, FileNotFoundError):
    """An image path that does not exist (or is a broken symlink)."""


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in index order (torchvision's list)."""
    text = resources.files("jaxcam").joinpath("resources/imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    assert len(names) == 1000, "jaxcam/resources/imagenet_classes.txt must hold 1000 names"
    return names


def sample_images(names: Sequence[str] = SAMPLE_IMAGES) -> dict[str, np.ndarray]:
    """scikit-image's bundled photographs as float32 HxWx3 arrays in [0, 1] (:func:`to_rgb`'s output), the
    default input of demos and tests."""
    from skimage import data as skdata

    out = {}
    for name in names:
        if name not in SAMPLE_IMAGES and not callable(getattr(skdata, name, None)):
            raise ImageFileError(f"unknown sample image {name!r}; try one of {', '.join(SAMPLE_IMAGES)}")
        out[name] = to_rgb(getattr(skdata, name)())
    return out


# -- the cap ---------------------------------------------------------------------------------------------------
def _pixel_count(value, source: str) -> int:
    """``value`` (an int, or text such as ``200000000``, ``200_000_000`` or ``2e8``) as a pixel count >= 1."""
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            number = float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            raise InvalidArgumentError(f"{source} must be a number of pixels such as 200000000, got {value!r}"
                                       ) from None
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number = int(value)
    else:
        raise InvalidArgumentError(f"{source} must be an integer number of pixels, got {type(value).__name__} "
                                   f"{value!r}")
    if number != number or number in (float("inf"), float("-inf")) or number < 1 or int(number) != number:
        raise InvalidArgumentError(f"{source} must be a whole number of pixels >= 1, got {value!r}")
    return int(number)


def pixel_cap(max_pixels: int | str | None = None) -> int:
    """The decoding cap in pixels: ``max_pixels`` if given, else the innermost :func:`max_pixels_scope`, else
    ``$JAXCAM_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`. Bad values raise InvalidArgumentError naming where
    they came from."""
    if max_pixels is not None:
        return _pixel_count(max_pixels, "max_pixels")
    if _scoped_cap:
        return _scoped_cap[-1]
    env = os.environ.get(MAX_PIXELS_ENV, "").strip()
    return _pixel_count(env, f"${MAX_PIXELS_ENV}") if env else DEFAULT_MAX_PIXELS


@contextlib.contextmanager
def max_pixels_scope(max_pixels: int | str | None):
    """Within the block, images read without an explicit ``max_pixels=`` use this cap (None: no change). This is
    how one command-line ``--max-pixels`` reaches every image a command reads, in whichever thread it decodes."""
    if max_pixels is None:
        yield
        return
    _scoped_cap.append(_pixel_count(max_pixels, "--max-pixels"))
    try:
        yield
    finally:
        _scoped_cap.pop()


def _check_pixels(w: int, h: int, label: str, cap: int) -> None:
    if w < 1 or h < 1:
        raise ImageFileError(f"{label} declares an empty image ({w}x{h} pixels); the file is corrupt")
    if w * h > cap:
        raise ImageTooLargeError(
            f"{label} is {w}x{h} = {w * h:,} pixels, above the decoding cap of {cap:,} pixels "
            f"that guards against decompression bombs; if you trust the file, raise the cap: max_pixels={w * h} "
            f"(Python), {MAX_PIXELS_ENV}={w * h} (environment) or --max-pixels {w * h} (command line)")


# -- opening (header only) -------------------------------------------------------------------------------------
def check_image_path(path: os.PathLike | str) -> str:
    """``path`` as a string when it names a non-empty regular file; otherwise one ImageFileError that says what
    it is instead (missing, a broken symlink, a symlink loop, a directory, a device, empty, unreadable)."""
    try:
        path = os.fspath(path)
        st = os.stat(path)
    except TypeError:
        raise ImageFileError(f"an image path must be a str or os.PathLike, got {type(path).__name__}") from None
    except ValueError as exc:  # an embedded NUL byte
        raise ImageFileError(f"image path {path!r} is not a valid path: {exc}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageFileError(f"image path {path!r} is a symlink loop (its links never reach a file); point it "
                                 "at an image file") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            broken = " (a symlink to a missing target)" if os.path.islink(path) else ""
            raise ImageNotFoundError(f"image file not found: {path!r}{broken}") from None
        raise ImageFileError(f"cannot read image file {path!r}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageFileError(f"not a file: {path!r} is a directory; pass the image files in it")
    if not stat.S_ISREG(st.st_mode):
        raise ImageFileError(f"not a file: {path!r} is not a regular file (a device, pipe or socket)")
    if st.st_size == 0:
        raise ImageFileError(f"image file {path!r} is empty (0 bytes); it holds no image")
    return path


def _source_label(source, name: str | None) -> tuple[object, str]:
    """``(what PIL opens, the name errors use)`` for a path or encoded bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "image bytes"
        if not len(source):
            raise ImageFileError(f"{label} is empty (0 bytes); it holds no image")
        return io.BytesIO(bytes(source)), label
    path = check_image_path(source)
    return path, name or repr(path)


def _bad_file(label: str, exc: BaseException) -> ImageFileError:
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return ImageFileError(f"not a readable image file: {label} (no known image format; is it an image renamed, "
                              "or a web page saved under an image name?)")
    if isinstance(exc, Image.DecompressionBombError):  # a plugin checking a frame against PIL's own limit
        return ImageTooLargeError(f"{label} holds a frame too large to decode ({exc}); if you trust the file, "
                                  f"raise the cap with max_pixels=, {MAX_PIXELS_ENV} or --max-pixels")
    if isinstance(exc, OSError) and exc.errno is not None:  # the file itself, not its contents
        return ImageFileError(f"cannot read image file {label}: {exc.strerror or exc}")
    text = " ".join(str(exc).split()) or "no detail"
    return ImageFileError(f"corrupt or truncated image file {label}: {type(exc).__name__}: {text}")


@contextlib.contextmanager
def _opened(source, name: str | None):
    """The image PIL opens from ``source`` (header parsed, no pixel decoded) and its label. PIL's bomb limit is
    off for that header read only: the caller checks its own cap, so PIL's error and warning can never be what
    the user meets. The lock keeps concurrent reads from restoring each other's value."""
    from PIL import Image

    fp, label = _source_label(source, name)
    try:
        with _PIL_LIMIT_LOCK:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(fp)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except JaxcamError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL's plugins fail on hostile headers in many ways
        raise _bad_file(label, exc) from None
    with im:
        yield im, label


def _orientation(im) -> int:
    """The EXIF orientation (1..8) still to apply; 1 when absent, invalid or unreadable (browsers then show the
    stored pixels too). Read through ``Image.Image.getexif``, which caches what the header holds, so that a PNG is
    not decoded to look for it (an eXIf chunk after the pixel data, against the PNG chunk order, is ignored) and a
    plugin that applies the orientation itself on load (Pillow's TIFF reader) removes it from that cache."""
    from PIL import Image

    try:
        value = Image.Image.getexif(im).get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block leaves the pixels readable
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def image_size(source, *, name: str | None = None) -> tuple[int, int]:
    """``(height, width)`` of an image file (path or encoded bytes) as it is displayed (EXIF orientation
    applied), from its header alone: no pixel is decoded."""
    with _opened(source, name) as (im, _):
        w, h = im.size
        if _orientation(im) >= 5:
            tags = getattr(im, "tag_v2", None)  # TIFF: Pillow >= 11 already reports the displayed size
            stored = (tags.get(256), tags.get(257)) if tags is not None else (w, h)
            if stored == (w, h):
                w, h = h, w
        return h, w


# -- decoding --------------------------------------------------------------------------------------------------
def _reduction(w: int, h: int, size_hint: int | None) -> int:
    """The integer factor to shrink a ``w x h`` image by so its shorter side stays >= ``2 * size_hint``; 1 (no
    reduction) unless the shorter side is at least ``4 * size_hint``."""
    if size_hint is None:
        return 1
    k = min(w, h) // (2 * size_hint)
    return k if k >= 2 else 1


def _check_size_hint(size_hint) -> int | None:
    if size_hint is None:
        return None
    if isinstance(size_hint, bool) or not isinstance(size_hint, (int, np.integer)) or size_hint < 1:
        raise InvalidArgumentError(f"size_hint must be a positive number of pixels (the side length the image will "
                                   f"be resized to) or None, got {size_hint!r}")
    return int(size_hint)


def _pixels(im, size_hint: int | None, orientation: int) -> np.ndarray:
    """A loaded PIL image as an array (see :func:`_from_pil`), box-reduced in its own 8-bit (or 16-bit as float)
    values when much larger than needed, then turned upright."""
    from PIL import Image

    sixteen = im.mode.startswith("I;16")
    k = _reduction(*im.size, size_hint)
    if k > 1:
        if sixteen:
            im = im.convert("F")
        elif im.mode not in _REDUCIBLE_MODES:
            im = im.convert("RGB")
        im = im.reduce(k)
    if orientation != 1:
        im = im.transpose(getattr(Image.Transpose, _TRANSPOSE[orientation]))
    if sixteen:
        return np.asarray(im, dtype=np.float32) / 65535.0
    return _from_pil(im)


def decode_image(source, *, name: str | None = None, max_pixels: int | None = None,
                 size_hint: int | None = None) -> np.ndarray:
    """An image file (a path, or its encoded bytes) as an HxWx{1,3} array: uint8 RGB, or float32 for 16-bit and
    float files; :func:`to_rgb` turns it into float32 RGB in [0, 1].

    The header's pixel count is checked against :func:`pixel_cap` before any pixel is decoded
    (ImageTooLargeError); the first frame is decoded at reduced scale when ``size_hint`` (the side the caller
    resizes to) says a quarter of it or less is needed, and EXIF orientation is applied. Every way a file can
    fail raises ImageFileError naming it (``name``, else the path)."""
    cap = pixel_cap(max_pixels)
    hint = _check_size_hint(size_hint)
    with _opened(source, name) as (im, label):
        w, h = im.size
        _check_pixels(w, h, label, cap)
        try:
            header_orientation = _orientation(im)  # before load, as image_size() reads it
            k = _reduction(w, h, hint)
            if k > 1:  # JPEG: DCT scaling by 1/2, 1/4 or 1/8 inside the decoder; other formats ignore it
                im.draft(im.mode, (-(-w // k), -(-h // k)))
            im.load()
            return _pixels(im, hint, _orientation(im) if header_orientation != 1 else 1)
        except JaxcamError:
            raise
        except Exception as exc:  # noqa: BLE001 - truncated or bit-flipped data fails inside PIL's decoders
            raise _bad_file(label, exc) from None


def check_image(source, *, name: str | None = None, max_pixels: int | None = None) -> None:
    """Raise what :func:`decode_image` would for ``source``, decoding it at small scale (a pre-flight check
    before a long run: truncation anywhere in the file is still found)."""
    decode_image(source, name=name, max_pixels=max_pixels, size_hint=32)


def _from_pil(im) -> np.ndarray:
    if im.mode.startswith("I;16"):
        return np.asarray(im, dtype=np.float32) / 65535.0
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def _from_pil_image(im, name: str, max_pixels: int | None, size_hint: int | None) -> np.ndarray:
    """A PIL image given by the caller: the same cap, reduction and orientation as a file (the caller's image
    is not modified)."""
    _check_pixels(*im.size, name, pixel_cap(max_pixels))
    try:
        im.load()
        return _pixels(im, _check_size_hint(size_hint), _orientation(im))
    except JaxcamError:
        raise
    except Exception as exc:  # noqa: BLE001 - a lazily opened image can still fail to decode here
        raise _bad_file(name, exc) from None


def to_rgb(image, name: str = "image", *, max_pixels: int | None = None, size_hint: int | None = None) -> np.ndarray:
    """One image (path, PIL image or array) as a float32 HxWx3 array in [0, 1]. Validates everything.

    Files and PIL images go through :func:`decode_image`: ``max_pixels`` caps their pixel count (default:
    :func:`pixel_cap`), ``size_hint`` (the side length the image will be resized to) lets a much larger photo be
    decoded at reduced scale, and EXIF orientation is applied. Arrays are taken as they are."""
    if isinstance(image, (str, os.PathLike)):
        arr = decode_image(image, max_pixels=max_pixels, size_hint=size_hint)
    elif type(image).__module__.startswith("PIL."):
        arr = _from_pil_image(image, name, max_pixels, size_hint)
    else:
        if image is None or isinstance(image, (bytes, bytearray, dict, set, int, float, complex, bool)):
            raise ImageDtypeError(f"{name} is {type(image).__name__} {str(image)[:60]!r}; pass a file path, a PIL "
                                  "image or an HxW / HxWx1 / HxWx3 / HxWx4 array (a list of them for a batch)")
        try:
            arr = np.asarray(image)
        except Exception as exc:  # noqa: BLE001 - anything numpy cannot take is a wrong input type
            raise ImageDtypeError(f"{name}: cannot read an image from a {type(image).__name__}: {exc}") from None
    arr = _to_unit_float(arr, name)
    return _to_three_channels(arr, name)


def _to_unit_float(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype in (np.uint8, np.uint16):  # divided in place: one float32 copy of a large photo, not two
        out = arr.astype(np.float32)
        out /= 255.0 if arr.dtype == np.uint8 else 65535.0
        return out
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
        raise UnknownNameError(mode, RESIZE_MODES, "resize mode")
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
               resize_mode: str = "stretch", max_pixels: int | None = None) -> np.ndarray:
    """Images (see module docstring) to a normalised (N, size, size, 3) float32 batch: ``(rgb - mean) / std``.
    Files are decoded at reduced scale when much larger than the resize needs; ``max_pixels`` caps their size
    (default: :func:`pixel_cap`)."""
    batch = as_image_list(images)
    out = np.empty((len(batch), size, size, 3), np.float32)
    hint = size if resize_mode != "center_crop" else round(size * 256 / 224)  # the shorter side resize() gives
    for i, img in enumerate(batch):
        rgb = to_rgb(img, name=f"image {i}" if len(batch) > 1 else "image", max_pixels=max_pixels, size_hint=hint)
        out[i] = resize(rgb, size, resize_mode)
    return (out - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
