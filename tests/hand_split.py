"""Reference CAM maps from a hand-written split of a model, to check an adapter's tapped forward against.

A split is two plain functions: ``features(x) -> a`` (N, h, w, K), the activations at the layer, and ``head(x, a)
-> logits``, the rest of the network (``x`` is passed because a layer inside a residual block needs the skip path).
The activations, the target scores' gradients (one ``jax.vjp`` of ``head``), ShapleyCAM's Hessian-vector product
and the replays all come from these two functions; each method's own formula (``METHODS[name].fn``) then makes
the map, vmapped over the images, and is reduced as the driver reduces it. No tap, no interceptor: what differs from
``jaxcam.explain(..., raw=True)`` is only how the activations, gradients and replays were obtained.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam import targets
from jaxcam.methods import METHODS
from jaxcam.methods.base import Context, Inputs, channel_sum, first_component


def reference_raw_maps(features, head, x, methods, batch_size=8):
    """``{method: (N, h, w)}`` raw maps for each method at the split's layer, each image's predicted class, and
    the logits; computed in one jitted function (the split's functions are traced, never the adapter's)."""
    maps, logits = jax.jit(lambda v: _reference(features, head, v, tuple(methods), batch_size))(x)
    return {k: np.asarray(v) for k, v in maps.items()}, np.asarray(logits)


def _reference(features, head, x, methods, batch_size):
    a = features(x)
    logits = head(x, a)
    cls = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    key = jax.random.key(0)
    out = {}
    for name in methods:
        spec = METHODS[name]
        score = targets.resolve(spec.target)
        grads = hvp = None
        if spec.gradients:
            _, vjp = jax.vjp(lambda t: head(x, t), a)
            (grads,) = vjp(jax.vmap(jax.grad(score))(logits, cls))
        if spec.hvp:
            def grad_at(t):
                return jax.grad(lambda u: jnp.sum(jax.vmap(score)(head(x, u), cls)))(t)
            hvp = jax.jvp(grad_at, (a,), (a,))[1]
        ctx = Context(replay=head, forward=lambda xb: head(xb, features(xb)), score=score, batch_size=batch_size)
        reduce = {"weighted": channel_sum, "projection": lambda t: first_component(t, "max_abs")}.get(
            spec.output, lambda m: m)
        keys = jnp.broadcast_to(key, x.shape[:1])
        out[name] = jax.vmap(lambda inp: reduce(spec.fn(inp, ctx)))(Inputs(a, grads, hvp, logits, cls, x, keys))
    return out, logits


def assert_maps_close(ours, want, tol=1e-5, label=""):
    """Equal to ``tol`` relative to the reference map's scale (raw maps are unnormalised)."""
    ours, want = np.asarray(ours, np.float64), np.asarray(want, np.float64)
    assert ours.shape == want.shape, (label, ours.shape, want.shape)
    scale = max(1.0, float(np.abs(want).max()))
    diff = float(np.abs(ours - want).max())
    assert diff <= tol * scale, f"{label}: max |diff| {diff:.3e} (scale {scale:.3e})"


def random_variables(module, size, seed=0):
    """Random variables of ``module`` without running its initialisers (no compilation): kernels ~ N(0, 1/fan_in),
    biases and LayerNorm offsets ~ N(0, 0.1), scales ~ 1 + N(0, 0.1), BatchNorm means ~ N(0, 0.1) and variances
    in [0.5, 1.5]."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        leaf = jax.tree_util.keystr(path)
        if "var'" in leaf:
            return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32)
        if "kernel" in leaf:
            fan_in = int(np.prod(s.shape[:-1]))
            return jnp.asarray(rng.standard_normal(s.shape) / np.sqrt(fan_in), jnp.float32)
        base = 1.0 if "scale" in leaf else 0.0
        return jnp.asarray(base + 0.1 * rng.standard_normal(s.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, dict(shapes))
