"""The architecture registry: one literal dict from name to how to build it, its input and its default CAM layer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flax import nnx

from ..errors import UnknownArchitectureError
from .efficientnet_lite import EfficientNetLite
from .resnet import ResNet
from .vgg import VGG

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Architecture:
    """How to build one architecture and feed it.

    ``build(num_classes, rngs)`` returns the NNX module; ``default_layer`` is the stage CAMs use when no layer is
    given; ``mean``/``std`` normalise RGB in [0, 1]; ``head_key`` is the source-state-dict key of the classifier
    weight (its first dimension gives the number of classes); ``torchvision`` names the torchvision constructor
    used for conversion and parity checks (None for the embedded model, checked against timm instead).
    """

    name: str
    family: str
    build: Callable[[int, nnx.Rngs], nnx.Module]
    default_layer: str
    head_key: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    torchvision: str | None = None
    # source keys whose Linear weight multiplies an NCHW-flattened map: (key, (C, H, W))
    nchw_flatten: dict = field(default_factory=dict)


def _resnet(depth):
    return Architecture(f"resnet{depth}", "resnet", lambda n, rngs: ResNet(depth, n, rngs=rngs), "layer4",
                        "fc.weight", torchvision=f"resnet{depth}")


def _vgg(depth, bn):
    name = f"vgg{depth}" + ("_bn" if bn else "")
    return Architecture(name, "vgg", lambda n, rngs: VGG(depth, bn, n, rngs=rngs), "last_conv_relu",
                        "classifier.6.weight", torchvision=name, nchw_flatten={"classifier.0.weight": (512, 7, 7)})


ARCHITECTURES: dict[str, Architecture] = {
    **{f"resnet{d}": _resnet(d) for d in (18, 34, 50, 101, 152)},
    **{a.name: a for d in (11, 13, 16, 19) for a in (_vgg(d, False), _vgg(d, True))},
    "efficientnet_lite0": Architecture("efficientnet_lite0", "efficientnet_lite",
                                       lambda n, rngs: EfficientNetLite(n, rngs=rngs), "_bn1", "_fc.weight",
                                       mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise UnknownArchitectureError(name, ARCHITECTURES) from None
