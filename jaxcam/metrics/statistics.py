"""Statistical comparison of CAM methods: Friedman + Nemenyi, Wilcoxon-Holm, Kruskal-Wallis, bootstrap CIs.

Input format
------------
The paired tests (:func:`friedman`, :func:`nemenyi`, :func:`wilcoxon_holm`) compare ``k`` methods evaluated on the
same ``n`` blocks (images, data sets, seeds, ...). They accept either

* a 2-D array ``scores`` of shape ``(n_blocks, k_methods)`` plus optional ``names`` (``k`` labels; default
  ``"0"``, ``"1"``, ...), or
* a tidy long-format :class:`~jaxcam.table.Table` with one row per (block, method) cell. Its columns are named
  ``block``, ``method`` and ``value`` by default; pass e.g. ``block="image"`` to use others. The table is pivoted
  here: every (block, method) pair must occur exactly once, otherwise :class:`PivotError` names the duplicate or
  missing cells. Methods and blocks keep their first-seen order; ``names`` given with a table selects and orders
  the methods (the other rows are ignored). Other columns are ignored, so filter first (``table.where(...)``).

NaN scores: ``nan_policy="raise"`` (default) raises :class:`StatisticsError` naming the first NaN's block and
method; ``nan_policy="omit"`` drops every block with a NaN in any method (the results report ``n_omitted``).

Ranks follow Demšar (2006): within a block the best method gets rank 1 (the highest score when
``higher_is_better=True``, the lowest otherwise), tied scores share the average of their ranks.

Every function returns a :class:`~jaxcam.table.Table` or a small frozen dataclass whose ``.table`` is one tidy
row. References: J. Demšar, "Statistical comparisons of classifiers over multiple data sets", JMLR 7 (2006);
A. Benavoli, G. Corani, F. Mangili, "Should we really use post-hoc tests based on mean-ranks?", JMLR 17 (2016);
S. Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 6 (1979);
B. Efron, R. Tibshirani, "An Introduction to the Bootstrap" (1993), ch. 13-14 (percentile and BCa intervals).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from ..errors import InvalidArgumentError, JaxcamError, UnknownNameError
from ..keys import as_key
from ..table import Table

__all__ = [
    "BootstrapResult", "FriedmanResult", "PivotError", "StatisticsError", "bootstrap_ci", "bootstrap_table",
    "critical_difference", "friedman", "holm", "kruskal", "nemenyi", "wilcoxon", "wilcoxon_holm",
]

_NAN_POLICIES = ("raise", "omit")
_BOOTSTRAP_METHODS = ("percentile", "bca")
_STATISTICS = ("mean", "median")


class StatisticsError(JaxcamError, ValueError):
    """Input a statistical test cannot use: too few methods or blocks, NaN scores, bad shapes or arguments."""


class PivotError(StatisticsError):
    """A long-format table that does not pivot to a full (block x method) matrix.

    ``cells`` holds every offending (block, method) pair: duplicated ones, or missing ones.
    """

    def __init__(self, message: str, cells=()):
        self.cells = tuple(cells)
        super().__init__(message)


# ----------------------------------------------------------------------------------------------- input handling


def _scipy_stats():
    """scipy.stats, imported on first use (it costs about 0.3 s, which every ``import jaxcam`` would pay)."""
    from scipy import stats

    return stats


def _check_choice(value: str, valid: Sequence[str], context: str) -> str:
    if not isinstance(value, str) or value.lower() not in valid:
        raise UnknownNameError(value, valid, context)
    return value.lower()


def _check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise StatisticsError(f"alpha must lie in (0, 1), got {alpha!r}")
    return float(alpha)


def _column(table: Table, name: str, role: str) -> np.ndarray:
    if name not in table:
        raise StatisticsError(f"table has no {role} column {name!r} (pass {role}=...); columns: {table.columns}")
    return table[name]


def _floats(values, what: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise StatisticsError(f"{what} must be numeric: {e}") from None


def _pivot(table: Table, names, block: str, method: str, value: str):
    """(scores (n, k), method labels, block labels) from a long-format table; PivotError on bad cells."""
    blocks_col = _column(table, block, "block").tolist()
    methods_col = _column(table, method, "method").tolist()
    values = _floats(_column(table, value, "value"), f"value column {value!r}")
    if names is None:
        names = list(dict.fromkeys(methods_col))
    else:
        names, present = list(names), list(dict.fromkeys(methods_col))
        absent = [m for m in names if m not in present]
        if absent:
            raise StatisticsError(f"method(s) {absent} not in column {method!r}; present: {present}")
        if len(set(names)) != len(names):
            raise StatisticsError(f"names must be unique, got {names}")
    m_index = {m: j for j, m in enumerate(names)}
    keep = [i for i, m in enumerate(methods_col) if m in m_index]
    b_labels = list(dict.fromkeys(blocks_col[i] for i in keep))
    b_index = {b: i for i, b in enumerate(b_labels)}
    scores = np.full((len(b_labels), len(names)), np.nan)
    count = np.zeros(scores.shape, int)
    for i in keep:
        r, c = b_index[blocks_col[i]], m_index[methods_col[i]]
        scores[r, c] = values[i]
        count[r, c] += 1
    if (count > 1).any():
        cells = [(b_labels[r], names[c]) for r, c in zip(*np.nonzero(count > 1))]
        raise PivotError(f"{len(cells)} duplicate ({block}, {method}) cell(s), each needs exactly one row: "
                         f"{_cells(cells)}", cells)
    if (count == 0).any():
        cells = [(b_labels[r], names[c]) for r, c in zip(*np.nonzero(count == 0))]
        raise PivotError(f"{len(cells)} missing ({block}, {method}) cell(s), each needs exactly one row: "
                         f"{_cells(cells)}", cells)
    return scores, names, b_labels


def _cells(cells, limit: int = 10) -> str:
    shown = ", ".join(repr(c) for c in cells[:limit])
    return shown + (f", ... ({len(cells) - limit} more)" if len(cells) > limit else "")


def _paired(data, names, block: str, method: str, value: str, nan_policy: str):
    """(scores (n, k) without NaN, names, number of blocks omitted) from an array or a long table."""
    nan_policy = _check_choice(nan_policy, _NAN_POLICIES, "nan_policy")
    if isinstance(data, Table):
        scores, names, blocks = _pivot(data, names, block, method, value)
    else:
        scores = _floats(data, "scores")
        if scores.ndim != 2:
            raise StatisticsError(f"scores must be 2-D (n_blocks, k_methods), got shape {scores.shape}")
        names = [str(j) for j in range(scores.shape[1])] if names is None else list(names)
        if len(names) != scores.shape[1] or len(set(names)) != len(names):
            raise StatisticsError(f"names must be {scores.shape[1]} unique labels (one per column), got {names}")
        blocks = list(range(scores.shape[0]))
    if len(names) < 2:
        raise StatisticsError(f"need at least 2 methods to compare, got {len(names)}: {names}")
    bad = np.isnan(scores)
    omitted = 0
    if bad.any():
        if nan_policy == "raise":
            r, c = (int(i[0]) for i in np.nonzero(bad))
            raise StatisticsError(f"score for block {blocks[r]!r}, method {names[c]!r} is NaN ({int(bad.sum())} NaN "
                                  "score(s) in all); pass nan_policy='omit' to drop blocks with any NaN")
        keep = ~bad.any(axis=1)
        omitted = int((~keep).sum())
        scores = scores[keep]
    if scores.shape[0] < 2:
        raise StatisticsError(f"need at least 2 blocks without NaN, got {scores.shape[0]}"
                              + (f" ({omitted} omitted for NaN)" if omitted else ""))
    return scores, names, omitted


def _ranks(scores: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Per-block ranks, 1 = best, average ranks for ties (Demšar 2006, sec. 3.2.2)."""
    return _scipy_stats().rankdata(-scores if higher_is_better else scores, method="average", axis=1)


# ------------------------------------------------------------------------------------------ Friedman + Nemenyi


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of mean ranks, ``CD = q_alpha * sqrt(k (k + 1) / (6 n))`` (Demšar 2006, eq. 5).

    ``q_alpha = Q(1 - alpha; k, inf) / sqrt(2)``, where ``Q`` is the studentized range quantile for ``k`` means and
    infinite degrees of freedom; at ``alpha = 0.05`` this reproduces Demšar's table (1.960, 2.343, ... for k = 2, 3,
    ...). Two methods' mean ranks over ``n`` blocks differ significantly when they differ by at least ``CD``.
    """
    if k < 2 or n < 1:
        raise StatisticsError(f"critical difference needs k >= 2 methods and n >= 1 blocks, got k={k}, n={n}")
    q_alpha = _scipy_stats().studentized_range.ppf(1 - _check_alpha(alpha), k, np.inf) / math.sqrt(2)
    return float(q_alpha * math.sqrt(k * (k + 1) / (6 * n)))


def _nemenyi_table(mean_ranks: np.ndarray, names, n: int, alpha: float) -> Table:
    k = len(names)
    se = math.sqrt(k * (k + 1) / (6 * n))
    cd = critical_difference(k, n, alpha)
    rows = []
    for a in range(k):
        for b in range(a + 1, k):
            diff = float(mean_ranks[a] - mean_ranks[b])
            p = float(_scipy_stats().studentized_range.sf(abs(diff) / se * math.sqrt(2), k, np.inf))
            rows.append(dict(method_a=names[a], method_b=names[b], mean_rank_a=float(mean_ranks[a]),
                             mean_rank_b=float(mean_ranks[b]), rank_diff=diff, critical_difference=cd,
                             p_value=min(max(p, 0.0), 1.0), significant=bool(abs(diff) >= cd)))
    return Table.from_rows(rows, columns=_NEMENYI_COLUMNS)


_NEMENYI_COLUMNS = ["method_a", "method_b", "mean_rank_a", "mean_rank_b", "rank_diff", "critical_difference",
                    "p_value", "significant"]


def nemenyi(data, names=None, *, block: str = "block", method: str = "method", value: str = "value",
            higher_is_better: bool = True, alpha: float = 0.05, nan_policy: str = "raise") -> Table:
    """Nemenyi post-hoc test after Friedman (Demšar 2006, sec. 3.2.2): one row per pair of methods (a before b).

    Columns: ``method_a, method_b, mean_rank_a, mean_rank_b, rank_diff`` (``mean_rank_a - mean_rank_b``, negative
    when a ranks better), ``critical_difference`` (:func:`critical_difference` at ``alpha``), ``p_value`` and
    ``significant`` (``|rank_diff| >= critical_difference``, the same as ``p_value <= alpha``).

    With ``se = sqrt(k (k + 1) / (6 n))`` and ``z = |rank_diff| / se``, Demšar's test rejects when
    ``z >= q_alpha = Q(1 - alpha; k, inf) / sqrt(2)``, i.e. when ``z * sqrt(2) >= Q(1 - alpha; k, inf)``; so
    ``p_value = studentized_range.sf(z * sqrt(2), k, inf)`` and ``p_value = alpha`` exactly at the CD (this is also
    what ``scikit_posthocs.posthoc_nemenyi_friedman`` computes). ``se`` has no tie correction, as in Demšar.
    """
    scores, names, _ = _paired(data, names, block, method, value, nan_policy)
    mean_ranks = _ranks(scores, higher_is_better).mean(axis=0)
    return _nemenyi_table(mean_ranks, names, scores.shape[0], _check_alpha(alpha))


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman test, its Iman-Davenport variant, mean ranks and the Nemenyi post-hoc table.

    ``statistic``/``p_value``: Friedman's chi-square (tie-corrected, identical to
    ``scipy.stats.friedmanchisquare``) on ``k - 1`` degrees of freedom. ``iman_davenport``/
    ``iman_davenport_p_value``: ``F = (n - 1) chi2 / (n (k - 1) - chi2)`` on ``(k - 1, (k - 1)(n - 1))`` degrees of
    freedom (Demšar 2006, sec. 3.2.2); ``F = inf``, ``p = 0`` when every block ranks the methods identically.
    ``n``: blocks used, ``k``: methods, ``n_omitted``: blocks dropped by ``nan_policy="omit"``.
    ``ranks``: Table (method, mean_rank, n), input order. ``posthoc``: :func:`nemenyi`'s Table at ``alpha``.
    ``table``: one tidy row (test, n, k, statistic, p_value, iman_davenport, iman_davenport_p_value,
    critical_difference, alpha, n_omitted).
    """

    statistic: float
    p_value: float
    iman_davenport: float
    iman_davenport_p_value: float
    n: int
    k: int
    alpha: float
    critical_difference: float
    n_omitted: int
    ranks: Table
    posthoc: Table

    @property
    def table(self) -> Table:
        return Table.from_rows([dict(test="friedman", n=self.n, k=self.k, statistic=self.statistic,
                                     p_value=self.p_value, iman_davenport=self.iman_davenport,
                                     iman_davenport_p_value=self.iman_davenport_p_value,
                                     critical_difference=self.critical_difference, alpha=self.alpha,
                                     n_omitted=self.n_omitted)])


def _friedman_chi2(ranks: np.ndarray, scores: np.ndarray) -> float:
    """Tie-corrected Friedman chi-square, the formula of scipy.stats.friedmanchisquare.

    ``chi2 = (12 / (n k (k + 1)) * sum_j R_j^2 - 3 n (k + 1)) / C`` with ``R_j`` the rank sums and
    ``C = 1 - sum_ties (t^3 - t) / (n k (k^2 - 1))``; NaN when every block is one tie (``C = 0``), as in scipy.
    """
    n, k = scores.shape
    tie_sizes = (scores[:, :, None] == scores[:, None, :]).sum(axis=-1)  # each cell's tie-group size t
    ties = float((tie_sizes ** 2 - 1).sum())  # sum over groups of t^3 - t == sum over cells of t^2 - 1
    c = 1 - ties / (n * k * (k * k - 1))
    ssbn = float((ranks.sum(axis=0) ** 2).sum())
    num = 12.0 / (n * k * (k + 1)) * ssbn - 3 * n * (k + 1)
    return num / c if c > 0 else math.nan


def friedman(data, names=None, *, block: str = "block", method: str = "method", value: str = "value",
             higher_is_better: bool = True, alpha: float = 0.05, nan_policy: str = "raise") -> FriedmanResult:
    """Friedman rank test of ``k`` methods over ``n`` blocks, with Iman-Davenport's F and the Nemenyi post-hoc.

    ``data``: ``(n_blocks, k_methods)`` array (with ``names``) or long Table (see the module docstring).
    Statistic and p-value equal ``scipy.stats.friedmanchisquare`` (which refuses ``k = 2``; the same formula is
    applied here for ``k = 2``). When every block has all scores tied the statistic and p-value are NaN, as in scipy
    (the Iman-Davenport values are NaN too). Reference: Demšar (2006), sec. 3.2.2.
    """
    alpha = _check_alpha(alpha)
    scores, names, omitted = _paired(data, names, block, method, value, nan_policy)
    n, k = scores.shape
    ranks = _ranks(scores, higher_is_better)
    chi2 = _friedman_chi2(ranks, scores)
    p = float(_scipy_stats().chi2.sf(chi2, k - 1)) if not math.isnan(chi2) else math.nan
    denom = n * (k - 1) - chi2
    if math.isnan(chi2):
        f = f_p = math.nan
    elif denom <= 1e-12 * n * (k - 1):
        f, f_p = math.inf, 0.0
    else:
        f = (n - 1) * chi2 / denom
        f_p = float(_scipy_stats().f.sf(f, k - 1, (k - 1) * (n - 1)))
    mean_ranks = ranks.mean(axis=0)
    rank_table = Table({"method": list(names), "mean_rank": mean_ranks, "n": np.full(k, n)})
    return FriedmanResult(statistic=float(chi2), p_value=p, iman_davenport=float(f), iman_davenport_p_value=f_p,
                          n=n, k=k, alpha=alpha, critical_difference=critical_difference(k, n, alpha),
                          n_omitted=omitted, ranks=rank_table, posthoc=_nemenyi_table(mean_ranks, names, n, alpha))


# ----------------------------------------------------------------------------------------------------- Wilcoxon


def holm(p_values) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, in the input order.

    With the ``m`` p-values sorted ascending, ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` (1-based); a
    hypothesis is rejected at level alpha when its adjusted p-value is ``<= alpha``. NaN p-values count among the
    ``m`` tests, are ordered last (as if 1) and stay NaN. E.g. ``[0.01, 0.04, 0.03] -> [0.03, 0.06, 0.06]``.
    """
    p = _floats(p_values, "p_values")
    if p.ndim != 1:
        raise StatisticsError(f"p_values must be 1-D, got shape {p.shape}")
    if ((p < 0) | (p > 1)).any():
        raise StatisticsError(f"p_values must lie in [0, 1], got {p[(p < 0) | (p > 1)].tolist()}")
    m = p.size
    nan = np.isnan(p)
    filled = np.where(nan, 1.0, p)
    order = np.argsort(filled, kind="stable")
    adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * filled[order]))
    out = np.empty(m)
    out[order] = adj
    out[nan] = np.nan
    return out


def _wilcoxon_row(x, y, name_a, name_b, zero_method, correction, wilcoxon_method) -> dict:
    res = _scipy_stats().wilcoxon(x, y, zero_method=zero_method, correction=correction, alternative="two-sided",
                         method=wilcoxon_method)
    return dict(method_a=name_a, method_b=name_b, n=int(len(x)), statistic=float(res.statistic),
                p_value=float(res.pvalue), median_diff=float(np.median(x - y)))


def wilcoxon(a, b, *, names: tuple = ("a", "b"), alpha: float = 0.05, zero_method: str = "wilcox",
             correction: bool = False, wilcoxon_method: str = "auto", nan_policy: str = "raise") -> Table:
    """One paired two-sided Wilcoxon signed-rank test of ``a`` against ``b`` (``scipy.stats.wilcoxon``).

    Returns a one-row Table: ``method_a, method_b`` (``names``), ``n`` (pairs used), ``statistic``
    (scipy's two-sided statistic, ``min(W+, W-)`` for the exact/asymptotic methods), ``p_value``, ``significant``
    (``p_value <= alpha``) and ``median_diff`` (median of ``a - b``). ``zero_method`` (default ``"wilcox"``: drop
    zero differences), ``correction`` (default False) and ``wilcoxon_method`` (scipy's ``method``, default
    ``"auto"``) are passed to scipy unchanged; scipy's values are returned as they are (e.g. all-zero differences
    give statistic 0, p-value 1 with a scipy RuntimeWarning). ``nan_policy="omit"`` drops pairs with a NaN.
    """
    alpha = _check_alpha(alpha)
    x, y = _floats(a, "a"), _floats(b, "b")
    if x.ndim != 1 or x.shape != y.shape:
        raise StatisticsError(f"a and b must be 1-D and of equal length, got shapes {x.shape} and {y.shape}")
    scores, names, _ = _paired(np.stack([x, y], axis=1), list(names), "block", "method", "value", nan_policy)
    row = _wilcoxon_row(scores[:, 0], scores[:, 1], names[0], names[1], zero_method, correction, wilcoxon_method)
    row["significant"] = bool(row["p_value"] <= alpha)
    return Table.from_rows([row], columns=["method_a", "method_b", "n", "statistic", "p_value", "significant",
                                           "median_diff"])


def wilcoxon_holm(data, names=None, *, block: str = "block", method: str = "method", value: str = "value",
                  alpha: float = 0.05, zero_method: str = "wilcox", correction: bool = False,
                  wilcoxon_method: str = "auto", nan_policy: str = "raise") -> Table:
    """All pairwise two-sided Wilcoxon signed-rank tests with Holm's correction (Benavoli et al. 2016; Holm 1979).

    ``data``: ``(n_blocks, k_methods)`` array (with ``names``) or long Table (see the module docstring). One row per
    pair (a before b in method order): ``method_a, method_b, n, statistic, p_value`` (``scipy.stats.wilcoxon`` on
    the paired columns, see :func:`wilcoxon` for ``zero_method``, ``correction`` and ``wilcoxon_method``, scipy's
    ``method``), ``p_holm`` (:func:`holm` over the ``k (k - 1) / 2`` pairs), ``significant`` (``p_holm <= alpha``)
    and ``median_diff`` (median of ``a - b``; its sign is the direction whatever ``higher_is_better`` would be).
    """
    alpha = _check_alpha(alpha)
    scores, names, _ = _paired(data, names, block, method, value, nan_policy)
    k = len(names)
    rows = [_wilcoxon_row(scores[:, i], scores[:, j], names[i], names[j], zero_method, correction, wilcoxon_method)
            for i in range(k) for j in range(i + 1, k)]
    adjusted = holm([r["p_value"] for r in rows])
    for r, p in zip(rows, adjusted):
        r["p_holm"] = float(p)
        r["significant"] = bool(p <= alpha)
    return Table.from_rows(rows, columns=["method_a", "method_b", "n", "statistic", "p_value", "p_holm",
                                          "significant", "median_diff"])


# ------------------------------------------------------------------------------------------------ Kruskal-Wallis


def kruskal(groups, *, method: str = "method", value: str = "value", nan_policy: str = "raise") -> Table:
    """Kruskal-Wallis H test (``scipy.stats.kruskal``, tie-corrected) over ``k >= 2`` independent groups.

    ``groups``: a mapping ``name -> values``, a sequence of 1-D arrays, or a long Table whose ``method`` column names
    the group of each ``value``. NaN values raise (``nan_policy="raise"``, naming the group) or are dropped
    (``"omit"``); a group left empty raises. Returns a one-row Table ``statistic, p_value, k, n_total``. When all
    values are identical scipy's statistic and p-value are NaN, and so are these.
    """
    nan_policy = _check_choice(nan_policy, _NAN_POLICIES, "nan_policy")
    if isinstance(groups, Table):
        labels = _column(groups, method, "method").tolist()
        vals = _floats(_column(groups, value, "value"), f"value column {value!r}")
        index = {g: i for i, g in enumerate(dict.fromkeys(labels))}
        lab = np.asarray([index[x] for x in labels], int)
        samples = {g: vals[lab == i] for g, i in index.items()}
    elif isinstance(groups, Mapping):
        samples = {g: _floats(v, f"group {g!r}").reshape(-1) for g, v in groups.items()}
    else:
        samples = {i: _floats(v, f"group {i}").reshape(-1) for i, v in enumerate(groups)}
    if len(samples) < 2:
        raise StatisticsError(f"Kruskal-Wallis needs at least 2 groups, got {len(samples)}")
    for g, v in list(samples.items()):
        if np.isnan(v).any():
            if nan_policy == "raise":
                raise StatisticsError(f"group {g!r} has {int(np.isnan(v).sum())} NaN value(s); pass "
                                      "nan_policy='omit' to drop them")
            samples[g] = v = v[~np.isnan(v)]
        if v.size == 0:
            raise StatisticsError(f"group {g!r} is empty" + (" after dropping NaN" if nan_policy == "omit" else ""))
    with np.errstate(invalid="ignore", divide="ignore"):
        res = _scipy_stats().kruskal(*samples.values())
    return Table.from_rows([dict(statistic=float(res.statistic), p_value=float(res.pvalue), k=len(samples),
                                 n_total=int(sum(v.size for v in samples.values())))])


# ---------------------------------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapResult:
    """A bootstrap confidence interval: ``estimate`` (the statistic of the non-NaN data), ``low``, ``high``.

    ``n``: values used, ``n_nan``: NaN values dropped; ``confidence``, ``method``, ``n_resamples`` as requested.
    Unpacks as ``estimate, low, high = result``; ``table`` is one row (n, n_nan, estimate, low, high).
    """

    estimate: float
    low: float
    high: float
    n: int
    n_nan: int
    confidence: float
    method: str
    n_resamples: int

    def __iter__(self):
        return iter((self.estimate, self.low, self.high))

    @property
    def table(self) -> Table:
        return Table.from_rows([dict(n=self.n, n_nan=self.n_nan, estimate=self.estimate, low=self.low,
                                     high=self.high)])


def _as_key(key):
    """A JAX PRNG key from a key (typed or legacy uint32[2]) or an int seed; nothing implicit."""
    if key is None:
        raise StatisticsError("key must be a jax.random key or an int seed, got None")
    try:
        return as_key(key)
    except InvalidArgumentError as exc:
        raise StatisticsError(str(exc)) from None


_BLOCK = 2 ** 18  # random words per jax call: one compiled shape whatever the data size


@jax.jit
def _block_bits(key, i):
    return jax.random.bits(jax.random.fold_in(key, i), (_BLOCK,), np.uint32)


def _indices(key, n: int, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the (n_resamples, n) resample indices, the same whatever the chunking.

    The indices are the stream ``bits(fold_in(key, 0), 2**18) ++ bits(fold_in(key, 1), 2**18) ++ ...`` of uint32
    words ``w`` read row by row and mapped to ``floor(w * n / 2**32)`` (bias below ``n / 2**32``).
    """
    lo, hi = start * n, stop * n
    words = np.concatenate([np.asarray(_block_bits(key, b)) for b in range(lo // _BLOCK, (hi - 1) // _BLOCK + 1)])
    offset = (lo // _BLOCK) * _BLOCK
    words = words[lo - offset:hi - offset].astype(np.uint64)
    return ((words * np.uint64(n)) >> np.uint64(32)).astype(np.intp).reshape(stop - start, n)


def _statistic(statistic) -> tuple[Callable, Callable]:
    """(f(x) -> float, f_rows(2-D) -> 1-D) for a name or a callable taking a 1-D array."""
    if callable(statistic):
        return statistic, lambda rows: np.asarray([statistic(r) for r in rows], float)
    name = _check_choice(statistic, _STATISTICS, "bootstrap statistic")
    f = np.mean if name == "mean" else np.median
    return f, lambda rows: f(rows, axis=1)


def _jackknife(x: np.ndarray, statistic) -> np.ndarray:
    """Leave-one-out values of the statistic (closed forms for mean and median, a loop otherwise)."""
    n = x.size
    if statistic == "mean":
        return (x.sum() - x) / (n - 1)
    if statistic == "median":
        order = np.argsort(x, kind="stable")
        s = x[order]
        m = n - 1  # remaining size; removing sorted position j shifts the later elements down by one
        lo, hi = (m - 1) // 2, m // 2
        j = np.arange(n)
        v_lo = np.where(lo < j, s[lo], s[np.minimum(lo + 1, n - 1)])
        v_hi = np.where(hi < j, s[hi], s[np.minimum(hi + 1, n - 1)])
        out = np.empty(n)
        out[order] = (v_lo + v_hi) / 2
        return out
    return np.asarray([statistic(np.delete(x, i)) for i in range(n)], float)


def bootstrap_ci(values, key, statistic="mean", n_resamples: int = 1000, confidence: float = 0.95,
                 method: str = "percentile") -> BootstrapResult:
    """Bootstrap confidence interval of ``statistic`` over the 1-D ``values``.

    NaN values are dropped and counted (``n_nan``); with nothing left the result is NaN with ``n = 0``. The
    ``(n_resamples, n)`` resample indices come from ``jax.random.bits`` under ``key`` (a jax.random key, or an int
    seed turned into ``jax.random.key(seed)``; required, so results are reproducible per key), see ``_indices``.
    ``statistic``: ``"mean"``/``"median"`` (vectorised over resamples) or a callable mapping a 1-D array to a float.

    ``method="percentile"``: the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles (numpy's linear
    interpolation) of the bootstrap distribution. ``method="bca"``: bias-corrected and accelerated (Efron &
    Tibshirani 1993, eq. 14.10), as ``scipy.stats.bootstrap(method="BCa")``: ``z0 = Phi^-1(mean of
    [#(theta* < theta) + #(theta* <= theta)] / (2B))``, acceleration from the jackknife, quantiles at
    ``Phi(z0 + (z0 + z) / (1 - a (z0 + z)))``. Degenerate BCa (fewer than 2 values, all bootstrap values on one
    side, zero jackknife spread) gives NaN bounds, where scipy gives NaN with a DegenerateDataWarning.
    """
    x = _floats(values, "values")
    if x.ndim != 1:
        raise StatisticsError(f"values must be 1-D, got shape {x.shape}")
    method = _check_choice(method, _BOOTSTRAP_METHODS, "bootstrap method")
    if not 0 < confidence < 1:
        raise StatisticsError(f"confidence must lie in (0, 1), got {confidence!r}")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise StatisticsError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    n_resamples = int(n_resamples)
    f, f_rows = _statistic(statistic)
    statistic = statistic if callable(statistic) else statistic.lower()
    key = _as_key(key)
    nan = np.isnan(x)
    x = x[~nan]
    n, n_nan = int(x.size), int(nan.sum())
    done = functools.partial(BootstrapResult, n=n, n_nan=n_nan, confidence=float(confidence), method=method,
                             n_resamples=n_resamples)
    if n == 0:
        return done(estimate=math.nan, low=math.nan, high=math.nan)
    estimate = float(f(x))
    chunk = max(1, 2 ** 22 // n)
    boot = np.concatenate([f_rows(x[_indices(key, n, s, min(s + chunk, n_resamples))])
                           for s in range(0, n_resamples, chunk)])
    tail = (1 - confidence) / 2
    if method == "percentile":
        q = np.array([tail, 1 - tail])
    else:
        q = _bca_levels(x, statistic, estimate, boot, tail)
    if not np.isfinite(q).all():
        return done(estimate=estimate, low=math.nan, high=math.nan)
    low, high = np.quantile(boot, q)
    return done(estimate=estimate, low=float(low), high=float(high))


def _bca_levels(x, statistic, estimate, boot, tail) -> np.ndarray:
    """BCa quantile levels (alpha_1, alpha_2); NaN when degenerate."""
    if x.size < 2:
        return np.array([math.nan, math.nan])
    share = ((boot < estimate).sum() + (boot <= estimate).sum()) / (2 * boot.size)
    jack = _jackknife(x, statistic)
    d = jack.mean() - jack
    with np.errstate(invalid="ignore", divide="ignore"):
        from scipy.special import ndtr, ndtri

        z0 = ndtri(share)
        a = (d ** 3).sum() / (6 * (d ** 2).sum() ** 1.5)
        z = np.array([ndtri(tail), -ndtri(tail)])
        return ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))


def bootstrap_table(table: Table, by, *, key, value: str = "value", statistic="mean", n_resamples: int = 1000,
                    confidence: float = 0.95, method: str = "percentile") -> Table:
    """:func:`bootstrap_ci` of column ``value`` per group of the ``by`` column(s), one row per group.

    Groups keep their first-seen order; group ``i`` uses the key ``jax.random.fold_in(key, i)``. Columns: the ``by``
    columns, then ``n, n_nan, estimate, low, high``.
    """
    by = [by] if isinstance(by, str) else list(by)
    if not by:
        raise StatisticsError("bootstrap_table needs at least one `by` column")
    key = _as_key(key)
    cols = [_column(table, c, "by").tolist() for c in by]
    vals = _floats(_column(table, value, "value"), f"value column {value!r}")
    groups: dict[tuple, list[int]] = {}
    for i, g in enumerate(zip(*cols)):
        groups.setdefault(g, []).append(i)
    rows = []
    for gi, (g, idx) in enumerate(groups.items()):
        res = bootstrap_ci(vals[idx], jax.random.fold_in(key, gi), statistic=statistic, n_resamples=n_resamples,
                           confidence=confidence, method=method)
        rows.append({**dict(zip(by, g)), **res.table.rows()[0]})
    return Table.from_rows(rows, columns=[*by, "n", "n_nan", "estimate", "low", "high"])
