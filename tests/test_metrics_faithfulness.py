"""Faithfulness metrics on closed-form cases: deletion/insertion, confidence changes, Finer-CAM's drop,
faithfulness correlation, and the compiled-program structure (one argsort, no per-step retracing)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import metrics as M
from jaxcam.metrics import deletion as D

from .jaxprs import count
from .toy import linear_model, toy_input, toy_model


def _probs(model, x, cls):
    return np.asarray(jax.nn.softmax(model(x), -1))[np.arange(len(cls)), cls]


def test_pixel_counts_follow_torchcams_rule():
    assert D.pixel_counts(16, 4) == (0, 4, 8, 12, 16)
    assert D.pixel_counts(10, 3) == (0, 4, 8, 10)  # ceil(10 / 3) = 4, last step shorter
    assert D.pixel_counts(5, 20) == (0, 1, 2, 3, 4, 5)


def test_deletion_insertion_curves_by_hand():
    model, x = toy_model(), toy_input(2, 32)
    cams = jnp.asarray(np.random.default_rng(3).uniform(size=(2, 32, 32)).astype(np.float32))
    c = M.deletion_insertion(model, x, cams, steps=4, insertion_substrate="zeros", batch_size=3)
    cls = np.asarray(jnp.argmax(model(x), -1))
    order = np.argsort(-np.asarray(cams).reshape(2, -1), axis=1, kind="stable")
    fr = np.asarray(c.fractions)
    np.testing.assert_allclose(fr, [0, 0.25, 0.5, 0.75, 1.0])
    for i in range(2):
        for j, k in enumerate([0, 256, 512, 768, 1024]):
            top = np.zeros(1024, bool)
            top[order[i, :k]] = True
            top = top.reshape(32, 32, 1)
            deleted = np.where(top, 0.0, np.asarray(x[i]))[None]
            inserted = np.where(top, np.asarray(x[i]), 0.0)[None]
            np.testing.assert_allclose(c.deletion[i, j], _probs(model, deleted, cls[i:i + 1])[0], atol=1e-6)
            np.testing.assert_allclose(c.insertion[i, j], _probs(model, inserted, cls[i:i + 1])[0], atol=1e-6)
    np.testing.assert_allclose(c.deletion_auc, np.trapezoid(np.asarray(c.deletion), fr, axis=1), atol=1e-6)
    np.testing.assert_allclose(c.insertion_auc, np.trapezoid(np.asarray(c.insertion), fr, axis=1), atol=1e-6)


def test_insertion_starts_from_its_own_substrate_and_given_classes_are_scored():
    model, x = toy_model(), toy_input(2, 32)
    cams = jnp.asarray(np.random.default_rng(4).uniform(size=(2, 32, 32)).astype(np.float32))
    c = M.deletion_insertion(model, x, cams, [1, 2], steps=2)  # RISE defaults: zeros / blur
    blurred = M.rise_blur(x)
    np.testing.assert_allclose(c.insertion[:, 0], _probs(model, blurred, [1, 2]), atol=1e-6)
    np.testing.assert_allclose(c.deletion[:, -1], _probs(model, jnp.zeros_like(x), [1, 2]), atol=1e-6)
    np.testing.assert_allclose(c.deletion[:, 0], _probs(model, x, [1, 2]), atol=1e-6)
    np.testing.assert_allclose(c.insertion[:, -1], _probs(model, x, [1, 2]), atol=1e-6)


def test_rise_blur_kernel_is_normalised_gaussian_with_zero_padding():
    k = D._rise_kernel()
    assert k.shape == (11, 11) and abs(k.sum() - 1) < 1e-6 and k[5, 5] == k.max()
    ones = jnp.ones((1, 21, 21, 3))
    out = np.asarray(M.rise_blur(ones))
    np.testing.assert_allclose(out[0, 10, 10], 1.0, atol=1e-6)  # interior: the kernel sums to one
    assert out[0, 0, 0, 0] < 0.5  # corner: zero padding, as RISE's conv2d(padding=5)


def test_substrates_black_mean_and_arrays():
    model = linear_model()
    x = toy_input(2, 32)
    black = D.substrate("black", x, model.arch.mean, model.arch.std)
    np.testing.assert_allclose(black * 0.25 + 0.5, 0.0, atol=1e-6)  # pixel 0 after normalisation
    mean = D.substrate("mean", x, model.arch.mean, model.arch.std)
    np.testing.assert_allclose(mean[:, 3, 5], np.asarray(x).mean(axis=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(D.substrate(0.5, x, (0,) * 3, (1,) * 3), 0.5)
    with pytest.raises(jaxcam.UnknownNameError, match="substrate"):
        D.substrate("grey", x, (0,) * 3, (1,) * 3)
    with pytest.raises(ValueError, match="broadcast"):
        D.substrate(np.zeros((5, 5)), x, (0,) * 3, (1,) * 3)


def test_every_step_from_one_argsort_in_one_program_without_retracing():
    """The whole batch's curves are one traced program: one sort (the ranks), the model traced twice (the clean
    batch and the body of the chunked map over every (image, step) job), and no retrace for new maps or images."""
    model, x = toy_model(), toy_input(3, 32)
    cams = jnp.asarray(np.random.default_rng(5).uniform(size=(3, 32, 32)).astype(np.float32))
    counts = D.pixel_counts(1024, 8)
    args = (model.forward_fn.func, jaxcam.targets.probability, counts, True, 5)  # 3 x 15 jobs, chunks of 5
    jaxpr = jax.make_jaxpr(D._curves, static_argnums=(0, 1, 2, 3, 4))(*args, model.params, x, cams, None,
                                                                       jnp.zeros_like(x), jnp.zeros_like(x))
    assert count(jaxpr.jaxpr, "sort") == 1
    assert count(jaxpr.jaxpr, "conv_general_dilated") == 2
    assert count(jaxpr.jaxpr, "scan") == 1  # lax.map over the jobs
    before = D.CALLS["deletion_insertion"]
    M.deletion_insertion(model, x, cams, steps=8, insertion_substrate="zeros", batch_size=4)
    M.deletion_insertion(model, x * 0.5, cams[::-1], [0, 1, 2], steps=8, insertion_substrate="zeros", batch_size=4)
    assert D.CALLS["deletion_insertion"] - before <= 2  # one trace (+1 when given classes replace None)


def test_confidence_metrics_closed_form():
    model, x = toy_model(), toy_input(3, 32)
    ones = jnp.ones((3, 32, 32))
    for space in ("pixel", "normalised"):
        np.testing.assert_allclose(M.average_drop(model, x, ones, space=space), 0.0, atol=1e-6)
        np.testing.assert_allclose(M.increase_in_confidence(model, x, ones, space=space), 0.0)
    np.testing.assert_allclose(M.cam_mult_confidence_change(model, x, ones), 0.0, atol=1e-7)
    cams = jnp.asarray(np.random.default_rng(6).uniform(size=(3, 32, 32)).astype(np.float32))
    cls = np.asarray(jnp.argmax(model(x), -1))
    y = _probs(model, x, cls)
    o = _probs(model, x * cams[..., None], cls)
    np.testing.assert_allclose(M.average_drop(model, x, cams, space="normalised"),
                               np.maximum(y - o, 0) / (y + 1e-7), rtol=1e-5)
    np.testing.assert_allclose(M.increase_in_confidence(model, x, cams, space="normalised"), (y < o).astype(float))
    np.testing.assert_allclose(M.cam_mult_confidence_change(model, x, cams), o - y, atol=1e-6)


def test_pixel_space_masks_to_black():
    model = linear_model()
    x = toy_input(2, 32)
    zeros = jnp.zeros((2, 32, 32))
    cls = np.asarray(jnp.argmax(model(x), -1))
    black = jnp.full_like(x, -2.0)  # (0 - 0.5) / 0.25
    y, o = _probs(model, x, cls), _probs(model, black, cls)
    np.testing.assert_allclose(M.average_drop(model, x, zeros), np.maximum(y - o, 0) / (y + 1e-7), rtol=1e-5)


def test_relative_confidence_drop():
    model, x = toy_model(), toy_input(2, 32)
    cams = jnp.asarray(np.random.default_rng(7).uniform(size=(2, 32, 32)).astype(np.float32))
    cls = np.asarray(jnp.argmax(model(x), -1))
    # fraction 1: every pixel masked to the dataset mean (0 in normalised space)
    y, o = _probs(model, x, cls), _probs(model, jnp.zeros_like(x), cls)
    np.testing.assert_allclose(M.relative_confidence_drop(model, x, cams, fraction=1.0), (y - o) / y, rtol=1e-5)
    # the top 5 % of 1024 pixels: 51 pixels
    k = 51
    top = np.zeros((2, 1024), bool)
    np.put_along_axis(top, np.argsort(-np.asarray(cams).reshape(2, -1), axis=1, kind="stable")[:, :k], True, 1)
    xm = np.where(top.reshape(2, 32, 32, 1), 0.0, np.asarray(x))
    logits, logits_m = np.asarray(model(x)), np.asarray(model(jnp.asarray(xm)))
    p, pm = jax.nn.softmax(logits, -1), jax.nn.softmax(logits_m, -1)
    d = [np.argsort(np.abs(logits[i] - logits[i, cls[i]]), kind="stable")[1] for i in range(2)]
    rc = np.array([p[i, cls[i]] - p[i, d[i]] for i in range(2)])
    rcm = np.array([pm[i, cls[i]] - pm[i, d[i]] for i in range(2)])
    np.testing.assert_allclose(M.relative_confidence_drop(model, x, cams, contrast=True), (rc - rcm) / rc, rtol=1e-4)
    with pytest.raises(ValueError, match="fraction"):
        M.relative_confidence_drop(model, x, cams, fraction=0)


def test_faithfulness_correlation_is_one_for_the_exact_attribution_of_a_linear_model():
    """For a model linear in its input, removing pixel set S to the baseline b changes the logit by
    sum_{p in S} g . (x_p - b) / HW: the map a_p = g . (x_p - b) correlates perfectly with the drop."""
    model = linear_model()
    x = toy_input(2, 32)
    cls = np.asarray(jnp.argmax(model(x), -1))
    w_conv = np.asarray(model.params["conv"]["kernel"][...])[0, 0]  # (3, C)
    w_fc = np.asarray(model.params["fc"]["kernel"][...])  # (C, K)
    g = (w_conv @ w_fc)[:, cls]  # (3, N)
    floor = np.asarray(x).min(axis=(1, 2, 3))
    exact = np.einsum("nhwc,cn->nhw", np.asarray(x) - floor[:, None, None, None], g)
    r = M.faithfulness_correlation(model, x, exact, runs=30, subset_size=20, key=1)
    np.testing.assert_allclose(r, 1.0, atol=1e-4)
    r2 = M.faithfulness_correlation(model, x, -exact, runs=30, subset_size=20, key=1)
    np.testing.assert_allclose(r2, -1.0, atol=1e-4)
    np.testing.assert_array_equal(r, M.faithfulness_correlation(model, x, exact, runs=30, subset_size=20, key=1))
    np.testing.assert_allclose(M.faithfulness_correlation(model, x, jnp.ones((2, 32, 32)), runs=5, subset_size=20),
                               0.0)  # a constant map carries no ordering: defined as 0


def test_metric_inputs_errors():
    model, x = toy_model(), toy_input(2, 32)
    with pytest.raises(jaxcam.MapError, match="NaN"):
        M.average_drop(model, x, jnp.full((2, 32, 32), jnp.nan))
    with pytest.raises(jaxcam.MapError, match="3 maps for 2 images"):
        M.deletion_insertion(model, x, jnp.ones((3, 32, 32)))
    with pytest.raises(jaxcam.MapError, match=r"\(N, H, W\)"):
        M.deletion_insertion(model, x, jnp.ones((8, 8)))
    with pytest.raises(jaxcam.ClassIndexError):
        M.average_drop(model, x, jnp.ones((2, 32, 32)), [0, 99])
    with pytest.raises(jaxcam.NonFiniteImageError):
        M.average_drop(model, x.at[0, 0, 0, 0].set(jnp.nan), jnp.ones((2, 32, 32)))
    with pytest.raises(ValueError, match="steps"):
        M.deletion_insertion(model, x, jnp.ones((2, 32, 32)), steps=0)
    with pytest.raises(jaxcam.UnknownNameError, match="masking space"):
        M.average_drop(model, x, jnp.ones((2, 32, 32)), space="lab")


def test_maps_at_feature_resolution_are_resized_and_degenerate_maps_are_defined():
    model, x = toy_model(), toy_input(2, 32)
    small = jnp.asarray(np.random.default_rng(8).uniform(size=(2, 7, 7)).astype(np.float32))
    c = M.deletion_insertion(model, x, small, steps=4)
    assert c.deletion.shape == (2, 5)
    for cams in (jnp.zeros((2, 32, 32)), jnp.full((2, 32, 32), 0.3)):
        c = M.deletion_insertion(model, x, cams, steps=4)
        assert np.isfinite(np.asarray(c.deletion_auc)).all() and np.isfinite(np.asarray(c.insertion_auc)).all()
        for fn in (M.average_drop, M.increase_in_confidence, M.cam_mult_confidence_change,
                   M.relative_confidence_drop):
            assert np.isfinite(np.asarray(fn(model, x, cams))).all()
