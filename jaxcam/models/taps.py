"""Gradients at every bias-carrying layer in one backward: FullGrad's need, without hooks.

``bias_layers(model)`` lists the layers that add a per-channel bias (BatchNorm, whose effective bias is
``beta - mean * gamma / sqrt(var + eps)``, and convolutions with a bias), in forward order. ``tapped_forward``
runs the whole network with a zero-valued tap added to each such layer's output, so ``jax.vjp`` with respect to
the taps gives ``dS/d(output of layer l)`` for every layer at once. The taps are inserted on the freshly merged
module copy inside the pure function (its BatchNorm/Conv objects get a subclass whose call adds the tap), so the
model itself is never modified.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .model import Model, StageRange

_TAP = "_jaxcam_tap"


class _TappedBatchNorm(nnx.BatchNorm):
    def __call__(self, x, *args, **kwargs):
        return _tap(self, super().__call__(x, *args, **kwargs))


class _TappedConv(nnx.Conv):
    def __call__(self, x, *args, **kwargs):
        return _tap(self, super().__call__(x, *args, **kwargs))


def _tap(node, y):
    fn = node.__dict__.get(_TAP)
    return y if fn is None else fn(y)


def _tappable(node) -> bool:
    return isinstance(node, nnx.BatchNorm) or (isinstance(node, nnx.Conv) and node.bias is not None)


def _layers(module):
    return [(path, node) for path, node in nnx.iter_graph(module) if _tappable(node)]


def _effective_bias(node) -> jax.Array:
    """The per-channel bias a layer adds: BatchNorm's ``beta - mean * gamma / sqrt(var + eps)``, a conv's bias."""
    if isinstance(node, nnx.BatchNorm):
        gamma, beta, mean, var = (jnp.asarray(v[...], jnp.float32) for v in (node.scale, node.bias, node.mean, node.var))
        return beta - mean * gamma / jnp.sqrt(var + node.epsilon)
    return jnp.asarray(node.bias[...], jnp.float32)


def effective_biases(graphdef, params) -> list[jax.Array]:
    """The effective bias (C,) of every bias-carrying layer, in the order of :func:`bias_layers`, as a pure
    function of ``params``: traced inside a compiled program, so a program built for one model gives another
    model's FullGrad when called with that model's parameters (sanity checks randomise parameters exactly so)."""
    return [_effective_bias(node) for _, node in _layers(nnx.merge(graphdef, params))]


def bias_layers(model: Model) -> list[tuple[str, np.ndarray]]:
    """``[(path, effective bias (C,))]`` of every bias-carrying layer (order of the module graph), as NumPy."""
    return [(".".join(map(str, path)), np.asarray(_effective_bias(node)))
            for path, node in _layers(model.module())]


def tapped_forward(graphdef, params, x, taps=None, record=None):
    """Logits of the whole network with ``taps[i]`` added to the output of bias layer i (``record``, a dict, collects
    each layer's output shape under its index instead when ``taps`` is None)."""
    module = nnx.merge(graphdef, params)
    for i, (_, node) in enumerate(_layers(module)):
        node.__class__ = _TappedBatchNorm if isinstance(node, nnx.BatchNorm) else _TappedConv
        if taps is not None:
            node.__dict__[_TAP] = lambda y, d=taps[i]: y + d
        elif record is not None:  # keyed by graph order, which is the taps' order (not execution order)
            node.__dict__[_TAP] = lambda y, i=i: (record.__setitem__(i, jax.ShapeDtypeStruct(y.shape, y.dtype)), y)[1]
    for _, fn in module.stages():
        x = fn(x)
    return x


def tap_shapes(graphdef, params, x) -> list[jax.ShapeDtypeStruct]:
    """Output shapes of the bias layers, in the order of :func:`bias_layers` (the module graph's order)."""
    shapes = {}
    jax.eval_shape(lambda p, v: tapped_forward(graphdef, p, v, record=shapes), params, x)
    return [shapes[i] for i in range(len(shapes))]


def full_gradients(graphdef, params, x, score_sum):
    """``(logits, dS/dx, [dS/d(output of bias layer l)])`` from one forward and one backward to the input."""
    zeros = [jnp.zeros(s.shape, s.dtype) for s in tap_shapes(graphdef, params, x)]
    logits, vjp_fn = jax.vjp(lambda v, t: tapped_forward(graphdef, params, v, t), x, zeros)
    gx, gtaps = vjp_fn(jax.grad(score_sum)(logits))
    return logits, gx, gtaps


__all__ = ["StageRange", "bias_layers", "effective_biases", "full_gradients", "tap_shapes", "tapped_forward"]
