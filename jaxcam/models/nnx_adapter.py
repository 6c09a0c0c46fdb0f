"""``from_nnx``: any flax.nnx image classifier as a jaxcam :class:`~jaxcam.models.model.Model`.

The module is split once into ``(graphdef, state)``; the state is the model's parameters (traced, never baked in)
and the tapped forward merges a fresh copy inside the pure function, then gives each tapped submodule of that copy a
subclass of its own class whose ``__call__`` passes the output through ``tap`` (the pattern of
:mod:`jaxcam.models.taps`, generalised to any module class), so the user's module is never modified and every tap
runs in the forward's own trace. Sites are submodule paths (``block2.conv_a``, ``layers.3``) in the order their
calls return, discovered with ``jax.eval_shape`` (no compute); a submodule called several times (shared weights)
gets one site per call, ``block#0``, ``block#1``. Only ``__call__`` is tapped.

Evaluation mode is required, not switched: a module with a BatchNorm using batch statistics
(``use_running_average=False``) or an active Dropout (``deterministic=False``) is refused, since its logits (and
maps) would depend on the rest of the batch. NNX modules are mutable and shared by reference, so silently changing
their mode is not ours to do; the error names the offending submodules and the one-line fix.

FullGrad reads every layer that adds a per-channel bias to a channels-last map: BatchNorm (effective bias
``beta - mean * gamma / sqrt(var + eps)``), and Conv and Linear layers with a bias. Their outputs are tapped as
``bias:<i>`` sites (module graph order) and their effective biases are computed from the traced parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from flax.errors import TraceContextError

from ..errors import InvalidArgumentError
from ..tapped import Tapped
from .model import Model
from .sites import NESTED, TokenSites, as_grids, check_logits, check_size, choose_sites, closed_form_sites, discover, \
    here, is_grid, name_calls, provisional, repeated, select_output, through_tap, token_sites, vit_default
from .tokens import as_pair, check_prefix

_TAP = "_jaxcam_tap"
BIAS = "bias:"
_SUBCLASSES: dict[type, type] = {}


def _tapping(cls: type) -> type:
    """A subclass of ``cls`` whose ``__call__`` passes the result through the function stored on the instance
    (one subclass per class, created once)."""
    sub = _SUBCLASSES.get(cls)
    if sub is None:
        def __call__(self, *args, **kwargs):
            out = cls.__call__(self, *args, **kwargs)
            fn = self.__dict__.get(_TAP)
            return out if fn is None else fn(out)

        sub = type(f"Tapping{cls.__name__}", (cls,), {"__call__": __call__, "__module__": __name__})
        _SUBCLASSES[cls] = sub
    return sub


def _path(path) -> str:
    return ".".join(str(p) for p in path)


def _modules(module) -> dict[str, nnx.Module]:
    """Every submodule by dotted path (graph order; a shared submodule under its first path), the root excluded."""
    return {_path(p): n for p, n in nnx.iter_graph(module) if isinstance(n, nnx.Module) and p}


def _bias_layer(node) -> bool:
    if isinstance(node, nnx.BatchNorm):
        return node.axis in (-1,)
    return isinstance(node, (nnx.Conv, nnx.Linear)) and getattr(node, "bias", None) is not None


def _effective_bias(node) -> jax.Array:
    """The per-channel bias a layer adds to its (channels-last) output."""
    if isinstance(node, nnx.BatchNorm):
        mean, var = (jnp.asarray(v[...], jnp.float32) for v in (node.mean, node.var))
        gamma = 1.0 if node.scale is None else jnp.asarray(node.scale[...], jnp.float32)
        beta = 0.0 if node.bias is None else jnp.asarray(node.bias[...], jnp.float32)
        return beta - mean * gamma / jnp.sqrt(var + node.epsilon)
    return jnp.asarray(node.bias[...], jnp.float32)


def training_mode(module) -> list[str]:
    """The submodules that make the logits depend on the batch: BatchNorm on batch statistics, active Dropout."""
    bad = []
    for path, node in _modules(module).items():
        if getattr(node, "use_running_average", None) is False:
            bad.append(f"{path} ({type(node).__name__}, use_running_average=False)")
        elif getattr(node, "deterministic", None) is False and getattr(node, "rate", getattr(node, "dropout_rate",
                                                                                           1.0)) > 0:
            bad.append(f"{path} ({type(node).__name__}, deterministic=False)")
    return bad


@dataclass(frozen=True)
class NnxApply(TokenSites):
    """The tapped forward (:mod:`jaxcam.tapped`) of an NNX module: merge, swap the tapped submodules' classes on
    the fresh copy, call. ``layers``: submodule paths whose grid outputs are sites (``path`` or, for a path in
    ``multi``, ``path#<call>``); ``biases``: paths of FullGrad's bias layers, tapped as ``bias:<i>``;
    ``tokens``: ``(site, prefix)`` of the sites whose output is a ViT token sequence, seen as its ``patch`` grid;
    ``discover``: tap every array output of ``layers`` under provisional ``path#<call>`` names."""

    graphdef: nnx.GraphDef
    layers: tuple[str, ...]
    multi: frozenset = frozenset()
    biases: tuple[str, ...] = ()
    output: object = None
    tokens: tuple = ()
    patch: tuple | None = None
    discover: bool = False

    def __call__(self, params, x, tap):
        return self.run(params, x, tap)

    def run(self, params, x, tap, nested: dict | None = None):
        """The forward; a tapped call inside a transformation within the module (``nnx.scan``, ``nnx.remat``,
        ``nnx.vmap``...) is left untapped and, with ``nested``, recorded there (discovery)."""
        module = nnx.merge(self.graphdef, params)
        nodes = _modules(module)
        counts: dict[str, int] = {}
        bias_index = {p: i for i, p in enumerate(self.biases)}
        top = here()
        for path in dict.fromkeys(self.layers + self.biases):
            node = nodes[path]
            node.__class__ = _tapping(type(node))
            node.__dict__[_TAP] = partial(self._tap, tap, counts, path, bias_index.get(path), top, nested,
                                          tuple(x.shape[1:3]))
        try:
            out = module(x)
        except TraceContextError as e:
            raise InvalidArgumentError(
                f"{type(module).__name__} runs an NNX transformation (nnx.remat, nnx.scan, nnx.vmap...) inside its "
                "__call__, which Flax refuses under a JAX transformation of the whole forward such as the jax.vjp "
                f"jaxcam takes for gradients ({type(e).__name__}); use the JAX transformation on a function of the "
                "submodule instead (jax.checkpoint(lambda h: self.block(h))(h)), or a gradient-free method") from e
        return select_output(out, self.output)

    def _tap(self, tap, counts, path, bias, top, nested, image_hw, out):
        if here() != top:
            if nested is not None:
                nested.setdefault(path, NESTED)
            return out
        call = counts[path] = counts.get(path, -1) + 1
        if not isinstance(out, jax.Array):
            return out
        multi = path in self.multi
        if bias is not None and out.ndim == 4:
            out = tap(provisional(f"{BIAS}{bias}", call) if multi else f"{BIAS}{bias}", out)
        if path not in self.layers:
            return out
        name = provisional(path, call) if multi or self.discover else path
        prefix = dict(self.tokens).get(name)
        if self.discover or (out.ndim == 4 and prefix is None) or (out.ndim == 3 and prefix is not None):
            out = through_tap(tap, name, out, prefix, self.patch, image_hw)
        return out


@dataclass(frozen=True)
class NnxBiases:
    """``params -> {bias site: effective bias (C,)}`` of an NNX module, computed from the traced parameters (a
    program compiled for one model gives another model's FullGrad when called with that model's parameters)."""

    graphdef: nnx.GraphDef
    sites: tuple[tuple[str, str], ...]  # (bias layer path, site name)

    def __call__(self, params):
        nodes = _modules(nnx.merge(self.graphdef, params))
        return {site: _effective_bias(nodes[path]) for path, site in self.sites}


def from_nnx(module: nnx.Module, *, layers=None, default_layer: str | None = None, output=None,
             input_size: int = 224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), class_names=None,
             name: str | None = None, patch_size=None, prefix_tokens: int | None = None) -> Model:
    """A flax.nnx image classifier as a jaxcam model, for :func:`jaxcam.explain`, :func:`jaxcam.evaluate`,
    ``jaxcam.robustness.run``, the metrics and the CLI.

    Args:
      module: an ``nnx.Module`` whose ``__call__(x)`` takes a preprocessed NHWC batch ``(N, H, W, 3)`` and returns
        logits ``(N, C)`` (or an output ``output=`` selects them from), in evaluation mode (``module.eval()``).
      layers: the submodule paths offered as ``layer=`` (default: every submodule call that returns a
        channels-last feature map ``(N, h, w, K)``; :func:`jaxcam.layers` lists them with their shapes).
      default_layer: the layer explained when none is given (default: the last feature map with more than one
        position, i.e. the features the classifier head pools).
      output: how to read the logits from a non-array output: an index, a key, an attribute name or a function.
      input_size, mean, std, class_names: the preprocessing :func:`jaxcam.preprocess` applies (square
        ``input_size``, ``(rgb - mean) / std``) and the class names.
      name: the model's name in tables and reports (default: the module's class name).
      patch_size, prefix_tokens: for a Vision Transformer, the patch size in pixels: a submodule output of tokens
        ``(N, prefix + h*w, C)`` is then a layer, seen as its (h, w) patch grid (``h = input_size // patch``; the
        prefix, CLS/distillation/register tokens, inferred from the count unless given). The default layer of a
        ViT is the last block's first LayerNorm (the last block's output has no gradient on the patch tokens).

    Raises ``InvalidArgumentError`` for a module in training mode (the message lists the submodules and the fix),
    ``UnknownLayerError`` (closest names suggested) or ``LayerNotCalledError`` for a layer the forward never runs.
    """
    if not isinstance(module, nnx.Module):
        raise InvalidArgumentError(f"from_nnx takes a flax.nnx.Module, got {type(module).__name__}; for flax.linen "
                                   "use jaxcam.from_linen, for a function jaxcam.from_function")
    label = name or type(module).__name__
    bad = training_mode(module)
    if bad:
        raise InvalidArgumentError(f"{label} is in training mode, so its logits would depend on the rest of the "
                                   f"batch: {'; '.join(bad)}. Call module.eval() first (or pass nnx.view(module, "
                                   "use_running_average=True, deterministic=True))")
    patch, prefix = (None if patch_size is None else as_pair(patch_size)), check_prefix(prefix_tokens)
    graphdef, state = nnx.split(module)
    nodes = _modules(module)
    paths = tuple(nodes)
    size = check_size(input_size)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    probe = NnxApply(graphdef, paths, frozenset(paths), (), output, discover=True)
    check_logits(jax.eval_shape(partial(_forward, probe), state, x), 2, label, output)
    seen, nested = discover(probe.run, state, x)
    found, multi = name_calls(seen), repeated(seen)
    tokens = token_sites(found, size, patch, prefix)
    grids = as_grids(found, tokens, size, patch)
    norms = [p for p, n in nodes.items() if isinstance(n, nnx.LayerNorm)]
    sites, default = choose_sites(grids, paths, 2, layers, default_layer, label, nested,
                                  vit_default(tuple(grids), tokens, norms))
    bias_paths = tuple(p for p, n in nodes.items() if _bias_layer(n)
                       and any(k.rsplit("#", 1)[0] == p and is_grid(s, 2) for k, s in seen.items()))
    bias_sites = tuple((p, f"{BIAS}{i}" if p not in multi else provisional(f"{BIAS}{i}", c))
                       for i, p in enumerate(bias_paths)
                       for c in range(sum(k.rsplit("#", 1)[0] == p for k in seen) if p in multi else 1))
    apply = NnxApply(graphdef, tuple(dict.fromkeys(s.rsplit("#", 1)[0] for s in sites)), multi, bias_paths, output,
                     tuple((s, tokens[s]) for s in sites if s in tokens), patch)
    tapped = Tapped(apply, sites, default, gap_fc_sites=closed_form_sites(apply, state, size, sites),
                    bias_sites=tuple(s for _, s in bias_sites), biases=NnxBiases(graphdef, bias_sites))
    return Model.from_tapped(tapped, state, name=label, input_size=size, mean=mean, std=std,
                             class_names=class_names, source="nnx module")


def _forward(apply, params, x):
    return apply(params, x, lambda s, a: a)


__all__ = ["NnxApply", "NnxBiases", "from_nnx", "training_mode"]
