"""AME-CAM: a classifier with an exit on every stage and an attention network that aggregates the exits' maps.

Chen, Hu, Shi & Ho, "AME-CAM: Attentive Multiple-Exit CAM for Weakly Supervised Segmentation on MRI Brain Tumor",
MICCAI 2023 (arXiv 2306.14505; code windstormer/AME-CAM; spec: methods.md section 10). The paper's network is a
binary ResNet whose exits are 1x1 convolutions to one channel. Here the benchmark has C classes, so [ours]:

- exit ``i`` is a 1x1 convolution of stage ``i`` to C channels, the class maps ``m_i`` (N, h_i, w_i, C), and its
  logits are ``GAP(m_i)`` (the paper's one-channel exit, once per class);
- the model's logits are the last exit's, ``GAP(m_E)`` (as the paper predicts with its last exit; a 1x1
  convolution followed by GAP is a linear head on GAP, so Grad-CAM at the last stage is CAM there);
- the aggregation runs on the maps of one class at a time; the module computes it for every class, giving the
  per-class final maps (N, H, W, C), and ``amecam`` reads the explained class's channel.

Per class ``c`` (``U``: bilinear resize to the input, ``N``: min-max over the image, ``g``: the gray input image in
[0, 1], the paper's ``ToTensor`` image, so [ours] the model input is de-normalised first)::

    a(p)   = softmax_i( agg( g * N(U(m_1^c)), ..., g * N(U(m_E^c)) ) )        per-pixel exit weights, sum_i a_i = 1
    M_agg  = sum_i a_i * U(m_i^c)                                              the aggregated map (raw exit maps)
    final  = N( mean(U(m_1^c), ..., U(m_E^c), M'_agg) ),  then 1 - final if the polarity flag ``invert`` says so

with ``M'_agg = M_agg``, or ``1 - M_agg`` if the flag ``invert_agg`` says so ([ours], see Polarity).

``agg`` is 3 x [3x3 conv 32 + norm + ReLU] then a 3x3 conv to E. [ours] the norm is InstanceNorm (the paper's
aggregator uses BatchNorm, its encoder InstanceNorm): ``jaxcam.train.fit`` trains in evaluation mode, where a
BatchNorm would never update its statistics, and a per-image norm keeps each map independent of the batch. [ours]
the paper's last conv carries BatchNorm + ReLU before the softmax; here it is a plain conv plus a learned per-exit
prior (a parameter, not a conv bias, so FullGrad's bias sites stay those of the classifier).

Polarity. The contrastive loss below does not say which side is the object: it treats ``M_agg`` and ``1 - M_agg``
alike (one is the foreground mask, the other the background's), and the paper's code inverts its final map
(``1 - map``). The spec says to decide on validation data: keep the orientation of the final map whose Dice at 0.5
against the masks is higher (``invert``). The paper's code also shows each exit's map inverted, which suggests
its exits mark the object low like its final map: one orientation throughout. Here [ours] the exits are
class-evidence maps trained with cross-entropy, high on the class's evidence, while ``M_agg``'s side is still
free, so averaging them can cancel the object out: :func:`decide_polarity` therefore decides both flags on
validation Dice (the spec's rule is ``invert_agg=False``, ``agg=False`` there), and stores them in the variables
(collection ``ame_state``), so the decision travels with the model and its checkpoint, and the forward stays one
compiled program.

Training (three phases in the paper):

1. SimCLR pre-training of the encoder: [ours] not done. The benchmark's 4096 labelled images train the backbone
   from scratch in phase 2 within the CPU budget; SimCLR would need a strong-augmentation pipeline and several
   times more steps, and it changes the backbone that both AME-CAM and the single-exit Grad-CAM it is compared with
   read, not the comparison.
2. :func:`train_exits`: ``L = sum_i w_i CE(GAP(m_i), y)``, ``w = (0.25, 0.5, 0.75, 1.0)`` for four exits, [ours]
   ``w_i = i / E`` for E exits (the same ramp), backbone and exits trained, the aggregator frozen.
3. :func:`train_aggregator`: the exits frozen, the aggregator trained with ``SimMax(fg) + SimMin(fg, bg) +
   SimMax(bg)`` on ``fg = g * M_agg``, ``bg = g * (1 - M_agg)`` of the labelled class ([ours]: the label picks
   the class; the paper has one).

Both losses read the exits and ``M_agg`` through the tapped forward (:func:`~jaxcam.train.losses.tap_values` at
the sites ``exit<i>`` and ``ame.agg``): the same forward that :func:`jaxcam.explain` runs. Those sites, and the
final map ``ame``, are not offered as ``layer=`` (the logits do not depend on exits 1..E-1 or on the aggregator,
so a gradient CAM there would be zero): ``ame`` is the model's map site (``Tapped.map_sites``), recorded, never
changed; under ``jax.jit`` a forward that does not record it drops the aggregator as dead code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import CheckpointError, InvalidArgumentError
from ..keys import init_key
from ..models.reference_cnn import ConvStage
from ..tapped import site_shapes
from .losses import accuracy, cross_entropy, tap_values

PAPER_EXIT_WEIGHTS = (0.25, 0.5, 0.75, 1.0)
STATE = "ame_state"           # the variable collection holding the polarity decision
MAP_SITE, AGG_SITE = "ame", "ame.agg"
SIM_CLAMP = (5e-4, 0.9995)    # the code's clamp of the cosine similarity
FORMAT = "jaxcam-ame"
EPS = 1e-5                    # the code's min-max epsilon


def exit_weights(num_exits: int) -> tuple[float, ...]:
    """The multi-exit loss weights: the paper's ``(0.25, 0.5, 0.75, 1.0)`` for 4 exits, ``i / E`` for E (same ramp)."""
    if not isinstance(num_exits, int) or isinstance(num_exits, bool) or num_exits < 1:
        raise InvalidArgumentError(f"num_exits must be a positive int, got {num_exits!r}")
    return tuple((i + 1) / num_exits for i in range(num_exits))


def minmax(a: jax.Array, axes=(1, 2)) -> jax.Array:
    """``(a - min + eps) / (max - min + eps)`` over ``axes`` (the code's normalisation, eps = 1e-5)."""
    lo, hi = jnp.min(a, axis=axes, keepdims=True), jnp.max(a, axis=axes, keepdims=True)
    return (a - lo + EPS) / (hi - lo + EPS)


class WeightedSum(nn.Module):
    """``M_agg = sum_i a_i * U(m_i)``: a parameterless module so the aggregated map is a tapped site (``ame.agg``)."""

    @nn.compact
    def __call__(self, weights, maps):  # (N, H, W, C, E) each -> (N, H, W, C)
        return jnp.sum(weights * maps, axis=-1)


class Aggregator(nn.Module):
    """The attention aggregation network and AME-CAM's final per-class maps (module docstring).

    ``x``: the model input (N, H, W, 3), normalised with ``mean``/``std``; ``maps``: the exits' class maps
    ``(N, h_i, w_i, C)``. Returns the final maps (N, H, W, C) in [0, 1]."""

    features: int = 32
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)

    @nn.compact
    def __call__(self, x, maps):
        n, h, w, _ = x.shape
        c, e = maps[0].shape[-1], len(maps)
        up = jnp.stack([jax.image.resize(m, (n, h, w, c), "bilinear") for m in maps], axis=-1)  # (N, H, W, C, E)
        image = x * jnp.asarray(self.std, x.dtype).reshape(1, 1, 1, 3) + jnp.asarray(self.mean, x.dtype).reshape(
            1, 1, 1, 3)
        gray = jnp.mean(image, axis=-1)[..., None, None]                                          # (N, H, W, 1, 1)
        inp = gray * minmax(up)
        z = jnp.moveaxis(inp, 3, 1).reshape(n * c, h, w, e)  # one image per (example, class)
        for i in range(3):
            z = nn.Conv(self.features, (3, 3), use_bias=False, name=f"conv{i + 1}")(z)
            z = nn.relu(nn.InstanceNorm(name=f"norm{i + 1}")(z))
        z = nn.Conv(e, (3, 3), use_bias=False, name="conv4")(z)
        z = z + self.param("exit_prior", nn.initializers.zeros, (e,)).reshape(1, 1, 1, e)
        a = jnp.moveaxis(jax.nn.softmax(z, axis=-1).reshape(n, c, h, w, e), 1, 3)                # (N, H, W, C, E)
        agg = WeightedSum(name="agg")(a, up)
        flip_agg = self.variable(STATE, "invert_agg", lambda: jnp.zeros((), jnp.float32)).value
        agg = flip_agg * (1.0 - agg) + (1.0 - flip_agg) * agg
        final = minmax((jnp.sum(up, axis=-1) + agg) / (e + 1))
        invert = self.variable(STATE, "invert", lambda: jnp.zeros((), jnp.float32)).value
        return invert * (1.0 - final) + (1.0 - invert) * final


class MultiExitCNN(nn.Module):
    """The reference CNN's stages (``stage1`` .. ``stageE``, :class:`~jaxcam.models.reference_cnn.ConvStage`), an
    exit ``exit<i>`` (1x1 conv to C class maps) on each, logits ``GAP(m_E)``, and the aggregator ``ame``."""

    num_classes: int = 4
    widths: Sequence[int] = (16, 32, 64)
    features: int = 32
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)

    @nn.compact
    def __call__(self, x):
        maps, h = [], x
        for i, width in enumerate(self.widths):
            h = ConvStage(width, name=f"stage{i + 1}")(h)
            maps.append(nn.Conv(self.num_classes, (1, 1), name=f"exit{i + 1}")(h))
        Aggregator(self.features, tuple(self.mean), tuple(self.std), name=MAP_SITE)(x, tuple(maps))
        return jnp.mean(maps[-1], axis=(1, 2))


def exit_names(num_exits: int) -> tuple[str, ...]:
    return tuple(f"exit{i + 1}" for i in range(num_exits))


def ame_model(key=0, *, num_classes: int = 4, size: int = 48, widths: Sequence[int] = (16, 32, 64),
              features: int = 32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), variables=None, class_names=None,
              name: str = "ame-cnn"):
    """A :class:`jaxcam.Model` of :class:`MultiExitCNN` (freshly initialised from ``key``, or holding
    ``variables``): layers ``stage1`` .. ``stageE`` (default the last) and ``exitE``; map site ``ame`` (what
    ``method="amecam"`` reads). ``class_names`` default: the synthetic benchmark's."""
    from ..models.linen import from_linen
    from ..models.model import Model
    from ..synthetic import SYNTHETIC_CLASSES

    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1:
        raise InvalidArgumentError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
    if not isinstance(features, int) or features < 1:
        raise InvalidArgumentError(f"features must be a positive int (the aggregator's width), got {features!r}")
    module = MultiExitCNN(int(num_classes), widths, features, tuple(mean), tuple(std))
    if variables is None:
        variables = jax.jit(module.init)(init_key(key), jnp.zeros((1, size, size, 3), jnp.float32))
    variables = jax.tree.map(jnp.asarray, dict(variables))
    if class_names is None and num_classes <= len(SYNTHETIC_CLASSES):
        class_names = SYNTHETIC_CLASSES[:num_classes]
    e = len(widths)
    stages = tuple(f"stage{i + 1}" for i in range(e))
    exits = exit_names(e)
    m = from_linen(module, variables, layers=[*stages, *exits, AGG_SITE, MAP_SITE], default_layer=stages[-1],
                   input_size=size, mean=mean, std=std, name=name, source="jaxcam.train.ame")
    offered = (*stages, exits[-1])
    tapped = dataclasses.replace(m.tapped, sites=offered, map_sites=(MAP_SITE,),
                                 gap_fc_sites=frozenset(m.tapped.gap_fc_sites) & frozenset(offered))
    return Model.from_tapped(tapped, variables, name=name, input_size=size, mean=mean, std=std,
                             class_names=class_names, source="jaxcam.train.ame")


def ame_module(model) -> MultiExitCNN:
    """The :class:`MultiExitCNN` behind a model built by :func:`ame_model` (InvalidArgumentError for another)."""
    module = getattr(getattr(getattr(model.tapped, "apply", None), "module", None), "obj", None)
    if not isinstance(module, MultiExitCNN):
        raise InvalidArgumentError(f"model {getattr(model, 'name', model)!r} is not an AME-CAM model; build one with "
                                   "jaxcam.train.ame.ame_model")
    return module


# ---------------------------------------------------------------------------------------------------- losses


def exit_sites(apply, params, x) -> tuple[str, ...]:
    """The exit sites the forward taps (``exit1`` .. ``exitE``, in order), found from shapes only."""
    names = [s for s in site_shapes(apply, params, x) if re.fullmatch(r"exit\d+", s)]
    if not names:
        raise InvalidArgumentError("the model has no exit sites (exit1 .. exitE): the AME-CAM losses need a model "
                                   "built by jaxcam.train.ame.ame_model")
    return tuple(sorted(names, key=lambda s: int(s[4:])))


def multi_exit_loss(params, batch, key, ctx, weights=None):
    """``sum_i w_i CE(GAP(m_i), y)`` over the exits (AME-CAM phase 2; ``weights`` default :func:`exit_weights`).

    aux: ``accuracy`` (the model's logits, the last exit's) and ``exit<i>_accuracy``."""
    del key
    x, y = batch["image"], batch["label"]
    names = exit_sites(ctx.apply, params, x)
    w = exit_weights(len(names)) if weights is None else tuple(float(v) for v in weights)
    if len(w) != len(names):
        raise InvalidArgumentError(f"weights has {len(w)} values for a model with {len(names)} exits; pass one each")
    logits, maps = tap_values(ctx.apply, params, x, names)
    loss, aux = 0.0, {"accuracy": accuracy(logits, y)}
    for wi, s in zip(w, names):
        exit_logits = jnp.mean(maps[s], axis=(1, 2))
        loss = loss + wi * cross_entropy(exit_logits, y)
        aux[f"{s}_accuracy"] = accuracy(exit_logits, y)
    return loss, aux


def cosine_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
    """(B, B) cosine similarities of the rows of ``a`` and ``b``, clamped to [5e-4, 0.9995] as the code does."""
    a = a / jnp.maximum(jnp.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / jnp.maximum(jnp.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return jnp.clip(a @ b.T, *SIM_CLAMP)


def sim_min(fg: jax.Array, bg: jax.Array) -> jax.Array:
    """SimMin: ``mean -log(1 - cos(bg_j, fg_k))`` over all pairs of the batch: pushes objects and backgrounds
    apart (maximum ``-log(5e-4)`` when they are the same, minimum ``-log(0.9995)`` when orthogonal)."""
    return jnp.mean(-jnp.log(1.0 - cosine_matrix(bg, fg)))


def sim_max(z: jax.Array, alpha: float = 0.25) -> jax.Array:
    """SimMax: ``mean -log(cos(z_j, z_k)) * exp(-alpha * (rank_jk - 1))``, ``rank_jk`` the place of ``k`` in row
    ``j`` sorted by decreasing similarity (0 = most similar, usually ``j`` itself): pulls same-kind embeddings
    together, the closest pairs weighted most."""
    sim = cosine_matrix(z, z)
    rank = jnp.argsort(jnp.argsort(-jax.lax.stop_gradient(sim), axis=1), axis=1)
    weights = jnp.exp(-alpha * (rank.astype(jnp.float32) - 1.0))
    return jnp.mean(jnp.maximum(-jnp.log(sim), 0.0) * weights)


def contrastive_terms(gray: jax.Array, agg: jax.Array, alpha: float = 0.25) -> dict:
    """The three terms of the aggregation loss for gray images (B, H, W) and aggregated maps (B, H, W)."""
    fg = (gray * agg).reshape(gray.shape[0], -1)
    bg = (gray * (1.0 - agg)).reshape(gray.shape[0], -1)
    return {"simmax_fg": sim_max(fg, alpha), "simmin": sim_min(fg, bg), "simmax_bg": sim_max(bg, alpha)}


def aggregation_loss(params, batch, key, ctx, alpha=0.25, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    """AME-CAM phase 3: ``SimMax(fg) + SimMin(fg, bg) + SimMax(bg)`` with ``fg = g * M_agg``, ``bg = g * (1 -
    M_agg)`` of the labelled class, ``g`` the gray image in [0, 1] (``mean``/``std`` undo the model's
    normalisation). Train only the aggregator (:func:`train_aggregator`). aux: accuracy and the three terms."""
    del key
    x, y = batch["image"], batch["label"]
    logits, seen = tap_values(ctx.apply, params, x, (AGG_SITE,))
    if AGG_SITE not in seen:
        raise InvalidArgumentError(f"the model taps no {AGG_SITE!r} site: the aggregation loss needs a model built by "
                                   "jaxcam.train.ame.ame_model")
    agg = jnp.take_along_axis(seen[AGG_SITE], y.astype(jnp.int32)[:, None, None, None], axis=-1)[..., 0]
    image = x * jnp.asarray(std, x.dtype).reshape(1, 1, 1, 3) + jnp.asarray(mean, x.dtype).reshape(1, 1, 1, 3)
    terms = contrastive_terms(jnp.mean(image, axis=-1), agg, alpha)
    return terms["simmax_fg"] + terms["simmin"] + terms["simmax_bg"], {"accuracy": accuracy(logits, y), **terms}


# ---------------------------------------------------------------------------------------------------- training


def _backbone_and_exits(path, leaf) -> bool:
    return path[:1] == ("params",) and path[1:2] != (MAP_SITE,)


def _aggregator(path, leaf) -> bool:
    return path[:2] == ("params", MAP_SITE)


def train_exits(model, data, *, steps: int = 800, weights=None, **fit_kwargs):
    """Phase 2: train the backbone and the exits with :func:`multi_exit_loss` (the aggregator frozen) through
    :func:`jaxcam.train.fit`; ``fit_kwargs`` go to it (batch_size, learning_rate, key, ...). Returns its
    TrainResult."""
    from .loop import fit

    ame_module(model)
    options = None if weights is None else {"weights": tuple(float(w) for w in weights)}
    return fit(model, data, steps=steps, loss="ame_exits", loss_options=options, trainable=_backbone_and_exits,
               **fit_kwargs)


def train_aggregator(model, data, *, steps: int = 300, alpha: float = 0.25, **fit_kwargs):
    """Phase 3: train the aggregator with :func:`aggregation_loss`, the backbone and exits frozen (bit-identical),
    through :func:`jaxcam.train.fit`. Returns its TrainResult."""
    from .loop import fit

    ame_module(model)
    options = {"alpha": float(alpha), "mean": tuple(model.mean), "std": tuple(model.std)}
    return fit(model, data, steps=steps, loss="ame_aggregation", loss_options=options, trainable=_aggregator,
               **fit_kwargs)


# ---------------------------------------------------------------------------------------------------- maps


def ame_maps(model, images, labels, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Every map AME-CAM has for the labelled class of ``images`` (N, S, S, 3) in [0, 1], at input size:
    ``exit<i>`` (``N(U(m_i))``), ``agg`` (``N(M_agg)``, as learned) and ``ame`` (the final map, polarity applied),
    (N, S, S).
    Read through the tapped forward in one jitted program per batch shape."""
    module = ame_module(model)
    names = exit_names(len(module.widths))
    labels = np.asarray(labels).reshape(-1)
    out = {k: [] for k in (*names, "agg", "ame")}
    for i in range(0, len(labels), batch_size):
        x = model.preprocess(np.asarray(images[i:i + batch_size], np.float32))
        got = _maps_jit(model.tapped.apply, names, model.params, x, jnp.asarray(labels[i:i + batch_size], jnp.int32))
        for k, v in got.items():
            out[k].append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in out.items()}


def _maps_program(apply, names, params, x, labels):
    _, seen = tap_values(apply, params, x, (*names, AGG_SITE, MAP_SITE))
    n, h, w, _ = x.shape

    def pick(a):
        return jnp.take_along_axis(a, labels[:, None, None, None], axis=-1)[..., 0]

    out = {s: minmax(jax.image.resize(pick(seen[s]), (n, h, w), "bilinear")) for s in names}
    out["agg"] = minmax(pick(seen[AGG_SITE]))
    out["ame"] = pick(seen[MAP_SITE])
    return out


_maps_jit = jax.jit(_maps_program, static_argnums=(0, 1))


def dice(maps, masks, threshold: float = 0.5) -> np.ndarray:
    """(N,) Dice of ``maps > threshold`` with the masks (the paper's segmentation score); 1 when both are empty."""
    pred = np.asarray(maps) > threshold
    gt = np.asarray(masks, bool)
    inter = np.sum(pred & gt, axis=(1, 2))
    total = np.sum(pred, axis=(1, 2)) + np.sum(gt, axis=(1, 2))
    return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)


def polarity(model) -> tuple[bool, bool]:
    """``(invert, invert_agg)``: whether the final map is ``1 - map`` and whether ``1 - M_agg`` enters it, as
    :func:`decide_polarity` decided."""
    state = model.params[STATE][MAP_SITE]
    return bool(np.asarray(state["invert"]) > 0.5), bool(np.asarray(state["invert_agg"]) > 0.5)


def with_polarity(model, invert: bool, invert_agg: bool = False):
    """The model with the polarity flags set (variables: no recompilation)."""
    params = dict(model.params)
    params[STATE] = {MAP_SITE: {"invert": jnp.asarray(float(bool(invert)), jnp.float32),
                                "invert_agg": jnp.asarray(float(bool(invert_agg)), jnp.float32)}}
    return model.with_params(params)


def decide_polarity(model, images, masks, labels, *, agg: bool = True, threshold: float = 0.5,
                    batch_size: int = 64):
    """The polarity rule on validation ``images`` with ``masks``: among the orientations, keep the one whose mean
    Dice at ``threshold`` (final map of the labelled class against the mask) is highest; a flip wins only when
    strictly better, the final map's flip (the spec's rule) before ``M_agg``'s. ``agg=False``: the spec's rule
    alone (the final map's orientation, ``M_agg`` as learned).

    Returns ``(model with the decision stored, {"dice": {(invert, invert_agg): Dice}, "invert": bool,
    "invert_agg": bool})``."""
    masks = np.asarray(masks, bool)
    if masks.shape != np.shape(images)[:3]:
        raise InvalidArgumentError(f"masks must be (N, S, S) for images {np.shape(images)}, got {masks.shape}")
    scores = {}
    for flip_agg in ((False, True) if agg else (False,)):
        final = ame_maps(with_polarity(model, False, flip_agg), images, labels, batch_size)["ame"]
        for invert in (False, True):
            scores[(invert, flip_agg)] = float(np.mean(dice(1.0 - final if invert else final, masks, threshold)))
    best = (False, False)
    for k in ((True, False), (False, True), (True, True)):
        if k in scores and scores[k] > scores[best]:
            best = k
    return with_polarity(model, *best), {"dice": scores, "invert": best[0], "invert_agg": best[1]}


# ---------------------------------------------------------------------------------------------------- save / load


def _config(model) -> dict:
    module = ame_module(model)
    return {"format": FORMAT, "version": 1, "name": model.name, "num_classes": module.num_classes,
            "widths": list(module.widths), "features": module.features, "input_size": model.input_size,
            "mean": list(model.mean), "std": list(model.std),
            "class_names": None if model.class_names is None else list(model.class_names)}


def _entries(variables) -> list[str]:
    return [f"{jax.tree_util.keystr(p)} {tuple(v.shape)} {np.dtype(v.dtype)}"
            for p, v in jax.tree_util.tree_flatten_with_path(variables)[0]]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_table(folder: Path) -> dict:
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def save_ame(model, path) -> Path:
    """Save an AME-CAM model (backbone, exits, aggregator and polarity: every variable) to the folder ``path``:
    ``variables/`` (orbax) and ``ame.json`` (the architecture, preprocessing, class names, the parameter tree and the
    sha256 of every file). Replaces an earlier save there; refuses a folder that is not one."""
    import orbax.checkpoint as ocp

    config = _config(model)
    folder = Path(os.fspath(path)).absolute()
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / "ame.json").is_file())):
        raise InvalidArgumentError(f"path {str(folder)!r} exists and is not an AME-CAM save; pass a new folder")
    if (folder / "variables").exists():
        shutil.rmtree(folder / "variables")
    folder.mkdir(parents=True, exist_ok=True)
    variables = jax.tree.map(np.asarray, model.params)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(folder / "variables", variables)
        ckpt.wait_until_finished()
    config["parameters"] = _entries(variables)
    config["files"] = _file_table(folder / "variables")
    (folder / "ame.json").write_text(json.dumps(config, indent=1))
    return folder


def load_ame(path):
    """The model :func:`save_ame` wrote to ``path``. CheckpointError (one line) when the folder or its
    ``ame.json`` is missing or unreadable, a file is missing or altered, or the saved tree is not this
    architecture's."""
    import orbax.checkpoint as ocp

    folder = Path(os.fspath(path)).absolute()
    meta = folder / "ame.json"
    where = f"AME-CAM checkpoint {str(folder)!r}"
    if not meta.is_file():
        raise CheckpointError(f"{where} has no ame.json; pass a folder written by jaxcam.train.ame.save_ame")
    try:
        config = json.loads(meta.read_text())
        if config.get("format") != FORMAT:
            raise CheckpointError(f"{where}: ame.json is not an AME-CAM description (format "
                                  f"{config.get('format')!r}, expected {FORMAT!r}); pass a folder written by save_ame")
        arch = dict(num_classes=int(config["num_classes"]), widths=tuple(int(w) for w in config["widths"]),
                    features=int(config["features"]), mean=tuple(config["mean"]), std=tuple(config["std"]))
        size, files, entries = int(config["input_size"]), dict(config["files"]), list(config["parameters"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{where}: ame.json is corrupt or not an AME-CAM description ({err!r}); save the "
                              "model again with save_ame") from None
    found = _file_table(folder / "variables") if (folder / "variables").is_dir() else {}
    for name, digest in files.items():
        if name not in found:
            raise CheckpointError(f"{where}: file variables/{name} is missing; save the model again with save_ame")
        if found[name] != digest:
            raise CheckpointError(f"{where}: file variables/{name} was altered or truncated (sha256 mismatch); save "
                                  "the model again with save_ame")
    module = MultiExitCNN(**arch)
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32)))
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), dict(abstract))
    if _entries(abstract) != entries:
        raise CheckpointError(f"{where}: the saved parameter tree does not match the architecture ame.json describes "
                              "(another model's variables); save the model again with save_ame")
    try:
        with ocp.StandardCheckpointer() as ckpt:
            variables = ckpt.restore(folder / "variables", abstract)
    except Exception as err:  # orbax/tensorstore raise many types for unreadable data
        raise CheckpointError(f"{where}: the variables cannot be read ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); save the model again") from None
    return ame_model(variables=variables, size=size, class_names=config.get("class_names"), name=config["name"],
                     **arch)


__all__ = ["AGG_SITE", "Aggregator", "MAP_SITE", "MultiExitCNN", "PAPER_EXIT_WEIGHTS", "aggregation_loss",
           "ame_maps", "ame_model", "ame_module", "contrastive_terms", "cosine_matrix", "decide_polarity", "dice",
           "exit_names", "exit_sites", "exit_weights", "load_ame", "minmax", "multi_exit_loss", "polarity",
           "save_ame", "sim_max", "sim_min", "train_aggregator", "train_exits", "with_polarity"]
