"""Perturbation-family methods. Every extra pass runs chunked inside the compiled program (``lax.map`` with
``batch_size``), so memory is bounded by the chunk, never by the number of channels or positions."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..postprocess import minmax, resize_align_corners
from .base import Context, Inputs, largest_magnitude_positive


def _masked_scores(inp: Inputs, ctx: Context, maps: jax.Array, channels: jax.Array) -> jax.Array:
    """Target score of ``x * minmax(upsample(maps_k))`` for each k in ``channels`` (Score-CAM's masks: bilinear
    with ``align_corners=True``, min-max eps 1e-8), one full forward each, chunked."""

    def score(k):
        mask = minmax(resize_align_corners(maps[..., k], inp.image.shape[:2]), 1e-8)
        return ctx.score(ctx.forward((inp.image * mask[..., None])[None])[0], inp.cls)

    return jax.lax.map(score, channels, batch_size=ctx.batch_size)


def scorecam(inp: Inputs, ctx: Context):
    """Score-CAM (Wang et al., CVPR-W 2020) as in pytorch-grad-cam 1.5.7: masks ``minmax(upsample(A_k))``
    (bilinear, align_corners), scores ``s_k = target(f(x * M_k))``, weights ``softmax_k(s)``, map ``sum_k w_k A_k``.
    Cost 1F + K full forwards, run ``batch_size`` at a time inside one program."""
    return inp.acts * jax.nn.softmax(score_terms(inp, ctx))[None, None]


def faster_scorecam(inp: Inputs, ctx: Context, top_fraction: float = 0.1):
    """Faster Score-CAM: Score-CAM restricted to the channels of largest spatial variance (``top_fraction`` of
    them, at least one); the softmax runs over those channels and the others get weight 0. Cost 1F + k forwards."""
    k = inp.acts.shape[-1]
    n = max(1, int(round(k * top_fraction)))
    _, top = jax.lax.top_k(jnp.var(inp.acts, axis=(0, 1)), n)
    w = jnp.zeros(k, inp.acts.dtype).at[top].set(jax.nn.softmax(_masked_scores(inp, ctx, inp.acts, top)))
    return inp.acts * w[None, None]


def ablationcam(inp: Inputs, ctx: Context):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020): ``w_k = (y - y_k) / y`` where ``y_k`` is the target score with
    channel k of A set to zero, computed by the head alone (K head passes, chunked; no backbone recomputation).
    pytorch-grad-cam 1.5.7 ablates to 0 when the activation tensor's minimum is 0 (every post-ReLU layer), which
    jaxcam matches; for layers with negative values it uses ``min - 1e7`` recomputed in place along each chunk (a
    chunk-order-dependent quirk): jaxcam follows the paper and ablates to 0 there too."""
    return inp.acts * ablation_drops(inp, ctx)[None, None]


def ablation_drops(inp: Inputs, ctx: Context) -> jax.Array:
    """Ablation-CAM's channel weights ``(y - y_k) / y`` (K,): K head passes, chunked. A zero target score gives
    zero weights, not NaN (the reference divides by 0)."""
    y = ctx.score(inp.logits, inp.cls)

    def ablated(k):
        a = inp.acts.at[..., k].set(0.0)
        return ctx.score(ctx.replay(inp.image[None], a[None])[0], inp.cls)

    yk = jax.lax.map(ablated, jnp.arange(inp.acts.shape[-1]), batch_size=ctx.batch_size)
    safe = jnp.where(y == 0, 1.0, y)
    return jnp.where(y == 0, 0.0, (y - yk) / safe)


def score_terms(inp: Inputs, ctx: Context) -> jax.Array:
    """Score-CAM's per-channel target scores ``target(f(x * minmax(upsample(A_k))))`` (K,), before the softmax."""
    return _masked_scores(inp, ctx, inp.acts, jnp.arange(inp.acts.shape[-1]))


def reciprocam(inp: Inputs, ctx: Context, gaussian: bool = False):
    """Recipro-CAM (Byun & Lee, 2022): for each position (i, j) keep only ``A[i, j, :]`` (or, with ``gaussian``,
    its 3x3 neighbourhood weighted [[1,2,1],[2,4,2],[1,2,1]]/16), run the head, and set ``L(i, j) =
    softmax(head)_c``. Gradient-free; h*w head passes, chunked. Returns the (h, w) map."""
    h, w, _ = inp.acts.shape
    ii, jj = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
    kernel = jnp.asarray([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0

    def prob(ij):
        i, j = ij[0], ij[1]
        if gaussian:
            di, dj = ii - i, jj - j
            near = (jnp.abs(di) <= 1) & (jnp.abs(dj) <= 1)
            weight = jnp.where(near, kernel[jnp.clip(di + 1, 0, 2), jnp.clip(dj + 1, 0, 2)], 0.0)
        else:
            weight = ((ii == i) & (jj == j)).astype(inp.acts.dtype)
        logits = ctx.replay(inp.image[None], (inp.acts * weight[..., None])[None])[0]
        return jax.nn.softmax(logits)[inp.cls]

    positions = jnp.stack([ii.ravel(), jj.ravel()], axis=-1)
    return jax.lax.map(prob, positions, batch_size=ctx.batch_size).reshape(h, w)


def sscam(inp: Inputs, ctx: Context, num_samples: int = 35, std: float = 2.0):
    """SS-CAM (Wang et al., "Smoothed Score-CAM", arXiv 2006.14255), as torchcam 0.5.0 defines it: for each of
    ``num_samples`` draws, Gaussian noise (``std``, at input resolution) is added to every upsampled activation map
    before Score-CAM's min-max masking; ``w = softmax_k(mean over draws of target(f(x * M_k)))``, map
    ``sum_k w_k A_k``. Noise comes from the example's key. Cost 1F + num_samples * K forwards, chunked."""
    h_w = inp.image.shape[:2]
    k = inp.acts.shape[-1]
    up = resize_align_corners(inp.acts, h_w)  # (H, W, K)
    keys = jax.random.split(inp.key, num_samples)

    def score(job):
        s, c = job // k, job % k
        m = minmax(up[..., c] + std * jax.random.normal(keys[s], h_w, up.dtype), 1e-8)
        return ctx.score(ctx.forward((inp.image * m[..., None])[None])[0], inp.cls)

    scores = jax.lax.map(score, jnp.arange(num_samples * k), batch_size=ctx.batch_size).reshape(num_samples, k)
    return inp.acts * jax.nn.softmax(scores.mean(axis=0))[None, None]


def decomcam(inp: Inputs, ctx: Context, channels: float = 0.1, components: int = 10):
    """DecomCAM (decomposition and integration; [ours] reconstruction, no reference library): keep the ``channels``
    fraction of channels with the largest Grad-CAM weight, decompose their (h*w, k) centred map matrix by SVD into
    ``components`` orthogonal sub-saliency maps (sign: largest magnitude positive), score each as a Score-CAM mask
    (``target(f(x * minmax(upsample(map))))``), and integrate ``sum_q softmax_q(score) * relu(map_q)``. Returns the
    (h, w) map. Cost 1F + 1B + ``components`` forwards."""
    h, w, k = inp.acts.shape
    n = max(1, int(round(k * channels)))
    _, top = jax.lax.top_k(jnp.mean(inp.grads, axis=(0, 1)), n)
    x = inp.acts[..., top].reshape(h * w, n)
    x = x - jnp.mean(x, axis=0, keepdims=True)
    u, s, _ = jnp.linalg.svd(x, full_matrices=False)
    q = min(components, min(h * w, n))
    maps = jax.vmap(largest_magnitude_positive)((u[:, :q] * s[None, :q]).T.reshape(q, h, w))
    wts = jax.nn.softmax(_masked_scores(inp, ctx, jnp.moveaxis(maps, 0, -1), jnp.arange(q)))
    return jnp.tensordot(wts, jax.nn.relu(maps), axes=1)
