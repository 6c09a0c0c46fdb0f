"""``jaxcam ablate``: remove the regions a CAM highlights and see what the model loses, against random regions of
the same area (issue 16).

A thin layer over :func:`jaxcam.regions.cam_regions` and :func:`jaxcam.metrics.region_ablation`. Everything is
checked before any forward pass (options, output directory, image files, model, method, layer, ``--maps``, and that
every map has a region), and every number is computed before the first file is written; each file is written
atomically, so an error or an interrupted run leaves no partial file (and no new empty output directory).
"""

from __future__ import annotations

import os
import time

import numpy as np

from ..errors import InvalidArgumentError, MapError, UnknownNameError
from ..files import atomic_write
from .common import (add_images_arg, add_model_args, check_output_paths, display_name, formatter, load,
                     output_directory, quote, read_images, summary)
from .explain import Targets, applicable_methods, choose_classes, class_labels, compute_maps, decode, parse_layers

DEFAULT_OUT = os.path.join("runs", "ablate")
FILES = ("ablation.csv", "report.html")
CARD_SIDE = 192  # pictures in the report are shown at least this many pixels high (nearest-neighbour upscaling)
SMALL_INPUT = 100  # below this input size --quickshift uses small superpixels (LIME's defaults merge everything)
PALETTE = ((228, 26, 28), (55, 126, 184), (77, 175, 74), (152, 78, 163), (255, 127, 0), (166, 86, 40),
           (247, 129, 191), (0, 190, 190), (200, 200, 30), (90, 90, 90))  # region colour by rank (cycled)

EXAMPLES = """examples:
  jaxcam ablate                                   Grad-CAM regions of the sample photos blurred away (embedded model)
  jaxcam ablate cat.jpg dog.jpg --method layercam --how inpaint --out runs/pets-ablate
  jaxcam ablate photos/*.jpg --top 0.1 --min-area 20 --max-regions 3 --quickshift --seed 1
  jaxcam explain cat.jpg --method scorecam --out runs/cat && jaxcam ablate cat.jpg --method scorecam \\
      --maps runs/cat/maps.npz                    ablate the maps explain wrote (no recomputation)

--how: blur (RISE's Gaussian blur), mean (the image's mean colour), noise (uniform, from --seed) or inpaint (ROAD's
linear imputation). The control removes exactly as many pixels as the CAM regions, as random blobs from --seed.
outputs (in --out, default runs/ablate):
  ablation.csv   one row per image: class, probability, regions, area fraction, explained-class change (CAM regions
                 removed), the random control's change, largest rise of another class, top region
  report.html    self-contained: mean +- 95 % interval of CAM vs random change, and per image the photo, the map,
                 the numbered regions, both ablated pictures and the per-region numbers
"""


def add_parser(sub) -> None:
    p = sub.add_parser("ablate", help="CAM region ablation against same-area random regions, with a report",
                       description="Turn each image's CAM into ranked regions (threshold, connected components, "
                       "minimum area, optional Quickshift snapping), remove them (blur, mean, noise or inpainting) "
                       "and report how the explained class's probability changes, against random regions of the "
                       "same area.", epilog=EXAMPLES, formatter_class=formatter())
    add_images_arg(p)
    add_model_args(p)
    p.add_argument("--method", default="gradcam", metavar="NAME",
                   help="the CAM method whose regions are ablated (see `jaxcam methods`; default gradcam)")
    p.add_argument("--layer", nargs="+", metavar="NAME",
                   help="target layer(s) of the method (see `jaxcam layers --model M`; default: the model's)")
    p.add_argument("--maps", metavar="FILE.npz",
                   help="use the maps `jaxcam explain` wrote (its maps.npz, one class per image) for the same images "
                        "in the same order, instead of computing them; --method names the array")
    p.add_argument("--how", default="blur", metavar="ABLATION",
                   help="what replaces the removed pixels: blur, mean, noise or inpaint (default blur)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="keep the map's pixels >= this value in [0, 1] (default 0.5)")
    p.add_argument("--top", type=float, metavar="FRACTION",
                   help="keep the top FRACTION of pixels in (0, 1] instead of a threshold")
    p.add_argument("--min-area", type=int, default=1, metavar="PIXELS",
                   help="drop connected components smaller than this (default 1)")
    p.add_argument("--max-regions", type=int, default=5, metavar="K",
                   help="ablate the K regions with the highest mean map value (default 5)")
    p.add_argument("--quickshift", action="store_true",
                   help="snap the regions to Quickshift superpixels of the image (scikit-image)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random control regions and the noise (default 0)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="images per forward/explain call (bounds memory; default 8)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"output directory, created if needed; other files in it are kept (default {DEFAULT_OUT})")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..metrics.ablation import ablated_images, region_ablation

    start = time.perf_counter()
    check_options(args)
    maps_file = read_maps_file(args.maps, args.method) if args.maps else None
    with output_directory(args.out) as out:  # removed again if the command fails before writing anything
        check_output_paths(out, FILES)
        names, sources = read_images(args.images)
        names = [display_name(n) for n in names]
        images = decode(sources, args.max_pixels)
        model = load(args)
        x = model.preprocess(images)
        pixels = np.clip(np.asarray(x) * np.asarray(model.std, np.float32) + np.asarray(model.mean, np.float32),
                         0.0, 1.0)
        if maps_file is None:
            layers = parse_layers(args.layer)
            method = applicable_methods(model, [args.method], layers)[0][0]
            classes, _ = choose_classes(model, x, Targets(top=1), args.batch_size)
            cams = compute_maps(model, x, [method], classes, layers, args.batch_size)[method][:, 0]
            classes, layer = classes[:, 0], ", ".join(model.canonical_layer(ly) for ly in (layers or [None]))
        else:
            cams, classes, layer = maps_for(maps_file, names, model, x, args)
        options = region_options(args, model)
        check_regions(cams, pixels, names, options)
        result = region_ablation(model, pixels, cams, classes, key=args.seed, how=args.how,
                                 batch_size=args.batch_size, **options)
        cam_pictures, control_pictures = ablated_images(pixels, result, key=args.seed, how=args.how)
        labels = class_labels(model)
        table = per_image_table(result, names, labels)
        page = report(result, table, names, labels, pixels, cams, cam_pictures, control_pictures, model, layer,
                      args, time.perf_counter() - start)
        atomic_write(os.path.join(out, "ablation.csv"), table.to_csv())
        page.write(os.path.join(out, "report.html"))
    s = result.summary()
    summary(f"ablate: {len(names)} image(s), {args.method} regions ({args.how}): explained class "
            f"{s['mean'][0]:+.3f} vs random control {s['mean'][1]:+.3f}; wrote ablation.csv and report.html to "
            f"{quote(out)} in {time.perf_counter() - start:.1f} s")


# -- checks before any work ------------------------------------------------------------------------------------
def check_options(args) -> None:
    """Every option that needs no model, each error naming its flag."""
    from ..metrics.ablation import ABLATIONS

    if args.how not in ABLATIONS:
        raise UnknownNameError(args.how, ABLATIONS, "--how (ablation)")
    if args.top is not None:
        if not 0 < args.top <= 1:
            raise InvalidArgumentError(f"--top must be a fraction of pixels in (0, 1], got {args.top:g}")
    elif not 0 <= args.threshold <= 1:
        raise InvalidArgumentError(f"--threshold must be a map value in [0, 1] (maps are min-max scaled), got "
                                   f"{args.threshold:g}")
    for flag, value in (("--min-area", args.min_area), ("--max-regions", args.max_regions),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise InvalidArgumentError(f"{flag} must be a positive number, got {value}")
    if args.maps is None:
        from .explain import method_names

        if method_names([args.method]) == ["all"]:
            raise InvalidArgumentError("--method takes one method name for ablate, not 'all'")
    elif args.layer:
        raise InvalidArgumentError("--layer does not apply with --maps (the maps are already computed): drop one")


def read_maps_file(path: str, method: str) -> dict:
    """``{"maps", "classes" or None, "names" or None, "layer" or None}`` from ``jaxcam explain``'s maps.npz."""
    import zipfile

    if not os.path.isfile(path):
        raise MapError(f"--maps {quote(path)}: no such file (the maps.npz `jaxcam explain` writes)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise MapError(f"--maps {quote(path)} is not a readable .npz file: {exc}") from None
    candidates = [k for k, v in arrays.items() if v.dtype.kind == "f" and v.ndim >= 3]
    if method not in arrays:
        raise UnknownNameError(method, candidates, f"--method (the maps in {path})")
    classes = arrays.get("classes")
    names = arrays.get("names")
    layer = arrays.get("layer")
    return {"path": path, "maps": np.asarray(arrays[method]),
            "classes": None if classes is None else np.asarray(classes),
            "names": None if names is None else [str(n) for n in np.atleast_1d(names)],
            "layer": None if layer is None else ", ".join(str(v) for v in np.atleast_1d(layer))}


def maps_for(maps_file: dict, names: list[str], model, x, args) -> tuple[np.ndarray, np.ndarray, str]:
    """``(cams, classes, layer)`` from --maps, checked against the images and the model input: a map stack of the
    wrong shape, or maps of other images, is a MapError."""
    path, cams = quote(maps_file["path"]), maps_file["maps"]
    n, size = len(names), tuple(x.shape[1:3])
    if cams.shape != (n, *size):
        hint = "; explain wrote several classes per image (--target topK): rerun it with --target top1" \
            if cams.ndim == 4 else ""
        raise MapError(f"--maps {path}: the {args.method} maps must be (N, H, W) = {(n, *size)}, one map per image "
                       f"at {model.name}'s input size, got shape {cams.shape}{hint}")
    if maps_file["names"] is not None and maps_file["names"] != list(names):
        raise MapError(f"--maps {path} holds the maps of {', '.join(maps_file['names'])[:200]}, not of the images "
                       f"given ({', '.join(names)[:200]}): pass the same images in the same order")
    classes = maps_file["classes"]
    if classes is None or classes.shape != (n,):  # the predicted classes, as explain's default
        classes = choose_classes(model, x, Targets(top=1), args.batch_size)[0][:, 0]
    if classes.dtype.kind not in "iu" or not ((classes >= 0) & (classes < model.num_classes)).all():
        raise MapError(f"--maps {path}: its classes must be {n} indices in 0..{model.num_classes - 1}, got "
                       f"{classes.tolist()}"[:300])
    return cams.astype(np.float32), classes.astype(np.int32), maps_file["layer"] or "from --maps"


def region_options(args, model) -> dict:
    """The keyword arguments of :func:`jaxcam.regions.cam_regions` the flags give."""
    size = model.input_size
    small = min(size if isinstance(size, (tuple, list)) else (size,)) < SMALL_INPUT
    return {"threshold": args.threshold, "top": args.top, "min_area": args.min_area,
            "max_regions": args.max_regions, "snap": "quickshift" if args.quickshift else "none",
            "snap_options": {"kernel_size": 2, "max_dist": 10} if args.quickshift and small else None}


def check_regions(cams, pixels, names, options) -> None:
    """Every map has at least one region, before any forward pass: otherwise EmptyRegionsError naming the image."""
    from ..regions import EmptyRegionsError, cam_regions

    for name, cam, image in zip(names, cams, pixels):
        try:
            cam_regions(cam, image=image, **options)
        except EmptyRegionsError as exc:
            raise EmptyRegionsError(f"image {name}: {exc}") from None
        except MapError as exc:
            raise MapError(f"image {name}: {exc}") from None


# -- outputs ---------------------------------------------------------------------------------------------------
def per_image_table(result, names, labels):
    """ablation.csv: one row per image."""
    from ..table import Table

    n = len(names)
    d = result.after - result.before
    others = np.where(np.arange(d.shape[1])[None] == result.classes[:, None], -np.inf, d)
    rising = np.argmax(others, axis=1)
    top = result.top_region
    top_change = np.asarray([result.region_change[i, top[i] - 1] if top[i] > 0 else np.nan for i in range(n)])
    return Table({"image": np.asarray(names, object), "class": result.classes,
                  "class_name": np.asarray([labels[c] for c in result.classes], object),
                  "probability": result.before[np.arange(n), result.classes],
                  "regions": np.asarray([r.count for r in result.regions]),
                  "area_fraction": result.area_fraction, "explained_change": result.explained_change,
                  "control_explained_change": result.control_explained_change,
                  "others_change": result.others_change,
                  "rising_class": np.asarray([labels[c] for c in rising], object),
                  "control_others_change": result.control_others_change, "top_region": top,
                  "top_region_change": top_change})


def _upscaled(picture: np.ndarray) -> np.ndarray:
    reps = max(1, -(-CARD_SIDE // picture.shape[0]))
    return np.repeat(np.repeat(picture, reps, axis=0), reps, axis=1)


def regions_picture(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The photo faded to grey with each region filled in its rank's colour, outlined, and numbered."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    big = _upscaled(np.round(image * 255).astype(np.uint8))
    lab = _upscaled(labels)
    out = (0.35 * big.astype(np.float32) + 0.65 * big.mean(axis=-1, keepdims=True)).astype(np.float32)
    for k in range(1, int(lab.max()) + 1):
        m = lab == k
        colour = np.asarray(PALETTE[(k - 1) % len(PALETTE)], np.float32)
        out[m] = 0.45 * out[m] + 0.55 * colour
        out[m & ~ndimage.binary_erosion(m)] = colour
    pil = Image.fromarray(np.round(out).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for k in range(1, int(lab.max()) + 1):
        yx = np.argwhere(lab == k)
        y, x = yx[np.argmin(((yx - yx.mean(axis=0)) ** 2).sum(axis=1))]  # the region's pixel nearest its centroid
        draw.text((int(x) - 3, int(y) - 5), str(k), fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(pil)


def outlined(picture: np.ndarray, mask: np.ndarray, colour=(0, 230, 255)) -> np.ndarray:
    """``picture`` (upscaled, uint8) with the boundary of ``mask`` drawn in ``colour``."""
    from scipy import ndimage

    big = _upscaled(np.round(np.clip(picture, 0, 1) * 255).astype(np.uint8))
    m = _upscaled(mask)
    big[m & ~ndimage.binary_erosion(m)] = colour
    return big


def card_strip(image, cam, labels, cam_picture, control_picture, control_mask) -> bytes:
    """One PNG: photo | map | regions | CAM regions removed | random control removed (its blobs outlined in
    cyan), 8 px white between."""
    from ..viz import overlay, png_bytes

    pictures = [_upscaled(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)), _upscaled(overlay(image, cam)),
                regions_picture(image, labels), outlined(cam_picture, labels > 0, PALETTE[0]),
                outlined(control_picture, control_mask)]
    gap = np.full((pictures[0].shape[0], 8, 3), 255, np.uint8)
    row = [p for pic in pictures for p in (pic, gap)][:-1]
    return png_bytes(np.concatenate(row, axis=1))


def report(result, table, names, labels, pixels, cams, cam_pictures, control_pictures, model, layer, args, elapsed):
    from ..report import Report
    from ..table import Table

    page = Report(f"jaxcam ablate: {model.name}", f"{len(names)} image(s), {args.method} regions at layer {layer}, "
                  f"removed by {args.how}")
    page.section("Summary")
    page.text("Change of the explained class's probability (after minus before; negative: the class lost "
              "probability) when every CAM region is removed, and when the same number of pixels is removed as "
              "random blobs (the control). Mean over the images with its 95 % Student-t interval; 'cam - control' "
              "is the paired difference, negative when the map's regions matter more to the model than random "
              "regions of the same area.")
    s = result.summary()
    page.table(Table({"ablation": s["ablation"], "mean": s["mean"], "95 % low": s["low"], "95 % high": s["high"],
                      "images": s["n"]}))
    page.table(table, caption="per image (also in ablation.csv)")
    page.section("Configuration")
    items = [("model", f"{model.name} ({model.source})"), ("method", args.method), ("layer", layer),
             ("maps", args.maps or "computed"), ("ablation", args.how),
             ("regions", f"top {args.top:g} of pixels" if args.top is not None else f"map >= {args.threshold:g}"),
             ("min area", f"{args.min_area} px"), ("max regions", args.max_regions),
             ("quickshift", "yes" if args.quickshift else "no"), ("seed", args.seed),
             ("time", f"{elapsed:.1f} s (before the report)")]
    page.table(Table({"setting": [k for k, _ in items], "value": [str(v) for _, v in items]}))
    page.section("Per image")
    page.text("Each row: the photo; the map; the regions in rank order (1 = highest mean map value; the number sits "
              "in its region); every region removed (outlined); the random control, the same number of pixels as "
              "random blobs, removed (outlined in cyan).")
    for i, name in enumerate(names):
        c = int(result.classes[i])
        page.section(f"{name}: {labels[c]} ({result.before[i, c]:.3f})", level=3)
        page.image(card_strip(pixels[i], cams[i], result.regions[i].labels, cam_pictures[i], control_pictures[i],
                              result.control_masks[i]),
                   f"{name} | {args.method} map | regions by rank | regions removed ({args.how}): "
                   f"{result.explained_change[i]:+.3f} | random control removed: "
                   f"{result.control_explained_change[i]:+.3f}")
        rg = result.regions[i]
        hw = rg.labels.size
        page.table(Table({"region": np.arange(1, rg.count + 1), "area (px)": rg.areas,
                          "area fraction": rg.areas / hw, "mean map value": rg.scores,
                          "change removed alone": result.region_change[i, :rg.count]}),
                   caption=f"regions of {name}; all removed: area {result.area_fraction[i]:.3f}, explained class "
                           f"{result.explained_change[i]:+.3f}, control {result.control_explained_change[i]:+.3f}, "
                           f"largest other rise {result.others_change[i]:+.3f} ({table['rising_class'][i]})")
    return page
