"""The training data: loaded once into memory, a deterministic stream of batches by position, and augmentations
as pure functions of ``(key, batch)``.

Loading (:func:`load_data`): images are decoded and resized once to the model's input size and held as float32 RGB
in [0, 1] (normalisation with the model's mean and std happens in the compiled step, after augmentation). The
whole set must fit in memory: at most :data:`MAX_BYTES` of arrays (default 8 GiB, about 40 000 images at 224 px
or 900 000 at 48 px; the environment variable ``JAXCAM_TRAIN_MAX_BYTES`` changes it). Keys other than ``image``
and ``label`` that hold one value per item (the synthetic benchmark's ``mask``, ``box``, ``cue``) pass through to
the loss; text ids are dropped.

The stream (:class:`Stream`): item ``g`` of the run (``g = step * per_step + i``) is position ``perm_e[g mod N]``
of epoch ``e = g // N``, where ``perm_e = jax.random.permutation(fold_in(key, e), N)``. A batch is a function of
the step number alone, so a resumed run reads exactly the batches the interrupted one would have, with no
iterator state to save.

Augmentations (:data:`AUGMENTATIONS`) run inside the compiled step on the whole per-step batch, each from its own
key: ``flip`` (horizontal, probability 1/2 per image), ``crop`` (pad by an eighth of the side with zeros, then a
random crop back to size: the CIFAR recipe of He et al. 2016) and ``noise`` (Gaussian, sigma 0.05, clipped to
[0, 1]). ``flip`` and ``crop`` move masks (any per-item array with the image's height and width) and ``box``
``(y0, x0, y1, x1)`` with the pixels, so ground truth stays aligned.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..data import resize
from ..errors import ClassIndexError, EmptySourceError, InvalidArgumentError, UnknownNameError

MAX_BYTES = int(os.environ.get("JAXCAM_TRAIN_MAX_BYTES", 8 * 2 ** 30))
NOISE_SIGMA = 0.05
DROPPED_KEYS = ("id", "index")
LOAD_BATCH = 256

# ---------------------------------------------------------------------------------------------------- loading


def describe(data) -> str:
    """A short identity of ``data`` recorded with checkpoints, known before loading: a source's name and length;
    for arrays their shape and a digest of their bytes (so other arrays are noticed on resume)."""
    if isinstance(data, Mapping):
        import hashlib

        h = hashlib.sha256()
        for k in sorted(data):
            a = np.ascontiguousarray(np.asarray(data[k]))
            if a.dtype.kind in "biuf":
                h.update(k.encode() + str(a.shape).encode() + a.dtype.str.encode() + a.tobytes())
        return f"arrays:{np.shape(data.get('image'))}:{h.hexdigest()[:16]}"
    source = _source(data)
    n = source._length()
    return f"{source.name}:{'?' if n is None else n}"


def _source(data):
    from ..datasets import ImageSource, get_source

    if isinstance(data, ImageSource):
        return data
    if isinstance(data, str):
        return get_source(data)  # unknown schemes and bad specs raise here, one line
    raise InvalidArgumentError(
        f"data must be an ImageSource, a spec string ('synthetic:512', 'tfds:NAME[:SPLIT]', 'folder:PATH') or a dict "
        f"of arrays with 'image' (N, S, S, 3) in [0, 1] and 'label' (N,), got {type(data).__name__}")


def check_data(data, name: str = "data"):
    """Raise before any work for data that is neither a dict with image and label, a source nor a valid spec;
    returns the source (or the dict) so it is built once."""
    if isinstance(data, Mapping):
        missing = [k for k in ("image", "label") if k not in data]
        if missing:
            raise InvalidArgumentError(f"{name} dict needs keys 'image' and 'label', missing {missing}; "
                                       f"it has {sorted(data)}")
        return data
    try:
        return _source(data)
    except InvalidArgumentError as exc:
        raise type(exc)(f"{name}: {exc}") from None


def load_data(data, size: int, num_classes: int, name: str = "data") -> dict[str, np.ndarray]:
    """``data`` (a dict of arrays, an ImageSource or a spec string) as in-memory arrays at ``size`` px: ``image``
    (N, size, size, 3) float32 in [0, 1], ``label`` (N,) int32 in [0, num_classes), and the other per-item keys."""
    data = check_data(data, name)
    out = _from_arrays(data, size, name) if isinstance(data, Mapping) else _from_source(data, size, name)
    labels = out["label"]
    if labels.size and labels.min() < 0:
        raise InvalidArgumentError(f"{name} has unlabelled items (label {int(labels.min())}); training needs a "
                                   "label in [0, num_classes) for every item (a folder source: one subfolder per "
                                   "class)")
    if labels.size and labels.max() >= num_classes:
        raise ClassIndexError(f"{name} has label {int(labels.max())} but the model has {num_classes} classes; give a "
                              f"model with num_classes > {int(labels.max())} or filter the data")
    return out


def _check_bytes(n: int, size: int, name: str) -> None:
    need = n * size * size * 3 * 4
    if need > MAX_BYTES:
        raise InvalidArgumentError(
            f"{name}: {n} images at {size} px need {need / 2 ** 30:.1f} GiB in memory, more than the limit of "
            f"{MAX_BYTES / 2 ** 30:.1f} GiB; train on a subset (tfds split 'train[:N]') or raise "
            "JAXCAM_TRAIN_MAX_BYTES")


def _from_arrays(data: Mapping, size: int, name: str) -> dict[str, np.ndarray]:
    image = np.asarray(data["image"])
    if image.ndim != 4 or image.shape[-1] != 3 or image.shape[0] == 0:
        raise InvalidArgumentError(f"{name}['image'] must be a non-empty (N, H, W, 3) array, got shape {image.shape}")
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype.kind != "f":
        raise InvalidArgumentError(f"{name}['image'] must be float in [0, 1] or uint8, got dtype {image.dtype}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise InvalidArgumentError(f"{name}['image'] must be finite and in [0, 1] (RGB, not normalised: the model's "
                                   "mean and std are applied in the step)")
    n, h, w = image.shape[:3]
    _check_bytes(n, size, name)
    out = {}
    for key, value in data.items():
        if key in DROPPED_KEYS or key == "image":
            continue
        arr = np.asarray(value)
        if arr.ndim == 0 or arr.shape[0] != n:
            raise InvalidArgumentError(f"{name}[{key!r}] must hold one value per image ({n}), got shape {arr.shape}")
        if arr.dtype.kind not in "biuf":
            continue  # text (file names, ids): not model input
        if (h, w) != (size, size) and arr.ndim >= 3 and arr.shape[1:3] == (h, w):
            rows = (np.arange(size) * h) // size  # nearest neighbour: masks stay masks
            cols = (np.arange(size) * w) // size
            arr = arr[:, rows][:, :, cols]
        elif (h, w) != (size, size) and key == "box":
            scale = np.asarray([size / h, size / w, size / h, size / w])
            arr = np.round(arr * scale).astype(arr.dtype)
        out[key] = arr
    if (h, w) != (size, size):
        image = np.stack([resize(im, size) for im in image])
    out["image"] = image
    out["label"] = np.asarray(data["label"]).astype(np.int32)
    if out["label"].shape != (n,):
        raise InvalidArgumentError(f"{name}['label'] must have shape ({n},), got {out['label'].shape}")
    return out


def _from_source(source, size: int, name: str) -> dict[str, np.ndarray]:
    n = source._length()
    if n is not None:
        _check_bytes(n, size, name)
    parts: list[dict] = []
    seen = 0
    for batch in source.batches(LOAD_BATCH, size=size):
        parts.append({k: v for k, v in batch.items() if k not in DROPPED_KEYS and np.asarray(v).dtype.kind in "biuf"})
        seen += len(batch["image"])
        if n is None:
            _check_bytes(seen, size, name)
    if not parts:
        raise EmptySourceError(f"{name}: {source.name} has no items to train on")
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["image"] = out["image"].astype(np.float32, copy=False)
    out["label"] = out["label"].astype(np.int32)
    return out


# ---------------------------------------------------------------------------------------------------- stream


class Stream:
    """The positions of step ``s``'s items (module docstring): a pure function of ``(key, N, per_step, s)``."""

    def __init__(self, n: int, per_step: int, key: jax.Array):
        self.n, self.per_step, self.key = int(n), int(per_step), key
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.asarray(jax.random.permutation(jax.random.fold_in(self.key, epoch), self.n))
        return self._perms[epoch]

    def indices(self, step: int) -> np.ndarray:
        g = np.arange(step * self.per_step, (step + 1) * self.per_step, dtype=np.int64)
        epochs, offsets = g // self.n, g % self.n
        out = np.empty(self.per_step, np.int32)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self.permutation(int(e))[offsets[sel]]
        return out


@jax.jit
def gather(arrays: dict, indices: jax.Array) -> dict:
    """The items at ``indices`` of every array (on the device that holds them)."""
    return {k: jnp.take(v, indices, axis=0) for k, v in arrays.items()}


# ---------------------------------------------------------------------------------------------------- augment


def _spatial(batch: dict) -> list[str]:
    """The keys moved with the pixels: the image and every per-item array with its height and width."""
    hw = batch["image"].shape[1:3]
    return [k for k, v in batch.items() if v.ndim >= 3 and v.shape[1:3] == hw]


def flip(key: jax.Array, batch: dict) -> dict:
    """Mirror each image left-right with probability 1/2, with its masks and box."""
    n, _, w = batch["image"].shape[:3]
    do = jax.random.bernoulli(key, 0.5, (n,))
    out = dict(batch)
    for k in _spatial(batch):
        v = batch[k]
        out[k] = jnp.where(do.reshape((n,) + (1,) * (v.ndim - 1)), v[:, :, ::-1], v)
    if "box" in batch:
        b = batch["box"]
        mirrored = jnp.stack([b[:, 0], w - b[:, 3], b[:, 2], w - b[:, 1]], axis=1).astype(b.dtype)
        out["box"] = jnp.where(do[:, None], mirrored, b)
    return out


def crop(key: jax.Array, batch: dict) -> dict:
    """Pad by ``p = max(1, S // 8)`` zeros on every side and crop a random S x S window (masks and box move
    with it; the box is clipped to the image)."""
    n, h, w = batch["image"].shape[:3]
    p = max(1, min(h, w) // 8)
    dy, dx = (jax.random.randint(k, (n,), 0, 2 * p + 1) for k in jax.random.split(key))
    out = dict(batch)
    for k in _spatial(batch):
        v = batch[k]
        padded = jnp.pad(v, [(0, 0), (p, p), (p, p)] + [(0, 0)] * (v.ndim - 3))

        def one(a, y, x, shape=v.shape[1:]):
            return jax.lax.dynamic_slice(a, (y, x) + (0,) * (len(shape) - 2), shape)

        out[k] = jax.vmap(one)(padded, dy, dx)
    if "box" in batch:
        b = batch["box"]
        shift = jnp.stack([p - dy, p - dx, p - dy, p - dx], axis=1)
        limit = jnp.asarray([h, w, h, w], b.dtype).reshape(1, 4)
        out["box"] = jnp.clip(b + shift.astype(b.dtype), 0, limit)
    return out


def noise(key: jax.Array, batch: dict) -> dict:
    """Add Gaussian noise of standard deviation 0.05 to the pixels, clipped back to [0, 1]."""
    x = batch["image"]
    return dict(batch, image=jnp.clip(x + NOISE_SIGMA * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0))


AUGMENTATIONS: dict[str, Callable] = {"flip": flip, "crop": crop, "noise": noise}


def check_augment(augment) -> tuple:
    """The augmentations as a tuple of functions ``(key, batch) -> batch``; unknown names raise before any work."""
    if augment is None:
        return ()
    if isinstance(augment, str) or callable(augment):
        augment = (augment,)
    if not isinstance(augment, Sequence):
        raise InvalidArgumentError(f"augment must be a sequence of names {tuple(AUGMENTATIONS)} or functions "
                                   f"(key, batch) -> batch, got {type(augment).__name__}")
    out = []
    for a in augment:
        if callable(a):
            out.append(a)
        elif isinstance(a, str) and a in AUGMENTATIONS:
            out.append(AUGMENTATIONS[a])
        else:
            raise UnknownNameError(a, AUGMENTATIONS, "augment")
    return tuple(out)


def apply_augment(fns: Sequence[Callable], key: jax.Array, batch: dict) -> dict:
    """Each augmentation in turn, the i-th with ``fold_in(key, i)``."""
    for i, fn in enumerate(fns):
        batch = fn(jax.random.fold_in(key, i), batch)
    return batch


__all__ = ["AUGMENTATIONS", "MAX_BYTES", "Stream", "apply_augment", "check_augment", "check_data", "crop",
           "describe", "flip", "gather", "load_data", "noise"]
