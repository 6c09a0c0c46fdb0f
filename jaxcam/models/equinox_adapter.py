"""``from_equinox``: an Equinox image classifier as a jaxcam :class:`~jaxcam.models.model.Model`.

Equinox models are immutable pytrees that run one example at a time, channels-first: ``model(x)`` with ``x`` of
shape (3, H, W). The tapped forward splits the model into its arrays (the parameters, traced) and the rest
(static), and per call recombines them, wraps each tapped submodule with ``eqx.tree_at`` in a layer that passes
its output through a tap, and runs ``jax.vmap`` of the model over the NHWC batch transposed to NCHW.

The tap must run on the whole batch in the forward's own trace, not per example inside ``vmap``. The wrapper
therefore binds a private primitive whose only rule is its batching rule: when ``vmap`` meets it, the rule runs in
the trace around ``vmap`` with the batched activation (N, K, h, w), transposes it to (N, h, w, K), calls the tap
and returns the result, transposed back, as the batched value ``vmap`` continues with. So one vmapped pass serves
capture, gradients (the delta is added outside ``vmap``) and replays (under jit XLA removes the work before the
site, as for any other model). A submodule inside the model's own ``vmap``, ``jit`` or ``scan`` cannot be tapped
this way; naming one is an error that says so.

Inference mode is switched on, on the adapter's own copy (``eqx.nn.inference_mode``; Equinox models are immutable,
so the caller's model is untouched): Dropout is off and BatchNorm uses its running statistics. A stateful model
(``eqx.nn.BatchNorm``, ``model(x, state) -> (logits, state)``) takes its ``state=`` (traced, with the arrays).

FullGrad: every ``eqx.nn.Conv2d`` with a bias is a bias site (``bias:<i>``, tree order), and so is every
``eqx.nn.BatchNorm`` of a stateful model (effective bias ``beta - mean * gamma / sqrt(var + eps)`` from the state).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import batching

from ..errors import InvalidArgumentError, MissingDependencyError
from ..tapped import Tapped
from .model import Model
from .sites import NESTED, TokenSites, as_grids, check_logits, check_size, choose_sites, closed_form_sites, discover, \
    here, is_grid, name_calls, provisional, repeated, select_output, through_tap, token_sites, vit_default
from .tokens import as_pair, check_prefix

AXIS = "jaxcam_examples"  # the vmap axis the adapter batches examples over
BIAS = "bias:"


def _equinox():
    try:
        import equinox as eqx
    except ImportError as e:
        raise MissingDependencyError("from_equinox needs Equinox: pip install 'jaxcam[equinox]' "
                                     "(equinox==0.13.8)") from e
    return eqx


# -- the tap primitive: only a batching rule -------------------------------------------------------------------------
tap_p = Primitive("jaxcam_equinox_tap")


def _outside_vmap(y, *, site, fn, token):
    raise InvalidArgumentError(f"layer {site!r} runs inside a jax.jit, lax.scan or jax.checkpoint within the Equinox "
                               "model, where its activation lives in another trace and cannot be tapped; pick a "
                               "layer outside it (jaxcam.layers(model) lists them)")


tap_p.def_impl(_outside_vmap)
tap_p.def_abstract_eval(_outside_vmap)


def _batched(axis_data, vals, dims, *, site, fn, token):
    """Run in the trace around the adapter's vmap: the whole batch's activation goes through the tap. A grid
    (N, K, h, w) is seen channels-last; tokens (N, T, C) as they are (``token`` None, discovery) or as their patch
    grid (``token`` = (prefix, patch, image size))."""
    (y,), (d,) = vals, dims
    if axis_data.name != AXIS:
        raise InvalidArgumentError(f"layer {site!r} runs inside a jax.vmap within the Equinox model, so its "
                                   "activation is not one per example; pick a layer outside it")
    y = jnp.broadcast_to(y, (axis_data.size, *y.shape)) if d is None else jnp.moveaxis(y, d, 0)
    if y.ndim == 3:
        return (fn(site, y) if token is None else through_tap(fn, site, y, *token)), 0
    out = fn(site, jnp.moveaxis(y, 1, -1))
    return jnp.moveaxis(out, -1, 1), 0


batching.fancy_primitive_batchers[tap_p] = _batched


def _tap_output(out, site, fn, token=None, tokens_raw=False):
    """A layer's output (or a stateful layer's ``(output, state)``) through the tap: a (K, h, w) grid, or (T, C)
    tokens when ``token`` maps them to a grid or ``tokens_raw`` (discovery) asks for them as they are."""
    pair = isinstance(out, tuple) and len(out) == 2
    y = out[0] if pair else out
    if not isinstance(y, jax.Array) or not (y.ndim == 3 or (y.ndim == 2 and (token or tokens_raw))):
        return out
    y = tap_p.bind(y, site=site, fn=fn, token=token if y.ndim == 2 else None)
    return (y, out[1]) if pair else y


@functools.cache
def _wrapper_class():
    eqx = _equinox()

    class TapLayer(eqx.nn.StatefulLayer):
        """A submodule whose output goes through ``fn(output)``. A ``StatefulLayer`` that says whether the wrapped
        one is, so ``eqx.nn.Sequential`` still passes ``state`` to a wrapped BatchNorm."""

        module: object
        fn: object = eqx.field(static=True)

        def __call__(self, *args, **kwargs):
            return self.fn(self.module(*args, **kwargs))

        def is_stateful(self) -> bool:
            return isinstance(self.module, eqx.nn.StatefulLayer) and self.module.is_stateful()

    return TapLayer


# -- walking the module tree ---------------------------------------------------------------------------------------
def _children(node):
    """``[(key, child)]`` of a module's fields and of lists, tuples and dicts inside them."""
    eqx = _equinox()
    if isinstance(node, eqx.Module):
        return [(f.name, getattr(node, f.name, None)) for f in dataclasses.fields(node)]
    if isinstance(node, (list, tuple)):
        return list(enumerate(node))
    if isinstance(node, dict):
        return list(node.items())
    return []


def submodules(model) -> dict[str, tuple]:
    """``{dotted path: key path}`` of every callable ``eqx.Module`` inside ``model`` (the root excluded)."""
    eqx = _equinox()
    out = {}

    def walk(node, keys):
        for k, child in _children(node):
            if isinstance(child, (eqx.Module, list, tuple, dict)):
                path = (*keys, k)
                if isinstance(child, eqx.Module) and callable(child):
                    out[".".join(map(str, path))] = path
                walk(child, path)

    walk(model, ())
    return out


def _get(node, keys):
    for k in keys:
        node = getattr(node, k) if isinstance(k, str) and not isinstance(node, dict) else node[k]
    return node


@dataclass(frozen=True)
class EquinoxApply(TokenSites):
    """The tapped forward of an Equinox model: combine, wrap the tapped submodules, vmap over NCHW examples.
    ``layers``: ``(dotted path, key path)`` of the submodules whose grid outputs are sites (``path#<call>`` for a
    path in ``multi``); ``biases``: key paths of FullGrad's bias layers; ``discover``: every call named
    ``path#<call>``, whatever its output."""

    static: object
    layers: tuple
    multi: frozenset = frozenset()
    biases: tuple = ()
    stateful: bool = False
    output: object = None
    tokens: tuple = ()  # (site, prefix) of the sites whose output is a ViT token sequence
    patch: tuple | None = None
    discover: bool = False

    def __call__(self, params, x, tap):
        return self.run(params, x, tap)

    def run(self, params, x, tap, nested: dict | None = None):
        """The forward; a tapped call inside a transformation within the model (its own ``jax.vmap``, ``jit``,
        ``scan``) is left untapped and, with ``nested``, recorded there (discovery)."""
        eqx = _equinox()
        arrays, state = params if self.stateful else (params, None)
        model = eqx.combine(arrays, self.static)
        counts: dict[str, int] = {}
        top: list = []  # the trace of the adapter's vmap, set when the vmapped function starts
        wrap = _wrapper_class()
        bias_index = {keys: i for i, keys in enumerate(self.biases)}
        layers = dict(self.layers)
        targets = dict(layers)
        for keys in self.biases:
            targets.setdefault(".".join(map(str, keys)), keys)
        for path, keys in sorted(targets.items(), key=lambda kv: -len(kv[1])):  # deepest first
            fn = functools.partial(self._tap, tap, counts, path, path in layers, bias_index.get(keys), top, nested,
                                   tuple(x.shape[1:3]))
            model = eqx.tree_at(lambda m, keys=keys: _get(m, keys), model, replace_fn=lambda s, fn=fn: wrap(s, fn))

        def one(example):
            top.append(here())
            return model(example, state)[0] if self.stateful else model(example)

        return select_output(jax.vmap(one, axis_name=AXIS)(jnp.moveaxis(x, -1, 1)), self.output)

    def _tap(self, tap, counts, path, is_layer, bias, top, nested, image_hw, out):
        if here() != top[-1]:
            if nested is not None:
                nested.setdefault(path, NESTED)
            return out
        call = counts[path] = counts.get(path, -1) + 1
        multi = path in self.multi or self.discover
        if bias is not None:
            out = _tap_output(out, provisional(f"{BIAS}{bias}", call) if path in self.multi else f"{BIAS}{bias}", tap)
        if is_layer:
            name = provisional(path, call) if multi else path
            prefix = dict(self.tokens).get(name)
            token = None if prefix is None else (prefix, self.patch, image_hw)
            out = _tap_output(out, name, tap, token, self.discover)
        return out


@dataclass(frozen=True)
class EquinoxBiases:
    """``params -> {bias site: effective bias (C,)}`` of an Equinox model, from the traced arrays (and state)."""

    static: object
    sites: tuple  # (key path, site name)
    stateful: bool = False

    def __call__(self, params):
        eqx = _equinox()
        arrays, state = params if self.stateful else (params, None)
        model = eqx.combine(arrays, self.static)
        return {site: _effective_bias(_get(model, keys), state) for keys, site in self.sites}


def _effective_bias(node, state):
    """The per-channel bias a layer adds: a Conv2d's bias, an inference BatchNorm's ``beta - mean * gamma /
    sqrt(var + eps)`` (running statistics as Equinox reads them in inference mode, for either of its modes)."""
    eqx = _equinox()
    if isinstance(node, eqx.nn.BatchNorm):
        if node.mode == "ema":
            mean, var = state.get(node.ema_state_index)
        else:
            counter = state.get(node.batch_counter)
            hidden_mean, hidden_var = state.get(node.batch_state_index)
            scale = jnp.where(counter == 0, 1, 1 - node.momentum ** counter)
            mean, var = hidden_mean / scale, hidden_var / scale
        inv = 1.0 / jnp.sqrt(var + node.eps)
        if node.channelwise_affine:
            return (node.bias - mean * node.weight * inv).astype(jnp.float32)
        return (-mean * inv).astype(jnp.float32)
    return node.bias.reshape(-1).astype(jnp.float32)


def _bias_layer(node, stateful: bool) -> bool:
    eqx = _equinox()
    if isinstance(node, eqx.nn.BatchNorm):
        return stateful
    return isinstance(node, eqx.nn.Conv) and node.num_spatial_dims == 2 and node.bias is not None


def from_equinox(model, *, layers=None, default_layer: str | None = None, output=None, state=None,
                 input_size: int = 224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), class_names=None,
                 name: str | None = None, patch_size=None, prefix_tokens: int | None = None) -> Model:
    """An Equinox image classifier as a jaxcam model, for :func:`jaxcam.explain`, :func:`jaxcam.evaluate`,
    ``jaxcam.robustness.run``, the metrics and the CLI.

    Args:
      model: an ``eqx.Module`` whose ``__call__(x)`` takes ONE preprocessed image, channels-first (3, H, W), and
        returns its logits (C,) (with ``state=``: ``model(x, state) -> (logits, state)``). It is run in inference
        mode (``eqx.nn.inference_mode``, on a copy).
      layers: the submodule paths offered as ``layer=`` (``block2.conv_a``, ``layers.3``; default: every
        submodule call returning a (K, h, w) feature map). ``jaxcam.layers`` lists them with their shapes.
      default_layer: the layer explained when none is given (default: the last feature map with more than one
        position).
      output: how to read the logits from a non-array output (an index, a key, an attribute name or a function
        of the batched output).
      state: the ``eqx.nn.State`` of a stateful model (BatchNorm running statistics), traced like the arrays.
      input_size, mean, std, class_names, name: preprocessing (NHWC batches, transposed for the model), class
        names and the model's name (default: its class name).
      patch_size, prefix_tokens: for a Vision Transformer, a submodule output of tokens ``(prefix + h*w, C)`` per
        example is a layer seen as its patch grid (``h = input_size // patch_size``; prefix inferred unless given).
        Equinox applies per-token layers (LayerNorm, MLP) through ``jax.vmap`` over the tokens, inside the model's
        own vmap, so they are not sites; the block outputs are. The last block's output has no gradient on the
        patch tokens when only the prefix token reaches the classifier: pass ``default_layer=`` an earlier block.
    """
    eqx = _equinox()
    if not isinstance(model, eqx.Module):
        raise InvalidArgumentError(f"from_equinox takes an equinox.Module, got {type(model).__name__}")
    label = name or type(model).__name__
    patch, prefix = (None if patch_size is None else as_pair(patch_size)), check_prefix(prefix_tokens)
    model = eqx.nn.inference_mode(model, value=True)
    arrays, static = eqx.partition(model, eqx.is_array)
    stateful = state is not None
    params = (arrays, state) if stateful else arrays
    subs = submodules(model)
    size = check_size(input_size)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    probe = EquinoxApply(static, tuple(subs.items()), frozenset(subs), (), stateful, output, discover=True)
    check_logits(jax.eval_shape(lambda p, v: probe(p, v, lambda s, a: a), params, x), 2, label, output)
    seen, nested = discover(probe.run, params, x)
    found, multi = name_calls(seen), repeated(seen)
    tokens = token_sites(found, size, patch, prefix)
    grids = as_grids(found, tokens, size, patch)
    norms = [p for p, keys in subs.items() if isinstance(_get(model, keys), eqx.nn.LayerNorm)]
    sites, default = choose_sites(grids, tuple(subs), 2, layers, default_layer, label, nested,
                                  vit_default(tuple(grids), tokens, norms))
    bias_keys = tuple(keys for path, keys in subs.items() if _bias_layer(_get(model, keys), stateful)
                      and any(k.rsplit("#", 1)[0] == path and is_grid(s, 2) for k, s in seen.items()))
    bias_sites = tuple((keys, f"{BIAS}{i}" if ".".join(map(str, keys)) not in multi else provisional(f"{BIAS}{i}", c))
                       for i, keys in enumerate(bias_keys)
                       for c in range(sum(k.rsplit("#", 1)[0] == ".".join(map(str, keys)) for k in seen)
                                      if ".".join(map(str, keys)) in multi else 1))
    paths = dict.fromkeys(s.rsplit("#", 1)[0] for s in sites)
    apply = EquinoxApply(static, tuple((p, subs[p]) for p in paths), multi, bias_keys, stateful, output,
                         tuple((s, tokens[s]) for s in sites if s in tokens), patch)
    tapped = Tapped(apply, sites, default, gap_fc_sites=closed_form_sites(apply, params, size, sites),
                    bias_sites=tuple(s for _, s in bias_sites),
                    biases=EquinoxBiases(static, bias_sites, stateful) if bias_sites else None)
    return Model.from_tapped(tapped, params, name=label, input_size=size, mean=mean, std=std,
                             class_names=class_names, source="equinox module")


__all__ = ["EquinoxApply", "EquinoxBiases", "from_equinox", "submodules", "tap_p"]
