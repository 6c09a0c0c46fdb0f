"""jaxcam.metrics.similarity against scipy and scikit-image, on random and tied maps of several (non-square) sizes."""

import functools
import importlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from skimage.feature import hog as sk_hog
from skimage.metrics import structural_similarity

from jaxcam.errors import JaxcamError, MapError, UnknownNameError
# the module, by its full name: jaxcam.metrics may export the function ``similarity`` under the same name
sim = importlib.import_module("jaxcam.metrics.similarity")

SIZES = [(7, 9), (33, 48), (64, 80)]
HOG_SIZES = [(48, 64), (50, 70), (72, 56)]
TOL = 2e-5


def _pairs(shape, seed=0):
    """(random, random), (tied, tied), (tied, random) pairs of float32 maps in [0, 1]."""
    rng = np.random.default_rng(seed)
    a = rng.random(shape).astype(np.float32)
    b = np.clip(a + 0.7 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    ta = (np.round(a * 4) / 4).astype(np.float32)  # heavy ties, including at 0 and 1
    tb = (np.round(b * 3) / 3).astype(np.float32)
    return [(a, b), (ta, tb), (ta, b)]


def _ours(name, pairs, **kw):
    """Our values for a list of (a, b) pairs, through the batch wrapper (one compiled program per call)."""
    return np.asarray(sim.similarity(name, np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs]), **kw))


@functools.lru_cache(maxsize=None)
def _hog_batch(**kw):
    return jax.jit(jax.vmap(functools.partial(sim.hog, **kw)))


def _scipy(fn, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(x.ravel().astype(np.float64), y.ravel().astype(np.float64))[0]


# -- agreement with the references ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SIZES)
def test_ranks_match_scipy_rankdata(shape):
    for a, _ in _pairs(shape):
        np.testing.assert_array_equal(np.asarray(sim.ranks(a)), scipy.stats.rankdata(a.ravel(), method="average"))


@pytest.mark.parametrize("shape", SIZES)
def test_spearman_and_pearson_match_scipy(shape):
    pairs = _pairs(shape)
    np.testing.assert_allclose(_ours("spearman", pairs), [_scipy(scipy.stats.spearmanr, a, b) for a, b in pairs],
                               atol=TOL)
    np.testing.assert_allclose(_ours("pearson", pairs), [_scipy(scipy.stats.pearsonr, a, b) for a, b in pairs],
                               atol=TOL)


def test_spearman_abs_uses_absolute_values():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((20, 30)).astype(np.float32)  # signed, as raw maps are
    b = (a + rng.standard_normal((20, 30))).astype(np.float32)
    ref = _scipy(scipy.stats.spearmanr, np.abs(a), np.abs(b))
    assert float(sim.spearman_abs(a, b)) == pytest.approx(ref, abs=TOL)
    assert abs(float(sim.spearman_abs(a, b)) - float(sim.spearman(a, b))) > 1e-3
    pos_a, pos_b = np.abs(a), np.abs(b)  # for non-negative maps the two agree
    assert float(sim.spearman_abs(pos_a, pos_b)) == pytest.approx(float(sim.spearman(pos_a, pos_b)), abs=1e-7)


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("kw", [{}, {"data_range": 2.0}, {"win_size": 5, "use_sample_covariance": False}])
def test_ssim_uniform_matches_skimage(shape, kw):
    pairs = _pairs(shape)
    ref = [structural_similarity(a, b, **{"data_range": 1.0, **kw}) for a, b in pairs]
    np.testing.assert_allclose(_ours("ssim", pairs, **kw), ref, atol=TOL)


@pytest.mark.parametrize("shape", SIZES[1:])
@pytest.mark.parametrize("kw", [{}, {"use_sample_covariance": False}, {"sigma": 1.0, "data_range": 2.0}])
def test_ssim_gaussian_matches_skimage(shape, kw):
    pairs = _pairs(shape, seed=1)
    ref = [structural_similarity(a, b, gaussian_weights=True, **{"data_range": 1.0, **kw}) for a, b in pairs]
    np.testing.assert_allclose(_ours("ssim", pairs, gaussian_weights=True, **kw), ref, atol=TOL)


@pytest.mark.parametrize("shape", HOG_SIZES[1:])
@pytest.mark.parametrize("cells,block,norm", [((8, 8), (3, 3), "L2-Hys"), ((16, 16), (3, 3), "L2-Hys"),
                                              ((7, 7), (2, 2), "L1"), ((8, 6), (2, 3), "L2"), ((8, 8), (2, 2), "L1-sqrt")])
def test_hog_matches_skimage(shape, cells, block, norm):
    maps = np.stack([m for pair in _pairs(shape, seed=2)[:2] for m in pair])
    ours = np.asarray(_hog_batch(pixels_per_cell=cells, cells_per_block=block, block_norm=norm)(maps))
    for o, m in zip(ours, maps):
        ref = sk_hog(m, pixels_per_cell=cells, cells_per_block=block, block_norm=norm)
        assert o.shape == ref.shape
        np.testing.assert_allclose(o, ref, atol=1e-5)


@pytest.mark.parametrize("shape", HOG_SIZES)
def test_hog_correlations_match_reference(shape):
    pairs = _pairs(shape, seed=4)
    hp, hs = _ours("hog_pearson", pairs), _ours("hog_spearman", pairs)
    small = _ours("hog_pearson", pairs, pixels_per_cell=(8, 8))
    ours16 = _hog_batch(pixels_per_cell=(16, 16))
    for i, (a, b) in enumerate(pairs):
        ha, hb = sk_hog(a, pixels_per_cell=(16, 16)), sk_hog(b, pixels_per_cell=(16, 16))  # Adebayo et al.'s call
        assert hp[i] == pytest.approx(_scipy(scipy.stats.pearsonr, ha, hb), abs=TOL)
        oa, ob = np.asarray(ours16(np.stack([a, b])))
        assert hs[i] == pytest.approx(_scipy(scipy.stats.spearmanr, oa, ob), abs=TOL)
        # HOG features tie at the L2-Hys clip (0.2): float32 vs float64 rounding can split or merge such ties
        assert hs[i] == pytest.approx(_scipy(scipy.stats.spearmanr, ha, hb), abs=1e-3)
        ref8 = _scipy(scipy.stats.pearsonr, sk_hog(a, pixels_per_cell=(8, 8)), sk_hog(b, pixels_per_cell=(8, 8)))
        assert small[i] == pytest.approx(ref8, abs=TOL)


def _topk_reference(a, b, fraction):
    n = a.size
    k = max(1, round(fraction * n))
    top = lambda x: set(np.argsort(-x.ravel(), kind="stable")[:k].tolist())  # noqa: E731 (ties: lower index)
    ta, tb = top(a), top(b)
    return len(ta & tb) / len(ta | tb)


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5])
def test_topk_iou_matches_numpy_with_ties(shape, fraction):
    pairs = _pairs(shape)
    np.testing.assert_allclose(_ours("topk_iou", pairs, fraction=fraction),
                               [_topk_reference(a, b, fraction) for a, b in pairs], atol=1e-6)


def test_topk_iou_values():
    a = np.arange(100, dtype=np.float32).reshape(10, 10)
    assert float(sim.topk_iou(a, a, 0.1)) == 1.0
    assert float(sim.topk_iou(a, -a, 0.1)) == 0.0
    assert float(sim.topk_iou(a, 100 - a, 0.5)) == 0.0
    zeros = np.zeros((10, 10), np.float32)  # ties broken by position: the first k pixels
    first = np.zeros((10, 10), np.float32)
    first[0, :] = 1
    assert float(sim.topk_iou(zeros, first, 0.1)) == 1.0
    assert sim.topk_count(100, 0.1) == 10 and sim.topk_count(100, 0.001) == 1


@pytest.mark.parametrize("shape", SIZES)
def test_normalised_l1(shape):
    pairs = _pairs(shape)
    n = lambda x: (x - x.min()) / (x.max() - x.min())  # noqa: E731
    np.testing.assert_allclose(_ours("normalised_l1", pairs), [np.mean(np.abs(n(a) - n(b))) for a, b in pairs],
                               atol=1e-6)
    assert _ours("normalised_l1", [(a, 3 * a + 2) for a, _ in pairs]) == pytest.approx(0.0, abs=1e-6)


# -- degenerate inputs ------------------------------------------------------------------------------------------

def test_constant_maps_give_the_documented_value_never_nan():
    rng = np.random.default_rng(5)
    r = rng.random((48, 64)).astype(np.float32)
    zero, const = np.zeros((48, 64), np.float32), np.full((48, 64), 0.3, np.float32)
    pairs = [(zero, r), (r, const), (zero, zero), (const, const), (zero, const)]
    for name in ("spearman", "spearman_abs", "pearson", "hog_pearson", "hog_spearman"):
        assert _ours(name, pairs).tolist() == [sim.CONSTANT_VALUE] * 5 and sim.CONSTANT_VALUE == 0.0
    for name in ("spearman", "hog_pearson"):
        assert _ours(name, pairs, constant_value=-2.0).tolist() == [-2.0] * 5
    for name in ("ssim", "topk_iou", "normalised_l1"):
        assert np.isfinite(_ours(name, pairs)).all()
    assert _ours("ssim", pairs)[2:4].tolist() == [1.0, 1.0]  # identical maps, constant or not
    assert float(sim.normalised_l1(zero, const)) == 0.0  # both normalise to all zeros
    tiny = np.full((7, 9), 0.1, np.float32)  # a constant map whose float32 mean is not exactly 0.1
    assert float(sim.pearson(tiny, r[:7, :9])) == 0.0


def test_two_pixel_maps_and_perfect_correlations():
    a = np.array([[0.0, 1.0]], np.float32)
    assert float(sim.spearman(a, a)) == 1.0 and float(sim.spearman(a, -a)) == -1.0
    assert float(sim.pearson(a, 2 * a + 1)) == pytest.approx(1.0)


# -- transformations: jit, vmap, batches --------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(sim.SIMILARITIES))
def test_eager_jit_vmap_and_loop_agree(name):
    rng = np.random.default_rng(7)
    a = rng.random((4, 48, 50)).astype(np.float32)
    b = np.clip(a + 0.5 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    b[1] = 0.0  # a degenerate member does not disturb the others
    a[2] = np.round(a[2] * 3) / 3  # nor does a tied one
    fn = sim.SIMILARITIES[name]
    one = jax.jit(fn)
    loop = np.array([float(one(a[i], b[i])) for i in range(4)])
    assert float(fn(a[2], b[2])) == pytest.approx(loop[2], abs=1e-6)  # eager == jit
    batched = np.asarray(sim.similarity(name, a, b))  # vmap under jit == loop
    assert batched.shape == (4,)
    np.testing.assert_allclose(batched, loop, atol=1e-6)


@pytest.mark.parametrize("name", ["spearman", "hog_pearson"])
def test_chunked_batches_equal_vmapped(name):
    rng = np.random.default_rng(9)
    a, b = rng.random((2, 5, 48, 50)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(sim.similarity(name, a, b, batch_size=2)),
                               np.asarray(sim.similarity(name, a, b)), atol=1e-6)


def test_batch_wrapper_keywords_and_callables():
    rng = np.random.default_rng(8)
    a = rng.random((3, 32, 40)).astype(np.float32)
    b = rng.random((3, 32, 40)).astype(np.float32)
    got = np.asarray(sim.similarity("ssim", a, b, gaussian_weights=True, data_range=2.0))
    ref = [structural_similarity(a[i], b[i], gaussian_weights=True, data_range=2.0) for i in range(3)]
    np.testing.assert_allclose(got, ref, atol=TOL)
    got = np.asarray(sim.similarity("hog_pearson", a, b, pixels_per_cell=[8, 8]))  # a list is fine too
    assert got.shape == (3,) and np.isfinite(got).all()
    mse = lambda x, y: jnp.mean((x - y) ** 2)  # noqa: E731
    np.testing.assert_allclose(np.asarray(sim.similarity(mse, a, b)), ((a - b) ** 2).mean(axis=(1, 2)), rtol=1e-5)
    partial = functools.partial(sim.topk_iou, fraction=0.25)
    assert np.asarray(sim.similarity(partial, a, a)).tolist() == [1.0, 1.0, 1.0]


# -- errors ---------------------------------------------------------------------------------------------------------

def test_errors_name_the_problem():
    a = np.zeros((2, 16, 16), np.float32)
    with pytest.raises(UnknownNameError, match="'spearmann' for similarity; did you mean 'spearman'.*; valid names: 'spearman'"):
        sim.similarity("spearmann", a, a)
    with pytest.raises(ValueError):  # typed errors are also ValueErrors
        sim.similarity("nope", a, a)
    with pytest.raises(MapError, match=r"\(N, H, W\)"):
        sim.similarity("spearman", a[0], a[0])
    with pytest.raises(MapError, match="same shape"):
        sim.similarity("spearman", a, a[:, :8])
    with pytest.raises(MapError, match="same shape"):
        sim.spearman(a[0], a[0, :8])
    with pytest.raises(MapError):
        sim.pearson(a, a)  # per-example functions take one (H, W) pair
    bad = a.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(MapError):
        sim.similarity("ssim", bad, a)
    with pytest.raises(MapError, match="at least 48 rows"):
        sim.hog_pearson(a[0], a[0])
    with pytest.raises(MapError, match="window"):
        sim.ssim(np.zeros((5, 20), np.float32), np.zeros((5, 20), np.float32))
    with pytest.raises(ValueError, match="odd"):
        sim.ssim(a[0], a[0], win_size=4)
    with pytest.raises(ValueError, match="data_range"):
        sim.ssim(a[0], a[0], data_range=0.0)
    with pytest.raises(ValueError, match="fraction"):
        sim.topk_iou(a[0], a[0], 0.0)
    with pytest.raises(UnknownNameError, match="block_norm"):
        sim.hog(np.zeros((48, 48), np.float32), block_norm="L3")
    with pytest.raises(JaxcamError, match="at least 2 pixels"):
        sim.similarity("pearson", a[:, :1, :1], a[:, :1, :1])
    with pytest.raises(ValueError, match="batch_size"):
        sim.similarity("pearson", a, a, batch_size=0)
