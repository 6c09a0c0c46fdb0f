"""The ``jaxcam`` command: a thin layer over the public API (no maths here).

    jaxcam predict                      top-5 of the embedded model on scikit-image's sample photographs
    jaxcam predict cat.jpg dog.png -k 3 --model resnet50 --weights resnet50.pth
    jaxcam models                       architectures, default CAM layers and stages
"""

from __future__ import annotations

import argparse
import sys

from . import JaxcamError, load_model, sample_images
from .data import SAMPLE_IMAGES
from .models import ARCHITECTURES


def _predict(args) -> None:
    model = load_model(args.model, weights=None if args.random_weights else (args.weights or "default"))
    if args.images:
        names, images = list(args.images), list(args.images)
    else:
        samples = sample_images()
        names, images = list(samples), list(samples.values())
    pred = model.predict(images, k=args.k)
    print(f"{model.name} ({model.source})")
    for name, classes, probs, labels in zip(names, pred.classes, pred.probs, pred.names):
        print(f"\n{name}")
        for c, p, label in zip(classes, probs, labels):
            print(f"  {p:6.3f}  {c:4d}  {label}")
    print(f"\npredicted {len(names)} image(s) with {model.name}")


def _models(args) -> None:
    for name in ARCHITECTURES:
        model = load_model(name, weights=None) if args.stages else None
        line = f"{name:20s} default layer {ARCHITECTURES[name].default_layer}"
        if model is not None:
            line += f" ({model.default_layer}); stages: {', '.join(model.stage_names)}"
        print(line)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxcam", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n" + __doc__.split("\n\n")[1])
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="top-k ImageNet predictions")
    pr.add_argument("images", nargs="*", help=f"image files (default: scikit-image's {', '.join(SAMPLE_IMAGES)})")
    pr.add_argument("--model", default="efficientnet_lite0", help="architecture or converted checkpoint name")
    pr.add_argument("--weights", help="torchvision state dict (.pth/.pt/.npz), converted once and cached")
    pr.add_argument("--random-weights", action="store_true", help="deterministic random weights (testing)")
    pr.add_argument("-k", type=int, default=5, help="how many classes to show (default 5)")
    pr.set_defaults(func=_predict)
    mo = sub.add_parser("models", help="list architectures and their default CAM layers")
    mo.add_argument("--stages", action="store_true", help="also list every stage name (builds each model)")
    mo.set_defaults(func=_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (JaxcamError, OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"jaxcam: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
