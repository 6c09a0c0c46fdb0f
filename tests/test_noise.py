"""Tests of jaxcam.noise: definitions, ImageNet-C parity, adversarial noises, one-program grids, job keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from types import SimpleNamespace
import scipy.ndimage
import skimage.color
import skimage.filters

from jaxcam import noise as N
from jaxcam.errors import ImageDtypeError, ImageError, ImageShapeError, UnknownNameError
from tests.toy import toy_model

KEY = jax.random.key(0)
RANDOM = [n for n, s in N.NOISES.items() if s.kind == "random"]
NON_ADV = [n for n, s in N.NOISES.items() if s.kind != "adversarial"]


def textured(size=32, seed=0, lo=0.2, hi=0.8):
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, (size, size, 3)).astype(np.float32))


def grey(size=32, v=0.5):
    return jnp.full((size, size, 3), v, jnp.float32)


LOGITS = N.pixel_logits(toy_model())


@pytest.fixture(scope="module")
def logits_fn():
    return LOGITS


def ce(logits_fn, x, label):
    return float(-jax.nn.log_softmax(logits_fn(x[None])[0])[label])


# ------------------------------------------------------------------------------------------- registry, basics
def test_registry_constants_match_imagenet_c():
    sev = {n: s.severities for n, s in N.NOISES.items()}
    assert sev["gaussian"] == (0.08, 0.12, 0.18, 0.26, 0.38)
    assert sev["shot"] == (60, 25, 12, 5, 3)
    assert sev["impulse"] == (0.03, 0.06, 0.09, 0.17, 0.27)
    assert sev["speckle"] == (0.15, 0.2, 0.35, 0.45, 0.6)
    assert sev["gaussian_blur"] == (1, 2, 3, 4, 6)
    assert sev["brightness"] == (0.1, 0.2, 0.3, 0.4, 0.5)
    assert sev["contrast"] == (0.4, 0.3, 0.2, 0.1, 0.05)
    np.testing.assert_allclose(sev["uniform"], np.sqrt(3) * np.asarray(sev["gaussian"]))
    np.testing.assert_allclose(sev["fgsm"], np.array([1, 2, 4, 8, 16]) / 255)
    assert sev["pgd"] == sev["fgsm"]
    for s in N.NOISES.values():
        assert s.kind in {"random", "deterministic", "adversarial"} and len(s.severities) == 5 and s.description


@pytest.mark.parametrize("name", N.NOISE_NAMES)
def test_shape_range_determinism_identity(name, logits_fn):
    x = textured()
    outs = {lvl: N.perturb(name, KEY, x, lvl, logits_fn=logits_fn) for lvl in (0, 3, 5)}
    for y in outs.values():
        assert y.shape == x.shape and y.dtype == jnp.float32
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    np.testing.assert_array_equal(outs[0], x)  # level 0 is the clean image
    assert not np.array_equal(outs[3], x)
    np.testing.assert_array_equal(N.perturb(name, KEY, x, 3, logits_fn=logits_fn), outs[3])
    other = N.perturb(name, jax.random.key(1), x, 3, logits_fn=logits_fn)
    if N.NOISES[name].kind == "random" or name == "pgd":
        assert not np.array_equal(other, outs[3])
    else:
        np.testing.assert_array_equal(other, outs[3])


@pytest.mark.parametrize("name", NON_ADV)
def test_severity_monotone(name):
    x = textured()
    change = [float(jnp.mean(jnp.abs(N.perturb(name, KEY, x, lvl) - x))) for lvl in range(6)]
    assert change[0] == 0.0
    assert all(a < b for a, b in zip(change, change[1:])), change


def test_perturb_value_matches_level_table():
    x = textured()
    for name in ("gaussian", "speckle", "contrast"):
        c = N.NOISES[name].severities[2]
        np.testing.assert_allclose(N.perturb_value(name, KEY, x, c), N.perturb(name, KEY, x, 3), atol=1e-6)


# ----------------------------------------------------------------------------------------- noise statistics
def test_gaussian_statistics():
    x = grey()
    d = np.asarray(N.perturb("gaussian", KEY, x, 1) - x)  # c = .08: clipping at 6 sigma is negligible
    assert abs(d.mean()) < 0.005 and abs(d.std() - 0.08) < 0.004


def test_uniform_statistics():
    x = grey()
    d = np.asarray(N.perturb("uniform", KEY, x, 1) - x)
    c = N.NOISES["uniform"].severities[0]
    assert np.abs(d).max() <= c + 1e-6 and abs(d.std() - 0.08) < 0.004  # variance matches gaussian's
    assert abs(np.mean(np.abs(d) < c / 2) - 0.5) < 0.03


def test_speckle_statistics():
    for v in (0.25, 0.5):
        d = np.asarray(N.perturb("speckle", KEY, grey(48, v), 1) - v)
        assert abs(d.mean()) < 0.005 and abs(d.std() - 0.15 * v) < 0.006


def test_shot_statistics():
    y = np.asarray(N.perturb("shot", KEY, grey(), 1))  # Poisson(30)/60
    assert abs(y.mean() - 0.5) < 0.005 and abs(y.std() - np.sqrt(0.5 / 60)) < 0.005
    np.testing.assert_allclose(y * 60, np.round(y * 60), atol=1e-4)  # multiples of 1/c
    np.testing.assert_array_equal(N.perturb("shot", KEY, grey(v=0.0), 5), 0.0)


def test_impulse_acts_per_value_like_skimage():
    c = 0.27
    y = np.asarray(N.perturb("impulse", KEY, grey(), 5))
    flipped = y != 0.5
    assert set(np.unique(y)) == {0.0, 0.5, 1.0}
    assert abs(flipped.mean() - c) < 0.02 and abs((y == 1).mean() - c / 2) < 0.015
    # skimage s&p flips each channel independently: all three channels flip together with prob. c^3, not c
    assert abs(flipped.all(-1).mean() - c ** 3) < 0.01


# ------------------------------------------------------------------------------------ deterministic parity
@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0, 4.0, 6.0, 1.7])
def test_blur_matches_scipy_and_skimage(sigma):
    x = textured(20, lo=0.0, hi=1.0)  # smaller than the kernel: the boundary mode matters everywhere
    y = np.asarray(N.perturb_value("gaussian_blur", KEY, x, sigma))
    xn = np.asarray(x, np.float64)
    ref = scipy.ndimage.gaussian_filter(xn, (sigma, sigma, 0), mode="nearest", truncate=4.0)
    np.testing.assert_allclose(y, ref, atol=2e-6)
    np.testing.assert_allclose(y, skimage.filters.gaussian(xn, sigma=sigma, channel_axis=-1), atol=2e-6)
    # another boundary mode differs at the border only
    other = scipy.ndimage.gaussian_filter(xn, (sigma, sigma, 0), mode="reflect", truncate=4.0)
    assert np.abs(y - other).max() > 1e-4


def test_blur_kernel():
    w = np.asarray(N.gaussian_kernel(1.0))
    r = N.BLUR_MAX_RADIUS
    assert w.shape == (2 * r + 1,) and abs(w.sum() - 1) < 1e-6
    assert np.all(w[: r - 4] == 0) and np.all(w[r - 4: r + 5] > 0)  # scipy's radius int(4 * 1 + .5) = 4
    np.testing.assert_array_equal(np.asarray(N.gaussian_kernel(0.0)), np.eye(2 * r + 1)[r])


def test_hsv_matches_skimage(rng):
    x = rng.uniform(0, 1, (40, 3))
    x[:5] = 0.3  # grey
    x[5:10] = [[0.0, 0.0, 0.0], [1, 1, 1], [0.5, 0.5, 0.2], [0.2, 0.5, 0.5], [0.5, 0.2, 0.5]]  # black, white, ties
    x = x.astype(np.float32)
    hsv = np.asarray(N.rgb_to_hsv(jnp.asarray(x)))
    np.testing.assert_allclose(hsv, skimage.color.rgb2hsv(x.astype(np.float64)), atol=1e-6)
    np.testing.assert_allclose(N.hsv_to_rgb(jnp.asarray(hsv)), skimage.color.hsv2rgb(hsv.astype(np.float64)),
                               atol=1e-6)
    np.testing.assert_allclose(N.hsv_to_rgb(N.rgb_to_hsv(jnp.asarray(x))), x, atol=1e-6)


@pytest.mark.parametrize("level", [1, 5])
def test_brightness_matches_imagenet_c(level):
    x = np.asarray(textured(24, lo=0.0, hi=1.0), np.float64)
    x[0, :4] = [[0, 0, 0], [1, 1, 1], [0.4, 0.4, 0.4], [0.9, 0.9, 0.1]]
    hsv = skimage.color.rgb2hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + N.NOISES["brightness"].severities[level - 1], 0, 1)
    ref = np.clip(skimage.color.hsv2rgb(hsv), 0, 1)
    np.testing.assert_allclose(N.perturb("brightness", KEY, jnp.asarray(x, jnp.float32), level), ref, atol=2e-6)


@pytest.mark.parametrize("level", [1, 5])
def test_contrast_matches_imagenet_c(level):
    x = np.asarray(textured(24, lo=0.0, hi=1.0), np.float64)
    c = N.NOISES["contrast"].severities[level - 1]
    means = x.mean(axis=(0, 1), keepdims=True)  # per-channel mean over all pixels
    ref = np.clip((x - means) * c + means, 0, 1)
    np.testing.assert_allclose(N.perturb("contrast", KEY, jnp.asarray(x, jnp.float32), level), ref, atol=1e-6)


# ---------------------------------------------------------------------------------------------- adversarial
def test_pixel_logits_normalises():
    model = SimpleNamespace(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), forward_fn=lambda z: z)
    x = textured(8)[None]
    ref = (np.asarray(x) - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.5])
    np.testing.assert_allclose(N.pixel_logits(model)(x), ref, atol=1e-6)


@pytest.mark.parametrize("level", [3, 5])
def test_fgsm_pgd_on_toy(logits_fn, level):
    eps = N.NOISES["fgsm"].severities[level - 1]
    losses = {"clean": [], "fgsm": [], "pgd": []}
    for seed in range(3):
        x = textured(32, seed=seed, lo=0.0, hi=1.0)
        label = int(jnp.argmax(logits_fn(x[None])[0]))
        losses["clean"].append(ce(logits_fn, x, label))
        for name in ("fgsm", "pgd"):
            y = N.perturb(name, jax.random.key(seed), x, level, logits_fn=logits_fn)
            assert float(jnp.abs(y - x).max()) <= eps + 1e-6
            assert float(y.min()) >= 0 and float(y.max()) <= 1
            losses[name].append(ce(logits_fn, y, label))
    clean, fgsm, pgd = (np.asarray(losses[k]) for k in ("clean", "fgsm", "pgd"))
    assert np.all(fgsm > clean)
    assert np.all(pgd > clean) and pgd.mean() >= fgsm.mean() - 1e-4


def test_fgsm_is_signed_gradient_step_at_label(logits_fn):
    x = textured(32, lo=0.1, hi=0.9)
    clean = int(jnp.argmax(logits_fn(x[None])[0]))
    default = N.perturb("fgsm", KEY, x, 5, logits_fn=logits_fn)
    np.testing.assert_array_equal(N.perturb("fgsm", KEY, x, 5, logits_fn=logits_fn, label=clean), default)
    for label in (clean, (clean + 1) % 5):
        g = jax.grad(lambda z: -jax.nn.log_softmax(logits_fn(z[None])[0])[label])(x)
        y = N.perturb("fgsm", KEY, x, 5, logits_fn=logits_fn, label=label)
        np.testing.assert_allclose(y, x + 16 / 255 * jnp.sign(g), atol=1e-6)


# ------------------------------------------------------------------------------------- one compiled program
def test_perturb_by_index_equals_perturb_and_compiles_once(logits_fn):
    x = textured()
    names = N.NOISE_NAMES
    cases = [(i, level) for i in range(len(names)) for level in (0, 2, 5)]
    N.perturb_by_index(names, 0, KEY, x, 1, logits_fn=logits_fn)
    size = N._apply._cache_size()
    got = [N.perturb_by_index(names, i, KEY, x, level, logits_fn=logits_fn) for i, level in cases]
    assert N._apply._cache_size() == size  # every noise index and level ran the one compiled program
    for (i, level), y in zip(cases, got):
        np.testing.assert_allclose(y, N.perturb(names[i], KEY, x, level, logits_fn=logits_fn), atol=1e-6)
    N.perturb_value("gaussian", KEY, x, 0.3)
    size = N._apply._cache_size()
    for level in range(6):
        N.perturb("gaussian", jax.random.key(level), x, level)  # same program with or without logits_fn
        N.perturb_value("gaussian", KEY, x, 0.1 * level)
    assert N._apply._cache_size() == size


@settings(max_examples=12, deadline=None)
@given(st.integers(0, len(N.NOISE_NAMES) - 1), st.integers(0, 5), st.integers(0, 2 ** 31 - 1),
       st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_any_noise_level_stays_in_range(index, level, seed, a, b):
    lo, hi = min(a, b), max(a, b)
    x = jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, (32, 32, 3)).astype(np.float32))
    y = N.perturb_by_index(N.NOISE_NAMES, index, jax.random.key(seed), x, level, logits_fn=LOGITS)
    assert y.shape == x.shape and bool(jnp.all((y >= 0) & (y <= 1)))
    if level == 0:
        np.testing.assert_array_equal(y, x)


def test_traced_level_and_index_under_jit():
    x = textured()
    names = ("gaussian", "contrast")
    f = jax.jit(lambda i, lvl: N.perturb_by_index(names, i, KEY, x, lvl))
    np.testing.assert_array_equal(f(1, 4), N.perturb("contrast", KEY, x, 4))
    np.testing.assert_array_equal(f(0, 0), x)
    assert f._cache_size() == 1


# ------------------------------------------------------------------------------------------- grids and keys
def test_grid_jobs_order():
    g = N.Grid(("gaussian", "contrast", "shot"), levels=(1, 3), draws=2)
    idx, lvl, draw = g.jobs()
    assert len(g) == len(idx) == 2 * 2 + 2 * 1 + 2 * 2  # contrast is deterministic: draw 0 only
    assert list(zip(idx.tolist(), lvl.tolist(), draw.tolist())) == [
        (0, 1, 0), (0, 1, 1), (0, 3, 0), (0, 3, 1), (1, 1, 0), (1, 3, 0), (2, 1, 0), (2, 1, 1), (2, 3, 0), (2, 3, 1)]
    assert idx.dtype == np.int32
    assert len(N.Grid(("contrast",), draws=3, repeat_deterministic=True)) == 15
    with pytest.raises(UnknownNameError, match="valid noises"):
        N.Grid(("gauss",))
    with pytest.raises(ValueError, match="levels"):
        N.Grid(("gaussian",), levels=(1, 6))
    with pytest.raises(ValueError, match="draws"):
        N.Grid(("gaussian",), draws=0)


def test_job_key_independent_of_chunking():
    g = N.Grid(("gaussian", "impulse", "pgd"), levels=(1, 2, 5), draws=3)
    idx, lvl, draw = g.jobs()
    ids = np.asarray([N.noise_id(g.names[i]) for i in idx], np.int32)
    img = np.full(len(idx), 7, np.int32)
    vk = jax.jit(jax.vmap(N.job_key, in_axes=(None, 0, 0, 0, 0)))
    full = jax.random.key_data(vk(KEY, img, ids, lvl, draw))
    perm = np.random.default_rng(0).permutation(len(idx))
    chunks = [perm[:9], perm[9:18], perm[18:]]  # 27 jobs in three shuffled chunks
    for ch in chunks:
        got = jax.random.key_data(vk(KEY, img[ch], ids[ch], lvl[ch], draw[ch]))
        np.testing.assert_array_equal(got, full[ch])
    one = jax.random.key_data(N.job_key(KEY, 7, "impulse", 2, 1))
    row = int(np.flatnonzero((idx == 1) & (lvl == 2) & (draw == 1))[0])
    np.testing.assert_array_equal(one, full[row])
    assert len({tuple(k) for k in np.asarray(full).reshape(len(idx), -1).tolist()}) == len(idx)
    assert len({N.noise_id(n) for n in N.NOISE_NAMES}) == len(N.NOISE_NAMES)


def test_perturb_batch_rows_and_chunking(logits_fn):
    names = ("gaussian", "impulse", "gaussian_blur", "pgd")
    rng = np.random.default_rng(1)
    n = 6
    images = jnp.asarray(rng.uniform(0, 1, (n, 32, 32, 3)).astype(np.float32))
    image_ids = np.arange(10, 10 + n, dtype=np.int32)
    noise_idx = np.array([0, 1, 2, 3, 0, 1], np.int32)
    levels = np.array([1, 5, 2, 4, 0, 3], np.int32)
    draws = np.array([0, 1, 0, 2, 1, 0], np.int32)
    out = N.perturb_batch(names, KEY, images, image_ids, noise_idx, levels, draws, logits_fn=logits_fn)
    for i in range(n):
        key = N.job_key(KEY, image_ids[i], names[noise_idx[i]], levels[i], draws[i])
        ref = N.perturb(names[noise_idx[i]], key, images[i], int(levels[i]), logits_fn=logits_fn)
        np.testing.assert_allclose(out[i], ref, atol=1e-6)
    rev = np.arange(n)[::-1]
    out_rev = N.perturb_batch(names, KEY, images[rev], image_ids[rev], noise_idx[rev], levels[rev], draws[rev],
                              logits_fn=logits_fn)
    np.testing.assert_allclose(out_rev[rev], out, atol=1e-6)
    # a shared scalar noise index: only that noise runs, same result for its rows
    shared = N.perturb_batch(names, KEY, images[:2], image_ids[:2], 0, np.array([1, 3]), draws[:2],
                             logits_fn=logits_fn)
    np.testing.assert_allclose(shared[0], out[0], atol=1e-6)
    np.testing.assert_allclose(shared[1], N.perturb("gaussian", N.job_key(KEY, 11, "gaussian", 3, 1), images[1], 3),
                               atol=1e-6)


# --------------------------------------------------------------------------------------------- validation
def test_validation_errors(logits_fn):
    x = textured()
    with pytest.raises(UnknownNameError, match="'gaussian'"):
        N.perturb("gausian", KEY, x, 1)
    with pytest.raises(ImageShapeError):
        N.perturb("gaussian", KEY, x[None], 1)
    with pytest.raises(ImageShapeError):
        N.perturb("gaussian", KEY, x[..., :2], 1)
    with pytest.raises(ImageDtypeError):
        N.perturb("gaussian", KEY, (x * 255).astype(jnp.uint8), 1)
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        N.perturb("gaussian", KEY, x * 255, 1)
    with pytest.raises(ImageError, match="NaN"):
        N.perturb("gaussian", KEY, x.at[0, 0, 0].set(jnp.nan), 1)
    for bad in (6, -1, 2.5):
        with pytest.raises(ValueError, match="level"):
            N.perturb("gaussian", KEY, x, bad)
    with pytest.raises(ValueError, match="logits_fn"):
        N.perturb("fgsm", KEY, x, 1)
    with pytest.raises(ValueError, match="index"):
        N.perturb_by_index(("gaussian", "shot"), 2, KEY, x, 1)
    with pytest.raises(ValueError, match="levels"):
        N.perturb_batch(("gaussian",), KEY, x[None], [0], [0], [1, 2], [0])
    with pytest.raises(ValueError, match="names"):
        N.perturb_by_index("gaussian", 0, KEY, x, 1)
