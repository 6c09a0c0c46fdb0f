"""``jaxcam robustness``: outputs, report, resume after an interruption, and one-line errors that lose nothing."""

import contextlib
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxcam import robustness as R
from jaxcam.cli import build_parser, main
from jaxcam.cli import robustness as cli_rob

from .test_report import assert_self_contained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "resnet18", "--random-weights", "--methods", "gradcam", "eigencam", "--noises", "gaussian",
        "--severities", "1", "2", "--draws", "1", "--chunk", "2"]


def write_images(folder, names=("a", "b"), size=64):
    """Small random RGB PNGs; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for n in names:
        paths.append(os.path.join(folder, f"{n}.png"))
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(paths[-1])
    return paths


def snapshot(folder) -> dict:
    """Every file under ``folder`` with its contents."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxcam: error:"), err
    return lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    paths = write_images(str(d))
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return paths, str(d / "corrupt.png")


EXPLAIN_CALLS = []  # (batch, methods, classes given) of every explain() call of the `full` run


@pytest.fixture(scope="module")
def full(images, tmp_path_factory):
    """One uninterrupted run with the report: (out dir, rc, stdout, stderr); its explain() calls are recorded."""
    import importlib

    explain_module = importlib.import_module("jaxcam._explain")
    real = explain_module.explain

    def recording(model, x, method="gradcam", targets=None, *a, **k):
        EXPLAIN_CALLS.append((np.shape(x)[0], tuple(method), targets is not None))
        return real(model, x, method, targets, *a, **k)

    out = str(tmp_path_factory.mktemp("full") / "run")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), pytest.MonkeyPatch.context() as mp:
        mp.setattr(explain_module, "explain", recording)
        rc = main(["robustness", *images[0], *TINY, "--image-batch", "2", "--out", out])
    return out, rc, stdout.getvalue(), stderr.getvalue()


def test_the_example_maps_reuse_the_clean_pass_program(full):
    """Issue 17: the report's example pictures (2 images x (clean + 2 severities) = 6) are explained in batches of
    the run's clean pass (2 images), so one compiled explain program serves both; no other shape is compiled."""
    assert full[1] == 0, full[3]
    assert EXPLAIN_CALLS == [(2, ("gradcam", "eigencam"), False)] * (1 + 3)


def test_explain_in_batches_pads_the_last_batch_and_drops_its_repeats():
    calls = []

    def fake_explain(model, x, methods, classes, **k):
        calls.append((len(x), None if classes is None else classes.tolist()))
        return {m: x[:, :, :, 0] + i for i, m in enumerate(methods)}, None, np.asarray(x[:, 0, 0, 0], np.int32)

    x = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 3, 3, 1), np.float32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys.modules["jaxcam._explain"], "explain", fake_explain)
        maps, cls = cli_rob.explain_in_batches(None, x, ["p", "q"], np.arange(5) * 10, 2, 0)
    assert calls == [(2, [0, 10]), (2, [20, 30]), (2, [40, 40])]  # the last batch padded with its final image
    np.testing.assert_array_equal(maps["p"], x[..., 0])
    np.testing.assert_array_equal(maps["q"], x[..., 0] + 1)
    assert cls.tolist() == [0, 1, 2, 3, 4]
    assert cli_rob.clean_pass_batch(np.zeros((3, 8, 8, 3), np.float32), 8) == 3
    assert cli_rob.clean_pass_batch(np.zeros((3, 8, 8, 3), np.float32), 2) == 2


def test_run_writes_rows_summary_statistics_plots_and_a_self_contained_report(full):
    out, rc, stdout, stderr = full
    assert rc == 0, stderr
    assert re.fullmatch(r"robustness: 2 images x 2 methods x 1 noises x 2 severities x 1 draws = 8 rows in "
                        r"[\d.]+ s; report .*report\.html\n", stdout), stdout
    files = set(os.listdir(out))
    assert {"run.json", "parts", "rows.csv", "summary.csv", "summary.md", "friedman.md", "rm_by_noise.png",
            "similarity_vs_severity.png", "maps_a.png", "maps_b.png", "report.html"} <= files
    assert len(open(os.path.join(out, "rows.csv")).read().strip().splitlines()) == 1 + 8
    summary_md = open(os.path.join(out, "summary.md")).read()
    assert "C [95% CI]" in summary_md and "RM [95% CI]" in summary_md
    assert "## gaussian" in open(os.path.join(out, "friedman.md")).read()
    html = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert_self_contained(html)
    assert html.count("<img ") == 4  # two plots, two example-map grids
    for text in ("Run configuration", "files:a,b", "resnet18", "Friedman", "Wilcoxon-Holm", "Example maps",
                 "Similarity against severity", "RM per method and noise"):
        assert text in html, text


def test_an_interrupted_run_resumes_to_the_rows_of_an_uninterrupted_one(images, full, tmp_path, monkeypatch,
                                                                        capsys):
    out = str(tmp_path / "run")
    argv = ["robustness", *images[0], *TINY, "--image-batch", "2", "--no-report", "--out", out]
    real = R.run

    def killed_after_one_chunk(*args, **kwargs):
        real(*args, **{**kwargs, "max_chunks": 1})
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "run", killed_after_one_chunk)
    assert main(argv) == 130
    assert "run again with --resume to continue" in capsys.readouterr().err
    assert len(os.listdir(os.path.join(out, "parts"))) == 1  # of 2 chunks
    monkeypatch.setattr(R, "run", real)
    assert main(argv + ["--resume"]) == 0
    assert R.run_digest(R.read(out)) == R.run_digest(R.read(full[0]))
    written = set(os.listdir(out))
    assert {"rows.csv", "summary.csv", "summary.md", "friedman.md"} <= written
    assert "report.html" not in written and not any(f.endswith(".png") for f in written)  # --no-report


def test_a_run_directory_with_results_needs_resume(images, full, capsys):
    before = snapshot(full[0])
    assert main(["robustness", *images[0], *TINY, "--image-batch", "2", "--out", full[0]]) == 2
    assert "--resume" in one_error_line(capsys.readouterr().err)
    assert snapshot(full[0]) == before


def test_resuming_with_another_configuration_is_refused(images, full, capsys):
    before = snapshot(full[0])
    argv = ["robustness", *images[0], *TINY, "--image-batch", "2", "--out", full[0], "--resume"]
    argv[argv.index("2", argv.index("--severities"))] = "3"
    assert main(argv) == 2
    assert "another configuration" in one_error_line(capsys.readouterr().err)
    assert snapshot(full[0]) == before


BAD = {
    "missing file": (["{dir}/nope.png"], "not found"),
    "corrupt image": (["{corrupt}"], "corrupt.png"),
    "unknown method": (["{a}", "--methods", "gradcam", "nosuchcam"], "unknown name 'nosuchcam'"),
    "unknown noise": (["{a}", "--noises", "hail"], "unknown noise 'hail'"),
    "unknown similarity": (["{a}", "--similarity", "cosine"], "'cosine'"),
    "unknown model": (["{a}", "--model", "resnet7"], "'resnet7'"),
    "unknown dataset": (["--dataset", "ftp:x"], "'ftp'"),
    "missing dataset folder": (["--dataset", "folder:{dir}/none"], "not found"),
    "images and dataset": (["{a}", "--dataset", "sample"], "not both"),
    "severity out of range": (["{a}", "--severities", "0", "6"], "1..5"),
    "no draws": (["{a}", "--draws", "0"], "--draws"),
    "negative key": (["{a}", "--key", "-1"], "--key must lie in 0..4294967295"),
    "unwritable out": (["{a}", "--out", "{dir}/file.txt/sub"], "cannot create output directory"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_loses_nothing(case, images, tmp_path, capsys):
    extra, message = BAD[case]
    (tmp_path / "file.txt").write_text("a regular file")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("results of an earlier run")
    fill = {"dir": str(tmp_path), "corrupt": images[1], "a": images[0][0]}
    argv = ["robustness", *TINY, "--out", str(out)] + [e.format(**fill) for e in extra]
    before = snapshot(tmp_path)
    assert main(argv) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


def test_a_truncated_image_in_a_dataset_folder_is_one_line_before_any_work(tmp_path, capsys):
    data = tmp_path / "data"
    paths = write_images(str(data), names=("a", "b", "c"))
    with open(paths[2], "r+b") as f:
        f.truncate(os.path.getsize(paths[2]) // 2)
    before = snapshot(tmp_path)
    argv = ["robustness", "--dataset", f"folder:{data}", *TINY, "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "c.png" in line and "replace or remove that file" in line
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()  # no run.json, no part of a or b


@pytest.mark.parametrize("content", [b"", b'{"model": "resnet18", "wei'])
def test_a_damaged_run_json_is_one_line_naming_it(content, images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_bytes(content)
    before = snapshot(tmp_path)
    assert main(["robustness", *images[0], *TINY, "--out", str(out), "--resume"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(out / "run.json") in line and "new directory" in line
    assert snapshot(tmp_path) == before


def test_every_option_reaches_the_library(tmp_path, monkeypatch, capsys):
    clean = tmp_path / "clean"
    write_images(str(clean), names=("x", "y", "z"))
    seen = {}

    def record(model, source, out, **kwargs):
        seen.update(kwargs, model=model, source=source, out=out)
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "run", record)
    argv = ["robustness", "--dataset", f"folder:{clean}", "--model", "resnet18", "--random-weights",
            "--methods", "all", "--noises", "impulse", "shot", "--severities", "5", "3", "--draws", "3",
            "--similarity", "spearman", "--explain-class", "original_prediction", "--key", "7",
            "--image-batch", "4", "--chunk", "16", "--out", str(tmp_path / "o"), "--resume"]
    assert main(argv) == 130
    assert "--resume" in capsys.readouterr().err
    assert seen["model"].name == "resnet18" and "random" in seen["model"].source
    assert seen["source"].name == f"folder:{clean}" and len(seen["source"]) == 3
    assert {"gradcam", "scorecam", "ablationcam", "eigencam"} <= set(seen["methods"])
    assert not {"cam", "metacam"} & set(seen["methods"])  # need a GAP+FC head / an ensemble of the others
    assert not {"adcam", "broadcam"} & set(seen["methods"])  # a ViT's attention / weights fitted in Python
    assert (seen["noises"], seen["severities"], seen["draws"]) == (["impulse", "shot"], [5, 3], 3)
    assert (seen["similarity"], seen["explain_class"], seen["key"]) == ("spearman", "original_prediction", 7)
    assert (seen["image_batch"], seen["chunk"], seen["resume"], seen["progress"]) == (4, 16, True, False)


def test_defaults_and_the_files_dataset_name():
    args = build_parser().parse_args(["robustness"])
    assert args.methods == list(R.PAPER_METHODS) and args.noises == ["gaussian", "shot", "impulse", "speckle"]
    assert (args.severities, args.draws, args.similarity, args.key) == ([1, 2, 3, 4, 5], 2, "rbo", 0)
    assert args.out == os.path.join("runs", "robustness") and not args.resume and not args.no_report
    assert args.images == [] and args.dataset is None and args.model == "efficientnet_lite0"
    assert cli_rob.files_dataset_name(["a", "b"]) == "files:a,b"
    many = cli_rob.files_dataset_name([f"image{i}" for i in range(50)])
    assert many.startswith("files:50 images (") and many != cli_rob.files_dataset_name(["x"] * 50)


def test_the_protocol_script_is_the_command():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "robustness_protocol.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: jaxcam robustness" in done.stdout and "--no-report" in done.stdout
