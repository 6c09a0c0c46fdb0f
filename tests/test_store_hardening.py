"""The model store and weights files as untrusted input (issue 13): names that would leave the models directory,
folders the store did not create, tampered manifests, non-finite weights, broken ``.npz`` files, missing weights
files, the embedded model behind ``JAXCAM_MODELS_DIR``, and the CLI's own wording. Every case asserts the one-line
typed error (or the right result) and that nothing outside the given directories changed."""

import json
import os
import pickle
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxcam.cli import main
from jaxcam.errors import (CheckpointError, CorruptFileError, InvalidNameError, MissingDependencyError,
                           NonFiniteParametersError)
from jaxcam.models import convert_state_dict, random_state_dict
from jaxcam.models import store
from jaxcam.models.convert import read_state_dict
from jaxcam.models.loader import convert_and_save, load_model
from jaxcam.models.store import ENV_VAR, CorruptManifestError, NameInUseError, load_saved, save_model

from .test_cli_robustness import one_error_line, write_images

X = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def sd():
    return random_state_dict("resnet18", seed=2)


@pytest.fixture(scope="module")
def model(sd):
    return convert_state_dict("resnet18", sd, source="test")


@pytest.fixture
def layout(tmp_path):
    """``tmp/models`` (the models directory) beside ``tmp/victim`` (a folder the store must never touch)."""
    (tmp_path / "models").mkdir()
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "precious.txt").write_text("do not delete")
    return tmp_path, tmp_path / "models", tmp_path / "victim"


def snapshot(folder) -> dict:
    """Every file (with its bytes), folder and symbolic link (with its target) under ``folder``."""
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, folder)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir",)
            else:
                with open(p, "rb") as f:
                    out[rel] = f.read()
    return out


def _save(model, name, root):
    return save_model(model, name, root, source="test", source_sha256=None, max_abs_logit_diff=None,
                      parity_reference="none")


def _one_line(exc) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


# 1. names and paths that reach the store ---------------------------------------------------------------------------

BAD_NAMES = {
    "../victim": "path separator", "": "is empty", ".": "not a reference to a directory",
    "..": "not a reference to a directory", "a/b": "path separator", "a\\b": "path separator",
    "/etc/passwd": "absolute path", "C:evil": "absolute path", "a\0b": "control", "a\nb": "control",
    "\u202eexe.lmth": "formatting character", ".hidden": "starting with '.'", " pad": "whitespace",
    "x" * 129: "too long", "\u4e2d" * 43: "too long",
}


@pytest.mark.parametrize("name", list(BAD_NAMES), ids=[repr(n)[:20] for n in BAD_NAMES])
def test_every_entry_point_refuses_a_bad_name_before_any_work(name, layout, sd, model):
    tmp, models, _ = layout
    before = snapshot(tmp)
    for call in (lambda: convert_and_save("resnet18", sd, name, models_dir=models),
                 lambda: _save(model, name, models), lambda: load_saved(name, models),
                 lambda: load_model(name, models_dir=models)):
        with pytest.raises(InvalidNameError, match=BAD_NAMES[name]) as err:
            call()
        assert _one_line(err.value).startswith(f"model name {name!r}")
    assert snapshot(tmp) == before and os.listdir(models) == []


def test_issue_case_dotdot_victim_is_neither_deleted_nor_loaded(layout, sd):
    tmp, models, victim = layout
    before = snapshot(tmp)
    with pytest.raises(InvalidNameError, match="path separator"):
        convert_and_save("resnet18", sd, "../victim", models_dir=models)
    with pytest.raises(InvalidNameError, match="path separator"):
        load_model("../victim", models_dir=models)
    assert snapshot(tmp) == before and (victim / "precious.txt").read_text() == "do not delete"


def test_symlinked_entry_is_never_followed_or_deleted(layout, sd, model):
    tmp, models, victim = layout
    os.symlink(victim, models / "pets")
    before = snapshot(tmp)
    with pytest.raises(NameInUseError, match="symbolic link"):
        convert_and_save("resnet18", sd, "pets", models_dir=models)
    # even when a (tampered) manifest records that name, a link is not the store's to replace
    entry = _save(model, "real", models)
    (models / "manifest.json").write_text(json.dumps({"format": 1, "models": {"pets": {**entry, "path": "pets"}}}))
    before = snapshot(tmp)
    with pytest.raises(NameInUseError, match="symbolic link"):
        _save(model, "pets", models)
    assert snapshot(tmp) == before and os.path.islink(models / "pets")


def test_unrecorded_folder_or_extra_files_are_never_replaced(layout, model):
    tmp, models, _ = layout
    (models / "pets").mkdir()
    (models / "pets" / "notes.txt").write_text("mine")
    before = snapshot(tmp)
    with pytest.raises(NameInUseError, match="does not record"):
        _save(model, "pets", models)
    assert snapshot(tmp) == before
    _save(model, "r18", models)
    (models / "r18" / "notes.txt").write_text("mine too")
    before = snapshot(tmp)
    with pytest.raises(NameInUseError, match=r"1 file\(s\) or link\(s\) the manifest does not list \(notes.txt\)"):
        _save(model, "r18", models)
    assert snapshot(tmp) == before


def test_recorded_entry_is_replaced_and_only_staging_is_removed(layout, sd, model):
    tmp, models, victim = layout
    _save(model, "r18", models)
    other = convert_state_dict("resnet18", random_state_dict("resnet18", seed=9))
    _save(other, "r18", models)
    assert sorted(os.listdir(models)) == ["manifest.json", "r18"]  # no staging folder, no old copy left
    np.testing.assert_array_equal(load_saved("r18", models)(X), other(X))
    assert (victim / "precious.txt").read_text() == "do not delete"


def test_failed_replacement_puts_the_old_checkpoint_back(layout, model, monkeypatch):
    tmp, models, _ = layout
    _save(model, "r18", models)
    before = snapshot(tmp)

    def fail(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_write_manifest", fail)
    with pytest.raises(OSError, match="No space"):
        _save(convert_state_dict("resnet18", random_state_dict("resnet18", seed=9)), "r18", models)
    assert snapshot(tmp) == before and sorted(os.listdir(models)) == ["manifest.json", "r18"]
    np.testing.assert_array_equal(load_saved("r18", models)(X), model(X))


@pytest.mark.parametrize("field,value,match", [
    ("path", "../../etc", "'path' '../../etc' must be a plain name: it contains a path separator"),
    ("path", "/etc", "'path' '/etc' must be a plain name, not an absolute path"),
    ("path", "..", "'path' '..' must be a plain name, not a reference"),
    ("files", {"../../outside.txt": {"sha256": "0" * 64, "bytes": 1}}, "file '../../outside.txt': part '..'"),
    ("files", {"/etc/passwd": {"sha256": "0" * 64, "bytes": 1}}, "relative path inside the checkpoint"),
])
def test_tampered_manifest_paths_are_refused(field, value, match, layout, model):
    tmp, models, _ = layout
    entry = _save(model, "r18", models)
    manifest = models / "manifest.json"
    manifest.write_text(json.dumps({"format": 1, "models": {"r18": {**entry, field: value}}}))
    before = snapshot(tmp)
    for call in (lambda: load_saved("r18", models), lambda: load_model("r18", models_dir=models),
                 lambda: _save(model, "r18", models)):
        with pytest.raises(InvalidNameError, match=match) as err:
            call()
        assert f"manifest {str(manifest)!r}, entry 'r18'" in _one_line(err.value)
    assert snapshot(tmp) == before


# 2. non-finite weights -----------------------------------------------------------------------------------------------

def _with_nan(sd):
    bad = dict(sd)
    bad["fc.weight"] = sd["fc.weight"].copy()
    bad["fc.weight"][3, 7] = np.nan
    return bad


def test_nan_in_fc_weight_is_refused_at_conversion(sd, tmp_path):
    with pytest.raises(NonFiniteParametersError, match=r"1 non-finite value.*'fc.weight' \(1 NaN\)") as err:
        convert_state_dict("resnet18", _with_nan(sd))
    _one_line(err.value)
    inf = dict(sd, **{"bn1.running_var": np.full(64, np.inf, np.float32)})
    with pytest.raises(NonFiniteParametersError, match=r"'bn1.running_var' \(64 inf\)"):
        load_model("resnet18", weights=inf)  # in-memory weights
    path = tmp_path / "nan.npz"
    np.savez(path, **_with_nan(sd))
    before = snapshot(tmp_path)
    with pytest.raises(NonFiniteParametersError, match=f"weights from {path}"):
        load_model("resnet18", weights=path, models_dir=tmp_path / "models")
    assert snapshot(tmp_path) == before and not (tmp_path / "models").exists()


def test_nan_in_a_stored_checkpoint_is_refused_at_loading(layout, sd, monkeypatch):
    tmp, models, _ = layout
    bad = convert_state_dict("resnet18", sd)
    kernel = bad.params["fc"]["kernel"]
    kernel[...] = kernel[...].at[0, 0].set(np.nan)
    with pytest.raises(NonFiniteParametersError, match=r"'fc.kernel' \(1 NaN\)"):  # the store refuses to write it
        _save(bad, "r18", models)
    monkeypatch.setattr(store, "check_finite", lambda *a: None)  # a checkpoint written by something else
    _save(bad, "r18", models)
    monkeypatch.undo()
    with pytest.raises(NonFiniteParametersError, match=r"checkpoint 'r18' .*'fc.kernel' \(1 NaN\)"):
        load_saved("r18", models)


def test_predict_refuses_nan_weights_in_one_line(sd, tmp_path, monkeypatch, capsys):
    path = tmp_path / "nan.npz"
    np.savez(path, **_with_nan(sd))
    img = write_images(str(tmp_path / "img"), names=("x",), size=32)[0]
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "models"))
    before = snapshot(tmp_path)
    assert main(["predict", img, "--model", "resnet18", "--weights", str(path)]) == 2
    assert "'fc.weight' (1 NaN)" in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


# 3. weights files that are not there ---------------------------------------------------------------------------------

def test_missing_weights_file_is_a_typed_error_naming_it(tmp_path):
    os.symlink(tmp_path / "gone.npz", tmp_path / "dangling.npz")
    os.symlink(tmp_path / "loop.npz", tmp_path / "loop.npz")
    cases = {"/nope.pth": "'/nope.pth' not found", str(tmp_path): "not a regular file",
             str(tmp_path / "dangling.npz"): "broken symbolic link", str(tmp_path / "loop.npz"): "link loop"}
    before = snapshot(tmp_path)
    for path, match in cases.items():
        for call in (lambda: load_model("resnet18", weights=path, models_dir=tmp_path / "m"),
                     lambda: read_state_dict(path)):
            with pytest.raises(CheckpointError, match=match) as err:
                call()
            assert isinstance(err.value, FileNotFoundError) and _one_line(err.value)
    assert snapshot(tmp_path) == before and not (tmp_path / "m").exists()


# 4. .npz files that are not state dicts ------------------------------------------------------------------------------

def _npz_cases(d):
    (d / "empty.npz").write_bytes(b"")
    (d / "pickle.npz").write_bytes(pickle.dumps({"fc.weight": [1.0]}))
    (d / "random.npz").write_bytes(np.random.default_rng(0).bytes(256))
    np.save(d / "single.npy", np.zeros(3))
    os.replace(d / "single.npy", d / "single.npz")
    np.savez(d / "object.npz", fc=np.array([{"x": 1}], dtype=object))
    np.savez(d / "full.npz", a=np.zeros(1000))
    (d / "truncated.npz").write_bytes((d / "full.npz").read_bytes()[:300])
    np.savez(d / "strings.npz", a=np.array(["x"]))
    np.savez(d / "nothing.npz")
    return {"empty": "is empty", "pickle": "is a Python pickle", "random": "is not an .npz archive",
            "single": "single .npy array", "object": "holds 'fc' as an object array", "truncated": "truncated",
            "strings": "holds 'a' as <U1, not a numeric array", "nothing": "holds no arrays"}


def test_broken_npz_files_name_the_file_and_never_suggest_pickle(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    cases = _npz_cases(d)
    before = snapshot(tmp_path)
    for stem, match in cases.items():
        path = str(d / f"{stem}.npz")
        for call in (lambda: read_state_dict(path),
                     lambda: load_model("resnet18", weights=path, models_dir=tmp_path / "m")):
            with pytest.raises(CorruptFileError, match=match) as err:
                call()
            msg = _one_line(err.value)
            assert repr(path) in msg and "allow_pickle" not in msg and "pickle.load" not in msg, msg
    assert snapshot(tmp_path) == before and not (tmp_path / "m").exists()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 2000), flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 7)), max_size=6),
       compressed=st.booleans())
def test_npz_fuzz_is_a_state_dict_or_a_corrupt_file_error(tmp_path, cut, flips, compressed):
    """Truncations and bit flips of a small .npz (stored or deflated): every outcome is numeric arrays or a
    CorruptFileError (zlib errors, unsupported zip versions or encryption flags included)."""
    path = tmp_path / "fuzz.npz"
    (np.savez_compressed if compressed else np.savez)(
        path, **{"fc.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "fc.bias": np.ones(3, np.int64)})
    data = bytearray(path.read_bytes())
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    path.write_bytes(bytes(data[:cut]) if cut < len(data) else bytes(data))
    try:
        sd = read_state_dict(path)
    except CorruptFileError as exc:
        assert str(path) in _one_line(exc) and "allow_pickle" not in str(exc)
    else:
        assert sd and all(a.dtype.kind in "biuf" for a in sd.values())


def test_npz_reading_never_allows_pickle(tmp_path, monkeypatch, sd):
    seen = []
    real = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: seen.append(k) or real(*a, **k))
    np.savez(tmp_path / "w.npz", **sd)
    assert read_state_dict(tmp_path / "w.npz").keys() == sd.keys()
    assert seen == [{"allow_pickle": False}]


def test_pth_without_torch_stays_a_missing_dependency(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    path.write_bytes(b"PK\x03\x04 not really")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match=f"{str(path)!r} needs torch"):
        load_model("resnet18", weights=path, models_dir=tmp_path / "m")
    assert not (tmp_path / "m").exists()


# 5. manifests with missing or mistyped fields ------------------------------------------------------------------------

MANIFEST_DAMAGE = {
    "no files table": (lambda e: {k: v for k, v in e.items() if k != "files"}, "'files' must be a table"),
    "files is a list": (lambda e: {**e, "files": list(e["files"])}, "'files' must be a table"),
    "empty files": (lambda e: {**e, "files": {}}, "'files' is empty"),
    "size is a string": (lambda e: {**e, "files": {f: {**r, "bytes": str(r["bytes"])} for f, r in e["files"].items()}},
                         "must record 'sha256'"),
    "sha is a number": (lambda e: {**e, "files": {f: {**r, "sha256": 7} for f, r in e["files"].items()}},
                        "must record 'sha256'"),
    "unknown arch": (lambda e: {**e, "arch": "resnet7"}, "unknown architecture 'resnet7'"),
    "classes a string": (lambda e: {**e, "num_classes": "1000"}, "'num_classes' must be a positive integer"),
    "entry a list": (lambda e: [1, 2], "expected a table, got list"),
}


@pytest.mark.parametrize("case", list(MANIFEST_DAMAGE))
def test_damaged_manifest_entry_names_file_and_entry(case, layout, model):
    tmp, models, _ = layout
    entry = _save(model, "r18", models)
    damage, match = MANIFEST_DAMAGE[case]
    manifest = models / "manifest.json"
    manifest.write_text(json.dumps({"format": 1, "models": {"r18": damage(entry)}}))
    before = snapshot(tmp)
    for call in (lambda: load_saved("r18", models), lambda: load_model("r18", models_dir=models)):
        with pytest.raises(CorruptManifestError, match=match) as err:
            call()
        assert isinstance(err.value, CheckpointError) and isinstance(err.value, CorruptFileError)
        assert f"manifest {str(manifest)!r}, entry 'r18'" in _one_line(err.value)
    assert snapshot(tmp) == before


@pytest.mark.parametrize("text", ["{not json", '{"format": 1, "mod', "[]", '{"models": []}', "", None])
def test_garbage_manifest_names_the_file(text, layout):
    tmp, models, _ = layout
    if text is None:
        os.mkfifo(models / "manifest.json")  # reading it would block forever
    else:
        (models / "manifest.json").write_text(text)
    with pytest.raises(CheckpointError, match=f"corrupt model manifest {str(models / 'manifest.json')!r}"):
        load_model("pets", models_dir=models)


# 6. the embedded model behind JAXCAM_MODELS_DIR ----------------------------------------------------------------------

def test_embedded_model_is_found_when_the_models_dir_points_elsewhere(tmp_path, monkeypatch, model):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    m = load_model()
    assert m.name == "efficientnet_lite0" and m.source.startswith("efficientnet_lite0: PyPI")
    assert os.listdir(tmp_path) == []
    _save(model, "mine", tmp_path)  # a store of one's own still finds both
    assert load_model("efficientnet_lite0").source == m.source and load_model("mine").name == "resnet18"


# 7. the CLI speaks in flags ------------------------------------------------------------------------------------------

NO_WEIGHTS = ("resnet18 has no bundled weights: pass --weights FILE (a torchvision .pth/.npz, converted once) or "
              "--random-weights")


@pytest.mark.parametrize("argv,message", [
    (["predict", "{img}", "--model", "resnet18"], NO_WEIGHTS),
    (["explain", "{img}", "--model", "resnet18", "--out", "{tmp}/out"], NO_WEIGHTS),
    (["predict", "{img}", "--model", "resnet18", "--weights", "{tmp}/w.npz", "--random-weights"],
     "--weights and --random-weights exclude each other"),
    (["predict", "{img}", "--model", "resnet5", "--random-weights"],
     "--random-weights applies to an architecture --model"),
    (["predict", "{img}", "--model", "../victim"], "model name '../victim' must be a plain name"),
    (["predict", "{img}", "-k", "0", "--random-weights", "--model", "resnet18"], "-k must be at least 1"),
    (["predict", "{img}", "-k", "1001", "--random-weights", "--model", "resnet18"], "-k 1001 is more than"),
])
def test_cli_model_arguments_are_one_line(argv, message, tmp_path, monkeypatch, capsys):
    img = write_images(str(tmp_path / "img"), names=("x",), size=32)[0]
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "models"))
    before = snapshot(tmp_path)
    assert main([a.format(img=img, tmp=tmp_path) for a in argv]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert message in line and "weights=" not in line
    assert snapshot(tmp_path) == before  # explain removes the output folder it created when the command fails


def test_api_keeps_its_own_wording():
    with pytest.raises(CheckpointError, match=r"weights='path/to/torchvision.pth'.*weights=None"):
        load_model("resnet18")


def test_convert_replaces_a_damaged_cached_conversion(tmp_path, sd, capsys):
    weights = tmp_path / "w.npz"
    np.savez(weights, **sd)
    models = tmp_path / "m"
    argv = ["convert", "resnet18", str(weights), "--name", "pets", "--models-dir", str(models)]
    assert main(argv) == 0
    entry = json.loads((models / "manifest.json").read_text())["models"]["pets"]
    biggest = max(entry["files"], key=lambda f: entry["files"][f]["bytes"])
    (models / "pets" / biggest).write_bytes(b"damaged")
    capsys.readouterr()
    assert main(argv) == 0 and "convert: converted resnet18" in capsys.readouterr().out
    np.testing.assert_array_equal(load_model("pets", models_dir=models)(X), convert_state_dict("resnet18", sd)(X))
    assert sorted(os.listdir(models)) == ["manifest.json", "pets"]


# 8. jaxcam convert --name through the same validator -----------------------------------------------------------------

@pytest.mark.parametrize("name,match", [("../x", "path separator"), ("a/b", "path separator"), ("", "is empty"),
                                        (".hidden", "starting with '.'")])
def test_convert_name_goes_through_the_store_validator(name, match, tmp_path, sd, capsys):
    weights = tmp_path / "w.npz"
    np.savez(weights, **sd)
    before = snapshot(tmp_path)
    assert main(["convert", "resnet18", str(weights), "--name", name, "--models-dir", str(tmp_path / "m")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--name {name!r}" in line and match in line
    assert snapshot(tmp_path) == before and not (tmp_path / "m").exists()
