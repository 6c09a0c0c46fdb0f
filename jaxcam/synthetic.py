"""A synthetic localisation benchmark: images drawn from a key, with the ground truth CAM evaluation needs.

Each image holds one object whose *shape* defines the class (its colour, size, position and a small rotation are
random, so only the shape predicts the label), on a dark background that is optionally cluttered (smooth colour
fields and small distractor dots of every colour). The ground truth is exact: the object's pixel mask and its box.
An optional *spurious cue* is a small coloured patch near the top-left corner: in split ``"train"`` its colour is
the label's (a shortcut a network can learn instead of the shape), in split ``"test"`` its colour is drawn
independently of the label, so a model that relies on it fails there, and a CAM that points at it is caught.
With the cue alone the shape task is easy enough that a network may ignore the cue (it is redundant);
``decoy_shapes=f`` makes the cue the better signal: in split ``"train"`` a fraction ``f`` of the items (with
``spurious=True`` only) draw their object with the shape of a class chosen uniformly at random, independently of
the label, so only the cue gives those items' label (the shape agrees with it by chance, 1 in ``num_classes``).
Split ``"test"`` never has decoys. ``decoy_shapes=0`` (the default) draws exactly the images it drew before.

Objects keep a margin of 1/8 of the image from the border, so a map that points at the border (a SHAM decoy)
misses every object. Item ``i`` of a split is a pure function of ``(key, split, i, size)``: any position can be
drawn alone (random access for shuffled training, resumable streams), and the same key gives the same bits.

Shapes (the classes, in order): square, disc, triangle, cross, ring, diamond, bars, frame (``num_classes`` <= 8
takes the first ones). Drawn with JAX on coordinate grids (vmapped, jitted), so 10 000 images at 48 px take about a
second on a CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from .datasets import ImageSource
from .errors import InvalidArgumentError, UnknownNameError
from .keys import as_key

SYNTHETIC_CLASSES = ("square", "disc", "triangle", "cross", "ring", "diamond", "bars", "frame")
SPLITS = ("train", "test")
CHUNK = 1024  # items drawn per compiled call (batches are padded to a power of two up to this)
MARGIN = 0.125  # of the image side: objects never reach the outer eighth
# saturated, well-separated colours for the spurious cue (one per class)
CUE_COLOURS = np.array([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.15, 0.35, 1.0], [1.0, 1.0, 0.1],
                        [1.0, 0.1, 1.0], [0.1, 1.0, 1.0], [1.0, 0.55, 0.0], [0.6, 0.2, 1.0]], np.float32)


def _check_decoys(decoy_shapes, spurious):
    if isinstance(decoy_shapes, bool) or not isinstance(decoy_shapes, (int, float, np.integer, np.floating)) \
            or not 0 <= float(decoy_shapes) <= 1:
        raise InvalidArgumentError(f"decoy_shapes must be a fraction in [0, 1], got {decoy_shapes!r}")
    if decoy_shapes and not spurious:
        raise InvalidArgumentError("decoy_shapes needs spurious=True: without the cue a decoy item's label would be "
                                   "given by nothing in its image")


def _check(n, size, num_classes, split):
    for name, v, low in (("n", n, 1), ("size", size, 16), ("num_classes", num_classes, 2)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
            raise InvalidArgumentError(f"{name} must be an int >= {low}, got {v!r}")
    if num_classes > len(SYNTHETIC_CLASSES):
        raise InvalidArgumentError(f"num_classes must be at most {len(SYNTHETIC_CLASSES)} (the shapes "
                                   f"{', '.join(SYNTHETIC_CLASSES)}), got {num_classes}")
    if split not in SPLITS:
        raise UnknownNameError(split, SPLITS, "split")


def _shape_mask(cls, u, v, r):
    """The object's pixels for class ``cls`` in object coordinates ``(u, v)`` (pixels from the centre, rotated) of
    radius ``r``; every shape is built to cover a comparable area, so size does not give the class away."""
    rad = jnp.sqrt(u * u + v * v)
    m_abs = jnp.maximum(jnp.abs(u), jnp.abs(v))
    # triangle: inside the three half-planes n_j . p <= r/2 with normals 120 degrees apart (pointing up)
    tri = jnp.ones_like(u, bool)
    for j in range(3):
        a = -jnp.pi / 2 + 2 * jnp.pi * j / 3
        tri = tri & (jnp.cos(a) * u + jnp.sin(a) * v <= 0.5 * r)
    shapes = jnp.stack([
        m_abs <= 0.8 * r,                                                           # square
        rad <= 0.9 * r,                                                             # disc
        tri,                                                                        # triangle
        ((jnp.abs(u) <= 0.3 * r) & (jnp.abs(v) <= r)) | ((jnp.abs(v) <= 0.3 * r) & (jnp.abs(u) <= r)),  # cross
        (rad <= r) & (rad >= 0.55 * r),                                             # ring
        jnp.abs(u) + jnp.abs(v) <= 1.1 * r,                                         # diamond
        (jnp.abs(u) >= 0.4 * r) & (jnp.abs(u) <= r) & (jnp.abs(v) <= 0.9 * r),     # bars
        (m_abs <= 0.9 * r) & (m_abs >= 0.5 * r),                                    # frame
    ])
    return shapes[cls]


@functools.partial(jax.jit, static_argnames=("size", "num_classes", "clutter", "spurious"))
def _draw(keys, *, size, num_classes, clutter, spurious, test, decoys=0.0):
    """Images, labels, masks, boxes and cue masks for a batch of per-item keys (vmapped)."""

    def one(key):
        k = jax.random.split(key, 12)
        s = float(size)
        label = jax.random.randint(k[0], (), 0, num_classes)
        r = jax.random.uniform(k[1], (), minval=0.15 * s, maxval=0.22 * s)
        lo, hi = MARGIN * s + r, (1 - MARGIN) * s - r
        cy = jax.random.uniform(k[2], (), minval=lo, maxval=hi)
        cx = jax.random.uniform(k[3], (), minval=lo, maxval=hi)
        theta = jax.random.uniform(k[4], (), minval=-0.3, maxval=0.3)
        yy, xx = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32) + 0.5, jnp.arange(size, dtype=jnp.float32) + 0.5,
                              indexing="ij")
        dy, dx = yy - cy, xx - cx
        u = jnp.cos(theta) * dx + jnp.sin(theta) * dy
        v = -jnp.sin(theta) * dx + jnp.cos(theta) * dy
        shape = label
        if spurious:  # a decoy draws another class's shape; its own key, so the other draws keep their bits
            kd, ks = jax.random.split(jax.random.fold_in(key, 11))
            decoy = jnp.logical_not(test) & (jax.random.uniform(kd) < decoys)
            shape = jnp.where(decoy, jax.random.randint(ks, (), 0, num_classes), label)
        mask = _shape_mask(shape, u, v, r)
        colour = jax.random.uniform(k[5], (3,), minval=0.45, maxval=1.0)
        bg = jax.random.uniform(k[6], (3,), minval=0.0, maxval=0.3)
        img = jnp.broadcast_to(bg[None, None], (size, size, 3))
        if clutter:
            # a smooth colour field: three random plane waves per channel, amplitude 0.12
            f = jax.random.uniform(k[7], (3, 3, 2), minval=-3.0, maxval=3.0) * (2 * jnp.pi / s)
            ph = jax.random.uniform(k[8], (3, 3), maxval=2 * jnp.pi)
            waves = jnp.sin(f[..., 0][:, :, None, None] * yy[None, None] + f[..., 1][:, :, None, None] * xx[None, None]
                            + ph[:, :, None, None])                         # (3 waves, 3 channels, S, S)
            img = img + 0.04 * jnp.moveaxis(jnp.sum(waves, axis=0), 0, -1)
            # distractor dots: radius 1-2.5 px (at 48 px; scaled with the size), any colour, anywhere
            nd = 8
            pos = jax.random.uniform(k[9], (nd, 2), maxval=s)
            rad = jax.random.uniform(k[10], (nd,), minval=0.02 * s, maxval=0.05 * s)
            col = jax.random.uniform(k[11], (nd, 3), minval=0.3, maxval=1.0)
            cover = ((yy[None] - pos[:, 0, None, None]) ** 2 + (xx[None] - pos[:, 1, None, None]) ** 2
                     <= rad[:, None, None] ** 2)                                  # (nd, S, S)
            top = nd - 1 - jnp.argmax(cover[::-1], axis=0)                          # the last dot drawn wins
            img = jnp.where(jnp.any(cover, axis=0)[..., None], col[top], img)
        img = jnp.where(mask[..., None], colour[None, None], img)
        kc, kn = jax.random.split(jax.random.fold_in(key, 7))
        cue = jnp.zeros((size, size), bool)
        if spurious:
            c = max(3, size // 12)
            off = max(1, size // 24)
            cue = (yy >= off) & (yy < off + c) & (xx >= off) & (xx < off + c)
            cue_cls = jnp.where(test, jax.random.randint(kc, (), 0, num_classes), label)
            img = jnp.where(cue[..., None], jnp.asarray(CUE_COLOURS)[cue_cls][None, None], img)
        img = jnp.clip(img + 0.02 * jax.random.normal(kn, img.shape), 0.0, 1.0)
        rows, cols = jnp.any(mask, axis=1), jnp.any(mask, axis=0)
        idx = jnp.arange(size)
        box = jnp.stack([jnp.min(jnp.where(rows, idx, size)), jnp.min(jnp.where(cols, idx, size)),
                         jnp.max(jnp.where(rows, idx, -1)) + 1, jnp.max(jnp.where(cols, idx, -1)) + 1])
        return img.astype(jnp.float32), label.astype(jnp.int32), mask, box.astype(jnp.int32), cue

    return jax.vmap(one)(keys)


def _item_keys(key, split: str, positions) -> jax.Array:
    base = jax.random.fold_in(as_key(key), SPLITS.index(split))
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(positions, jnp.uint32))


def synthetic_at(key, positions, *, size: int = 48, num_classes: int = 4, clutter: bool = True,
                 spurious: bool = False, split: str = "train", decoy_shapes: float = 0.0) -> dict[str, np.ndarray]:
    """The items at ``positions`` of a split (see :func:`synthetic_arrays` for the arrays returned)."""
    positions = np.asarray(positions, np.int64).reshape(-1)
    _check(max(len(positions), 1), size, num_classes, split)
    _check_decoys(decoy_shapes, spurious)
    if positions.size and (positions.min() < 0 or positions.max() >= 2 ** 32):
        raise InvalidArgumentError("positions must be in [0, 2**32)")
    if not positions.size:
        return {"image": np.zeros((0, size, size, 3), np.float32), "label": np.zeros((0,), np.int32),
                "mask": np.zeros((0, size, size), bool), "box": np.zeros((0, 4), np.int32),
                "cue": np.zeros((0, size, size), bool)}
    parts = []
    for i in range(0, len(positions), CHUNK):  # fixed-size chunks (padded): one compiled program per setting
        pos = positions[i:i + CHUNK]
        width = min(CHUNK, max(16, 1 << (len(pos) - 1).bit_length()))
        padded = np.concatenate([pos, np.zeros(width - len(pos), np.int64)])
        out = _draw(_item_keys(key, split, padded), size=int(size), num_classes=int(num_classes),
                    clutter=bool(clutter), spurious=bool(spurious), test=jnp.asarray(split == "test"),
                    decoys=jnp.asarray(decoy_shapes, jnp.float32))
        parts.append([np.asarray(a)[:len(pos)] for a in out])
    img, label, mask, box, cue = (np.concatenate(p) for p in zip(*parts))
    return {"image": img, "label": label, "mask": mask, "box": box, "cue": cue}


def synthetic_arrays(key, n: int, *, size: int = 48, num_classes: int = 4, clutter: bool = True,
                     spurious: bool = False, split: str = "train", decoy_shapes: float = 0.0) -> dict[str, np.ndarray]:
    """``n`` items of a split as NumPy arrays: ``image`` (n, S, S, 3) float32 in [0, 1], ``label`` (n,) int32,
    ``mask`` (n, S, S) bool (the object's pixels), ``box`` (n, 4) int32 ``(y0, x0, y1, x1)`` (end exclusive) and
    ``cue`` (n, S, S) bool (the spurious patch; all False without ``spurious``). Same key, same bits.
    ``decoy_shapes``: the fraction of split-"train" items whose object has a random class's shape, so only the cue
    gives their label (needs ``spurious=True``; see the module docstring)."""
    _check(n, size, num_classes, split)
    return synthetic_at(key, np.arange(n), size=size, num_classes=num_classes, clutter=clutter, spurious=spurious,
                        split=split, decoy_shapes=decoy_shapes)


class SyntheticSource(ImageSource):
    """The benchmark as an :class:`~jaxcam.datasets.ImageSource`: batches also carry ``mask``, ``box`` and
    ``cue`` (drawn at the batch's ``size``; ``resize_mode`` does not apply, the images are square)."""

    def __init__(self, n, key, size, num_classes, clutter, spurious, split):
        _check(n, size, num_classes, split)
        self.n, self.key, self.size = int(n), as_key(key), int(size)
        self.num_classes, self.clutter, self.spurious, self.split = int(num_classes), bool(clutter), bool(spurious), split
        self.classes = SYNTHETIC_CLASSES[:num_classes]
        self.name = f"synthetic:{n}:{split}"

    def _length(self) -> int:
        return self.n

    def arrays(self, positions=None, size: int | None = None) -> dict[str, np.ndarray]:
        """The items at ``positions`` (default all) at ``size`` (default the source's) as arrays."""
        positions = np.arange(self.n) if positions is None else np.asarray(positions)
        return synthetic_at(self.key, positions, size=size or self.size, num_classes=self.num_classes,
                            clutter=self.clutter, spurious=self.spurious, split=self.split)

    def _batches(self, batch_size, size, mode, positions, skip, workers, on_skip=None) -> Iterator[dict]:
        keep = [p for p in positions if p not in skip]
        for i in range(0, len(keep), batch_size):
            pos = np.asarray(keep[i:i + batch_size], np.int64)
            out = self.arrays(pos, size)
            yield {"id": pos, "index": pos, "image": out["image"], "label": out["label"].astype(np.int64),
                   "mask": out["mask"], "box": out["box"], "cue": out["cue"]}


def synthetic_source(n: int, *, key=0, size: int = 48, num_classes: int = 4, clutter: bool = True,
                     spurious: bool = False, split: str = "train") -> SyntheticSource:
    """``n`` items of the benchmark's ``split`` as a source (ids are positions; labels index
    ``SYNTHETIC_CLASSES``). ``get_source("synthetic:N[:split]")`` builds one with the defaults."""
    return SyntheticSource(n, key, size, num_classes, clutter, spurious, split)


__all__ = ["SYNTHETIC_CLASSES", "SyntheticSource", "synthetic_arrays", "synthetic_at", "synthetic_source"]
