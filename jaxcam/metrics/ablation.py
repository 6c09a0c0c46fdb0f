"""Region ablation: remove the regions a CAM highlights and measure what the model loses (issue 16).

For each image, :func:`jaxcam.regions.cam_regions` turns the map into ranked regions R_1..R_K. The ablated image
is ``x' = (1 - M) * x + M * s(x)`` with ``M`` the union of the regions and ``s`` a substrate: "blur" (RISE's
Gaussian blur, Petsiuk et al., BMVC 2018), "mean" (the image's per-channel mean), "noise" (uniform pixels from the
key) or "inpaint" (ROAD's noisy linear imputation, Rong et al., ICML 2022: each removed pixel the weighted mean of
its 8-neighbours, so the removal leaves no sharp-edged hole that the model could react to instead of the missing
content). Reported per image: the area fraction removed, every class probability before and after, the change of
the explained class ``p_c(x') - p_c(x)`` and the largest rise of any other class ``max_{j != c} p_j(x') - p_j(x)``.

The control: the same number of pixels removed at random, as blobs (the top-``|M|`` pixels of Gaussian-smoothed
white noise from the key, so the area equals the CAM's exactly and the shape is region-like, not salt-and-pepper
which blur and inpainting would undo). A faithful CAM removes more of the explained class than the control.
Per-region ranking: each region ablated alone; ``top_region`` is the (1-based, CAM-ranked) region whose removal
lowers the explained class most, so "the spurious cue's region ranks first" can be counted.

Images are un-normalised RGB in [0, 1] at the model's input size; ablation happens in pixel space, then the
model's mean/std is applied. All forwards are batched and compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InvalidArgumentError, MapError, UnknownNameError
from ..imputation import impute
from ..keys import as_key
from ..table import Table
from .deletion import rise_blur

ABLATIONS = ("blur", "mean", "noise", "inpaint")


def ablate(image: jax.Array, region_mask: jax.Array, how: str = "blur", key=None) -> jax.Array:
    """``image`` (H, W, C) in [0, 1] with the pixels where ``region_mask`` (H, W) is True replaced by the
    substrate ``how`` (see the module docstring). Pure and jit-able; ``key`` is used by "noise" only."""
    if how not in ABLATIONS:
        raise UnknownNameError(how, ABLATIONS, "ablation (how=)")
    m = jnp.asarray(region_mask, bool)
    if m.shape != image.shape[:2]:
        raise MapError(f"region_mask must be (H, W) = {image.shape[:2]} like the image, got shape {m.shape}")
    if how == "blur":
        sub = rise_blur(image[None])[0]
    elif how == "mean":
        sub = jnp.broadcast_to(image.mean(axis=(0, 1), keepdims=True), image.shape)
    elif how == "noise":
        if key is None:
            raise InvalidArgumentError('how="noise" needs key= (an int seed or a jax.random key)')
        sub = jax.random.uniform(as_key(key), image.shape, image.dtype)
    else:
        return impute(image, ~m)
    return jnp.where(m[..., None], sub, image)


def random_regions(key, area: jax.Array, shape: tuple[int, int], sigma: float = 3.0) -> jax.Array:
    """(H, W) bool with exactly ``area`` True pixels forming random blobs: the top ``area`` pixels of white noise
    blurred by a Gaussian of ``sigma`` pixels. Jit-able with a traced ``area``."""
    h, w = shape
    field = jax.random.normal(key, (1, h, w, 1))
    size = 2 * int(np.ceil(2 * sigma)) + 1
    field = rise_blur(field, size=size, sigma=sigma)[0, ..., 0].reshape(-1)
    rank = jnp.argsort(jnp.argsort(-field))
    return (rank < area).reshape(h, w)


_control_masks = jax.jit(jax.vmap(random_regions, in_axes=(0, 0, None)), static_argnums=2)


@dataclass(frozen=True)
class RegionAblation:
    """Per image (N rows): ``area_fraction``, ``before``/``after``/``control_after`` (N, C) probabilities,
    ``explained_change`` / ``control_explained_change`` (``p_c`` after minus before), ``others_change`` /
    ``control_others_change`` (largest rise of another class), ``region_change`` (N, R) the explained class's change
    with region k alone removed (NaN past the image's region count), ``top_region`` (N,) 1-based rank of the region
    whose removal lowers the explained class most, ``regions`` the :class:`~jaxcam.regions.Regions` per image,
    ``control_masks`` (N, H, W) bool the random control's pixels."""

    classes: np.ndarray
    area_fraction: np.ndarray
    control_area_fraction: np.ndarray
    before: np.ndarray
    after: np.ndarray
    control_after: np.ndarray
    explained_change: np.ndarray
    others_change: np.ndarray
    control_explained_change: np.ndarray
    control_others_change: np.ndarray
    region_change: np.ndarray
    top_region: np.ndarray
    regions: tuple
    control_masks: np.ndarray

    def summary(self, confidence: float = 0.95) -> Table:
        """Mean and Student-t ``confidence`` interval over the images of the explained class's change under CAM
        ablation, under the random control, and of their paired difference (CAM minus control: negative when the
        CAM's regions cost the class more than random regions of the same area). Columns: ablation, mean, low,
        high, n. One image: the interval is the mean itself (no spread can be estimated)."""
        from scipy import stats

        if not 0 < float(confidence) < 1:
            raise InvalidArgumentError(f"confidence must be in (0, 1), got {confidence!r}")
        rows = []
        for name, v in (("cam regions", self.explained_change), ("random control", self.control_explained_change),
                        ("cam - control", self.explained_change - self.control_explained_change)):
            v = np.asarray(v, np.float64)
            half = (float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
                    if v.size > 1 else 0.0)
            rows.append({"ablation": name, "mean": float(v.mean()), "low": float(v.mean()) - half,
                         "high": float(v.mean()) + half, "n": int(v.size)})
        return Table.from_rows(rows)

    def to_table(self) -> Table:
        """One row per image (the scalar fields), for :meth:`Table.to_csv` / ``to_markdown``."""
        return Table({"image": np.arange(len(self.classes)), "class": self.classes,
                      "regions": [r.count for r in self.regions], "area_fraction": self.area_fraction,
                      "explained_change": self.explained_change, "others_change": self.others_change,
                      "control_explained_change": self.control_explained_change,
                      "control_others_change": self.control_others_change, "top_region": self.top_region})


def _changes(before, after, classes):
    c = jax.nn.one_hot(classes, before.shape[-1], dtype=bool)
    d = after - before
    return jnp.sum(jnp.where(c, d, 0), axis=-1), jnp.max(jnp.where(c, -jnp.inf, d), axis=-1)


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _probs_program(forward, mean, std, how, batch_size, params, images, masks, keys):
    """Probabilities (N, C) of ``images`` (N, H, W, 3) ablated at ``masks`` (N, H, W), ``batch_size`` at a time."""
    n = images.shape[0]
    chunks = -(-n // batch_size)
    idx = (jnp.arange(chunks * batch_size) % n).reshape(chunks, batch_size)  # wrap the last chunk: no ragged shapes
    mu, sd = (jnp.asarray(v, images.dtype).reshape(1, 1, 1, -1) for v in (mean, std))

    def chunk(i):
        x = jax.vmap(lambda im, m, k: ablate(im, m, how, k))(images[i], masks[i], keys[i])
        return jax.nn.softmax(forward(params, (x - mu) / sd), axis=-1)

    return jax.lax.map(chunk, idx).reshape(chunks * batch_size, -1)[:n]


EMPTY = ("error", "zero")


def _no_regions(cam, threshold, top):
    from ..regions import Regions

    cut = float(np.quantile(np.asarray(cam, np.float64), 1 - float(top))) if top is not None else float(threshold)
    return Regions(labels=np.zeros(np.shape(cam), np.int32), areas=np.zeros(0, np.int64), scores=np.zeros(0),
                   threshold=cut)


def region_ablation(model, images, cams, labels, key=0, *, how: str = "blur", threshold: float | None = 0.5,
                    top: float | None = None, min_area: int = 1, max_regions: int = 5, snap: str = "none",
                    snap_options: dict | None = None, batch_size: int = 32, empty: str = "error") -> RegionAblation:
    """Ablate the regions of each map and a same-area random control (see the module docstring).

    ``images`` (N, H, W, 3) RGB in [0, 1] at the model's input size; ``cams`` (N, H, W) in [0, 1]; ``labels`` (N,)
    the explained classes; ``key`` an int seed or a jax.random key (control regions and noise). Region options
    (``threshold``, ``top``, ``min_area``, ``max_regions``, ``snap``, ``snap_options``) go to
    :func:`jaxcam.regions.cam_regions`; only the ``max_regions`` best-ranked regions are ablated.

    A map with no region (a constant map, e.g. an all-zero Grad-CAM, or one whose components are all below
    ``min_area``): ``empty="error"`` (the default) raises :class:`~jaxcam.regions.EmptyRegionsError` naming the
    image index, before any forward pass; ``empty="zero"`` scores it as what it is, the removal of nothing: area 0,
    ``after == control_after == before`` exactly, every change 0, ``top_region`` 0 and a ``region_change`` row of
    NaN (no region k exists). Never a NaN in the per-image numbers.
    """
    from ..regions import EmptyRegionsError, cam_regions

    if how not in ABLATIONS:
        raise UnknownNameError(how, ABLATIONS, "ablation (how=)")
    if empty not in EMPTY:
        raise UnknownNameError(empty, EMPTY, "empty-map policy (empty=)")
    images = np.asarray(images, np.float32)
    size = model.input_size
    size = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1:3] != size or len(images) == 0:
        raise InvalidArgumentError(f"images must be a non-empty (N, H, W, 3) batch of RGB in [0, 1] at the model's "
                                   f"input size {size}, got shape {images.shape}; resize them first")
    cams = np.asarray(cams)
    if cams.shape != images.shape[:3]:
        raise MapError(f"cams must be (N, H, W) = {images.shape[:3]} like the images, got shape {cams.shape}")
    classes = np.asarray(labels).reshape(-1)
    if classes.shape != (len(images),) or classes.dtype.kind not in "iu":
        raise InvalidArgumentError(f"labels must be {len(images)} integer class indices, got {classes.shape} "
                                   f"{classes.dtype}")
    if not np.all((classes >= 0) & (classes < model.num_classes)):
        raise InvalidArgumentError(f"labels must lie in 0..{model.num_classes - 1}, got {classes.tolist()}"[:300])
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
    key = as_key(key)
    n, h, w = cams.shape
    regions = []
    for i, (c, im) in enumerate(zip(cams, images)):
        try:
            regions.append(cam_regions(c, threshold=threshold, top=top, min_area=min_area, max_regions=max_regions,
                                       snap=snap, image=im, snap_options=snap_options))
        except EmptyRegionsError as exc:
            if empty == "error":
                raise EmptyRegionsError(f"image {i}: {exc}; or pass empty='zero' to score a map without regions "
                                        "as removing nothing (change 0)") from None
            regions.append(_no_regions(c, threshold, top))
    regions = tuple(regions)
    union = np.stack([r.mask() for r in regions])
    widest = max_regions if max_regions is not None else max(1, max(rg.count for rg in regions))
    singles = np.stack([rg.masks(widest) for rg in regions])  # (N, R, H, W)
    areas = union.sum(axis=(1, 2))
    k_control, k_noise = jax.random.split(key)
    control = np.asarray(_control_masks(jax.random.split(k_control, n), jnp.asarray(areas), (h, w)))

    r = singles.shape[1]
    stack_images = np.concatenate([images, images, images, np.repeat(images, r, axis=0)])
    stack_masks = np.concatenate([np.zeros_like(union), union, control, singles.reshape(n * r, h, w)])
    keys = jax.random.split(k_noise, len(stack_images))
    probs = _probs_program(model.tapped.plain, tuple(model.mean), tuple(model.std), how,
                           int(min(batch_size, len(stack_images))), model.params, jnp.asarray(stack_images),
                           jnp.asarray(stack_masks), keys)
    before, after, ctrl, single = probs[:n], probs[n:2 * n], probs[2 * n:3 * n], probs[3 * n:].reshape(n, r, -1)
    cls = jnp.asarray(classes)
    explained, others = _changes(before, after, cls)
    c_explained, c_others = _changes(before, ctrl, cls)
    single_change = np.asarray(jnp.take_along_axis(single - before[:, None], cls[:, None, None], axis=-1)[..., 0])
    counts = np.array([rg.count for rg in regions])
    single_change = np.where(np.arange(r)[None] < counts[:, None], single_change, np.nan)
    before, after, ctrl = np.asarray(before), np.array(after), np.array(ctrl)
    explained, others, c_explained, c_others = (np.array(v) for v in (explained, others, c_explained, c_others))
    none = counts == 0  # empty="zero": nothing removed, so nothing changes (exactly, not up to batch-position noise)
    after[none], ctrl[none] = before[none], before[none]
    for v in (explained, others, c_explained, c_others):
        v[none] = 0.0
    top_region = np.zeros(n, np.int64)
    top_region[~none] = np.nanargmin(single_change[~none], axis=1) + 1
    return RegionAblation(classes=classes, area_fraction=areas / (h * w),
                          control_area_fraction=control.sum(axis=(1, 2)) / (h * w), before=before,
                          after=after, control_after=ctrl, explained_change=explained, others_change=others,
                          control_explained_change=c_explained, control_others_change=c_others,
                          region_change=single_change, top_region=top_region, regions=regions,
                          control_masks=control.astype(bool))


@partial(jax.jit, static_argnums=0)
def _ablate_batch(how, images, masks, keys):
    return jax.vmap(lambda im, m, k: ablate(im, m, how, k))(images, masks, keys)


def ablated_images(images, result: RegionAblation, key=0, how: str = "blur") -> tuple[np.ndarray, np.ndarray]:
    """``(cam_ablated, control_ablated)`` (N, H, W, 3): the pictures :func:`region_ablation` fed the model with
    every CAM region removed and with the random control removed, for a report. ``images``, ``key`` and ``how`` must
    be those of the call that made ``result`` (the noise substrate's keys are derived the same way)."""
    if how not in ABLATIONS:
        raise UnknownNameError(how, ABLATIONS, "ablation (how=)")
    images = np.asarray(images, np.float32)
    n, r = result.region_change.shape
    if images.shape[:3] != result.control_masks.shape:
        raise InvalidArgumentError(f"images must be the {result.control_masks.shape[0]} images of the result, "
                                   f"shape (N, H, W, 3) = {(*result.control_masks.shape, 3)}, got {images.shape}")
    _, k_noise = jax.random.split(as_key(key))
    keys = jax.random.split(k_noise, n * (3 + r))
    union = np.stack([rg.mask() for rg in result.regions])
    cam = np.asarray(_ablate_batch(how, jnp.asarray(images), jnp.asarray(union), keys[n:2 * n]))
    control = np.asarray(_ablate_batch(how, jnp.asarray(images), jnp.asarray(result.control_masks),
                                       keys[2 * n:3 * n]))
    return cam, control


def region_ablation_drop(model, x, cams, targets=None, *, empty: str = "zero", **options) -> jax.Array:
    """The explained class's probability drop ``p_c(x) - p_c(x')`` (N,) when the CAM's regions are ablated, for a
    preprocessed batch ``x`` (as the other model metrics take; un-normalised with the model's mean/std before the
    ablation). Higher: the map found what the model uses. ``cams`` at input or feature resolution (resized to the
    input); ``targets``: classes (None: the predicted ones); ``options``: those of :func:`region_ablation`
    (``key``, ``how``, ``threshold``, ...). A map without regions (a constant map, which highlights nothing) scores
    0 by default (``empty="zero"``: nothing removed, nothing lost; the lowest honest score, never a NaN), as the
    other metrics score such maps rather than stop a whole evaluation; ``empty="error"`` raises
    :class:`~jaxcam.regions.EmptyRegionsError` naming the image instead (the default of :func:`region_ablation`).
    ``jaxcam.evaluate(..., metrics=["region_ablation_drop"])`` runs it with the evaluation's key and
    ``metric_options={"region_ablation": {...}}``."""
    from .inputs import model_inputs

    x, cams, classes = model_inputs(model, x, cams, targets)
    if classes is None:
        classes = jnp.argmax(model.tapped.forward(model.params, x), axis=-1)
    sd, mu = (jnp.asarray(v, x.dtype).reshape(1, 1, 1, -1) for v in (model.std, model.mean))
    images = np.asarray(x * sd + mu)
    return jnp.asarray(-region_ablation(model, images, np.asarray(cams), np.asarray(classes), empty=empty,
                                        **options).explained_change)
