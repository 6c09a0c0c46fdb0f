"""``jaxcam explain``, ``jaxcam methods`` and ``jaxcam models``, run in-process through ``jaxcam.cli.main``.

Every documented flag is exercised on a small model (random-weight ResNet-18, or the toy network for
``--method all``) and two 48x64 PNG files; one run checks the no-argument default (the embedded model on the sample
photos). Bad input must exit with 2, print exactly one ``jaxcam: error:`` line and leave the output directory as it
was.
"""

import os
import re

import numpy as np
import pytest
from PIL import Image

import jaxcam
from jaxcam import viz
from jaxcam.cli import explain as explain_cli
from jaxcam.cli import main
from jaxcam.cli.info import layers_markdown

from .toy import toy_model

R18 = ["--model", "resnet18", "--random-weights"]
DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "explain.md")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two small PNG files (48x64) and the decoded pixels."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths, pixels = [], []
    for name in ("a", "b"):
        arr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{name}.png")
        paths.append(str(folder / f"{name}.png"))
        pixels.append(arr)
    return paths, pixels


def run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def pngs(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".png") and f != "grid.png")


def read_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def check_npz_maps(npz, names):
    """Maps finite and in [0, 1]; every entry a plain array (np.load refuses pickled objects by default)."""
    assert {"classes", "probs", "names", "class_names", "methods", "model", "layer"} <= set(npz.files)
    assert all(npz[key].dtype != object for key in npz.files)
    for m in npz["methods"]:
        maps = npz[str(m)]
        assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0, m
    assert list(npz["names"]) == names


# -- explain: outputs ------------------------------------------------------------------------------------------
def test_default_explains_the_sample_photos_with_the_embedded_model(tmp_path, capsys):
    rc, out, err = run(["explain", "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    names = list(jaxcam.data.SAMPLE_IMAGES)
    overlays = pngs(tmp_path)
    assert len(overlays) == 4 and all(re.fullmatch(r"[a-z]+_gradcam_\d+-[a-z0-9-]+\.png", f) for f in overlays)
    assert {f.split("_")[0] for f in overlays} == set(names)
    assert read_png(tmp_path / "grid.png").shape[0] > 200
    with np.load(tmp_path / "maps.npz") as npz:
        assert npz["gradcam"].shape == (4, 224, 224)
        check_npz_maps(npz, names)
        assert str(npz["model"]) == "efficientnet_lite0" and list(npz["layer"]) == ["_bn1"]
        assert npz["classes"][0] in range(281, 286)  # chelsea is a cat
        assert npz["probs"].shape == (4,) and ((npz["probs"] > 0) & (npz["probs"] <= 1)).all()
    html = (tmp_path / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 1 and "http://" not in html and "https://" not in html
    assert "egyptian cat" in html.lower() or "tabby" in html.lower()
    line = (rf"wrote 4 overlays, grid.png, maps.npz and report.html for 4 images x 1 method to "
            rf"{re.escape(str(tmp_path))} in ")
    assert re.fullmatch(line + r"\d+\.\d s\n", out), out


def test_methods_targets_layer_alpha_cmap_batch_size(photos, tmp_path, capsys):
    paths, pixels = photos
    (tmp_path / "keep.txt").write_text("mine")
    (tmp_path / "grid.png").write_bytes(b"old")  # same name as an output: replaced
    rc, out, err = run(["explain", *paths, *R18, "--method", "gradcam", "eigencam", "gradcam", "--target", "3", "7",
                        "--layer", "layer3", "--alpha", "0.3", "--cmap", "viridis", "--batch-size", "1",
                        "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert read_png(tmp_path / "grid.png").ndim == 3
    assert pngs(tmp_path) == ["a_eigencam_3-tiger-shark.png", "a_gradcam_3-tiger-shark.png",
                              "b_eigencam_7-cock.png", "b_gradcam_7-cock.png"]
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
    with np.load(tmp_path / "maps.npz") as npz:
        assert list(npz["methods"]) == ["gradcam", "eigencam"] and npz["gradcam"].shape == (2, 224, 224)
        assert list(npz["classes"]) == [3, 7] and list(npz["class_names"]) == ["tiger shark", "cock"]
        assert list(npz["layer"]) == ["layer3.1"] and str(npz["model"]) == "resnet18"
        check_npz_maps(npz, ["a", "b"])
        expected = viz.overlay(pixels[1], npz["gradcam"][1], alpha=0.3, cmap="viridis")
    np.testing.assert_array_equal(read_png(tmp_path / "b_gradcam_7-cock.png"), expected)
    assert "for 2 images x 2 methods" in out


def test_top5_with_padded_batches_and_a_layer_index(photos, tmp_path, capsys):
    """top5: (N, 5, H, W) maps in probability order; 3 images in batches of 2 pad the last batch, and an image's
    maps do not depend on its batch or position (the third image is the first one again)."""
    paths, _ = photos
    rc, out, err = run(["explain", paths[0], paths[1], paths[0], *R18, "--target", "top5", "--batch-size", "2",
                        "--layer", "-3", "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    assert len(pngs(tmp_path)) == 3 * 5 and "for 3 images x 5 classes x 1 method" in out
    model = jaxcam.load_model("resnet18", weights=None)
    pred = model.predict([paths[0], paths[1], paths[0]], k=5)
    with np.load(tmp_path / "maps.npz") as npz:
        assert npz["gradcam"].shape == (3, 5, 224, 224) and npz["classes"].shape == (3, 5)
        np.testing.assert_array_equal(npz["classes"], pred.classes)
        np.testing.assert_allclose(npz["probs"], pred.probs, rtol=1e-5)
        assert list(npz["names"]) == ["a", "b", "a-2"] and list(npz["layer"]) == ["layer4.1"]
        np.testing.assert_allclose(npz["gradcam"][2], npz["gradcam"][0], atol=1e-5)
        check_npz_maps(npz, ["a", "b", "a-2"])


def test_weights_file_and_one_target_for_every_image(photos, tmp_path, monkeypatch, capsys):
    """--weights converts a state dict file (cached in the models directory); one --target serves every image."""
    from jaxcam.models import loader, random_state_dict

    paths, _ = photos
    monkeypatch.setenv("JAXCAM_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(loader, "torch_parity", lambda model, sd: (None, "not measured in this test"))
    np.savez(tmp_path / "r18.npz", **random_state_dict("resnet18", seed=0))
    out_dir = tmp_path / "out"
    rc, out, err = run(["explain", *paths, "--model", "resnet18", "--weights", str(tmp_path / "r18.npz"),
                        "--target", "9", "--out", str(out_dir)], capsys)
    assert rc == 0, err
    assert pngs(out_dir) == ["a_gradcam_9-ostrich.png", "b_gradcam_9-ostrich.png"]
    with np.load(out_dir / "maps.npz") as npz:
        assert list(npz["classes"]) == [9, 9]
        reference = jaxcam.explain(jaxcam.load_model("resnet18", weights=None), paths, "gradcam", targets=9)
        np.testing.assert_allclose(npz["gradcam"], np.asarray(reference), atol=1e-5)


def test_method_all_skips_the_gap_fc_methods_off_the_last_layer(photos, tmp_path, monkeypatch, capsys):
    """'all' runs every method that applies: on the toy network's conv layer (not followed by GAP+FC) CAM is
    skipped with a note; every other method writes its overlay and maps."""
    paths, _ = photos
    monkeypatch.setattr(explain_cli, "load", lambda args: toy_model())
    rc, out, err = run(["explain", paths[0], "--method", "all", "--layer", "conv", "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    expected = [m for m, spec in jaxcam.METHODS.items() if not spec.gap_fc_only and not spec.requires
                and not spec.attention and not spec.own_maps]  # the toy has no attention and no exits: AD-CAM and
    # AME-CAM do not apply, and a note says why
    assert err.strip().splitlines() == [
        "jaxcam: note: --method all skips cam on toy (they need a global-average-pool + fully-connected head right "
        "after the target layer)",
        "jaxcam: note: --method all leaves out broadcam, sycam (they need an input made in Python, passed as "
        "method_options: broadcam's weights from jaxcam.fit_broadcam, sycam's expression from "
        "jaxcam.sycam.synthesize)",
        "jaxcam: note: --method all leaves out adcam on toy: it needs a Vision Transformer's attention "
        "probabilities, and the model's adapter declares no attention sites (from_hf and from_linen find them on "
        "attention modules that can return them)",
        "jaxcam: note: --method all leaves out amecam on toy: it reads the class maps a model trained with exits "
        "computes itself (jaxcam.train.ame builds one), and this model's tapped forward declares no map sites"]
    with np.load(tmp_path / "maps.npz") as npz:
        assert list(npz["methods"]) == expected and npz["gradcam"].shape == (1, 32, 32)
        check_npz_maps(npz, ["a"])
    assert len(pngs(tmp_path)) == len(expected)
    assert f"for 1 image x {len(expected)} methods" in out


# -- explain: bad input ----------------------------------------------------------------------------------------
BAD = {
    "missing file": (lambda d: [str(d / "nope.png"), *R18], "image file not found"),
    "corrupt file": (lambda d: [str(d / "x.png"), *R18], "not a readable image file"),
    "unknown method": (lambda d: [str(d / "ok.png"), *R18, "--method", "gradcam", "nope"], "unknown name 'nope'"),
    "unknown model": (lambda d: [str(d / "ok.png"), "--model", "resnet7", "--random-weights"], "'resnet7'"),
    "unknown layer": (lambda d: [str(d / "ok.png"), *R18, "--layer", "layer9"], "unknown layer 'layer9'"),
    "class out of range": (lambda d: [str(d / "ok.png"), *R18, "--target", "1000"], "class index 1000 out of range"),
    "top-K out of range": (lambda d: [str(d / "ok.png"), *R18, "--target", "top1001"], "K must be in"),
    "too many classes": (lambda d: [str(d / "ok.png"), *R18, "--target", "1", "2"], "2 class indices for 1 images"),
    "target not a class": (lambda d: [str(d / "ok.png"), *R18, "--target", "cat"], "--target takes class indices"),
    "topK with classes": (lambda d: [str(d / "ok.png"), *R18, "--target", "top5", "3"], "must be given alone"),
    "CAM off the last layer": (lambda d: [str(d / "ok.png"), *R18, "--method", "cam", "--layer", "layer3"],
                               "CAM needs the layer right before global average pooling"),
    "image after --method": (lambda d: [*R18, "--method", "gradcam", str(d / "ok.png")],
                             "list image files before --method"),
    "image after --target": (lambda d: [*R18, "--target", "3", str(d / "ok.png")], "list image files before --target"),
    "image after --layer": (lambda d: [*R18, "--layer", "layer4", str(d / "ok.png")],
                            "list image files before --layer"),
    "alpha": (lambda d: [str(d / "ok.png"), *R18, "--alpha", "1.5"], "alpha"),
    "colormap": (lambda d: [str(d / "ok.png"), *R18, "--cmap", "nope"], "unknown name 'nope' for colormap"),
    "batch size": (lambda d: [str(d / "ok.png"), *R18, "--batch-size", "0"], "--batch-size must be a positive"),
}


def _one_error_line(err: str, match: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxcam: error: "), err
    assert match in lines[0], lines[0]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_leaves_the_output_alone(case, photos, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"\x89PNG garbage, not an image")
    Image.fromarray(photos[1][0]).save(tmp_path / "ok.png")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    (out_dir / "grid.png").write_bytes(b"an older grid")
    argv, match = BAD[case]
    rc, _, err = run(["explain", *argv(tmp_path), "--out", str(out_dir)], capsys)
    assert rc == 2
    _one_error_line(err, match)
    assert sorted(os.listdir(out_dir)) == ["grid.png", "keep.txt"]
    assert (out_dir / "keep.txt").read_text() == "mine" and (out_dir / "grid.png").read_bytes() == b"an older grid"


def test_output_under_a_regular_file_is_one_line(photos, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    rc, _, err = run(["explain", photos[0][0], *R18, "--out", str(blocker / "sub")], capsys)
    assert rc == 2
    _one_error_line(err, "cannot create output directory")
    assert blocker.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions (see the regular-file case)")
def test_unwritable_output_directory_is_one_line(photos, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "keep.txt").write_text("mine")
    locked.chmod(0o500)
    try:
        rc, _, err = run(["explain", photos[0][0], *R18, "--out", str(locked)], capsys)
    finally:
        locked.chmod(0o700)
    assert rc == 2
    _one_error_line(err, "is not writable")
    assert os.listdir(locked) == ["keep.txt"] and (locked / "keep.txt").read_text() == "mine"


# -- help ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command, flags", [
    ("explain", ["--model", "--weights", "--random-weights", "--method", "--target", "--layer", "--out", "--alpha",
                 "--cmap", "--batch-size", "examples:", "grid.png", "maps.npz"]),
    ("methods", ["--markdown", "examples:"]),
    ("models", ["--stages", "--params", "--markdown", "examples:"]),
])
def test_help_lists_every_flag_and_examples(command, flags, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert all(f in text for f in flags), [f for f in flags if f not in text]


# -- methods and models ----------------------------------------------------------------------------------------
def test_methods_table(capsys):
    rc, out, _ = run(["methods"], capsys)
    lines = out.strip().splitlines()
    assert rc == 0 and lines[0].split()[:3] == ["method", "family", "passes"]
    assert len(lines) == len(jaxcam.METHODS) + 2
    for line, (name, spec) in zip(lines[2:], jaxcam.METHODS.items()):
        assert line.split()[0] == name and spec.cost in line and spec.paper in line


def test_methods_markdown_is_the_readme_table(capsys):
    from jaxcam.methods import markdown_table

    rc, out, _ = run(["methods", "--markdown"], capsys)
    assert rc == 0 and out == markdown_table() + "\n"


def test_models_plain_params_and_stages(capsys):
    rc, out, _ = run(["models"], capsys)
    assert rc == 0
    for name, arch in jaxcam.ARCHITECTURES.items():
        assert re.search(rf"^{name}\s+\S+\s+{arch.default_layer}\s+224x224$", out, re.M), name
    rc, out, _ = run(["models", "--params"], capsys)
    assert rc == 0 and re.search(r"^resnet18 .* 11\.7M$", out, re.M) and re.search(r"^vgg16 .* 138\.4M$", out, re.M)
    rc, out, _ = run(["models", "--stages"], capsys)
    assert rc == 0
    assert "aliases: layer1 = layer1.1, layer2 = layer2.1, layer3 = layer3.1, layer4 = layer4.1" in out
    assert "_bn1 7x7x1280" in out and "last_conv_relu = features.29" in out


def test_models_markdown_is_the_which_layer_table(capsys):
    rc, out, _ = run(["models", "--markdown"], capsys)
    table = layers_markdown()
    assert rc == 0 and out == table + "\n"
    rows = table.splitlines()
    assert len(rows) == len(jaxcam.ARCHITECTURES) + 2
    assert "| `resnet18` | `layer4` (= `layer4.1`) | 7x7x512 | `layer1` 56x56x64, `layer2` 28x28x128, " in table
    assert "| `resnet50` | `layer4` (= `layer4.2`) | 7x7x2048 |" in table
    assert "| `vgg16` | `last_conv_relu` (= `features.29`) | 14x14x512 | `features` 7x7x512 |" in table
    assert "| `efficientnet_lite0` | `_bn1` | 7x7x1280 | `stage1` 112x112x16," in table


def test_which_layer_table_matches_real_models(resnet18):
    """The abstract shapes are the shapes a real model's features have."""
    features, _ = resnet18.split("layer3")
    assert tuple(features(np.zeros((1, 224, 224, 3), np.float32)).shape[1:]) == (14, 14, 256)
    assert "`layer3` 14x14x256" in layers_markdown(["resnet18"])


def test_docs_page_holds_the_current_which_layer_table():
    with open(DOCS, encoding="utf-8") as f:
        assert layers_markdown() in f.read(), "regenerate docs/explain.md's table with `jaxcam models --markdown`"



def test_sycam_runs_the_expression_given_on_the_command_line(photos, tmp_path, monkeypatch, capsys):
    """--sycam gives the sycam method its expression (a formula or a saved file); it equals the built-in method
    the expression writes, and a bad formula or a --sycam without the method fails before any output."""
    from jaxcam.sycam import save

    paths, _ = photos
    monkeypatch.setattr(explain_cli, "load", lambda args: toy_model())
    saved = save(tmp_path / "xgrad.json", "sum(G * A) / sum(A)")
    rc, _, err = run(["explain", paths[0], "--method", "sycam", "xgradcam", "--sycam", str(saved), "--layer", "conv",
                      "--out", str(tmp_path / "out")], capsys)
    assert rc == 0, err
    with np.load(tmp_path / "out" / "maps.npz") as npz:
        np.testing.assert_allclose(npz["sycam"], npz["xgradcam"], atol=1e-5)
    for argv, words in ((["--method", "sycam", "--sycam", "softmax(G)"], "reduce"),
                        (["--sycam", "mean(G)"], "add --method sycam"),
                        (["--method", "sycam"], "expression")):
        rc, _, err = run(["explain", paths[0], *argv, "--layer", "conv", "--out", str(tmp_path / "bad")], capsys)
        assert rc == 2 and words in err, err
        assert not (tmp_path / "bad").exists()
