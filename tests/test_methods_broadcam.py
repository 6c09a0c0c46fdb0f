"""BroadCAM: the broad learning system's closed forms (ridge solutions known by hand, the fold-back of the
enhancement nodes, the large-ridge limit), fit_broadcam on the toy model, and the method through explain."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import methods
from jaxcam._explain import TRACE_COUNT
from jaxcam.errors import ClassIndexError, InvalidArgumentError, UnknownLayerError
from jaxcam.methods.broadcam import (BroadCAMWeights, broadcam, enhancement_nodes, fit_bls, fit_broadcam,
                                     normalised_ridge, pooled_features)
from jaxcam.postprocess import postprocess
from jaxcam.tapped import capture

from .toy import toy_input, toy_model


def test_orthogonal_features_have_the_ridge_solution_by_hand():
    """Centred, orthogonal features decouple the ridge: w_j = (z_j . y_c) / (||z_j||^2 (1 + ridge)) in z units.
    f1 = 2 + (1, -1, 1, -1) (sigma 1), f2 = 5 + 3 (1, 1, -1, -1) (sigma 3); y = (1, 0, 1, 0)."""
    f = np.array([[3.0, 8.0], [1.0, 8.0], [3.0, 2.0], [1.0, 2.0]])
    y = np.array([[1.0], [0.0], [1.0], [0.0]])
    fit = fit_bls(f, y, ridge=1.0, group=10)  # 10 > 2 features: no enhancement nodes
    assert fit.nodes.shape == (2, 0)
    np.testing.assert_allclose(fit.coef, [[2 / (4 * 2)], [0.0]], atol=1e-12)  # z1 . yc = 2, ||z1||^2 = 4
    np.testing.assert_allclose(fit.intercept, [0.5 - 2.0 * 0.25], atol=1e-12)  # mean(y) - mean(f) . coef
    np.testing.assert_allclose(f @ fit.coef + fit.intercept, [[0.75], [0.25], [0.75], [0.25]], atol=1e-12)


def test_normalised_ridge_equals_an_augmented_least_squares():
    """The per-column penalty ridge * ||xc_j||^2 is a least-squares problem with sqrt(ridge) * ||xc_j|| rows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)) * np.array([1, 10, 0.1, 3, 1]) + 4
    y = np.eye(3)[rng.integers(0, 3, 12)]
    coef, intercept = normalised_ridge(x, y, 0.7)
    xc, yc = x - x.mean(0), y - y.mean(0)
    aug_x = np.vstack([xc, np.diag(np.sqrt(0.7 * (xc ** 2).sum(0)))])
    aug_y = np.vstack([yc, np.zeros((5, 3))])
    expected = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]
    np.testing.assert_allclose(coef, expected, atol=1e-10)
    np.testing.assert_allclose(intercept, y.mean(0) - x.mean(0) @ coef, atol=1e-12)
    const = np.concatenate([x, np.full((12, 1), 3.0)], axis=1)  # a constant column gets weight 0
    np.testing.assert_allclose(normalised_ridge(const, y, 0.7)[0], np.vstack([coef, np.zeros((1, 3))]), atol=1e-10)


def test_large_ridge_tends_to_each_features_correlation_with_the_labels():
    rng = np.random.default_rng(1)
    f = rng.uniform(size=(30, 6))
    y = np.eye(2)[(f[:, 0] > 0.5).astype(int)]
    r = 1e7
    fit = fit_bls(f, y, ridge=r, group=100)
    fc, yc = f - f.mean(0), y - y.mean(0)
    slopes = fc.T @ yc / (fc ** 2).sum(0)[:, None]  # univariate regression of each class on each feature
    np.testing.assert_allclose(fit.coef * r, slopes, rtol=1e-5)


def test_enhancement_nodes_group_the_top_weighted_features():
    v = np.array([[3.0, -1.0], [1.0, 2.0], [2.0, 5.0], [-4.0, 4.0], [0.5, 1.0]])
    nodes = enhancement_nodes(v, group=2)  # min positive count 4 -> 2 nodes per class
    expected = np.zeros((5, 4))
    expected[[0, 2], 0] = [3.0, 2.0]
    expected[[1, 4], 1] = [1.0, 0.5]
    expected[[2, 3], 2] = [5.0, 4.0]
    expected[[1, 4], 3] = [2.0, 1.0]
    np.testing.assert_array_equal(nodes, expected)
    assert enhancement_nodes(v, group=5).shape == (5, 0)


def test_the_folded_weights_are_the_bls_output():
    """With enhancement nodes, f @ coef + intercept equals the BLS's own output from [Z, Z Xi] and its output
    ridge, and the nodes change the weights (so the fold-back is tested, not skipped)."""
    rng = np.random.default_rng(2)
    f = np.abs(rng.normal(size=(40, 8))) * np.arange(1, 9)
    y = np.eye(3)[rng.integers(0, 3, 40)]
    fit = fit_bls(f, y, ridge=0.5, group=1)
    assert fit.nodes.shape[1] > 0
    z = (f - fit.mean) / fit.scale
    a = np.concatenate([z, z @ fit.nodes], axis=1)
    out, b = normalised_ridge(a, y, 0.5)
    np.testing.assert_allclose(out, fit.output, atol=1e-10)
    np.testing.assert_allclose(f @ fit.coef + fit.intercept, a @ out + b, atol=1e-9)
    plain = fit_bls(f, y, ridge=0.5, group=100)
    assert plain.nodes.shape[1] == 0 and np.abs(plain.coef - fit.coef).max() > 1e-3


@pytest.fixture(scope="module")
def toy():
    return toy_model()


@pytest.fixture(scope="module")
def fitting():
    x = toy_input(n=10, seed=1)
    return x, np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])


@pytest.fixture(scope="module")
def weights(toy, fitting):
    x, labels = fitting
    return fit_broadcam(toy, x, labels, layer="relu", preprocessed=True, ridge=1.0, group=2)


def test_fit_broadcam_pools_relu_features_and_fits_the_bls(toy, fitting, weights):
    x, labels = fitting
    acts = np.asarray(capture(toy.tapped.apply, toy.params, x, ("relu",)).acts["relu"])
    feats = np.maximum(acts, 0).mean(axis=(1, 2))
    np.testing.assert_allclose(pooled_features(toy, x, "relu", batch_size=4)[0], feats, rtol=1e-5, atol=1e-7)
    pooled = pooled_features(toy, x, "relu")[0]  # the fit's own features (float32 rounding apart, as above)
    expected = fit_bls(pooled, np.eye(5)[labels], 1.0, 2).coef
    assert weights.site == "relu" and weights.shape == (6, 5)
    np.testing.assert_allclose(weights.array, expected, rtol=1e-6, atol=1e-6)
    again = fit_broadcam(toy, x, np.eye(5)[labels], layer="relu", preprocessed=True, ridge=1.0, group=2)
    assert again == weights and hash(again) == hash(weights)  # content equality: one compiled program
    other = fit_broadcam(toy, x, labels, layer="relu", preprocessed=True, ridge=2.0, group=2)
    assert other != weights
    predicted = fit_broadcam(toy, x, None, layer="relu", preprocessed=True, ridge=1.0, group=2)
    logits = np.asarray(toy.tapped.forward(toy.params, x))
    np.testing.assert_allclose(predicted.array, fit_bls(pooled, np.eye(5)[logits.argmax(-1)], 1.0, 2).coef,
                               rtol=1e-6, atol=1e-6)
    assert "relu" in repr(weights) and "sha256" in repr(weights)


SPEC = methods.MethodSpec("broadcam", broadcam, "activation", "weighted", False,
                          "1F (after fit_broadcam: 1F per fitting image)", "Lin et al., arXiv 2309.03509",
                          "closed-form tests (ridge solutions, BLS fold-back)", options=("weights",))


@pytest.fixture
def registered(monkeypatch):
    """BroadCAM as the registry line the driver will carry (see the report: "all" must skip a method that needs
    fitted weights, so the line waits for that driver change)."""
    monkeypatch.setitem(methods.METHODS, "broadcam", dataclasses.replace(SPEC))


def test_broadcam_through_explain(toy, weights, registered):
    x = toy_input()
    opts = {"broadcam": {"weights": weights}}
    maps, _, cls = jaxcam.explain(toy, x, "broadcam", layer="relu", preprocessed=True, method_options=opts,
                                  return_logits=True)
    maps = np.asarray(maps)
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    acts = capture(toy.tapped.apply, toy.params, x, ("relu",)).acts["relu"]
    for i in range(2):
        raw = jnp.sum(jnp.maximum(acts[i], 0) * jnp.asarray(weights.array[None, None, :, int(cls[i])]), axis=-1)
        np.testing.assert_allclose(maps[i], np.asarray(postprocess([raw], (32, 32))), atol=1e-5)
    before = TRACE_COUNT["explain"]
    same = jaxcam.explain(toy, x, "broadcam", layer="relu", preprocessed=True,
                          method_options={"broadcam": {"weights": dataclasses.replace(weights)}})
    assert TRACE_COUNT["explain"] == before  # equal weights, compared by content: no recompilation
    np.testing.assert_array_equal(np.asarray(same), maps)
    one = np.asarray(jaxcam.explain(toy, x[1:], "broadcam", layer="relu", preprocessed=True, method_options=opts))
    np.testing.assert_allclose(one[0], maps[1], atol=2e-5)  # a map does not depend on the rest of the batch
    others = [(int(c) + 1) % 5 for c in cls]
    other = np.asarray(jaxcam.explain(toy, x, "broadcam", targets=others, layer="relu", preprocessed=True,
                                      method_options=opts))
    assert np.abs(other - maps).max() > 1e-3  # class-specific


def test_broadcam_errors(toy, fitting, weights, registered):
    x = toy_input()
    with pytest.raises(InvalidArgumentError, match="fit_broadcam"):
        jaxcam.explain(toy, x, "broadcam", layer="relu", preprocessed=True)
    with pytest.raises(InvalidArgumentError, match="BroadCAMWeights"):
        jaxcam.explain(toy, x, "broadcam", layer="relu", preprocessed=True,
                       method_options={"broadcam": {"weights": (1.0, 2.0)}})
    elsewhere = BroadCAMWeights.from_array("conv", np.ones((6, 5)))
    with pytest.raises(InvalidArgumentError, match="fitted at layer 'conv'; explain with layer='conv'"):
        jaxcam.explain(toy, x, "broadcam", layer="relu", preprocessed=True,
                       method_options={"broadcam": {"weights": elsewhere}})
    narrow = BroadCAMWeights.from_array("relu", np.ones((3, 5)))
    with pytest.raises(InvalidArgumentError, match="3 channels"):
        jaxcam.explain(toy, x, "broadcam", layer="relu", preprocessed=True,
                       method_options={"broadcam": {"weights": narrow}})
    xs, labels = fitting
    with pytest.raises(ClassIndexError, match="0, 4"):
        fit_broadcam(toy, xs, labels + 1, layer="relu", preprocessed=True)
    with pytest.raises(InvalidArgumentError, match="one-hot"):
        fit_broadcam(toy, xs, labels[:3], layer="relu", preprocessed=True)
    with pytest.raises(InvalidArgumentError, match="ridge"):
        fit_broadcam(toy, xs, labels, layer="relu", preprocessed=True, ridge=0.0)
    with pytest.raises(InvalidArgumentError, match="group"):
        fit_broadcam(toy, xs, labels, layer="relu", preprocessed=True, group=0)
    with pytest.raises(InvalidArgumentError, match="at least 2"):
        fit_broadcam(toy, xs[:1], labels[:1], layer="relu", preprocessed=True)
    with pytest.raises(UnknownLayerError, match="relu"):
        fit_broadcam(toy, xs, labels, layer="relus", preprocessed=True)
    with pytest.raises(InvalidArgumentError, match="finite"):
        BroadCAMWeights.from_array("relu", np.full((6, 5), np.nan))
