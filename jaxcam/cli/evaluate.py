"""``jaxcam evaluate``: score CAM methods with evaluation metrics; tables, statistics and a self-contained report.

Runs :func:`jaxcam.evaluate` (every method on every image, every metric on every map), optionally the cascading
model-parameter randomisation sanity check, and writes into ``--out``: ``metrics.csv``/``metrics.md`` (one row per
image x method x metric), ``means.csv``/``means.md`` (per method), ``friedman.md`` (with 3 or more images),
``sanity.csv``/``sanity.md`` (with ``--sanity``), the figures as PNG and ``report.html``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

import numpy as np

from ..errors import JaxcamError, MaskError, UnknownNameError
from ..files import atomic_write
from .common import (add_images_arg, add_model_args, display_name, for_model, formatter, load, method_list,
                     output_directory, quote, read_images, summary)

DEFAULT_METHODS = ("gradcam", "gradcam++", "xgradcam")
DEFAULT_OUT = os.path.join("runs", "evaluate")
MASK_EXTENSIONS = (".png", ".bmp", ".gif", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".ppm", ".pgm")

EXAMPLES = """examples:
  jaxcam evaluate                                 default metrics, 3 methods, embedded model, sample photos
  jaxcam evaluate cat.jpg dog.jpg --methods gradcam scorecam --metrics faithfulness --out runs/pets
  jaxcam evaluate --metrics localisation --boxes boxes.json   boxes: {"chelsea": [[y0, x0, y1, x1]], ...}
  jaxcam evaluate --metrics pointing_game iou --masks masks/   masks/<image name>.png, object pixels non-zero
  jaxcam evaluate --sanity                        add cascading model-parameter randomisation

--metrics takes metric names, families (faithfulness, localisation, complexity, stability) or 'all'; metrics that
need ground truth (localisation) are skipped with a note unless --masks or --boxes is given. Boxes are in the
original image's pixels, (y0, x0, y1, x1) with exclusive ends, one box or a list of boxes per image name.
outputs (in --out): metrics.csv, metrics.md, means.csv, means.md, friedman.md (3+ images), sanity.csv and
sanity.md (--sanity), metric_means.png, maps.png, randomisation.png (--sanity) and report.html (self-contained).
"""


class EvaluateArgumentError(JaxcamError, ValueError):
    """Command-line options that do not describe a valid evaluation."""


def add_parser(sub) -> None:
    from ..evaluate import DEFAULT_METRICS

    p = sub.add_parser("evaluate", help="score CAM methods with faithfulness/localisation/... metrics, with a report",
                       description="Score CAM methods with evaluation metrics (faithfulness, localisation, "
                       "complexity, stability), optionally a model-randomisation sanity check, and write tables, "
                       "statistics, figures and a self-contained report.html.",
                       epilog=EXAMPLES, formatter_class=formatter())
    add_images_arg(p)
    add_model_args(p)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                   help=f"CAM methods, or 'all' (default: {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), metavar="METRIC",
                   help=f"metric names, families or 'all' (default: {' '.join(DEFAULT_METRICS)})")
    p.add_argument("--masks", metavar="DIR",
                   help="ground-truth masks: DIR/<image name>.<png|jpg|...>, object pixels bright/non-zero")
    p.add_argument("--boxes", metavar="FILE.json",
                   help='ground-truth boxes: {"<image name>": [y0, x0, y1, x1] or [[y0, x0, y1, x1], ...]}')
    p.add_argument("--sanity", action="store_true",
                   help="also run cascading model-parameter randomisation (Adebayo et al. 2018)")
    p.add_argument("--key", type=int, default=0, help="random seed of ROAD's noise and other random choices")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------- the command


def run(args) -> None:
    """Validate everything, evaluate, then write the tables, figures and report."""
    from .robustness import check_image_file

    t0 = time.perf_counter()
    methods = resolve_methods(args.methods)
    metrics = resolve_metrics(args.metrics)
    if args.masks and args.boxes:
        raise EvaluateArgumentError("give --masks DIR or --boxes FILE.json, not both")
    metrics, notes = _drop_unsupported(metrics, have_truth=bool(args.masks or args.boxes))
    names, images = read_images(args.images)
    for img in images:
        if isinstance(img, str):
            check_image_file(img)
    mask_paths = locate_masks(args.masks, names) if args.masks else None
    boxes = read_boxes(args.boxes, names) if args.boxes else None
    if boxes is not None:
        check_boxes(args.boxes, boxes, names, images)
    names = [display_name(n) for n in names]  # found masks by the file's own name; every output can hold these
    with output_directory(args.out) as out:  # removed again if the command fails before writing anything
        model = load(args)
        methods = for_model(methods, args.methods, model)
        size = model.input_size
        masks = None
        if mask_paths is not None:
            masks = read_masks(mask_paths, size)
        elif boxes is not None:
            masks = boxes_to_input_masks(boxes, images, size)
        x = model.preprocess(images)
        rows, maps, classes = _evaluate(model, x, methods, metrics, masks, args.key)
        rows = _named(rows, names)
        sanity = _sanity(model, x, methods, args.key, names) if args.sanity else None
        paths = write_outputs(rows, sanity, maps, classes, x, model, names, out, args,
                              dict(methods=methods, metrics=metrics, notes=notes, truth=args.masks or args.boxes,
                                   elapsed=t0))
    for note in notes:
        print(f"note: {note}")
    summary(f"evaluate: {len(names)} images x {len(methods)} methods x {len(metrics)} metrics = {len(rows)} rows"
            f"{' + sanity check' if sanity is not None else ''} in {time.perf_counter() - t0:.1f} s; "
            f"report {quote(paths['report'])}")


def resolve_methods(spec: list[str]) -> list[str]:
    """Method names (``all``: every registered method that runs on any layer), each checked."""
    return method_list(spec, EvaluateArgumentError, keep=lambda m: not m.gap_fc_only)


def metric_families() -> list[str]:
    from ..evaluate import METRICS

    return list(dict.fromkeys(s.family for s in METRICS.values()))


def resolve_metrics(spec: list[str]) -> list[str]:
    """Metric names from names, families (``faithfulness``, ``localisation``, ...) and ``all``, in order, once."""
    from ..evaluate import METRICS

    families = metric_families()
    out: list[str] = []
    for item in spec:
        if item == "all":
            out += list(METRICS)
        elif item in families:
            out += [m for m, s in METRICS.items() if s.family == item]
        elif item in METRICS:
            out.append(item)
        else:
            raise UnknownNameError(item, [*METRICS, *families, "all"], "--metrics")
    return list(dict.fromkeys(out))


def _drop_unsupported(metrics: list[str], have_truth: bool) -> tuple[list[str], list[str]]:
    """Leave out the metrics that need ground truth when none is given (with a note); error if none remain."""
    from ..evaluate import METRICS

    if have_truth:
        return metrics, []
    need = [m for m in metrics if METRICS[m].needs == "masks"]
    kept = [m for m in metrics if m not in need]
    if need and not kept:
        raise EvaluateArgumentError(f"the metrics asked for ({', '.join(need)}) need ground truth: pass --masks DIR "
                                    "or --boxes FILE.json")
    notes = [f"skipped {', '.join(need)}: they need ground truth (--masks DIR or --boxes FILE.json)"] if need else []
    return kept, notes


# ------------------------------------------------------------------------------------------------ ground truth


def _find_mask(folder: str, name: str) -> str | None:
    for ext in MASK_EXTENSIONS:
        for candidate in (name + ext, name + ext.upper()):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    return None


def locate_masks(folder: str, names: list[str]) -> list[str]:
    """The mask file ``folder/<name>.<ext>`` of every image name (checked before any work starts)."""
    if not os.path.isdir(folder):
        raise MaskError(f"--masks: folder not found: {folder}")
    paths = [_find_mask(folder, n) for n in names]
    missing = [n for n, p in zip(names, paths) if p is None]
    if missing:
        raise MaskError(f"--masks {folder}: no mask file for {', '.join(missing)} (expected <image name>.png or "
                        f"another image extension)")
    return paths


def read_masks(paths: list[str], size: int) -> np.ndarray:
    """``(N, size, size)`` bool masks: pixels brighter than half the mask's maximum are the object, stretched to
    the model input like the images (nearest neighbour). Masks go through the images' decoder (pixel cap, EXIF
    orientation, reduced-scale decoding of a huge file), so a mask lines up with its photo as displayed."""
    from PIL import Image

    from ..data import to_rgb
    from ..errors import ImageError

    out = np.zeros((len(paths), size, size), bool)
    for i, path in enumerate(paths):
        try:
            rgb = to_rgb(path, size_hint=size)
        except ImageError as exc:
            raise MaskError(f"cannot read mask {path}: {exc}") from None
        luma = rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as PIL's convert("L")
        a = np.asarray(Image.fromarray(luma, mode="F").resize((size, size), Image.NEAREST), np.float32)
        if a.max() <= 0:
            raise MaskError(f"mask {path} is empty (no non-zero pixel)")
        out[i] = a > a.max() / 2
    return out


def read_boxes(path: str, names: list[str]) -> list[np.ndarray]:
    """Per image name, its boxes ``(B, 4)`` as ``(y0, x0, y1, x1)`` in the original image's pixels, from a JSON
    file ``{"<image name>": [y0, x0, y1, x1] | [[...], ...]}`` (extra names are ignored)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise MaskError(f"--boxes {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MaskError(f"--boxes {path} must hold a JSON object {{image name: boxes}}, got {type(data).__name__}")
    missing = [n for n in names if n not in data]
    if missing:
        raise MaskError(f"--boxes {path} has no boxes for {', '.join(missing)}; its images: "
                        f"{', '.join(map(str, data)) or 'none'}")
    boxes = []
    for n in names:
        try:
            boxes.append(np.asarray(data[n], np.float64).reshape(-1, 4))
        except (TypeError, ValueError):
            raise MaskError(f"--boxes {path}: the boxes of {n} must be [y0, x0, y1, x1] or a list of them, "
                            f"got {data[n]!r}") from None
    return boxes


def check_boxes(path: str, boxes: list[np.ndarray], names: list[str], images: list) -> None:
    """Before any work: every box must cover at least one pixel of its image, in the original image's pixels (a box
    outside it is a wrong coordinate order, image or scale); the error names the image, its size and the box."""
    from ..metrics.inputs import box_problem, box_text

    for name, bs, img in zip(names, boxes, images):
        h, w = _image_hw(img)
        for box in bs:
            problem = box_problem(box, h, w)
            if problem:
                source = f" ({img})" if isinstance(img, (str, os.PathLike)) else ""
                raise MaskError(f"--boxes {quote(path)}: box {box_text(box)} of image {name}{source} {problem}; "
                                f"{name} is {h} x {w} (h x w) pixels and boxes are (y0, x0, y1, x1) in its pixels, "
                                "ends exclusive")


def _image_hw(image) -> tuple[int, int]:
    """``(height, width)`` of an image as displayed (EXIF orientation applied), from a file's header alone."""
    from ..data import image_size

    if isinstance(image, (str, os.PathLike)):
        return image_size(image)
    return tuple(np.asarray(image).shape[:2])


def boxes_to_input_masks(boxes: list[np.ndarray], images: list, size: int) -> np.ndarray:
    """``(N, size, size)`` masks of boxes given in the original images' pixels, scaled to the model input (the
    images are stretched to it)."""
    from ..metrics import boxes_to_masks

    scaled = []
    for b, img in zip(boxes, images):
        h, w = _image_hw(img)
        scaled.append(b * np.asarray([size / h, size / w, size / h, size / w]))
    return boxes_to_masks(scaled, (size, size))


# -------------------------------------------------------------------------------------------------- evaluation


def _evaluate(model, x, methods, metrics, masks, key):
    """``(rows, {method: maps}, classes)`` from one :func:`jaxcam.evaluate` call: every method explained together
    (one compiled program, one forward and one backward shared by the gradient methods), the metrics scored on
    those maps, and the same maps returned for the pictures, so no map is computed twice. A method that cannot run
    stops the command as before (the methods are checked against the model before any work)."""
    from ..evaluate import evaluate

    if sys.stderr.isatty():
        print(f"evaluate: {len(methods)} method(s) x {len(metrics)} metric(s) on {x.shape[0]} image(s) ...",
              file=sys.stderr, flush=True)
    table, maps, classes = evaluate(model, x, list(methods), metrics, masks=masks, preprocessed=True, key=key,
                                    return_maps=True)
    return table, {m: np.asarray(maps[m]) for m in methods}, np.asarray(classes)


def _named(table, names: list[str]):
    """The table with its image indices replaced by the images' names."""
    from ..table import Table

    cols = {c: table[c] for c in table.columns}
    cols["image"] = np.asarray([names[int(i)] for i in table["image"]], object)
    return Table(cols)


def _sanity(model, x, methods, key, names):
    from ..metrics.sanity import cascading_randomisation

    if sys.stderr.isatty():
        print(f"sanity check: cascading randomisation of {model.name} for {len(methods)} method(s) ...",
              file=sys.stderr, flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        table = cascading_randomisation(model, x, methods, preprocessed=True, key=key)
    return _named(table, names)


# ----------------------------------------------------------------------------------------------------- outputs


def means_table(rows):
    """Tidy per-method statistics of each metric: mean, standard deviation and count over the images."""
    from ..table import Table

    out = []
    for metric in dict.fromkeys(rows["metric"].tolist()):
        sub = rows.where(metric=metric)
        for method in dict.fromkeys(sub["method"].tolist()):
            v = np.asarray(sub.where(method=method)["value"], float)
            f = v[np.isfinite(v)]
            out.append({"method": method, "metric": metric, "higher_is_better": bool(sub["higher_is_better"][0]),
                        "mean": float(f.mean()) if f.size else float("nan"),
                        "std": float(f.std(ddof=1)) if f.size > 1 else float("nan"), "n": int(f.size)})
    return Table.from_rows(out)


def means_pivot(means):
    """Methods as rows, metrics as columns (``↑`` higher is better, ``↓`` lower), the means as values."""
    from ..table import Table

    methods = list(dict.fromkeys(means["method"].tolist()))
    cols = {"method": methods}
    for metric in dict.fromkeys(means["metric"].tolist()):
        sub = means.where(metric=metric)
        arrow = "↑" if bool(sub["higher_is_better"][0]) else "↓"
        cols[f"{metric} {arrow}"] = [float(sub.where(method=m)["mean"][0]) for m in methods]
    return Table(cols)


def friedman_tests(rows) -> list[tuple[str, object | None, str]]:
    """Per metric, a Friedman test across methods over the images: ``[(metric, FriedmanResult or None, note)]``."""
    from ..metrics import friedman
    from ..metrics.statistics import StatisticsError

    out = []
    for metric in dict.fromkeys(rows["metric"].tolist()):
        sub = rows.where(metric=metric)
        higher = bool(sub["higher_is_better"][0])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = friedman(sub, block="image", higher_is_better=higher, nan_policy="omit")
            out.append((metric, res, ""))
        except (StatisticsError, ValueError) as exc:
            out.append((metric, None, f"not computed: {exc}"))
    return out


def friedman_markdown(tests, reason: str = "") -> str:
    """``friedman.md``: per metric, the tables or why they were not computed (a note may quote names: escaped)."""
    from ..table import escape_markdown

    lines = ["# Methods compared per metric (Friedman over images, Nemenyi post-hoc)", ""]
    if reason:
        return "\n".join(lines + [reason, ""])
    for metric, res, note in tests:
        lines += [f"## {escape_markdown(metric)}", ""]
        if res is None:
            lines += [escape_markdown(note), ""]
            continue
        lines += [res.table.to_markdown(), "", "Mean ranks (1 = best):", "", res.ranks.to_markdown(), "",
                  "Nemenyi:", "", res.posthoc.to_markdown(), ""]
    return "\n".join(lines) + "\n"


def sanity_summary(sanity):
    """Mean similarity to the trained model's maps per method, step and similarity measure."""
    from ..table import Table

    out = []
    methods = list(dict.fromkeys(sanity["method"].tolist()))
    keys = sorted(dict.fromkeys(zip(sanity["method"].tolist(), sanity["step"].tolist(), sanity["stage"].tolist(),
                                    sanity["relative_to_layer"].tolist())), key=lambda k: (methods.index(k[0]), k[1]))
    sims = list(dict.fromkeys(sanity["similarity"].tolist()))
    for method, step, stage, rel in keys:
        sub = sanity.where(method=method, step=step)
        row = {"method": method, "step": step, "stage": stage, "relative_to_layer": rel}
        for s in sims:
            v = np.asarray(sub.where(similarity=s)["value"], float)
            v = v[np.isfinite(v)]
            row[s] = float(v.mean()) if v.size else float("nan")
        out.append(row)
    return Table.from_rows(out)


def write_outputs(rows, sanity, maps, classes, x, model, names, out, args, info) -> dict[str, str]:
    """Write the tables, figures and report; returns ``{kind: path}``."""
    from .. import plots

    paths = {"report": os.path.join(out, "report.html")}
    atomic_write(os.path.join(out, "metrics.csv"), rows.to_csv())
    atomic_write(os.path.join(out, "metrics.md"), "# Metrics per image and method\n\n" + rows.to_markdown() + "\n")
    means = means_table(rows)
    atomic_write(os.path.join(out, "means.csv"), means.to_csv())
    atomic_write(os.path.join(out, "means.md"), "# Mean per method (↑ higher is better, ↓ lower is better)\n\n"
                 + means_pivot(means).to_markdown() + "\n")
    methods = info["methods"]
    reason = "" if len(names) >= 3 and len(methods) >= 2 else (
        f"Not computed: Friedman tests need at least 3 images and 2 methods (got {len(names)} and {len(methods)}).")
    tests = [] if reason else friedman_tests(rows)
    atomic_write(os.path.join(out, "friedman.md"), friedman_markdown(tests, reason))
    figures = {"metric_means.png": plots.metric_means(rows), "maps.png": _maps_figure(maps, classes, x, model, names)}
    if sanity is not None:
        atomic_write(os.path.join(out, "sanity.csv"), sanity.to_csv())
        atomic_write(os.path.join(out, "sanity.md"), "# Cascading randomisation: mean similarity to the trained "
                     "model's maps\n\n" + sanity_summary(sanity).to_markdown() + "\n")
        figures["randomisation.png"] = plots.randomisation_curves(sanity)
    for name, png in figures.items():
        atomic_write(os.path.join(out, name), png)
    _report(rows, means, tests, reason, sanity, figures, model, names, out, args, info).write(paths["report"])
    return paths


def _maps_figure(maps, classes, x, model, names) -> bytes:
    """Each method's map on each image (rows: images; columns: methods)."""
    from ..plots import picture_grid
    from ..viz import overlay

    pixels = np.clip(np.asarray(x) * np.asarray(model.std, np.float32) + np.asarray(model.mean,
                                                                                         np.float32), 0.0, 1.0)
    labels = list(model.class_names) if model.class_names else None
    methods = list(maps)
    pictures = [[overlay(pixels[i], maps[m][i]) for m in methods] for i in range(len(names))]
    row_labels = [f"{n}\n{labels[int(c)][:18] if labels else f'class {int(c)}'}" for n, c in zip(names, classes)]
    return picture_grid(pictures, row_labels, methods)


def _report(rows, means, tests, reason, sanity, figures, model, names, out, args, info):
    from ..report import Report

    rep = Report("Evaluation of CAM methods", f"{model.name}: {len(names)} images, {len(info['methods'])} methods, "
                 f"{len(info['metrics'])} metrics")
    rep.section("Configuration")
    rep.table(_config_table(model, names, out, args, info))
    for note in info["notes"]:
        rep.text(f"Note: {note}.")
    rep.section("Mean per method")
    rep.text("↑: higher is better; ↓: lower is better. Mean over the images; error bars in the figure: standard "
             "error.")
    rep.table(means_pivot(means))
    rep.image(figures["metric_means.png"], "mean of each metric per method")
    rep.section("Maps")
    rep.image(figures["maps.png"], "each method's map on each image (the class explained is the prediction)")
    rep.section("Statistics")
    if reason:
        rep.text(reason)
    for metric, res, note in tests:
        rep.section(metric, level=3)
        if res is None:
            rep.text(note)
            continue
        rep.table(res.table, caption="Friedman")
        rep.table(res.ranks, caption="mean ranks (1 = best)")
        rep.table(res.posthoc, caption="Nemenyi")
    if sanity is not None:
        rep.section("Sanity check: cascading randomisation")
        rep.text("The model's parameters are re-initialised from the classifier down, one more stage at each step; "
                 "a method whose maps explain the model should move away from its trained maps (similarity towards "
                 "0). Adebayo et al., NeurIPS 2018.")
        rep.table(sanity_summary(sanity))
        rep.image(figures["randomisation.png"], "similarity to the trained model's maps against the step")
    rep.section("Per image")
    rep.table(rows)
    return rep


def _config_table(model, names, out, args, info):
    import jax

    from .. import __version__
    from ..table import Table

    items = [("model", f"{model.name} ({model.source})"), ("images", ", ".join(names)),
             ("methods", " ".join(info["methods"])), ("metrics", " ".join(info["metrics"])),
             ("ground truth", info["truth"] or "none"), ("sanity check", "yes" if args.sanity else "no"),
             ("key", args.key), ("output directory", out),
             ("time", f"{time.perf_counter() - info['elapsed']:.1f} s (before the report)"),
             ("software", f"jaxcam {__version__}, jax {jax.__version__} on {jax.default_backend()}")]
    return Table({"setting": [k for k, _ in items], "value": [str(v) for _, v in items]})
