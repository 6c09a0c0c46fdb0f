"""The reference CNN of the synthetic benchmark: a small plain ``flax.linen`` classifier, explained and trained
through :func:`jaxcam.from_linen` exactly as a user's own module would be.

Three stages of two 3x3 convolutions with ReLU, each ending in a 2x2 average pool (48 px -> 24 -> 12 -> 6), then
global average pooling and a linear ``head``: the GAP + FC shape on which CAM's closed form holds at ``stage3``.
No BatchNorm and no dropout, so training and explaining run the same function. About 70 000 parameters at the
default widths; it reaches high accuracy on :mod:`jaxcam.synthetic` in a couple of CPU minutes (see
``scripts/train_reference.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..keys import init_key


class ConvStage(nn.Module):
    """Two 3x3 convolutions with ReLU, then a 2x2 average pool."""

    features: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.features, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(self.features, (3, 3), name="conv2")(x))
        return nn.avg_pool(x, (2, 2), (2, 2))


class ReferenceCNN(nn.Module):
    """``stage1`` .. ``stage3`` (:class:`ConvStage`), global average pooling and ``head`` (nn.Dense)."""

    num_classes: int = 4
    widths: Sequence[int] = (16, 32, 64)

    @nn.compact
    def __call__(self, x):
        for i, w in enumerate(self.widths):
            x = ConvStage(w, name=f"stage{i + 1}")(x)
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


def reference_model(key=0, *, num_classes: int = 4, size: int = 48, widths: Sequence[int] = (16, 32, 64),
                    variables=None, name: str = "reference-cnn"):
    """A :class:`jaxcam.Model` of :class:`ReferenceCNN`: freshly initialised from ``key`` (through
    :func:`jaxcam.keys.init_key`), or holding
    ``variables`` (a trained ``{"params": ...}``). Inputs are normalised with mean = std = 0.5; the default CAM
    layer is the last stage."""
    from ..synthetic import SYNTHETIC_CLASSES
    from .linen import from_linen

    module = ReferenceCNN(num_classes, tuple(widths))
    if variables is None:
        # jitted with an RBG key: flax's eager init runs op by op, and threefry's initialisers compile slowly
        variables = jax.jit(module.init)(init_key(key), jnp.zeros((1, size, size, 3), jnp.float32))
    variables = jax.tree.map(jnp.asarray, dict(variables))
    names = SYNTHETIC_CLASSES[:num_classes] if num_classes <= len(SYNTHETIC_CLASSES) else None
    return from_linen(module, variables, input_size=size, mean=(0.5,) * 3, std=(0.5,) * 3, default_layer="stage3",
                      class_names=names, name=name, source="jaxcam.models.reference_cnn")


__all__ = ["ConvStage", "ReferenceCNN", "reference_model"]
