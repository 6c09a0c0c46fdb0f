"""Model-parameter randomisation (Adebayo et al. 2018): randomise(), cascading and independent checks."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcam import _explain
from jaxcam.errors import MapError, UnknownLayerError, UnknownNameError
from jaxcam.metrics.similarity import hog_pearson
from tests.toy import toy_input, toy_model

sanity = importlib.import_module("jaxcam.metrics.sanity")

SMALL_SIMS = ("spearman", "ssim", functools.partial(hog_pearson, pixels_per_cell=(8, 8)))


def _leaves(model):
    return sanity._leaf_paths(model.params)


def _by_path(model):
    leaves, _, paths = _leaves(model)
    return dict(zip(paths, leaves))


def image_map(model, x, classes):
    """A 'saliency map' that ignores the model: the image's mean intensity, min-max normalised (an edge-detector
    style baseline, which the paper shows fails the randomisation check)."""
    m = x.mean(axis=-1)
    lo, hi = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
    return (m - lo) / (hi - lo)


# -- randomise ------------------------------------------------------------------------------------------------------

def test_stage_parameters_follow_what_each_stage_reads():
    # the toy's "fc" stage is a module stored as ``head`` (no naming convention would find it)
    assert sanity.stage_parameters(toy_model()) == {"conv": ("conv.bias", "conv.kernel"),
                                                    "fc": ("head.fc.bias", "head.fc.kernel")}


def test_randomise_changes_only_the_named_stages_and_is_deterministic():
    model = toy_model()
    before = _by_path(model)
    r1 = sanity.randomise(model, "fc", key=1)
    after = _by_path(r1)
    assert r1.graphdef is model.graphdef and r1.stage_names == model.stage_names
    assert after["conv.kernel"] is before["conv.kernel"] and after["conv.bias"] is before["conv.bias"]
    assert not np.allclose(after["head.fc.kernel"], before["head.fc.kernel"])
    np.testing.assert_array_equal(after["head.fc.bias"], 0.0)  # flax's bias_init
    again = _by_path(sanity.randomise(model, ["fc"], key=1))
    other = _by_path(sanity.randomise(model, "fc", key=2))
    np.testing.assert_array_equal(again["head.fc.kernel"], after["head.fc.kernel"])
    assert not np.allclose(other["head.fc.kernel"], after["head.fc.kernel"])
    assert not np.allclose(r1(toy_input()), model(toy_input()))


def test_randomise_is_independent_of_the_order_of_calls():
    model = toy_model()
    key = jax.random.key(7)
    stepwise = _by_path(sanity.randomise(sanity.randomise(model, "fc", key), "conv", key))
    reverse = _by_path(sanity.randomise(sanity.randomise(model, "conv", key), "fc", key))
    together = _by_path(sanity.randomise(model, "all", key))
    by_index = _by_path(sanity.randomise(model, [3, 0], key))
    for path in together:
        np.testing.assert_array_equal(stepwise[path], together[path])
        np.testing.assert_array_equal(reverse[path], together[path])
        np.testing.assert_array_equal(by_index[path], together[path])


def test_initialisers_and_batchnorm(resnet18):
    r = _by_path(sanity.randomise(resnet18, ["layer4.1", "bn1", "fc"], key=0))
    k = np.asarray(r["layer4.1.conv2.kernel"])
    sd = np.sqrt(1.0 / (3 * 3 * 512))  # LeCun normal on fan_in = kh * kw * c_in, truncated at 2 sd
    assert k.std() == pytest.approx(sd, rel=0.02) and np.abs(k).max() <= 2 * sd / 0.87962566103423978 + 1e-7
    assert np.asarray(r["fc.kernel"]).std() == pytest.approx(np.sqrt(1 / 512), rel=0.05)
    for bn in ("bn1", "layer4.1.bn1", "layer4.1.bn2"):  # BatchNorm back to its initial state
        for leaf, value in (("mean", 0.0), ("var", 1.0), ("scale", 1.0), ("bias", 0.0)):
            np.testing.assert_array_equal(r[f"{bn}.{leaf}"], value)
    before = _by_path(resnet18)
    kept = _by_path(sanity.randomise(resnet18, "bn1", key=0, reset_batch_stats=False))
    assert kept["bn1.mean"] is before["bn1.mean"] and kept["bn1.var"] is before["bn1.var"]
    np.testing.assert_array_equal(kept["bn1.scale"], 1.0)
    torch_like = _by_path(sanity.randomise(resnet18, "fc", key=0, init="torch"))
    bound = 1 / np.sqrt(512)
    for leaf in ("fc.kernel", "fc.bias"):  # PyTorch reset_parameters: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        v = np.asarray(torch_like[leaf])
        assert np.abs(v).max() <= bound and v.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)


def test_randomise_errors_name_the_problem():
    model = toy_model()
    with pytest.raises(UnknownLayerError, match="'fc2'.*valid layers: 'conv', 'relu', 'avgpool', 'fc'"):
        sanity.randomise(model, "fc2")
    with pytest.raises(UnknownLayerError, match="'relu' has no parameters.*valid layers: 'conv', 'fc'"):
        sanity.randomise(model, ["fc", "relu"])
    with pytest.raises(UnknownNameError, match="'xavier'.*'flax', 'torch'"):
        sanity.randomise(model, "fc", init="xavier")


# -- the checks on the toy model --------------------------------------------------------------------------------------

def test_cascading_table_layout_and_step_zero():
    model, x = toy_model(), toy_input(n=3)
    table = sanity.cascading_randomisation(model, x, ["gradcam", "eigencam"], similarities=SMALL_SIMS,
                                           preprocessed=True, key=3)
    assert table.columns == list(sanity.COLUMNS)
    steps, sims, methods = 1 + 2, 3, 2  # the original plus one step per stage with parameters
    assert len(table) == 3 * steps * methods * sims
    assert sorted(set(table["similarity"])) == sorted(["spearman", "ssim", "hog_pearson(pixels_per_cell=(8, 8))"])
    zero = table.where(step=0)
    assert set(zero["stage"]) == {"none"} and set(zero["relative_to_layer"]) == {"none"}
    np.testing.assert_allclose(zero["value"], 1.0, atol=1e-6)
    first, second = table.where(step=1), table.where(step=2)
    assert set(first["stage"]) == {"fc"} and set(first["relative_to_layer"]) == {"above"}
    assert set(second["stage"]) == {"conv"} and set(second["relative_to_layer"]) == {"below"}
    assert set(table["layer"]) == {"relu"} and set(table["mode"]) == {"cascading"}
    assert set(table["image"]) == {0, 1, 2}
    preds = np.asarray(jnp.argmax(model(x), axis=-1))
    np.testing.assert_array_equal(table.where(step=2, method="gradcam", similarity="ssim")["target"], preds)
    # Eigen-CAM ignores the layers above its layer: randomising the classifier leaves it untouched
    np.testing.assert_allclose(table.where(step=1, method="eigencam")["value"], 1.0, atol=1e-6)
    assert table.where(step=1, method="gradcam", similarity="spearman")["value"].mean() < 0.9


def test_order_modes_and_shared_random_values():
    model, x = toy_model(), toy_input(n=2)
    kw = dict(similarities=("spearman",), preprocessed=True, key=5, targets=[1, 2])
    casc = sanity.cascading_randomisation(model, x, "gradcam", **kw)
    up = sanity.cascading_randomisation(model, x, "gradcam", order="bottom_up", **kw)
    ind = sanity.independent_randomisation(model, x, "gradcam", **kw)
    assert [casc.where(step=s)["stage"][0] for s in (1, 2)] == ["fc", "conv"]
    assert [up.where(step=s)["stage"][0] for s in (1, 2)] == ["conv", "fc"]
    assert set(ind["mode"]) == {"independent"} and set(ind["target"]) == {1, 2}
    # step 1 randomises only the classifier in both modes, with the same values: identical maps
    np.testing.assert_array_equal(casc.where(step=1)["value"], ind.where(step=1)["value"])
    # the last cascading step of one order randomises everything, as the other order's: same values
    np.testing.assert_allclose(casc.where(step=2)["value"], up.where(step=2)["value"], atol=1e-6)
    grouped = sanity.cascading_randomisation(model, x, "gradcam", stages=[["conv", "fc"]], **kw)
    assert grouped.where(step=1)["stage"].tolist() == ["conv+fc"] * 2
    assert grouped.where(step=1)["relative_to_layer"].tolist() == ["spanning"] * 2  # conv below relu, fc above
    np.testing.assert_allclose(grouped.where(step=1)["value"], casc.where(step=2)["value"], atol=1e-6)


def test_no_recompilation_across_steps_or_keys():
    model, x = toy_model(seed=4), toy_input(n=2, seed=4)
    kw = dict(similarities=("spearman",), preprocessed=True, layer="conv")
    before = _explain.TRACE_COUNT["explain"]
    sanity.cascading_randomisation(model, x, ["gradcam", "layercam"], key=0, **kw)
    assert _explain.TRACE_COUNT["explain"] - before <= 1  # the original and every randomised step share a program
    before = _explain.TRACE_COUNT["explain"]
    sanity.independent_randomisation(model, x, ["gradcam", "layercam"], key=1, **kw)
    assert _explain.TRACE_COUNT["explain"] == before


def test_check_errors_are_clear():
    model, x = toy_model(), toy_input(n=1)
    with pytest.raises(UnknownNameError, match="'spearmen' for similarity"):
        sanity.cascading_randomisation(model, x, similarities=("spearmen",), preprocessed=True)
    with pytest.raises(UnknownNameError, match="'sideways' for order"):
        sanity.cascading_randomisation(model, x, order="sideways", preprocessed=True)
    with pytest.raises(UnknownLayerError, match="'conv9'"):
        sanity.independent_randomisation(model, x, stages=["conv9"], preprocessed=True)
    with pytest.raises(UnknownLayerError, match="no parameters"):
        sanity.independent_randomisation(model, x, stages=["avgpool"], preprocessed=True)
    with pytest.raises(UnknownNameError, match="'gradkam'"):
        sanity.cascading_randomisation(model, x, "gradkam", similarities=("spearman",), preprocessed=True)
    with pytest.raises(MapError, match="pixels_per_cell"):  # 32 px maps are too small for 16 px HOG cells
        sanity.cascading_randomisation(model, x, preprocessed=True)


# -- a real architecture: a passing and a failing explainer -----------------------------------------------------------

def test_gradcam_passes_and_a_model_independent_map_fails(resnet18):
    x = jax.random.normal(jax.random.key(0), (2, 96, 96, 3))
    table = sanity.cascading_randomisation(resnet18, x, ["gradcam", "eigencam", image_map], layer="layer3",
                                           similarities=("spearman",), preprocessed=True, key=0)
    last = max(table["step"])
    assert last == len(sanity.stage_parameters(resnet18)) == 11
    # the image-derived map ignores the model: identical at every step (it fails the sanity check)
    np.testing.assert_allclose(table.where(method="image_map")["value"], 1.0, atol=1e-6)
    # Grad-CAM depends on the parameters: a fully random network gives unrelated maps
    assert table.where(method="gradcam", step=last)["value"].mean() < 0.5
    above = table.where(relative_to_layer="above")
    assert set(above["stage"]) == {"fc", "layer4.1", "layer4.0"}
    assert above.where(method="gradcam")["value"].mean() < 0.9  # new gradients change Grad-CAM
    np.testing.assert_allclose(above.where(method="eigencam")["value"], 1.0, atol=1e-5)  # but not Eigen-CAM
    below = table.where(method="eigencam", relative_to_layer="below")
    assert below["value"].min() < 0.99  # new activations change Eigen-CAM too (if less than Grad-CAM)
