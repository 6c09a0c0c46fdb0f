"""Methods whose map the model computes itself, read from its ``Tapped.map_sites`` in the same forward.

AME-CAM (Chen, Hu, Shi & Ho, "AME-CAM: Attentive Multiple-Exit CAM for Weakly Supervised Segmentation on MRI
Brain Tumor", MICCAI 2023, arXiv 2306.14505): a classifier trained with exits on its intermediate stages and an
attention network that weighs the exits' class maps pixel by pixel (:mod:`jaxcam.train.ame` builds and trains it).
Its final map is part of the model, so the method only selects the explained class's channel. Cost: the one
forward (no gradient); parity: the module's own output (tests/test_ame.py).
"""

from __future__ import annotations

import jax

from .base import Context, Inputs


def amecam(inp: Inputs, ctx: Context) -> jax.Array:
    """The explained class's channel of the model's own per-class map: (h, w, C) -> (h, w)."""
    del ctx
    return inp.maps[:, :, inp.cls]
