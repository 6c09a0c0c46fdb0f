"""The jaxcam side of the benchmark suite: the calls that are timed, the bare jitted forward (the physical floor),
and ahead-of-time compilation of an ``explain`` program (its compile time apart from any run, and the compiled
XLA program's ``memory_analysis()``).

No torch here: imported by ``benchmarks/workloads.py`` and ``benchmarks/probe.py``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

import jaxcam

FLOAT_DTYPES = ("float32", "bfloat16")


def explain_fn(model, x, method, **kw):
    """A blocking call of :func:`jaxcam.explain` on the preprocessed batch ``x`` (maps, or a dict of maps)."""
    return lambda: jax.block_until_ready(jaxcam.explain(model, x, method, preprocessed=True, **kw))


def _program(model, method, kw):
    """The jitted program ``explain(model, x, method, **kw)`` runs, and its argument list builder."""
    from jaxcam import _explain as E

    kw = dict(kw)
    layer = kw.pop("layer", None)
    try:
        cfg, _ = E._configure(model, method, layer, **kw)
        return E._program(model.tapped, cfg)
    except (AttributeError, TypeError):
        if not isinstance(method, str):
            raise
        return jaxcam.explainer(model, method, layer=layer, **kw).program  # the public route, one method


def compile_explain(model, x, method, **kw):
    """Compile ``explain(model, x, method, **kw)``'s program ahead of time: ``(seconds, compiled)``. The compiled
    executable lands in JAX's compilation caches, so the first ``explain`` call afterwards only traces."""
    program = _program(model, method, kw)
    t0 = time.perf_counter()
    compiled = program.lower(model.params, x, None, jax.random.key(0)).compile()
    return time.perf_counter() - t0, compiled


def memory_analysis(compiled) -> dict:
    """The compiled program's memory analysis (bytes) as a plain dict."""
    ma = compiled.memory_analysis()
    if ma is None:
        return {"unavailable": "memory_analysis() returned None on this backend"}
    fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "generated_code_size_in_bytes")
    return {f: int(getattr(ma, f)) for f in fields if hasattr(ma, f)}


def forward_fn(model, x, dtype: str = "float32"):
    """The bare jitted forward of ``model`` on ``x`` (logits only, nothing else): the physical floor of any CAM.
    ``dtype="bfloat16"`` casts parameters and input as ``compute_dtype="bfloat16"`` does. Returns
    ``(blocking call, jitted function)``."""
    if dtype == "float32":
        fwd = jax.jit(lambda p, v: model.forward_fn.func(p, v))
        params = model.params
    else:
        dt = jnp.dtype(dtype)
        fwd = jax.jit(lambda p, v: model.forward_fn.func(p, v.astype(dt)).astype(jnp.float32))
        params = jax.tree.map(lambda a: a.astype(dt) if jnp.issubdtype(a.dtype, jnp.floating) else a, model.params)
        params = jax.block_until_ready(params)
    return (lambda: jax.block_until_ready(fwd(params, x))), fwd
