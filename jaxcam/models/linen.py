"""``from_linen``: explain any ``flax.linen`` module (big_vision, Scenic, the Flax examples, Hugging Face Flax).

The tapped forward (:mod:`jaxcam.tapped`) of a linen module is its ``apply`` run under
``flax.linen.intercept_methods``: an interceptor sees every submodule's ``__call__`` with the submodule's path, so
at a site it calls ``tap(site, a)`` on the output and lets the model continue with what the tap returns. The
interceptor runs in ``apply``'s own trace for every submodule outside lifted transforms, which is what the
protocol needs (no Python side channel crosses a nested trace).

Sites are discovered once, with ``jax.eval_shape`` (no compute): every submodule call whose output (or the first
element of a tuple output, as Hugging Face blocks return) is an ``(N, h, w, K)`` array, or ``(N, P + h*w, C)``
tokens mapped to a grid (:mod:`jaxcam.models.tokens`; needs ``patch_size``), named by module path
(``block_2``, ``vit.encoder.layer.11.layernorm_before``), ``path#k`` for the k-th call of a module called more
than once, in the order their outputs are computed.

Lifted transforms. Inside ``nn.remat`` (or ``nn.jit``) the submodule runs in a nested trace, where a tap that
records its argument or closes over the caller's tracers would leak them. There the activation leaves through a
variable collection instead: a first pass ``sow``s it, ``tap`` runs on it in ``apply``'s trace, and a second pass
reads the difference ``tap(a) - a`` from another collection and adds it at the site. That is exact for the taps
the driver uses (identity, ``a + delta`` for gradients, recording), and a replacement ``a'`` arrives as
``a + (a' - a)`` (within float rounding); the cost is one more forward, and a replay at such a site is not
head-only. Inside ``nn.scan`` one traced body serves every iteration, so a layer there cannot be singled out:
naming one is an error that says so.

Evaluation mode. Logits must not depend on the rest of the batch: BatchNorm with batch statistics, a ``mutable``
collection or an active dropout (which asks for a ``dropout`` PRNG) are refused at construction with the fix
(``call_kwargs={"train": False}`` or ``{"deterministic": True}``, ``batch_stats`` in ``variables``).

FullGrad's sites are the outputs of every ``nn.Conv`` with a bias and every ``nn.BatchNorm`` (``bias:<i>`` in
call order), with effective biases computed from the traced variables, as :mod:`jaxcam.models.taps` does for the
built-in models. CAM's closed form is declared at the sites whose head is ``FC(global average pool)``: checked
numerically at construction (the head is affine in the activation and invariant to spatial permutations).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from ..errors import InvalidArgumentError, JaxcamError, UnknownLayerError
from ..tapped import Tapped, identity_tap, replay
from .tokens import TokenGrid, as_pair, check_prefix, patch_grid, token_grid
from .sites import select_output

BIAS = "bias:"
ACTS = "jaxcam_acts"    # the collection a first pass sows lifted sites' activations into
DELTAS = "jaxcam_deltas"  # the collection the second pass reads ``tap(a) - a`` from
LAYOUTS = ("NHWC", "NCHW")


class _Held:
    """An object (a module, which may hold unhashable fields such as a Hugging Face config) hashed and compared by
    identity, so the tapped forward holding it can key compiled programs."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _Held) and other.obj is self.obj


@dataclass(frozen=True)
class Site:
    """One tap point: the ``call``-th call of the submodule at ``path``, its output's array (``item`` of a tuple,
    or the output itself when None), seen as a grid (``prefix`` None) or as tokens with ``prefix`` leading tokens
    over a ``patch`` grid. ``lifted``: inside ``nn.remat``/``nn.jit``, tapped in two passes (module docstring)."""

    name: str
    path: tuple[str, ...]
    call: int
    item: int | None
    prefix: int | None
    patch: tuple[int, int] | None
    lifted: bool
    key: str  # the variable name this site uses in the ACTS/DELTAS collections

    def _array(self, y):
        return y if self.item is None else y[self.item]

    def _with(self, y, a):
        if self.item is None:
            return a
        return type(y)((*y[:self.item], a, *y[self.item + 1:]))

    def _grid(self, t, image_hw) -> TokenGrid:
        h, w = patch_grid(image_hw, self.patch)
        if t.ndim != 3 or t.shape[1] != self.prefix + h * w:
            raise InvalidArgumentError(f"layer {self.name!r} outputs {tuple(t.shape)}, not {self.prefix} prefix "
                                       f"tokens + a {h}x{w} patch grid for a {image_hw[0]}x{image_hw[1]} input; "
                                       "explain at the input size the model was built for")
        return TokenGrid(self.prefix, h, w)

    def view(self, y, image_hw):
        """The site's activation as a grid (N, h, w, K)."""
        a = self._array(y)
        return a if self.prefix is None else self._grid(a, image_hw).to_grid(a)

    def put(self, y, g, image_hw):
        """``y`` with the site's grid replaced by ``g`` (prefix tokens kept)."""
        a = self._array(y)
        return self._with(y, g if self.prefix is None else self._grid(a, image_hw).from_grid(a, g))

    def add(self, y, d, image_hw):
        """``y`` with ``d`` added to the site's grid (prefix tokens unchanged)."""
        a = self._array(y)
        if self.prefix is None:
            return self._with(y, a + d)
        grid = self._grid(a, image_hw)
        (back,) = jax.linear_transpose(grid.to_grid, jax.ShapeDtypeStruct(a.shape, a.dtype))(d)
        return self._with(y, a + back)


def _nested_get(tree, path):
    for p in path:
        if not isinstance(tree, Mapping) or p not in tree:
            return None
        tree = tree[p]
    return tree


def _nested_set(tree: dict, path, key, value):
    for p in path:
        tree = tree.setdefault(p, {})
    tree[key] = value


@dataclass(frozen=True)
class LinenApply:
    """The tapped forward ``(variables, x, tap) -> logits`` of a linen module (module docstring). Hashable: the
    module is held by identity; sites, call keywords and the output selector by value."""

    module: _Held
    call_kwargs: tuple
    sites: tuple[Site, ...]
    output: object
    layout: str
    # ((name, why), ...): submodule calls that are not sites and why (pooled output, inside nn.scan, ...), so an
    # error naming one can say why; not part of the forward's identity
    refused: tuple = field(default=(), compare=False)
    input_hw: tuple = ()  # the input size the sites were found at, to name it when another size fails
    attention: tuple = ()  # ((path, call), ...): self-attention calls whose probabilities are tapped (AD-CAM)

    @property
    def token_sites(self) -> frozenset:
        """The sites whose output is a token sequence mapped to a grid (``jaxcam.layers``' "tokens->grid")."""
        return frozenset(s.name for s in self.sites if s.prefix is not None)

    @cached_property
    def _by_call(self) -> dict:
        table = {}
        for s in self.sites:
            table.setdefault((s.path, s.call), []).append(s)
        return table

    def _run(self, variables, x, on_site, mutable=False, on_attention=None):
        counts = {}
        by_call = self._by_call
        attention = set(self.attention) if on_attention is not None else set()

        def intercept(f, args, kwargs, ctx):
            if ctx.method_name != "__call__":
                return f(*args, **kwargs)
            path = tuple(ctx.module.path)
            k = counts.get(path, 0)
            counts[path] = k + 1
            if (path, k) in attention:  # ask for the probabilities, tap them, return what the caller asked for
                asked = kwargs.get("output_attentions", False)
                out = f(*args, **{**kwargs, "output_attentions": True})
                on_attention(attention_name(path, k), out[1])
                y = out if asked else out[:1]
            else:
                y = f(*args, **kwargs)
            for site in by_call.get((path, k), ()):
                y = on_site(site, y, ctx.module)
            return y

        xin = x if self.layout == "NHWC" else jnp.transpose(x, (0, 3, 1, 2))
        try:
            with nn.intercept_methods(intercept):
                return self.module.obj.apply(variables, xin, mutable=mutable, **dict(self.call_kwargs))
        except JaxcamError:
            raise
        except (TypeError, ValueError) as err:
            if not self.input_hw or tuple(x.shape[1:3]) == self.input_hw:
                raise
            (h, w), (h0, w0) = x.shape[1:3], self.input_hw
            raise InvalidArgumentError(
                f"{type(self.module.obj).__name__} fails on a {h}x{w} input ({str(err).splitlines()[0]}); it was "
                f"wrapped at {h0}x{w0}, and a model with fixed position embeddings takes no other size: explain at "
                f"{h0}x{w0} (methods that rescale the input, such as cameras, need a model that accepts any "
                "size)") from err

    def __call__(self, variables, x, tap):
        hw = x.shape[1:3]
        lifted = [s for s in self.sites if s.lifted]
        deltas = None
        if lifted and tap is not identity_tap:
            deltas = {}
            _, state = self._run(variables, x, lambda s, y, m: _sow(s, y, m, hw) if s.lifted else y, mutable=[ACTS])
            for s in lifted:
                a = _nested_get(state[ACTS], s.path)[s.key][0]
                _nested_set(deltas, s.path, s.key, tap(s.name, a) - a)

        def on_site(site, y, module):
            if not site.lifted:
                return site.put(y, tap(site.name, site.view(y, hw)), hw)
            if deltas is None:
                return y
            return site.add(y, module.get_variable(DELTAS, site.key), hw)

        run_vars = variables if deltas is None else {**variables, DELTAS: deltas}
        on_attention = None if tap is identity_tap or not self.attention else tap  # recorded only: tap's value unused
        return select_output(self._run(run_vars, x, on_site, on_attention=on_attention), self.output)


def _sow(site, y, module, hw):
    module.sow(ACTS, site.key, site.view(y, hw))
    return y


@dataclass(frozen=True)
class BiasLayer:
    """A bias-carrying layer for FullGrad: ``kind`` "conv" (its ``bias``) or "batchnorm" (``bias - mean * scale
    / sqrt(var + eps)``), at ``path`` in the variables."""

    site: str
    kind: str
    path: tuple[str, ...]
    epsilon: float = 0.0
    use_scale: bool = True
    use_bias: bool = True


@dataclass(frozen=True)
class LinenBiases:
    """``variables -> {"bias:<i>": effective bias (C,)}``, traced (never constants), as FullGrad needs."""

    layers: tuple[BiasLayer, ...]
    unavailable: str = ""  # why FullGrad cannot run on this model (a bias layer that cannot be tapped)

    def __call__(self, variables):
        if self.unavailable:
            raise InvalidArgumentError(f"FullGrad needs the output of every bias-carrying layer, and {self.unavailable}"
                                       "; use a layer-based method (gradcam, layercam, ...) on this model")
        out = {}
        for b in self.layers:
            p = _nested_get(variables["params"], b.path)
            if b.kind == "conv":
                out[b.site] = jnp.asarray(p["bias"], jnp.float32)
                continue
            s = _nested_get(variables.get("batch_stats", {}), b.path)
            mean, var = jnp.asarray(s["mean"], jnp.float32), jnp.asarray(s["var"], jnp.float32)
            scale = jnp.asarray(p["scale"], jnp.float32) if b.use_scale else jnp.ones_like(mean)
            beta = jnp.asarray(p["bias"], jnp.float32) if b.use_bias else jnp.zeros_like(mean)
            out[b.site] = beta - mean * scale / jnp.sqrt(var + b.epsilon)
        return out


# -- discovery ----------------------------------------------------------------------------------------------------

@dataclass
class _Call:
    path: tuple[str, ...]
    call: int
    kind: type
    array: jax.ShapeDtypeStruct | None  # the output's array (None: no array output)
    item: int | None     # None: the output is the array; 0: it is a tuple's first element
    out_type: str        # the output's type name, for messages
    lifted: bool
    scanned: bool        # its own parameters are stacked (nn.scan / nn.vmap over layers)
    bias: BiasLayer | None = None
    axis: int = -1       # a BatchNorm's feature axis


def _shapes(tree):
    return [(jax.tree_util.keystr(k), tuple(v.shape)) for k, v in jax.tree_util.tree_leaves_with_path(tree)]


def _record_calls(module, variables, x, call_kwargs):
    """Every submodule ``__call__`` of one forward (shapes only, ``jax.eval_shape``), in completion order, and
    the model's output structure."""
    calls: list[_Call] = []

    def run(v, xin):
        outer = jex_core.get_opaque_trace_state(convention="flax")
        counts = {}

        def intercept(f, args, kwargs, ctx):
            y = f(*args, **kwargs)
            if ctx.method_name != "__call__" or not ctx.module.path:
                return y
            path = tuple(ctx.module.path)
            lifted = jex_core.get_opaque_trace_state(convention="flax") != outer
            own = ctx.module.variables.get("params", {}) if lifted else {}
            scanned = lifted and bool(own) and _shapes(own) != _shapes(_nested_get(v.get("params", {}), path) or {})
            k = counts.get(path, 0)
            counts[path] = k + 1
            arr, item = _site_array(y)
            calls.append(_Call(path, k, type(ctx.module), arr, item, type(y).__name__, lifted, scanned,
                               _bias_layer(ctx.module, path),
                               getattr(ctx.module, "axis", -1) if isinstance(ctx.module, nn.BatchNorm) else -1))
            return y

        with nn.intercept_methods(intercept):
            return module.apply(v, xin, **call_kwargs)

    try:
        out = jax.eval_shape(run, variables, x)
    except flax.errors.ModifyScopeVariableError as err:
        raise InvalidArgumentError(
            f"{type(module).__name__} updates variables when called ({err.args[0].splitlines()[0]}): it runs in "
            "training mode (BatchNorm with batch statistics), so its logits would depend on the rest of the batch. "
            "Explain it in evaluation mode: call_kwargs={'train': False} (or the module's own flag, e.g. "
            "use_running_average=True), with batch_stats in variables") from None
    except flax.errors.InvalidRngError as err:
        raise InvalidArgumentError(
            f"{type(module).__name__} asks for a PRNG key when called ({err.args[0].splitlines()[0]}): dropout (or "
            "another random layer) is active, so its logits would be random. Explain it in evaluation mode: "
            "call_kwargs={'deterministic': True} (or {'train': False}, whichever flag the module takes)") from None
    except (flax.errors.ScopeCollectionNotFound, flax.errors.ScopeVariableNotFoundError) as err:
        raise InvalidArgumentError(
            f"{type(module).__name__} reads a variable that variables does not hold ({err.args[0].splitlines()[0]}); "
            "pass every collection module.init returned, e.g. {'params': ..., 'batch_stats': ...}") from None
    return calls, out


def _bias_layer(module, path) -> BiasLayer | None:
    if isinstance(module, nn.Conv) and module.use_bias:
        return BiasLayer("", "conv", path)
    if isinstance(module, nn.BatchNorm):
        return BiasLayer("", "batchnorm", path, float(module.epsilon), bool(module.use_scale), bool(module.use_bias))
    return None


def _site_array(out):
    """``(shape and dtype, item)`` of an output that can be a site: the array itself (item None), or the first
    element of a tuple (item 0, as Hugging Face blocks return); ``(None, None)`` otherwise."""
    if isinstance(out, (tuple, list)) and out:
        array, item = out[0], 0
    else:
        array, item = out, None
    if not isinstance(array, (jax.Array, jax.ShapeDtypeStruct)):
        return None, None
    return jax.ShapeDtypeStruct(array.shape, array.dtype), item


def _is_attention(kind: type) -> bool:
    """A self-attention module that can return its attention probabilities: a ``__call__`` taking
    ``output_attentions`` (Hugging Face's Flax ViT, BEiT, DINOv2 ``...SelfAttention``)."""
    import inspect

    try:
        params = inspect.signature(kind.__call__).parameters
    except (TypeError, ValueError):
        return False
    return "output_attentions" in params and kind.__name__.endswith("SelfAttention")


def attention_calls(calls) -> tuple[tuple[tuple[str, ...], int], ...]:
    """``((path, call index), ...)`` of the self-attention calls in forward order, outside any lifted transform
    (AD-CAM's attention sites; their probabilities are recorded, never changed)."""
    return tuple((c.path, c.call) for c in calls if _is_attention(c.kind) and not c.lifted)


def attention_name(path: tuple[str, ...], call: int) -> str:
    return "attn:" + ".".join(path) + (f"#{call}" if call else "")


@dataclass
class _Found:
    sites: list           # layer Sites, forward order
    refused: dict         # name -> why it is not a layer
    biases: list          # (Site, BiasLayer)
    fullgrad: str         # "" when FullGrad's bias sites are complete, else why not
    norms: set            # names of LayerNorm sites
    output: object
    shapes: dict = None   # name -> the site's grid shape (N, h, w, K) at the discovery input
    attention: tuple = ()  # ((path, call), ...) of self-attention calls (AD-CAM)


def _discover(module, variables, x, call_kwargs, patch, prefix) -> _Found:
    calls, output = _record_calls(module, variables, x, call_kwargs)
    attention = attention_calls(calls)
    scanned_roots = [c.path for c in calls if c.scanned]
    in_scan = [any(c.path[:len(r)] == r for r in scanned_roots) for c in calls]
    multi = {c.path for c, s in zip(calls, in_scan) if c.call > 0 and not s}  # a scanned body may be traced twice
    n, hw = x.shape[0], (x.shape[1], x.shape[2]) if x.shape[-1] == 3 else (x.shape[2], x.shape[3])
    found = _Found([], {}, [], "", set(), output, {}, attention)
    seen = set()
    for c, scanned in zip(calls, in_scan):
        name = ".".join(c.path) + (f"#{c.call}" if c.path in multi else "")
        if name in seen:
            continue
        seen.add(name)
        arr, item = c.array, c.item
        grid, why = None, ""
        if arr is None:
            why = f"its output is a {c.out_type}, not an array"
        elif arr.shape[:1] != (n,) or not jnp.issubdtype(arr.dtype, jnp.floating):
            why = f"its output {tuple(arr.shape)} {arr.dtype} is not a floating batch"
        elif arr.ndim == 4:
            grid = "grid"
        elif arr.ndim == 3 and patch is None:
            why = (f"it outputs tokens {tuple(arr.shape)}: pass patch_size= (and prefix_tokens=) to map them to a "
                   "grid")
        elif arr.ndim == 3:
            tg = token_grid(arr.shape, hw, patch, prefix)
            if tg is None:
                h, w = patch_grid(hw, patch)
                why = (f"its tokens {tuple(arr.shape)} hold no {h}x{w} patch grid "
                       f"({'any' if prefix is None else prefix} prefix tokens + {h * w} patches)")
            else:
                grid = tg
        else:
            why = f"its output {tuple(arr.shape)} has no spatial grid (a pooled vector or logits)"
        if scanned and grid is not None:
            why = ("it runs inside nn.scan, whose one traced body serves every iteration, so one iteration's "
                   "activation cannot be singled out; pick a layer outside the scan (before it, or a module applied to "
                   "its output) or build the model with the loop unrolled")
        key = f"site{len(seen)}"
        if c.bias is not None:
            b_name = f"{BIAS}{len(found.biases)}"
            if scanned:
                found.fullgrad = f"layer {name!r} carries a bias inside nn.scan"
            elif arr is None or arr.ndim != 4 or item is not None:
                found.fullgrad = f"bias layer {name!r} does not output an (N, h, w, C) grid"
            elif c.bias.kind == "batchnorm" and c.axis not in (-1, 3):
                found.fullgrad = f"BatchNorm {name!r} normalises an axis other than the last"
            else:
                found.biases.append((Site(b_name, c.path, c.call, None, None, None, c.lifted, "b" + key),
                                     BiasLayer(b_name, c.bias.kind, c.path, c.bias.epsilon, c.bias.use_scale,
                                               c.bias.use_bias)))
        if why:
            found.refused[name] = why
            continue
        tok = isinstance(grid, TokenGrid)
        found.shapes[name] = (n, grid.h, grid.w, arr.shape[-1]) if tok else tuple(arr.shape)
        found.sites.append(Site(name, c.path, c.call, item, grid.prefix if tok else None, patch if tok else None,
                                c.lifted, key))
        if issubclass(c.kind, nn.LayerNorm):
            found.norms.add(name)
    return found


# -- defaults and checks ------------------------------------------------------------------------------------------

def default_site(sites: Sequence[Site], norms: set, shapes: dict) -> str:
    """A ViT (token sites with LayerNorms): the last block's first LayerNorm (pytorch-grad-cam's
    ``blocks[-1].norm1``), since the last block's output has zero gradient on the patch tokens when only the
    prefix token reaches the classifier. Otherwise: the last grid site with more than one position."""
    groups = {}
    for s in sites:
        if s.name in norms and s.prefix is not None:
            groups.setdefault(s.path[:-1], []).append(s.name)
    blocks = [names for names in groups.values() if len(names) >= 2]
    if blocks:
        return blocks[-1][0]
    spatial = [s.name for s in sites if shapes[s.name][1] * shapes[s.name][2] > 1]
    return (spatial or [s.name for s in sites])[-1]


def _gap_fc(apply, variables, size: int, candidates: Sequence[str], shapes: dict) -> frozenset:
    """The candidate sites (checked from the last backwards, stopping at the first that fails) whose head is
    affine in the activation and invariant to permuting its positions, i.e. ``FC(global average pool)``: one
    jitted head-only replay of five activations (``a``, ``b``, ``a + b``, ``0``, ``a`` flipped) per site."""
    ok = []
    for i, site in enumerate(candidates):
        shape = shapes[site][1:]
        ka, kb = jax.random.split(jax.random.key(i))
        a, b = jax.random.normal(ka, shape), jax.random.normal(kb, shape)
        batch = jnp.stack([a, b, a + b, jnp.zeros(shape), a[::-1, ::-1]])
        x = jnp.zeros((5, size, size, 3), jnp.float32)
        y = np.asarray(jax.jit(replay, static_argnums=(0, 3))(apply, variables, x, site, batch), np.float64)
        scale = np.abs(y[:2]).max() + np.abs(y[3]).max() + 1e-6
        if not max(np.abs(y[0] + y[1] - y[2] - y[3]).max(), np.abs(y[4] - y[0]).max()) / scale < 1e-4:
            break
        ok.append(site)
    return frozenset(ok)


def _check_output(out, output, module_name) -> None:
    try:
        logits = select_output(out, output)
    except (AttributeError, KeyError, IndexError, TypeError) as err:
        raise InvalidArgumentError(f"output={output!r} does not select an array in {module_name}'s output "
                                   f"{_describe(out)}: {err}") from None
    if not isinstance(logits, jax.ShapeDtypeStruct):
        hint = " (e.g. output='logits' for a ModelOutput, output=0 for a (logits, extras) tuple, or a callable)"
        raise InvalidArgumentError(f"{module_name} returns {_describe(out)}, not a logits array; pass output= to "
                                   f"select the logits{hint if output is None else ''}")
    if logits.ndim != 2:
        raise InvalidArgumentError(f"{module_name}'s selected output has shape {tuple(logits.shape)}; jaxcam "
                                   "explains classifiers, whose logits are (N, num_classes)")


def _describe(out) -> str:
    if isinstance(out, jax.ShapeDtypeStruct):
        return f"an array {tuple(out.shape)}"
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        return f"a {type(out).__name__} with keys {list(out.keys())}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}: ({', '.join(_describe(o) for o in out)})"
    return f"a {type(out).__name__}"


def _check_layer(name, found: _Found, valid: Sequence[str], context: str) -> str:
    if not isinstance(name, str):
        raise InvalidArgumentError(f"{context}: a layer is named by its module path (a str), got "
                                   f"{type(name).__name__} {name!r}; valid layers: {', '.join(valid)}")
    if name in valid:
        return name
    if name in found.refused:
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
        hint = f"; the closest layers are {', '.join(map(repr, close))}" if close else ""
        raise InvalidArgumentError(f"{context}: layer {name!r} cannot be explained: {found.refused[name]}{hint}")
    raise UnknownLayerError(name, valid, context)


def _kwargs(call_kwargs) -> tuple:
    if call_kwargs is None:
        return ()
    if not isinstance(call_kwargs, Mapping):
        raise InvalidArgumentError(f"call_kwargs must be a dict of keyword arguments for the module's __call__ "
                                   f"(e.g. {{'train': False}}), got {type(call_kwargs).__name__}")
    items = tuple(sorted(call_kwargs.items()))
    try:
        hash(items)
    except TypeError:
        raise InvalidArgumentError(f"call_kwargs values must be hashable (flags, numbers, strings): they key "
                                   f"compiled programs; got {call_kwargs!r}") from None
    return items


def from_linen(module: nn.Module, variables, *, layers: Sequence[str] | None = None, default_layer: str | None = None,
               output=None, call_kwargs: Mapping | None = None, input_size: int = 224, mean=(0.0, 0.0, 0.0),
               std=(1.0, 1.0, 1.0), class_names=None, name: str | None = None, prefix_tokens: int | None = None,
               patch_size=None, layout: str = "NHWC", source: str = "flax.linen"):
    """A :class:`jaxcam.Model` explaining a ``flax.linen`` classifier, for :func:`jaxcam.explain`,
    :func:`jaxcam.evaluate`, ``jaxcam.robustness.run``, the metrics and the CLI.

    Args:
      module: the linen module (unbound), called as ``module.apply(variables, x, **call_kwargs)``.
      variables: what ``module.init`` returned: ``{"params": ..., "batch_stats": ...}`` (every collection the
        forward reads).
      layers: the layer names offered (module paths); default every site found (module docstring). Restricting
        them does not change the maps, only the names ``layer=`` accepts.
      default_layer: the layer explained when none is given; default: a ViT's last block's first LayerNorm, else
        the last grid layer.
      output: selects the logits when the module returns something else: a key or attribute (``"logits"``), an
        index (``0`` for ``(logits, extras)``), a sequence of them, or a callable of the output.
      call_kwargs: keyword arguments for the call, e.g. ``{"train": False}`` or ``{"deterministic": True}``.
      input_size, mean, std: the preprocessing :func:`jaxcam.preprocess` applies (square size, ``(rgb - mean) /
        std``).
      prefix_tokens, patch_size: for token outputs ``(N, P + h*w, C)``: the patch size in pixels (an int or a
        pair) and the prefix count (None: inferred per layer as ``T - h*w``).
      layout: "NHWC" (linen's convention) or "NCHW" (the module takes channels first; jaxcam transposes).

    Raises:
      InvalidArgumentError: a module in training mode, missing collections, a non-array output without
        ``output=``, a named layer that cannot be a site (pooled output, inside ``nn.scan``).
      UnknownLayerError: a layer name that is no submodule call (the valid ones listed, the closest suggested).
    """
    if not isinstance(module, nn.Module):
        raise InvalidArgumentError(f"from_linen needs a flax.linen Module, got {type(module).__name__}; for NNX "
                                   "use jaxcam.from_nnx, for a Hugging Face Flax model jaxcam.from_hf")
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise InvalidArgumentError("variables must be the dict module.init returns, {'params': ..., ...}, got "
                                   f"{type(variables).__name__}" + (f" with keys {list(variables)}"
                                                                    if isinstance(variables, Mapping) else ""))
    if layout not in LAYOUTS:
        raise InvalidArgumentError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 32:
        raise InvalidArgumentError(f"input_size must be an int >= 32 (pixels), got {input_size!r}")
    kwargs = _kwargs(call_kwargs)
    output = tuple(output) if isinstance(output, list) else output
    prefix = check_prefix(prefix_tokens)
    patch = None if patch_size is None else as_pair(patch_size)
    label = name or type(module).__name__
    variables = dict(variables)
    shape = (2, input_size, input_size, 3) if layout == "NHWC" else (2, 3, input_size, input_size)
    found = _discover(module, variables, jax.ShapeDtypeStruct(shape, jnp.float32), dict(kwargs), patch, prefix)
    _check_output(found.output, output, label)
    names = [s.name for s in found.sites]
    if not names:
        raise InvalidArgumentError(f"{label} has no layer jaxcam can explain: no submodule outputs an (N, h, w, K) "
                                   "grid" + ("" if patch else " (for a ViT pass patch_size= to map tokens to grids)"))
    if layers is not None:
        if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
            raise InvalidArgumentError(f"layers must be a non-empty list of layer names, got {layers!r}")
        keep = {_check_layer(ly, found, names, f"layers= of {label}") for ly in layers}
        found.sites = [s for s in found.sites if s.name in keep]
        names = [s.name for s in found.sites]
    bias_sites = tuple(s for s, _ in found.biases)
    apply = LinenApply(_Held(module), kwargs, tuple(found.sites) + bias_sites, output, layout,
                       tuple(found.refused.items()), (input_size, input_size), found.attention)
    default = (default_site(found.sites, found.norms, found.shapes) if default_layer is None
               else _check_layer(default_layer, found, names, f"default_layer= of {label}"))
    trailing = []  # the grid sites after the last token site: where a GAP + FC head can follow
    for s in reversed(found.sites):
        if s.prefix is not None or len(trailing) == 6:
            break
        trailing.append(s.name)
    gap = _gap_fc(apply, variables, input_size, trailing, found.shapes)
    biases = LinenBiases(tuple(b for _, b in found.biases), found.fullgrad)
    tapped = Tapped(apply, tuple(names), default, (), gap, () if found.fullgrad else tuple(s.name for s in bias_sites),
                    biases, tuple(attention_name(p, k) for p, k in found.attention))
    from .model import Model

    return Model.from_tapped(tapped, variables, name=label, input_size=input_size, mean=mean, std=std,
                             class_names=class_names, source=source)


__all__ = ["LinenApply", "LinenBiases", "Site", "default_site", "from_linen", "select_output"]
