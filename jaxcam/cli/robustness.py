"""``jaxcam robustness``: the noise-robustness protocol of Sarkar et al. (arXiv 2508.18154) as one command.

Runs :func:`jaxcam.robustness.run` over a noise grid (resumable Parquet parts), then writes into ``--out``: the
rows (``rows.csv``), the summary (``summary.csv``, ``summary.md``: Consistency, Responsiveness and RM with bootstrap
intervals), the statistics (``friedman.md``), the plots and example maps as PNG, and ``report.html``, one
self-contained page with all of it.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import ImageFileError, JaxcamError, UnknownNameError
from ..files import atomic_write
from ..table import escape_markdown
from .common import (add_images_arg, add_model_args, file_stems, for_model, formatter, load, method_list,
                     quote, read_images, summary)

DEFAULT_NOISES = ("gaussian", "shot", "impulse", "speckle")
DEFAULT_SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_DRAWS = 2
DEFAULT_OUT = os.path.join("runs", "robustness")
EXAMPLE_IMAGES = 2  # images whose clean and noisy maps the report shows
EXAMPLE_METHODS = 6  # at most this many methods in those pictures
RESUME_HINT = "run again with --resume to continue"

EXAMPLES = """examples:
  jaxcam robustness                               the embedded model on scikit-image's photos, default grid
  jaxcam robustness cat.jpg dog.jpg --noises gaussian impulse --severities 1 3 5 --out runs/pets
  jaxcam robustness --dataset folder:val_images --model resnet50 --weights resnet50.pth --methods all
  jaxcam robustness --out runs/robustness --resume   continue an interrupted run (same options)

outputs (in --out): parts/*.parquet, run.json and manifest-*.json (the resumable run), rows.csv, summary.csv,
summary.md, friedman.md, rm_by_noise.png, similarity_vs_severity.png, maps_<image>.png and report.html (self-contained).
The default grid (6 methods x 4 noises x 5 severities x 2 draws on 4 photos = 960 rows) takes about a minute on
a 2-core CPU with the embedded model.
"""


class RobustnessArgumentError(JaxcamError, ValueError):
    """Command-line options that do not describe a valid robustness run."""


class DatasetImageError(ImageFileError):
    """An image of the run's source that does not decode (found while every item is checked, before any work)."""


def add_parser(sub) -> None:
    from ..metrics.robustness import ROBUSTNESS_SIMILARITIES
    from ..noise import NOISE_NAMES
    from ..robustness import PAPER_METHODS

    p = sub.add_parser("robustness", help="noise robustness of CAM methods (RM), with a self-contained report",
                       description="The noise-robustness protocol of Sarkar et al. (arXiv 2508.18154): RM = "
                       "Consistency x Responsiveness of each CAM method over a grid of noises, with tables, "
                       "statistics, plots and a self-contained report.html.", epilog=EXAMPLES,
                       formatter_class=formatter())
    add_images_arg(p)
    p.add_argument("--dataset", metavar="SPEC",
                   help="instead of IMAGE files: sample[:NAMES], folder:DIR or tfds:NAME[:SPLIT]")
    add_model_args(p)
    p.add_argument("--methods", nargs="+", default=list(PAPER_METHODS), metavar="METHOD",
                   help=f"CAM methods, or 'all' (default: the paper's {' '.join(PAPER_METHODS)})")
    p.add_argument("--noises", nargs="+", default=list(DEFAULT_NOISES), metavar="NOISE",
                   help=f"noises (default: {' '.join(DEFAULT_NOISES)}; choices: {', '.join(NOISE_NAMES)})")
    p.add_argument("--severities", nargs="+", type=int, default=list(DEFAULT_SEVERITIES), metavar="LEVEL",
                   help="severity levels 1..5 (default: 1 2 3 4 5)")
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS,
                   help=f"random draws per noise and severity (default {DEFAULT_DRAWS})")
    p.add_argument("--similarity", default="rbo",
                   help=f"clean-vs-noisy map similarity (default rbo; choices: {', '.join(ROBUSTNESS_SIMILARITIES)})")
    p.add_argument("--explain-class", default="new_prediction", choices=("new_prediction", "original_prediction"),
                   help="explain the noisy image's own prediction (default) or the clean image's")
    p.add_argument("--key", type=int, default=0, help="random seed of the noise and the bootstrap (default 0)")
    p.add_argument("--image-batch", type=int, default=8, help="images per clean pass (default 8)")
    p.add_argument("--chunk", type=int, default=64, help="noisy images per compiled chunk; bounds memory (default 64)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--resume", action="store_true",
                   help="continue the run already in --out (its options must be the same)")
    p.add_argument("--no-report", action="store_true",
                   help="write the tables only: no plots, example maps or report.html")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------- the command


def run(args) -> None:
    """Validate everything, run (or resume) the grid, then write the tables, plots and report."""
    from .. import robustness as R

    t0 = time.perf_counter()
    args.resume_hint = f"{RESUME_HINT} (the same command with --resume, --out {quote(args.out)})"
    methods = _methods(args.methods)
    _check_grid(args)
    source, n_images = _source(args)
    out = R.check_out_dir(args.out)  # created by R.run once everything is checked: a refused run leaves nothing
    _check_out(out, args.resume)
    model = load(args)
    methods = tuple(for_model(methods, args.methods, model))
    _check_methods_apply(model, methods)
    try:
        rows = R.run(model, source, out, methods=methods, noises=args.noises, severities=args.severities,
                     draws=args.draws, key=args.key, similarity=args.similarity, explain_class=args.explain_class,
                     image_batch=args.image_batch, chunk=args.chunk, size=model.input_size, resume=args.resume,
                     progress=sys.stderr.isatty())
    except ImageFileError as exc:  # every item is decoded before any work: nothing was computed for it
        raise DatasetImageError(f"{exc}; replace or remove that file and run again"
                                f"{' (with --resume)' if os.path.isdir(os.path.join(out, 'parts')) else ''}") from None
    args.methods = list(methods)  # 'all' expanded, for the report
    written = write_outputs(model, source, rows, out, args, report=not args.no_report, elapsed=t0)
    n = len(set(rows["image"].tolist())) if len(rows) else n_images
    grid = (f"{n} images x {len(methods)} methods x {len(args.noises)} noises x {len(args.severities)} severities "
            f"x {args.draws} draws = {len(rows)} rows")
    tail = f"report {written['report']}" if "report" in written else f"tables in {out}"
    summary(f"robustness: {grid} in {time.perf_counter() - t0:.1f} s; {tail}")


def _methods(spec: list[str]) -> tuple[str, ...]:
    """The method names (``all``: every registered method that runs on any layer, no ensembles), checked."""
    return tuple(method_list(spec, RobustnessArgumentError,
                             keep=lambda m: not m.gap_fc_only and m.output != "ensemble"))


def _check_grid(args) -> None:
    """Noise names, severities, draws, similarity and sizes, before any work starts."""
    from ..metrics.robustness import ROBUSTNESS_SIMILARITIES
    from ..noise import MAX_LEVEL, NOISE_NAMES, UnknownNoiseError
    from ..robustness import MAX_KEY

    for n in args.noises:
        if n not in NOISE_NAMES:
            raise UnknownNoiseError(n, NOISE_NAMES, "--noises")
    for flag, values in (("--noises", args.noises), ("--severities", args.severities)):
        if len(set(values)) != len(values):
            raise RobustnessArgumentError(f"{flag} lists a value twice: {' '.join(map(str, values))}")
    bad = [s for s in args.severities if not 1 <= s <= MAX_LEVEL]
    if bad:
        raise RobustnessArgumentError(f"--severities must lie in 1..{MAX_LEVEL}, got {bad}")
    if args.similarity not in ROBUSTNESS_SIMILARITIES:
        raise UnknownNameError(args.similarity, ROBUSTNESS_SIMILARITIES, "--similarity")
    for flag, value in (("--draws", args.draws), ("--image-batch", args.image_batch), ("--chunk", args.chunk)):
        if value < 1:
            raise RobustnessArgumentError(f"{flag} must be a positive integer, got {value}")
    if not 0 <= args.key <= MAX_KEY:
        raise RobustnessArgumentError(f"--key must lie in 0..{MAX_KEY} (JAX folds other seeds onto these), got "
                                      f"{args.key}")


def _source(args):
    """``(source, number of images)``: the IMAGE files, the --dataset, or scikit-image's sample photos."""
    from ..datasets import array_source, get_source

    if args.images and args.dataset:
        raise RobustnessArgumentError("give IMAGE files or --dataset, not both")
    if args.images:
        names, paths = read_images(args.images)
        for path in paths:
            check_image_file(path)
        return array_source(paths, ids=names, name=files_dataset_name(names)), len(paths)
    src = get_source(args.dataset or "sample")
    try:
        return src, len(src)
    except TypeError:  # a stream whose length is not known in advance
        return src, 0


def check_image_file(path: str, max_pixels=None) -> None:
    """Raise :class:`~jaxcam.ImageFileError` when ``path`` does not decode as an image, or
    :class:`~jaxcam.ImageTooLargeError` when it has more pixels than the cap (checked before the run, so a bad
    file is one clear error, not a failure half-way through). The whole file is decoded, at small scale."""
    from ..data import check_image

    check_image(path, max_pixels=max_pixels)


def files_dataset_name(names: list[str]) -> str:
    """The dataset name recorded in the rows for images given as files: their names, or a count and a digest
    when there are many (so resuming with other files is caught as another configuration)."""
    import hashlib

    joined = ",".join(names)
    if len(joined) <= 80:
        return f"files:{joined}"
    return f"files:{len(names)} images ({hashlib.sha256(joined.encode()).hexdigest()[:12]})"


def _check_out(out: str, resume: bool) -> None:
    """Refuse to mix a new run into a directory that holds one, unless --resume (the library checks too)."""
    from ..robustness import RunConfigError

    parts = os.path.join(out, "parts")
    if not resume and os.path.isdir(parts) and any(f.endswith(".parquet") for f in os.listdir(parts)):
        raise RunConfigError(f"{quote(out)} already holds results of a robustness run; pass --resume to continue "
                             "it (same options), or choose another --out")


def _check_methods_apply(model, methods) -> None:
    """Every method must run on the model's default layer (CAM needs a GAP+FC head, for instance)."""
    from .._explain import explainer

    for m in methods:
        explainer(model, m)


# ----------------------------------------------------------------------------------------------------- outputs


@dataclass
class NoiseStatistics:
    """The paired tests of one noise: Friedman (+ Nemenyi) and Wilcoxon-Holm, or why they were not computed."""

    noise: str
    friedman: object | None = None
    wilcoxon: object | None = None
    note: str = ""


def statistics(rows) -> list[NoiseStatistics]:
    """Per noise: methods compared over blocks image x severity x draw, the value being the similarity."""
    from ..metrics import friedman, wilcoxon_holm
    from ..metrics.statistics import StatisticsError
    from ..table import Table

    out = []
    for noise in dict.fromkeys(rows["noise"].tolist()):
        sub = rows.where(noise=noise)
        block = [f"{i}|{s}|{d}" for i, s, d in zip(sub["image"], sub["severity"], sub["draw"])]
        t = Table({"block": block, "method": sub["method"], "value": sub["value"].astype(float)})
        st = NoiseStatistics(noise)
        if len(set(t["method"])) < 2 or len(set(block)) < 2:
            st.note = "not computed: needs at least 2 methods and 2 blocks (image x severity x draw)"
        else:
            try:
                with warnings.catch_warnings():  # tied pairs give NaN statistics, shown as nan in the tables
                    warnings.simplefilter("ignore", RuntimeWarning)
                    st.friedman = friedman(t, nan_policy="omit")
                    st.wilcoxon = wilcoxon_holm(t, nan_policy="omit")
            except (StatisticsError, ValueError) as exc:
                st.note = f"not computed: {exc}"
        out.append(st)
    return out


def statistics_markdown(stats: list[NoiseStatistics]) -> str:
    """``friedman.md``: per noise, the Friedman table, mean ranks, Nemenyi and Wilcoxon-Holm pairs (or why not)."""
    lines = ["# Methods compared per noise", "",
             "Blocks: image x severity x draw; value: the clean-vs-noisy similarity (higher is more stable).", ""]
    for st in stats:
        lines += [f"## {st.noise}", ""]
        if st.friedman is None:
            lines += [escape_markdown(st.note), ""]
            continue
        lines += ["Friedman:", "", st.friedman.table.to_markdown(), "", "Mean ranks:", "",
                  st.friedman.ranks.to_markdown(), "", "Nemenyi:", "", st.friedman.posthoc.to_markdown(), "",
                  "Wilcoxon-Holm:", "", st.wilcoxon.to_markdown(), ""]
    return "\n".join(lines) + "\n"


def readable_summary(summary_table):
    """The summary with each measure and its interval as one text column ("0.812 [0.780, 0.840]")."""
    from ..table import Table

    def fmt(r, name):
        v, lo, hi = r[name], r.get(f"{name}_low"), r.get(f"{name}_high")
        if v is None or np.isnan(v):
            return "nan"
        return f"{v:.3f}" if lo is None or np.isnan(lo) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"

    rows = [{"method": r["method"], "noise": r["noise"], "severity": r["severity"],
             "unchanged": r["n_unchanged"], "changed": r["n_changed"], "C [95% CI]": fmt(r, "consistency"),
             "Rsp [95% CI]": fmt(r, "responsiveness"), "RM [95% CI]": fmt(r, "rm")} for r in summary_table.rows()]
    return Table.from_rows(rows)


def rm_pivot(summary_table):
    """RM per method (rows) and noise (columns), averaged over the severities (NaN ones left out)."""
    from ..table import Table

    methods = list(dict.fromkeys(summary_table["method"].tolist()))
    noises = list(dict.fromkeys(summary_table["noise"].tolist()))
    cols = {"method": methods}
    for n in noises:
        vals = []
        for m in methods:
            v = summary_table.where(method=m, noise=n)["rm"].astype(float)
            v = v[np.isfinite(v)]
            vals.append(float(v.mean()) if v.size else float("nan"))
        cols[n] = vals
    return Table(cols)


def write_outputs(model, source, rows, out: str, args, *, report: bool, elapsed: float) -> dict[str, str]:
    """Write every output file; returns ``{kind: path}`` of what was written."""
    from .. import robustness as R

    written = {"rows": os.path.join(out, "rows.csv")}
    atomic_write(written["rows"], rows.to_csv())
    summ = R.summarise(rows, key=args.key)
    atomic_write(os.path.join(out, "summary.csv"), summ.to_csv())
    atomic_write(os.path.join(out, "summary.md"), _summary_markdown(summ))
    stats = statistics(rows)
    atomic_write(os.path.join(out, "friedman.md"), statistics_markdown(stats))
    if not report:
        return written
    from .. import plots

    figures = {"rm_by_noise.png": plots.rm_by_noise(summ),
               "similarity_vs_severity.png": plots.similarity_vs_severity(rows, args.similarity)}
    examples = example_maps(model, source, rows, args)
    stems = file_stems([str(image_id) for image_id, _ in examples], "maps_.png", out)
    for stem, (_, png) in zip(stems, examples):
        figures[f"maps_{stem}.png"] = png
    for name, png in figures.items():
        atomic_write(os.path.join(out, name), png)
    written["report"] = os.path.join(out, "report.html")
    build_report(rows, summ, stats, figures, examples, out, args, model, elapsed).write(written["report"])
    return written


def _summary_markdown(summ) -> str:
    return ("# Noise robustness summary\n\nC = mean similarity over pairs whose prediction did not change, "
            "Rsp = mean (1 - similarity) over pairs whose prediction changed, RM = C x Rsp; "
            "95% percentile bootstrap intervals.\n\n" + readable_summary(summ).to_markdown() + "\n")


def example_maps(model, source, rows, args) -> list[tuple[str, bytes]]:
    """Clean versus noisy maps (overlays) of the first images, the first noise, every severity, draw 0: the very
    noisy images of the run (same keys), explained again (the run keeps similarities, not maps) in batches of the
    run's clean passes, so the run's compiled explain program serves them. ``[(image id, PNG)]``."""
    import jax

    from .. import noise as N
    from ..datasets import as_source
    from ..plots import picture_grid
    from ..robustness import image_hash
    from ..viz import overlay

    batch = next(as_source(source).batches(EXAMPLE_IMAGES, size=model.input_size), None)
    if batch is None:
        return []
    noise, levels = args.noises[0], list(args.severities)
    methods = list(args.methods)[:EXAMPLE_METHODS]
    pixels = np.asarray(batch["image"], np.float32)
    n, k = len(pixels), len(levels)
    x_clean = _normalise(model, pixels)
    clean_cls = np.asarray(model(x_clean)).argmax(-1).astype(np.int32)
    rep = np.repeat(np.arange(n), k)
    noisy = N.perturb_batch((noise,), jax.random.key(args.key), pixels[rep],
                            np.asarray([image_hash(i) for i in batch["id"]], np.int32)[rep], 0,
                            np.tile(np.asarray(levels, np.int32), n), np.zeros(n * k, np.int32),
                            logits_fn=N.pixel_logits(model), labels=clean_cls[rep])
    noisy = np.asarray(noisy).reshape(n, k, *pixels.shape[1:])
    stack = np.concatenate([pixels[:, None], noisy], 1).reshape(-1, *pixels.shape[1:])  # per image: clean, levels
    classes = None if args.explain_class == "new_prediction" else np.repeat(clean_cls, k + 1)
    maps, cls = explain_in_batches(model, _normalise(model, stack), methods, classes,
                                   clean_pass_batch(source, args.image_batch), args.key)
    labels = list(model.class_names) if model.class_names else None
    out = []
    for i, image_id in enumerate(np.asarray(batch["id"]).astype(str).tolist()):
        sel = slice(i * (k + 1), (i + 1) * (k + 1))
        pictures = [[overlay(img, cam) for img, cam in zip(stack[sel], np.asarray(maps[m])[sel])] for m in methods]
        notes = [[_clean_note(cls[sel][0], labels)] + [_noisy_note(rows, image_id, m, noise, lv, args.similarity)
                                                       for lv in levels] for m in methods]
        cols = ["clean"] + [f"{noise} {lv}" for lv in levels]
        out.append((image_id, picture_grid(pictures, methods, cols, notes)))
    return out


def clean_pass_batch(source, image_batch: int) -> int:
    """The batch of the run's first clean pass (``image_batch`` images, fewer when the source has fewer): explaining
    the example pictures at this batch reuses that compiled program instead of compiling one for another shape."""
    from ..datasets import as_source

    try:
        n = len(as_source(source))
    except TypeError:  # a stream of unknown length
        return image_batch
    return max(1, min(image_batch, n))


def explain_in_batches(model, x: np.ndarray, methods: list[str], classes, batch: int, key):
    """``({method: maps (N, H, W)}, explained classes (N,))`` from explain() calls of ``batch`` images each, the
    last padded with its final image (whose repeated maps are dropped), so every call has one shape. A map does not
    depend on the other images of its batch, so the maps are those of one call over all of ``x``."""
    from .._explain import explain

    n = len(x)
    maps, explained = {m: [] for m in methods}, []
    for start in range(0, n, batch):
        idx = np.minimum(np.arange(start, start + batch), n - 1)
        got, _, cls = explain(model, x[idx], list(methods), None if classes is None else np.asarray(classes)[idx],
                              preprocessed=True, key=key, return_logits=True)
        keep = min(batch, n - start)
        for m in methods:
            maps[m].append(np.asarray(got[m])[:keep])
        explained.append(np.asarray(cls)[:keep])
    return {m: np.concatenate(v) for m, v in maps.items()}, np.concatenate(explained)


def _normalise(model, pixels: np.ndarray) -> np.ndarray:
    mean = np.asarray(model.mean, np.float32)
    std = np.asarray(model.std, np.float32)
    return (np.asarray(pixels, np.float32) - mean) / std


def _clean_note(cls: int, labels) -> str:
    name = labels[int(cls)] if labels is not None else f"class {int(cls)}"
    return name if len(name) <= 18 else name[:17] + "…"


def _noisy_note(rows, image_id: str, method: str, noise: str, level: int, similarity: str) -> str:
    """The run's similarity for this picture (draw 0), flagged when the prediction changed."""
    r = rows.where(image=image_id, method=method, noise=noise, severity=level, draw=0)
    if not len(r):
        return ""
    changed = " (new class)" if bool(r["changed"][0]) else ""
    return f"{similarity} {float(r['value'][0]):.2f}{changed}"


def build_report(rows, summ, stats, figures, examples, out, args, model, elapsed):
    """The self-contained report.html (see :mod:`jaxcam.report`)."""
    from .. import __version__
    from ..report import Report

    rep = Report("Noise robustness of CAM methods",
                 "RM = Consistency x Responsiveness (Sarkar et al., arXiv 2508.18154)")
    rep.section("Run configuration")
    rep.table(_config_table(rows, out, args, model, elapsed, __version__))
    rep.section("Summary")
    rep.text("C: mean similarity between the clean and the noisy map over pairs whose prediction did not change "
             "(stable when it should be). Rsp: mean (1 - similarity) over pairs whose prediction changed "
             "(responsive when it should be). RM = C x Rsp. Intervals: 95% percentile bootstrap. NaN: no pair in "
             "that set.")
    rep.table(rm_pivot(summ), caption="RM per method and noise, mean over severities")
    rep.image(figures["rm_by_noise.png"], "RM per method and noise (mean over severities)")
    rep.table(readable_summary(summ), caption="per method, noise and severity")
    rep.section("Statistics")
    rep.text(f"Per noise, a Friedman test across methods (blocks: image x severity x draw; value: the "
             f"{args.similarity} similarity), the Nemenyi post-hoc pairs, and Wilcoxon signed-rank pairs with "
             "Holm's correction.")
    for st in stats:
        rep.section(st.noise, level=3)
        if st.friedman is None:
            rep.text(st.note)
            continue
        rep.table(st.friedman.table, caption="Friedman")
        rep.table(st.friedman.ranks, caption="mean ranks (1 = most similar)")
        rep.table(st.friedman.posthoc, caption="Nemenyi")
        rep.table(st.wilcoxon, caption="Wilcoxon-Holm")
    rep.section("Similarity against severity")
    rep.image(figures["similarity_vs_severity.png"], f"mean {args.similarity} per method, one panel per noise")
    rep.section("Example maps")
    rep.text(f"Clean and noisy images ({args.noises[0]}, every severity, draw 0: the run's own noise) with each "
             f"method's map overlaid; under each noisy map its {args.similarity} similarity to the clean map.")
    for image_id, png in examples:
        rep.image(png, f"{image_id}: clean versus {args.noises[0]} noise")
    rep.section("Files")
    rep.text("In " + out + ": parts/*.parquet, run.json and manifest-*.json (the resumable run), rows.csv, "
             "summary.csv, summary.md, friedman.md, " + ", ".join(figures) + ".")
    return rep


def _config_table(rows, out, args, model, elapsed, version):
    import jax

    from ..table import Table

    items = [("model", f"{model.name} ({model.source})"),
             ("dataset", str(rows["dataset"][0]) if len(rows) else ""),
             ("images", len(set(rows["image"].tolist()))),
             ("methods", " ".join(args.methods)),
             ("noises", " ".join(args.noises)), ("severities", " ".join(map(str, args.severities))),
             ("draws", args.draws), ("similarity", args.similarity), ("explained class", args.explain_class),
             ("key", args.key), ("rows", len(rows)),
             ("prediction changed", f"{int(np.asarray(rows['changed'], bool).sum())} of {len(rows)} rows"),
             ("output directory", out), ("resumed", "yes" if args.resume else "no"),
             ("time", f"{time.perf_counter() - elapsed:.1f} s (this invocation, before the report)"),
             ("software", f"jaxcam {version}, jax {jax.__version__} on {jax.default_backend()}")]
    return Table({"setting": [k for k, _ in items], "value": [str(v) for _, v in items]})
