"""The tapped forward of jaxcam's own NNX models (:mod:`jaxcam.tapped`), FullGrad's bias sites included.

A built-in model is a list of named stages, so its ``apply`` taps each stage's output under the stage's name.
FullGrad reads every layer that adds a per-channel bias (BatchNorm, whose effective bias is
``beta - mean * gamma / sqrt(var + eps)``, and convolutions with a bias): ``apply`` also taps their outputs, as
sites ``bias:<i>`` in the module graph's order, so one backward gives ``dS/d(output of layer l)`` for all of them.
The taps are inserted on the freshly merged module copy inside the pure function (its BatchNorm/Conv objects get a
subclass whose call taps), so the model itself is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_TAP = "_jaxcam_tap"
BIAS = "bias:"


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


def bias_layers(model) -> list[tuple[str, np.ndarray]]:
    """``[(path, effective bias (C,))]`` of every bias-carrying layer of a built-in ``model`` (graph order), as NumPy."""
    return [(".".join(map(str, path)), np.asarray(_effective_bias(node)))
            for path, node in _layers(model.module())]


@dataclass(frozen=True)
class StagesApply:
    """The tapped forward (:mod:`jaxcam.tapped`) of a jaxcam NNX model built of named stages: ``tap(stage, a)``
    after every stage but the classifier, and ``tap("bias:<i>", y)`` after the i-th bias-carrying layer (graph
    order), FullGrad's sites. The taps are inserted on the freshly merged copy inside the pure function, so the
    model itself is never modified, and they are called in this function's own trace."""

    graphdef: nnx.GraphDef

    def __call__(self, params, x, tap):
        module = nnx.merge(self.graphdef, params)
        for i, (_, node) in enumerate(_layers(module)):
            node.__class__ = _TappedBatchNorm if isinstance(node, nnx.BatchNorm) else _TappedConv
            node.__dict__[_TAP] = lambda y, site=f"{BIAS}{i}": tap(site, y)
        stages = module.stages()
        for name, fn in stages[:-1]:
            x = tap(name, fn(x))
        return stages[-1][1](x)


@dataclass(frozen=True)
class StageBiases:
    """``params -> {"bias:<i>": effective bias (C,)}`` of a jaxcam NNX model, traced (see :func:`effective_biases`)."""

    graphdef: nnx.GraphDef

    def __call__(self, params):
        return {f"{BIAS}{i}": b for i, b in enumerate(effective_biases(self.graphdef, params))}


def bias_sites(module) -> tuple[str, ...]:
    """The FullGrad sites of a jaxcam NNX model (a module), in graph order."""
    return tuple(f"{BIAS}{i}" for i in range(len(_layers(module))))


__all__ = ["StageBiases", "StagesApply", "bias_layers", "bias_sites", "effective_biases"]
