"""jaxcam.viz: colormaps, overlays (alpha 0 is the photo, alpha 1 the heat map), PNG bytes and the grid figure."""

import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

import jaxcam
from jaxcam import viz


@pytest.fixture
def photo():
    return np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def ramp(h=7, w=7):
    return np.linspace(0.0, 1.0, h * w, dtype=np.float32).reshape(h, w)


def decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_colorize_uses_the_colormap_and_clips():
    rgb = viz.colorize(np.array([[0.0, 1.0], [-3.0, 7.0]]), "viridis")
    cmap = matplotlib.colormaps["viridis"]
    low, high = (np.round(np.asarray(cmap(v))[:3] * 255).astype(np.uint8) for v in (0.0, 1.0))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[0, 0], low)
    np.testing.assert_array_equal(rgb[0, 1], high)
    np.testing.assert_array_equal(rgb[1, 0], low)  # below 0 clips to 0
    np.testing.assert_array_equal(rgb[1, 1], high)


def test_overlay_alpha_zero_is_the_image_and_one_is_the_colormap(photo):
    cam = ramp()
    np.testing.assert_array_equal(viz.overlay(photo, cam, alpha=0.0), photo)
    heat = viz.colorize(viz.resize_map(cam, photo.shape[:2]), "inferno")
    np.testing.assert_array_equal(viz.overlay(photo, cam, alpha=1.0), heat)
    half = viz.overlay(photo, cam, alpha=0.5).astype(int)
    assert np.abs(half - (photo.astype(int) + heat) / 2).max() <= 1


def test_overlay_resizes_the_map_to_the_image(photo):
    out = viz.overlay(photo, ramp(7, 7), alpha=1.0)
    assert out.shape == photo.shape and out.dtype == np.uint8
    resized = viz.resize_map(ramp(7, 7), (48, 64))
    assert resized.shape == (48, 64)
    assert resized[0, 0] < resized[-1, -1]  # the ramp keeps its direction
    same = ramp(48, 64)
    np.testing.assert_array_equal(viz.resize_map(same, (48, 64)), same)  # already the right size: unchanged


def test_overlay_takes_float_images_and_paths(photo, tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(photo).save(path)
    np.testing.assert_array_equal(viz.overlay(str(path), ramp(), alpha=0.0), photo)
    np.testing.assert_array_equal(viz.overlay(photo / 255.0, ramp(), alpha=0.0), photo)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_map_is_a_map_error(photo, bad):
    cam = ramp()
    cam[3, 3] = bad
    with pytest.raises(jaxcam.MapError, match="NaN or infinite"):
        viz.overlay(photo, cam)
    with pytest.raises(jaxcam.MapError, match="NaN or infinite"):
        viz.colorize(cam)


def test_map_must_be_two_dimensional(photo):
    with pytest.raises(jaxcam.MapError, match="2-D"):
        viz.overlay(photo, np.zeros((1, 7, 7), np.float32))
    with pytest.raises(jaxcam.MapError, match="2-D"):
        viz.colorize(np.zeros(5))


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "half"])
def test_bad_alpha_is_a_value_error(photo, alpha):
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(photo, ramp(), alpha=alpha)


def test_unknown_colormap_lists_names(photo):
    with pytest.raises(jaxcam.UnknownNameError, match="'viridis'"):
        viz.overlay(photo, ramp(), cmap="no-such-map")
    assert viz.check_cmap("viridis_r") == "viridis_r"


def test_png_bytes_round_trip(photo):
    np.testing.assert_array_equal(decode(viz.png_bytes(photo)), photo)


def test_grid_figure_is_a_png_sized_by_rows_and_columns(photo):
    maps = {"gradcam": np.stack([ramp(), ramp()[::-1]]), "eigencam": [ramp(), ramp()]}
    titles = {"gradcam": ["gradcam — tabby 0.62", "gradcam — robin 0.10"]}
    two_by_two = decode(viz.grid_figure([photo, photo / 255.0], maps, titles, ["a", "b"], alpha=0.4, cmap="jet",
                                        dpi=50))
    one_by_one = decode(viz.grid_figure([photo], {"gradcam": [ramp()]}, dpi=50))
    assert two_by_two.shape[1] > one_by_one.shape[1] and two_by_two.shape[0] > one_by_one.shape[0]
    assert two_by_two.shape[1] >= 2 * 2.2 * 50  # two panels wide, plus the colour bar
    assert one_by_one.std() > 0


def test_grid_figure_colour_bar_is_drawn(photo):
    """The figure with a colour bar is wider than its panels and holds the colormap's extreme colours."""
    png = decode(viz.grid_figure([photo], {"m": [np.full((7, 7), 0.5, np.float32)]}, alpha=0.0, cmap="viridis",
                                 dpi=60))
    cmap = matplotlib.colormaps["viridis"]
    for v in (0.02, 0.98):  # the panel shows only the photo (alpha 0): these colours come from the bar
        target = np.round(np.asarray(cmap(v))[:3] * 255)
        assert (np.abs(png.astype(int) - target).sum(axis=-1) < 12).any(), v


def test_grid_figure_bad_input(photo):
    with pytest.raises(jaxcam.MapError, match="one map per image"):
        viz.grid_figure([photo, photo], {"m": [ramp()]})
    with pytest.raises(jaxcam.MapError, match="at least one column"):
        viz.grid_figure([photo], {})
    with pytest.raises(ValueError, match="titles"):
        viz.grid_figure([photo], {"m": [ramp()]}, titles={"m": ["a", "b"]})
    with pytest.raises(ValueError, match="row labels"):
        viz.grid_figure([photo], {"m": [ramp()]}, row_labels=["a", "b"])
    with pytest.raises(ValueError, match="alpha"):
        viz.grid_figure([photo], {"m": [ramp()]}, alpha=2.0)
    cam = ramp()
    cam[0, 0] = np.nan
    with pytest.raises(jaxcam.MapError, match="NaN"):
        viz.grid_figure([photo], {"m": [cam]})
