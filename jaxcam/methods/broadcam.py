"""BroadCAM (Lin, Han, Xu, Liang, Wong, Chen, Liu & Han, "BroadCAM: Outcome-agnostic Class Activation Mapping for
Small-scale Weakly Supervised Applications", arXiv 2309.03509, 2023).

Outcome-agnostic: the channel weights come neither from the network's classifier nor from its scores or gradients
(unreliable when a model was trained on little data) but from a broad learning system (BLS) fitted in closed form
on the layer's pooled features of a set of images and their labels. Two steps:

1. :func:`fit_broadcam` (once per model, layer and image set). For N images, pooled features
   ``f_n = mean_ij relu(A_n)_ij`` (K,), standardised ``z = (f - mu) / sigma``; labels Y (N, C), one-hot or
   multi-hot (the model's predicted classes when none are given).
   - feature nodes: ``P = R(Z, Y)`` (K, C), and ``V = P / sigma`` in feature units;
   - enhancement nodes: for each class c, the features sorted by ``V_kc`` (largest first) are cut into groups of
     ``group``; node (c, j) is ``sum_{k in group j} V_kc z_k``. Each class gets
     ``floor(min_c #{k: V_kc > 0} / group)`` nodes (none when a class has fewer positive weights than ``group``:
     the BLS is then the ridge alone);
   - output: ``W = R([Z, H], Y)``.
   ``R(X, Y)`` is ridge regression with an intercept whose penalty on each column is ``ridge`` times that column's
   centred sum of squares, which is scikit-learn's ``Ridge(alpha=ridge, normalize=True)`` used by the authors'
   code: ``R = (Xc^T Xc + ridge * diag(Xc^T Xc))^-1 Xc^T Yc``. Every node is linear in f, so the whole BLS is
   linear in f and folds back to one (K, C) matrix ``w = W_Z / sigma + diag(1 / sigma) Xi W_H`` (Xi: the
   nodes' (K, M) coefficients on z): the BroadCAM weights, returned as a hashable :class:`BroadCAMWeights`.
2. :func:`broadcam`, the method: ``L_c = sum_k w_kc relu(A_k)``, post-processed like every CAM.
   ``jaxcam.explain(model, x, "broadcam", layer=w.site, method_options={"broadcam": {"weights": w}})``.

Cost: the fit is one forward per fitting image up to the layer plus a (K + M)^2 solve on the host; each
explanation is 1F (no backward). The weights are a static option: a new fit compiles a new program, the same
weights (compared by content) reuse it.

Parity: the authors' code (github.com/linjiatai/BroadCAM, read, not run) builds the same BLS; it min-max scales
the enhancement nodes, which changes nothing here (the column-normalised ridge is invariant to each column's
affine scale), fits the classes two at a time (it drops the last class when C is odd; jaxcam fits all), may
concatenate two stages' features (jaxcam: one layer per fit; fit each layer you explain), and upsamples before
clamping negatives (jaxcam: ReLU, min-max, resize, as pytorch-grad-cam). Tests: closed-form ridge solutions, the
fold-back identity, and the limit of large ``ridge`` (per-feature correlation with the labels).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ClassIndexError, InvalidArgumentError
from ..tapped import capture
from .base import Context, Inputs


@dataclass(frozen=True)
class BroadCAMWeights:
    """Fitted BroadCAM weights (K channels x C classes) for the layer ``site``: hashable and compared by content,
    so they can be a static ``method_options`` value. ``array`` gives them as float32 numpy."""

    site: str
    shape: tuple[int, int]
    data: bytes

    @classmethod
    def from_array(cls, site: str, weights) -> BroadCAMWeights:
        w = np.ascontiguousarray(np.asarray(weights, np.float32))
        if w.ndim != 2 or not np.isfinite(w).all():
            raise InvalidArgumentError(f"BroadCAM weights must be a finite (channels, classes) matrix, got shape "
                                       f"{w.shape}")
        return cls(str(site), (int(w.shape[0]), int(w.shape[1])), w.tobytes())

    @property
    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, np.float32).reshape(self.shape)

    def __repr__(self):
        digest = hashlib.sha256(self.data).hexdigest()[:12]
        return (f"BroadCAMWeights(site={self.site!r}, channels={self.shape[0]}, classes={self.shape[1]}, "
                f"sha256={digest})")


class BLSFit(NamedTuple):
    """A fitted broad learning system on standardised features: ``coef`` (K, C) and ``intercept`` (C,) in the
    units of the raw pooled features (``f @ coef + intercept`` is the BLS output); ``nodes`` (K, M) the enhancement
    nodes' coefficients on z; ``mean``, ``scale`` the standardisation; ``output`` (K + M, C) the output ridge."""

    coef: np.ndarray
    intercept: np.ndarray
    nodes: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    output: np.ndarray


def normalised_ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """``(coef (D, C), intercept (C,))`` minimising ``||Yc - Xc coef||^2 + ridge * sum_j ||xc_j||^2 coef_j^2``
    (per-column penalty scaled by the column's centred sum of squares: scikit-learn's ``normalize=True``).
    A constant column gets coefficient 0."""
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - xm, y - ym
    gram = xc.T @ xc
    ss = np.diag(gram).copy()
    ss[ss <= 0] = 1.0
    coef = np.linalg.solve(gram + ridge * np.diag(ss), xc.T @ yc)
    return coef, ym - xm @ coef


def enhancement_nodes(v: np.ndarray, group: int) -> np.ndarray:
    """The (K, M) coefficients on z of the enhancement nodes, from the feature-node weights ``v`` (K, C) in feature
    units: per class, ``floor(min_c #{v_kc > 0} / group)`` nodes, node j summing ``v_kc z_k`` over the j-th group
    of ``group`` features ranked by ``v_kc``."""
    k, c = v.shape
    per_class = int(np.sum(v > 0, axis=0).min()) // group
    nodes = np.zeros((k, c * per_class))
    for cls in range(c):
        order = np.argsort(-v[:, cls], kind="stable")
        for j in range(per_class):
            rows = order[j * group:(j + 1) * group]
            nodes[rows, cls * per_class + j] = v[rows, cls]
    return nodes


def fit_bls(features, targets, ridge: float = 50.0, group: int = 256) -> BLSFit:
    """The BroadCAM broad learning system on pooled features (N, K) and targets (N, C), in float64 on the host.
    See the module docstring for the equations."""
    f = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64)
    mean = f.mean(axis=0)
    scale = f.std(axis=0)
    scale[scale == 0] = 1.0  # a constant feature stays 0 after centring (scikit-learn's StandardScaler)
    z = (f - mean) / scale
    p, _ = normalised_ridge(z, y, ridge)
    nodes = enhancement_nodes(p / scale[:, None], group)
    a = np.concatenate([z, z @ nodes], axis=1)
    out, intercept = normalised_ridge(a, y, ridge)
    k = f.shape[1]
    coef_z = out[:k] + nodes @ out[k:]           # the BLS output as a linear function of z
    coef = coef_z / scale[:, None]
    return BLSFit(coef, intercept - mean @ coef, nodes, mean, scale, out)


@functools.lru_cache(maxsize=32)
def _pooled_program(tapped, site: str):
    """Jitted ``(params, x) -> (pooled relu features (N, K), logits (N, C))`` at one site."""

    def run(params, x):
        cap = capture(tapped.apply, params, x, (site,))
        return jnp.mean(jax.nn.relu(cap.acts[site]), axis=(1, 2)), cap.logits

    return jax.jit(run)


def pooled_features(model, x, site: str, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(f (N, K), logits (N, C))`` of a preprocessed batch, ``batch_size`` images per forward (the last chunk is
    padded, so one program serves every chunk)."""
    program = _pooled_program(model.tapped, site)
    feats, logits = [], []
    n = x.shape[0]
    for start in range(0, n, batch_size):
        chunk = x[start:start + batch_size]
        m = chunk.shape[0]
        if m < batch_size and n > batch_size:
            chunk = jnp.concatenate([chunk, jnp.zeros((batch_size - m, *chunk.shape[1:]), chunk.dtype)])
        f, lg = program(model.params, chunk)
        feats.append(np.asarray(f)[:m])
        logits.append(np.asarray(lg)[:m])
    return np.concatenate(feats), np.concatenate(logits)


def _targets(labels, logits: np.ndarray, num_classes: int) -> np.ndarray:
    n = logits.shape[0]
    if labels is None:
        return np.eye(num_classes)[np.argmax(logits, axis=-1)]
    y = np.asarray(labels)
    if y.ndim == 1 and y.shape[0] == n and np.issubdtype(y.dtype, np.integer):
        if y.min() < 0 or y.max() >= num_classes:
            raise ClassIndexError(f"fit_broadcam: labels must be class indices in [0, {num_classes - 1}], got "
                                  f"values from {int(y.min())} to {int(y.max())}")
        return np.eye(num_classes)[y]
    if y.shape == (n, num_classes) and (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        y = y.astype(np.float64)
        if not np.isfinite(y).all():
            raise InvalidArgumentError("fit_broadcam: labels hold NaN or infinite values")
        return y
    raise InvalidArgumentError(f"fit_broadcam: labels must be None (the model's predictions), {n} integer class "
                               f"indices, or a ({n}, {num_classes}) one-hot / multi-hot matrix; got "
                               f"{getattr(y, 'dtype', type(labels).__name__)} of shape {y.shape}")


def fit_broadcam(model, images, labels=None, layer=None, *, ridge: float = 50.0, group: int = 256,
                 preprocessed: bool = False, batch_size: int = 32) -> BroadCAMWeights:
    """Fit BroadCAM's broad learning system on ``images`` at ``layer`` and return its channel weights.

    Args:
      model: a :class:`jaxcam.Model` (built-in or from any adapter).
      images: the fitting set, anything :func:`jaxcam.preprocess` accepts (or, ``preprocessed=True``, a model-input
        batch). At least two images; the paper's setting is a small labelled training set.
      labels: ground-truth classes (N,) ints, or an (N, C) one-hot / multi-hot matrix; None: the model's predicted
        classes (then the weights are no longer independent of the model's outcome, only of its classifier).
      layer: the layer (name, alias, index or None for the default) whose features are pooled and explained.
      ridge: the ridge strength relative to each column's scale (the authors' ``alpha``; their demo uses 50).
      group: features per enhancement node (the authors' ``step``, 256).
      batch_size: images per forward while pooling features.

    Returns: :class:`BroadCAMWeights` for ``method_options={"broadcam": {"weights": ...}}``. A class absent from
    the labels gets zero weights (its maps are blank)."""
    if not isinstance(ridge, (int, float, np.integer, np.floating)) or isinstance(ridge, bool) \
            or not 0 < float(ridge) < float("inf"):
        raise InvalidArgumentError(f"fit_broadcam: ridge must be a finite number > 0, got {ridge!r}")
    for name, value in (("group", group), ("batch_size", batch_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise InvalidArgumentError(f"fit_broadcam: {name} must be a positive int, got {value!r}")
    site = model.layer_site(layer)
    x = model.check_input(images if preprocessed else model.preprocess(images))
    if x.shape[0] < 2:
        raise InvalidArgumentError(f"fit_broadcam needs at least 2 images to fit its ridge regressions, got "
                                   f"{x.shape[0]}")
    feats, logits = pooled_features(model, x, site, int(batch_size))
    y = _targets(labels, logits, model.num_classes)
    return BroadCAMWeights.from_array(site, fit_bls(feats, y, float(ridge), int(group)).coef)


def broadcam(inp: Inputs, ctx: Context, weights: BroadCAMWeights | None = None) -> jax.Array:
    """BroadCAM (the registered method): ``relu(A) * w[:, c]``, whose channel sum is ``L_c = sum_k w_kc
    relu(A_k)`` with ``w`` from :func:`fit_broadcam` (passed as ``method_options={"broadcam": {"weights": w}}``).
    1F, no gradients."""
    if weights is None:
        raise InvalidArgumentError("broadcam needs fitted weights: w = jaxcam.fit_broadcam(model, images, labels, "
                                   "layer=...); then explain(..., method='broadcam', layer=w.site, "
                                   "method_options={'broadcam': {'weights': w}})")
    if not isinstance(weights, BroadCAMWeights):
        raise InvalidArgumentError(f"broadcam weights must come from jaxcam.fit_broadcam (a BroadCAMWeights), got "
                                   f"{type(weights).__name__}")
    k, c = inp.acts.shape[-1], inp.logits.shape[-1]
    if weights.shape != (k, c):
        raise InvalidArgumentError(f"broadcam weights fitted at layer {weights.site!r} are {weights.shape[0]} "
                                   f"channels x {weights.shape[1]} classes, but the layer explained has {k} channels "
                                   f"and the model {c} classes; explain layer={weights.site!r} or fit this layer")
    w = jnp.take(jnp.asarray(weights.array), inp.cls, axis=1)
    return jax.nn.relu(inp.acts) * w[None, None, :]
