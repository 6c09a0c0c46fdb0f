"""What every adapter (NNX, Equinox, plain functions) decides the same way: which calls become sites, what they are
named, which layer is the default, where CAM's closed form holds, and how the logits are read from the output.

Discovery runs the adapted forward once under ``jax.eval_shape`` with every candidate tapped under a provisional
name ``<path>#<call>`` and records what each call returned (nothing is computed). :func:`name_calls` then names
each site by its path alone when that submodule (or marker) is called once, and keeps the call index when it is
called several times (shared weights: ``block#0``, ``block#1``), so every call stays addressable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InvalidArgumentError, LayerNotCalledError, UnknownLayerError
from jax.extend.core import get_opaque_trace_state

from ..tapped import replay, site_shapes
from .tokens import TokenGrid, patch_grid, token_grid

CALL = "#"


def check_size(input_size) -> int:
    """``input_size`` validated: the side in pixels of the square input the model is adapted at (>= 32, as
    :meth:`Model.check_input` requires of images)."""
    if not isinstance(input_size, (int, np.integer)) or isinstance(input_size, bool) or input_size < 32:
        raise InvalidArgumentError(f"input_size must be an int >= 32 (the model's square input side in pixels), got "
                                   f"{input_size!r}")
    return int(input_size)


def provisional(path: str, call: int) -> str:
    """The name discovery gives the ``call``-th call of ``path``."""
    return f"{path}{CALL}{call}"


NESTED = ("runs inside a transformation within the model (its own jax.vmap, jax.jit, lax.scan or jax.checkpoint, "
          "e.g. nnx.scan / nnx.remat / eqx.filter_vmap), where its activation lives in another trace and cannot be "
          "tapped from outside")


def here():
    """The current trace, to tell a tap in the forward's own trace from one inside a nested transformation."""
    return get_opaque_trace_state()


def discover(run, params, x) -> tuple[dict[str, jax.ShapeDtypeStruct], dict[str, str]]:
    """``(shapes of the tapped calls by provisional name, in completion order; {path: why it cannot be tapped})``
    from ``run(params, x, tap, nested)`` under ``jax.eval_shape``: no compute."""
    nested: dict[str, str] = {}
    order: list[str] = []  # call order (eval_shape's dict output comes back with sorted keys)

    def fn(p, v):
        seen = {}

        def tap(site, a):
            if site not in seen:
                order.append(site)
            seen[site] = a
            return a

        run(p, v, tap, nested)
        return seen

    shapes = jax.eval_shape(fn, params, x)
    return {s: shapes[s] for s in order}, nested


def name_calls(seen: Mapping[str, jax.ShapeDtypeStruct]) -> dict[str, jax.ShapeDtypeStruct]:
    """Provisional ``path#call`` names (in completion order) to final names: ``path`` for a path called once,
    ``path#call`` for each call of a path called several times."""
    calls: dict[str, int] = {}
    for name in seen:
        path = name.rsplit(CALL, 1)[0]
        calls[path] = calls.get(path, 0) + 1
    return {(name.rsplit(CALL, 1)[0] if calls[name.rsplit(CALL, 1)[0]] == 1 else name): s for name, s in seen.items()}


def repeated(seen: Iterable[str]) -> frozenset[str]:
    """The paths called more than once among provisional names."""
    paths = [name.rsplit(CALL, 1)[0] for name in seen]
    return frozenset(p for p in paths if paths.count(p) > 1)


def token_sites(found: Mapping[str, jax.ShapeDtypeStruct], input_size: int, patch, prefix) -> dict[str, int]:
    """``{name: prefix tokens}`` of the calls whose output is a ViT token sequence ``(N, prefix + h*w, C)`` holding
    the patch grid of an ``input_size`` input (none without a ``patch`` size)."""
    out = {}
    for name, s in found.items():
        tg = token_grid(tuple(s.shape), (input_size, input_size), patch, prefix) if patch is not None else None
        if tg is not None and jnp.issubdtype(s.dtype, jnp.floating):
            out[name] = tg.prefix
    return out


def as_grids(found: Mapping[str, jax.ShapeDtypeStruct], tokens: Mapping[str, int], input_size: int,
             patch) -> dict[str, jax.ShapeDtypeStruct]:
    """``found`` with each token site's shape replaced by the shape of its grid ``(N, h, w, C)``."""
    out = dict(found)
    for name in tokens:
        s = found[name]
        h, w = patch_grid((input_size, input_size), patch)
        out[name] = jax.ShapeDtypeStruct((s.shape[0], h, w, s.shape[-1]), s.dtype)
    return out


def through_tap(tap, name: str, out, prefix: int | None, patch, image_hw):
    """``tap(name, out)`` for a grid; for tokens (``prefix`` not None) the tap sees the patch grid and the model
    continues with the tokens it implies (prefix tokens kept; a tap returning its input changes nothing)."""
    if prefix is None:
        return tap(name, out)
    h, w = patch_grid(image_hw, patch)
    if out.ndim != 3 or out.shape[1] != prefix + h * w:
        raise InvalidArgumentError(f"layer {name!r} outputs {tuple(out.shape)}, not {prefix} prefix tokens + a "
                                   f"{h}x{w} patch grid for a {image_hw[0]}x{image_hw[1]} input; explain at the "
                                   "input size the model was adapted for")
    grid = TokenGrid(prefix, h, w)
    g = grid.to_grid(out)
    new = tap(name, g)
    return out if new is g else grid.from_grid(out, new)


def vit_default(sites: Sequence[str], tokens: Mapping[str, int], norms: Iterable[str]) -> str | None:
    """A ViT's default layer: the first LayerNorm of the last block with two of them among the token sites
    (pytorch-grad-cam's ``blocks[-1].norm1``), since the last block's output has zero gradient on the patch
    tokens when only the prefix token reaches the classifier. None when the sites hold no such block."""
    groups: dict[str, list[str]] = {}
    norms = set(norms)
    for name in sites:
        if name in tokens and name.rsplit(CALL, 1)[0] in norms:
            groups.setdefault(name.rsplit(CALL, 1)[0].rsplit(".", 1)[0], []).append(name)
    blocks = [names for names in groups.values() if len(names) >= 2]
    return blocks[-1][0] if blocks else None


def is_grid(s, batch: int) -> bool:
    """Whether an activation is a channels-last grid ``(N, h, w, K)`` of the batch, i.e. a CAM layer."""
    return len(getattr(s, "shape", ())) == 4 and s.shape[0] == batch and jnp.issubdtype(s.dtype, jnp.floating)


def choose_sites(found: Mapping[str, jax.ShapeDtypeStruct], defined: Sequence[str], batch: int, layers,
                 default_layer, model: str, nested: Mapping[str, str] | None = None,
                 preferred: str | None = None) -> tuple[tuple[str, ...], str]:
    """``(sites, default site)`` offered as ``layer=``: ``layers`` (validated) or every grid call found, in call
    order; the default is ``default_layer``, else ``preferred`` when it is a site (a ViT's, :func:`vit_default`),
    else the last grid site with more than one position (the features before the classifier head).

    ``found``: final names -> activation shapes; ``defined``: every path the model defines (a defined path missing
    from ``found`` is never called; ``nested``: paths whose calls run inside a nested transformation, with why).
    Every refusal names the layer and lists the valid ones."""
    grids = [n for n, s in found.items() if is_grid(s, batch)]
    if not grids:
        vit = any(len(s.shape) == 3 for s in found.values())
        raise InvalidArgumentError(f"{model} has no layer whose output is a feature map (N, h, w, K): none of its "
                                   f"calls ({', '.join(found) or 'none'}) returns a channels-last batch of grids"
                                   + ("; for a ViT pass patch_size= (and prefix_tokens= if needed) to map its tokens "
                                      "to patch grids" if vit else ""))
    if layers is None:
        sites = tuple(grids)
    else:
        if isinstance(layers, str) or not isinstance(layers, Iterable):
            raise InvalidArgumentError(f"layers must be a list of layer names (or None for every feature map), got "
                                       f"{type(layers).__name__} {layers!r}")
        chosen = [check_layer(ly, found, defined, batch, model, nested) for ly in layers]
        order = list(found)
        sites = tuple(sorted(dict.fromkeys(chosen), key=order.index))
        if not sites:
            raise UnknownLayerError("(empty list)", grids, model)
    if default_layer is None and preferred in sites:
        return sites, preferred
    if default_layer is None:  # the last map with more than one position (a 1x1 map after pooling explains nothing)
        spatial = [n for n in sites if int(np.prod(found[n].shape[1:3])) > 1]
        return sites, (spatial or sites)[-1]
    default = check_layer(default_layer, found, defined, batch, model, nested)
    if default not in sites:
        raise UnknownLayerError(default_layer, sites, f"default_layer of {model} (not among layers=)")
    return sites, default


def check_layer(layer, found: Mapping[str, jax.ShapeDtypeStruct], defined: Sequence[str], batch: int,
                model: str, nested: Mapping[str, str] | None = None) -> str:
    """``layer`` if it names a grid call of the forward; otherwise the error that says what it is instead."""
    grids = [n for n, s in found.items() if is_grid(s, batch)]
    if not isinstance(layer, str):
        raise InvalidArgumentError(f"a layer of {model} is named by a string (its path), got "
                                   f"{type(layer).__name__} {layer!r}; valid layers: {', '.join(grids)}")
    if layer in found:
        if not is_grid(found[layer], batch):
            s = found[layer]
            hint = (" (tokens (N, T, C): for a ViT pass patch_size= and, if needed, prefix_tokens= so they map to a "
                    "patch grid)" if len(s.shape) == 3 else "")
            raise InvalidArgumentError(f"layer {layer!r} of {model} outputs {s.dtype.name}{list(s.shape)}, not a "
                                       f"feature map (N, h, w, K){hint}; pick one of: {', '.join(grids)}")
        return layer
    calls = [n for n in found if n.rsplit(CALL, 1)[0] == layer]
    if calls:
        raise UnknownLayerError(layer, calls, f"{model}: {layer!r} is called {len(calls)} times (shared weights), "
                                "so name one call")
    if nested and layer.rsplit(CALL, 1)[0] in nested:
        raise InvalidArgumentError(f"layer {layer!r} of {model} {nested[layer.rsplit(CALL, 1)[0]]}; pick a layer "
                                   f"outside it: {', '.join(grids)}")
    if layer in defined:
        raise LayerNotCalledError(layer, grids, f"{model}: the forward never calls it (an unused submodule, a "
                                  "branch not taken, or called through a method other than __call__); pick a layer "
                                  "the forward runs")
    raise UnknownLayerError(layer, grids, model)


def closed_form_sites(apply: Callable, params, input_size: int, sites: Sequence[str]) -> frozenset:
    """The sites where CAM's closed form holds: the logits are an affine function of the activation that does not
    depend on where a value sits in the grid (global average pooling then a linear classifier, possibly after a
    per-channel affine map such as an inference BatchNorm). Checked numerically on one zero image: with random
    activations ``a1``, ``a2`` and a random spatial permutation ``P``, the head-only replays ``g`` must satisfy
    ``g(a1 + a2) - g(a2) = g(a1) - g(0)`` (affine) and ``g(P a1) = g(a1)`` (pooled), to float32 precision. A ReLU,
    a convolution or a skip path after the site breaks one of them for random inputs. Only the last sites are
    tried, walking back from the last until one fails (the closed form can only hold right before the head); each
    try is one compiled batch of five head-only passes."""
    x = jnp.zeros((1, input_size, input_size, 3), jnp.float32)
    shapes = site_shapes(apply, params, x, sites)
    rng = np.random.default_rng(0)
    ok = []
    for site in reversed(tuple(sites)):
        _, h, w, k = shapes[site].shape
        a1, a2 = rng.normal(size=(2, h, w, k)).astype(np.float32)
        perm = rng.permutation(h * w)
        moved = a1.reshape(h * w, k)[perm].reshape(h, w, k)
        a = jnp.asarray(np.stack([np.zeros_like(a1), a1, a2, a1 + a2, moved]))
        g = np.asarray(_replays(apply, site)(params, jnp.repeat(x, 5, axis=0), a.astype(shapes[site].dtype)),
                       np.float64)
        tol = 1e-4 * (1.0 + np.abs(g).max())
        affine = np.abs((g[3] - g[2]) - (g[1] - g[0])).max() <= tol
        pooled = np.abs(g[4] - g[1]).max() <= tol
        if not (affine and pooled):
            break
        ok.append(site)
    return frozenset(ok)


def _replays(apply, site):
    return jax.jit(lambda p, x, a: replay(apply, p, x, site, a))


class TokenSites:
    """Mixin for an adapter's apply holding ``tokens`` (``(site, prefix)`` of its ViT token sites): the
    ``token_sites`` that ``Model.token_sites`` and ``jaxcam.layers`` read."""

    @property
    def token_sites(self) -> frozenset:
        return frozenset(name for name, _ in self.tokens)


def select_output(out, output, model: str = "the model"):
    """The logits in a model's output: the output itself when ``output`` is None, ``out[output]`` (a tuple index or
    a dict key; an attribute such as ``logits`` for objects), a sequence of such steps (a key path into nested
    outputs), or ``output(out)`` for a function."""
    if output is None:
        return out
    if callable(output):
        return output(out)
    if isinstance(output, (tuple, list)) and output:
        for step in output:
            out = select_output(out, step, model)
        return out
    if isinstance(output, (int, str)) and not isinstance(output, bool):
        if isinstance(out, (tuple, list)) and isinstance(output, int):
            return out[output]
        if isinstance(out, Mapping) and output in out:
            return out[output]
        if isinstance(output, str) and hasattr(out, output):
            return getattr(out, output)
        raise InvalidArgumentError(f"output={output!r} selects nothing in the output of {model} "
                                   f"({type(out).__name__}); pass an index, a key, an attribute name, a sequence of "
                                   "them or a function returning the logits")
    raise InvalidArgumentError(f"output must be None, an index, a key, a sequence of them or a function of the "
                               f"model's output returning the logits, got {type(output).__name__} {output!r}")


def check_logits(out, batch: int, model: str, output) -> None:
    """Refuse an output (after ``output=``) that is not a floating (N, C) logits array, saying what to pass."""
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != batch or not jnp.issubdtype(out.dtype, jnp.floating):
        got = (f"{out.dtype.name}{list(shape)}" if shape is not None else type(out).__name__)
        hint = ("pass output= (an index, a key such as 'logits', or a function of the output returning the "
                "(N, C) logits)" if output is None else f"output={output!r} must give (N, C) logits")
        raise InvalidArgumentError(f"{model} must return logits of shape (N, C) for a batch of {batch}, got {got}; "
                                   f"{hint}")


__all__ = ["NESTED", "TokenSites", "as_grids", "check_layer", "check_logits", "check_size", "choose_sites", "closed_form_sites",
           "discover", "here", "is_grid", "name_calls", "provisional", "repeated", "select_output", "through_tap",
           "token_sites", "vit_default"]
