"""AD-CAM: attention-based class activation diffusion on Vision Transformers (Huang, Wang, Sun & Zhang,
"Attention-based Class Activation Diffusion for Weakly-Supervised Semantic Segmentation", arXiv 2211.10931, 2022).

A CAM of a ViT covers object parts; the self-attention between patches links the rest of the object to them. The
paper couples the two "conservatively" (the attention between two patches is reduced when their attentions to
common neighbours differ: patches with different neighbourhoods rarely depend on each other) and "convincingly"
(each patch's activation is diffused to its neighbours in proportion to the refined attention). For one example:

    A = mean over layers and heads of the attention probabilities, patch-to-patch block (prefix tokens dropped)
    A <- (A + A^T) / 2                                  symmetric affinity
    C_pq = a_p . a_q / (||a_p|| ||a_q||)                  similarity of the neighbourhoods (rows a_p of A)
    R = A * C                                           conservative: attention kept where neighbourhoods agree
    T = D^-1 R,  D = diag(sum_q R_pq)                     row-stochastic (an isolated patch keeps its value)
    AD-CAM = T^t cam                                    t = ``steps`` diffusion steps of the (h*w,) base CAM

Everything after "A" is [ours]: only the abstract could be read, and it states the two ideas, not their formulas.
The choices keep the properties the abstract asks for: identity attention returns the base CAM unchanged (no
patch depends on another), a CAM that is constant on a group of patches attending only to each other stays so,
and attention across groups with different neighbourhoods is damped before it spreads activation.

The base CAM is a gradient method's map at the ViT layer (Grad-CAM by default, tokens already mapped to the
(h, w) grid by the adapter). Cost: the base method's 1F + 1B, the attention probabilities captured in that same
forward, and one (h*w)^2 diffusion per step. Parity: no reference library; closed-form tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..errors import InvalidArgumentError
from .base import Context, Inputs
from .basecam import base_cam

HIGHEST = jax.lax.Precision.HIGHEST


def refine(attn: jax.Array) -> jax.Array:
    """The conservative affinity ``R`` (n, n) of a patch-to-patch attention block (n, n): the symmetrised
    attention times the cosine similarity of the patches' attention rows."""
    a = 0.5 * (attn + attn.T)
    norm = jnp.linalg.norm(a, axis=-1, keepdims=True)
    u = a / jnp.where(norm > 0, norm, 1.0)
    return a * jnp.matmul(u, u.T, precision=HIGHEST)


def transition(r: jax.Array) -> jax.Array:
    """Rows of a non-negative affinity (n, n) normalised to sum 1; a row of zeros becomes the identity row."""
    r = r + jnp.diag((jnp.sum(r, axis=-1) == 0).astype(r.dtype))
    return r / jnp.sum(r, axis=-1, keepdims=True)


def diffuse(attn: jax.Array, cam: jax.Array, prefix: int | None = None, steps: int = 1) -> jax.Array:
    """AD-CAM of one example.

    Args:
      attn: (L, heads, T, T) attention probabilities of L blocks (rows: queries, softmax over keys), T = prefix +
        h*w tokens in the adapter's order (prefix tokens first, then the patches row-major).
      cam: (h, w) base CAM on the patch grid.
      prefix: the number of prefix tokens (CLS, distillation, registers); None: ``T - h*w``.
      steps: diffusion steps t >= 1.

    Returns the diffused (h, w) map (same scale as ``cam``; post-processing normalises it)."""
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        raise InvalidArgumentError(f"AD-CAM needs attention probabilities of shape (layers, heads, T, T), got "
                                   f"{tuple(attn.shape)}")
    if cam.ndim != 2:
        raise InvalidArgumentError(f"AD-CAM needs the base CAM on the patch grid, shape (h, w), got {tuple(cam.shape)}")
    h, w = cam.shape
    tokens = attn.shape[-1]
    prefix = tokens - h * w if prefix is None else prefix
    if not isinstance(prefix, int) or isinstance(prefix, bool) or prefix < 0 or prefix + h * w != tokens:
        raise InvalidArgumentError(f"AD-CAM: the attention covers {tokens} tokens, which is not prefix {prefix!r} + "
                                   f"{h}x{w} patches; pass the attention of the layer whose grid the CAM is on and "
                                   "the model's prefix-token count (1 for CLS, 0 for GAP heads)")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InvalidArgumentError(f"AD-CAM steps must be an int >= 1, got {steps!r}")
    a = jnp.mean(attn.astype(jnp.float32), axis=(0, 1))[prefix:, prefix:]
    t = transition(refine(a))
    v = cam.reshape(-1)
    for _ in range(steps):
        v = jnp.matmul(t, v, precision=HIGHEST)
    return v.reshape(h, w)


def from_inputs(inp: Inputs, ctx: Context, attn: jax.Array, base: str = "gradcam", steps: int = 1) -> jax.Array:
    """AD-CAM at one ViT layer: the layer's ``base`` CAM (see :data:`jaxcam.methods.basecam.BASE_CAMS`; negative
    evidence removed) diffused with ``attn`` (L, heads, T, T), the attention probabilities the driver captured in
    the same forward. The prefix count is ``T - h*w``. Returns the raw (h, w) map."""
    return diffuse(attn, base_cam(inp, ctx, base), None, steps)


def adcam(inp: Inputs, ctx: Context, base: str = "gradcam", steps: int = 1) -> jax.Array:
    """The registered method: :func:`from_inputs` with the attention probabilities the driver captured at the
    model's attention sites (``Inputs.attn``, (L, heads, T, T)). Raw (h, w) map."""
    if inp.attn is None:
        raise InvalidArgumentError("adcam needs a Vision Transformer's attention probabilities (Inputs.attn)")
    return from_inputs(inp, ctx, inp.attn, base, steps)
