"""``jaxcam ablate``: the CSV and the self-contained report on two small images with the toy network; maps reused
from ``jaxcam explain``; bad input is one ``jaxcam: error:`` line, exit 2, and writes nothing."""

import os
import re

import numpy as np
import pytest

import jaxcam
from jaxcam.cli import ablate as ablate_cli
from jaxcam.cli import explain as explain_cli
from jaxcam.cli import main

from .test_cli_robustness import one_error_line, snapshot, write_images
from .test_report import assert_self_contained
from .toy import toy_model

COLUMNS = ("image,class,class_name,probability,regions,area_fraction,explained_change,control_explained_change,"
           "others_change,rising_class,control_others_change,top_region,top_region_change")


@pytest.fixture(autouse=True)
def toy(monkeypatch):
    """The toy network (32 px, 5 classes) instead of loading a model: each run takes a second or two."""
    model = toy_model(seed=1)
    monkeypatch.setattr(ablate_cli, "load", lambda args: model)
    monkeypatch.setattr(explain_cli, "load", lambda args: model)
    return model


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(str(tmp_path_factory.mktemp("ablate-images")), size=40)


def run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _csv(path):
    with open(path, encoding="utf-8") as f:
        return f.read().strip().splitlines()


def test_writes_the_csv_and_a_self_contained_report(images, tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = run(["ablate", *images, "--how", "mean", "--top", "0.2", "--max-regions", "3", "--seed", "2",
                           "--out", str(out)], capsys)
    assert rc == 0, err
    assert re.fullmatch(r"ablate: 2 image\(s\), gradcam regions \(mean\): explained class [-+]\d\.\d{3} vs random "
                        r"control [-+]\d\.\d{3}; wrote ablation.csv and report.html to \S+ in [\d.]+ s\n", stdout)
    assert sorted(os.listdir(out)) == ["ablation.csv", "report.html"]
    rows = _csv(out / "ablation.csv")
    assert rows[0] == COLUMNS and [r.split(",")[0] for r in rows[1:]] == ["a", "b"]
    for r in rows[1:]:
        cells = r.split(",")
        assert 1 <= int(cells[4]) <= 3 and 0 < float(cells[5]) <= 0.21 and 1 <= int(cells[11]) <= int(cells[4])
        assert all(np.isfinite(float(cells[k])) for k in (3, 5, 6, 7, 8, 10, 12))
    with open(out / "report.html", encoding="utf-8") as f:
        html = f.read()
    assert_self_contained(html)
    assert html.count("<img ") == 2  # one card per image
    for text in ("cam regions", "random control", "cam - control", "95 % low", "regions of a", "regions of b",
                 "change removed alone", "Configuration", "top 0.2 of pixels"):
        assert text in html, text


def test_maps_written_by_explain_give_the_same_numbers(images, tmp_path, capsys):
    rc, _, err = run(["explain", *images, "--out", str(tmp_path / "ex")], capsys)
    assert rc == 0, err
    common = ["--how", "noise", "--threshold", "0.4", "--seed", "5"]
    assert run(["ablate", *images, *common, "--out", str(tmp_path / "computed")], capsys)[0] == 0
    rc, _, err = run(["ablate", *images, *common, "--maps", str(tmp_path / "ex" / "maps.npz"), "--out",
                      str(tmp_path / "reused")], capsys)
    assert rc == 0, err
    computed, reused = _csv(tmp_path / "computed" / "ablation.csv"), _csv(tmp_path / "reused" / "ablation.csv")
    assert len(reused) == 3
    for a, b in zip(computed[1:], reused[1:]):
        np.testing.assert_allclose([float(v) for v in a.split(",")[5:9]], [float(v) for v in b.split(",")[5:9]],
                                   atol=1e-5)


@pytest.fixture(scope="module")
def bad_maps(tmp_path_factory):
    d = tmp_path_factory.mktemp("maps")
    np.savez(d / "small.npz", gradcam=np.zeros((2, 16, 16), np.float32), names=np.asarray(["a", "b"]))
    np.savez(d / "other.npz", gradcam=np.zeros((2, 32, 32), np.float32), names=np.asarray(["x", "y"]))
    return str(d)


@pytest.mark.parametrize("extra, message", [
    (["--how", "blurr"], r"'blurr' for --how .*did you mean 'blur'"),
    (["--top", "0"], r"--top must be a fraction of pixels in \(0, 1\], got 0"),
    (["--threshold", "1.5"], r"--threshold must be a map value in \[0, 1\]"),
    (["--min-area", "0"], r"--min-area must be a positive number"),
    (["--method", "gradcamm"], r"did you mean 'gradcam'"),
    (["--maps", "missing.npz"], r"--maps missing.npz: no such file"),
    (["--maps", "{maps}/small.npz"], r"the gradcam maps must be \(N, H, W\) = \(2, 32, 32\).*got shape \(2, 16, 16\)"),
    (["--maps", "{maps}/other.npz"], r"holds the maps of x, y, not of the images given \(a, b\)"),
    (["--min-area", "100000"], r"image a: no region of the cam survives threshold=0.5 and min_area=100000"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(extra, message, images, bad_maps, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    out = tmp_path / "new" / "run"
    extra = [e.format(maps=bad_maps) for e in extra]
    rc, stdout, err = run(["ablate", *images, *extra, "--out", str(out)], capsys)
    assert rc == 2 and stdout == ""
    assert re.search(message, one_error_line(err)), err
    assert snapshot(tmp_path) == before and not (tmp_path / "new").exists()


def test_an_interrupted_run_leaves_no_partial_file(images, tmp_path, capsys, monkeypatch):
    def interrupted(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(jaxcam.report.Report, "write", interrupted)
    rc, _, err = run(["ablate", *images, "--out", str(tmp_path / "run")], capsys)
    assert rc == 130 and "interrupted" in err
    files = os.listdir(tmp_path / "run")
    assert not any(".tmp-" in f for f in files) and "report.html" not in files
    if "ablation.csv" in files:  # written whole before the report, or not at all
        assert len(_csv(tmp_path / "run" / "ablation.csv")) == 3


def test_quickshift_snapping_and_inpainting(images, tmp_path, capsys):
    rc, _, err = run(["ablate", *images, "--quickshift", "--top", "0.5", "--how", "inpaint", "--out", str(tmp_path)],
                     capsys)
    assert rc == 0, err
    rows = _csv(tmp_path / "ablation.csv")
    assert len(rows) == 3 and all(0 < float(r.split(",")[5]) < 1 for r in rows[1:])


@pytest.mark.slow
def test_default_run_on_the_sample_photos_with_the_embedded_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ablate_cli, "load", jaxcam.cli.common.load)
    rc, stdout, err = run(["ablate", "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    rows = _csv(tmp_path / "ablation.csv")
    assert [r.split(",")[0] for r in rows[1:]] == list(jaxcam.data.SAMPLE_IMAGES)
    assert "efficientnet_lite0" in open(tmp_path / "report.html", encoding="utf-8").read()
