"""Activation-only methods (no gradients)."""

from __future__ import annotations

from .base import Context, Inputs


def eigencam(inp: Inputs, ctx: Context):
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): first principal component of the centred activations
    (the driver projects). Class-agnostic, no gradients: 1F + one small SVD. Matches pytorch-grad-cam 1.5.7 up to
    the SVD's arbitrary sign; jaxcam fixes the sign (see ``eigen_sign``)."""
    return inp.acts
