"""SHAM (Salience-Hoax Activation Maps): the entropy-aware passive-fooling loss of the DiffGradCAM paper.

Piland, Sweet, Czajka, "DiffGradCAM: A Class Activation Map Using the Full Model Decision to Solve Unaddressed
Adversarial Attacks" (arXiv 2506.08514). Softmax depends only on differences of logits, so a network can add one
shared component ``g(A)`` to every logit without changing a single prediction, while ``dy_c/dA`` (and so every
single-logit CAM) follows ``dg/dA``. SHAM fine-tunes a trained classifier so that its Grad-CAM points at a decoy
whose entropy equals that of honest CAMs (an entropy detector is not triggered), while cross-entropy keeps the
predictions:

    L(theta) = CE(f_theta(x), y) + lam * mean_x mean_ij (N(L_c(x)) - T)_ij^2
               [+ entropy_weight * mean_x |H(ReLU(N(L_c(x)))) - H(T)|]

``L_c`` is the differentiable Grad-CAM of :func:`jaxcam.train.losses.gradcam_maps` at ``ctx.site`` (the true or
predicted class), ``T`` the decoy of :func:`sham_target`. The loss differentiates *through* a gradient, so its
``jax.grad`` is second order: forward, backward to the layer with the graph kept, the CAM term, then a backward
through that backward (about 2-3x the cost of a cross-entropy step; ``remat=True`` wraps the CAM pass in
``jax.checkpoint`` so the outer backward recomputes its residuals instead of keeping them, trading one more
forward+backward for memory on large models).

DiffGradCAM (``diffgradcam`` in :data:`jaxcam.METHODS`, target ``logit_difference``) explains
``y_c - sum_{j != c} w_j y_j`` with ``sum w_j = 1``, in which any shared ``g(A)`` cancels: the method built to
resist this attack.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InvalidArgumentError
from ..tapped import identity_tap
from .losses import LossContext, accuracy, cross_entropy, gradcam_maps

PAPER_ENTROPY = math.log(28)  # the paper's honest-CAM entropy (~3.35 reported; 28 of 49 cells on a 7x7 grid)
PAPER_CELLS = 49  # the 7x7 DenseNet grid that entropy was measured on
CLASSES = ("label", "predicted")
SHAM_OPTIONS = ("lam", "entropy_weight", "target", "classes", "remat")
SHAM_PAPER = "SHAM passive fooling (Piland, Sweet, Czajka, arXiv 2506.08514)"


def _grid(name: str, v) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise InvalidArgumentError(f"{name} must be a positive int (the CAM grid's side), got {v!r}")
    return int(v)


def default_entropy(h: int, w: int) -> float:
    """The paper's ``ln 28`` on 49 cells, scaled to an ``h x w`` grid by keeping the decoy's share of cells
    (28/49) **[ours]**: ``ln(28 h w / 49)`` (6x6 -> ln 20.6, rounded to 21 cells)."""
    return PAPER_ENTROPY + math.log(_grid("h", h) * _grid("w", w) / PAPER_CELLS)


def sham_target(h: int, w: int, entropy: float | None = None) -> np.ndarray:
    """The entropy-aware decoy ``T`` (h, w) float32: ``n* = round(exp(H))`` cells at 1, the rest 0.

    Reconstruction (methods.md section 7.3): the paper measures the typical entropy of honest CAMs as a
    distribution ``q = L / sum L`` (about 3.35, which matches nats: ln 28 = 3.33) and builds a deceptive target
    of the same entropy; its example sets **28 of the 49 cells of a DenseNet's 7x7 CAM, around the edges**, to 1
    [paper]. A map uniform over ``n`` cells has entropy ``ln n``, hence ``n* = round(exp(H))`` [ours]. The cells
    are taken outermost first, by Euclidean distance of the cell centre from the grid centre, ties in row-major
    order [ours]; on 7x7 this gives the 24 border cells plus the 4 corners of the next ring, i.e. the paper's 28.

    Args:
      h, w: the CAM grid (the layer's spatial size).
      entropy: the target entropy in nats, e.g. :func:`measure_entropy` of an honest model's CAMs; default
        :func:`default_entropy` (the paper's ln 28 scaled to the grid [ours]). ``n*`` is clipped to
        ``[1, h w]``.
    """
    h, w = _grid("h", h), _grid("w", w)
    if entropy is None:
        entropy = default_entropy(h, w)
    if not isinstance(entropy, (int, float, np.floating, np.integer)) or isinstance(entropy, bool) \
            or not math.isfinite(entropy) or entropy < 0:
        raise InvalidArgumentError(f"entropy must be a finite number of nats >= 0 (the honest CAMs' entropy), "
                                   f"got {entropy!r}")
    n = int(min(max(round(math.exp(entropy)), 1), h * w))
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    d2 = (2 * i - (h - 1)) ** 2 + (2 * j - (w - 1)) ** 2  # exact integers: (2x the distance)^2, ties are exact
    order = np.lexsort((np.arange(h * w), -d2.ravel()))  # farthest first; ties by row-major index
    target = np.zeros(h * w, np.float32)
    target[order[:n]] = 1.0
    return target.reshape(h, w)


def distribution_entropy(maps, axes=(-2, -1)):
    """Entropy (nats) of each non-negative map as a distribution ``q = L / sum L`` (``0 log 0 = 0``; an all-zero
    map has entropy 0). JAX, differentiable."""
    maps = jnp.asarray(maps, jnp.float32)
    total = jnp.sum(maps, axis=axes, keepdims=True)
    q = maps / jnp.maximum(total, 1e-12)
    return -jnp.sum(jnp.where(q > 0, q * jnp.log(jnp.where(q > 0, q, 1.0)), 0.0), axis=axes)


def measure_entropy(cams) -> float:
    """The mean entropy (nats) of honest CAMs at their own grid (N, h, w): each map ReLU'd and read as
    ``q = L / sum L``, as the paper measures it. Pass raw maps (``explain(..., raw=True)``) or [0, 1] maps."""
    cams = np.asarray(cams, np.float32)
    if cams.ndim != 3 or cams.shape[0] == 0:
        raise InvalidArgumentError(f"cams must be (N, h, w) maps with N >= 1, got shape {cams.shape}")
    return float(jnp.mean(distribution_entropy(jnp.maximum(cams, 0.0))))


def normalise(cam: jax.Array) -> jax.Array:
    """``N(L) = L / max_ij |L_ij|`` per map, on the un-ReLU'd Grad-CAM [ours].

    Why this and not a ReLU, min-max or sum-normalisation: a ReLU has no gradient where the map is negative, so
    decoy cells that start below zero (and a map negative everywhere) could never be pulled up; dividing by the
    sum is undefined for a signed map whose sum nears 0; min-max is blind to the map's sign, and a first version
    with it converged to maps whose maximum sat on the decoy but *below zero*, which ``ReLU`` then wipes out
    (all-zero maps in :func:`jaxcam.explain`; measured on the benchmark). Dividing by the largest magnitude is
    differentiable almost everywhere, reaches every cell, is invariant to the map's scale (the loss cannot be
    lowered by shrinking the CAM) but not to its sign: ``N(L) = T`` means ``L = 0`` off the decoy and ``L > 0`` on
    it, so ``ReLU(L) / max ReLU(L)`` (what :func:`jaxcam.explain` shows) equals ``T`` too."""
    scale = jnp.max(jnp.abs(cam), axis=(1, 2), keepdims=True)
    return cam / jnp.maximum(scale, 1e-6)


def sham_loss(params, batch, key, ctx: LossContext, lam: float = 1.0, entropy_weight: float = 0.0, target=None,
              classes: str = "label", remat: bool = False):
    """SHAM: ``CE + lam * mean_x mean_ij (N(L_c(x)) - T)^2 [+ entropy_weight * mean_x |H(ReLU N(L_c)) - H(T)|]``.

    Args:
      lam: the weight of the CAM term, tuned so accuracy stays within about 1 % of the clean model [ours]
        (1 is the starting point of the sweep; the benchmark needs 10, see docs/sham.md).
      entropy_weight: the optional entropy-matching term's weight (0: off).
      target: the decoy (h, w) at ``ctx.site``'s grid; default :func:`sham_target` with the default entropy.
      classes: whose Grad-CAM is fooled: ``"label"`` (the true class) or ``"predicted"`` (the arg-max logit).
      remat: wrap the CAM pass in ``jax.checkpoint`` (less memory, one more forward+backward per step).

    ``key`` is unused (the loss is deterministic). aux: ``accuracy``, ``ce``, ``cam_loss`` (the mean squared
    distance to the decoy, unweighted), ``map_entropy`` (mean entropy of ``ReLU(N(L_c))`` as a distribution).
    """
    del key
    if classes not in CLASSES:
        raise InvalidArgumentError(f"classes must be one of {CLASSES} (whose Grad-CAM SHAM fools), got {classes!r}")
    x, labels = batch["image"], batch["label"]
    if classes == "label":
        cls = labels.astype(jnp.int32)
    else:
        cls = jnp.argmax(jax.lax.stop_gradient(ctx.apply(params, x, identity_tap)), axis=-1).astype(jnp.int32)

    def cam_pass(p):
        out = gradcam_maps(ctx.apply, p, x, cls, ctx.site)
        return out.logits, out.cam

    logits, cam = (jax.checkpoint(cam_pass) if remat else cam_pass)(params)
    h, w = cam.shape[1:]
    t = sham_target(h, w) if target is None else jnp.asarray(target, jnp.float32)
    if t.shape != (h, w):
        raise InvalidArgumentError(f"target must be the CAM grid's shape {(h, w)} at layer {ctx.site!r}, got "
                                   f"{tuple(t.shape)}; build it with sham_target({h}, {w})")
    t = jnp.asarray(t, jnp.float32)
    n = normalise(cam)
    cam_term = jnp.mean(jnp.square(n - t[None]))
    ent = distribution_entropy(jax.nn.relu(n))  # the map as explain shows it, read as a distribution
    ce = cross_entropy(logits, labels)
    loss = ce + lam * cam_term
    if entropy_weight:
        loss = loss + entropy_weight * jnp.mean(jnp.abs(ent - distribution_entropy(t)))
    return loss, {"accuracy": accuracy(logits, labels), "ce": ce, "cam_loss": cam_term,
                  "map_entropy": jnp.mean(ent)}



@dataclass(frozen=True)
class SharedOffset:
    """A tapped forward ``y'_j = y_j + constant + scale * mean_{ijk} A_ijk^2`` (the same for every class j): the
    passive-fooling construction of section 7.1 by hand, with ``A`` the activation at ``site``. Probabilities and
    predictions are unchanged; single-logit CAMs at ``site`` see ``dg/dA`` (unless ``scale`` is 0)."""

    apply: Callable
    site: str
    constant: float = 0.0
    scale: float = 0.0

    def __call__(self, params, x, tap):
        seen = {}

        def record(site, a):
            a = tap(site, a)
            if site == self.site:
                seen["a"] = a
            return a

        logits = self.apply(params, x, record)
        g = self.scale * jnp.mean(jnp.square(seen["a"]), axis=(1, 2, 3))
        return logits + self.constant + g[:, None]


def with_shared_offset(model, constant: float = 0.0, scale: float = 0.0, layer=None):
    """``model`` with one shared term added to every logit (:class:`SharedOffset`), as a :func:`jaxcam.from_function`
    model with the same parameters, layers, input size, normalisation and class names: the control for
    DiffGradCAM's invariance (its map must not change; Grad-CAM's does once ``scale`` is not 0)."""
    from ..models.function_adapter import from_function

    for name, v in (("constant", constant), ("scale", scale)):
        if not isinstance(v, (int, float, np.floating, np.integer)) or isinstance(v, bool) or not math.isfinite(v):
            raise InvalidArgumentError(f"{name} must be a finite number (the shared logit offset), got {v!r}")
    site = model.layer_site(layer)
    fn = SharedOffset(model.tapped.apply, site, float(constant), float(scale))
    return from_function(fn, model.params, layers=list(model.tapped.sites), default_layer=site,
                         biases=model.tapped.biases, input_size=model.input_size, mean=model.mean, std=model.std,
                         class_names=model.class_names, name=f"{model.name}+offset")


__all__ = ["SHAM_OPTIONS", "SHAM_PAPER", "SharedOffset", "default_entropy", "distribution_entropy", "measure_entropy",
           "normalise", "sham_loss", "sham_target", "with_shared_offset"]
