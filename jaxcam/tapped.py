"""The tapped forward: how every model reaches the CAM driver, whatever framework it is written in.

A model is explained through one pure function ``apply(params, x, tap) -> output``. At each named *site* (a layer
a CAM can look at, or a bias-carrying layer FullGrad reads) it calls ``tap(site, a)`` on the site's activation and
continues with what the tap returns. Every need of the methods follows from that one hook:

- capture: the tap records ``a``;
- gradients: the tap returns ``a + delta`` and ``jax.vjp`` is taken with respect to ``delta`` only, so the backward
  runs from the output down to the site and no parameter gradient is computed;
- replay (head-only passes: Ablation-CAM, Recipro-CAM): the tap returns a replacement; under ``jax.jit`` XLA drops
  the work before the site that the replacement makes dead, and a site inside a residual block stays correct
  because the skip path is still computed from the real input;
- FullGrad: the same mechanism at every bias site at once.

``tap`` must be called in ``apply``'s own trace (not inside a nested ``jax.jit``, ``jax.checkpoint`` or
``lax.scan``), with activations laid out ``(N, h, w, K)`` (adapters map token sequences to grids first), and the
model must run in evaluation mode. :class:`Tapped` is the hashable description of such a model; adapters
(:mod:`jaxcam.models.adapters` and :mod:`jaxcam.models.builtin`) build it. This module imports jax only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .errors import LayerNotCalledError

Tap = Callable[[str, jax.Array], jax.Array]


def identity_tap(site: str, a: jax.Array) -> jax.Array:
    """The tap that changes nothing: ``apply(params, x, identity_tap)`` is the plain forward."""
    return a


@dataclass(frozen=True)
class Tapped:
    """A model as a hashable tapped forward; its parameters are passed in (traced), never held.

    Attributes:
      apply: ``(params, x, tap) -> logits`` (N, C), with ``x`` the preprocessed batch (N, H, W, 3). Hashable (a
        module-level function, or a frozen dataclass with ``__call__``): it keys compiled programs.
      sites: the names ``layer=`` accepts, in forward order (the classifier output is not one of them).
      default_site: the layer explained when none is given.
      aliases: ``((alias, site), ...)``: other names for sites (``layer4`` for ``layer4.1``).
      gap_fc_sites: sites followed directly by global average pooling and a linear classifier, where CAM's
        closed form holds (declared by the adapter, which knows the architecture).
      bias_sites: sites (in ``apply``'s tap calls, not offered as layers) after each layer that adds a per-channel
        bias, for FullGrad; ``biases(params) -> {site: (C,)}`` gives their effective biases as a traced function.
      attention_sites: sites where a Vision Transformer's attention probabilities (N, heads, T, T) are tapped, in
        block order (recorded, never changed): what AD-CAM diffuses a CAM with.
      map_sites: sites where the model computes its own class maps (N, h, w, C), one channel per class (recorded,
        never changed): what ``amecam`` reads from a model trained with exits (:mod:`jaxcam.train.ame`).
    """

    apply: Callable
    sites: tuple[str, ...]
    default_site: str
    aliases: tuple[tuple[str, str], ...] = ()
    gap_fc_sites: frozenset = field(default_factory=frozenset)
    bias_sites: tuple[str, ...] = ()
    biases: Callable | None = None
    attention_sites: tuple[str, ...] = ()
    map_sites: tuple[str, ...] = ()

    def forward(self, params, x) -> jax.Array:
        """The plain forward: logits of a preprocessed batch."""
        return self.apply(params, x, identity_tap)

    @property
    def plain(self) -> Forward:
        """The plain forward as a hashable ``(params, x) -> logits``, a static key for compiled metric programs."""
        return Forward(self.apply)

    def site(self, name: str) -> str:
        """``name`` resolved through the aliases (an unknown name is returned as it is; see ``Model.layer_index``)."""
        return dict(self.aliases).get(name, name)


@dataclass(frozen=True)
class Forward:
    """A tapped forward run with no tap, as a hashable function of ``(params, x)``."""

    apply: Callable

    def __call__(self, params, x):
        return self.apply(params, x, identity_tap)


class Capture(NamedTuple):
    """What one forward (and one batched backward) yields: logits (N, C), the explained classes (N,), the
    activations ``{site: (N, h, w, K)}`` and, per target score, the gradients ``{score: {site: (N, h, w, K)}}``."""

    logits: jax.Array
    classes: jax.Array
    acts: dict
    grads: dict


def _classes(logits, classes):
    return jnp.argmax(logits, axis=-1).astype(jnp.int32) if classes is None else classes


def site_shapes(apply: Callable, params, x, sites: Sequence[str] | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """``{site: shape}`` of the activations at ``sites`` (every site the forward taps, in call order, when None)
    for input ``x``. No compute: ``jax.eval_shape``."""
    wanted = None if sites is None else set(sites)
    order = []  # call order (eval_shape's dict output comes back with sorted keys)

    def run(p, v):
        seen = {}

        def tap(site, a):
            if wanted is None or site in wanted:
                if site not in seen:
                    order.append(site)
                seen[site] = a
            return a

        apply(p, v, tap)
        return seen

    shapes = jax.eval_shape(run, params, x)
    return {s: shapes[s] for s in order}


def capture(apply: Callable, params, x, sites: Sequence[str], scores: Sequence[Callable] = (),
            classes=None, record: Sequence[str] = ()) -> Capture:
    """One forward recording the activations at ``sites``; with ``scores`` (functions ``(logits (C,), cls) ->
    scalar``), one backward from the output to the earliest site, with respect to a zero delta added at each site
    (so no parameter gradients), vmapped over the distinct scores. ``classes`` None: each image's prediction.

    The gradient at a site is the total derivative of the score with respect to that site's activation, through
    every later layer (later sites included), which is what a per-layer CAM needs for multi-layer fusion.
    ``record``: more sites whose values are only recorded (in ``acts``; no delta, no gradient), such as attention
    probabilities."""
    sites = tuple(dict.fromkeys(sites))
    record = tuple(r for r in dict.fromkeys(record) if r not in sites)
    shapes = site_shapes(apply, params, x, None)
    missing = [s for s in (*sites, *record) if s not in shapes]
    if missing:
        raise LayerNotCalledError(missing[0], list(shapes), "this input: the forward never runs it (an unused "
                                  "submodule or a branch not taken); pick a layer the forward runs")

    def run(deltas):
        seen = {}

        def tap(site, a):
            if site in record:
                seen[site] = a
            if site not in deltas:
                return a
            a = a + deltas[site]
            seen[site] = a
            return a

        return apply(params, x, tap), seen

    zeros = {s: jnp.zeros(shapes[s].shape, shapes[s].dtype) for s in sites}
    if not scores:
        logits, acts = run(zeros)
        return Capture(logits, _classes(logits, classes), acts, {})
    logits, vjp_fn, acts = jax.vjp(run, zeros, has_aux=True)
    cls = _classes(logits, classes)
    cots = jnp.stack([jax.vmap(jax.grad(s))(logits, cls) for s in scores])  # (T, N, C)
    (per_site,) = jax.vmap(vjp_fn)(cots)                                   # {site: (T, N, h, w, K)}
    grads = {s: {site: per_site[site][t] for site in sites} for t, s in enumerate(scores)}
    return Capture(logits, cls, acts, grads)


def input_gradients(apply: Callable, params, x, sites: Sequence[str], score: Callable, classes=None):
    """``(logits, dS/dx, {site: dS/d(activation)})`` from one forward and one backward to the input: FullGrad's
    need, with ``sites`` its bias sites. ``score(logits (C,), cls)``; ``classes`` None: the predictions."""
    shapes = site_shapes(apply, params, x, sites)

    def run(v, deltas):
        return apply(params, v, lambda site, a: a + deltas[site] if site in deltas else a)

    zeros = {s: jnp.zeros(shapes[s].shape, shapes[s].dtype) for s in sites}
    logits, vjp_fn = jax.vjp(run, x, zeros)
    cls = _classes(logits, classes)
    gx, gsites = vjp_fn(jax.vmap(jax.grad(score))(logits, cls))
    return logits, gx, gsites


def replay(apply: Callable, params, x, site: str, a) -> jax.Array:
    """Logits with ``site``'s activation replaced by ``a`` (same shape as the site's, batch included). Under
    ``jax.jit`` XLA removes the work before the site that this makes dead (head-only passes)."""
    return apply(params, x, lambda s, v: a if s == site else v)


@dataclass(frozen=True)
class Replay:
    """``replay`` at one site as a hashable ``(params, x, a) -> logits``."""

    apply: Callable
    site: str

    def __call__(self, params, x, a):
        return replay(self.apply, params, x, self.site, a)


@dataclass(frozen=True)
class InDtype:
    """``apply`` run with its parameters and input in ``dtype`` (bfloat16 on accelerators), while every tap sees
    and returns float32 activations and the logits come back in float32: CAM arithmetic stays float32."""

    apply: Callable
    dtype: str

    def __call__(self, params, x, tap):
        dt = jnp.dtype(self.dtype)
        low = jax.tree.map(lambda a: a.astype(dt) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
        out = self.apply(low, x.astype(dt), lambda s, a: tap(s, a.astype(jnp.float32)).astype(dt))
        return jax.tree.map(lambda a: a.astype(jnp.float32), out)


__all__ = ["Capture", "Forward", "InDtype", "Replay", "Tap", "Tapped", "capture", "identity_tap", "input_gradients",
           "replay", "site_shapes"]
