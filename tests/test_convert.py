"""Strict weight conversion: every missing, unexpected or mis-shaped key is reported; layouts round-trip."""

import sys

import numpy as np
import pytest

import jaxcam
from jaxcam.models import convert_state_dict, expected_source_shapes, model_state_dict, random_state_dict
from jaxcam.models.convert import read_state_dict


@pytest.fixture(scope="module")
def sd18():
    return random_state_dict("resnet18", seed=1)


def test_expected_keys_follow_torchvision_names():
    shapes = expected_source_shapes("resnet50")
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer4.2.bn3.running_var"] == (2048,)
    assert shapes["fc.weight"] == (1000, 2048)
    assert len(shapes) == 267  # torchvision's resnet50 state dict (320 keys) less its 53 num_batches_tracked
    vgg = expected_source_shapes("vgg16_bn")
    assert vgg["classifier.0.weight"] == (4096, 25088) and vgg["features.1.running_mean"] == (64,)
    assert "_blocks.0._expand_conv.weight" not in expected_source_shapes("efficientnet_lite0")


def test_round_trip_state_dict(sd18):
    model = convert_state_dict("resnet18", sd18)
    back = model_state_dict(model)
    assert back.keys() == sd18.keys()
    for k in sd18:
        np.testing.assert_array_equal(back[k], sd18[k], err_msg=k)


def test_vgg_flatten_permutation_round_trips():
    sd = random_state_dict("vgg11", seed=2)
    back = model_state_dict(convert_state_dict("vgg11", sd))
    np.testing.assert_array_equal(back["classifier.0.weight"], sd["classifier.0.weight"])


def test_missing_unexpected_and_misshaped_keys_are_all_listed(sd18):
    bad = dict(sd18)
    del bad["layer2.0.bn1.running_var"]
    del bad["fc.bias"]
    bad["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    bad["layer1.0.conv1.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(jaxcam.StateDictError) as err:
        convert_state_dict("resnet18", bad)
    e = err.value
    assert e.missing == ("fc.bias", "layer2.0.bn1.running_var")
    assert e.unexpected == ("layer5.0.conv1.weight",)
    assert e.mismatched == (("layer1.0.conv1.weight", (64, 64, 3, 3), (64, 64, 1, 1)),)
    msg = str(e)
    for key in ("fc.bias", "layer2.0.bn1.running_var", "layer5.0.conv1.weight", "layer1.0.conv1.weight"):
        assert key in msg
    assert isinstance(e, ValueError)


def test_wrong_architecture_is_rejected(sd18):
    with pytest.raises(jaxcam.StateDictError, match="resnet34"):
        convert_state_dict("resnet34", sd18)


def test_num_batches_tracked_dropped_and_custom_head(sd18):
    sd = dict(sd18)
    sd["bn1.num_batches_tracked"] = np.array(7)
    sd["fc.weight"] = np.random.default_rng(0).standard_normal((10, 512)).astype(np.float32)
    sd["fc.bias"] = np.zeros(10, np.float32)
    model = convert_state_dict("resnet18", sd)
    assert model.num_classes == 10
    x = np.zeros((1, 32, 32, 3), np.float32)
    assert model(x).shape == (1, 10)
    assert model.predict(x, k=3, preprocessed=True).names[0][0].startswith("class ")


def test_wrappers_and_dataparallel_prefix(sd18, tmp_path):
    wrapped = {"state_dict": {f"module.{k}": v for k, v in sd18.items()}}
    assert read_state_dict(wrapped).keys() == sd18.keys()
    path = tmp_path / "w.npz"
    np.savez(path, **sd18)
    assert read_state_dict(path).keys() == sd18.keys()


def test_pth_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    path.write_bytes(b"not really")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(jaxcam.MissingDependencyError, match=r"jax-cam\[torch\]"):
        read_state_dict(path)


def test_corrupt_pth_is_a_checkpoint_error(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "w.pth"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(jaxcam.CheckpointError, match="cannot read weights file"):
        read_state_dict(path)


def test_bad_weight_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict(tmp_path / "nope.pth")
    with pytest.raises(TypeError, match="weights must be"):
        read_state_dict(42)


def test_unknown_architecture_lists_names():
    with pytest.raises(jaxcam.UnknownArchitectureError, match="resnet51") as err:
        jaxcam.load_model("resnet51", weights=None)
    assert "'resnet50'" in str(err.value) and "'efficientnet_lite0'" in str(err.value)


def test_random_weights_are_deterministic():
    a = jaxcam.load_model("resnet18", weights=None, seed=4)
    b = jaxcam.load_model("resnet18", weights=None, seed=4)
    c = jaxcam.load_model("resnet18", weights=None, seed=5)
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(a(x), b(x))
    assert not np.allclose(a(x), c(x))


def test_torchvision_model_without_bundled_weights_says_how():
    with pytest.raises(jaxcam.CheckpointError, match="weights=None"):
        jaxcam.load_model("resnet50")
