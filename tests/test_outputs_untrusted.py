"""What jaxcam writes when names are untrusted: file names become CSV/markdown cells, file names, figure titles and
paths in messages. Each case runs its exact input and checks the output (or the one-line error) and that nothing
outside the output directory changed (issue 13)."""

import csv
import io
import os
import re
import warnings

import numpy as np
import pytest
from PIL import Image

import jaxcam
from jaxcam import viz
from jaxcam.cli import common, main
from jaxcam.cli import explain as explain_cli
from jaxcam.report import Report, parse_markdown_table
from jaxcam.table import Table, csv_cell, escape_markdown

from .test_cli_robustness import one_error_line, snapshot

R18 = ["--model", "resnet18", "--random-weights"]
LONG_239 = "l" * 235 + ".png"  # 239 characters: the overlay name would pass 255 bytes
LONG_255 = "m" * 251 + ".png"  # the longest name a file system takes
CJK = "猫の写真.png"
SPACES = "my cat photo.png"
FORMULA = "=1+2.png"
SCRIPT = "<script>alert(1)<\"'>.png"
MATHTEXT = "a$\\frac$b.png"  # an unbalanced mathtext command: matplotlib would stop the figure
NAMES = [LONG_239, LONG_255, CJK, SPACES, FORMULA, SCRIPT, MATHTEXT]


def _photo(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)


def _stem(file_name):
    return os.path.splitext(file_name)[0]


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """One ``jaxcam explain`` of seven 48x64 photos with hostile names into a directory whose path has a space."""
    root = tmp_path_factory.mktemp("untrusted")
    photos = root / "photos"
    photos.mkdir()
    for i, name in enumerate(NAMES):
        _photo(photos / name, i)
    out = root / "out dir" / "sub"
    before = snapshot(root)
    stdout, stderr = io.StringIO(), io.StringIO()
    from contextlib import redirect_stderr, redirect_stdout

    with warnings.catch_warnings(record=True) as caught, redirect_stdout(stdout), redirect_stderr(stderr):
        warnings.simplefilter("always")
        rc = main(["explain", *[str(photos / n) for n in NAMES], *R18, "--out", str(out)])
    return {"root": root, "out": out, "rc": rc, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
            "warnings": [str(w.message) for w in caught], "before": before}


# -- 4: file names: long, CJK, spaces, characters a file system refuses ----------------------------------------
def test_every_hostile_name_gets_its_overlay_and_nothing_else_changes(explained):
    assert explained["rc"] == 0, explained["stderr"]
    out = explained["out"]
    overlays = sorted(f for f in os.listdir(out) if f.endswith(".png") and f != "grid.png")
    assert len(overlays) == len(NAMES)
    assert all(len(f.encode("utf-8")) <= 255 for f in os.listdir(out))
    with np.load(out / "maps.npz") as npz:
        names, files = list(npz["names"]), list(npz["files"])
    assert names == [_stem(n) for n in NAMES]  # the original names, in order
    assert len(set(files)) == len(files) and {f.split("_gradcam_")[0] for f in overlays} == set(files)
    by_name = dict(zip(names, files))
    for kept in (CJK, SPACES, FORMULA, SCRIPT):  # valid file names stay as they are
        assert by_name[_stem(kept)] == _stem(kept)
    for long in (LONG_239, LONG_255):  # shortened deterministically, with a hash of the whole name
        assert re.fullmatch(rf"{_stem(long)[0]}+~[0-9a-f]{{8}}", by_name[_stem(long)])
    assert re.fullmatch(r"a\$_frac\$b~[0-9a-f]{8}", by_name[_stem(MATHTEXT)])  # "\" is a separator on Windows
    after = snapshot(explained["root"])
    assert {k: v for k, v in after.items() if not k.startswith("out dir")} == explained["before"]


def test_the_report_maps_renamed_images_to_their_files_and_escapes_names(explained):
    html = (explained["out"] / "report.html").read_text(encoding="utf-8")
    assert "overlay files start with" in html and _stem(LONG_255) in html
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;&quot;&#x27;&gt;" in html


def test_file_stems_are_safe_unique_and_deterministic():
    tail = "_gradcam++_999-" + "x" * 40 + ".png"
    names = ["a", "A", "a/b", "a\x00b", "a\x1bb", "\u202egnp.exe", "\udcff", "", "x" * 300, "x" * 300 + "y", "猫"]
    stems = common.file_stems(names, tail)
    assert stems == common.file_stems(names, tail)
    assert stems[0] == "a" and stems[-1] == "猫"
    assert len({s.casefold() for s in stems}) == len(names)  # "A" would overwrite "a" on macOS and Windows
    for name, stem in zip(names[1:-1], stems[1:-1]):
        assert re.search(r"~[0-9a-f]{8}$", stem), name
        assert not any(c in stem for c in "/\\\x00\x1b\u202e\udcff")
        assert len((stem + tail).encode("utf-8")) + common.TEMP_SUFFIX <= 255
    assert common.file_stems(["猫" * 100], tail)[0].startswith("猫" * 20)  # cut between characters, not bytes


def test_paths_too_long_to_create_are_refused_up_front(tmp_path):
    with pytest.raises(common.OutputDirError, match="too deep"):
        common.check_output_paths("/" + "/".join(["d" * 200] * 21), ["grid.png"])  # 4.2 kB: past PATH_MAX
    with pytest.raises(common.OutputDirError, match="255-byte file-name limit"):
        common.check_output_paths(str(tmp_path), ["x" * 250 + ".png"])
    common.check_output_paths(str(tmp_path), ["x" * 230 + ".png", "grid.png"])


def test_output_names_are_checked_before_any_work(tmp_path, monkeypatch, capsys):
    _photo(tmp_path / "a.png")
    monkeypatch.setattr(common, "NAME_MAX", 40)  # a file system whose names cannot hold any overlay name
    monkeypatch.setattr(explain_cli, "compute_maps", lambda *a, **k: pytest.fail("maps computed before the check"))
    before = snapshot(tmp_path)
    assert main(["explain", str(tmp_path / "a.png"), *R18, "--out", str(tmp_path / "new" / "out")]) == 2
    assert "40-byte limit" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists() and snapshot(tmp_path) == before


def test_bytes_that_are_not_utf8_in_a_name(tmp_path, capsys):
    name = os.fsdecode(b"\xff\xfe.png")
    _photo(tmp_path / name)
    assert main(["explain", str(tmp_path / name), *R18, "--out", str(tmp_path / "out")]) == 0, capsys.readouterr()
    with np.load(tmp_path / "out" / "maps.npz") as npz:
        assert list(npz["names"]) == ["\\xff\\xfe"] and re.fullmatch(r"__~[0-9a-f]{8}", str(npz["files"][0]))
    assert "\\xff\\xfe" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


# -- 3: a failed command leaves no directory it created ------------------------------------------------------
def test_failed_explain_removes_the_directories_it_created(tmp_path, capsys):
    before = snapshot(tmp_path)
    rc = main(["explain", str(tmp_path / "missing.png"), *R18, "--out", str(tmp_path / "runs" / "explain")])
    assert rc == 2 and "image file not found" in one_error_line(capsys.readouterr().err)
    assert os.listdir(tmp_path) == [] and snapshot(tmp_path) == before


def test_failed_explain_leaves_an_existing_empty_directory(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    rc = main(["explain", str(tmp_path / "missing.png"), *R18, "--out", str(tmp_path / "out")])
    assert rc == 2 and "image file not found" in one_error_line(capsys.readouterr().err)
    assert os.listdir(tmp_path) == ["out"] and os.listdir(tmp_path / "out") == []


def test_failed_evaluate_removes_the_directory_it_created(tmp_path, capsys):
    _photo(tmp_path / "a.png")
    before = snapshot(tmp_path)
    rc = main(["evaluate", str(tmp_path / "a.png"), "--model", "resnet7", "--random-weights", "--metrics",
               "sparseness", "--out", str(tmp_path / "eval")])
    assert rc == 2 and "resnet7" in one_error_line(capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ["a.png"] and snapshot(tmp_path) == before


def test_output_directory_keeps_what_was_written_and_cleans_up_on_interrupt(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with common.output_directory(str(tmp_path / "a" / "b")):
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError):
        with common.output_directory(str(tmp_path / "a" / "b")) as out:
            (tmp_path / "a" / "b" / "part.csv").write_text("written before the failure")
            raise RuntimeError(out)
    assert os.listdir(tmp_path / "a" / "b") == ["part.csv"]


# -- 1, 2: CSV and markdown cells ------------------------------------------------------------------------------
def test_csv_cells_that_a_spreadsheet_would_run_are_escaped_and_numbers_stay():
    for text in ("=1+2.png", "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(text) == "'" + text
    for value in (-0.5, "-0.5", "+3", "1e-3", 7, "cat", None):
        assert csv_cell(value) == value
    table = Table({"image": ["=1+2", "-0.5", "ok"], "value": [-0.5, 1.0, -2.0]})
    rows = list(csv.reader(io.StringIO(table.to_csv())))
    assert rows == [["image", "value"], ["'=1+2", "-0.5"], ["-0.5", "1.0"], ["ok", "-2.0"]]


def test_markdown_cells_cannot_break_the_table_or_inject_html():
    hostile = ["<img src=x onerror=alert(1)>", "a|b", "two\nlines\r\nthree", "`code`", "[a](http://x)", "x\\|y"]
    md = Table({"image": hostile, "value": [1.0] * len(hostile)}).to_markdown()
    lines = md.splitlines()
    assert len(lines) == 2 + len(hostile) and "<img" not in md and not re.search(r"(?<!\\)\]\(", md)
    assert all(len(re.findall(r"(?<!\\)(?:\\\\)*\|", ln)) == 3 for ln in lines)  # unescaped pipes: 3 per line
    assert escape_markdown("C [95% CI]") == "C [95% CI]"
    header, rows = parse_markdown_table(md)  # a report reads the escaped table back as written
    assert [r[0] for r in rows] == [h.replace("\r\n", " ").replace("\n", " ") for h in hostile]
    html = Report("t").table(md).html()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_untrusted")
    names = [FORMULA, "@SUM(A1).png", "<img src=x onerror=alert(1)>.png", "pipe|and\nnewline.png"]
    for i, n in enumerate(names):
        _photo(root / n, i)
    out = root / "out dir"
    argv = ["evaluate", *[str(root / n) for n in names], *R18, "--methods", "gradcam", "--metrics", "sparseness",
            "--out", str(out)]
    from contextlib import redirect_stdout

    stdout = io.StringIO()
    with redirect_stdout(stdout):
        rc = main(argv)
    return out, rc, stdout.getvalue(), [_stem(n) for n in names]


def test_evaluate_tables_escape_names_for_csv_and_markdown(evaluated):
    out, rc, stdout, names = evaluated
    assert rc == 0
    with open(out / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["'=1+2", "'@SUM(A1)", names[2], names[3]]
    assert all(np.isfinite(float(r["value"])) for r in rows)
    md = (out / "metrics.md").read_text(encoding="utf-8")
    table = md[md.index("|"):].strip().splitlines()
    assert len(table) == 2 + 4 and "<img" not in md and "pipe\\|and newline" in md
    assert f"report {common.quote(str(out / 'report.html'))}" in stdout  # case 5: quoted


# -- 5: paths in messages are quoted ---------------------------------------------------------------------------
def test_summary_and_errors_quote_paths_with_spaces(explained, tmp_path, capsys):
    assert f"to {common.quote(str(explained['out']))} in " in explained["stdout"]
    assert "'" + str(explained["out"]) + "'" in explained["stdout"]
    blocker = tmp_path / "a file"
    blocker.write_text("mine")
    assert main(["explain", str(tmp_path / "x.png"), *R18, "--out", str(blocker / "sub")]) == 2
    assert f"cannot create output directory '{blocker}/sub'" in one_error_line(capsys.readouterr().err)


# -- 6: figure titles never warn, never parse as mathtext ------------------------------------------------------
def test_a_cjk_named_image_renders_without_a_warning(explained):
    assert explained["warnings"] == [] and explained["stderr"] == ""


def test_grid_titles_with_cjk_and_dollars_draw_silently(capfd):
    img = np.zeros((32, 32, 3), np.float32)
    cam = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = viz.grid_figure([img, img], {"gradcam": [cam, cam]}, {"gradcam": ["猫 0.91", "a$\\frac$b"]},
                              ["猫の写真", "$x^"])
        jaxcam.plots.picture_grid([[viz.overlay(img, cam)]], ["猫"], ["gradcam"], [["$\\frac$"]])
    assert png.startswith(b"\x89PNG") and [str(w.message) for w in caught] == []
    assert capfd.readouterr().err == ""
    assert viz.drawable_text("猫 café\n1") == "\\u732b café\n1"


# -- 7: boxes outside an image name the image, its size and the box ---------------------------------------------
def test_evaluate_box_outside_its_image_names_image_size_and_box(tmp_path, capsys):
    _photo(tmp_path / "cat.png")
    (tmp_path / "boxes.json").write_text('{"cat": [[0, 0, 10, 10], [50, 0, 60, 20]]}')
    before = snapshot(tmp_path)
    rc = main(["evaluate", str(tmp_path / "cat.png"), *R18, "--metrics", "iou", "--boxes",
               str(tmp_path / "boxes.json"), "--out", str(tmp_path / "out")])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "box [50, 0, 60, 20] of image cat" in line and "lies outside" in line
    assert "48 x 64 (h x w)" in line and str(tmp_path / "cat.png") in line
    assert snapshot(tmp_path) == before


def test_boxes_to_masks_names_the_image_its_size_and_the_box():
    with pytest.raises(jaxcam.MaskError, match=r"boxes\[1\] = \[9, 9, 12, 12\] of image 1 lies outside the image; "
                                               r"the image is 4 x 5 \(h x w\)"):
        jaxcam.metrics.boxes_to_masks([[0, 0, 2, 3], [[0, 0, 1, 1], [9, 9, 12, 12]]], (4, 5))
    with pytest.raises(jaxcam.MaskError, match="of image 'cat' is empty"):
        jaxcam.metrics.boxes_to_masks([[2, 2, 2, 4]], (4, 5), names=["cat"])
    with pytest.raises(jaxcam.MaskError, match=r"boxes\[0\] \(image 0\) must be \[y0, x0, y1, x1\]"):
        jaxcam.metrics.boxes_to_masks([[1, 2, 3]], (4, 5))


def test_atomic_write_leaves_no_temporary_file_when_it_fails(tmp_path):
    """Text that cannot be encoded fails the write: neither the target nor atomic_write's temporary file remains."""
    from jaxcam.files import atomic_write

    target = tmp_path / "out.txt"
    with pytest.raises(UnicodeEncodeError):
        atomic_write(target, "bad \udcff surrogate")
    assert os.listdir(tmp_path) == []
    atomic_write(target, "ok")
    assert os.listdir(tmp_path) == ["out.txt"] and target.read_text() == "ok"
