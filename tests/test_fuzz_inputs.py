"""Fuzzing what users hand jaxcam: image files with damaged bytes, and arrays of every shape and dtype.

Every outcome must be a correct result or a :class:`jaxcam.JaxcamError`, never another exception, never a PIL
decompression-bomb warning, and never a NaN map:

- image bytes: small valid PNG/JPEG/GIF/BMP files, then truncated at a random offset, bit-flipped at random
  positions, or with the header's width/height rewritten (huge, zero, negative for BMP), read through a temporary
  file by the decoder, ``jaxcam.to_rgb`` and ``jaxcam.preprocess`` (results: finite float32 HxWx3 in [0, 1]);
- arrays: 0-4 dimensions, sizes 0..5 and 1..40, dtypes from uint8 to complex, object and str, NaN/inf injected,
  fed to ``jaxcam.preprocess`` and to ``jaxcam.explain`` on the toy model (input 32 px; one batch shape, so each
  method set compiles once): maps finite and in [0, 1].
"""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import jaxcam
from jaxcam import data

from .toy import toy_model

FORMATS = ("PNG", "JPEG", "GIF", "BMP")
SIZES = st.one_of(st.sampled_from([0, 1, 255, 4096, 65535, 2 ** 15, 2 ** 31 - 1, 2 ** 32 - 1]), st.integers(0, 3000))
FUZZ_CAP = 1_000_000  # header sizes above this are refused; below it a damaged file decodes in milliseconds
METHODS = ["gradcam", "gradcam++", "eigencam", "scorecam"]
DTYPES = ("uint8", "uint16", "int32", "int64", "float16", "float32", "float64", "bool", "complex64", "object", "str")


# -- image bytes -----------------------------------------------------------------------------------------------
def _encode(fmt: str, arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _rewrite_size(fmt: str, blob: bytearray, w: int, h: int) -> None:
    """Put ``w x h`` into the header fields that state the image size (PNG: IHDR with a valid CRC; JPEG: SOF0;
    GIF: the logical screen and the first image descriptor; BMP: the info header, signed)."""
    if fmt == "PNG":
        blob[16:24] = struct.pack(">II", w, h)
        blob[29:33] = struct.pack(">I", zlib.crc32(bytes(blob[12:29])))
    elif fmt == "JPEG":
        sof = blob.find(b"\xff\xc0")
        if sof >= 0:
            blob[sof + 5:sof + 9] = struct.pack(">HH", h & 0xFFFF, w & 0xFFFF)
    elif fmt == "GIF":
        blob[6:10] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
        desc = blob.find(b"\x2c", 13)
        if desc >= 0 and desc + 9 <= len(blob):
            blob[desc + 5:desc + 9] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
    else:
        blob[18:26] = struct.pack("<ii", (w & 0xFFFFFFFF) - (1 << 32) if w >= 1 << 31 else w,
                                  (h & 0xFFFFFFFF) - (1 << 32) if h >= 1 << 31 else h)


@st.composite
def damaged_images(draw):
    fmt = draw(st.sampled_from(FORMATS))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if draw(st.booleans()):
        arr = arr[..., 0]  # grayscale (GIF and PNG palette/gray paths)
    blob = bytearray(_encode(fmt, arr))
    how = draw(st.sampled_from(["intact", "truncate", "flip", "size", "size+truncate"]))
    if how.startswith("size"):
        _rewrite_size(fmt, blob, draw(SIZES), draw(SIZES))
    if how.endswith("truncate"):
        blob = blob[:draw(st.integers(0, len(blob) - 1))]
    if how == "flip":
        for pos in draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=8)):
            blob[pos] ^= 1 << draw(st.integers(0, 7))
    return fmt, how, bytes(blob)


def _check_rgb(rgb) -> None:
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.float32 and rgb.ndim == 3 and rgb.shape[-1] == 3
    assert rgb.shape[0] >= 1 and rgb.shape[1] >= 1
    assert np.isfinite(rgb).all() and rgb.min() >= 0.0 and rgb.max() <= 1.0


def _outcome(call):
    """The call's result, or None when it raised a JaxcamError; any other exception fails the test."""
    try:
        return call()
    except jaxcam.JaxcamError as exc:
        assert "\n" not in str(exc), str(exc)
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=damaged_images())
def test_damaged_image_files_decode_or_raise_a_jaxcam_error(case, tmp_path):
    fmt, how, blob = case
    path = tmp_path / f"fuzz.{fmt.lower()}"
    path.write_bytes(blob)
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(), data.max_pixels_scope(FUZZ_CAP):
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        hw = _outcome(lambda: data.image_size(path))
        rgb = _outcome(lambda: jaxcam.to_rgb(path))
        small = _outcome(lambda: jaxcam.to_rgb(path, size_hint=2))
        x = _outcome(lambda: jaxcam.preprocess(path, size=32))
        from_bytes = _outcome(lambda: data.decode_image(blob))
    assert Image.MAX_IMAGE_PIXELS == limit
    event(f"{fmt} {how}: {'decoded' if rgb is not None else 'JaxcamError'}")  # --hypothesis-show-statistics
    if rgb is not None:
        _check_rgb(rgb)
        assert hw == rgb.shape[:2]  # the header's displayed size is the decoded size
        assert from_bytes is not None and from_bytes.shape[:2] == rgb.shape[:2]
        _check_rgb(small)
        assert x is not None and x.shape == (1, 32, 32, 3) and x.dtype == np.float32 and np.isfinite(x).all()
    if how == "intact":
        assert rgb is not None, f"an intact {fmt} file must decode"


def test_the_fuzzer_reaches_the_cap_and_damaged_files(tmp_path):
    """The strategies' corner cases, run once by hand: a header rewritten past the cap is refused, a truncated
    file is an ImageFileError, in each format."""
    arr = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for fmt in FORMATS:
        big = bytearray(_encode(fmt, arr))
        _rewrite_size(fmt, big, 4000, 4000)
        with pytest.raises(jaxcam.ImageTooLargeError), data.max_pixels_scope(FUZZ_CAP):
            data.decode_image(bytes(big))
        with pytest.raises(jaxcam.ImageFileError):
            data.decode_image(_encode(fmt, arr)[:20])


# -- arrays ----------------------------------------------------------------------------------------------------
@st.composite
def odd_arrays(draw):
    ndim = draw(st.sampled_from([0, 1, 2, 2, 3, 3, 3, 4, 4]))  # mostly image-like ranks
    dims = [draw(st.one_of(st.integers(0, 5), st.integers(1, 40))) for _ in range(ndim)]
    if ndim >= 3 and draw(st.integers(0, 3)):
        dims[-1] = draw(st.sampled_from([1, 3, 4]))  # usually a valid channel count, so explain() is reached
    if ndim == 4:
        dims[0] = min(dims[0], 3)  # a batch of at most 3: keeps an example small
    shape = tuple(dims)
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    if dtype == "object":
        arr = np.empty(shape, object)
        arr[...] = draw(st.sampled_from([None, 1, 0.5, "x"]))
    elif dtype == "str":
        arr = np.full(shape, "0.5")
    elif dtype == "bool":
        arr = rng.random(shape) < 0.5
    elif dtype.startswith(("uint", "int")):
        info = np.iinfo(dtype)
        arr = rng.integers(max(info.min, -1000), min(info.max, 70000), shape, endpoint=True).astype(dtype)
    else:
        scale = draw(st.sampled_from([1.0, 1.0, 1.0, 0.0, 1e-30, 255.0, -1.0]))  # in range, constant, tiny, out
        arr = (rng.random(shape) * scale).astype(dtype)
        if arr.size and draw(st.integers(0, 3)) == 0:  # one NaN/inf in a quarter of the float arrays
            arr.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return arr


@pytest.fixture(scope="module")
def toy():
    return toy_model()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=odd_arrays())
def test_odd_arrays_give_finite_maps_or_a_jaxcam_error(arr, toy):
    x = _outcome(lambda: jaxcam.preprocess(arr, size=32))
    event(f"{arr.dtype.kind} ndim {arr.ndim}: " + ("JaxcamError" if x is None else f"batch of {x.shape[0]}"))
    if x is None:
        return
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (32, 32, 3) and np.isfinite(x).all()
    if x.shape[0] != 1:  # explain() below always sees one image: one compiled program per method set
        return
    maps = _outcome(lambda: jaxcam.explain(toy, arr, METHODS))
    assert maps is not None, "an array preprocess accepts must be explainable"
    for method, m in maps.items():
        m = np.asarray(m)
        assert m.shape == (1, 32, 32) and np.isfinite(m).all(), method
        assert m.min() >= 0.0 and m.max() <= 1.0, method


def test_constant_and_extreme_images_give_finite_maps(toy):
    """The cases a fuzzer finds first, pinned: an all-black, an all-white and a one-pixel-bright image."""
    spike = np.zeros((32, 32, 3), np.float32)
    spike[5, 7] = 1.0
    for arr in (np.zeros((32, 32, 3), np.uint8), np.full((32, 32), 65535, np.uint16), spike):
        for method, m in jaxcam.explain(toy, arr, METHODS).items():
            m = np.asarray(m)
            assert np.isfinite(m).all() and m.min() >= 0.0 and m.max() <= 1.0, method
