"""``jaxcam convert``: a state dict converted once into a models directory, its parity reported, the cache reused,
and one-line errors."""

import json
import os

import numpy as np
import pytest

from jaxcam.cli import main
from jaxcam.models import random_state_dict
from jaxcam.models.loader import load_model
from jaxcam.models.store import sha256_file

from .test_cli_robustness import one_error_line, snapshot, write_images

try:
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet18.npz"
    np.savez(path, **random_state_dict("resnet18"))
    return str(path)


def _manifest(models):
    with open(os.path.join(models, "manifest.json")) as f:
        return json.load(f)["models"]


def test_convert_stores_reports_parity_and_is_reused(weights, tmp_path, monkeypatch, capsys):
    models = str(tmp_path / "models")
    assert main(["convert", "resnet18", weights, "--models-dir", models]) == 0
    printed = capsys.readouterr().out
    name = f"resnet18-{sha256_file(weights)[:12]}"
    entry = _manifest(models)[name]
    assert entry["arch"] == "resnet18" and entry["source_sha256"] == sha256_file(weights)
    assert os.path.isdir(os.path.join(models, name))
    if HAVE_TORCH:
        assert entry["max_abs_logit_diff"] < 1e-3
        assert f"max |logit diff| = {entry['max_abs_logit_diff']:.3g}" in printed
    else:
        assert entry["max_abs_logit_diff"] is None and "not measured" in printed
    assert f"checkpoint: {os.path.join(models, name)}" in printed and "manifest.json" in printed
    assert f"use it:     JAXCAM_MODELS_DIR={models} jaxcam explain --model resnet18 --weights {weights}" in printed
    assert printed.splitlines()[-1].startswith(f"convert: converted resnet18 from {weights} as '{name}'")

    created = entry["created"]
    assert main(["convert", "resnet18", weights, "--models-dir", models]) == 0  # same file: nothing to do
    again = capsys.readouterr().out
    assert "already converted" in again and again.splitlines()[-1].startswith("convert: cached resnet18")
    assert _manifest(models)[name]["created"] == created

    # the CLI's --model/--weights finds the stored conversion (no second conversion)
    monkeypatch.setenv("JAXCAM_MODELS_DIR", models)
    img = write_images(str(tmp_path / "img"), names=("x",))[0]
    assert main(["evaluate", img, "--model", "resnet18", "--weights", weights, "--methods", "gradcam", "--metrics",
                 "sparseness", "--out", str(tmp_path / "ev")]) == 0
    assert _manifest(models)[name]["created"] == created and list(_manifest(models)) == [name]
    assert f"resnet18 ({name}:" in open(tmp_path / "ev" / "report.html", encoding="utf-8").read()


def test_convert_under_a_name(weights, tmp_path, capsys):
    models = str(tmp_path / "models")
    assert main(["convert", "resnet18", weights, "--name", "pets", "--models-dir", models]) == 0
    printed = capsys.readouterr().out
    assert "use it:     JAXCAM_MODELS_DIR=" in printed and "jaxcam explain --model pets" in printed
    assert list(_manifest(models)) == ["pets"]
    model = load_model("pets", models_dir=models)
    ref = load_model("resnet18", weights=None)
    x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(ref(x)), atol=1e-4)


BAD = {
    "unknown architecture": (["resnet7", "{weights}"], "unknown architecture 'resnet7'"),
    "missing weights": (["resnet18", "{dir}/nope.npz"], "not found"),
    "wrong architecture": (["resnet34", "{weights}"], "does not match architecture 'resnet34'"),
    "name of an architecture": (["resnet18", "{weights}", "--name", "resnet50"], "architecture name"),
    "name with a path": (["resnet18", "{weights}", "--name", "a/b"], "plain name"),
    "unwritable models dir": (["resnet18", "{weights}", "--models-dir", "{dir}/file.txt/sub"], "cannot create"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_loses_nothing(case, weights, tmp_path, capsys):
    extra, message = BAD[case]
    (tmp_path / "file.txt").write_text("a regular file")
    models = tmp_path / "models"
    models.mkdir()
    (models / "manifest.json").write_text('{"format": 1, "models": {}}\n')
    argv = ["convert", *[e.format(weights=weights, dir=tmp_path) for e in extra]]
    if "--models-dir" not in argv:
        argv += ["--models-dir", str(models)]
    before = snapshot(tmp_path)
    assert main(argv) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before
