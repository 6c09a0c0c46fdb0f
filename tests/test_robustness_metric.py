"""jaxcam.metrics.robustness: RBO by hand and against the `rbo` package, region scores, Quickshift regions, and
the Consistency / Responsiveness / RM summary (methods.md section 1, including the property tests of 1.5)."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcam.errors import ImageDtypeError, ImageError, ImageShapeError, MapError, UnknownNameError
from jaxcam.metrics.statistics import bootstrap_ci
from jaxcam.table import Table

rob = importlib.import_module("jaxcam.metrics.robustness")


def _scores(ranking, size=None):
    """Scores whose descending order is ``ranking`` (best item first), padded with zeros to ``size``."""
    size = len(ranking) if size is None else size
    s = np.zeros(size, np.float32)
    s[np.asarray(ranking)] = np.arange(len(ranking), 0, -1)
    return s


_jrbo = jax.jit(rob.rbo)  # m, p and depth traced: one compilation per M


def _rbo(ranking_a, ranking_b, p=0.9, depth=None):
    return float(_jrbo(_scores(ranking_a), _scores(ranking_b), len(ranking_a), p=p, depth=depth))


# -- RBO: closed form ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 2, 7, 40])
@pytest.mark.parametrize("p", [0.5, 0.9, 0.98])
def test_rbo_identical_is_exactly_one(m, p):
    r = np.random.default_rng(m).permutation(m)
    assert _rbo(r, r, p) == 1.0


# RBO_ext = A_m p^m + (1 - p)/p sum_{d<=m} A_d p^d, with A_d = X_d / d (Webber et al. 2010, eq. 32):
#   m=3 reversed, p=0.9: A = (0, 1/2, 1)  -> 0.729 + (1/9)(0 + 0.5*0.81 + 0.729)        = 0.855
#   m=3 top two swapped: A = (0, 1, 1)    -> 0.729 + (1/9)(0.81 + 0.729)                = 0.9
#   m=2 reversed, p=0.9: A = (0, 1)       -> 0.81 + (1/9)(0.81)                         = 0.9
#   m=4 reversed, p=0.5: A = (0, 0, 2/3, 1) -> 1/16 + (1)(2/3 * 1/8 + 1/16)            = 5/24
#   m=3 reversed, depth 2, p=0.9: A_2 p^2 + (1/9)(0 + 0.5*0.81) = 0.405 + 0.045         = 0.45
#   m=5, a = (0, 1, 2, 3, 4), b = (2, 3, 4, 0, 1), p=0.9: A = (0, 0, 1/3, 3/4, 1)
#     -> 0.59049 + (1/9)(0.729/3 + 0.6561*3/4 + 0.59049) = 0.59049 + 1.325565/9         = 0.737775
HAND = [
    ((0, 1, 2), (2, 1, 0), 0.9, None, 0.855),
    ((0, 1, 2), (1, 0, 2), 0.9, None, 0.9),
    ((0, 1), (1, 0), 0.9, None, 0.9),
    ((0, 1, 2, 3), (3, 2, 1, 0), 0.5, None, 5 / 24),
    ((0, 1, 2), (2, 1, 0), 0.9, 2, 0.45),
    ((0, 1, 2, 3, 4), (2, 3, 4, 0, 1), 0.9, None, 0.737775),
]


@pytest.mark.parametrize("a, b, p, depth, expected", HAND)
def test_rbo_hand_cases(a, b, p, depth, expected):
    assert _rbo(a, b, p, depth) == pytest.approx(expected, abs=1e-6)
    assert _rbo(b, a, p, depth) == pytest.approx(expected, abs=1e-6)  # symmetric


def test_rbo_ties_broken_by_index():
    # [1, 1, 0] ranks (0, 1, 2) and [0, 1, 1] ranks (1, 2, 0) (ties: lower index first):
    # A = (0, 1/2, 1) -> 0.729 + (1/9)(0.5*0.81 + 0.729) = 0.855
    got = float(_jrbo(jnp.array([1.0, 1.0, 0.0]), jnp.array([0.0, 1.0, 1.0]), 3))
    assert got == pytest.approx(0.855, abs=1e-6)
    flat = jnp.zeros(6)
    assert float(_jrbo(flat, _scores([0, 1, 2, 3, 4, 5]), 6)) == 1.0  # all tied: index order
    assert float(_jrbo(flat, -0.0 * jnp.ones(6), 6)) == 1.0  # -0.0 ties 0.0


def test_rbo_padding_ignored():
    """Entries m..M-1 are padding: any scores there (large, inf, NaN) leave the value unchanged, at any depth."""
    rng = np.random.default_rng(1)
    f = _batched_rbo(True)
    for m in (1, 4, 13):
        a, b = rng.random(m).astype(np.float32), rng.random(m).astype(np.float32)
        depths = np.array([m, 3, 1], np.int32)
        ref = np.asarray(f(np.stack([a] * 3), np.stack([b] * 3), np.full(3, m, np.int32), np.full(3, 0.9, np.float32),
                           depths))
        fills = [rng.random(9) * 10 - 5, np.full(9, np.inf), np.full(9, np.nan)]
        pa = np.stack([np.concatenate([a, fill]) for fill in fills for _ in depths]).astype(np.float32)
        pb = np.stack([np.concatenate([b, rng.permutation(fill)]) for fill in fills for _ in depths]).astype(np.float32)
        got = np.asarray(f(pa, pb, np.full(9, m, np.int32), np.full(9, 0.9, np.float32), np.tile(depths, 3)))
        np.testing.assert_array_equal(got, np.tile(ref, 3))


def test_rbo_degenerate_and_errors():
    assert np.isnan(float(_jrbo(jnp.ones(4), jnp.ones(4), 0)))
    assert float(_jrbo(jnp.ones(4), jnp.ones(4), 9)) == 1.0  # m is clipped to M
    with pytest.raises(ValueError, match="p must lie"):
        rob.rbo(jnp.ones(3), jnp.ones(3), 3, p=1.0)
    with pytest.raises(ValueError, match="depth"):
        rob.rbo(jnp.ones(3), jnp.ones(3), 3, depth=0)
    with pytest.raises(MapError):
        rob.rbo(jnp.ones(3), jnp.ones(4), 3)


@functools.lru_cache(maxsize=None)
def _batched_rbo(with_depth: bool):
    if with_depth:
        return jax.jit(jax.vmap(lambda a, b, m, p, k: rob.rbo(a, b, m, p=p, depth=k)))
    return jax.jit(jax.vmap(lambda a, b, m, p: rob.rbo(a, b, m, p=p)))


@pytest.mark.parametrize("m", [1, 2, 5, 17, 60])
def test_rbo_matches_rbo_package(m):
    """Our RBO_ext equals rbo.RankingSimilarity(a, b).rbo_ext(p) (the package's eq. 32 implementation) on random
    rankings; at depth k it equals the package's rbo_ext of the top-k lists and its rbo(k, p, ext=True)."""
    rbo_pkg = pytest.importorskip("rbo")
    rng = np.random.default_rng(m)
    ps = np.array([0.5, 0.9, 0.98] * 4)
    rankings = [(rng.permutation(m), rng.permutation(m)) for _ in ps]
    rankings[0] = (np.arange(m), np.arange(m)[::-1])
    rankings[1] = (np.arange(m), np.arange(m))
    a = np.stack([_scores(x) for x, _ in rankings])
    b = np.stack([_scores(y) for _, y in rankings])
    ms = np.full(len(ps), m, np.int32)
    ours = np.asarray(_batched_rbo(False)(a, b, ms, ps.astype(np.float32)))
    ref = [rbo_pkg.RankingSimilarity(list(x), list(y)).rbo_ext(p) for (x, y), p in zip(rankings, ps)]
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    ks = rng.integers(1, m + 1, len(ps)).astype(np.int32)
    ours_k = np.asarray(_batched_rbo(True)(a, b, ms, ps.astype(np.float32), ks))
    ref_k = [rbo_pkg.RankingSimilarity(list(x[:k]), list(y[:k])).rbo_ext(p) for (x, y), p, k in zip(rankings, ps, ks)]
    ref_k2 = [rbo_pkg.RankingSimilarity(list(x), list(y)).rbo(int(k), p, ext=True)
              for (x, y), p, k in zip(rankings, ps, ks)]
    np.testing.assert_allclose(ours_k, ref_k, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours_k, ref_k2, atol=1e-5, rtol=0)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=12), st.data())
def test_rbo_properties(values, data):
    """Tied integer scores: in [0, 1], symmetric, 1 against itself, and equal to the package on the tie-broken
    (stable) rankings, with padding in a batch of static size 16."""
    rbo_pkg = pytest.importorskip("rbo")
    m = len(values)
    other = data.draw(st.lists(st.integers(0, 3), min_size=m, max_size=m))
    a = np.zeros(16, np.float32)
    b = np.full(16, 7.0, np.float32)
    a[:m], b[:m] = values, other
    f = _batched_rbo(False)
    got = np.asarray(f(np.stack([a, b, a]), np.stack([b, a, a]), np.full(3, m, np.int32), np.full(3, 0.9, np.float32)))
    assert 0 <= got[0] <= 1 and got[0] == pytest.approx(got[1], abs=1e-6) and got[2] == 1.0
    ra = list(np.argsort(-a[:m], kind="stable"))
    rb = list(np.argsort(-b[:m], kind="stable"))
    assert got[0] == pytest.approx(rbo_pkg.RankingSimilarity(ra, rb).rbo_ext(0.9), abs=1e-5)


def test_rbo_jit_vmap_equal_eager_without_recompiling():
    rng = np.random.default_rng(3)
    a, b = rng.random((6, 20)).astype(np.float32), rng.random((6, 20)).astype(np.float32)
    ms = np.array([1, 3, 8, 20, 20, 11], np.int32)
    ps = np.array([0.9, 0.5, 0.9, 0.98, 0.7, 0.9], np.float32)
    ks = np.array([1, 2, 8, 5, 20, 30], np.int32)
    eager = [float(rob.rbo(a[i], b[i], int(ms[i]), p=float(ps[i]), depth=int(ks[i]))) for i in range(6)]
    np.testing.assert_allclose(np.asarray(_batched_rbo(True)(a, b, ms, ps, ks)), eager, atol=1e-6)
    f = jax.jit(lambda a, b, m, p, k: rob.rbo(a, b, m, p=p, depth=k))
    for i in range(6):
        assert float(f(a[i], b[i], ms[i], ps[i], ks[i])) == pytest.approx(eager[i], abs=1e-6)
    assert f._cache_size() == 1  # m, p and depth are traced: one compilation


# -- region scores and Quickshift -------------------------------------------------------------------------------

@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_region_scores_match_numpy_loop(reduce):
    rng = np.random.default_rng(4)
    cam = rng.random((3, 9, 11)).astype(np.float32)
    labels = rng.integers(0, 5, (3, 9, 11)).astype(np.int32)
    f = jax.jit(jax.vmap(lambda c, lab: rob.region_scores(c, lab, 8, reduce)))
    got = np.asarray(f(cam, labels))
    for n in range(3):
        for j in range(8):
            sel = cam[n][labels[n] == j]
            ref = 0.0 if sel.size == 0 else (sel.mean() if reduce == "mean" else sel.sum())
            assert got[n, j] == pytest.approx(ref, abs=1e-5)
    with pytest.raises(UnknownNameError):
        rob.region_scores(cam[0], labels[0], 8, "max")
    with pytest.raises(MapError):
        rob.region_scores(cam[0], labels[0, :3], 8)


def _images(n=2, size=32, seed=5, blocks=4):
    """Piecewise-constant colour blocks plus a little noise, in [0, 1]."""
    rng = np.random.default_rng(seed)
    colours = rng.random((n, blocks, blocks, 3))
    img = np.repeat(np.repeat(colours, size // blocks, axis=1), size // blocks, axis=2)
    return np.clip(img + 0.02 * rng.standard_normal(img.shape), 0, 1)


def _regions(x):
    """Quickshift with a small kernel: on these small block images LIME's defaults merge everything."""
    return rob.quickshift_regions(x, kernel_size=2, max_dist=10)


def test_quickshift_regions_consecutive_and_deterministic():
    from skimage.segmentation import quickshift

    x = _images()
    labels, counts = _regions(x)
    assert labels.shape == (2, 32, 32) and labels.dtype == np.int32 and counts.dtype == np.int32
    for n in range(2):
        flat = labels[n].ravel()
        assert set(np.unique(flat)) == set(range(counts[n])) and counts[n] > 1
        first = [np.flatnonzero(flat == j)[0] for j in range(counts[n])]
        assert first == sorted(first)  # numbered by first raster occurrence
        raw = quickshift(x[n], ratio=0.2, kernel_size=2, max_dist=10, rng=0).ravel()
        pairs = set(zip(raw.tolist(), flat.tolist()))
        assert len(pairs) == len(set(raw.tolist())) == counts[n]  # the same partition, relabelled
    again = _regions(x)
    np.testing.assert_array_equal(again[0], labels)
    np.testing.assert_array_equal(again[1], counts)


def test_quickshift_regions_lime_defaults_on_a_photo():
    from skimage import data

    photo = data.astronaut()[::4, ::4][None, :112, :112] / 255.0
    labels, counts = rob.quickshift_regions(photo)
    assert 5 < counts[0] < 200 and labels.max() == counts[0] - 1


def test_quickshift_regions_validates_input():
    x = _images(1)
    with pytest.raises(ImageShapeError, match=r"images\[None\]"):
        rob.quickshift_regions(x[0])
    with pytest.raises(ImageDtypeError, match="255"):
        rob.quickshift_regions((x * 255).astype(np.uint8))
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        rob.quickshift_regions(x * 255)


# -- similarities -------------------------------------------------------------------------------------------------

def _maps(n, shape, seed):
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(rob.ROBUSTNESS_SIMILARITIES))
def test_every_similarity_runs_under_jit_vmap(name):
    x = _images(3, 16)
    labels, counts = _regions(x)
    a, b = _maps(3, (16, 16), 6), _maps(3, (16, 16), 7)
    fn = rob.ROBUSTNESS_SIMILARITIES[name]
    opts = {"num_regions": int(counts.max())} if name == "rbo" else {}
    batched = jax.jit(jax.vmap(functools.partial(fn, **opts)))(a, b, labels, counts)
    single = jax.jit(functools.partial(fn, **opts))
    eager = [float(single(a[i], b[i], labels[i], counts[i])) for i in range(3)]
    assert batched.shape == (3,)
    np.testing.assert_allclose(np.asarray(batched), eager, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rob.robustness_similarity(name, a, b, labels, counts)), eager, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rob.robustness_similarity(name, a, b, labels, counts, batch_size=2)),
                               eager, atol=1e-5)
    same = np.asarray(rob.robustness_similarity(name, a, a, labels, counts))
    np.testing.assert_allclose(same, 1.0, atol=1e-6)


def test_rbo_regions_is_rbo_of_region_means_and_ignores_num_regions():
    x = _images(2, 32, seed=8)
    labels, counts = _regions(x)
    a, b = _maps(2, (32, 32), 9), _maps(2, (32, 32), 10)
    got = np.asarray(rob.robustness_similarity("rbo", a, b, labels, counts))
    for n in range(2):
        m = int(counts[n])
        ra = np.array([a[n][labels[n] == j].mean() for j in range(m)], np.float32)
        rb = np.array([b[n][labels[n] == j].mean() for j in range(m)], np.float32)
        assert got[n] == pytest.approx(float(_jrbo(ra, rb, m)), abs=1e-6)
    wide = np.asarray(rob.robustness_similarity("rbo", a, b, labels, counts, num_regions=200))
    np.testing.assert_array_equal(wide, got)


def test_robustness_similarity_errors():
    labels = np.zeros((2, 8, 8), np.int32)
    a = _maps(2, (8, 8), 0)
    with pytest.raises(UnknownNameError, match="rbo"):
        rob.robustness_similarity("kendall", a, a, labels, np.ones(2, np.int32))
    with pytest.raises(MapError, match="outside"):
        rob.robustness_similarity("rbo", a, a, labels + 1, np.ones(2, np.int32))
    bad = a.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(MapError, match="NaN"):
        rob.robustness_similarity("rbo", bad, a, labels, np.ones(2, np.int32))


# -- Consistency, Responsiveness, RM ------------------------------------------------------------------------------

RHO = np.array([0.9, 0.8, 1.0, 0.3, 0.5])
CHANGED = np.array([False, False, False, True, True])


def test_summarise_hand_example():
    out = rob.summarise(RHO, CHANGED)
    # C = mean(0.9, 0.8, 1.0) = 0.9; Rsp = mean(0.7, 0.5) = 0.6; RM = 0.54; harmonic 2*0.54/1.5 = 0.72
    assert out == pytest.approx(dict(n_unchanged=3, n_changed=2, n_nan=0, consistency=0.9, responsiveness=0.6,
                                     rm=0.54))
    assert rob.summarise(RHO, CHANGED, combine="harmonic")["rm"] == pytest.approx(0.72)
    assert rob.summarise(RHO, CHANGED.astype(int), combine=lambda c, r: c / (2 - r))["rm"] == pytest.approx(0.9 / 1.4)
    with pytest.raises(UnknownNameError):
        rob.summarise(RHO, CHANGED, combine="sum")


def test_summarise_empty_sets_are_nan_with_counts():
    none = rob.summarise(RHO, np.zeros(5, bool), key=0)
    assert (none["n_unchanged"], none["n_changed"]) == (5, 0)
    assert none["consistency"] == pytest.approx(0.7)
    assert all(np.isnan(none[k]) for k in ("responsiveness", "rm", "responsiveness_low", "rm_high"))
    assert np.isfinite(none["consistency_low"])
    every = rob.summarise(RHO, np.ones(5, bool))
    assert (every["n_unchanged"], every["n_changed"]) == (0, 5)
    assert np.isnan(every["consistency"]) and np.isnan(every["rm"])
    with_nan = rob.summarise(np.array([np.nan, 0.5, 0.4]), np.array([False, False, True]))
    assert with_nan["n_nan"] == 1 and with_nan["n_unchanged"] == 1 and with_nan["consistency"] == 0.5


def test_summarise_bootstrap_intervals():
    rng = np.random.default_rng(11)
    rho = rng.beta(5, 2, 200)
    changed = rng.random(200) < 0.3
    key = jax.random.key(3)
    out = rob.summarise(rho, changed, key=key, n_resamples=500)
    for name in ("consistency", "responsiveness", "rm"):
        assert out[f"{name}_low"] < out[name] < out[f"{name}_high"]
    assert rob.summarise(rho, changed, key=key, n_resamples=500) == out
    assert rob.summarise(rho, changed, key=4, n_resamples=500)["rm_low"] != out["rm_low"]
    # C's interval is bootstrap_ci on the unchanged pairs with fold_in(key, 0), Rsp's on 1 - rho with fold_in(key, 1)
    c = bootstrap_ci(rho[~changed], jax.random.fold_in(key, 0), n_resamples=500)
    r = bootstrap_ci(1 - rho[changed], jax.random.fold_in(key, 1), n_resamples=500)
    assert (out["consistency_low"], out["consistency_high"]) == (c.low, c.high)
    assert (out["responsiveness_low"], out["responsiveness_high"]) == (r.low, r.high)


def test_summary_table_groups():
    methods = ["gradcam"] * 5 + ["eigencam"] * 5
    table = Table({"method": methods, "noise": ["gaussian"] * 10, "severity": [1] * 10,
                   "rho": np.concatenate([RHO, RHO[::-1]]), "changed": np.concatenate([CHANGED, CHANGED])})
    out = rob.summary_table(table, key=1, n_resamples=200)
    assert out["method"].tolist() == ["gradcam", "eigencam"]
    assert out.columns[:9] == ["method", "noise", "severity", "n_unchanged", "n_changed", "n_nan", "consistency",
                               "responsiveness", "rm"]
    row = out.rows()[0]
    assert (row["consistency"], row["responsiveness"], row["rm"]) == pytest.approx((0.9, 0.6, 0.54))
    key = jax.random.key(1)
    second = rob.summarise(RHO[::-1], CHANGED, key=jax.random.fold_in(key, 1), n_resamples=200)
    assert out.rows()[1] == {"method": "eigencam", "noise": "gaussian", "severity": 1, **second}
    plain = rob.summary_table(table, by="method")
    assert "rm_low" not in plain.columns and len(plain) == 2


# -- property tests of methods.md 1.5 -----------------------------------------------------------------------------

def test_properties_identity_random_and_monotone():
    x = _images(4, 48, seed=12, blocks=6)
    labels, counts = _regions(x)
    assert counts.min() > 20
    clean = _maps(4, (48, 48), 13)
    lab, cnt = np.tile(labels, (8, 1, 1)), np.tile(counts, 8)
    cl = np.tile(clean, (8, 1, 1))
    changed = np.arange(32) % 3 == 0
    # 1. identity perturbation: rho = 1 exactly, so C = 1 (and Rsp = 0 on any "changed" pair)
    same = rob.robustness_similarity("rbo", cl, cl, lab, cnt)
    ident = rob.summarise(np.asarray(same), changed)
    assert ident["consistency"] == 1.0 and ident["responsiveness"] == 0.0 and ident["rm"] == 0.0
    # 2. i.i.d. random maps: C = E[RBO(random, random)], well below 1, and Rsp ~ 1 - C
    noisy = _maps(32, (48, 48), 14)
    rand = rob.summarise(np.asarray(rob.robustness_similarity("rbo", cl, noisy, lab, cnt)), changed)
    assert rand["consistency"] < 0.7
    assert rand["responsiveness"] == pytest.approx(1 - rand["consistency"], abs=0.15)
    # 4. controlled noise: mean rho falls (so C falls and Rsp rises) as the noise level grows
    rng = np.random.default_rng(15)
    eps = rng.standard_normal(cl.shape).astype(np.float32)
    means = [float(np.mean(np.asarray(rob.robustness_similarity("rbo", cl, cl + s * eps, lab, cnt))))
             for s in (0.0, 0.02, 0.1, 0.5)]
    assert means[0] == 1.0 and means == sorted(means, reverse=True) and means[-1] < means[1]
