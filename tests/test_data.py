"""Images in: every accepted form gives the same batch; every bad input is a specific, named error."""

import numpy as np
import pytest
from PIL import Image

import jaxcam
from jaxcam.data import preprocess, resize, to_rgb


@pytest.fixture(scope="module")
def cat():
    return jaxcam.sample_images(["chelsea"])["chelsea"]


def test_sample_images_are_uint8_rgb():
    imgs = jaxcam.sample_images()
    assert list(imgs) == ["chelsea", "coffee", "astronaut", "rocket"]
    assert all(v.dtype == np.float32 and v.ndim == 3 and v.shape[-1] == 3 for v in imgs.values())


def test_path_pil_uint8_and_float_agree(cat, tmp_path):
    u8 = np.round(cat * 255).astype(np.uint8)
    path = tmp_path / "cat.png"
    Image.fromarray(u8).save(path)
    forms = [u8, u8.astype(np.float32) / 255, Image.fromarray(u8), path, str(path)]
    batches = [preprocess(f) for f in forms]
    for b in batches[1:]:
        np.testing.assert_allclose(b, batches[0], atol=1e-6)
    assert batches[0].shape == (1, 224, 224, 3) and batches[0].dtype == np.float32


def test_grayscale_rgba_and_uint16(cat):
    gray = np.round(cat.mean(-1) * 255).astype(np.uint8)
    g = to_rgb(gray)
    assert g.shape == cat.shape and np.array_equal(g[..., 0], g[..., 2])
    np.testing.assert_array_equal(to_rgb(gray[..., None]), g)
    rgba = np.concatenate([np.round(cat * 255).astype(np.uint8), np.zeros(cat.shape[:2] + (1,), np.uint8)], -1)
    np.testing.assert_allclose(to_rgb(rgba), np.round(cat * 255) / 255, atol=1e-6)  # alpha dropped
    np.testing.assert_allclose(to_rgb(Image.fromarray(rgba)), to_rgb(rgba), atol=1e-6)
    np.testing.assert_allclose(to_rgb((cat * 65535).astype(np.uint16)), cat, atol=1e-4)
    assert to_rgb(np.ones((4, 4), bool)).max() == 1.0


def test_batches_lists_and_arrays(cat):
    small = resize(cat, 40)
    arr = np.stack([small, small[::-1]])
    assert preprocess(arr, size=32).shape == (2, 32, 32, 3)
    assert preprocess([small, small], size=32).shape == (2, 32, 32, 3)
    with pytest.raises(jaxcam.ImageShapeError, match="empty list"):
        preprocess([])


def test_normalisation_and_resize_modes(cat):
    x = preprocess(cat, size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert -1 <= x.min() and x.max() <= 1
    wide = np.zeros((100, 200, 3), np.float32)
    wide[:, 50:150] = 1.0  # a bright centre square
    crop = preprocess(wide, size=64, mean=(0, 0, 0), std=(1, 1, 1), resize_mode="center_crop")
    assert crop.shape == (1, 64, 64, 3) and crop[0, :, :5].min() > 0.99  # the crop keeps only the centre
    with pytest.raises(ValueError, match="stretch"):
        resize(cat, 32, "squash")


@pytest.mark.parametrize("bad,err,match", [
    (np.zeros((3, 32, 32), np.uint8), jaxcam.ImageShapeError, "channel-first"),
    (np.zeros((32, 32, 5), np.uint8), jaxcam.ImageShapeError, "last axis"),
    (np.zeros((32,), np.uint8), jaxcam.ImageShapeError, "shape"),
    (np.zeros((2, 2, 32, 32, 3), np.uint8), jaxcam.ImageShapeError, "shape"),
    (np.zeros((0, 32, 3), np.uint8), jaxcam.ImageShapeError, "empty"),
    (np.zeros((32, 32, 3), np.int32), jaxcam.ImageDtypeError, "int32"),
    (np.zeros((32, 32, 3), np.complex64), jaxcam.ImageDtypeError, "complex64"),
    (np.full((32, 32, 3), 200.0, np.float32), jaxcam.ImageError, "divide by 255"),
    (np.full((32, 32, 3), -0.5, np.float32), jaxcam.ImageError, r"\[0, 1\]"),
    (object(), jaxcam.ImageDtypeError, "object"),
])
def test_bad_arrays(bad, err, match):
    with pytest.raises(err, match=match):
        preprocess(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels(value):
    img = np.full((16, 16, 3), 0.5, np.float32)
    img[3, 4, 1] = value
    with pytest.raises(jaxcam.NonFiniteImageError, match="1 NaN or infinite"):
        preprocess(img)


def test_bad_files(tmp_path, cat):
    with pytest.raises(jaxcam.ImageFileError, match="not found"):
        preprocess(tmp_path / "missing.png")
    with pytest.raises(jaxcam.ImageFileError, match="not a file"):
        preprocess(tmp_path)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    with pytest.raises(jaxcam.ImageFileError, match="not a readable image"):
        preprocess(text)
    good = tmp_path / "cat.png"
    Image.fromarray(np.round(cat * 255).astype(np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(jaxcam.ImageFileError, match="corrupt or truncated"):
        preprocess(cut)
    with pytest.raises(jaxcam.ImageFileError, match="cut.png"):  # the bad one of a batch is named
        preprocess([good, cut])
    assert issubclass(jaxcam.ImageFileError, OSError)


def test_model_input_checks(resnet18):
    with pytest.raises(jaxcam.ImageShapeError, match=r"\(N, H, W, 3\)"):
        resnet18(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(jaxcam.ImageShapeError, match="at least 32x32"):
        resnet18(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(jaxcam.ImageDtypeError, match="uint8"):
        resnet18(np.zeros((1, 64, 64, 3), np.uint8))
    x = np.zeros((2, 64, 64, 3), np.float32)
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(jaxcam.NonFiniteImageError):
        resnet18(x)
    with pytest.raises(jaxcam.ClassIndexError, match="k must be"):
        resnet18.predict(np.zeros((64, 64, 3), np.uint8), k=0)
