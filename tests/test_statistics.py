"""jaxcam.metrics.statistics against scipy, Demšar's published tables and hand-computed examples."""

import math

import jax
import numpy as np
import pytest
from scipy import stats

from jaxcam.errors import JaxcamError
from jaxcam.metrics.statistics import (BootstrapResult, PivotError, StatisticsError, _indices, _nemenyi_table,
                                       bootstrap_ci, bootstrap_table, critical_difference, friedman, holm, kruskal,
                                       nemenyi, wilcoxon, wilcoxon_holm)
from jaxcam.table import Table

DEMSAR_Q05 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}


def long_table(scores, names, block="block", method="method", value="value"):
    return Table.from_rows([{block: f"img{i}", method: m, value: float(scores[i, j])}
                            for i in range(scores.shape[0]) for j, m in enumerate(names)])


# ------------------------------------------------------------------------------------------------------ Friedman


@pytest.mark.parametrize("shape", [(5, 3), (20, 4), (50, 7), (3, 10)])
@pytest.mark.parametrize("higher_is_better", [True, False])
def test_friedman_matches_scipy(rng, shape, higher_is_better):
    scores = rng.normal(size=shape)
    res = friedman(scores, higher_is_better=higher_is_better)
    ref = stats.friedmanchisquare(*scores.T)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12, abs=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10, abs=1e-15)
    assert (res.n, res.k, res.n_omitted) == (shape[0], shape[1], 0)


def test_friedman_ties_match_scipy(rng):
    for shape in [(12, 4), (30, 3), (8, 6)]:
        scores = rng.integers(0, 3, size=shape).astype(float)  # many ties
        res = friedman(scores)
        ref = stats.friedmanchisquare(*scores.T)
        assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
        assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)


def test_mean_ranks_best_is_one_and_ties_average():
    scores = np.array([[0.9, 0.5, 0.5], [0.8, 0.1, 0.3]])
    res = friedman(scores, names=["a", "b", "c"])
    assert res.ranks["method"].tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(res.ranks["mean_rank"], [1.0, (2.5 + 3) / 2, (2.5 + 2) / 2])
    assert res.ranks["n"].tolist() == [2, 2, 2]
    low = friedman(scores, names=["a", "b", "c"], higher_is_better=False)
    np.testing.assert_allclose(low.ranks["mean_rank"], 4 - res.ranks["mean_rank"])
    assert low.statistic == pytest.approx(res.statistic)


def test_friedman_two_methods_is_the_sign_test_chi_square(rng):
    # scipy refuses k = 2; without ties Friedman's statistic is then (wins - losses)^2 / n.
    scores = rng.normal(size=(25, 2))
    wins = int((scores[:, 0] > scores[:, 1]).sum())
    res = friedman(scores)
    assert res.statistic == pytest.approx((wins - (25 - wins)) ** 2 / 25)
    assert res.p_value == pytest.approx(stats.chi2.sf(res.statistic, 1))


def test_iman_davenport(rng):
    scores = rng.normal(size=(15, 5))
    res = friedman(scores)
    n, k, chi2 = 15, 5, res.statistic
    f = (n - 1) * chi2 / (n * (k - 1) - chi2)
    assert res.iman_davenport == pytest.approx(f)
    assert res.iman_davenport_p_value == pytest.approx(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))
    perfect = friedman(np.tile([3.0, 2.0, 1.0], (6, 1)))  # every block ranks the methods alike
    assert perfect.statistic == pytest.approx(6 * 2)
    assert (perfect.iman_davenport, perfect.iman_davenport_p_value) == (math.inf, 0.0)
    row = res.table.rows()
    assert len(row) == 1 and row[0]["test"] == "friedman" and row[0]["statistic"] == res.statistic


def test_all_identical_scores_give_nan_like_scipy():
    scores = np.ones((4, 3))
    res = friedman(scores)
    with np.errstate(invalid="ignore"):
        ref = stats.friedmanchisquare(*scores.T)
    assert math.isnan(ref.statistic) and math.isnan(res.statistic)
    assert math.isnan(res.p_value) and math.isnan(res.iman_davenport)
    np.testing.assert_allclose(res.ranks["mean_rank"], [2.0, 2.0, 2.0])
    assert not res.posthoc["significant"].any() and (res.posthoc["p_value"] == 1.0).all()


def test_degenerate_inputs_raise():
    with pytest.raises(StatisticsError, match="at least 2 methods"):
        friedman(np.ones((5, 1)))
    with pytest.raises(StatisticsError, match="at least 2 blocks"):
        friedman(np.ones((1, 4)))
    with pytest.raises(StatisticsError, match="2-D"):
        friedman(np.ones(4))
    with pytest.raises(StatisticsError, match="unique labels"):
        friedman(np.ones((3, 2)), names=["a", "a"])
    with pytest.raises(JaxcamError, match="nan_policy"):
        friedman(np.ones((3, 2)), nan_policy="propagate")
    with pytest.raises(StatisticsError, match="alpha"):
        friedman(np.ones((3, 2)), alpha=1.5)
    with pytest.raises(ValueError):  # StatisticsError is a ValueError too
        wilcoxon_holm(np.ones((5, 1)))


def test_nan_policy(rng):
    scores = rng.normal(size=(10, 3))
    scores[4, 1] = np.nan
    with pytest.raises(StatisticsError, match=r"block 4, method 'b'"):
        friedman(scores, names=["a", "b", "c"])
    with pytest.raises(StatisticsError, match=r"block 'img4', method 'b'"):
        friedman(long_table(scores, ["a", "b", "c"]))
    res = friedman(scores, names=["a", "b", "c"], nan_policy="omit")
    ref = friedman(np.delete(scores, 4, axis=0), names=["a", "b", "c"])
    assert (res.n, res.n_omitted) == (9, 1)
    assert res.statistic == ref.statistic and res.posthoc == ref.posthoc
    pairs = wilcoxon_holm(scores, nan_policy="omit")
    assert (pairs["n"] == 9).all()
    scores[:, 0] = np.nan
    with pytest.raises(StatisticsError, match="at least 2 blocks"):
        friedman(scores, nan_policy="omit")


# ------------------------------------------------------------------------------------------------------- Nemenyi


@pytest.mark.parametrize("k", sorted(DEMSAR_Q05))
def test_critical_difference_matches_demsar_table(k):
    n = 14
    se = math.sqrt(k * (k + 1) / (6 * n))
    assert critical_difference(k, n) / se == pytest.approx(DEMSAR_Q05[k], abs=1e-3)  # the table is given to 3 decimals


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_nemenyi_p_value_at_critical_difference_is_alpha(k, alpha):
    n = 20
    cd = critical_difference(k, n, alpha)
    mean_ranks = np.linspace(1, k, k)
    mean_ranks[1] = mean_ranks[0] + cd
    table = _nemenyi_table(mean_ranks, [str(j) for j in range(k)], n, alpha)
    assert table["p_value"][0] == pytest.approx(alpha, abs=1e-6)
    assert table["rank_diff"][0] == pytest.approx(-cd)


def test_nemenyi_table_shape_and_consistency(rng):
    names = ["a", "b", "c", "d", "e"]
    scores = rng.normal(size=(40, 5)) + np.array([0.0, 0.1, 0.5, 1.0, 1.5])
    res = friedman(scores, names=names)
    post = res.posthoc
    assert post.columns == ["method_a", "method_b", "mean_rank_a", "mean_rank_b", "rank_diff",
                            "critical_difference", "p_value", "significant"]
    assert len(post) == 10
    assert [(r["method_a"], r["method_b"]) for r in post.rows()][:4] == [("a", "b"), ("a", "c"), ("a", "d"),
                                                                        ("a", "e")]
    np.testing.assert_allclose(post["rank_diff"], post["mean_rank_a"] - post["mean_rank_b"])
    assert (post["critical_difference"] == res.critical_difference).all()
    assert post["significant"].tolist() == (post["p_value"] <= 0.05).tolist()
    assert post["significant"].any() and not post["significant"].all()
    assert post == nemenyi(scores, names=names)
    se = math.sqrt(5 * 6 / (6 * 40))
    expected = stats.studentized_range.sf(np.abs(post["rank_diff"]) / se * math.sqrt(2), 5, np.inf)
    np.testing.assert_allclose(post["p_value"], expected)
    # larger differences, smaller p
    order = np.argsort(np.abs(post["rank_diff"]))
    assert (np.diff(post["p_value"][order]) <= 1e-12).all()


def test_nemenyi_matches_scikit_posthocs(rng):
    sp = pytest.importorskip("scikit_posthocs")
    scores = rng.normal(size=(30, 4)) + np.array([0.0, 0.3, 0.6, 1.2])
    post = nemenyi(scores, higher_is_better=False)
    ref = np.asarray(sp.posthoc_nemenyi_friedman(scores), float)
    for r in post.rows():
        i, j = int(r["method_a"]), int(r["method_b"])
        assert r["p_value"] == pytest.approx(ref[i, j], rel=1e-6, abs=1e-9)


# ------------------------------------------------------------------------------------------------------ Wilcoxon


def test_holm_hand_example_and_monotone(rng):
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.001]), [0.5, 0.002])
    np.testing.assert_allclose(holm([0.4, 0.6]), [0.8, 0.8])
    p = rng.uniform(size=20) ** 3
    adj = holm(p)
    order = np.argsort(p)
    assert (np.diff(adj[order]) >= 0).all() and (adj >= p).all() and (adj <= 1).all()
    out = holm([0.01, np.nan, 0.02])  # NaN counts as a test, stays NaN
    np.testing.assert_allclose(out[[0, 2]], [0.03, 0.04])
    assert math.isnan(out[1])
    with pytest.raises(StatisticsError):
        holm([0.5, 1.5])


def test_wilcoxon_holm_matches_scipy(rng):
    names = ["gradcam", "scorecam", "layercam", "random"]
    scores = rng.normal(size=(25, 4)) + np.array([0.0, 0.2, 0.8, -0.5])
    table = wilcoxon_holm(scores, names=names)
    assert table.columns == ["method_a", "method_b", "n", "statistic", "p_value", "p_holm", "significant",
                             "median_diff"]
    assert len(table) == 6
    for r in table.rows():
        i, j = names.index(r["method_a"]), names.index(r["method_b"])
        ref = stats.wilcoxon(scores[:, i], scores[:, j])
        assert r["statistic"] == ref.statistic and r["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
        assert r["median_diff"] == pytest.approx(np.median(scores[:, i] - scores[:, j]))
        assert r["n"] == 25
    np.testing.assert_allclose(table["p_holm"], holm(table["p_value"]))
    assert table["significant"].tolist() == (table["p_holm"] <= 0.05).tolist()


def test_wilcoxon_options_pass_through(rng):
    a = np.round(rng.normal(size=30), 1)
    b = a + np.where(rng.uniform(size=30) < 0.3, 0.0, np.round(rng.normal(0.3, 0.5, size=30), 1))
    for zero_method in ["wilcox", "pratt", "zsplit"]:
        for m in ["auto", "asymptotic"]:
            row = wilcoxon(a, b, names=("x", "y"), zero_method=zero_method, wilcoxon_method=m).rows()[0]
            ref = stats.wilcoxon(a, b, zero_method=zero_method, method=m)
            assert (row["method_a"], row["method_b"], row["n"]) == ("x", "y", 30)
            assert row["statistic"] == ref.statistic and row["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    one = wilcoxon(a, b)
    assert one.columns == ["method_a", "method_b", "n", "statistic", "p_value", "significant", "median_diff"]
    pair = wilcoxon_holm(np.stack([a, b], axis=1), names=["a", "b"])
    assert one["p_value"][0] == pair["p_value"][0] == pair["p_holm"][0]
    with pytest.raises(StatisticsError, match="equal length"):
        wilcoxon(a, b[:-1])
    b[3] = np.nan
    with pytest.raises(StatisticsError, match="NaN"):
        wilcoxon(a, b)
    assert wilcoxon(a, b, nan_policy="omit")["n"][0] == 29


# ----------------------------------------------------------------------------------------------- Table input


def test_table_input_equals_array_input(rng):
    names = ["gradcam", "hirescam", "eigencam"]
    scores = rng.normal(size=(12, 3))
    table = long_table(scores, names, block="image", value="score")
    kw = dict(block="image", value="score")
    assert friedman(table, **kw) == friedman(scores, names=names)
    assert wilcoxon_holm(table, **kw) == wilcoxon_holm(scores, names=names)
    assert nemenyi(table, higher_is_better=False, **kw) == nemenyi(scores, names, higher_is_better=False)
    # rows in any order, extra columns ignored
    rows = table.rows()[::-1]
    shuffled = Table.from_rows([{**r, "metric": "road"} for r in rows])
    res = friedman(shuffled, **kw)
    assert res.statistic == pytest.approx(friedman(scores).statistic)
    # names select and order methods
    sub = friedman(table, names=["eigencam", "gradcam"], **kw)
    assert sub == friedman(scores[:, [2, 0]], names=["eigencam", "gradcam"])


def test_pivot_errors(rng):
    scores = rng.normal(size=(4, 3))
    table = long_table(scores, ["a", "b", "c"])
    rows = table.rows()
    with pytest.raises(PivotError, match=r"1 duplicate .*\('img1', 'b'\)") as e:
        friedman(Table.from_rows(rows + [rows[4]]))
    assert e.value.cells == (("img1", "b"),)
    with pytest.raises(PivotError, match=r"1 missing .*\('img2', 'c'\)") as e:
        friedman(Table.from_rows(rows[:8] + rows[9:]))
    assert isinstance(e.value, ValueError) and isinstance(e.value, JaxcamError)
    with pytest.raises(StatisticsError, match="no block column 'image'"):
        friedman(table, block="image")
    with pytest.raises(StatisticsError, match="not in column"):
        friedman(table, names=["a", "zzz"])


# ------------------------------------------------------------------------------------------------------- Kruskal


def test_kruskal_matches_scipy(rng):
    groups = {"a": rng.normal(size=10), "b": rng.normal(0.5, size=14), "c": rng.normal(1.0, size=7)}
    ref = stats.kruskal(*groups.values())
    out = kruskal(groups)
    assert out.columns == ["statistic", "p_value", "k", "n_total"]
    row = out.rows()[0]
    assert row["statistic"] == pytest.approx(ref.statistic) and row["p_value"] == pytest.approx(ref.pvalue)
    assert (row["k"], row["n_total"]) == (3, 31)
    assert kruskal(list(groups.values())) == out
    long = Table.from_rows([{"cam": g, "v": float(x)} for g, v in groups.items() for x in v][::-1])
    assert kruskal(long, method="cam", value="v").rows()[0]["statistic"] == pytest.approx(ref.statistic)


def test_kruskal_degenerate_and_nan(rng):
    with pytest.raises(StatisticsError, match="at least 2 groups"):
        kruskal([np.ones(3)])
    same = kruskal([np.ones(3), np.ones(4)]).rows()[0]
    assert math.isnan(same["statistic"]) and math.isnan(same["p_value"])  # as scipy
    with pytest.raises(StatisticsError, match="group 'b'"):
        kruskal({"a": [1.0, 2.0], "b": [np.nan, 3.0]})
    omitted = kruskal({"a": [1.0, 2.0], "b": [np.nan, 3.0, 4.0]}, nan_policy="omit").rows()[0]
    assert omitted["n_total"] == 4
    with pytest.raises(StatisticsError, match="empty"):
        kruskal({"a": [1.0, 2.0], "b": [np.nan]}, nan_policy="omit")


# ----------------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_deterministic_per_key(rng):
    x = rng.normal(size=200)
    a = bootstrap_ci(x, jax.random.key(3))
    assert isinstance(a, BootstrapResult)
    assert a == bootstrap_ci(x, jax.random.key(3)) == bootstrap_ci(x, 3)
    b = bootstrap_ci(x, jax.random.key(4))
    assert (a.low, a.high) != (b.low, b.high)
    assert a.estimate == b.estimate == pytest.approx(x.mean())
    assert bootstrap_ci(x, jax.random.PRNGKey(3)) == a  # legacy uint32 keys too
    estimate, low, high = a
    assert low < estimate < high
    assert a.table.columns == ["n", "n_nan", "estimate", "low", "high"]
    with pytest.raises(StatisticsError, match="key"):
        bootstrap_ci(x, None)
    with pytest.raises(JaxcamError, match="bootstrap method"):
        bootstrap_ci(x, 0, method="studentized")
    with pytest.raises(JaxcamError, match="bootstrap statistic"):
        bootstrap_ci(x, 0, statistic="mode")


def test_resample_indices_are_uniform_and_chunking_free():
    key = jax.random.key(5)
    whole = _indices(key, 1000, 0, 600)  # 600 000 words: three 2**18 blocks
    assert whole.shape == (600, 1000) and whole.min() == 0 and whole.max() == 999
    np.testing.assert_array_equal(whole[250:400], _indices(key, 1000, 250, 400))
    counts = np.bincount(whole.ravel(), minlength=1000)
    assert stats.chisquare(counts).pvalue > 1e-3
    assert not np.array_equal(_indices(jax.random.key(6), 1000, 0, 1), whole[:1])


def test_bootstrap_percentile_covers_mean_and_shrinks(rng):
    big = rng.normal(loc=2.0, size=10_000)
    small = big[:400]
    wide = bootstrap_ci(small, 0, n_resamples=2000)
    narrow = bootstrap_ci(big, 0, n_resamples=2000)
    assert narrow.low < 2.0 < narrow.high and wide.low < 2.0 < wide.high
    assert narrow.low < narrow.estimate < narrow.high
    ratio = (wide.high - wide.low) / (narrow.high - narrow.low)
    assert 4.0 < ratio < 6.0  # sqrt(10000 / 400) = 5
    # the width of a 95 % percentile CI of the mean is about 2 * 1.96 * sigma / sqrt(n)
    assert narrow.high - narrow.low == pytest.approx(2 * 1.96 / 100, rel=0.1)


@pytest.mark.parametrize("statistic", ["mean", "median"])
def test_bootstrap_bca_matches_scipy(rng, statistic):
    x = rng.lognormal(sigma=1.0, size=60)  # skewed
    ours = bootstrap_ci(x, 1, statistic=statistic, n_resamples=20_000, method="bca")
    ref = stats.bootstrap((x,), getattr(np, statistic), n_resamples=20_000, method="BCa",
                          rng=np.random.default_rng(1)).confidence_interval
    width = ref.high - ref.low
    assert abs(ours.low - ref.low) < 0.06 * width and abs(ours.high - ref.high) < 0.06 * width
    pct = bootstrap_ci(x, 1, statistic=statistic, n_resamples=20_000)
    assert (ours.low, ours.high) != (pct.low, pct.high)


def test_bootstrap_named_statistics_equal_callables(rng):
    x = rng.exponential(size=41)
    for name, f in [("mean", np.mean), ("median", np.median)]:
        for method in ["percentile", "bca"]:
            named = bootstrap_ci(x, 7, statistic=name, n_resamples=300, method=method)
            called = bootstrap_ci(x, 7, statistic=f, n_resamples=300, method=method)
            assert named.low == pytest.approx(called.low) and named.high == pytest.approx(called.high)
    x = x[:40]  # even length: the closed-form median jackknife again
    named = bootstrap_ci(x, 7, statistic="median", n_resamples=300, method="bca")
    called = bootstrap_ci(x, 7, statistic=lambda v: float(np.median(v)), n_resamples=300, method="bca")
    assert (named.low, named.high) == pytest.approx((called.low, called.high))


def test_bootstrap_nan_and_empty(rng):
    x = rng.normal(size=50)
    with_nan = np.concatenate([x, [np.nan] * 5])
    res = bootstrap_ci(with_nan, 0)
    assert (res.n, res.n_nan) == (50, 5)
    assert res == BootstrapResult(**{**res.__dict__, "n_nan": 5})
    assert (res.estimate, res.low, res.high) == tuple(bootstrap_ci(x, 0))
    empty = bootstrap_ci([np.nan, np.nan], 0)
    assert (empty.n, empty.n_nan) == (0, 2) and all(math.isnan(v) for v in empty)
    assert bootstrap_ci([], 0).n == 0
    one = bootstrap_ci([3.0], 0)
    assert tuple(one) == (3.0, 3.0, 3.0)
    assert math.isnan(bootstrap_ci([3.0, 3.0, 3.0], 0, method="bca").low)  # degenerate BCa, as scipy


def test_bootstrap_table(rng):
    rows = [{"method": m, "metric": t, "value": float(v)} for m in ["a", "b"] for t in ["road", "drop"]
            for v in rng.normal(size=30)]
    rows.append({"method": "b", "metric": "drop", "value": None})
    table = Table.from_rows(rows)
    out = bootstrap_table(table, ["method", "metric"], key=jax.random.key(0), n_resamples=200)
    assert out.columns == ["method", "metric", "n", "n_nan", "estimate", "low", "high"]
    assert [(r["method"], r["metric"]) for r in out.rows()] == [("a", "road"), ("a", "drop"), ("b", "road"),
                                                                ("b", "drop")]
    assert out["n"].tolist() == [30, 30, 30, 30] and out["n_nan"].tolist() == [0, 0, 0, 1]
    sub = table.where(method="b", metric="road")["value"].astype(float)
    direct = bootstrap_ci(sub, jax.random.fold_in(jax.random.key(0), 2), n_resamples=200)
    assert out.rows()[2]["low"] == direct.low and out.rows()[2]["estimate"] == pytest.approx(sub.mean())
    assert bootstrap_table(table, "method", key=0, n_resamples=200)["n"].tolist() == [60, 60]
