"""The base CAM that refinement methods (SSA, AD-CAM) start from: a gradient method's map at one layer.

SSA and AD-CAM do not define channel weights of their own: they take an "immature" CAM and spread it along a
structure read from the network (feature affinity, self-attention). Which CAM they start from is an option; the
choices are the single-pass gradient methods whose raw map is the channel sum of weighted activations.
"""

from __future__ import annotations

import jax

from ..errors import UnknownNameError
from . import gradient
from .base import Context, Inputs, channel_sum

BASE_CAMS = {
    "gradcam": gradient.gradcam,
    "gradcam++": gradient.gradcam_plusplus,
    "xgradcam": gradient.xgradcam,
    "hirescam": gradient.hirescam,
    "layercam": gradient.layercam,
}


def base_cam(inp: Inputs, ctx: Context, name: str) -> jax.Array:
    """``relu(sum_k weighted_k)``: the (h, w) map of the gradient method ``name`` at this layer, negative evidence
    removed before it is spread (a refinement must not carry "against the class" into the object's region)."""
    if name not in BASE_CAMS:
        raise UnknownNameError(name, BASE_CAMS, "base CAM")
    return jax.nn.relu(channel_sum(BASE_CAMS[name](inp, ctx)))
