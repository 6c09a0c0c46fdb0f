"""Adversarial training losses: PGD-AT (Madry et al.) and PART, pixel-reweighted adversarial training.

**PGD-AT** (Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018) trains on the worst case inside an L-inf ball of radius ``eps`` around each image,
approximated by projected gradient descent (PGD) from a uniform random start:

    x'_0 = clip_[0,1](x + U(-eps, eps)),   x'_{t+1} = clip_[0,1](Pi_{|x' - x| <= eps}(x'_t + alpha sign(grad CE)))
    L = CE(f(x'_T), y)

**PART** (Zhang, Liu, Zhou, Zhang, Liu, "Improving Accuracy-Robustness Trade-Off via Pixel Reweighted Adversarial
Training", ICML 2024; methods.md section 9) keeps the budget ``eps`` only for the pixels a class activation map
marks as important and gives the rest a smaller ``eps_low`` (the paper's Pixel-AG):

    w = zscore(N(U(relu(CAM_c(x)))))  per image,   eps_map = eps where w > threshold else eps_low

with ``c`` the model's predicted class (the paper) or the label, ``U`` a bicubic upsampling to the image, ``N`` a
min-max normalisation and a z-score over the image's pixels; ``threshold = 1`` (about the top 16 %) is the paper's
split. The same PGD then runs under the element-wise box ``|x' - x| <= eps_map``, and PART trains with CE on it.
The official code pushes ``cam^2`` through matplotlib's jet colormap, which makes the mask per colour channel;
we use the clean equivalent the spec names (one mask for the three channels) **[ours]**.

Why: robustness mostly needs the perturbation on the pixels the classifier relies on; shrinking it elsewhere
should buy back natural accuracy at almost no cost in robustness (the paper's claim, tested by
``scripts/part_vs_pgdat.py``).

Both attacks run in **pixel space**: ``batch["image"]`` is the model input, normalised with the model's
``mean``/``std`` (jaxcam.train.fit does this), so the losses un-normalise with the ``mean``/``std`` options,
attack in [0, 1] and re-normalise. The parameters are stop-gradiented during the attack (the attack is data, not
part of the objective), the per-example input gradient is vmapped over the batch, and the loop is unrolled
(``steps`` is static; XLA's CPU backend runs convolutions in while loops far slower). The CAM is recomputed on the
exact (augmented) batch in every step (the paper's description; the released code looks a cached map up by batch
index, methods.md 9.1) **[ours]**. Cost per step: ``steps`` x (1F + 1B) for the attack, + 1F + 1B for the
update, + 1F for the clean accuracy (PART: for the predicted class), + 1F + 1B for PART's CAM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InvalidArgumentError, UnknownNameError
from ..keys import as_key
from ..tapped import identity_tap
from .losses import LossContext, accuracy, cross_entropy, gradcam_maps

PGD_AT_PAPER = "PGD adversarial training (Madry et al., ICLR 2018)"
PART_PAPER = "PART, pixel-reweighted adversarial training (Zhang et al., ICML 2024)"
PGD_AT_OPTIONS = ("eps", "alpha", "steps", "random_start", "mean", "std")
PART_OPTIONS = PGD_AT_OPTIONS + ("eps_low", "threshold", "cam_method", "cam_class")
CAM_METHODS = ("gradcam", "xgradcam", "layercam")
CAM_CLASSES = ("predicted", "label")
EPS = 1e-8  # normalisation guards (a constant map gives no important pixel)


# ---------------------------------------------------------------------------------------------------- checks


def _number(name: str, v, *, low: float = 0.0, strict: bool = True, what: str = "") -> float:
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or (v <= low if strict else v < low):
        bound = f"> {low}" if strict else f">= {low}"
        raise InvalidArgumentError(f"{name} must be a finite number {bound}{what}, got {v!r}")
    return float(v)


def _steps(v) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise InvalidArgumentError(f"steps must be an int >= 1 (the PGD iterations, 10 in the papers), got {v!r}")
    return int(v)


def _triple(name: str, v) -> jax.Array:
    vals = tuple(v) if isinstance(v, (tuple, list, np.ndarray)) else None
    if vals is None or len(vals) != 3 or not all(
            isinstance(a, (int, float, np.integer, np.floating)) and math.isfinite(a) for a in vals) \
            or (name == "std" and min(vals) <= 0):
        rule = "three positive numbers" if name == "std" else "three finite numbers"
        raise InvalidArgumentError(f"{name} must be {rule} (the model's normalisation, model.{name}), got {v!r}")
    return jnp.asarray(vals, jnp.float32).reshape(1, 1, 1, 3)


def _attack_options(eps, alpha, steps, random_start, mean, std):
    eps = _number("eps", eps, what=" (the L-inf budget in [0, 1] pixel units, e.g. 8/255)")
    alpha = _number("alpha", alpha, what=" (the PGD step size in pixel units, e.g. 2/255)")
    if not isinstance(random_start, (bool, np.bool_)):
        raise InvalidArgumentError(f"random_start must be True or False, got {random_start!r}")
    return eps, alpha, _steps(steps), bool(random_start), _triple("mean", mean), _triple("std", std)


# ---------------------------------------------------------------------------------------------------- attack


def pgd_attack(apply, params, images: jax.Array, labels: jax.Array, key: jax.Array, budget: jax.Array, *,
               alpha: float, steps: int, random_start: bool = True, mean=None, std=None) -> jax.Array:
    """L-inf PGD on ``images`` (B, H, W, 3) in [0, 1] under an element-wise ``budget`` (broadcastable to the
    images, e.g. (B, H, W, 1)): uniform start in ``[-budget, budget]`` (if ``random_start``), then ``steps`` of
    ``x' + alpha sign(grad_x CE)``, projected onto ``|x' - x| <= budget`` and clipped to [0, 1].

    ``apply`` is the tapped forward; ``mean``/``std`` (1, 1, 1, 3) normalise the pixels into the model's input.
    The parameters are stop-gradiented; the input gradient is per example (vmapped). Returns pixels in [0, 1]."""
    params = jax.lax.stop_gradient(params)
    images = jax.lax.stop_gradient(images)
    budget = jnp.broadcast_to(jnp.asarray(budget, images.dtype), images.shape)
    mean = jnp.zeros((1, 1, 1, 3), images.dtype) if mean is None else mean
    std = jnp.ones((1, 1, 1, 3), images.dtype) if std is None else std

    def one_ce(x, y):
        logits = apply(params, (x[None] - mean) / std, identity_tap)
        return cross_entropy(logits, y[None])

    grad_one = jax.vmap(jax.grad(one_ce))
    lo, hi = images - budget, images + budget
    x = images
    if random_start:
        x = jnp.clip(images + jax.random.uniform(key, images.shape, images.dtype, -1.0, 1.0) * budget, 0.0, 1.0)
    for _ in range(steps):
        x = x + alpha * jnp.sign(grad_one(x, labels))
        x = jnp.clip(jnp.clip(x, lo, hi), 0.0, 1.0)
    return jax.lax.stop_gradient(x)



# ---------------------------------------------------------------------------------------------------- budgets


def cam_weights(apply, params, x: jax.Array, classes: jax.Array, site: str,
                method: str = "gradcam") -> tuple[jax.Array, jax.Array]:
    """PART's pixel weights ``zscore(N(U(relu(CAM))))`` (B, H, W) for model input ``x`` (B, H, W, 3): the CAM at
    ``site`` for ``classes``, bicubically upsampled to the image, min-max normalised, z-scored over each image's
    pixels. ``method``: "gradcam" (``sum_k mean_ij(G_k) A_k``), "xgradcam" (weights ``sum_ij A_k G_k /
    sum_ij A_k``, Fu et al. 2020) or "layercam" (``sum_k relu(G_k) A_k``, Jiang et al. 2021), as the paper allows.
    Stop-gradiented (the budget is data). Returns ``(weights, logits of x)``."""
    params = jax.lax.stop_gradient(params)
    cp = gradcam_maps(apply, params, x, classes, site)
    a, g = cp.acts, cp.grads
    if method == "gradcam":
        cam = cp.cam
    elif method == "xgradcam":
        w = jnp.sum(a * g, axis=(1, 2), keepdims=True) / (jnp.sum(a, axis=(1, 2), keepdims=True) + EPS)
        cam = jnp.sum(w * a, axis=-1)
    else:
        cam = jnp.sum(jax.nn.relu(g) * a, axis=-1)
    cam = jax.nn.relu(cam)
    b, h, w_ = x.shape[:3]
    up = jax.image.resize(cam, (b, h, w_), method="bicubic")
    lo = jnp.min(up, axis=(1, 2), keepdims=True)
    hi = jnp.max(up, axis=(1, 2), keepdims=True)
    n = (up - lo) / (hi - lo + EPS)
    z = (n - jnp.mean(n, axis=(1, 2), keepdims=True)) / (jnp.std(n, axis=(1, 2), keepdims=True) + EPS)
    return jax.lax.stop_gradient(z), jax.lax.stop_gradient(cp.logits)


def part_budget(weights: jax.Array, eps: float, eps_low: float, threshold: float = 1.0) -> jax.Array:
    """The element-wise budget (B, H, W, 1): ``eps`` where ``weights > threshold``, else ``eps_low``."""
    return jnp.where(weights > threshold, jnp.float32(eps), jnp.float32(eps_low))[..., None]


# ---------------------------------------------------------------------------------------------------- losses


def pgd_at_loss(params, batch, key, ctx: LossContext, eps: float = 8 / 255, alpha: float = 2 / 255,
                steps: int = 10, random_start: bool = True, mean: Sequence[float] = (0.5, 0.5, 0.5),
                std: Sequence[float] = (0.5, 0.5, 0.5)):
    """PGD-AT: CE on the PGD adversarial batch (module docstring). ``mean``/``std``: the model's normalisation
    (pass ``model.mean``/``model.std``; the defaults are the reference CNN's). Aux: ``accuracy`` on the adversarial
    batch, ``clean_accuracy``."""
    eps, alpha, steps, random_start, m, s = _attack_options(eps, alpha, steps, random_start, mean, std)
    x = batch["image"]
    labels = batch["label"]
    pixels = x * s + m
    budget = jnp.full(x.shape[:3] + (1,), eps, jnp.float32)
    adv = pgd_attack(ctx.apply, params, pixels, labels, key, budget, alpha=alpha, steps=steps,
                     random_start=random_start, mean=m, std=s)
    clean = jax.lax.stop_gradient(ctx.apply(jax.lax.stop_gradient(params), x, identity_tap))
    logits = ctx.apply(params, (adv - m) / s, identity_tap)
    return cross_entropy(logits, labels), {"accuracy": accuracy(logits, labels),
                                           "clean_accuracy": accuracy(clean, labels)}


def part_loss(params, batch, key, ctx: LossContext, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
              random_start: bool = True, mean: Sequence[float] = (0.5, 0.5, 0.5),
              std: Sequence[float] = (0.5, 0.5, 0.5), eps_low: float = 7 / 255, threshold: float = 1.0,
              cam_method: str = "gradcam", cam_class: str = "predicted"):
    """PART: CE on the PGD batch under the CAM-weighted budget (module docstring), the CAM of the current model at
    ``ctx.site`` recomputed every step. ``eps_low`` in [0, eps] (7/255 in the paper), ``threshold``: the z-score
    above which a pixel keeps ``eps`` (1 in the paper), ``cam_method`` in CAM_METHODS, ``cam_class`` "predicted"
    (the paper) or "label". With ``eps_low = eps`` the attack is PGD-AT's, bit for bit, for the same key. Aux:
    ``accuracy`` (adversarial), ``clean_accuracy``, ``important_share`` (share of pixels with the full budget)."""
    eps, alpha, steps, random_start, m, s = _attack_options(eps, alpha, steps, random_start, mean, std)
    eps_low = _number("eps_low", eps_low, strict=False, what=" (the budget of unimportant pixels, <= eps)")
    if eps_low > eps:
        raise InvalidArgumentError(f"eps_low must be <= eps ({eps!r}): PART shrinks the budget of unimportant "
                                   f"pixels, got {eps_low!r}")
    threshold = _number("threshold", threshold, low=-math.inf, what=" (the z-score split, 1 in the paper)")
    if cam_method not in CAM_METHODS:
        raise UnknownNameError(cam_method, CAM_METHODS, "cam_method of the PART loss")
    if cam_class not in CAM_CLASSES:
        raise UnknownNameError(cam_class, CAM_CLASSES, "cam_class of the PART loss")
    x = batch["image"]
    labels = batch["label"]
    if cam_class == "predicted":
        clean = jax.lax.stop_gradient(ctx.apply(jax.lax.stop_gradient(params), x, identity_tap))
        classes = jnp.argmax(clean, axis=-1)
    else:
        classes = labels
    weights, clean = cam_weights(ctx.apply, params, x, classes, ctx.site, cam_method)
    budget = part_budget(weights, eps, eps_low, threshold)
    adv = pgd_attack(ctx.apply, params, x * s + m, labels, key, budget, alpha=alpha, steps=steps,
                     random_start=random_start, mean=m, std=s)
    logits = ctx.apply(params, (adv - m) / s, identity_tap)
    share = jnp.mean((budget == jnp.float32(eps)).astype(jnp.float32)) if eps_low < eps else jnp.float32(1.0)
    return cross_entropy(logits, labels), {"accuracy": accuracy(logits, labels),
                                           "clean_accuracy": accuracy(clean, labels), "important_share": share}


def robust_accuracy(model, images, labels, key, *, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                    random_start: bool = True, batch_size: int = 128) -> float:
    """Top-1 accuracy of ``model`` on PGD adversarial examples of ``images`` (N, S, S, 3) in [0, 1] (uniform
    budget ``eps``; the evaluation the papers report, e.g. PGD-20 at 8/255). ``key``: an int seed or a key; batch
    ``j`` starts from ``fold_in(key, j)`` (same key and batch_size, same result)."""
    eps, alpha, steps, random_start, m, s = _attack_options(eps, alpha, steps, random_start, model.mean, model.std)
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels).reshape(-1)
    if images.ndim != 4 or images.shape[-1] != 3 or len(labels) != len(images):
        raise InvalidArgumentError(f"images must be (N, S, S, 3) in [0, 1] with N labels, got {images.shape} and "
                                   f"{labels.shape}")
    key = as_key(key)
    apply = model.tapped.apply

    @jax.jit
    def hits(params, x, y, k):
        adv = pgd_attack(apply, params, x, y, k, jnp.full(x.shape[:3] + (1,), eps, jnp.float32), alpha=alpha,
                         steps=steps, random_start=random_start, mean=m, std=s)
        return jnp.sum(jnp.argmax(apply(params, (adv - m) / s, identity_tap), axis=-1) == y)

    total = 0
    for j, i in enumerate(range(0, len(images), batch_size)):
        total += int(hits(model.params, jnp.asarray(images[i:i + batch_size]),
                          jnp.asarray(labels[i:i + batch_size], jnp.int32), jax.random.fold_in(key, j)))
    return total / max(len(images), 1)


__all__ = ["CAM_CLASSES", "CAM_METHODS", "PART_OPTIONS", "PART_PAPER", "PGD_AT_OPTIONS", "PGD_AT_PAPER",
           "cam_weights", "part_budget", "part_loss", "pgd_at_loss", "pgd_attack",
           "robust_accuracy"]
