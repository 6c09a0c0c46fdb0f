"""ROAD (noisy linear imputation solved by conjugate gradients) and MetaCAM's adaptive thresholding built on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam.methods.multipass import adaptive_k, top_fraction_threshold
from jaxcam.metrics import impute, road

from .toy import toy_input, toy_model


def test_imputation_reproduces_linear_images():
    """Every interior removed pixel is the weighted mean of its neighbours, which a linear image satisfies: the
    imputation of a removed block inside a linear ramp is the ramp itself."""
    i, j = np.meshgrid(np.arange(20.0), np.arange(24.0), indexing="ij")
    img = np.stack([0.1 * i + 0.05 * j, -0.2 * i + 1.0, 0.3 * j], -1).astype(np.float32)
    keep = np.ones((20, 24), bool)
    keep[5:15, 6:18] = False
    out = np.asarray(impute(jnp.asarray(img), jnp.asarray(keep)))
    np.testing.assert_allclose(out, img, atol=1e-4)


def test_imputation_keeps_known_pixels_and_adds_keyed_noise():
    img = jnp.asarray(np.random.default_rng(0).standard_normal((16, 16, 3)).astype(np.float32))
    keep = jnp.asarray(np.random.default_rng(1).uniform(size=(16, 16)) > 0.5)
    a = impute(img, keep, noise=0.01, key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(a)[np.asarray(keep)], np.asarray(img)[np.asarray(keep)])
    np.testing.assert_array_equal(a, impute(img, keep, noise=0.01, key=jax.random.key(0)))
    assert not np.allclose(a, impute(img, keep, noise=0.01, key=jax.random.key(1)))
    assert np.isfinite(np.asarray(impute(img, jnp.zeros((16, 16), bool)))).all()  # nothing known: defined


def test_road_api_and_errors():
    model, x = toy_model(), toy_input()
    cams = jaxcam.explain(model, x, "gradcam", layer="relu", preprocessed=True)
    for which in ("combined", "morf", "lerf"):
        s = np.asarray(road(model, x, cams, which=which, percentiles=(20, 80), noise=0.0))
        assert s.shape == (2,) and np.isfinite(s).all()
    lerf = road(model, x, cams, which="lerf", percentiles=(20, 80), noise=0.0)
    morf = road(model, x, cams, which="morf", percentiles=(20, 80), noise=0.0)
    np.testing.assert_allclose(road(model, x, cams, percentiles=(20, 80), noise=0.0), (lerf - morf) / 2, atol=1e-6)
    with pytest.raises(jaxcam.MapError, match=r"\(N, H, W\)"):
        road(model, x, cams[0])
    with pytest.raises(jaxcam.MapError, match="NaN"):
        road(model, x, cams.at[1, 0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="percentiles"):
        road(model, x, cams, percentiles=(0, 50))
    with pytest.raises(ValueError, match="unknown name .best. for ROAD variant"):
        road(model, x, cams, which="best")


def test_top_fraction_threshold_is_numpy_quantile():
    maps = np.random.default_rng(0).uniform(size=(3, 2, 9, 7)).astype(np.float32)
    k = np.array([[0.1, 0.5], [0.25, 0.9], [0.05, 0.33]], np.float32)
    got = np.asarray(top_fraction_threshold(jnp.asarray(maps), jnp.asarray(k)))[..., 0, 0]
    want = np.array([[np.quantile(maps[a, b], 1 - k[a, b]) for b in range(2)] for a in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_adaptive_k_picks_the_best_scoring_threshold():
    maps = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 8, 8)).astype(np.float32))
    grid = (0.1, 0.5, 0.9)
    assert np.asarray(adaptive_k(maps, lambda m: m.sum(axis=(1, 2)), grid)).tolist() == pytest.approx([0.9, 0.9])
    assert np.asarray(adaptive_k(maps, lambda m: -m.sum(axis=(1, 2)), grid)).tolist() == pytest.approx([0.1, 0.1])


def test_adaptive_metacam_runs_and_differs_from_fixed_k():
    model, x = toy_model(), toy_input()
    opts = {"members": ("gradcam", "eigencam"), "k_grid": (0.1, 0.5), "percentiles": (20, 80)}
    a = jaxcam.explain(model, x, "metacam", layer="relu", preprocessed=True,
                       method_options={"metacam": opts | {"adaptive": True}})
    assert a.shape == (2, 32, 32) and np.isfinite(np.asarray(a)).all()


@pytest.mark.torch
def test_live_road_combined_matches_pytorch_grad_cam():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    pytest.importorskip("pytorch_grad_cam")
    from unittest import mock

    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from jaxcam.models import random_state_dict
    from jaxcam.models.architectures import IMAGENET_MEAN, IMAGENET_STD

    sd = random_state_dict("resnet18", seed=0)
    model = jaxcam.load_model("resnet18", weights=sd)
    tm = torchvision.models.resnet18()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    tm.eval()
    x = jaxcam.preprocess(list(jaxcam.sample_images(["chelsea", "coffee"]).values()), size=64, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD)
    cams = np.asarray(jaxcam.explain(model, x, "gradcam", layer="layer3", preprocessed=True))
    cls = np.argmax(np.asarray(model(x)), -1)
    ours = np.asarray(road(model, x, cams, noise=0.0))
    with mock.patch("torch.randn_like", lambda t: torch.zeros_like(t)):  # the reference's unseeded noise, off
        want = ROADCombined()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), cams,
                              [ClassifierOutputSoftmaxTarget(int(c)) for c in cls], tm)
    np.testing.assert_allclose(ours, want, atol=1e-5)


def test_road_noise_is_drawn_in_pixel_units_by_default():
    """Imputation commutes with the per-channel normalisation, so the two spaces differ only in the noise's units:
    noise s in pixel space is noise s / std per channel of the normalised input."""
    model, x = toy_model(), toy_input()
    cams = jaxcam.explain(model, x, "gradcam", layer="relu", preprocessed=True)
    img, keep = x[0], cams[0] < 0.5
    per_channel = impute(img, keep, noise=(0.01, 0.02, 0.04), key=jax.random.key(0))
    unit = impute(img, keep, noise=1.0, key=jax.random.key(0))
    clean = impute(img, keep)
    np.testing.assert_allclose(per_channel - clean, np.asarray(unit - clean) * np.array([0.01, 0.02, 0.04]), atol=1e-5)
    a = road(model, x, cams, noise=0.05, percentiles=(50,), key=1)  # toy std is 1: both spaces agree
    b = road(model, x, cams, noise=0.05, percentiles=(50,), key=1, space="normalised")
    np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="noise space"):
        road(model, x, cams, space="lab")


def _reference_impute(img, keep, tol=1e-7):
    """The (H, W, C) formulation of the imputation (before the flat layout): the same system, written plainly."""
    offsets = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
               ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))

    def nsum(v):
        h, w = v.shape[:2]
        pad = jnp.pad(v, ((1, 1), (1, 1), (0, 0)))
        return sum(wt * pad[1 + di:1 + di + h, 1 + dj:1 + dj + w] for (di, dj), wt in offsets)

    u = (~keep).astype(img.dtype)[..., None]
    valid, b = nsum(jnp.ones_like(img[..., :1])), u * nsum(img * (1 - u))
    x0 = u * jnp.sum(img * (1 - u), axis=(0, 1), keepdims=True) / jnp.maximum(jnp.sum(1 - u), 1.0)
    x, _ = jax.scipy.sparse.linalg.cg(lambda v: u * (valid * v - nsum(u * v)) + (1 - u) * v, b, x0=x0, tol=tol,
                                      maxiter=2000)
    return jnp.where(u > 0, x, img)


@pytest.mark.parametrize("shape", [(24, 20, 3), (17, 9, 1)])
def test_flat_imputation_matches_the_channel_last_system(shape):
    rng = np.random.default_rng(3)
    img = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    smooth = jax.image.resize(jnp.asarray(rng.uniform(size=(3, 3)).astype(np.float32)), shape[:2], "bilinear")
    for keep in (smooth < 0.5, smooth < 0.9, jnp.zeros(shape[:2], bool), jnp.ones(shape[:2], bool)):
        np.testing.assert_allclose(impute(img, keep), _reference_impute(img, keep), atol=1e-5)


@pytest.mark.parametrize("shape", [(40, 48, 3), (35, 33, 3), (64, 64, 1)])
def test_multigrid_preconditioned_solve_equals_plain_conjugate_gradients(shape):
    """The V-cycle changes the iterations, not the solution: the same imputation as unpreconditioned CG (even and
    odd sides, several levels, masks from small holes to almost everything removed)."""
    rng = np.random.default_rng(5)
    img = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    smooth = jax.image.resize(jnp.asarray(rng.uniform(size=(4, 4)).astype(np.float32)), shape[:2], "bilinear")
    for frac in (0.1, 0.5, 0.95):
        keep = smooth < jnp.quantile(smooth, 1 - frac)
        np.testing.assert_allclose(impute(img, keep), impute(img, keep, multigrid=False), atol=1e-5)


def test_multigrid_preconditioner_is_symmetric_positive_definite():
    """Conjugate gradients needs an SPD preconditioner: the V-cycle's matrix, column by column, on a grid that
    coarsens twice (40x36 -> 20x18 -> 10x9), with a random mask."""
    from jaxcam.imputation import _multigrid

    h, w, c = 40, 36, 1
    keep = np.random.default_rng(2).uniform(size=(h, w)) < 0.3
    cycle = jax.jit(jax.vmap(_multigrid(jnp.asarray(~keep, jnp.float32), c)))
    mat = np.asarray(cycle(jnp.eye(h * w, dtype=jnp.float32).reshape(-1, h, w))).reshape(h * w, h * w)
    np.testing.assert_allclose(mat, mat.T, atol=1e-5)
    assert np.linalg.eigvalsh((mat + mat.T) / 2).min() > 1e-3


def test_threaded_cpu_road_equals_one_program():
    """On a CPU the chunks run from host threads (``workers``): the same scores as the single compiled program,
    for every variant, with and without noise, chunks that wrap round, and given classes."""
    model, x = toy_model(), toy_input(3)
    cams = jaxcam.explain(model, x, "gradcam", layer="relu", preprocessed=True)
    for which in ("combined", "morf", "lerf"):
        for noise in (0.0, 0.01):
            opts = dict(which=which, noise=noise, percentiles=(10, 50, 90), batch_size=4)
            one = road(model, x, cams, workers=1, **opts)
            np.testing.assert_allclose(road(model, x, cams, workers=3, **opts), one, atol=1e-6)
    np.testing.assert_allclose(road(model, x, cams, [1, 0, 2], workers=2), road(model, x, cams, [1, 0, 2], workers=1),
                               atol=1e-6)
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="workers must be a positive int"):
            road(model, x, cams, workers=bad)
