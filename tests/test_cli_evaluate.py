"""``jaxcam evaluate``: tables, statistics, sanity check and report; ground truth from masks or boxes; one-line
errors that lose nothing."""

import contextlib
import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from jaxcam.cli import build_parser, main
from jaxcam.cli import evaluate as cli_eval
from jaxcam.evaluate import DEFAULT_METRICS, METRICS

from .test_cli_robustness import one_error_line, snapshot, write_images
from .test_report import assert_self_contained

MODEL = ["--model", "resnet18", "--random-weights"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three 64 px images, a mask per image, a boxes file and a corrupt image."""
    d = tmp_path_factory.mktemp("eval")
    paths = write_images(str(d), names=("a", "b", "c"))
    masks = d / "masks"
    masks.mkdir()
    for n in "abc":
        m = np.zeros((64, 64), np.uint8)
        m[8:40, 16:48] = 255
        Image.fromarray(m).save(masks / f"{n}.png")
    boxes = d / "boxes.json"
    boxes.write_text(json.dumps({"a": [8, 16, 40, 48], "b": [[0, 0, 16, 16], [32, 32, 64, 64]], "c": [4, 4, 60, 60],
                                 "unused": [0, 0, 1, 1]}))
    (d / "corrupt.png").write_bytes(b"GIF89a broken")
    return {"images": paths, "masks": str(masks), "boxes": str(boxes), "corrupt": str(d / "corrupt.png"),
            "dir": str(d)}


@pytest.fixture(scope="module")
def boxes_run(data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ev") / "out")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["evaluate", *data["images"], *MODEL, "--methods", "gradcam", "eigencam", "--metrics",
                   "sparseness", "average_drop", "pointing_game", "--boxes", data["boxes"], "--sanity", "--key", "1",
                   "--out", out])
    return out, rc, stdout.getvalue(), stderr.getvalue()


def _read(out, name):
    with open(os.path.join(out, name), encoding="utf-8") as f:
        return f.read()


def test_evaluate_with_boxes_and_sanity_writes_tables_statistics_and_report(boxes_run):
    out, rc, stdout, stderr = boxes_run
    assert rc == 0, stderr
    assert re.fullmatch(r"evaluate: 3 images x 2 methods x 3 metrics = 18 rows \+ sanity check in [\d.]+ s; "
                        r"report .*report\.html\n", stdout), stdout
    assert {"metrics.csv", "metrics.md", "means.csv", "means.md", "friedman.md", "sanity.csv", "sanity.md",
            "metric_means.png", "maps.png", "randomisation.png", "report.html"} <= set(os.listdir(out))
    rows = _read(out, "metrics.csv").strip().splitlines()
    assert rows[0] == "image,class,method,metric,value,higher_is_better" and len(rows) == 1 + 18
    assert {r.split(",")[0] for r in rows[1:]} == {"a", "b", "c"}
    assert "sparseness ↑" in _read(out, "means.md") and "average_drop ↓" in _read(out, "means.md")
    assert len(_read(out, "means.csv").strip().splitlines()) == 1 + 2 * 3
    friedman = _read(out, "friedman.md")
    assert friedman.count("## ") == 3 and "Nemenyi" in friedman
    assert "spearman" in _read(out, "sanity.md") and "step" in _read(out, "sanity.csv").splitlines()[0]
    html = _read(out, "report.html")
    assert_self_contained(html)
    assert html.count("<img ") == 3
    for text in ("Configuration", "boxes.json", "Mean per method", "Friedman", "cascading randomisation",
                 "Per image", "pointing_game"):
        assert text in html, text


def test_masks_and_a_metric_family(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["evaluate", *data["images"][:2], *MODEL, "--methods", "gradcam", "--metrics", "localisation",
                 "--masks", data["masks"], "--out", str(out)]) == 0
    rows = _read(out, "metrics.csv").strip().splitlines()[1:]
    localisation = [m for m, s in METRICS.items() if s.family == "localisation"]
    assert sorted({r.split(",")[3] for r in rows}) == sorted(localisation) and len(rows) == 2 * len(localisation)
    assert "at least 3 images and 2 methods" in _read(out, "friedman.md")
    assert "sanity.csv" not in os.listdir(out)
    assert "evaluate: 2 images x 1 methods x 5 metrics" in capsys.readouterr().out


def test_metrics_needing_ground_truth_are_skipped_with_a_note(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["evaluate", data["images"][0], *MODEL, "--methods", "gradcam", "--metrics", "sparseness", "iou",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "note: skipped iou: they need ground truth" in printed
    assert {r.split(",")[3] for r in _read(out, "metrics.csv").strip().splitlines()[1:]} == {"sparseness"}
    assert "skipped iou" in _read(out, "report.html")


def test_metric_names_families_and_all():
    assert cli_eval.resolve_metrics(["all"]) == list(METRICS)
    faith = cli_eval.resolve_metrics(["faithfulness"])
    assert faith == [m for m, s in METRICS.items() if s.family == "faithfulness"] and "road_combined" in faith
    assert cli_eval.resolve_metrics(["sparseness", "complexity", "sparseness"]) == ["sparseness", "entropy"]
    assert set(cli_eval.metric_families()) == {"faithfulness", "localisation", "complexity", "stability"}
    kept, notes = cli_eval._drop_unsupported(cli_eval.resolve_metrics(["all"]), have_truth=False)
    assert "iou" not in kept and "deletion_auc" in kept and len(notes) == 1
    assert "scorecam" in cli_eval.resolve_methods(["all"]) and "cam" not in cli_eval.resolve_methods(["all"])


def test_defaults():
    args = build_parser().parse_args(["evaluate"])
    assert args.methods == list(cli_eval.DEFAULT_METHODS) and args.metrics == list(DEFAULT_METRICS)
    assert args.out == os.path.join("runs", "evaluate") and not args.sanity and args.key == 0
    assert args.masks is None and args.boxes is None and args.images == []


BAD = {
    "missing file": (["{dir}/nope.png"], "not found"),
    "corrupt image": (["{corrupt}"], "corrupt.png"),
    "unknown method": (["{a}", "--methods", "nosuchcam"], "'nosuchcam'"),
    "unknown metric": (["{a}", "--metrics", "accuracy"], "unknown name 'accuracy'"),
    "unknown model": (["{a}", "--model", "resnet7"], "'resnet7'"),
    "unwritable out": (["{a}", "--out", "{dir}/file.txt/sub"], "cannot create output directory"),
    "localisation without truth": (["{a}", "--metrics", "localisation"], "need ground truth"),
    "masks and boxes": (["{a}", "--metrics", "iou", "--masks", "{masks}", "--boxes", "{boxes}"], "not both"),
    "no mask for an image": (["{a}", "{dir}/extra.png", "--metrics", "iou", "--masks", "{masks}"], "extra"),
    "boxes not json": (["{a}", "--metrics", "iou", "--boxes", "{dir}/file.txt"], "not valid JSON"),
    "no boxes for an image": (["{a}", "{dir}/extra.png", "--metrics", "iou", "--boxes", "{boxes}"], "extra"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_loses_nothing(case, data, tmp_path, capsys):
    extra, message = BAD[case]
    (tmp_path / "file.txt").write_text("a regular file")
    write_images(str(tmp_path), names=("extra",))
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").write_text("results of an earlier run")
    fill = {"dir": str(tmp_path), "corrupt": data["corrupt"], "a": data["images"][0], "masks": data["masks"],
            "boxes": data["boxes"]}
    argv = ["evaluate", *MODEL, "--methods", "gradcam", "--metrics", "sparseness", "--out", str(out)]
    before = snapshot(tmp_path)
    assert main(argv + [e.format(**fill) for e in extra]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


def test_ground_truth_is_scaled_to_the_model_input(data):
    names = ["a", "b"]
    boxes = cli_eval.read_boxes(data["boxes"], names)
    masks = cli_eval.boxes_to_input_masks(boxes, data["images"][:2], 224)  # 64 px images, boxes in their pixels
    ys, xs = np.nonzero(masks[0])
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (28, 140, 56, 168)  # [8, 16, 40, 48] x 3.5
    assert masks[1].sum() == 56 * 56 + 112 * 112  # [0, 0, 16, 16] and [32, 32, 64, 64] (to the edge)
    from_files = cli_eval.read_masks(cli_eval.locate_masks(data["masks"], names), 224)
    assert from_files.shape == (2, 224, 224) and from_files.dtype == bool
    np.testing.assert_array_equal(from_files[0], masks[0])  # the mask drawn where box a is



def _run_counting_explain_calls(data, tmp_path, monkeypatch, methods, metrics):
    """Run ``jaxcam evaluate`` on two images, recording every explain() call's methods; returns
    ``(calls, model, x, (rows, maps, classes))`` of the command's evaluation."""
    import importlib

    calls, seen = [], {}
    evaluate_module, explain_module = (importlib.import_module(n) for n in ("jaxcam.evaluate", "jaxcam._explain"))
    real_explain, real_evaluate = explain_module.explain, cli_eval._evaluate

    def counting(model, images, method="gradcam", *a, **k):
        calls.append(method)
        return real_explain(model, images, method, *a, **k)

    def spy(model, x, methods, metrics, masks, key):
        seen.update(model=model, x=x, result=real_evaluate(model, x, methods, metrics, masks, key))
        return seen["result"]

    with monkeypatch.context() as patch:
        patch.setattr(evaluate_module, "explain", counting)
        patch.setattr(explain_module, "explain", counting)
        patch.setattr(cli_eval, "_evaluate", spy)
        assert main(["evaluate", *data["images"][:2], *MODEL, "--methods", *methods, "--metrics", *metrics,
                     "--key", "3", "--out", str(tmp_path / "out")]) == 0
    return calls, seen["model"], seen["x"], seen["result"]


def test_each_map_is_computed_once(data, tmp_path, monkeypatch):
    """Issue 17: one explain() call serves every method's metrics and the pictures; nothing explains again."""
    methods = ["gradcam", "eigencam"]
    calls, _, x, (rows, maps, classes) = _run_counting_explain_calls(data, tmp_path, monkeypatch, methods,
                                                                      ["sparseness"])
    assert calls == [methods]
    assert list(maps) == methods and all(maps[m].shape == (2, *x.shape[1:3]) for m in methods)
    assert classes.shape == (2,) and len(rows) == 2 * 2
    csv = _read(tmp_path / "out", "metrics.csv").strip().splitlines()
    assert [r.split(",")[2] for r in csv[1:]] == ["gradcam"] * 2 + ["eigencam"] * 2


@pytest.mark.slow
def test_rows_and_maps_equal_those_of_one_method_at_a_time(data, tmp_path, monkeypatch):
    """The one shared call gives the rows and maps of evaluating, then explaining, one method at a time (the
    command's former way, which computed every map twice): bit for bit, in the same order."""
    from jaxcam import explain
    from jaxcam.evaluate import evaluate
    from jaxcam.table import Table

    methods, metrics = ["gradcam", "eigencam"], ["sparseness", "average_drop"]
    calls, model, x, (rows, maps, classes) = _run_counting_explain_calls(data, tmp_path, monkeypatch, methods,
                                                                          metrics)
    assert calls == [methods]
    before = Table.concat([evaluate(model, x, [m], metrics, preprocessed=True, key=3) for m in methods])
    assert rows.to_csv() == before.to_csv()
    csv = _read(tmp_path / "out", "metrics.csv").strip().splitlines()
    assert [r.split(",")[2:] for r in csv[1:]] == [r.split(",")[2:] for r in before.to_csv().strip().splitlines()[1:]]
    for m in methods:
        alone, _, cls = explain(model, x, m, preprocessed=True, key=3, return_logits=True)
        np.testing.assert_array_equal(maps[m], np.asarray(alone))
        np.testing.assert_array_equal(classes, np.asarray(cls))
