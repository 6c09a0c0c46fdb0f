"""SSA: semantic structure aware inference (Sun & Li, "SSA: Semantic Structure Aware Inference for Weakly
Pixel-Wise Dense Predictions without Cost", arXiv 2111.03392, 2021; Front. Comput. Sci. 19(2) 192702, 2025).

Parameter-free and training-free: positions of one object have similar features, more so the deeper the stage, so
a stage's feature affinity (its "semantic structure") tells where an immature CAM should spread. Per stage s:

    u_p = F_p / ||F_p||                     F the stage's (h*w, K) features, p a position
    S_pq = relu(u_p . u_q)                   cosine affinity, negatives dropped
    P = D^-1 S,  D = diag(sum_q S_pq)        row-stochastic (a position with all-zero features keeps its value)
    polished_s = P relu(resize(CAM, h x w))  each position takes the affinity-weighted mean of the CAM
    SSA = minmax(mean_s layer_map(polished_s))   the polished stages fused as every multi-layer CAM in jaxcam

The affinity, its row normalisation and the fusion are [ours]: the paper's text beyond its abstract could not be
read; the abstract states cosine-like "semantic correlation" between positions, a dot product with the immature
CAM, and fusion of the polished CAMs of several backbone stages, all parameter-free.

Two forms:
- ``ssa`` (the registered method): per layer, that layer's base CAM (Grad-CAM by default, option ``base``)
  polished with that layer's structure; ``layer=[...]`` fuses the stages through the driver's usual fusion.
  Cost 1F + 1B + one (h*w)^2 affinity per layer (memory (h*w)^2 floats per image: 4 MB at 32x32 positions).
- ``ssa_stages`` (the paper's reading: one immature CAM, from the deepest stage, polished by every stage): a
  pure function of every stage's ``Inputs`` at once, for a driver kind that passes all requested layers together.

Parity: no reference library; closed-form tests (block affinities give region means; orthogonal features give the
CAM back).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ..errors import InvalidArgumentError
from ..postprocess import postprocess, resize
from .base import Context, Inputs
from .basecam import base_cam

HIGHEST = jax.lax.Precision.HIGHEST


def structure(acts: jax.Array) -> jax.Array:
    """The row-stochastic affinity ``P`` (h*w, h*w) of one stage's activations (h, w, K): cosine similarity of the
    positions' feature vectors, negatives set to 0, rows normalised to sum 1. A position whose features are all
    zero has no affinity to anything and keeps only itself."""
    f = acts.reshape(-1, acts.shape[-1])
    norm = jnp.linalg.norm(f, axis=-1, keepdims=True)
    u = f / jnp.where(norm > 0, norm, 1.0)
    s = jax.nn.relu(jnp.matmul(u, u.T, precision=HIGHEST))
    s = s + jnp.diag((jnp.sum(s, axis=-1) == 0).astype(s.dtype))
    return s / jnp.sum(s, axis=-1, keepdims=True)


def polish(acts: jax.Array, cam: jax.Array) -> jax.Array:
    """A CAM (any size; resized bilinearly to the stage's grid, then ReLU) polished with the semantic structure of
    ``acts`` (h, w, K): ``P @ cam``, an (h, w) map."""
    h, w = acts.shape[:2]
    c = jax.nn.relu(resize(cam, (h, w)))
    return jnp.matmul(structure(acts), c.reshape(-1), precision=HIGHEST).reshape(h, w)


def fuse_stages(stages: Sequence[tuple[jax.Array, jax.Array]], size: tuple[int, int]) -> jax.Array:
    """SSA of one example from ``(acts (h_s, w_s, K_s), cam)`` pairs, one per stage: each CAM polished with its
    stage's structure, then fused at ``size`` as jaxcam fuses layers (per stage relu, min-max, resize; mean;
    min-max). Returns an (H, W) map in [0, 1]."""
    if not stages:
        raise InvalidArgumentError("SSA needs at least one stage: a list of (activations, CAM) pairs")
    return postprocess([polish(a, c) for a, c in stages], size)


def ssa(inp: Inputs, ctx: Context, base: str = "gradcam") -> jax.Array:
    """SSA at one layer (the registered method): the layer's ``base`` CAM (see
    :data:`jaxcam.methods.basecam.BASE_CAMS`) polished with the layer's own semantic structure; returns the raw
    (h, w) map. With several layers the driver fuses them, which is :func:`fuse_stages` of the per-layer pairs."""
    return polish(inp.acts, base_cam(inp, ctx, base))


def ssa_stages(inputs: Sequence[Inputs], ctx: Context, base: str = "gradcam") -> jax.Array:
    """SSA as the paper describes it, for one example seen at several stages (``inputs``, one per layer, any
    order): the immature CAM is the ``base`` CAM of the stage with the fewest positions (the deepest stage of a
    CNN; on a tie the last given), polished by every stage's structure and fused at the input size."""
    if not inputs:
        raise InvalidArgumentError("ssa_stages needs the Inputs of at least one layer")
    deepest = min(range(len(inputs)), key=lambda i: (inputs[i].acts.shape[0] * inputs[i].acts.shape[1], -i))
    cam = base_cam(inputs[deepest], ctx, base)
    return fuse_stages([(inp.acts, cam) for inp in inputs], inputs[0].image.shape[:2])
