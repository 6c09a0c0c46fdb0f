"""torchvision VGG-11/13/16/19, with and without BatchNorm, in Flax NNX, NHWC.

Stages mirror torchvision's indices: ``features.0 ... features.{n-1}`` (conv, [bn], relu, maxpool each a stage),
``avgpool`` (``AdaptiveAvgPool2d((7, 7))``, exact for any input size), ``classifier.0 ... classifier.6`` (dropout
is the identity in inference). The flatten before ``classifier.0`` is NHWC; the conversion permutes that layer's
rows once so PyTorch's NCHW flatten order is reproduced exactly. Default CAM layer: the last ReLU of ``features``
(14x14 at 224 input; ``features.29`` for VGG-16), the usual Grad-CAM choice for VGG.
"""

from __future__ import annotations

import jax
from flax import nnx

from .layers import adaptive_avg_pool, batch_norm, conv, linear, max_pool

CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


def _identity(x):
    return x


def _maxpool2(x):
    return max_pool(x, 2, 2, 0)


def _flatten_then(fc):
    """``classifier.0`` sees the pooled map flattened (NHWC order; the conversion permutes its rows to match)."""
    return lambda x: fc(x.reshape(x.shape[0], -1))


class VGG(nnx.Module):
    def __init__(self, depth: int, batch_norm_: bool = False, num_classes: int = 1000, *, rngs: nnx.Rngs):
        layers, kinds, cin = {}, [], 3
        for v in CONFIGS[depth]:
            if v == "M":
                kinds.append("maxpool")
                continue
            layers[str(len(kinds))] = conv(cin, v, 3, 1, 1, bias=True, rngs=rngs)
            kinds.append("conv")
            if batch_norm_:
                layers[str(len(kinds))] = batch_norm(v, rngs=rngs)
                kinds.append("bn")
            kinds.append("relu")
            cin = v
        self.kinds = tuple(kinds)
        self.features = nnx.Dict(layers)
        self.classifier = nnx.Dict({"0": linear(512 * 7 * 7, 4096, rngs=rngs),
                                    "3": linear(4096, 4096, rngs=rngs),
                                    "6": linear(4096, num_classes, rngs=rngs)})

    def stages(self):
        out = []
        for i, kind in enumerate(self.kinds):
            fn = {"relu": jax.nn.relu, "maxpool": _maxpool2}.get(kind) or self.features[str(i)]
            out.append((f"features.{i}", fn))
        out.append(("avgpool", lambda x: adaptive_avg_pool(x, (7, 7))))
        head = (_flatten_then(self.classifier["0"]), jax.nn.relu, _identity, self.classifier["3"], jax.nn.relu,
                _identity, self.classifier["6"])
        out += [(f"classifier.{i}", fn) for i, fn in enumerate(head)]
        return out

    def layer_aliases(self):
        last_relu = max(i for i, k in enumerate(self.kinds) if k == "relu")
        return {"features": f"features.{len(self.kinds) - 1}", "last_conv_relu": f"features.{last_relu}"}
