"""``jaxcam predict``: top-k ImageNet predictions. ``-k`` is checked before any image is decoded or any model
loaded, against the model's class count once it is loaded and before anything is computed."""

from __future__ import annotations

from ..errors import InvalidArgumentError
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
    if args.k < 1:
        raise InvalidArgumentError(f"-k must be at least 1 (how many classes to show), got {args.k}")
    names, images = read_images(args.images)
    model = load(args)
    if args.k > model.num_classes:
        raise InvalidArgumentError(f"-k {args.k} is more than {model.name}'s {model.num_classes} classes: pass "
                                   f"-k {model.num_classes} or fewer")
    pred = model.predict(images, k=args.k)
    print(f"{model.name} ({model.source})")
    for name, classes, probs, labels in zip(names, pred.classes, pred.probs, pred.names):
        print(f"\n{name}")
        for c, p, label in zip(classes, probs, labels):
            print(f"  {p:6.3f}  {c:4d}  {label}")
    summary(f"\npredicted {len(names)} image(s) with {model.name}")
