"""Figures of evaluation results, as PNG bytes (matplotlib's object API with the Agg renderer; no pyplot state).

Each function takes the tidy tables jaxcam produces and returns PNG file contents, ready to write to disk or to embed
in a :class:`jaxcam.report.Report`:

- :func:`rm_by_noise`: RM per method per noise (robustness summary, mean over severities);
- :func:`similarity_vs_severity`: mean clean-vs-noisy similarity against severity, one panel per noise;
- :func:`picture_grid`: a labelled grid of RGB pictures (clean versus noisy map overlays, for instance);
- :func:`metric_means`: per-method means of each metric, one panel per metric (``jaxcam evaluate``);
- :func:`randomisation_curves`: similarity to the trained model's maps against the randomisation step.

Every text comes from the tables, and may come from a file name: it is drawn as written (never as mathtext) with
the characters the font lacks as escapes (:func:`jaxcam.viz.drawable_text`), so no name stops or warns a figure.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import numpy as np

from .errors import InvalidArgumentError, MissingDependencyError
from .table import Table
from .viz import drawable_text as _text
from .viz import plain_text


def _plain(fn):
    """Run a figure function with mathtext off (see :func:`jaxcam.viz.plain_text`)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plain_text():
            return fn(*args, **kwargs)
    return wrapper


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise MissingDependencyError("plots need matplotlib: pip install matplotlib") from exc
    return Figure(figsize=(width, height))


def _png(fig, dpi: int = 110, palette: bool = False) -> bytes:
    """The figure as PNG; ``palette=True`` re-encodes it with an adaptive 256-colour palette (photographs with
    noise compress poorly: about 3x smaller, visually the same at this size)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if not palette:
        return buf.getvalue()
    from PIL import Image

    buf.seek(0)
    with Image.open(buf) as im:
        out = io.BytesIO()
        im.convert("RGB").quantize(256).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _ordered(values) -> list:
    return list(dict.fromkeys(np.asarray(values).tolist()))


def _mean(values) -> float:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


@_plain
def rm_by_noise(summary: Table) -> bytes:
    """Grouped bars: for each noise, each method's RM averaged over the severities of ``summary`` (the table of
    :func:`jaxcam.robustness.summarise`: columns method, noise, severity, rm)."""
    methods, noises = _ordered(summary["method"]), _ordered(summary["noise"])
    fig = _figure(2.0 + 1.4 * len(noises), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(noises))
    for j, m in enumerate(methods):
        vals = [_mean(summary.where(method=m, noise=n)["rm"]) for n in noises]
        ax.bar(x + j * width, vals, width, label=_text(m))
    ax.set_xticks(x + 0.4 - width / 2, [_text(n) for n in noises])
    ax.set_ylabel("RM (mean over severities)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncols=min(len(methods), 3))
    fig.tight_layout()
    return _png(fig)


@_plain
def similarity_vs_severity(rows: Table, similarity: str = "similarity") -> bytes:
    """Mean ``value`` (the clean-vs-noisy similarity) against severity, one line per method, one panel per noise;
    ``rows``: the tidy rows of :func:`jaxcam.robustness.run`."""
    fig, axes = _mean_lines(rows, "noise", "severity", "severity")
    for ax, n in zip(axes, _ordered(rows["noise"])):
        ax.set_xticks(sorted(set(rows.where(noise=n)["severity"].tolist())))
    axes[0].set_ylabel(_text(f"mean {similarity}"))
    fig.tight_layout()
    return _png(fig)


def _mean_lines(table: Table, panel: str, x: str, xlabel: str):
    """``(figure, axes)``: one panel per value of column ``panel`` (in order of appearance), and in each the mean
    ``value`` against column ``x``, one line per method, with a legend on the last panel."""
    panels, methods = _ordered(table[panel]), _ordered(table["method"])
    fig = _figure(0.6 + 3.0 * len(panels), 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, p in zip(axes, panels):
        for m in methods:
            sub = table.where(**{panel: p, "method": m})
            xs = sorted(set(sub[x].tolist()))
            ax.plot(xs, [_mean(sub.where(**{x: v})["value"]) for v in xs], marker="o", label=_text(m))
        ax.set_title(_text(p))
        ax.set_xlabel(xlabel)
    axes[-1].legend(fontsize=7)
    return fig, axes


@_plain
def picture_grid(pictures: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str],
                 column_labels: Sequence[str], notes: Sequence[Sequence[str]] | None = None,
                 cell: float = 1.7) -> bytes:
    """A grid of RGB pictures (``pictures[i][j]``, uint8 (H, W, 3)) with row and column labels and an optional
    short note under each picture (e.g. the similarity of a noisy map to the clean one)."""
    n_rows, n_cols = len(pictures), max((len(r) for r in pictures), default=0)
    if n_rows == 0 or n_cols == 0:
        raise InvalidArgumentError("picture_grid needs at least one picture")
    if len(row_labels) != n_rows or len(column_labels) != n_cols:
        raise InvalidArgumentError(f"picture_grid: {n_rows} x {n_cols} pictures but {len(row_labels)} row labels and "
                         f"{len(column_labels)} column labels")
    fig = _figure(0.6 + cell * n_cols, 0.3 + cell * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i in range(n_rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(pictures[i]):
                ax.imshow(np.asarray(pictures[i][j]))
            if notes is not None and j < len(notes[i]) and notes[i][j]:
                ax.set_xlabel(_text(notes[i][j]), fontsize=7, labelpad=1)
            if i == 0:
                ax.set_title(_text(column_labels[j]), fontsize=8)
            if j == 0:
                ax.set_ylabel(_text(row_labels[i]), fontsize=8)
    fig.tight_layout(pad=0.4)
    return _png(fig, dpi=90, palette=True)


@_plain
def metric_means(rows: Table) -> bytes:
    """One panel per metric: each method's mean value over the images, with the standard error as an error bar;
    ``rows``: the tidy table of :func:`jaxcam.evaluate` (method, metric, value, higher_is_better)."""
    metrics, methods = _ordered(rows["metric"]), _ordered(rows["method"])
    n_cols = min(len(metrics), 4)
    n_rows = -(-len(metrics) // n_cols)
    fig = _figure(0.4 + 2.6 * n_cols, 0.4 + 2.4 * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for k, metric in enumerate(metrics):
        ax = axes[k // n_cols][k % n_cols]
        sub = rows.where(metric=metric)
        means, errs = [], []
        for m in methods:
            v = np.asarray(sub.where(method=m)["value"], float)
            v = v[np.isfinite(v)]
            means.append(v.mean() if v.size else np.nan)
            errs.append(v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0)
        ax.bar(np.arange(len(methods)), means, yerr=errs, color=[f"C{i}" for i in range(len(methods))])
        ax.set_xticks(np.arange(len(methods)), [_text(m) for m in methods], rotation=45, ha="right", fontsize=7)
        better = "higher" if bool(np.asarray(sub["higher_is_better"])[0]) else "lower"
        ax.set_title(_text(f"{metric} ({better} is better)"), fontsize=8)
    for k in range(len(metrics), n_rows * n_cols):
        axes[k // n_cols][k % n_cols].set_visible(False)
    fig.tight_layout()
    return _png(fig)


@_plain
def randomisation_curves(table: Table) -> bytes:
    """Mean similarity to the trained model's maps against the randomisation step, one line per method, one panel
    per similarity measure; ``table``: :func:`jaxcam.metrics.sanity.cascading_randomisation`'s rows."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _mean_lines(table, "similarity", "step", "randomisation step (0 = trained)")
    for ax in axes:
        ax.axhline(0.0, color="#999", linewidth=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("similarity to the trained maps")
    fig.tight_layout()
    return _png(fig)


__all__ = ["metric_means", "picture_grid", "randomisation_curves", "rm_by_noise", "similarity_vs_severity"]
