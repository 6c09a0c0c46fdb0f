"""Untrusted image files: one decoder (jaxcam.data.decode_image) for every image jaxcam reads, with a pixel cap
checked before decoding, reduced-scale decoding of huge photos, EXIF orientation, and one clear ImageFileError for
every file that is not an image. Each case of issue 13 with its exact input, through the API and the CLI (exit 2,
one ``jaxcam: error:`` line, nothing written)."""

import errno
import io
import os
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageOps

import jaxcam
from jaxcam import data
from jaxcam.cli import common as cli_common
from jaxcam.cli import evaluate as cli_eval
from jaxcam.cli import explain as cli_explain
from jaxcam.cli import main
from jaxcam.cli import robustness as cli_rob
from jaxcam.datasets import _decode_bytes

from .toy import toy_model

R18 = ["--model", "resnet18", "--random-weights"]


# -- inputs ----------------------------------------------------------------------------------------------------
def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width=60000, height=60000) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels around 100 compressed zero bytes (69 bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 100, 9))
            + _chunk(b"IEND", b""))


def smooth(h, w, seed=0) -> np.ndarray:
    """A smooth uint8 RGB picture (gradients and a blob) that JPEG keeps within a few levels."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    blob = np.exp(-((y - 0.4) ** 2 + (x - 0.6) ** 2) * 8)
    rgb = np.stack([x, y, blob], -1) * 200 + 20 + np.random.default_rng(seed).normal(0, 1, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def encoded(arr, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def with_orientation(arr, orientation, fmt="JPEG") -> bytes:
    exif = Image.Exif()
    exif[data.ORIENTATION_TAG] = orientation
    return encoded(arr, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))


def snapshot(folder) -> dict:
    """Every file under ``folder`` with its bytes (a symlink: where it points)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for f in files + dirs:
            p = os.path.join(root, f)
            if os.path.islink(p):
                out[os.path.relpath(p, folder)] = os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, folder)] = fh.read()
            else:
                out[os.path.relpath(p, folder)] = "directory"
    return out


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxcam: error: "), err
    return lines[0]


@pytest.fixture
def bomb(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    assert path.stat().st_size == 69
    return path


# -- 1. decompression bombs ------------------------------------------------------------------------------------
def test_a_69_byte_bomb_is_refused_before_decoding_from_every_api_entry(bomb):
    limit = Image.MAX_IMAGE_PIXELS
    toy = toy_model()
    calls = [lambda: jaxcam.to_rgb(bomb), lambda: jaxcam.to_rgb(str(bomb)), lambda: jaxcam.preprocess([bomb]),
             lambda: data.decode_image(bomb), lambda: data.check_image(bomb), lambda: toy.preprocess(bomb),
             lambda: toy.predict(bomb, k=1), lambda: jaxcam.explain(toy, bomb, "gradcam"),
             lambda: _decode_bytes(bomb.read_bytes(), "b1")]
    for call in calls:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not escape either
            with pytest.raises(jaxcam.ImageTooLargeError) as info:
                call()
        msg = str(info.value)
        assert "\n" not in msg and "60000x60000" in msg and "150,000,000" in msg, msg
        assert ("bomb.png" in msg or "'b1'" in msg) and "max_pixels=" in msg and "JAXCAM_MAX_PIXELS" in msg
        assert "--max-pixels" in msg
    assert Image.MAX_IMAGE_PIXELS == limit  # PIL's own setting is untouched for the user's program


def test_the_cap_is_a_keyword_an_environment_variable_and_a_scope(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    path.write_bytes(encoded(smooth(48, 64)))  # 3072 pixels
    assert data.pixel_cap() == data.DEFAULT_MAX_PIXELS >= 10000 * 10000
    with pytest.raises(jaxcam.ImageTooLargeError, match="64x48 = 3,072 pixels, above the decoding cap of 3,000 "):
        jaxcam.to_rgb(path, max_pixels=3000)
    assert jaxcam.to_rgb(path, max_pixels=3072).shape == (48, 64, 3)
    with pytest.raises(jaxcam.ImageTooLargeError):
        jaxcam.preprocess(path, size=32, max_pixels=3000)
    monkeypatch.setenv("JAXCAM_MAX_PIXELS", "3_000")
    with pytest.raises(jaxcam.ImageTooLargeError):
        jaxcam.to_rgb(path)
    assert jaxcam.to_rgb(path, max_pixels=10 ** 4).shape == (48, 64, 3)  # the keyword wins over the environment
    with data.max_pixels_scope("1e4"):
        assert jaxcam.to_rgb(path).shape == (48, 64, 3)  # the scope (the CLI's --max-pixels) wins too
    monkeypatch.setenv("JAXCAM_MAX_PIXELS", "lots")
    with pytest.raises(jaxcam.InvalidArgumentError, match=r"\$JAXCAM_MAX_PIXELS must be a number of pixels"):
        jaxcam.to_rgb(path)
    monkeypatch.delenv("JAXCAM_MAX_PIXELS")
    for bad in (0, -5, 2.5, True, "1.5"):
        with pytest.raises(jaxcam.InvalidArgumentError, match="max_pixels"):
            jaxcam.to_rgb(path, max_pixels=bad)


def test_the_default_cap_lets_a_10000x10000_photo_through(tmp_path):
    """A real JPEG whose frame header is rewritten to 10000x10000: it passes the cap and decodes (libjpeg fills the
    missing data) at reduced scale, in milliseconds."""
    jpg = bytearray(encoded(smooth(16, 16), "JPEG"))
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5:sof + 9] = struct.pack(">HH", 10000, 10000)
    path = tmp_path / "big.jpg"
    path.write_bytes(bytes(jpg))
    assert data.image_size(path) == (10000, 10000)
    rgb = jaxcam.to_rgb(path, size_hint=224)
    assert rgb.shape == (625, 625, 3)  # DCT-scaled by 8 in the decoder, then halved: shorter side >= 448
    with pytest.raises(jaxcam.ImageTooLargeError):
        jaxcam.to_rgb(path, max_pixels=99_999_999)


def test_pil_limits_never_reach_the_user_even_from_threads(tmp_path):
    """Between PIL's warning threshold (89.5 MP) and our cap nothing is said; decoding in threads (as datasets
    do) leaves PIL's global limit as it was."""
    limit = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "big.png"
    path.write_bytes(bomb_png(10000, 10000))  # 100 MP declared: above PIL's 89.5 MP warning, below our cap
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert data.image_size(path) == (10000, 10000)
        paths = [bomb_png(60000 + i, 60000) for i in range(8)]
        with ThreadPoolExecutor(4) as pool:
            errors = list(pool.map(lambda b: pytest.raises(jaxcam.ImageTooLargeError, data.decode_image, b), paths))
    assert all(e.type is jaxcam.ImageTooLargeError for e in errors)
    assert Image.MAX_IMAGE_PIXELS == limit


# -- 2. huge photos: reduced-scale decoding --------------------------------------------------------------------
def test_ordinary_photos_decode_bit_identically(tmp_path):
    """A 640x480 photo for a 224 px model is far from 4x larger: the arrays are exactly PIL's full decode."""
    arr = smooth(480, 640)
    for fmt in ("JPEG", "PNG"):
        path = tmp_path / f"photo.{fmt.lower()}"
        path.write_bytes(encoded(arr, fmt))
        with Image.open(path) as im:
            full = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(jaxcam.to_rgb(path, size_hint=224), full.astype(np.float32) / 255)
        np.testing.assert_array_equal(jaxcam.preprocess(path), jaxcam.preprocess(full))


@pytest.mark.parametrize("fmt,shape", [("JPEG", (800, 1000)), ("PNG", (534, 667))])
def test_large_photos_decode_at_reduced_scale_with_the_same_model_input(tmp_path, fmt, shape):
    """2000x1600 for a 224 px input: JPEG by DCT scaling (1/2), PNG by 3x3 box averaging; the shorter side stays
    >= 2 x 224 and the normalised model input stays within 0.03 of the full decode's (0.5% of its range)."""
    arr = smooth(1600, 2000)
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(encoded(arr, fmt, **({"quality": 95} if fmt == "JPEG" else {})))
    assert jaxcam.to_rgb(path, size_hint=224).shape == (*shape, 3)
    with Image.open(path) as im:
        full = np.asarray(im.convert("RGB"))
    assert np.abs(jaxcam.preprocess(path) - jaxcam.preprocess(full)).max() < 0.03
    assert np.abs(jaxcam.preprocess(path, resize_mode="center_crop")
                  - jaxcam.preprocess(full, resize_mode="center_crop")).max() < 0.03


def test_reduction_keeps_each_mode_and_bit_depth(tmp_path):
    """Palette and grayscale+alpha files are reduced as the RGB they decode to (alpha dropped, as without
    reduction); 16-bit files in their own values (finer than 8 bits)."""
    gray16 = (np.linspace(0, 65535, 400 * 300).reshape(300, 400)).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    Image.fromarray(smooth(300, 400)).convert("P").save(tmp_path / "p.png")
    Image.fromarray(smooth(300, 400)).convert("LA").save(tmp_path / "la.png")
    g = jaxcam.to_rgb(tmp_path / "g16.png", size_hint=32)
    assert g.shape == (75, 100, 3) and len(np.unique(g)) > 256  # finer than 8 bits
    np.testing.assert_allclose(g[..., 0].mean(), 0.5, atol=0.01)
    for name in ("p.png", "la.png"):
        small, full = jaxcam.to_rgb(tmp_path / name, size_hint=32), jaxcam.to_rgb(tmp_path / name)
        box = full.reshape(75, 4, 100, 4, 3).mean(axis=(1, 3))  # 4x4 box averages of the full decode's RGB
        assert small.shape == (75, 100, 3) and np.abs(small - box).max() <= 0.5 / 255 + 1e-6, name


def test_overlay_photo_is_bounded():
    """``jaxcam explain`` draws overlays on the photo scaled down to OVERLAY_MAX_SIDE on its longer side."""
    assert cli_explain.overlay_photo(np.zeros((600, 4200, 3), np.float32)).shape == (293, 2048, 3)
    small = np.random.default_rng(0).uniform(0, 1, (48, 64, 3)).astype(np.float32)
    np.testing.assert_array_equal(cli_explain.overlay_photo(small), np.round(small * 255).astype(np.uint8))


# -- 3. EXIF orientation ---------------------------------------------------------------------------------------
def test_a_phone_photo_with_orientation_6_decodes_upright(tmp_path):
    upright = smooth(64, 48)  # what a browser shows: 48 wide, 64 high
    stored = np.rot90(upright, 1)  # the sensor's pixels; Orientation=6 says "rotate 90 degrees clockwise"
    path = tmp_path / "phone.jpg"
    path.write_bytes(with_orientation(stored, 6))
    rgb = jaxcam.to_rgb(path)
    assert rgb.shape == (64, 48, 3)
    assert np.abs(rgb - upright / 255.0).mean() < 0.01 and np.abs(rgb - upright / 255.0).max() < 0.1
    assert data.image_size(path) == (64, 48) and cli_eval._image_hw(str(path)) == (64, 48)
    with Image.open(path) as im:
        assert jaxcam.to_rgb(im).shape == (64, 48, 3)  # a PIL image the caller opened: the same
    np.testing.assert_allclose(jaxcam.preprocess(path, size=32), jaxcam.preprocess(upright, size=32), atol=0.1)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_every_orientation_matches_exif_transpose(tmp_path, fmt):
    """All eight orientations agree with PIL's ImageOps.exif_transpose, and the header-only size with them
    (Pillow's TIFF reader turns TIFFs itself: never twice)."""
    stored = smooth(20, 30)
    for orientation in range(1, 9):
        blob = with_orientation(stored, orientation, fmt)
        with Image.open(io.BytesIO(blob)) as im:
            expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        got = data.decode_image(blob)
        np.testing.assert_array_equal(got, expected, err_msg=f"{fmt} orientation {orientation}")
        assert data.image_size(blob) == got.shape[:2], (fmt, orientation)


def test_masks_follow_the_displayed_orientation(tmp_path):
    """A mask stored sideways with Orientation=6 lines up with the upright one (read_masks uses the decoder)."""
    upright = np.zeros((64, 48), np.uint8)
    upright[8:24, 30:44] = 255
    Image.fromarray(upright).save(tmp_path / "up.png")
    (tmp_path / "side.png").write_bytes(with_orientation(np.ascontiguousarray(np.rot90(upright, 1)), 6, "PNG"))
    masks = cli_eval.read_masks([str(tmp_path / "up.png"), str(tmp_path / "side.png")], 32)
    assert masks[0].sum() > 0
    np.testing.assert_array_equal(masks[1], masks[0])


# -- 4. symlink loops, 5. the docstring ------------------------------------------------------------------------
def test_a_symlink_loop_is_named_as_one(tmp_path):
    loop = tmp_path / "loop.png"
    os.symlink(tmp_path / "other.png", loop)
    os.symlink(loop, tmp_path / "other.png")
    with pytest.raises(OSError) as info:
        os.stat(loop)
    assert info.value.errno == errno.ELOOP
    for call in (lambda: jaxcam.to_rgb(loop), lambda: cli_common.read_images([str(loop)])):
        with pytest.raises(jaxcam.ImageFileError, match="is a symlink loop"):
            call()
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    with pytest.raises(FileNotFoundError, match="not found.*a symlink to a missing target"):
        jaxcam.to_rgb(tmp_path / "dangling.png")


def test_sample_images_docstring_says_what_it_returns():
    assert "float32" in jaxcam.sample_images.__doc__ and "uint8" not in jaxcam.sample_images.__doc__
    assert all(v.dtype == np.float32 for v in jaxcam.sample_images(["chelsea"]).values())


# -- 6. files that are not images ------------------------------------------------------------------------------
def _bad_files(folder) -> dict:
    """name -> (path, what the one error line must say)."""
    png = encoded(smooth(48, 64))
    jpg = encoded(smooth(48, 64), "JPEG")
    flipped = bytearray(png)
    flipped[png.index(b"IDAT") + 10] ^= 0xFF
    files = {
        "truncated.png": (png[: len(png) // 2], "corrupt or truncated image file"),
        "truncated.jpg": (jpg[:200], "corrupt or truncated image file"),
        "flipped.png": (bytes(flipped), "corrupt or truncated image file"),
        "page.jpg": (b"<!DOCTYPE html><html><body>Not Found</body></html>\n", "not a readable image file"),
        "empty.png": (b"", "is empty (0 bytes)"),
    }
    out = {}
    for name, (blob, says) in files.items():
        (folder / name).write_bytes(blob)
        out[name] = (str(folder / name), says)
    (folder / "photos.png").mkdir()
    out["photos.png"] = (str(folder / "photos.png"), "is a directory")
    return out


def test_bad_files_raise_one_named_image_file_error(tmp_path):
    for name, (path, says) in _bad_files(tmp_path).items():
        for call in (lambda: jaxcam.to_rgb(path), lambda: jaxcam.preprocess([path]), lambda: data.check_image(path)):
            with pytest.raises(jaxcam.ImageFileError) as info:
                call()
            msg = str(info.value)
            assert says in msg and name in msg and "\n" not in msg, msg
    with pytest.raises(jaxcam.ImageFileError, match="corrupt or truncated image file example 'x7'"):
        _decode_bytes(encoded(smooth(48, 64))[:300], "x7")
    with pytest.raises(jaxcam.ImageFileError, match="example 'x8' is empty"):
        _decode_bytes(b"", "x8")


@pytest.mark.parametrize("command", ["explain", "predict"])
def test_bad_files_are_one_line_and_exit_2_on_the_command_line(tmp_path, command, capsys):
    bad = _bad_files(tmp_path)
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    bad["bomb.png"] = (str(tmp_path / "bomb.png"), "above the decoding cap of 150,000,000 pixels")
    os.symlink(tmp_path / "loop2.png", tmp_path / "loop1.png")
    os.symlink(tmp_path / "loop1.png", tmp_path / "loop2.png")
    bad["loop1.png"] = (str(tmp_path / "loop1.png"), "is a symlink loop")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    for name, (path, says) in bad.items():
        argv = [command, path, *R18] + (["--out", str(out)] if command == "explain" else [])
        assert main(argv) == 2, name
        line = one_error_line(capsys.readouterr().err)
        assert says in line and name in line, line
    assert snapshot(tmp_path) == before


def test_robustness_checks_images_before_any_work(tmp_path, bomb, capsys):
    assert main(["robustness", str(bomb), *R18, "--noises", "gaussian", "--severities", "1", "--draws", "1",
                 "--out", str(tmp_path / "rob")]) == 2
    assert "above the decoding cap" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "rob").exists()
    with pytest.raises(jaxcam.ImageTooLargeError):
        cli_rob.check_image_file(str(bomb))


def test_max_pixels_flag(tmp_path, capsys):
    path = tmp_path / "small.png"
    path.write_bytes(encoded(smooth(48, 64)))
    out = tmp_path / "out"
    out.mkdir()
    for value, says in (("3000", "cap of 3,000 pixels"), ("many", "--max-pixels must be a number of pixels")):
        assert main(["explain", str(path), *R18, "--max-pixels", value, "--out", str(out)]) == 2
        assert says in one_error_line(capsys.readouterr().err)
    assert os.listdir(out) == []
    assert data.pixel_cap() == data.DEFAULT_MAX_PIXELS  # the flag's scope ended with the command
    # every command that reads images honours the flag (the CLI sets it around the whole command)
    assert main(["predict", str(path), *R18, "--max-pixels", "3000"]) == 2
    assert "cap of 3,000 pixels" in one_error_line(capsys.readouterr().err)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(encoded(smooth(48, 64)))
    assert main(["robustness", "--dataset", f"folder:{folder}", *R18, "--max-pixels", "3000", "--noises",
                 "gaussian", "--severities", "1", "--draws", "1", "--out", str(tmp_path / "rob")]) == 2
    assert "cap of 3,000 pixels" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "rob").exists()
    assert data.pixel_cap() == data.DEFAULT_MAX_PIXELS


def test_model_preprocess_takes_the_cap(tmp_path):
    path = tmp_path / "small.png"
    path.write_bytes(encoded(smooth(48, 64)))
    model = jaxcam.load_model("resnet18", weights=None)
    with pytest.raises(jaxcam.ImageTooLargeError, match="cap of 3,000 pixels"):
        model.preprocess([str(path)], max_pixels=3000)
    assert model.preprocess([str(path)], max_pixels=3072).shape == (1, 224, 224, 3)


# -- 2 and 3 end to end: one jaxcam explain run ----------------------------------------------------------------
def test_explain_draws_upright_overlays_at_a_bounded_size(tmp_path, capsys):
    """A phone photo with Orientation=6 gets a 48x64 (upright) overlay; a 4200x600 panorama one of 2048x293; a
    2200x2100 JPEG is decoded at half scale (1100x1050) and its overlay drawn at that size."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "phone.jpg").write_bytes(with_orientation(np.rot90(smooth(64, 48), 1), 6))
    (photos / "pano.png").write_bytes(encoded(smooth(600, 4200)))
    (photos / "large.jpg").write_bytes(encoded(smooth(2100, 2200), "JPEG"))
    out = tmp_path / "out"
    argv = ["explain", *(str(photos / n) for n in ("phone.jpg", "pano.png", "large.jpg")), *R18, "--out", str(out),
            "--max-pixels", "5e6"]
    assert main(argv) == 0, capsys.readouterr().err
    sizes = {}
    for f in os.listdir(out):
        if f.endswith(".png") and f != "grid.png":
            with Image.open(out / f) as im:
                sizes[f.split("_")[0]] = im.size
    assert sizes == {"phone": (48, 64), "pano": (2048, 293), "large": (1100, 1050)}
    with np.load(out / "maps.npz") as npz:
        assert npz["gradcam"].shape == (3, 224, 224) and np.isfinite(npz["gradcam"]).all()
