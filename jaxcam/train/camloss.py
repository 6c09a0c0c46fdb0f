"""CAM-aware training losses from seed 002's related work: CAM-loss and ReCAM.

**CAM-loss** (Wang, Xiao, Han, Yang, Song, Huang, "CAM-loss: Towards Learning Spatially Discriminative Feature
Representations", ICCV 2021) pulls the *class-agnostic activation map* ``CAAM = sum_k A_k`` (the embedded feature
maps summed over channels) towards the class activation map of the target class, so the backbone expresses the
target's features and suppresses the rest (background, other classes):

    L = CE(f(x), y) + alpha * mean_ij | N(CAAM)_ij - N(sg[CAM_y])_ij |,    N(M) = (M - min M) / (max M - min M)

with per-map min-max normalisation ``N`` (the two maps live on different scales), an L1 distance averaged over
the grid and the batch, and ``sg`` a stop-gradient: the CAM is the *target* and only the CAAM is pulled. The
normalisation and the distance are as in the public re-implementation sihyeong671/PyTorch_CAM-loss (the paper's
method text was not available to us); the detached target follows the paper's description of the CAM as the
CAAM's supervision.

**ReCAM** (Chen, Wang, Wu, Hua, Zhang, Sun, "Class Re-Activation Maps for Weakly-Supervised Semantic
Segmentation", CVPR 2022). A classifier trained with binary cross-entropy (BCE) under-activates and mixes classes,
because BCE never makes classes compete. ReCAM re-activates it: after the BCE model converges, each class's CAM
masks the features, the masked feature is pooled and classified *again* by a new bias-free linear classifier
``W'`` with softmax cross-entropy (SCE), and the model is fine-tuned with

    L = BCE(f(x), y) + lam * mean_{(x, k), k positive in x} CE(W'^T f_k, k)
    f_k = mean_ij (M_k)_ij A_ij,    M_k = relu(CAM_k) / (max_ij relu(CAM_k) + 1e-5)

Everything trains in this phase: the backbone, the BCE classifier ``W`` (whose CAMs make the masks; the masks are
*not* detached) and ``W'``; the authors' code gives the backbone and ``W`` a tenth of ``W'``'s learning rate
(a choice of the optimiser, see ``scripts/camloss_recam.py``) and uses ``lam = 1`` [paper code]. The map ReCAM
reports is not the CAM of the fine-tuned model: it is ``relu(sum_c W'_ck W_ck A_c)``, max-normalised, i.e. the
CAM with the two classifiers' weights multiplied channel by channel [paper code]. :func:`recam_cam` computes it;
:func:`recam_model` turns the model into one whose head *is* ``W * W'`` so that :func:`jaxcam.explain` (``cam``
or ``gradcam``) produces it.

Our task is single-label multi-class **[ours]**: each image has exactly one positive class, its label ``y``, so
BCE is the mean over classes of the sigmoid cross-entropy against the one-hot label (PyTorch's
``multilabel_soft_margin_loss``, the paper's loss) and SCE has one masked feature per image (``k = y``), averaged
over the batch. ``base="ce"`` swaps BCE for softmax cross-entropy (a control: the re-activation on a CE model).

**CAM via Grad-CAM.** Both losses read the CAM through :func:`jaxcam.train.losses.gradcam_maps` at ``ctx.site``:
Grad-CAM ``sum_k mean_ij(dy_c/dA_k) A_k`` equals CAM ``sum_k W_ck A_k`` up to the factor ``1 / (h w)`` on a
GAP + FC head, and every normalisation above removes that factor, so on such heads (the reference CNN at
``stage3``, the papers' ResNets) the losses are exactly the papers'; on other heads Grad-CAM is the standard
generalisation of CAM (Selvaraju et al., ICCV 2017) and the losses use it as such **[ours]**.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .. import postprocess
from ..errors import InvalidArgumentError, UnknownNameError
from ..keys import as_key
from ..tapped import site_shapes
from .losses import LossContext, accuracy, cross_entropy, gradcam_maps

RECAM_HEAD = "recam"  # the entry of the "params" collection holding W' (kernel (K, C))
RECAM_BASES = ("bce", "ce")
CAM_LOSS_PAPER = "CAM-loss (Wang et al., ICCV 2021)"
RECAM_PAPER = "ReCAM (Chen et al., CVPR 2022)"
EPS = 1e-8  # min-max denominator guard (a constant map normalises to 0)
RECAM_EPS = 1e-5  # the max-normalisation guard of the authors' code


def _weight(name: str, v) -> float:
    if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool) or not math.isfinite(v) \
            or v < 0:
        raise InvalidArgumentError(f"{name} must be a finite number >= 0 (the weight of the CAM term), got {v!r}")
    return float(v)


def minmax(maps: jax.Array) -> jax.Array:
    """Per-map min-max normalisation over the grid of ``maps`` (B, h, w): ``(M - min) / (max - min + 1e-8)``."""
    return jax.vmap(lambda m: postprocess.minmax(m, EPS))(maps)


def class_agnostic_map(acts: jax.Array) -> jax.Array:
    """CAM-loss's class-agnostic activation map: the activations (B, h, w, K) summed over channels (B, h, w)."""
    return jnp.sum(acts, axis=-1)


def cam_loss(params, batch, key, ctx: LossContext, alpha: float = 1.0):
    """CAM-loss: ``CE + alpha * mean |N(CAAM) - N(sg[CAM_y])|`` at ``ctx.site`` (module docstring).

    ``CAM_y`` is the Grad-CAM of the label (= CAM / (h w) on GAP + FC heads), detached, so the term's gradient
    reaches the backbone through the CAAM only and never the classifier. ``alpha`` >= 0 [ours: default 1; the
    paper's values were not checked]. One forward and one backward to the layer (the backward is not differentiated:
    the step stays first order). aux: ``accuracy``, ``ce``, ``cam_loss`` (the unweighted term)."""
    del key
    alpha = _weight("alpha", alpha)
    x, labels = batch["image"], batch["label"]
    cp = gradcam_maps(ctx.apply, params, x, labels, ctx.site)
    term = jnp.mean(jnp.abs(minmax(class_agnostic_map(cp.acts)) - minmax(jax.lax.stop_gradient(cp.cam))))
    ce = cross_entropy(cp.logits, labels)
    return ce + alpha * term, {"accuracy": accuracy(cp.logits, labels), "ce": ce, "cam_loss": term}


def binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean over classes and batch of the sigmoid cross-entropy against one-hot ``labels``: PyTorch's
    ``multilabel_soft_margin_loss`` with one positive class per image (float32)."""
    z = logits.astype(jnp.float32)
    onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=jnp.float32)
    return -jnp.mean(onehot * jax.nn.log_sigmoid(z) + (1 - onehot) * jax.nn.log_sigmoid(-z))


def recam_kernel(params) -> jax.Array:
    """``W'`` (K, C) from ``params["params"]["recam"]["kernel"]``, with a clear error when the model has none."""
    try:
        return params["params"][RECAM_HEAD]["kernel"]
    except (KeyError, TypeError, IndexError):
        raise InvalidArgumentError("loss 'recam' needs the re-activation classifier W' in the parameters: pass "
                                   "jaxcam.train.camloss.with_recam_head(model) to fit instead of the model") from None


def recam_mask(cam: jax.Array) -> jax.Array:
    """ReCAM's mask ``relu(CAM) / (max relu(CAM) + 1e-5)`` per map (B, h, w)."""
    m = jax.nn.relu(cam)
    return m / (jnp.max(m, axis=(1, 2), keepdims=True) + RECAM_EPS)


def recam_loss(params, batch, key, ctx: LossContext, lam: float = 1.0, base: str = "bce"):
    """ReCAM: ``BCE + lam * CE(W'^T mean_ij(M_y A), y)`` at ``ctx.site`` (module docstring).

    ``M_y`` is the max-normalised ReLU'd Grad-CAM of the label, *not* detached (as the authors' code: the SCE
    term trains the backbone and the classifier ``W`` through the mask too, so the step is second order on
    non-GAP+FC heads). ``W'`` is ``params["params"]["recam"]["kernel"]`` (:func:`with_recam_head`). ``base``:
    ``"bce"`` (the paper) or ``"ce"``. aux: ``accuracy`` (the classifier's), ``bce`` or ``ce``, ``sce`` (the
    unweighted term) and ``recam_accuracy`` (``W'`` on the masked features)."""
    del key
    lam = _weight("lam", lam)
    if base not in RECAM_BASES:
        raise UnknownNameError(base, RECAM_BASES, "base of loss 'recam'")
    w2 = recam_kernel(params)
    x, labels = batch["image"], batch["label"]
    cp = gradcam_maps(ctx.apply, params, x, labels, ctx.site)
    mask = recam_mask(cp.cam)
    pooled = jnp.mean(mask[..., None] * cp.acts, axis=(1, 2))  # (B, K)
    relogits = pooled.astype(jnp.float32) @ w2.astype(jnp.float32)  # (B, C)
    sce = cross_entropy(relogits, labels)
    cls = binary_cross_entropy(cp.logits, labels) if base == "bce" else cross_entropy(cp.logits, labels)
    return cls + lam * sce, {"accuracy": accuracy(cp.logits, labels), base: cls, "sce": sce,
                             "recam_accuracy": accuracy(relogits, labels)}


def _linen_params(model, what: str) -> dict:
    p = model.params
    if not (isinstance(p, Mapping) and isinstance(p.get("params"), Mapping)):
        raise InvalidArgumentError(f"{what} needs a model whose parameters are linen variables {{'params': ...}} "
                                   f"(jaxcam.from_linen / from_function), got {type(p).__name__}")
    return p


def with_recam_head(model, key=0, *, layer=None):
    """``model`` with ReCAM's new classifier ``W'`` (K, C) added as ``params["params"]["recam"]["kernel"]``,
    initialised ``U(-1/sqrt(K), 1/sqrt(K))`` like the authors' bias-free 1x1 convolution (PyTorch's default).

    The forward ignores the entry; :func:`jaxcam.train.fit` trains it with the rest (``trainable=None``).
    ``layer``: the CAM layer (default the model's), whose channel count ``K`` sets the shape."""
    p = _linen_params(model, "with_recam_head")
    if RECAM_HEAD in p["params"]:
        raise InvalidArgumentError(f"the model already has a ReCAM head params['params'][{RECAM_HEAD!r}]; pass the "
                                   "model without it, or train it as it is")
    site = model.layer_site(layer)
    x = jnp.zeros((1, model.input_size, model.input_size, 3), jnp.float32)
    k = site_shapes(model.tapped.apply, p, x, (site,))[site].shape[-1]
    bound = 1.0 / math.sqrt(k)
    kernel = jax.random.uniform(as_key(key), (k, model.num_classes), jnp.float32, -bound, bound)
    return model.with_params({**p, "params": {**p["params"], RECAM_HEAD: {"kernel": kernel}}})


def recam_cam(apply, params, x: jax.Array, classes: jax.Array, site: str) -> jax.Array:
    """ReCAM's inference map at ``site`` (B, h, w), not normalised: ``relu(sum_c W'_cy g_cy A_c)`` with ``g_cy``
    the Grad-CAM channel weights ``mean_ij dy/dA_c`` (``= W_cy / (h w)`` on a GAP + FC head, where this is the
    authors' ``relu(sum_c W'_cy W_cy A_c) / (h w)``; Grad-CAM's weights elsewhere [ours])."""
    cp = gradcam_maps(apply, params, x, classes, site)
    w2 = recam_kernel(params)[:, classes].T  # (B, K)
    g = jnp.mean(cp.grads, axis=(1, 2))  # (B, K)
    return jax.nn.relu(jnp.einsum("bhwk,bk->bhw", cp.acts, g * w2))


def recam_model(model, *, head: str = "head", layer=None):
    """A model to *explain* ReCAM's map with :func:`jaxcam.explain`: ``model`` with its linear ``head`` kernel
    ``W`` (K, C) replaced by ``W * W'`` (channel by channel) and the ReCAM entry dropped. Its ``cam`` (and its
    ``gradcam``, = cam / (h w)) at the GAP + FC ``layer`` is ReCAM's ``relu(sum_c W'_cy W_cy A_c)``; explain
    then min-max-normalises where the authors divide by the max (equal wherever the map has a zero, as ReLU'd
    maps usually do). Its logits are not the classifier's: predict with ``model``."""
    p = _linen_params(model, "recam_model")
    w2 = recam_kernel(p)
    site = model.layer_site(layer)
    if site not in model.tapped.gap_fc_sites:
        raise InvalidArgumentError(f"recam_model needs a layer followed by global average pooling and the linear "
                                   f"head (CAM's closed form); {site!r} is not one (GAP+FC layers: "
                                   f"{sorted(model.tapped.gap_fc_sites)}); use recam_cam for other heads")
    w = p["params"].get(head, {}).get("kernel") if isinstance(p["params"].get(head), Mapping) else None
    if w is None or tuple(w.shape) != tuple(w2.shape):
        raise InvalidArgumentError(f"head must name the linear classifier whose kernel matches W' {tuple(w2.shape)}; "
                                   f"params['params'][{head!r}] has "
                                   f"{None if w is None else tuple(w.shape)}: pass head=<its name>")
    inner = {k: v for k, v in p["params"].items() if k != RECAM_HEAD}
    inner[head] = {**p["params"][head], "kernel": w * w2}
    return model.with_params({**p, "params": inner}, source=f"{model.source} (ReCAM head W * W')")


__all__ = ["CAM_LOSS_PAPER", "RECAM_BASES", "RECAM_HEAD", "RECAM_PAPER", "binary_cross_entropy", "cam_loss",
           "class_agnostic_map", "minmax", "recam_cam", "recam_kernel", "recam_loss", "recam_mask", "recam_model",
           "with_recam_head"]
