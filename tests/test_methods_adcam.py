"""AD-CAM (attention-based class activation diffusion): closed forms of the diffusion on hand-built attention
matrices, its invariants, and the method on a real layer's Inputs with an attention supplied by hand (the driver
wiring that captures a ViT's attention probabilities is described in jaxcam.methods.adcam)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam.errors import InvalidArgumentError, UnknownNameError
from jaxcam.methods.adcam import diffuse, from_inputs, refine, transition
from jaxcam.methods.base import Context, Inputs
from jaxcam.postprocess import postprocess
from jaxcam.tapped import capture

from .toy import toy_input, toy_model


def with_prefix(patch_attn, prefix=1, layers=2, heads=3, rng=None):
    """(layers, heads, T, T) attention whose patch block averages to ``patch_attn``; the prefix rows and columns
    hold arbitrary values (AD-CAM drops them)."""
    n = patch_attn.shape[0]
    t = prefix + n
    rng = rng or np.random.default_rng(0)
    out = rng.uniform(0, 1, (layers, heads, t, t)).astype(np.float32)
    noise = rng.normal(0, 0.01, (layers, heads, n, n)).astype(np.float32)
    noise -= noise.mean(axis=(0, 1), keepdims=True)  # the mean over layers and heads is exactly patch_attn
    out[:, :, prefix:, prefix:] = patch_attn[None, None] + noise
    return jnp.asarray(out)


def test_identity_attention_returns_the_base_cam():
    cam = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32))
    attn = jnp.broadcast_to(jnp.eye(13, dtype=jnp.float32), (2, 3, 13, 13))
    for steps in (1, 3):
        np.testing.assert_array_equal(np.asarray(diffuse(attn, cam, prefix=1, steps=steps)), np.asarray(cam))
    np.testing.assert_array_equal(np.asarray(diffuse(attn, cam)), np.asarray(cam))  # prefix = 13 - 3*4


def test_groups_attending_within_themselves_give_group_means():
    """Patches 0-3 attend uniformly to each other, patches 4-8 likewise: each group's CAM becomes its mean."""
    a = np.zeros((9, 9), np.float32)
    a[:4, :4] = 1 / 4
    a[4:, 4:] = 1 / 5
    cam = np.random.default_rng(2).uniform(size=(3, 3)).astype(np.float32)
    out = np.asarray(diffuse(with_prefix(a), jnp.asarray(cam), prefix=1)).ravel()
    flat = cam.ravel()
    np.testing.assert_allclose(out, np.r_[np.full(4, flat[:4].mean()), np.full(5, flat[4:].mean())], rtol=1e-5)


def test_two_patches_by_hand():
    """A = [[1-e, e], [e, 1-e]]: neighbourhood similarity c = 2e(1-e) / ((1-e)^2 + e^2) scales the cross
    attention; a CAM (1, 0) diffuses to ((1-e) / (1-e + e c), e c / (1-e + e c))."""
    e = 0.2
    a = np.array([[1 - e, e], [e, 1 - e]], np.float32)
    c = 2 * e * (1 - e) / ((1 - e) ** 2 + e ** 2)
    np.testing.assert_allclose(np.asarray(refine(jnp.asarray(a))), [[1 - e, e * c], [e * c, 1 - e]], rtol=1e-6)
    out = np.asarray(diffuse(jnp.asarray(a)[None, None], jnp.asarray([[1.0, 0.0]]), prefix=0)).ravel()
    d = 1 - e + e * c
    np.testing.assert_allclose(out, [(1 - e) / d, e * c / d], rtol=1e-5)


def test_conservative_refinement_damps_a_weak_bridge():
    """Two cliques joined by one attention edge between patches with different neighbourhoods: the refined
    diffusion carries less activation across than the raw attention would."""
    a = np.zeros((6, 6), np.float32)
    a[:3, :3] = 1.0
    a[3:, 3:] = 1.0
    a[2, 3] = a[3, 2] = 1.0
    cam = jnp.asarray([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    refined = np.asarray(diffuse(jnp.asarray(a)[None, None], cam, prefix=0)).ravel()
    raw = np.asarray(transition(jnp.asarray(a)) @ cam.ravel())
    assert refined[3:].sum() < raw[3:].sum() and refined[3] < raw[3]
    assert refined[4] == 0 and refined[5] == 0  # one step reaches only the bridge's end


def test_invariants():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 4, 17, 17)).astype(np.float32)
    attn = jax.nn.softmax(jnp.asarray(logits), axis=-1)  # a ViT-like attention: rows sum to 1
    cam = jnp.asarray(rng.uniform(size=(4, 4)).astype(np.float32))
    one = diffuse(attn, cam, prefix=1)
    np.testing.assert_allclose(np.asarray(diffuse(attn, cam, steps=3)),
                               np.asarray(diffuse(attn, diffuse(attn, one, steps=1), steps=1)), rtol=1e-5)
    constant = jnp.full((4, 4), 0.7, jnp.float32)
    np.testing.assert_allclose(np.asarray(diffuse(attn, constant)), 0.7, rtol=1e-5)  # row-stochastic
    changed = attn.at[:, :, 0, :].set(0.5).at[:, :, :, 0].set(0.0)  # only the CLS token's rows and columns
    np.testing.assert_array_equal(np.asarray(diffuse(changed, cam)), np.asarray(one))
    lo, hi = float(cam.min()), float(cam.max())
    assert lo - 1e-6 <= float(one.min()) and float(one.max()) <= hi + 1e-6  # averages never leave the range
    np.testing.assert_allclose(np.asarray(jax.jit(diffuse, static_argnums=(2, 3))(attn, cam, 1, 1)),
                               np.asarray(one), rtol=1e-6)


def test_bad_shapes_and_steps():
    attn = jnp.ones((1, 1, 10, 10), jnp.float32) / 10
    cam = jnp.ones((3, 3), jnp.float32)
    with pytest.raises(InvalidArgumentError, match="10 tokens"):
        diffuse(attn, cam, prefix=2)
    with pytest.raises(InvalidArgumentError, match="10 tokens"):
        diffuse(attn, jnp.ones((4, 4), jnp.float32))
    with pytest.raises(InvalidArgumentError, match="layers, heads, T, T"):
        diffuse(attn[0], cam)
    with pytest.raises(InvalidArgumentError, match="shape \\(h, w\\)"):
        diffuse(attn, cam.ravel())
    with pytest.raises(InvalidArgumentError, match="steps"):
        diffuse(attn, cam, steps=0)


def test_from_inputs_on_a_real_layer():
    """AD-CAM from a layer's Inputs (the toy CNN's 16x16 relu layer, with a CLS-like prefix added by hand):
    identity attention gives relu(Grad-CAM); a softmax attention gives a finite, deterministic, different map."""
    model = toy_model()
    x = toy_input()
    score = jaxcam.targets.resolve("logit")
    cap = capture(model.tapped.apply, model.params, x, ("relu",), (score,))
    ctx = Context(replay=None, forward=None, score=score, batch_size=4)
    inp = Inputs(cap.acts["relu"][0], cap.grads[score]["relu"][0], None, cap.logits[0], cap.classes[0], x[0],
                 jax.random.key(0))
    grad = np.asarray(jnp.sum(inp.acts * jnp.mean(inp.grads, axis=(0, 1), keepdims=True), axis=-1))
    eye = jnp.eye(257, dtype=jnp.float32)[None, None]
    np.testing.assert_allclose(np.asarray(from_inputs(inp, ctx, eye)), np.maximum(grad, 0), atol=1e-6)
    attn = jax.nn.softmax(jnp.asarray(np.random.default_rng(5).normal(size=(1, 2, 257, 257)).astype(np.float32)))
    out = from_inputs(inp, ctx, attn, steps=2)
    final = np.asarray(postprocess([out], (32, 32)))
    assert np.isfinite(final).all() and final.min() >= 0 and final.max() <= 1
    np.testing.assert_array_equal(np.asarray(from_inputs(inp, ctx, attn, steps=2)), np.asarray(out))
    assert np.abs(np.asarray(out) - np.maximum(grad, 0)).max() > 1e-3
    layer = from_inputs(inp, ctx, eye, base="layercam")
    np.testing.assert_allclose(np.asarray(layer), np.maximum(
        np.asarray(jnp.sum(jax.nn.relu(inp.grads) * inp.acts, axis=-1)), 0), atol=1e-6)
    with pytest.raises(UnknownNameError, match="base CAM"):
        from_inputs(inp, ctx, eye, base="scorecam")
