"""SSA (semantic structure aware inference): closed forms of the affinity polish on hand-built features, the
registered per-layer method through explain, and the paper's multi-stage form as a pure function of Inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam.errors import InvalidArgumentError, UnknownNameError
from jaxcam.methods.base import Context, Inputs
from jaxcam.methods.ssa import fuse_stages, polish, ssa, ssa_stages, structure
from jaxcam.postprocess import postprocess, resize
from jaxcam.tapped import capture

from .toy import toy_input, toy_model


def two_regions(h=4, w=4):
    """Features: the left half of the grid is channel 0, the right half channel 1 (orthogonal: zero affinity)."""
    acts = np.zeros((h, w, 3), np.float32)
    acts[:, : w // 2, 0] = 1.0
    acts[:, w // 2:, 1] = 2.0  # a different norm: cosine affinity ignores it
    return jnp.asarray(acts)


def test_block_affinity_gives_region_means():
    cam = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (4, 4)).astype(np.float32))
    out = np.asarray(polish(two_regions(), cam))
    c = np.asarray(cam)
    expected = np.concatenate([np.full((4, 2), c[:, :2].mean()), np.full((4, 2), c[:, 2:].mean())], axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_orthogonal_positions_give_the_cam_back_and_negatives_are_dropped():
    acts = jnp.eye(9, dtype=jnp.float32).reshape(3, 3, 9)  # every position its own channel: P = I
    cam = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3)).astype(np.float32))
    np.testing.assert_allclose(np.asarray(structure(acts)), np.eye(9), atol=1e-7)
    np.testing.assert_allclose(np.asarray(polish(acts, cam)), np.maximum(np.asarray(cam), 0), atol=1e-7)


def test_structure_is_row_stochastic_and_zero_features_keep_their_value():
    acts = np.abs(np.random.default_rng(2).normal(size=(3, 3, 4))).astype(np.float32)
    acts[1, 1] = 0.0  # no features: no affinity to any position
    p = np.asarray(structure(jnp.asarray(acts)))
    np.testing.assert_allclose(p.sum(axis=1), np.ones(9), rtol=1e-6)
    assert p[4, 4] == 1.0 and np.all(p[4, np.arange(9) != 4] == 0) and np.all(p[np.arange(9) != 4, 4] == 0)
    cam = jnp.arange(9.0, dtype=jnp.float32).reshape(3, 3)
    assert float(polish(jnp.asarray(acts), cam)[1, 1]) == 4.0


def test_cosine_affinity_by_hand():
    """Two positions with features (1, 0) and (1, 1): cosine 1/sqrt(2); rows normalised."""
    acts = jnp.asarray([[[1.0, 0.0], [1.0, 1.0]]], jnp.float32)  # (1, 2, 2)
    c = 1 / np.sqrt(2)
    np.testing.assert_allclose(np.asarray(structure(acts)), np.array([[1, c], [c, 1]]) / (1 + c), rtol=1e-6)
    out = np.asarray(polish(acts, jnp.asarray([[1.0, 0.0]], jnp.float32)))
    np.testing.assert_allclose(out, [[1 / (1 + c), c / (1 + c)]], rtol=1e-6)


def test_a_coarse_cam_is_upsampled_to_the_stage_grid():
    acts = jnp.eye(16, dtype=jnp.float32).reshape(4, 4, 16)
    cam = jnp.asarray([[1.0, 0.0], [0.0, 2.0]], jnp.float32)
    np.testing.assert_allclose(np.asarray(polish(acts, cam)), np.asarray(resize(cam, (4, 4))), atol=1e-7)


def test_fuse_stages_is_the_driver_fusion_of_polished_stages():
    rng = np.random.default_rng(3)
    stages = [(jnp.asarray(np.abs(rng.normal(size=(4, 4, 5))).astype(np.float32)),
               jnp.asarray(rng.uniform(size=(2, 2)).astype(np.float32))),
              (two_regions(), jnp.asarray(rng.uniform(size=(4, 4)).astype(np.float32)))]
    out = np.asarray(fuse_stages(stages, (16, 16)))
    np.testing.assert_allclose(out, np.asarray(postprocess([polish(a, c) for a, c in stages], (16, 16))))
    assert out.shape == (16, 16) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(InvalidArgumentError, match="at least one stage"):
        fuse_stages([], (16, 16))


@pytest.fixture(scope="module")
def toy():
    return toy_model()


def toy_inputs(model, sites):
    """Per-site, per-example Inputs of the toy model (Grad-CAM's logit target), as the driver builds them."""
    x = toy_input()
    score = jaxcam.targets.resolve("logit")
    cap = jax.jit(lambda p, v: capture(model.tapped.apply, p, v, sites, (score,)))(model.params, x)
    ctx = Context(replay=None, forward=None, score=score, batch_size=4)
    per_site = [[Inputs(cap.acts[s][i], cap.grads[score][s][i], None, cap.logits[i], cap.classes[i], x[i],
                        jax.random.key(0)) for s in sites] for i in range(x.shape[0])]
    return per_site, ctx


def gradcam_raw(inp):
    return np.asarray(jnp.sum(inp.acts * jnp.mean(inp.grads, axis=(0, 1), keepdims=True), axis=-1))


def test_registered_ssa_through_explain(toy):
    maps = np.asarray(jaxcam.explain(toy, toy_input(), "ssa", layer="relu", preprocessed=True))
    assert maps.shape == (2, 32, 32) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0.5
    per_example, ctx = toy_inputs(toy, ("relu",))
    for i, (inp,) in enumerate(per_example):
        manual = polish(inp.acts, jnp.maximum(gradcam_raw(inp), 0))
        np.testing.assert_allclose(maps[i], np.asarray(postprocess([manual], (32, 32))), atol=1e-5)
        np.testing.assert_allclose(np.asarray(ssa(inp, ctx)), np.asarray(manual), atol=1e-6)
    np.testing.assert_array_equal(maps, np.asarray(jaxcam.explain(toy, toy_input(), "ssa", layer="relu",
                                                                  preprocessed=True)))


def test_ssa_differs_from_its_base_and_takes_other_bases(toy):
    x = toy_input()
    plain = np.asarray(jaxcam.explain(toy, x, "gradcam", layer="relu", preprocessed=True))
    polished = np.asarray(jaxcam.explain(toy, x, "ssa", layer="relu", preprocessed=True))
    assert np.abs(plain - polished).max() > 0.05  # the polish moves the map
    layer = np.asarray(jaxcam.explain(toy, x, "ssa", layer="relu", preprocessed=True,
                                      method_options={"ssa": {"base": "layercam"}}))
    assert np.isfinite(layer).all() and np.abs(layer - polished).max() > 1e-3
    with pytest.raises(UnknownNameError, match="gradcam"):
        jaxcam.explain(toy, x, "ssa", layer="relu", preprocessed=True, method_options={"ssa": {"base": "gradcm"}})


def test_several_layers_fuse_like_fuse_stages(toy):
    maps = np.asarray(jaxcam.explain(toy, toy_input(), "ssa", layer=["conv", "relu"], preprocessed=True))
    per_example, ctx = toy_inputs(toy, ("conv", "relu"))
    for i, inputs in enumerate(per_example):
        stages = [(inp.acts, jnp.maximum(gradcam_raw(inp), 0)) for inp in inputs]
        np.testing.assert_allclose(maps[i], np.asarray(fuse_stages(stages, (32, 32))), atol=1e-5)


def test_ssa_stages_polishes_the_deepest_cam_with_every_stage(resnet18):
    """The paper's form on ResNet-18 (random weights): layer4's (2x2) Grad-CAM polished by layer3's (4x4) and
    layer4's structure, fused at the input size."""
    x = jnp.asarray(np.random.default_rng(4).standard_normal((1, 64, 64, 3)).astype(np.float32))
    sites = (resnet18.layer_site("layer3"), resnet18.layer_site("layer4"))
    score = jaxcam.targets.resolve("logit")
    cap = jax.jit(lambda p, v: capture(resnet18.tapped.apply, p, v, sites, (score,)))(resnet18.params, x)
    inputs = [Inputs(cap.acts[s][0], cap.grads[score][s][0], None, cap.logits[0], cap.classes[0], x[0],
                     jax.random.key(0)) for s in sites]
    ctx = Context(replay=None, forward=None, score=score, batch_size=4)
    out = np.asarray(ssa_stages(inputs, ctx))
    deep = jnp.maximum(gradcam_raw(inputs[1]), 0)
    assert inputs[1].acts.shape[:2] == (2, 2) and inputs[0].acts.shape[:2] == (4, 4)
    expected = np.asarray(fuse_stages([(inputs[0].acts, deep), (inputs[1].acts, deep)], (64, 64)))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ssa_stages(inputs[::-1], ctx)), np.asarray(
        fuse_stages([(inputs[1].acts, deep), (inputs[0].acts, deep)], (64, 64))), atol=1e-6)
    assert out.shape == (64, 64) and np.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    with pytest.raises(InvalidArgumentError, match="at least one layer"):
        ssa_stages([], ctx)


def test_ssa_stages_at_one_layer_is_the_registered_ssa(toy):
    """With one layer the paper's form and the per-layer method agree, so a driver kind passing every layer at
    once can take over the registry line without changing single-layer maps."""
    maps = np.asarray(jaxcam.explain(toy, toy_input(), "ssa", layer="relu", preprocessed=True))
    per_example, ctx = toy_inputs(toy, ("relu",))
    for i, inputs in enumerate(per_example):
        np.testing.assert_allclose(np.asarray(ssa_stages(inputs, ctx)), maps[i], atol=1e-5)
