"""``jaxcam explain``: class activation maps of images, written as overlays, one grid figure and the raw maps.

Everything is checked before any map is computed (options, output directory, image files, model, methods, layers,
classes), so a typo costs one line and writes nothing. Each file is written atomically; files already in
the output directory are only ever replaced by files of the same name, never deleted.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidArgumentError
from ..files import atomic_write
from .common import (add_images_arg, add_model_args, check_output_paths, display_name, file_stems, formatter,
                     load, output_directory, quote, read_images, summary)

EXAMPLES = """examples:
  jaxcam explain                                  Grad-CAM of the embedded model on scikit-image's sample photos
  jaxcam explain cat.jpg dog.png --method gradcam eigencam --out runs/pets
  jaxcam explain cat.jpg --method all --target top5 --out runs/cat
  jaxcam explain cat.jpg --target 281 --layer stage6 --alpha 0.6 --cmap jet
  jaxcam explain photos/*.jpg --model resnet50 --weights resnet50-0676ba61.pth --batch-size 4

outputs (in --out, default runs/explain):
  <image>_<method>_<class>-<name>.png   the photo with the map on top, one per image x method x class (a name
                                        too long or unsafe for a file name is shortened, with ~<hash>)
  grid.png                              rows: images (x classes with topK); columns: methods
  maps.npz                              one (N, H, W) array per method ((N, K, H, W) with topK), plus classes,
                                        probs, names (images), files (their file-name stems), class_names,
                                        methods, model and layer
  report.html                           one self-contained page (no network): explained classes and the grid
"""

GRID_MAX_PIXELS = 4000  # grid.png's longer side stays about this size (down to 40 dpi)
OVERLAY_MAX_SIDE = 2048  # overlays of larger photos are drawn scaled down to this longer side
DECODE_SIZE_HINT = 512  # photos with a shorter side of 2048+ px are decoded at reduced scale (shorter side >= 1024)
NOT_GAP_FC = "they need a global-average-pool + fully-connected head right after the target layer"


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="class activation maps: overlays, a grid figure and the raw maps",
                       description="Explain each image's predicted (or given) classes with CAM methods.",
                       epilog=EXAMPLES, formatter_class=formatter())
    add_images_arg(p)
    add_model_args(p)
    p.add_argument("--method", nargs="+", default=["gradcam"], metavar="NAME",
                   help="one or more methods (see `jaxcam methods`), or 'all' for every method that applies to the "
                        "model and layer (default: gradcam)")
    p.add_argument("--sycam", metavar="FORMULA|FILE",
                   help="the channel-weight expression the 'sycam' method runs: a formula such as 'mean(G) * max(A)' "
                        "or a JSON file written by jaxcam.sycam.save (see docs/sycam.md)")
    p.add_argument("--target", nargs="+", default=["top1"], metavar="CLASS",
                   help="class indices (one for every image, or one per image), 'top1' (each image's predicted "
                        "class; the default) or 'topK' such as 'top5' (each of the K most probable classes)")
    p.add_argument("--layer", nargs="+", metavar="NAME",
                   help="target layer(s): stage names, aliases or indices (see `jaxcam layers --model M`); several "
                        "are fused (default: the architecture's default CAM layer)")
    p.add_argument("--out", default=os.path.join("runs", "explain"), metavar="DIR",
                   help="output directory, created if needed; other files in it are kept (default: runs/explain)")
    p.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity over the photo, in [0, 1] (default 0.5)")
    p.add_argument("--cmap", default="inferno", help="matplotlib colormap (default inferno)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="images explained per call (bounds memory; default 8)")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Targets:
    """The parsed ``--target``: ``top`` = K for the K most probable classes, else explicit ``classes``."""

    top: int | None
    classes: tuple[int, ...] = ()


@dataclass
class Explanation:
    """Everything computed, ready to write: ``maps[method]`` is (N, K, H, W); ``classes``/``probs`` are (N, K);
    ``files[i]`` is the file-name stem of image ``names[i]`` (the name itself unless it is too long or unsafe)."""

    names: list
    files: list
    images: list
    maps: dict
    classes: np.ndarray
    probs: np.ndarray
    class_names: list
    model: str
    layers: list


def run(args) -> None:
    from .._explain import unavailable_methods

    start = time.perf_counter()
    targets, requested, layers = check_options(args)
    options = sycam_options(getattr(args, "sycam", None), requested)
    with output_directory(args.out) as out:  # removed again if the command fails before writing anything
        names, sources = read_images(args.images)
        images = decode(sources, args.max_pixels)
        model = load(args)
        methods, skipped = applicable_methods(model, requested, layers, options)
        files = output_stems(out, names, methods, model.num_classes)
        if skipped:
            print(f"jaxcam: note: --method all skips {', '.join(skipped)} on {model.name} ({NOT_GAP_FC})",
                  file=sys.stderr)
        if requested == ["all"] and all_needs_options(options):
            print(f"jaxcam: note: --method all leaves out {all_needs_options(options)} (they need an input made in "
                  "Python, passed as method_options: broadcam's weights from jaxcam.fit_broadcam, sycam's expression "
                  "from jaxcam.sycam.synthesize)", file=sys.stderr)
            for name, why in unavailable_methods(model).items():
                print(f"jaxcam: note: --method all leaves out {name} on {model.name}: {why}", file=sys.stderr)
        x = model.preprocess(images)
        classes, probs = choose_classes(model, x, targets, args.batch_size)
        maps = compute_maps(model, x, methods, classes, layers, args.batch_size, options)
        result = Explanation([display_name(n) for n in names], files, images, maps, classes, probs, class_labels(model), model.name,
                             [model.canonical_layer(ly) for ly in (layers or [None])])
        n_overlays = write_outputs(out, result, args.alpha, args.cmap)
    k = f" x {classes.shape[1]} classes" if classes.shape[1] > 1 else ""
    summary(f"wrote {n_overlays} overlays, grid.png, maps.npz and report.html for {_count(len(names), 'image')}{k} x "
            f"{_count(len(methods), 'method')} to {quote(out)} in {time.perf_counter() - start:.1f} s")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# -- checks before any work ------------------------------------------------------------------------------------
def check_options(args) -> tuple[Targets, list[str], list | None]:
    """Validate everything that needs no model: ``(targets, method names, layers)``."""
    from ..viz import check_alpha, check_cmap

    check_alpha(args.alpha)
    check_cmap(args.cmap)
    if args.batch_size < 1:
        raise InvalidArgumentError(f"--batch-size must be a positive number of images, got {args.batch_size}")
    return parse_targets(args.target), method_names(args.method), parse_layers(args.layer)


def _swallowed(flag: str, value) -> None:
    """A multi-value option placed before the images takes them as its values: when a rejected value is a file,
    say so plainly instead of listing valid names."""
    if isinstance(value, str) and os.path.isfile(value):
        raise InvalidArgumentError(f"{flag} got the file {value!r}; list image files before {flag} (or after '--')")


def method_names(values) -> list[str]:
    """The requested method names, de-duplicated, or ``["all"]``; unknown names raise UnknownNameError."""
    from ..errors import UnknownNameError
    from ..methods import METHODS

    if "all" in values:
        return ["all"]
    for v in values:
        if v not in METHODS:
            _swallowed("--method", v)
            raise UnknownNameError(v, list(METHODS) + ["all"], "--method")
    return list(dict.fromkeys(values))


def parse_targets(values) -> Targets:
    """``top1``/``topK`` alone, or integer class indices."""
    tops = [v for v in values if re.fullmatch(r"top\d+", v)]
    if tops:
        if len(values) > 1:
            raise InvalidArgumentError(f"--target {tops[0]} must be given alone, got {' '.join(values)}")
        k = int(tops[0][3:])
        if k < 1:
            raise InvalidArgumentError(f"--target {tops[0]}: K must be at least 1")
        return Targets(top=k)
    try:
        return Targets(top=None, classes=tuple(int(v) for v in values))
    except ValueError:
        bad = next(v for v in values if not re.fullmatch(r"[+-]?\d+", v))
        _swallowed("--target", bad)
        raise InvalidArgumentError(f"--target takes class indices, 'top1' or 'topK' (e.g. top5), got {bad!r}") from None


def parse_layers(values) -> list | None:
    """Layer names as given, with plain integers read as stage indices; None for the default layer."""
    if not values:
        return None
    return [int(v) if re.fullmatch(r"-?\d+", v) else v for v in values]


def all_needs_options(given: dict | None = None) -> str:
    """The registered methods that need an option without a default (BroadCAM's fitted weights, SyCAM's
    expression) and were not given it."""
    from ..methods import METHODS

    return ", ".join(m for m, spec in METHODS.items() if spec.requires and m not in (given or {}))


def sycam_options(value: str | None, requested: list[str]) -> dict:
    """``method_options`` for ``--sycam``: a formula (parsed now, so a typo fails before any work) or an existing
    file (loaded now). Given without the method asked for, it is an error rather than silently unused."""
    from ..sycam import load, parse

    if value is None:
        return {}
    if requested != ["all"] and "sycam" not in requested:
        raise InvalidArgumentError("--sycam gives the expression of the 'sycam' method, but --method does not ask "
                                   "for it (add --method sycam)")
    path = Path(value)
    expression = load(path) if path.suffix == ".json" or path.is_file() else parse(value)
    return {"sycam": {"expression": expression}}


def applicable_methods(model, requested: list[str], layers, options: dict | None = None) -> tuple[list[str], list[str]]:
    """``(methods to run, methods skipped)``. Each method's program is configured once here, which validates the
    layers against the model (UnknownLayerError); 'all' skips the methods that need a GAP+FC head when the layer is
    not followed by one, while a method named explicitly raises."""
    from .. import explainer
    from .._explain import unavailable_methods
    from ..errors import UnknownLayerError
    from ..methods import METHODS

    run, skipped = [], []
    for name in (list(METHODS) if requested == ["all"] else requested):
        opts = {name: options[name]} if options and name in options else None
        if requested == ["all"] and ((METHODS[name].requires and not opts) or name in unavailable_methods(model)):
            continue  # BroadCAM's fitted weights exist only in Python; methods this model cannot run at any layer
        try:
            explainer(model, name, layers, method_options=opts)
        except UnknownLayerError as exc:
            _swallowed("--layer", exc.name)
            if requested != ["all"] or not METHODS[name].gap_fc_only:
                raise
            skipped.append(name)
            continue
        run.append(name)
    return run, skipped


def decode(sources, max_pixels=None) -> list[np.ndarray]:
    """Every image as float32 RGB in [0, 1], upright (EXIF orientation); unreadable or corrupt files raise
    ImageFileError naming the file, files above ``--max-pixels`` ImageTooLargeError, all before any model is loaded.
    A large photo is decoded at reduced scale (shorter side >= 2 * DECODE_SIZE_HINT, still twice or more the
    model input), which bounds its memory: the model input and the overlays are made from these pixels."""
    from ..data import max_pixels_scope, to_rgb

    with max_pixels_scope(max_pixels):
        return [to_rgb(s, size_hint=DECODE_SIZE_HINT) for s in sources]


def class_labels(model) -> list[str]:
    """The model's own class names (ImageNet's for the built-in models), else ``class <i>``."""
    if model.class_names:
        return list(model.class_names)
    return [f"class {i}" for i in range(model.num_classes)]


# -- computing -------------------------------------------------------------------------------------------------
def _chunks(n: int, batch_size: int) -> list[np.ndarray]:
    """Index arrays of at most ``batch_size`` images; the last is padded with its final image so every call has
    the same batch shape (one compiled program) - the padding's maps are dropped."""
    size = min(batch_size, n)
    return [np.minimum(np.arange(s, s + size), n - 1) for s in range(0, n, size)]


def choose_classes(model, x, targets: Targets, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, probs)``, both (N, K): the top-K classes, or the given ones, with their softmax probabilities."""
    import jax

    from ..errors import ClassIndexError
    from ..targets import class_indices

    n = x.shape[0]
    if targets.top is not None and not 1 <= targets.top <= model.num_classes:
        raise ClassIndexError(f"--target top{targets.top}: K must be in [1, {model.num_classes}]")
    given = None if targets.top is not None else np.asarray(class_indices(targets.classes, n, model.num_classes))
    probs = np.zeros((n, model.num_classes), np.float32)
    for idx in _chunks(n, batch_size):
        probs[idx] = np.asarray(jax.nn.softmax(model(x[idx]), axis=-1))
    if given is not None:
        classes = given[:, None]
    else:
        classes = np.argsort(-probs, axis=1, kind="stable")[:, :targets.top]
    return classes.astype(np.int32), np.take_along_axis(probs, classes, axis=1)


def method_groups(methods: list[str]) -> list[list[str]]:
    """The explain() calls to make: every single-pass method together (they share one forward and one batched
    backward), each ensemble together with its requested members (computed once, shared), and every other
    multi-pass method on its own, so the progress bar moves while the slow ones run."""
    from ..methods import METHODS
    from ..methods.multipass import META_MEMBERS

    def single_pass(name):
        spec = METHODS[name]
        return spec.output in ("weighted", "projection", "map") and not (spec.full_forwards or spec.head_passes)

    groups = [[m for m in methods if single_pass(m)]]
    rest = [m for m in methods if not single_pass(m)]
    for ensemble in [m for m in rest if METHODS[m].output == "ensemble"]:
        members = [m for m in rest if m in META_MEMBERS]
        groups.append(members + [ensemble])
        rest = [m for m in rest if m not in groups[-1]]
    return [g for g in groups + [[m] for m in rest] if g]


def compute_maps(model, x, methods: list[str], classes: np.ndarray, layers, batch_size: int,
                 options: dict | None = None) -> dict:
    """``{method: (N, K, H, W) maps}`` from one explain() call per method group x class rank x batch, with a
    progress bar on a terminal."""
    from tqdm import tqdm

    from .. import explain

    n, k = classes.shape
    chunks = _chunks(n, batch_size)
    groups = method_groups(methods)
    maps = {m: np.zeros((n, k, *x.shape[1:3]), np.float32) for m in methods}
    with tqdm(total=len(groups) * k * len(chunks), desc="explain", unit="call", disable=None,
              file=sys.stderr) as bar:
        for group in groups:
            bar.set_postfix_str(group[0] + (f" +{len(group) - 1} more" if len(group) > 1 else ""))
            for rank in range(k):
                for idx in chunks:
                    opts = {m: o for m, o in (options or {}).items() if m in group}
                    out = explain(model, x[idx], group, targets=classes[idx, rank], layer=layers, preprocessed=True,
                                  method_options=opts)
                    for method in group:  # padded repeats write the same map twice
                        maps[method][idx, rank] = np.asarray(out[method])
                    bar.update()
    return maps


# -- writing ---------------------------------------------------------------------------------------------------
SLUG_MAX = 40  # characters of the class name in an overlay's file name


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:SLUG_MAX] or "class"


def overlay_name(image: str, method: str, cls: int, label: str) -> str:
    """``<image>_<method>_<class>-<class name>.png``; ``image`` is the image's file stem (see output_stems)."""
    return f"{image}_{method}_{cls}-{_slug(label)}.png"


def output_stems(out: str, names: list[str], methods: list[str], num_classes: int) -> list[str]:
    """Each image's file-name stem for its overlays, checked before any map is computed: the name itself, or a
    shortened/repaired one with a hash when the name plus the longest overlay suffix
    (``_<method>_<class>-<40-character class name>.png``) would not fit the file system or holds characters it
    refuses (:func:`~jaxcam.cli.common.file_stems`). maps.npz (``files``) and report.html record the mapping."""
    longest = max(methods, key=lambda m: len(m.encode("utf-8")))
    stems = file_stems(names, f"_{longest}_{num_classes - 1}-{'x' * SLUG_MAX}.png", out)
    check_output_paths(out, ["grid.png", "maps.npz", "report.html"]
                       + [f"{stem}_{longest}_{num_classes - 1}-{'x' * SLUG_MAX}.png" for stem in stems])
    return stems


def write_outputs(out: str, r: Explanation, alpha: float, cmap: str) -> int:
    """Write the overlays, grid.png, maps.npz and report.html (each atomically); returns how many overlays were
    written."""
    from ..viz import overlay, png_bytes

    count = 0
    for i, stem in enumerate(r.files):
        photo = overlay_photo(r.images[i])
        for method, stack in r.maps.items():
            for rank, cls in enumerate(r.classes[i]):
                picture = overlay(photo, stack[i, rank], alpha, cmap)
                atomic_write(os.path.join(out, overlay_name(stem, method, int(cls), r.class_names[cls])),
                             png_bytes(picture))
                count += 1
    grid = grid_png(r, alpha, cmap)
    atomic_write(os.path.join(out, "grid.png"), grid)
    atomic_write(os.path.join(out, "maps.npz"), npz_bytes(r))
    report(r, grid).write(os.path.join(out, "report.html"))
    return count


def overlay_photo(image: np.ndarray) -> np.ndarray:
    """The photo an overlay is drawn on, uint8: as decoded, or scaled down (aspect ratio kept, antialiased) to a
    longer side of OVERLAY_MAX_SIDE, since drawing costs about 80 bytes a pixel (float copies and the colormap's
    float64 RGBA)."""
    from PIL import Image

    u8 = np.round(np.asarray(image, np.float32) * 255).astype(np.uint8)
    h, w = u8.shape[:2]
    scale = OVERLAY_MAX_SIDE / max(h, w)
    if scale >= 1.0:
        return u8
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(u8).resize(size, Image.BILINEAR))


def report(r: Explanation, grid: bytes):
    """report.html: one self-contained page (no network) with the predictions and the grid figure."""
    from ..report import Report
    from ..table import Table

    rows = [{"image": name, "rank": rank + 1, "class": int(cls), "name": r.class_names[cls],
             "probability": float(r.probs[i, rank])}
            for i, name in enumerate(r.names) for rank, cls in enumerate(r.classes[i])]
    page = Report(f"jaxcam explain: {r.model}",
                  f"{len(r.names)} image(s) x {len(r.maps)} method(s) at layer {', '.join(r.layers)}")
    page.section("Explained classes").table(Table.from_rows(rows))
    page.section("Maps").image(grid, "rows: images (x classes); columns: methods; maps in [0, 1]")
    page.text("Every overlay is also a PNG file beside this report; the raw maps are in maps.npz.")
    renamed = [(name, stem) for name, stem in zip(r.names, r.files) if name != stem]
    if renamed:
        page.text("These images' names are too long for a file name or hold characters a file system refuses; "
                  "their overlays' file names start with a shortened form and a hash instead:")
        page.table(Table({"image": [n for n, _ in renamed], "overlay files start with": [f for _, f in renamed]}))
    return page


def grid_png(r: Explanation, alpha: float, cmap: str) -> bytes:
    """Rows: images (x class ranks with topK); columns: methods; titles "method — class name probability"."""
    from ..viz import grid_figure

    n, k = r.classes.shape
    rows = [(i, rank) for i in range(n) for rank in range(k)]
    labels = [r.names[i] + (f" #{rank + 1}" if k > 1 else "") for i, rank in rows]
    titles = {m: [f"{m} — {r.class_names[r.classes[i, rank]]} {r.probs[i, rank]:.2f}" for i, rank in rows]
              for m in r.maps}
    maps = {m: [stack[i, rank] for i, rank in rows] for m, stack in r.maps.items()}
    dpi = max(40, min(100, int(GRID_MAX_PIXELS / (2.2 * max(len(maps), len(rows))))))  # big grids: lower dpi
    return grid_figure([r.images[i] for i, _ in rows], maps, titles, labels, alpha, cmap, dpi=dpi)


def npz_bytes(r: Explanation) -> bytes:
    """maps.npz: one array per method, (N, H, W) with one class per image or (N, K, H, W) with topK (K > 1), and
    the classes, probabilities and class names (N,) or (N, K), image ``names`` and the ``files`` stems their
    overlays are named by, ``methods``, ``model`` and ``layer`` (the stage name of each target layer)."""
    one = r.classes.shape[1] == 1

    def per_image(a):
        return a[:, 0] if one else a

    labels = np.asarray([[r.class_names[c] for c in row] for row in r.classes])
    arrays = {m: per_image(stack) for m, stack in r.maps.items()}
    arrays.update(classes=per_image(r.classes), probs=per_image(r.probs), class_names=per_image(labels),
                  names=np.asarray(r.names), files=np.asarray(r.files), methods=np.asarray(list(r.maps)),
                  model=np.asarray(r.model),
                  layer=np.asarray(r.layers))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()
