"""Saliency-guided attacks (jaxcam.attacks): mask areas, confinement, a known flip threshold, determinism, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcam import noise
from jaxcam.attacks import (ATTACKS, UnknownAttackError, confine, get_attack, min_flip_budget, pgd_l2, pgd_linf,
                            random_mask)
from jaxcam.errors import InvalidArgumentError, MapError, MaskError

H = W = 8
RNG = np.random.default_rng(0)
WEIGHTS = (RNG.choice([-1.0, 1.0], (H, W, 3)) * RNG.uniform(0.5, 1.5, (H, W, 3))).astype(np.float32)


def linear_logits(xb, d0=0.3):
    """Two classes, logit gap ``w . (x - 0.5) + d0``: at x = 0.5 class 0 leads by d0."""
    gap = jnp.einsum("nhwc,hwc->n", xb - 0.5, jnp.asarray(WEIGHTS)) + d0
    return jnp.stack([gap, jnp.zeros_like(gap)], axis=-1)


def nonlinear_logits(xb):
    k = jnp.asarray(WEIGHTS)
    h = jnp.tanh(3.0 * (xb - 0.5) * k[None])
    return jnp.stack([jnp.einsum("nhwc,hwc->n", h, k), jnp.einsum("nhwc,hwc->n", h, k[::-1]) + 0.5,
                      jnp.sum(h, axis=(1, 2, 3))], axis=-1)


def test_confine_fraction_gives_exact_area_of_the_top_pixels():
    cam = jax.random.uniform(jax.random.key(1), (3, H, W))
    cam = cam.at[0, :2].set(0.5)  # ties: still exactly k pixels
    for fraction in (1 / 64, 0.1, 0.25, 0.5, 1.0):
        m = confine(cam, fraction=fraction)
        k = max(1, round(fraction * H * W))
        assert m.shape == cam.shape and set(np.unique(np.asarray(m))) <= {0.0, 1.0}
        np.testing.assert_array_equal(np.asarray(m).reshape(3, -1).sum(1), k)
        for c, mm in zip(np.asarray(cam), np.asarray(m)):  # every kept pixel >= every dropped one
            if k < H * W:
                assert c[mm == 1].min() >= c[mm == 0].max()
    single = confine(cam[1], fraction=0.25)
    np.testing.assert_array_equal(single, confine(cam, fraction=0.25)[1])
    t = confine(cam, threshold=0.7)
    np.testing.assert_array_equal(t, (np.asarray(cam) > 0.7).astype(np.float32))


@pytest.mark.parametrize("kind", ["blobs", "pixels"])
def test_random_mask_has_the_asked_area_and_is_keyed(kind):
    like = confine(jax.random.uniform(jax.random.key(2), (4, H, W)), threshold=0.6)
    m = random_mask(7, like, kind=kind)
    np.testing.assert_array_equal(np.asarray(m).reshape(4, -1).sum(1), np.asarray(like).reshape(4, -1).sum(1))
    np.testing.assert_array_equal(m, random_mask(7, like, kind=kind))
    assert not np.array_equal(m, random_mask(8, like, kind=kind))
    np.testing.assert_array_equal(np.asarray(random_mask(0, like, 10, kind=kind)).reshape(4, -1).sum(1), 10)
    assert random_mask(0, like[0], 5, kind=kind).sum() == 5


@pytest.mark.parametrize("pair", sorted(ATTACKS))
def test_perturbation_is_zero_outside_the_mask(pair):
    x = jax.random.uniform(jax.random.key(3), (H, W, 3))
    mask = random_mask(4, jnp.zeros((H, W)), 20)
    adv = ATTACKS[pair](jax.random.key(5), x, mask, 0.2 if pair[1] == "linf" else 1.0, nonlinear_logits, 1)
    delta = np.abs(np.asarray(adv - x))
    assert delta[np.asarray(mask) == 0].max() == 0.0
    assert delta[np.asarray(mask) == 1].max() > 0.0


def test_unmasked_attacks_match_jaxcam_noise():
    x = jax.random.uniform(jax.random.key(3), (H, W, 3))
    ones, key = jnp.ones((H, W)), jax.random.key(9)
    np.testing.assert_allclose(pgd_linf(key, x, ones, 0.05, nonlinear_logits, 1),
                               noise._pgd(key, x, 0.05, nonlinear_logits, 1), atol=1e-6)
    np.testing.assert_allclose(get_attack("fgsm", "linf")(key, x, ones, 0.05, nonlinear_logits, 1),
                               jnp.clip(noise._fgsm(key, x, 0.05, nonlinear_logits, 1), 0, 1), atol=1e-6)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_bisection_finds_the_linear_models_threshold(attack, norm):
    """On w . (x - 0.5) + d0 every attack moves the gap by -eps ||w M||_1 (L-inf) or -eps ||w M||_2 (L2), so the
    prediction flips exactly at eps* = d0 / that norm (no clipping: eps* moves pixels far less than 0.5)."""
    masks = jnp.stack([jnp.ones((H, W)), confine(jnp.abs(jnp.asarray(WEIGHTS)).sum(-1), fraction=0.25),
                       random_mask(1, jnp.zeros((H, W)), 16)])
    images = jnp.full((3, H, W, 3), 0.5)
    out = min_flip_budget(linear_logits, images, None, masks, attack=attack, norm=norm, hi=1.0, iterations=24,
                          random_start=norm == "linf")
    wm = np.abs(WEIGHTS)[None] * np.asarray(masks)[..., None]
    dual = wm.reshape(3, -1).sum(1) if norm == "linf" else np.sqrt((wm ** 2).reshape(3, -1).sum(1))
    np.testing.assert_allclose(out.epsilon, 0.3 / dual, rtol=1e-3)
    realised = out.linf if norm == "linf" else out.l2
    np.testing.assert_allclose(realised, out.epsilon, rtol=1e-3)
    assert out.flipped.all() and out.never_flipped == 0 and out.already_flipped == 0
    assert out.epsilon[1] < out.epsilon[2]  # the top-|w| region needs less than a random one of the same area


def test_never_flipped_is_inf_and_counted_already_flipped_is_zero():
    images = jnp.full((2, H, W, 3), 0.5)
    out = min_flip_budget(linear_logits, images, jnp.asarray([0, 1]), attack="fgsm", norm="l2", hi=1e-3)
    assert np.isinf(out.epsilon[0]) and np.isinf(out.l2[0]) and np.isinf(out.linf[0])
    assert out.epsilon[1] == 0.0 and out.l2[1] == 0.0
    assert out.never_flipped == 1 and out.already_flipped == 1 and list(out.flipped) == [False, True]


def test_deterministic_with_the_key_and_independent_of_chunking():
    images = jax.random.uniform(jax.random.key(11), (4, H, W, 3))
    masks = random_mask(3, jnp.zeros((4, H, W)), 24)
    run = lambda key, bs: min_flip_budget(nonlinear_logits, images, None, masks, attack="pgd", norm="l2",  # noqa
                                          key=key, iterations=4, steps=2, batch_size=bs)
    a, b = run(0, 64), run(0, 2)
    np.testing.assert_array_equal(a.epsilon, b.epsilon)
    np.testing.assert_array_equal(a.l2, b.l2)
    c = run(1, 64)
    assert not np.array_equal(a.l2, c.l2)


def test_bad_input_errors():
    cam = jnp.zeros((H, W))
    for bad in (0.0, -0.1, 1.5, "half"):
        with pytest.raises(InvalidArgumentError, match="fraction"):
            confine(cam, fraction=bad)
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        confine(cam)
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        confine(cam, fraction=0.5, threshold=0.5)
    with pytest.raises(MapError, match="cam"):
        confine(jnp.zeros((1, 2, H, W)), fraction=0.5)
    with pytest.raises(InvalidArgumentError, match="area"):
        random_mask(0, cam, H * W + 1)
    images = jnp.full((2, H, W, 3), 0.5)
    with pytest.raises(MaskError, match="masks must have shape"):
        min_flip_budget(linear_logits, images, None, jnp.ones((2, H, W + 1)))
    with pytest.raises(UnknownAttackError):
        min_flip_budget(linear_logits, images, attack="cw")
    with pytest.raises(UnknownAttackError):
        min_flip_budget(linear_logits, images, norm="l1")
    with pytest.raises(InvalidArgumentError, match="lo"):
        min_flip_budget(linear_logits, images, lo=0.5, hi=0.1)
    with pytest.raises(InvalidArgumentError, match="labels"):
        min_flip_budget(linear_logits, images, jnp.zeros((3,), jnp.int32))


def test_runs_on_a_jaxcam_model():
    from jaxcam.models.reference_cnn import reference_model

    model = reference_model(0, size=32)
    images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    out = min_flip_budget(model, images, attack="fgsm", norm="linf", hi=1.0, iterations=2)
    assert out.epsilon.shape == (2,) and np.all(out.linf <= out.epsilon + 1e-6)
