"""``from_function``: a plain JAX function ``fn(params, x) -> logits`` as a jaxcam model, tapped where its author
marked layers with ``jax.ad_checkpoint.checkpoint_name(h, "name")``, or a function that takes the tap itself,
``fn(params, x, tap)``.

Markers: ``fn`` is traced once per input shape (``jax.make_jaxpr``, cached on the function and the abstract
inputs, so a forward called again with the same shapes is not retraced) and its jaxpr is evaluated equation by
equation; each top-level ``name`` equation (what ``checkpoint_name`` leaves in the jaxpr) calls ``tap`` with the
marker's name and continues with what it returns. Every other equation is bound as it is, in the caller's trace,
so under ``jax.jit`` the compiled program is the same as ``fn``'s own (the work a replay makes dead is removed) and
``jax.vjp`` sees ordinary primitives. A marker inside a nested ``jax.jit``, ``lax.scan``, ``jax.checkpoint`` or a
control-flow branch cannot be cut from outside (its value lives in another trace); naming it is an error that says
where it sits. A marker name used several times gets one site per use, ``name#0``, ``name#1``.

FullGrad: markers named ``bias:<anything>`` placed on the output of each layer that adds a per-channel bias, with
``biases=`` a function ``params -> {marker: bias (C,)}``, become FullGrad's sites (never offered as layers).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.extend.core import Literal, jaxprs_in_params

from ..errors import InvalidArgumentError, UnknownLayerError
from ..tapped import Tapped, site_shapes
from .model import Model
from .sites import TokenSites, as_grids, check_logits, check_size, choose_sites, closed_form_sites, provisional, \
    select_output, through_tap, token_sites
from .tokens import as_pair, check_prefix

MARKER = "name"  # the primitive checkpoint_name binds
BIAS = "bias:"
_NESTED = {"jit": "a nested jax.jit", "pjit": "a nested jax.jit", "scan": "a lax.scan", "while": "a lax.while_loop",
           "cond": "a lax.cond / switch branch", "remat": "jax.checkpoint (remat)", "checkpoint": "jax.checkpoint",
           "remat2": "jax.checkpoint (remat)", "custom_jvp_call": "a jax.custom_jvp function",
           "custom_vjp_call": "a jax.custom_vjp function", "shard_map": "a shard_map"}


def _marker(eqn) -> str | None:
    return eqn.params.get("name") if eqn.primitive.name == MARKER else None


def _nested_markers(jaxpr) -> dict[str, str]:
    """``{marker: where}`` of every marker inside a sub-jaxpr of a top-level equation (scan, remat, jit, ...)."""
    found: dict[str, str] = {}

    def walk(sub, where):
        for eqn in sub.eqns:
            m = _marker(eqn)
            if m is not None:
                found.setdefault(m, where)
            for inner in jaxprs_in_params(eqn.params):
                walk(inner, where)

    for eqn in jaxpr.eqns:
        where = _NESTED.get(eqn.primitive.name, f"a nested '{eqn.primitive.name}' computation")
        for inner in jaxprs_in_params(eqn.params):
            walk(inner, where)
    return found


def _aval_key(leaf):
    a = leaf if isinstance(leaf, jax.ShapeDtypeStruct) else jax.typeof(leaf)
    return tuple(a.shape), jnp.dtype(a.dtype).name, bool(getattr(a, "weak_type", False))


@functools.lru_cache(maxsize=64)
def _traced(fn, in_tree, avals):
    """``(closed jaxpr, output tree)`` of ``fn`` on abstract inputs: cached, so each input shape is traced once."""
    structs = [jax.ShapeDtypeStruct(s, d, weak_type=w) for s, d, w in avals]

    def flat_fn(*flat):
        params, x = jax.tree.unflatten(in_tree, flat)
        return fn(params, x)

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*structs)
    return closed, jax.tree.structure(out_shape)


def trace(fn, params, x):
    """``fn``'s closed jaxpr and output tree for these inputs' shapes (from the cache when seen before)."""
    flat, in_tree = jax.tree.flatten((params, x))
    return _traced(fn, in_tree, tuple(_aval_key(leaf) for leaf in flat))


def _evaluate(jaxpr, consts, args, tap):
    """``jax.core.eval_jaxpr`` with each top-level marker's value passed through ``tap(name, value)``."""
    env = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for v, val in zip(jaxpr.constvars, consts):
        env[v] = val
    for v, val in zip(jaxpr.invars, args):
        env[v] = val
    names = [m for m in map(_marker, jaxpr.eqns) if m is not None]
    uses: dict[str, int] = {}
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        m = _marker(eqn)
        if m is not None:
            call = uses[m] = uses.get(m, -1) + 1
            invals = [tap(provisional(m, call) if names.count(m) > 1 else m, invals[0])]
        params = eqn.primitive.get_bind_params(eqn.params)
        manager = getattr(getattr(eqn, "ctx", None), "manager", None) or contextlib.nullcontext()
        with manager:
            out = eqn.primitive.bind(*invals, **params)
        for v, val in zip(eqn.outvars, out if eqn.primitive.multiple_results else [out]):
            env[v] = val
    return [read(v) for v in jaxpr.outvars]


@dataclass(frozen=True)
class MarkedApply(TokenSites):
    """The tapped forward of ``fn(params, x)`` cut at its ``checkpoint_name`` markers. ``tokens``: ``(marker,
    prefix)`` of the markers on ViT token sequences, seen as their ``patch`` grids."""

    fn: Callable
    output: object = None
    tokens: tuple = ()
    patch: tuple | None = None

    def __call__(self, params, x, tap):
        closed, out_tree = trace(self.fn, params, x)
        prefixes = dict(self.tokens)

        def marker(name, value):
            if name in prefixes and value.ndim == 3:
                return through_tap(tap, name, value, prefixes[name], self.patch, tuple(x.shape[1:3]))
            return tap(name, value)

        outs = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves((params, x)), marker)
        return select_output(jax.tree.unflatten(out_tree, outs), self.output)


@dataclass(frozen=True)
class DirectApply:
    """The tapped forward of a function that takes the tap itself (``keyword``: passed as ``tap=``)."""

    fn: Callable
    output: object = None
    keyword: bool = False

    def __call__(self, params, x, tap):
        out = self.fn(params, x, tap=tap) if self.keyword else self.fn(params, x, tap)
        return select_output(out, self.output)


def _takes_tap(fn) -> tuple[bool, bool]:
    """``(takes a tap, by keyword)``: a parameter named ``tap``, or a third positional parameter."""
    try:
        ps = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False, False
    positional = [p for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 3 and positional[2].default is inspect.Parameter.empty:
        return True, False
    return any(p.name == "tap" for p in ps), True


def from_function(fn: Callable, params, *, layers=None, default_layer: str | None = None, output=None,
                  biases: Callable | None = None, input_size: int = 224, mean=(0.0, 0.0, 0.0),
                  std=(1.0, 1.0, 1.0), class_names=None, name: str | None = None, patch_size=None,
                  prefix_tokens: int | None = None) -> Model:
    """A plain JAX classifier ``fn(params, x) -> logits`` as a jaxcam model.

    Mark each layer a CAM may look at in ``fn``'s own code, on a channels-last map ``h`` of shape (N, h, w, K)::

        from jax.ad_checkpoint import checkpoint_name
        h = checkpoint_name(block(h), "block3")

    (``checkpoint_name`` is the identity: the function computes exactly what it did). Or write ``fn(params, x,
    tap)`` and call ``h = tap("block3", h)`` at each layer. ``fn`` must be hashable and stay the same object
    (a module-level function, not a lambda made anew per call): compiled programs are cached on it.

    Args:
      fn: ``fn(params, x)`` with markers, or ``fn(params, x, tap)``; ``x`` the preprocessed NHWC batch.
      params: ``fn``'s parameters (any pytree of arrays); they stay traced arguments.
      layers: the markers offered as ``layer=`` (default: every top-level marker on a feature map).
      default_layer: the layer explained when none is given (default: the last feature map with more than one
        position).
      output: how to read the logits from a non-array output (an index, a key, an attribute name or a function).
      biases: for FullGrad, ``params -> {"bias:...": (C,)}`` for the ``bias:...`` markers (hashable).
      input_size, mean, std, class_names, name: preprocessing, class names and the model's name.
      patch_size, prefix_tokens: for a Vision Transformer, a marker on tokens ``(N, prefix + h*w, C)`` is a layer
        seen as its patch grid (``h = input_size // patch_size``; the prefix inferred from the count unless given).
    """
    if not callable(fn):
        raise InvalidArgumentError(f"from_function takes a function fn(params, x) -> logits, got "
                                   f"{type(fn).__name__}")
    label = name or getattr(fn, "__name__", type(fn).__name__)
    patch, prefix = (None if patch_size is None else as_pair(patch_size)), check_prefix(prefix_tokens)
    size = check_size(input_size)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    takes_tap, keyword = _takes_tap(fn)
    if takes_tap:
        apply = DirectApply(fn, output, keyword)
    else:
        apply = MarkedApply(fn, output)
        closed, _ = trace(fn, params, x)
        top = [m for m in map(_marker, closed.jaxpr.eqns) if m is not None]
        nested = _nested_markers(closed.jaxpr)
        for ly in (list(layers or ()) + [default_layer]):
            base = ly.rsplit("#", 1)[0] if isinstance(ly, str) else None
            if base in nested and base not in top:
                raise UnknownLayerError(ly, top, f"{label}: marker {base!r} sits inside {nested[base]}, whose values "
                                        "live in another trace and cannot be cut from outside; move the "
                                        "checkpoint_name marker out of it, or take a tap argument")
        if not top:
            where = "; ".join(f"{m!r} inside {w}" for m, w in nested.items())
            raise InvalidArgumentError(f"{label} has no checkpoint_name marker at its top level and takes no tap "
                                       "argument, so jaxcam cannot find a layer: mark one in fn with "
                                       "h = jax.ad_checkpoint.checkpoint_name(h, 'features') (on an (N, h, w, K) "
                                       "map), or write fn(params, x, tap) calling h = tap('features', h)"
                                       + (f" (markers found only inside nested computations: {where})"
                                          if where else ""))
    check_logits(jax.eval_shape(lambda p, v: apply(p, v, lambda s, a: a), params, x), 2, label, output)
    seen = site_shapes(apply, params, x)
    bias_sites = tuple(s for s in seen if s.startswith(BIAS))
    if bias_sites and biases is None:
        raise InvalidArgumentError(f"{label} marks FullGrad bias sites ({', '.join(bias_sites)}) but biases= is "
                                   "missing: pass a function params -> {site: effective bias (C,)}")
    if biases is not None and not bias_sites:
        raise InvalidArgumentError(f"biases= was given but {label} marks no 'bias:...' site: mark the output of each "
                                   "bias-carrying layer with checkpoint_name(h, 'bias:<i>') (or tap('bias:<i>', h))")
    found = {k: v for k, v in seen.items() if not k.startswith(BIAS)}
    tokens = token_sites(found, size, patch, prefix) if isinstance(apply, MarkedApply) else {}
    grids = as_grids(found, tokens, size, patch)
    sites, default = choose_sites(grids, tuple(found), 2, layers, default_layer, label)
    if tokens:
        apply = MarkedApply(fn, output, tuple((s, tokens[s]) for s in sites if s in tokens), patch)
    tapped = Tapped(apply, sites, default, gap_fc_sites=closed_form_sites(apply, params, size, sites),
                    bias_sites=bias_sites, biases=biases)
    return Model.from_tapped(tapped, params, name=label, input_size=size, mean=mean, std=std,
                             class_names=class_names, source="function")


__all__ = ["DirectApply", "MarkedApply", "from_function", "trace"]
