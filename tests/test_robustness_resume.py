"""Resuming a robustness run identifies every item by its content: a replaced, added or removed image is computed
again (or dropped), never mixed, duplicated or skipped; and every check happens before anything is written."""

import json
import os
import re
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

import jaxcam
from jaxcam import robustness as R
from jaxcam.datasets import array_source, folder_source

from .toy import toy_model

TINY = dict(methods=("gradcam",), noises=("gaussian",), severities=(1,), draws=1, image_batch=2, chunk=8, size=32,
            dataset="d", progress=False)
JOBS = 1  # noises x severities x draws of TINY


def write_png(path, seed, size=40):
    Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)).save(path)


def folder(path, names_seeds):
    os.makedirs(path, exist_ok=True)
    for name, seed in names_seeds.items():
        write_png(os.path.join(path, f"{name}.png"), seed)
    return str(path)


def snapshot(root, skip=()):
    """Every file under ``root`` (except under the ``skip`` folders) with its bytes."""
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.relpath(os.path.join(dirpath, f), root)] = fh.read()
    return out


@pytest.fixture
def count_parts(monkeypatch):
    """The number of parts written from now on."""
    written = []
    real = R._write_part
    monkeypatch.setattr(R, "_write_part", lambda path, rows: (written.append(path), real(path, rows)))
    return written


def assert_once_each(rows, images):
    keys = list(zip(rows["image"], rows["method"], rows["noise"], rows["severity"], rows["draw"]))
    assert len(keys) == len(set(keys)) == len(images) * JOBS * len(TINY["methods"])
    assert sorted(set(rows["image"].tolist())) == sorted(images)


def sha_of(rows, image):
    return set(rows.where(image=image)["image_sha256"].tolist())


def test_a_replaced_file_is_computed_again_not_mixed(tmp_path, count_parts):
    data = folder(tmp_path / "data", {"a": 1, "b": 2, "c": 3})
    out = str(tmp_path / "run")
    partial = R.run(toy_model(), folder_source(data), out, **TINY, max_chunks=1)  # batch (a, b) done, (c) not
    assert set(partial["image"].tolist()) == {"a.png", "b.png"}
    old_b = sha_of(partial, "b.png")
    write_png(os.path.join(data, "b.png"), 99)  # another picture under the same name
    before = snapshot(tmp_path, skip=(out,))
    count_parts.clear()
    resumed = R.run(toy_model(), folder_source(data), out, **TINY, resume=True)
    assert len(count_parts) == 2  # (a, b) again, with the new b, and (c): the old (a, b) part is not read
    assert_once_each(resumed, ["a.png", "b.png", "c.png"])
    assert sha_of(resumed, "b.png") != old_b and len(sha_of(resumed, "b.png")) == 1
    fresh = R.run(toy_model(), folder_source(data), str(tmp_path / "fresh"), **TINY)
    assert R.run_digest(resumed) == R.run_digest(fresh) == R.run_digest(R.read(out))
    assert snapshot(tmp_path, skip=(out, str(tmp_path / "fresh"))) == before  # nothing else touched


def test_an_added_file_is_computed_once_and_nothing_is_counted_twice(tmp_path, count_parts):
    data = folder(tmp_path / "data", {"a": 1, "c": 3, "d": 4})
    out = str(tmp_path / "run")
    R.run(toy_model(), folder_source(data), out, **TINY, max_chunks=1)  # (a, c) done
    write_png(os.path.join(data, "b.png"), 2)  # sorts between a and c: the batches become (a, b), (c, d)
    resumed = R.run(toy_model(), folder_source(data), out, **TINY, resume=True)
    assert_once_each(resumed, ["a.png", "b.png", "c.png", "d.png"])
    fresh = R.run(toy_model(), folder_source(data), str(tmp_path / "fresh"), **TINY)
    assert R.run_digest(resumed) == R.run_digest(fresh)
    write_png(os.path.join(data, "e.png"), 5)  # at the end: only the new last batch is computed
    count_parts.clear()
    more = R.run(toy_model(), folder_source(data), out, **TINY, resume=True)
    assert len(count_parts) == 1
    assert_once_each(more, ["a.png", "b.png", "c.png", "d.png", "e.png"])


def test_a_removed_file_leaves_the_rows_and_an_unchanged_resume_computes_nothing(tmp_path, count_parts):
    data = folder(tmp_path / "data", {"a": 1, "b": 2, "c": 3})
    out = str(tmp_path / "run")
    full = R.run(toy_model(), folder_source(data), out, **TINY)
    count_parts.clear()
    again = R.run(toy_model(), folder_source(data), out, **TINY, resume=True)
    assert count_parts == [] and R.run_digest(again) == R.run_digest(full)
    os.remove(os.path.join(data, "c.png"))
    fewer = R.run(toy_model(), folder_source(data), out, **TINY, resume=True)
    assert count_parts == []  # (a, b) unchanged; (c) left the source
    assert_once_each(fewer, ["a.png", "b.png"])
    write_png(os.path.join(data, "c.png"), 3)  # back again: its parts, kept on disk, are read again
    assert R.run_digest(R.run(toy_model(), folder_source(data), out, **TINY, resume=True)) == R.run_digest(full)
    assert count_parts == []


def test_in_memory_images_are_identified_by_pixels_too(tmp_path):
    images = list(jaxcam.sample_images().values())[:2]
    out = str(tmp_path / "run")
    first = R.run(toy_model(), images, out, **TINY)
    swapped = R.run(toy_model(), images[::-1], out, **TINY, resume=True)  # same ids 0, 1; other pixels
    assert sha_of(swapped, "0") == sha_of(first, "1") and sha_of(swapped, "1") == sha_of(first, "0")
    assert_once_each(swapped, ["0", "1"])


def test_process_shares_resume_on_new_data_like_a_fresh_split_run(tmp_path):
    data = folder(tmp_path / "data", {"a": 1, "b": 2, "c": 3, "d": 4})
    out, fresh = str(tmp_path / "run"), str(tmp_path / "fresh")
    R.run(toy_model(), folder_source(data), out, **TINY, process=(0, 2))
    R.run(toy_model(), folder_source(data), out, **TINY, process=(1, 2), resume=True)
    write_png(os.path.join(data, "d.png"), 40)  # in process 1's share (positions 1 and 3)
    R.run(toy_model(), folder_source(data), out, **TINY, process=(0, 2), resume=True)
    both = R.run(toy_model(), folder_source(data), out, **TINY, process=(1, 2), resume=True)
    assert sorted(f for f in os.listdir(out) if f.startswith("manifest-")) == ["manifest-0000.json",
                                                                                 "manifest-0001.json"]
    R.run(toy_model(), folder_source(data), fresh, **TINY, process=(0, 2))
    assert R.run_digest(both) == R.run_digest(R.run(toy_model(), folder_source(data), fresh, **TINY,
                                                    process=(1, 2), resume=True))
    assert_once_each(both, ["a.png", "b.png", "c.png", "d.png"])


def test_a_process_starting_after_its_peers_wrote_parts_needs_no_resume_but_a_restart_does(tmp_path):
    """Processes of one run start at different times: another process's parts are expected, not an old result."""
    images = np.random.default_rng(1).random((4, 32, 32, 3)).astype(np.float32)
    out = str(tmp_path / "run")
    R.run(toy_model(), images, out, **TINY, process=(0, 2))
    both = R.run(toy_model(), images, out, **TINY, process=(1, 2))  # no resume: process 1 has not started here
    assert_once_each(both, ["0", "1", "2", "3"])
    for index in (0, 1):  # a process that has started in this directory before must say resume
        with pytest.raises(R.RunConfigError, match="resume=True"):
            R.run(toy_model(), images, out, **TINY, process=(index, 2))


def test_an_item_that_changes_during_the_run_is_refused_before_its_batch_is_written(tmp_path, monkeypatch):
    data = folder(tmp_path / "data", {"a": 1, "b": 2})
    out = str(tmp_path / "run")
    real = R._plan

    def plan_then_replace(*args):
        result = real(*args)
        write_png(os.path.join(data, "b.png"), 77)
        return result

    monkeypatch.setattr(R, "_plan", plan_then_replace)
    with pytest.raises(R.SourceChangedError, match=r"'b\.png' changed .* resume=True"):
        R.run(toy_model(), folder_source(data), out, **TINY)
    assert os.listdir(os.path.join(out, "parts")) == []
    monkeypatch.setattr(R, "_plan", real)
    assert_once_each(R.run(toy_model(), folder_source(data), out, **TINY, resume=True), ["a.png", "b.png"])


# --------------------------------------------------------------------------------- checks before anything is written

BAD = {  # argument -> (value, error type, words of the message)
    "methods": (("gradcm",), jaxcam.UnknownNameError, "did you mean 'gradcam'"),
    "noises": (("hail",), jaxcam.UnknownNameError, "unknown noise 'hail'"),
    "severities": ((0, 1), jaxcam.InvalidArgumentError, "severities must be an integer in 1..5, got 0"),
    "similarity": ("cosine", jaxcam.UnknownNameError, "'cosine'"),
    "explain_class": ("old", jaxcam.UnknownNameError, "explain_class"),
    "layer": ("nope", jaxcam.UnknownNameError, "'nope'"),
    "chunk": (0, jaxcam.InvalidArgumentError, "chunk must be an integer >= 1, got 0"),
    "image_batch": (0, jaxcam.InvalidArgumentError, "image_batch must be"),
    "draws": (0, jaxcam.InvalidArgumentError, "draws must be"),
    "size": (2.5, jaxcam.InvalidArgumentError, "size must be"),
    "key": (-1, jaxcam.InvalidArgumentError, "key must be an integer in 0..4294967295, got -1"),
    "rbo_p": (1.0, jaxcam.InvalidArgumentError, "rbo_p"),
    "process": ((2, 2), jaxcam.InvalidArgumentError, "0 <= index < count"),
    "max_chunks": (-1, jaxcam.InvalidArgumentError, "max_chunks"),
}
MORE_BAD = {
    "layer 3.0": (dict(layer=3.0), jaxcam.InvalidArgumentError, "layer must be None"),
    "method twice": (dict(methods=("gradcam", "gradcam")), jaxcam.InvalidArgumentError, "twice"),
    "no methods": (dict(methods=()), jaxcam.InvalidArgumentError, "methods is empty"),
    "severity twice": (dict(severities=(1, 1)), jaxcam.InvalidArgumentError, "once each"),
    "key 2**32": (dict(key=2 ** 32), jaxcam.InvalidArgumentError, "key must be"),
}


@pytest.mark.parametrize("case", [*BAD, *MORE_BAD])
def test_a_bad_argument_is_refused_before_anything_is_written(case, tmp_path):
    kwargs, error, words = ({case: BAD[case][0]}, *BAD[case][1:]) if case in BAD else MORE_BAD[case]
    out = str(tmp_path / "run")
    with pytest.raises(error) as info:
        R.run(toy_model(), np.zeros((1, 8, 8, 3), np.float32), out, **{**TINY, **kwargs})
    assert words in str(info.value) and "\n" not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_the_corrected_call_runs_where_the_bad_one_was_refused(tmp_path):
    out = str(tmp_path / "run")
    images = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    with pytest.raises(jaxcam.UnknownNameError):
        R.run(toy_model(), images, out, **{**TINY, "methods": ("gradcam", "nosuchcam")})
    assert not os.path.exists(out)
    assert len(R.run(toy_model(), images, out, **TINY)) == 2


def test_an_output_path_below_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(jaxcam.InvalidArgumentError, match="cannot create output directory .*file.txt is a file"):
        R.run(toy_model(), np.zeros((1, 8, 8, 3), np.float32), str(tmp_path / "file.txt" / "run"), **TINY)


@pytest.mark.parametrize("case", ["empty list", "empty folder", "empty share", "all unreadable"])
def test_an_empty_source_is_an_error_naming_it(case, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = str(tmp_path / "run")
    before = snapshot(tmp_path)
    with pytest.raises(jaxcam.EmptySourceError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case == "empty list":
            R.run(toy_model(), [], out, **TINY)
        elif case == "empty folder":
            R.run(toy_model(), f"folder:{tmp_path / 'empty'}", out, **TINY)
        elif case == "empty share":
            R.run(toy_model(), array_source(np.zeros((2, 8, 8, 3), np.float32), name="two"), out, **TINY,
                  process=(2, 3))
        else:
            R.run(toy_model(), folder_source(tmp_path / "bad", on_error="skip"), out, **TINY)
    words = {"empty list": "'images' holds no images", "empty folder": "the source is empty",
             "empty share": "process 2 of 3 gets no item of 'two' (it has 2 items: run at most 2 processes)",
             "all unreadable": "is unreadable (1 skipped"}[case]
    assert words in str(info.value)
    assert snapshot(tmp_path) == before and not os.path.exists(out)


def test_a_truncated_image_in_a_folder_stops_the_run_before_any_work_or_is_skipped(tmp_path):
    data = folder(tmp_path / "data", {"a": 1, "b": 2, "c": 3})
    with open(os.path.join(data, "c.png"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(data, "c.png")) // 2)
    out = str(tmp_path / "run")
    with pytest.raises(jaxcam.ImageFileError, match="c.png"):
        R.run(toy_model(), folder_source(data), out, **TINY)
    assert not os.path.exists(out)  # the error comes before batch (a, b) is computed, and before run.json
    with pytest.warns(UserWarning, match=r"skipping unreadable item 2 \('c.png'\).*manifest"):
        rows = R.run(toy_model(), folder_source(data, on_error="skip"), out, **TINY)
    assert_once_each(rows, ["a.png", "b.png"])
    manifest = json.load(open(os.path.join(out, "manifest-0000.json")))
    assert [s["id"] for s in manifest["skipped"]] == ["c.png"] and "c.png" in manifest["skipped"][0]["reason"]


# -------------------------------------------------------------------------------------------- damaged run files


@pytest.mark.parametrize("content", [b"", b'{"model": "toy", "weig', b"\xff\xfe garbage", b"[1, 2]"])
def test_a_damaged_run_json_names_the_file_and_the_way_out(content, tmp_path):
    out = tmp_path / "run"
    (out / "parts").mkdir(parents=True)
    (out / "run.json").write_bytes(content)
    before = snapshot(tmp_path)
    with pytest.raises(jaxcam.CorruptFileError) as info:
        R.run(toy_model(), np.zeros((1, 8, 8, 3), np.float32), str(out), **TINY, resume=True)
    msg = str(info.value)
    assert str(out / "run.json") in msg and "new directory" in msg and "delete" in msg and "\n" not in msg
    assert snapshot(tmp_path) == before


def test_a_run_from_the_position_keyed_layout_is_another_configuration(tmp_path):
    images = np.random.default_rng(0).random((1, 32, 32, 3)).astype(np.float32)
    out = str(tmp_path / "run")
    R.run(toy_model(), images, out, **TINY)
    cfg = json.load(open(os.path.join(out, "run.json")))
    del cfg["items"]  # as an older jaxcam wrote it
    open(os.path.join(out, "run.json"), "w").write(json.dumps(cfg))
    with pytest.raises(R.RunConfigError, match="another configuration.*'items'"):
        R.run(toy_model(), images, out, **TINY, resume=True)


def test_a_damaged_part_is_named_by_read_and_computed_again_on_resume(tmp_path):
    images = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
    out = str(tmp_path / "run")
    full = R.run(toy_model(), images, out, **TINY)
    part = sorted(os.path.join(out, "parts", f) for f in os.listdir(os.path.join(out, "parts")))[0]
    with open(part, "r+b") as f:
        f.truncate(os.path.getsize(part) // 2)
    with pytest.raises(jaxcam.CorruptFileError, match=re.escape(part) + " is damaged .*resume the run"):
        R.read(out)
    with pytest.warns(UserWarning, match=re.escape(part) + " is damaged"):
        resumed = R.run(toy_model(), images, out, **TINY, resume=True)
    assert R.run_digest(resumed) == R.run_digest(full)
    shutil.copy(os.path.join(out, "run.json"), os.path.join(out, "manifest-0000.json"))  # not a manifest
    with pytest.raises(jaxcam.CorruptFileError, match="manifest-0000.json does not list"):
        R.read(out)
