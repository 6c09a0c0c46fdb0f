"""Saliency-guided attacks: FGSM and PGD confined to a map's top regions, and the smallest budget that flips.

CAMERAS (Jalwana et al., CVPR 2021, seed 003) reports that an adversarial perturbation confined to the salient
regions of its maps needs a drastically smaller signal than one spread over the image. This module gives the pieces
to test that claim on any model:

- :func:`confine` turns a map into a {0, 1} pixel mask ``M`` of its top regions (exactly a fraction of the pixels,
  or every pixel above a threshold); :func:`random_mask` gives a control of the same area.
- Masked attacks ``(key, image, mask, eps, logits_fn, label) -> image``, pure JAX on one image (H, W, 3) in [0, 1],
  every step multiplied by ``M`` so the perturbation is exactly zero outside the mask (clipping to [0, 1] cannot
  move an untouched pixel):

  * FGSM L-inf: ``x + eps M sign(g)``;  FGSM L2: ``x + eps M g / ||M g||_2`` (Goodfellow et al., 2015),
  * PGD L-inf: ``steps`` steps of ``eps/4`` along ``M sign(g)``, projected on ``||M (z - x)||_inf <= eps``, from a
    uniform random start in the masked ball (exactly :mod:`jaxcam.noise`'s ``pgd`` when ``M = 1``);
    PGD L2: steps of ``2.5 eps / steps`` along ``M g / ||M g||_2``, projected on ``||M (z - x)||_2 <= eps``
    (Madry et al., ICLR 2018), from a random point of the masked ball or from ``x``,

  where ``g`` is the gradient of the cross-entropy at ``label`` (:func:`jaxcam.noise._loss`).
- :func:`min_flip_budget`: per image the smallest ``eps`` at which the attack changes the prediction away from
  ``label``, by a bisection over ``eps`` vmapped over the images (fixed iterations, one jitted program), with the
  realised L2 and L-inf norms of the perturbation that flipped it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam.errors import InvalidArgumentError, MapError, MaskError, UnknownNameError
from jaxcam.keys import as_key
from jaxcam.noise import PGD_STEPS, _check_images, _loss, pixel_logits

_TINY = 1e-12


class UnknownAttackError(UnknownNameError):
    kind = "attack"


# ---------------------------------------------------------------------------------------------------- masks
def _check_maps(cam, what="cam"):
    shape = getattr(cam, "shape", None)
    if shape is None or len(shape) not in (2, 3) or 0 in shape:
        raise MapError(f"{what} must be a map (H, W) or a batch of maps (N, H, W), got shape "
                       f"{None if shape is None else tuple(shape)}")
    cam = jnp.asarray(cam, jnp.float32)
    if not isinstance(cam, jax.core.Tracer) and not bool(jnp.isfinite(cam).all()):
        raise MapError(f"{what} holds NaN or infinite values; pass finite maps (jaxcam.explain gives [0, 1])")
    return cam


def _top_k(values, k):
    """{0, 1} float mask of the ``k`` (per map, may be an array (N,)) largest entries of each (N, P) row; ties go to
    the lower flat index (stable sort), so exactly ``k`` pixels are set."""
    order = jnp.argsort(-values, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1, stable=True)
    return (rank < jnp.reshape(k, (-1, 1))).astype(jnp.float32)


def confine(cam, fraction=None, threshold=None) -> jax.Array:
    """{0, 1} float32 mask of a map's top regions, shaped like ``cam`` ((H, W) or (N, H, W)).

    ``fraction`` in (0, 1]: exactly ``k = max(1, round(fraction H W))`` pixels, the k highest of each map (ties to
    the lower flat index). ``threshold``: every pixel with ``cam > threshold`` (the area then varies per map).
    Exactly one of the two must be given."""
    cam = _check_maps(cam)
    if (fraction is None) == (threshold is None):
        raise InvalidArgumentError("confine needs exactly one of fraction= (share of pixels, in (0, 1]) or "
                                   f"threshold= (map value), got fraction={fraction!r}, threshold={threshold!r}")
    if threshold is not None:
        if not isinstance(threshold, (int, float, np.integer, np.floating)) or not np.isfinite(threshold):
            raise InvalidArgumentError(f"threshold must be a finite number, got {threshold!r}")
        return (cam > threshold).astype(jnp.float32)
    if not isinstance(fraction, (int, float, np.integer, np.floating)) or not 0.0 < fraction <= 1.0:
        raise InvalidArgumentError(f"fraction must be a number in (0, 1] (share of pixels kept), got {fraction!r}")
    flat = cam.reshape((-1, cam.shape[-2] * cam.shape[-1]))
    k = max(1, int(round(float(fraction) * flat.shape[1])))
    return _top_k(flat, k).reshape(cam.shape)


def random_mask(key, like, area=None, *, kind="blobs", grid=7) -> jax.Array:
    """A random {0, 1} float32 mask shaped like ``like`` with exactly ``area`` pixels per map.

    ``area``: an int, or one int per map (N,); None takes each map's count of nonzero pixels of ``like`` (so
    ``random_mask(key, confine(cam, threshold=t))`` matches a thresholded mask map by map).
    ``kind="blobs"`` (default): the top ``area`` pixels of uniform noise on a ``grid`` x ``grid`` lattice, bilinearly
    upsampled (plus a tiny per-pixel jitter that only breaks ties). CAM maps are upsampled from a coarse layer, so
    their top regions are a few smooth blobs; blobs of the same area are the control that differs only in WHERE the
    pixels are, not in their shape. ``kind="pixels"``: ``area`` pixels drawn uniformly without replacement
    (scattered: a weaker control, since spread-out pixels act differently on convolutions)."""
    key = as_key(key)
    like = _check_maps(like, "like")
    n = like.shape[0] if like.ndim == 3 else 1
    h, w = like.shape[-2:]
    if area is None:
        area = jnp.sum(like.reshape((n, h * w)) != 0, axis=1)
    area_np = np.asarray(area) if not isinstance(area, jax.core.Tracer) else None
    if area_np is not None and (not np.issubdtype(area_np.dtype, np.integer) or area_np.ndim > 1
                                or area_np.size not in (1, n) or area_np.min() < 0 or area_np.max() > h * w):
        raise InvalidArgumentError(f"area must be an int or {n} ints in 0..{h * w} (pixels per map), got {area!r}")
    if kind not in ("blobs", "pixels"):
        raise UnknownAttackError(kind, ("blobs", "pixels"), "random_mask kind")
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
        raise InvalidArgumentError(f"grid must be a positive int (lattice of the random blobs), got {grid!r}")
    k_coarse, k_jitter = jax.random.split(key)
    jitter = jax.random.uniform(k_jitter, (n, h * w))
    if kind == "pixels":
        score = jitter
    else:
        coarse = jax.random.uniform(k_coarse, (n, grid, grid))
        score = jax.image.resize(coarse, (n, h, w), "bilinear").reshape((n, h * w)) + 1e-4 * jitter
    area = jnp.broadcast_to(jnp.reshape(jnp.asarray(area, jnp.int32), (-1,)), (n,))
    return _top_k(score, area).reshape(like.shape)


# -------------------------------------------------------------------------------------------------- attacks
def _masked_grad(logits_fn, label, mask, z):
    return jax.grad(partial(_loss, logits_fn, label))(z) * mask


def _unit_l2(v):
    return v / jnp.maximum(jnp.sqrt(jnp.sum(v * v)), _TINY)


def _mask3(mask, x):
    return jnp.asarray(mask, x.dtype).reshape(x.shape[:2] + (1,))


def fgsm_linf(key, image, mask, eps, logits_fn, label):
    """``clip(x + eps M sign(g), 0, 1)``: masked L-inf FGSM (``key`` unused, kept for a common signature)."""
    m = _mask3(mask, image)
    return jnp.clip(image + eps * jnp.sign(_masked_grad(logits_fn, label, m, image)), 0.0, 1.0)


def fgsm_l2(key, image, mask, eps, logits_fn, label):
    """``clip(x + eps M g / ||M g||_2, 0, 1)``: masked L2 FGSM (the fast gradient method)."""
    m = _mask3(mask, image)
    return jnp.clip(image + eps * _unit_l2(_masked_grad(logits_fn, label, m, image)), 0.0, 1.0)


def pgd_linf(key, image, mask, eps, logits_fn, label, steps=PGD_STEPS, random_start=True):
    """Masked L-inf PGD: ``steps`` steps of ``eps/4`` along ``M sign(g)``, each projected on the masked eps-ball
    and [0, 1], from a uniform random start in that ball (or ``x``)."""
    x, m = image, _mask3(mask, image)
    project = lambda z: jnp.clip(x + jnp.clip(m * (z - x), -eps, eps), 0.0, 1.0)  # noqa: E731
    noise = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps
    start = project(x + noise) if random_start else x
    step = lambda i, z: project(z + (eps / 4) * jnp.sign(_masked_grad(logits_fn, label, m, z)))  # noqa: E731
    return jax.lax.fori_loop(0, steps, step, start)


def pgd_l2(key, image, mask, eps, logits_fn, label, steps=PGD_STEPS, random_start=True):
    """Masked L2 PGD: ``steps`` steps of ``2.5 eps / steps`` along ``M g / ||M g||_2``, each projected on
    ``||M (z - x)||_2 <= eps`` and [0, 1], from a random point of that ball (or ``x``)."""
    x, m = image, _mask3(mask, image)

    def project(z):
        d = m * (z - x)
        d = d * jnp.minimum(1.0, eps / jnp.maximum(jnp.sqrt(jnp.sum(d * d)), _TINY))
        return jnp.clip(x + d, 0.0, 1.0)

    k_dir, k_rad = jax.random.split(key)
    noise = _unit_l2(m * jax.random.normal(k_dir, x.shape, x.dtype)) * eps * jax.random.uniform(k_rad, (), x.dtype)
    start = project(x + noise) if random_start else x
    alpha = 2.5 * eps / max(steps, 1)
    step = lambda i, z: project(z + alpha * _unit_l2(_masked_grad(logits_fn, label, m, z)))  # noqa: E731
    return jax.lax.fori_loop(0, steps, step, start)


ATTACKS = {("fgsm", "linf"): fgsm_linf, ("fgsm", "l2"): fgsm_l2, ("pgd", "linf"): pgd_linf, ("pgd", "l2"): pgd_l2}


def get_attack(attack: str = "pgd", norm: str = "linf"):
    """The masked attack function for ``attack`` in {"fgsm", "pgd"} and ``norm`` in {"linf", "l2"}."""
    if attack not in ("fgsm", "pgd"):
        raise UnknownAttackError(attack, ("fgsm", "pgd"), "attack")
    if norm not in ("linf", "l2"):
        raise UnknownAttackError(norm, ("linf", "l2"), "norm")
    return ATTACKS[(attack, norm)]


# ------------------------------------------------------------------------------------------------ bisection
@dataclass(frozen=True)
class FlipBudget:
    """Per image (NumPy, (N,)): ``epsilon``, the smallest budget found to change the prediction away from
    ``label`` (within ``(hi - lo) / 2**iterations``; ``inf`` if the attack at ``hi`` does not; 0 if the clean
    prediction already differs); ``l2`` and ``linf``, the realised norms of that flipping perturbation (pixel
    space, inf where never flipped); ``flipped`` (bool). ``never_flipped`` and ``already_flipped`` count images."""

    epsilon: np.ndarray
    l2: np.ndarray
    linf: np.ndarray
    flipped: np.ndarray
    never_flipped: int
    already_flipped: int


def _flip_one(attack, iterations, steps, random_start, logits_fn, lo, hi, key, x, m, label):
    """Bisection on one image: invariant ``flips(b) and not flips(a)``; the key is shared by every probe."""
    kw = {} if attack in (fgsm_linf, fgsm_l2) else {"steps": steps, "random_start": random_start}

    def probe(eps):
        adv = attack(key, x, m, eps, logits_fn, label, **kw)
        return jnp.argmax(logits_fn(adv[None])[0]) != label, adv

    clean = jnp.argmax(logits_fn(x[None])[0]) != label
    top, adv_hi = probe(hi)

    def body(i, state):
        a, b, adv = state
        mid = 0.5 * (a + b)
        f, adv_mid = probe(mid)
        return jnp.where(f, a, mid), jnp.where(f, mid, b), jnp.where(f, adv_mid, adv)

    _, b, adv = jax.lax.fori_loop(0, iterations, body, (lo, hi, adv_hi))
    delta = adv - x
    inf = jnp.float32(jnp.inf)
    eps = jnp.where(clean, 0.0, jnp.where(top, b, inf))
    l2 = jnp.where(clean, 0.0, jnp.where(top, jnp.sqrt(jnp.sum(delta * delta)), inf))
    linf = jnp.where(clean, 0.0, jnp.where(top, jnp.max(jnp.abs(delta)), inf))
    return eps, l2, linf, clean | top, clean


@partial(jax.jit, static_argnames=("attack", "iterations", "steps", "random_start"))
def _flip_batch(attack, iterations, steps, random_start, logits_fn, lo, hi, keys, images, masks, labels):
    one = partial(_flip_one, attack, iterations, steps, random_start, logits_fn, lo, hi)
    return jax.vmap(one)(keys, images, masks, labels)


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def min_flip_budget(model, images, labels=None, masks=None, *, attack="pgd", norm="linf", lo=0.0, hi=None,
                    iterations=12, steps=PGD_STEPS, random_start=True, key=0, batch_size=64) -> FlipBudget:
    """Per image the smallest ``eps`` in ``(lo, hi]`` at which the masked ``attack`` changes the prediction.

    ``model``: a :class:`jaxcam.Model` (attacked in pixel space through :func:`jaxcam.noise.pixel_logits`) or a
    callable ``logits_fn`` on pixel batches (N, H, W, 3) -> (N, C). ``images`` (N, H, W, 3) in [0, 1];
    ``labels`` (N,) (None: the clean predictions); ``masks`` (N, H, W) (None: unconfined, all ones).
    A bisection of ``iterations`` halvings, vmapped over the images in chunks of ``batch_size`` and jitted: it keeps
    ``flips(b)`` true and ``flips(a)`` false, starting from ``a = lo`` (a budget assumed not to flip; 0 by default)
    and ``b = hi`` (default 16/255 for L-inf, 4.0 for L2). Image ``i`` uses ``fold_in(key, i)`` for every probe
    (PGD's random start), so results do not depend on chunking. Flipping need not be monotone in ``eps`` for PGD;
    the bisection then finds one flipping budget at most ``(hi - lo) / 2**iterations`` above a non-flipping one."""
    images = _check_images(images, batched=True)
    n, h, w = images.shape[:3]
    fn = get_attack(attack, norm)
    iterations = _positive_int(iterations, "iterations")
    steps = _positive_int(steps, "steps")
    batch_size = _positive_int(batch_size, "batch_size")
    hi = (16 / 255 if norm == "linf" else 4.0) if hi is None else hi
    for name, v in (("lo", lo), ("hi", hi)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
            raise InvalidArgumentError(f"{name} must be a finite number (an attack budget), got {v!r}")
    if not 0.0 <= lo < hi:
        raise InvalidArgumentError(f"need 0 <= lo < hi (the bisection interval of budgets), got lo={lo}, hi={hi}")
    if hasattr(model, "forward_fn"):
        logits_fn = pixel_logits(model)
    elif callable(model):
        logits_fn = model if isinstance(model, jax.tree_util.Partial) else jax.tree_util.Partial(model)
    else:
        raise InvalidArgumentError(f"model must be a jaxcam.Model or a logits_fn callable, got {type(model).__name__}")
    if masks is None:
        masks = jnp.ones((n, h, w), jnp.float32)
    if getattr(masks, "shape", None) is None or tuple(masks.shape) != (n, h, w):
        raise MaskError(f"masks must have shape ({n}, {h}, {w}) to match images (one {h}x{w} map per image), got "
                        f"{getattr(masks, 'shape', None)}")
    masks = jnp.asarray(masks, jnp.float32)
    if labels is None:
        labels = jnp.concatenate([jnp.argmax(logits_fn(images[i:i + batch_size]), axis=-1)
                                  for i in range(0, n, batch_size)]) if n else jnp.zeros((0,), jnp.int32)
    labels = jnp.asarray(labels)
    if labels.shape != (n,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise InvalidArgumentError(f"labels must be {n} ints (one class per image), got shape {labels.shape} "
                                   f"dtype {labels.dtype}")
    key = as_key(key)
    keys = jax.vmap(partial(jax.random.fold_in, key))(jnp.arange(n))
    lo32, hi32 = jnp.float32(lo), jnp.float32(hi)
    parts = [_flip_batch(fn, iterations, steps, bool(random_start), logits_fn, lo32, hi32, keys[i:i + batch_size],
                         images[i:i + batch_size], masks[i:i + batch_size], labels[i:i + batch_size].astype(jnp.int32))
             for i in range(0, n, batch_size)]
    eps, l2, linf, flipped, clean = (np.concatenate([np.asarray(p[j]) for p in parts]) if parts else np.zeros((0,))
                                     for j in range(5))
    return FlipBudget(eps.astype(np.float32), l2.astype(np.float32), linf.astype(np.float32), flipped.astype(bool),
                      int(np.sum(~flipped.astype(bool))), int(np.sum(clean.astype(bool))))
