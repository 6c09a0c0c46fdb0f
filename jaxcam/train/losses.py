"""Training losses as pure functions, and the differentiable CAM pass the CAM-aware ones share.

A loss is ``fn(params, batch, key, ctx, **options) -> (loss, aux)``: ``batch`` holds the model inputs
(``image`` (B, H, W, 3), already normalised), ``label`` (B,) and whatever else the source carries (``mask``
(B, H, W) for the synthetic benchmark); ``aux`` is a dict of scalars logged with the loss (``accuracy`` always).
``ctx`` (:class:`LossContext`) is static: the model's tapped forward and the CAM layer.

CAM-aware losses differentiate *through* a CAM. :func:`gradcam_maps` computes Grad-CAM with the same tapped
forward and the same :func:`jaxcam.tapped.capture` that :func:`jaxcam.explain` uses, with the parameters closed
over, so ``jax.grad`` of a loss that calls it is the second-order derivative the papers need (forward, backward
to the layer with the graph kept, then a backward through that backward), with no special handling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..tapped import capture, identity_tap
from .. import targets as targets_mod


@dataclass(frozen=True)
class LossContext:
    """What a loss may use besides parameters and data (static, hashable: it keys the compiled step).

    Attributes:
      apply: the model's tapped forward ``(params, x, tap) -> logits``.
      site: the resolved CAM layer that CAM-aware losses explain.
      num_classes: the classifier's number of outputs.
      sites: every layer name of the model, in forward order.
    """

    apply: Callable
    site: str
    num_classes: int
    sites: tuple[str, ...] = ()


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its function, the options it takes, whether it differentiates through a CAM (then the
    step is second order and ``layer=`` matters), and the paper it comes from."""

    name: str
    fn: Callable
    options: tuple[str, ...] = ()
    uses_cam: bool = False
    paper: str = ""


class CamPass(NamedTuple):
    """A forward and backward at one layer: logits (B, C), Grad-CAM (B, h, w) before ReLU, the activations
    (B, h, w, K) and the gradients of the score (B, h, w, K)."""

    logits: jax.Array
    cam: jax.Array
    acts: jax.Array
    grads: jax.Array


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer labels, computed in float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Share of the batch whose arg-max logit is the label."""
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def gradcam_maps(apply: Callable, params, x: jax.Array, classes: jax.Array, site: str,
                 score: Callable | None = None) -> CamPass:
    """Grad-CAM at ``site`` for ``classes``, differentiable with respect to ``params``.

    ``cam = sum_k mean_ij(dS/dA_k) A_k`` (Selvaraju et al., ICCV 2017), not ReLU'd or normalised (losses choose).
    ``score(logits (C,), cls) -> scalar``: the explained score, default the class logit ``y_c``. Cost: 1F + 1B,
    and a ``jax.grad`` of a function of the result adds the backward through that backward."""
    score = targets_mod.logit if score is None else score
    cap = capture(apply, params, x, (site,), (score,), classes)
    a, g = cap.acts[site], cap.grads[score][site]
    weights = jnp.mean(g, axis=(1, 2), keepdims=True)
    return CamPass(cap.logits, jnp.sum(weights * a, axis=-1), a, g)


def tap_values(apply: Callable, params, x: jax.Array, sites: Sequence[str]) -> tuple[jax.Array, dict]:
    """A forward recording the activations at ``sites`` (``{site: array}``), differentiable: what multi-exit and
    feature-level losses read."""
    wanted = set(sites)
    seen = {}

    def tap(site, a):
        if site in wanted:
            seen[site] = a
        return a

    logits = apply(params, x, tap)
    return logits, dict(seen)


def ce_loss(params, batch, key, ctx: LossContext, label_smoothing: float = 0.0):
    """Softmax cross-entropy, optionally with label smoothing ``(1 - e) * onehot + e / C``."""
    del key
    logits = ctx.apply(params, batch["image"], identity_tap)
    labels = batch["label"]
    if label_smoothing:
        target = jax.nn.one_hot(labels, logits.shape[-1]) * (1 - label_smoothing) + label_smoothing / logits.shape[-1]
        loss = -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1))
    else:
        loss = cross_entropy(logits, labels)
    return loss, {"accuracy": accuracy(logits, labels)}



# after the helpers, which sham.py imports
from .sham import SHAM_OPTIONS, SHAM_PAPER, sham_loss  # noqa: E402
from .camloss import CAM_LOSS_PAPER, RECAM_PAPER, cam_loss, recam_loss  # noqa: E402
from .ame import aggregation_loss, multi_exit_loss  # noqa: E402
from .adversarial import (PART_OPTIONS, PART_PAPER, PGD_AT_OPTIONS, PGD_AT_PAPER, part_loss,  # noqa: E402
                          pgd_at_loss)

LOSSES: dict[str, LossSpec] = {
    "cross_entropy": LossSpec("cross_entropy", ce_loss, ("label_smoothing",), False, "softmax cross-entropy"),
    "sham": LossSpec("sham", sham_loss, SHAM_OPTIONS, True, SHAM_PAPER),
    "cam_loss": LossSpec("cam_loss", cam_loss, ("alpha",), True, CAM_LOSS_PAPER),
    "recam": LossSpec("recam", recam_loss, ("lam", "base"), True, RECAM_PAPER),
    "ame_exits": LossSpec("ame_exits", multi_exit_loss, ("weights",), False, "AME-CAM exits, Chen et al. MICCAI 2023"),
    "ame_aggregation": LossSpec("ame_aggregation", aggregation_loss, ("alpha", "mean", "std"), False,
                                "AME-CAM SimMax/SimMin aggregation, Chen et al. MICCAI 2023"),
    "pgd_at": LossSpec("pgd_at", pgd_at_loss, PGD_AT_OPTIONS, False, PGD_AT_PAPER),
    "part": LossSpec("part", part_loss, PART_OPTIONS, True, PART_PAPER),
}

__all__ = ["CamPass", "LOSSES", "LossContext", "LossSpec", "accuracy", "ce_loss", "cross_entropy", "gradcam_maps",
           "tap_values"]
