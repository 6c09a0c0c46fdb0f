"""Gradient-family methods: each is ``(Inputs, Context) -> (h, w, K)`` weighted activations whose channel sum
(or first principal component, with ``eigen_smooth``) is the raw map. One forward and one backward feed them all.

Parity: matches pytorch-grad-cam 1.5.7 (formulas and epsilons in each docstring).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .base import Context, Inputs


def _sum_hw(t):
    """Per-channel spatial sum, kept (1, 1, K) so it broadcasts against (h, w, K) without rank promotion."""
    return jnp.sum(t, axis=(0, 1), keepdims=True)


def _mean_hw(t):
    return jnp.mean(t, axis=(0, 1), keepdims=True)


def gradcam(inp: Inputs, ctx: Context):
    """Grad-CAM (Selvaraju et al., ICCV 2017): ``w_k = mean_ij G_k``, map ``sum_k w_k A_k``. 1F + 1B."""
    return inp.acts * _mean_hw(inp.grads)


def cam(inp: Inputs, ctx: Context):
    """CAM (Zhou et al., CVPR 2016) for GAP + FC heads: ``w_k = W_fc[c, k] = sum_ij G_k`` exactly there (the driver
    refuses layers not followed by global average pooling and the classifier). 1F + 1B (the backward is the FC)."""
    return inp.acts * _sum_hw(inp.grads)


def gradcam_plusplus(inp: Inputs, ctx: Context):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018), pytorch-grad-cam's form of the paper's Eq. 19:
    ``a = G^2 / (2 G^2 + (sum_ab A_k) G^3 + 1e-6)``, ``a = 0`` where ``G = 0``, ``w_k = sum_ij relu(G) a``.
    Like pytorch-grad-cam (and unlike the authors' code) alpha is not renormalised per channel. 1F + 1B."""
    g, a = inp.grads, inp.acts
    g2 = g * g
    alpha = g2 / (2 * g2 + _sum_hw(a) * g2 * g + 1e-6)
    alpha = jnp.where(g != 0, alpha, 0.0)
    return a * _sum_hw(jax.nn.relu(g) * alpha)


def xgradcam(inp: Inputs, ctx: Context):
    """XGrad-CAM (Fu et al., BMVC 2020): ``w_k = sum_ij G_k A_k / (sum_ij A_k + 1e-7)``. 1F + 1B."""
    a = inp.acts
    return a * _sum_hw(inp.grads * a / (_sum_hw(a) + 1e-7))


def hirescam(inp: Inputs, ctx: Context):
    """HiResCAM (Draelos & Carin, 2020): element-wise ``G * A`` summed over channels. 1F + 1B. Equals Grad-CAM times
    h*w for GAP + FC heads; provably faithful for flatten + FC heads."""
    return inp.grads * inp.acts


def gradcam_elementwise(inp: Inputs, ctx: Context):
    """Grad-CAM element-wise (pytorch-grad-cam): ``sum_k relu(G_k * A_k)``. 1F + 1B."""
    return jax.nn.relu(inp.grads * inp.acts)


def layercam(inp: Inputs, ctx: Context):
    """LayerCAM (Jiang et al., TIP 2021): ``sum_k relu(G_k) * A_k``; works on shallow layers. 1F + 1B.
    (pytorch-grad-cam, which jaxcam matches, has no tanh rescaling across layers.)"""
    return jax.nn.relu(inp.grads) * inp.acts


def eigengradcam(inp: Inputs, ctx: Context):
    """Eigen-Grad-CAM (pytorch-grad-cam): first principal component of ``G * A`` (the driver projects). 1F + 1B."""
    return inp.grads * inp.acts


def shapleycam(inp: Inputs, ctx: Context):
    """ShapleyCAM (Cai et al., arXiv 2501.06261): ``w_k = mean_ij (G - 1/2 H A)_k`` with ``H A`` the
    Hessian-vector product of the target w.r.t. A in the direction A. Default target: ``rest``
    (``y_c + log softmax_c``), which the paper pairs it with; for a piecewise-linear head and the raw logit the
    Hessian vanishes and ShapleyCAM equals Grad-CAM. 1F + 1B + one forward-over-reverse HVP."""
    return inp.acts * _mean_hw(inp.grads - 0.5 * inp.hvp)
