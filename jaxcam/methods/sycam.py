"""SyCAM (Luque-Cerpa, Polgreen, Rajan & Torfah, "Metric-Guided Synthesis of Class Activation Mapping", arXiv
2504.09998): a CAM whose channel weights are a synthesised expression (:mod:`jaxcam.sycam`). As a method it only
evaluates the expression it is given on the example's terminals; :func:`jaxcam.sycam.synthesize` finds one.

``explain(model, x, "sycam", method_options={"sycam": {"expression": "mean(G)"}})`` (an :class:`Expr`, a formula
string, or a path of a file written by :func:`jaxcam.sycam.save` given as ``pathlib.Path``). Cost: 1F + 1B, plus K
full forwards when the expression reads ``S`` and K head passes when it reads ``D``; a terminal the expression does
not read is never computed.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from ..errors import InvalidArgumentError
from ..sycam.expr import check_weights, evaluate, load
from .base import Context, Inputs
from .perturbation import ablation_drops, score_terms


def expression_of(value):
    """The :class:`jaxcam.sycam.Expr` an ``expression`` option names (an Expr, a formula, a saved file's Path)."""
    if value is None:
        raise InvalidArgumentError("sycam needs an expression: method_options={'sycam': {'expression': 'mean(G)'}} "
                                   "(a formula, a jaxcam.sycam.Expr, or pathlib.Path of a file from "
                                   "jaxcam.sycam.save); jaxcam.sycam.synthesize searches for one")
    if isinstance(value, Path):
        return load(value)
    return check_weights(value)


def terminal_values(inp: Inputs, ctx: Context, names) -> dict:
    """The named terminals of one example: ``A``, ``G``, ``G2``, ``G3`` (h, w, K); ``S``, ``D`` (K,)."""
    out = {}
    for name in names:
        if name == "A":
            out[name] = inp.acts
        elif name in ("G", "G2", "G3"):
            g = inp.grads
            out[name] = g if name == "G" else g * g if name == "G2" else g * g * g
        elif name == "S":
            out[name] = score_terms(inp, ctx)
        elif name == "D":
            out[name] = ablation_drops(inp, ctx)
    return out


def weights(e, values: dict, k: int) -> jax.Array:
    """Channel weights (..., K) of the expression from terminal values; non-finite weights become 0, so an
    expression that overflows gives a blank map rather than a NaN one."""
    w = evaluate(e, values)
    lead = next(iter(values.values())).shape[:-3] if any(v.ndim >= 3 for v in values.values()) else ()
    w = jnp.broadcast_to(jnp.asarray(w, jnp.float32), (*lead, k)) if jnp.ndim(w) == 0 else w
    return jnp.where(jnp.isfinite(w), w, 0.0)


def sycam(inp: Inputs, ctx: Context, expression=None) -> jax.Array:
    """``A * w`` with ``w`` the expression's channel weights on this example (the driver sums the channels)."""
    e = expression_of(expression)
    values = terminal_values(inp, ctx, sorted(e.terminals | {"A"}))
    return inp.acts * weights(e, values, inp.acts.shape[-1])[None, None, :]
