"""``jaxcam predict``: top-k ImageNet predictions."""

from __future__ import annotations

from .common import add_images_arg, add_model_args, formatter, load, read_images, summary

EXAMPLES = """examples:
  jaxcam predict                                  top-5 of the embedded model on scikit-image's sample photos
  jaxcam predict cat.jpg dog.png -k 3 --model resnet50 --weights resnet50.pth
"""


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="top-k ImageNet predictions", epilog=EXAMPLES, formatter_class=formatter())
    add_images_arg(p)
    add_model_args(p)
    p.add_argument("-k", type=int, default=5, help="how many classes to show (default 5)")
    p.set_defaults(func=run)


def run(args) -> None:
    names, images = read_images(args.images)
    model = load(args)
    pred = model.predict(images, k=args.k)
    print(f"{model.name} ({model.source})")
    for name, classes, probs, labels in zip(names, pred.classes, pred.probs, pred.names):
        print(f"\n{name}")
        for c, p, label in zip(classes, probs, labels):
            print(f"  {p:6.3f}  {c:4d}  {label}")
    summary(f"\npredicted {len(names)} image(s) with {model.name}")
