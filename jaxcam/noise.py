"""Input perturbations for noise-robustness studies, as pure per-example JAX functions.

Every perturbation maps ``(key, image, severity) -> image`` on one RGB image in pixel space, ``(H, W, 3)`` float in
``[0, 1]``, applied BEFORE the model's mean/std normalisation; the output is clipped to ``[0, 1]``. Severity is a
traced level 1..5 (looked up in a constant table, so one compiled program serves every level) or a traced raw
constant (:func:`perturb_value`). Level 0 is the identity for every noise. Noise names are static.

Constants for levels 1..5 (``NOISES[name].severities``; each spec's description gives the operation): gaussian,
shot, impulse, speckle, gaussian_blur, brightness and contrast use ImageNet-C's, read in
``ImageNet-C/create_c/make_imagenet_c.py`` of hendrycks/robustness (Hendrycks & Dietterich, ICLR 2019), including
its definitions: impulse acts per VALUE like ``skimage.util.random_noise(mode="s&p")`` (each channel flips on its
own, to 0 or 1 with equal odds); contrast's mean is per channel over all pixels; brightness adds ``c`` to V in HSV
(skimage's rgb2hsv/hsv2rgb conventions) and clips V. Ours: ``uniform`` uses c = sqrt(3) x gaussian's (equal
variance); ``fgsm``/``pgd`` use eps = 1 2 4 8 16 /255 (ImageNet-C's unused fgsm had 8..128/255), PGD runs
:data:`PGD_STEPS` = 10 steps of eps/4 from a uniform random start in the eps-ball, projecting each step.

Blur boundary: ``mode="nearest"`` (edge replication) with ``truncate=4``, i.e. skimage.filters.gaussian's and
ImageNet-C's defaults; it matches ``scipy.ndimage.gaussian_filter(x, (c, c, 0), mode="nearest")`` on the whole
image. The kernel has a static radius of :data:`BLUR_MAX_RADIUS` = 24 = round(4 * 6), so a traced ``c`` above 6
is truncated there. Adversarial noises attack ``logits_fn`` (pixel batch ``(B, H, W, 3)`` -> logits; see
:func:`pixel_logits`) at ``label``, by default the prediction on the clean image; the loss is the cross-entropy.
Grids: :class:`Grid` lists (noise, level, draw) jobs, :func:`job_key` gives each its own key, independent of
chunking, sharding and resumption, and :func:`perturb_batch` applies per-row noises in one vmap.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam.errors import (ImageDtypeError, ImageError, ImageShapeError, JaxcamError, NonFiniteImageError,
                           UnknownNameError)

BLUR_MAX_RADIUS = 24  # int(4.0 * 6 + 0.5): scipy's radius for the largest ImageNet-C sigma
PGD_STEPS = 10
MAX_LEVEL = 5


class UnknownNoiseError(UnknownNameError):
    kind = "noise"


class NoiseArgumentError(JaxcamError, ValueError):
    """A severity level, label, batch or model argument that a perturbation cannot use."""


# --------------------------------------------------------------------------------------------------- noises
def _gaussian(key, x, c, logits_fn, label):
    return x + c * jax.random.normal(key, x.shape, x.dtype)


def _shot(key, x, c, logits_fn, label):
    return jax.random.poisson(key, x * c).astype(x.dtype) / c


def _impulse(key, x, c, logits_fn, label):
    k_flip, k_salt = jax.random.split(key)
    flipped = jax.random.bernoulli(k_flip, c, x.shape)
    salt = jax.random.bernoulli(k_salt, 0.5, x.shape)
    return jnp.where(flipped, salt.astype(x.dtype), x)


def _speckle(key, x, c, logits_fn, label):
    return x + x * c * jax.random.normal(key, x.shape, x.dtype)


def _uniform(key, x, c, logits_fn, label):
    return x + jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * c


def _blur_axis(x, w, axis):
    """1-D correlation of (H, W, C) ``x`` with the taps ``w`` (2R+1,) along ``axis`` (0 or 1), edge-replicated."""
    r, ch = BLUR_MAX_RADIUS, x.shape[-1]
    pad = [(0, 0)] * 3
    pad[axis] = (r, r)
    xp = jnp.pad(x, pad, mode="edge")[None]
    k = w.reshape((-1, 1, 1, 1) if axis == 0 else (1, -1, 1, 1))
    k = jnp.broadcast_to(k, k.shape[:2] + (1, ch))
    out = jax.lax.conv_general_dilated(xp, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       feature_group_count=ch, precision=jax.lax.Precision.HIGHEST)
    return out[0]


def gaussian_kernel(sigma, truncate: float = 4.0):
    """scipy.ndimage's 1-D Gaussian taps for a traced ``sigma``, zero-padded to the static radius 24.
    ``sigma = 0`` gives the identity tap."""
    t = jnp.arange(-BLUR_MAX_RADIUS, BLUR_MAX_RADIUS + 1, dtype=jnp.float32)
    s = jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-3)
    radius = jnp.floor(truncate * sigma + 0.5)
    w = jnp.where(jnp.abs(t) <= radius, jnp.exp(-0.5 * (t / s) ** 2), 0.0)
    return w / jnp.sum(w)


def _gaussian_blur(key, x, c, logits_fn, label):
    w = gaussian_kernel(c).astype(x.dtype)
    return _blur_axis(_blur_axis(x, w, 0), w, 1)


def rgb_to_hsv(x):
    """RGB (..., 3) in [0, 1] to HSV (..., 3) in [0, 1], as ``skimage.color.rgb2hsv`` (ties: blue, then green win;
    grey pixels get H = S = 0)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = jnp.max(x, axis=-1)
    delta = v - jnp.min(x, axis=-1)
    d = jnp.where(delta > 0, delta, 1.0)
    s = jnp.where(delta > 0, delta / jnp.where(v > 0, v, 1.0), 0.0)
    h = jnp.where(b == v, 4.0 + (r - g) / d, jnp.where(g == v, 2.0 + (b - r) / d, (g - b) / d))
    h = jnp.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(x):
    """HSV (..., 3) to RGB (..., 3), as ``skimage.color.hsv2rgb``."""
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    hi = jnp.floor(h * 6.0)
    f = h * 6.0 - hi
    p, q, t = v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s)
    sector = (hi.astype(jnp.int32) % 6)[..., None]
    pick = lambda *opts: jnp.take_along_axis(jnp.stack(opts, axis=-1), sector, axis=-1)[..., 0]  # noqa: E731
    return jnp.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)], axis=-1)


def _brightness(key, x, c, logits_fn, label):
    hsv = rgb_to_hsv(x)
    hsv = hsv.at[..., 2].set(jnp.clip(hsv[..., 2] + c, 0.0, 1.0))
    return hsv_to_rgb(hsv)


def _contrast(key, x, c, logits_fn, label):
    means = jnp.mean(x, axis=(0, 1), keepdims=True)
    return (x - means) * c + means


def _loss(logits_fn, label, x):
    """Cross-entropy of the one image ``x`` at ``label``."""
    return -jax.nn.log_softmax(logits_fn(x[None])[0])[label]


def _fgsm(key, x, c, logits_fn, label):
    return x + c * jnp.sign(jax.grad(partial(_loss, logits_fn, label))(x))


def _pgd(key, x, c, logits_fn, label):
    grad = jax.grad(partial(_loss, logits_fn, label))
    project = lambda z: jnp.clip(jnp.clip(z, x - c, x + c), 0.0, 1.0)  # noqa: E731
    start = project(x + jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * c)
    step = lambda i, z: project(z + (c / 4) * jnp.sign(grad(z)))  # noqa: E731
    return jax.lax.fori_loop(0, PGD_STEPS, step, start)


# ------------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class NoiseSpec:
    name: str
    kind: str  # "random" | "deterministic" | "adversarial"
    severities: tuple[float, ...]  # the constant c of levels 1..5
    description: str
    fn: Callable = field(repr=False, compare=False)  # fn(key, x, c, logits_fn, label) -> unclipped image


_GAUSS = (0.08, 0.12, 0.18, 0.26, 0.38)
_EPS = tuple(e / 255 for e in (1, 2, 4, 8, 16))
NOISES: dict[str, NoiseSpec] = {s.name: s for s in (
    NoiseSpec("gaussian", "random", _GAUSS, "x + N(0, c^2) (ImageNet-C)", _gaussian),
    NoiseSpec("shot", "random", (60.0, 25.0, 12.0, 5.0, 3.0), "Poisson(c x) / c (ImageNet-C)", _shot),
    NoiseSpec("impulse", "random", (0.03, 0.06, 0.09, 0.17, 0.27),
              "salt & pepper: fraction c of values set to 0 or 1 (ImageNet-C, skimage s&p)", _impulse),
    NoiseSpec("speckle", "random", (0.15, 0.2, 0.35, 0.45, 0.6), "x + x N(0, c^2) (ImageNet-C)", _speckle),
    NoiseSpec("uniform", "random", tuple(float(np.sqrt(3.0)) * g for g in _GAUSS),
              "x + U(-c, c), c = sqrt(3) x gaussian's so variances match (ours)", _uniform),
    NoiseSpec("gaussian_blur", "deterministic", (1.0, 2.0, 3.0, 4.0, 6.0),
              "Gaussian filter of std c pixels, nearest boundary, truncate 4 (ImageNet-C)", _gaussian_blur),
    NoiseSpec("brightness", "deterministic", (0.1, 0.2, 0.3, 0.4, 0.5), "HSV value + c (ImageNet-C)", _brightness),
    NoiseSpec("contrast", "deterministic", (0.4, 0.3, 0.2, 0.1, 0.05),
              "(x - per-channel mean) c + mean (ImageNet-C)", _contrast),
    NoiseSpec("fgsm", "adversarial", _EPS, "L-inf FGSM of radius c on the cross-entropy (ours)", _fgsm),
    NoiseSpec("pgd", "adversarial", _EPS, f"L-inf PGD, {PGD_STEPS} steps of c/4, random start (ours)", _pgd),
)}
NOISE_NAMES: tuple[str, ...] = tuple(NOISES)


def noise_id(name: str) -> int:
    """A stable 31-bit id of a noise name (CRC-32), folded into job keys: independent of registry or grid order."""
    return zlib.crc32(_spec(name).name.encode()) & 0x7FFFFFFF


def _spec(name) -> NoiseSpec:
    if name not in NOISES:
        raise UnknownNoiseError(name, NOISE_NAMES)
    return NOISES[name]


def _normalised_forward(forward_fn, mean, std, x):
    return forward_fn((x - mean) / std)


def pixel_logits(model) -> jax.tree_util.Partial:
    """``logits_fn`` of a jaxcam Model on pixel images in [0, 1]: normalise with ``model.mean/std``, then
    ``model.forward_fn``. A pytree, so it can be passed into ``jit``."""
    shape = (1, 1, 1, 3)
    return jax.tree_util.Partial(_normalised_forward, model.forward_fn, jnp.reshape(jnp.asarray(model.mean,
                                 jnp.float32), shape), jnp.reshape(jnp.asarray(model.std, jnp.float32), shape))


# ------------------------------------------------------------------------------------------------ application
def _core(names, index, key, image, severity, by_value, logits_fn, label):
    """Unvalidated, unjitted: noise ``names[index]`` at level (or value) ``severity`` on one image."""
    adversarial = any(NOISES[n].kind == "adversarial" for n in names)
    if label is None:
        label = jnp.argmax(logits_fn(image[None])[0]) if adversarial else jnp.int32(0)
    if by_value:
        c = jnp.asarray(severity, image.dtype)
    else:
        table = jnp.asarray([(NOISES[n].severities[0],) + NOISES[n].severities for n in names], image.dtype)
        c = table[index, jnp.clip(severity, 0, MAX_LEVEL)]
    branches = [partial(NOISES[n].fn, logits_fn=logits_fn, label=label) for n in names]
    out = jnp.clip(jax.lax.switch(index, branches, key, image, c), 0.0, 1.0)
    return out if by_value else jnp.where(severity == 0, image, out)


_apply = jax.jit(_core, static_argnames=("names", "by_value"))


def job_key(key, image_id, noise, level, draw):
    """The key of one job: ``fold_in`` of ``image_id``, ``noise`` (a name, or its :func:`noise_id`; not a grid
    index, so adding or reordering noises keeps every key), ``level`` and ``draw`` in that order. It depends on
    nothing else, so any chunking, sharding or resumption of a grid gives the same keys."""
    if isinstance(noise, str):
        noise = noise_id(noise)
    for data in (image_id, noise, level, draw):
        key = jax.random.fold_in(key, data)
    return key


def _batch_core(names, key, images, image_ids, noise_idx, levels, draws, logits_fn, labels):
    ids = jnp.asarray([noise_id(n) for n in names], jnp.int32)[noise_idx]
    ax = 0 if jnp.ndim(noise_idx) else None  # a shared index keeps lax.switch a real branch (only one noise runs)
    keys = jax.vmap(job_key, in_axes=(None, 0, ax, 0, 0))(key, image_ids, ids, levels, draws)
    one = lambda i, k, x, lvl, lab: _core(names, i, k, x, lvl, False, logits_fn, lab)  # noqa: E731
    return jax.vmap(one, in_axes=(ax, 0, 0, 0, None if labels is None else 0))(noise_idx, keys, images, levels,
                                                                             labels)


_apply_batch = jax.jit(_batch_core, static_argnames=("names",))


# ---------------------------------------------------------------------------------------------- validation
def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_images(x, batched: bool = False):
    shape = getattr(x, "shape", None)
    want = "(N, H, W, 3)" if batched else "(H, W, 3)"
    if shape is None or len(shape) != 3 + batched or shape[-1] != 3:
        raise ImageShapeError(f"image must have shape {want} (RGB, channels last), got "
                              f"{None if shape is None else tuple(shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ImageDtypeError(f"image must be floating point with values in [0, 1], got dtype {x.dtype}")
    x = jnp.asarray(x)
    if _concrete(x) and x.size:
        with jax.ensure_compile_time_eval():  # concrete values, even when called while tracing something else
            finite, lo, hi = bool(jnp.isfinite(x).all()), float(jnp.min(x)), float(jnp.max(x))
        if not finite:
            raise NonFiniteImageError(f"image of shape {tuple(shape)} holds NaN or infinite values")
        if lo < 0.0 or hi > 1.0:
            raise ImageError(f"image values must lie in [0, 1] (pixel space, before normalisation), got "
                             f"[{lo:.4g}, {hi:.4g}]")
    return x


def _check_levels(level, what: str = "level"):
    if _concrete(level):
        lv = np.asarray(level)
        if not np.issubdtype(lv.dtype, np.integer) or lv.size and (lv.min() < 0 or lv.max() > MAX_LEVEL):
            raise NoiseArgumentError(f"{what} must be an integer in 0..{MAX_LEVEL} (0 = clean), got {level!r}")
    return jnp.asarray(level, jnp.int32)


def _check_names(names):
    if isinstance(names, str) or not names:
        raise NoiseArgumentError(f"names must be a non-empty tuple of noise names, got {names!r}")
    return tuple(_spec(n).name for n in names)


def _model_args(names, logits_fn, label):
    if not any(NOISES[n].kind == "adversarial" for n in names):
        return None, None  # unused: dropping them lets calls with and without a model share one program
    if logits_fn is None:
        raise NoiseArgumentError(f"adversarial noises in {names} need logits_fn (see jaxcam.noise.pixel_logits)")
    if not isinstance(logits_fn, jax.tree_util.Partial):
        logits_fn = jax.tree_util.Partial(logits_fn)  # a pytree whose function is static (hashed by identity)
    return logits_fn, None if label is None else jnp.asarray(label, jnp.int32)


# --------------------------------------------------------------------------------------------- public entry
def perturb(name: str, key, image, level, *, logits_fn=None, label=None) -> jax.Array:
    """Noise ``name`` at ``level`` (0 = identity, 1..5; may be traced) on one image (H, W, 3) in [0, 1]."""
    return perturb_by_index((name,), 0, key, image, level, logits_fn=logits_fn, label=label)


def perturb_value(name: str, key, image, value, *, logits_fn=None, label=None) -> jax.Array:
    """Noise ``name`` with the raw constant ``value`` (the ``c`` of the table; may be traced)."""
    names = _check_names((name,))
    logits_fn, label = _model_args(names, logits_fn, label)
    return _apply(names, jnp.int32(0), key, _check_images(image), jnp.asarray(value, jnp.float32), True,
                  logits_fn, label)


def perturb_by_index(names: tuple[str, ...], index, key, image, level, *, logits_fn=None, label=None):
    """Noise ``names[index]`` (index traced, clamped by ``lax.switch``) at ``level``: one compiled program serves
    every index and level of a given ``names`` tuple."""
    names = _check_names(names)
    logits_fn, label = _model_args(names, logits_fn, label)
    if _concrete(index) and not 0 <= int(index) < len(names):
        raise NoiseArgumentError(f"index must be in 0..{len(names) - 1} for names {names}, got {index!r}")
    return _apply(names, jnp.asarray(index, jnp.int32), key, _check_images(image), _check_levels(level), False,
                  logits_fn, label)


def perturb_batch(names, key, images, image_ids, noise_idx, levels, draws, logits_fn=None, labels=None):
    """Row ``i`` of ``images`` (N, H, W, 3) gets noise ``names[noise_idx[i]]`` at ``levels[i]`` with the key
    ``job_key(key, image_ids[i], noise_id(names[noise_idx[i]]), levels[i], draws[i])``; one vmap, one program.

    ``noise_idx`` may be one shared scalar: then only that noise is computed. With per-row indices, vmapped
    ``lax.switch`` evaluates EVERY branch for every row (adversarial ones too), so group rows by noise for speed.
    """
    names = _check_names(names)
    logits_fn, labels = _model_args(names, logits_fn, labels)
    images = _check_images(images, batched=True)
    n = images.shape[0]
    rows = {"image_ids": image_ids, "levels": levels, "draws": draws, "labels": labels}
    rows = {k: jnp.asarray(v, jnp.int32) for k, v in rows.items() if v is not None}
    noise_idx = np.asarray(noise_idx) if _concrete(noise_idx) else noise_idx
    if jnp.ndim(noise_idx):
        rows["noise_idx"] = noise_idx
    for k, v in rows.items():
        if jnp.shape(v) != (n,):
            raise NoiseArgumentError(f"{k} must have shape ({n},) to match images, got {jnp.shape(v)}")
    if _concrete(noise_idx) and np.size(noise_idx) and not (0 <= np.min(noise_idx) and np.max(noise_idx) < len(names)):
        raise NoiseArgumentError(f"noise_idx must lie in 0..{len(names) - 1} for names {names}")
    return _apply_batch(names, key, images, rows["image_ids"], jnp.asarray(noise_idx, jnp.int32),
                        _check_levels(levels, "levels"), rows["draws"], logits_fn, labels)


@dataclass(frozen=True)
class Grid:
    """A noise grid. ``jobs()`` order: noise-major (in ``names`` order), then ``levels`` in the given order, then
    draw 0..draws-1. Deterministic noises get draw 0 only unless ``repeat_deterministic``."""

    names: tuple[str, ...]
    levels: tuple[int, ...] = (1, 2, 3, 4, 5)
    draws: int = 1
    repeat_deterministic: bool = False

    def __post_init__(self):
        object.__setattr__(self, "names", _check_names(tuple(self.names) if not isinstance(self.names, str)
                                                       else self.names))
        _check_levels(np.asarray(self.levels).reshape(-1), "levels")
        object.__setattr__(self, "levels", tuple(int(v) for v in np.asarray(self.levels).reshape(-1)))
        if not isinstance(self.draws, (int, np.integer)) or self.draws < 1:
            raise NoiseArgumentError(f"draws must be a positive integer, got {self.draws!r}")

    def draws_of(self, name: str) -> int:
        return 1 if NOISES[name].kind == "deterministic" and not self.repeat_deterministic else self.draws

    def jobs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(noise_index, level, draw)``: three int32 arrays of length ``len(self)``; noise_index indexes names."""
        rows = [(i, lvl, d) for i, n in enumerate(self.names) for lvl in self.levels for d in range(self.draws_of(n))]
        arr = np.asarray(rows, np.int32).reshape(-1, 3)
        return arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy()

    def __len__(self) -> int:
        return len(self.levels) * sum(self.draws_of(n) for n in self.names)
