"""Perturbation-family methods. Every extra pass runs chunked inside the compiled program, ``batch_size`` passes at
a time, so memory is bounded by the chunk, never by the number of channels or positions.

Repeated work is skipped exactly, with static shapes. Score-CAM's mask of channel k is a function of its
activation map ``A_k`` alone, so channels whose (h, w) maps are bitwise identical (after ``-0.0 -> 0.0``) share
one mask and one score: :func:`distinct_maps` finds them (a per-channel fingerprint, an argsort, then an exact
comparison of every channel with the first channel of its fingerprint run, so a fingerprint collision can only
miss a merge, never merge two different maps), puts one representative per group first and counts them (``u``);
a ``lax.while_loop`` runs the chunks below ``u`` only, and the scores are gathered back per channel. On the
embedded model's default layer most repeats are constant channels (all zero after ReLU6), which all give the
all-zero mask. Channels whose maps differ but whose masks would coincide mathematically (one map a positive
multiple of another) are not merged: their masks agree only up to rounding. On the embedded model and the four
sample photos the distinct (h, w) maps are exactly the bitwise-distinct 224x224 masks (527, 647, 901 and 581 of
1280), so comparing the small maps loses nothing against comparing the masks themselves. Under ``jax.vmap`` over examples the loop
runs as many chunks as the example that needs most (still no more than without deduplication); under
``jax.lax.map`` (the driver's choice on CPU) each example runs its own count. The last chunk is padded with
a repeat of the first representative, so the forwards run are ``ceil(u / batch_size) * batch_size`` (against
K without deduplication); :func:`scorecam_forward_count` reports ``u`` per image."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..postprocess import minmax, resize_align_corners
from .base import Context, Inputs, largest_magnitude_positive

_GOLDEN = 0x9E3779B1  # fingerprint constants (odd; any fixed values work: equality is verified exactly)
_MIX = 0x85EBCA6B


def distinct_maps(maps: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Group the channels of ``maps`` (h, w, n) whose (h, w) maps are bitwise identical (``-0.0`` counts as
    ``0.0``): returns ``(first, slot, u)`` where ``first`` (n,) lists one representative channel per group (the
    lowest index) in channel order, followed by the other channels; ``u`` () is the number of groups; and
    ``slot`` (n,) gives, for each channel, the position in ``first`` of its group's representative (< u).
    Static shapes: one fingerprint per channel, a stable argsort, one exact comparison per channel."""
    n = maps.shape[-1]
    flat = jnp.moveaxis(maps, -1, 0).reshape(n, -1)
    flat = jnp.where(flat == 0, jnp.zeros_like(flat), flat)
    width = jnp.dtype(flat.dtype).itemsize * 8
    bits = jax.lax.bitcast_convert_type(flat, jnp.dtype(f"uint{width}"))
    salt = jnp.arange(bits.shape[1], dtype=jnp.uint32) * jnp.uint32(_GOLDEN) + jnp.uint32(0x7F4A7C15)
    v = (bits.astype(jnp.uint32) ^ salt[None, :]) * jnp.uint32(_MIX)
    v = v ^ (v >> jnp.uint32(13))
    fingerprint = jnp.sum(v * (salt | jnp.uint32(1))[None, :], axis=1, dtype=jnp.uint32)
    pos = jnp.arange(n, dtype=jnp.int32)
    order = jnp.argsort(fingerprint, stable=True).astype(jnp.int32)
    fs = fingerprint[order]
    run_start = jnp.concatenate([jnp.ones(1, bool), fs[1:] != fs[:-1]])
    cand = order[jax.lax.cummax(jnp.where(run_start, pos, 0), axis=0)]  # the run's lowest channel index
    same = jnp.all(bits[order] == bits[cand], axis=1)
    rep = jnp.zeros(n, jnp.int32).at[order].set(jnp.where(same, cand, order))
    is_rep = rep == pos
    first = jnp.argsort(~is_rep, stable=True).astype(jnp.int32)
    position = jnp.zeros(n, jnp.int32).at[first].set(pos)
    return first, position[rep], jnp.sum(is_rep, dtype=jnp.int32)


def _leading_jobs(fn, jobs: jax.Array, count: jax.Array, batch_size: int) -> jax.Array:
    """``fn`` (vmapped, ``batch_size`` at a time) over ``jobs[:count]`` only, ``count`` traced: a while loop over
    chunks, stopping after ``ceil(count / batch_size)`` of them. Entries from ``count`` on are unspecified
    (zero, or a computed value in the last chunk): callers gather only below ``count``."""
    n = jobs.shape[0]
    b = max(1, min(batch_size, n))
    chunks = -(-n // b)
    padded = jnp.concatenate([jobs, jnp.broadcast_to(jobs[:1], (chunks * b - n,))])
    out = jax.eval_shape(fn, jobs[0])
    buf = jnp.zeros((chunks * b, *out.shape), out.dtype)

    def body(carry):
        c, buf = carry
        vals = jax.vmap(fn)(jax.lax.dynamic_slice(padded, (c * b,), (b,)))
        return c + 1, jax.lax.dynamic_update_slice(buf, vals, (c * b, *([0] * len(out.shape))))

    _, buf = jax.lax.while_loop(lambda carry: carry[0] * b < count, body, (jnp.int32(0), buf))
    return buf[:n]


def _masked_scores(inp: Inputs, ctx: Context, maps: jax.Array, channels: jax.Array) -> jax.Array:
    """Target score of ``x * minmax(upsample(maps_k))`` for each k in ``channels`` (Score-CAM's masks: bilinear
    with ``align_corners=True``, min-max eps 1e-8), one full forward per distinct map (:func:`distinct_maps`),
    chunked; repeated maps share their representative's score."""
    sel = maps[..., channels]
    first, slot, u = distinct_maps(sel)

    def score(j):
        mask = minmax(resize_align_corners(sel[..., j], inp.image.shape[:2]), 1e-8)
        return ctx.score(ctx.forward((inp.image * mask[..., None])[None])[0], inp.cls)

    return _leading_jobs(score, first, u, ctx.batch_size)[slot]


def scorecam_forward_count(model, x: jax.Array, layer=None) -> jax.Array:
    """Score-CAM's full forwards per image after deduplication: the number of distinct activation maps (hence
    distinct masks) at ``layer`` of ``model`` for each image of the model-input batch ``x`` (N, H, W, 3), as
    ``model.preprocess`` gives it; without deduplication it is K (the layer's channel count). (N,) int32."""
    from ..tapped import capture

    site = model.layer_site(layer)
    acts = capture(model.tapped.apply, model.params, model.check_input(x), (site,)).acts[site]
    return jax.vmap(lambda a: distinct_maps(a)[2])(acts)


def scorecam(inp: Inputs, ctx: Context):
    """Score-CAM (Wang et al., CVPR-W 2020) as in pytorch-grad-cam 1.5.7: masks ``minmax(upsample(A_k))``
    (bilinear, align_corners), scores ``s_k = target(f(x * M_k))``, weights ``softmax_k(s)``, map ``sum_k w_k A_k``.
    Cost 1F + u full forwards (u <= K distinct activation maps, see the module note), ``batch_size`` at a time
    inside one program."""
    return inp.acts * jax.nn.softmax(score_terms(inp, ctx))[None, None]


def faster_scorecam(inp: Inputs, ctx: Context, top_fraction: float = 0.1):
    """Faster Score-CAM: Score-CAM restricted to the channels of largest spatial variance (``top_fraction`` of
    them, at least one); the softmax runs over those channels and the others get weight 0. Cost 1F + k forwards
    at most (one per distinct map among the k)."""
    k = inp.acts.shape[-1]
    n = max(1, int(round(k * top_fraction)))
    _, top = jax.lax.top_k(jnp.var(inp.acts, axis=(0, 1)), n)
    w = jnp.zeros(k, inp.acts.dtype).at[top].set(jax.nn.softmax(_masked_scores(inp, ctx, inp.acts, top)))
    return inp.acts * w[None, None]


def ablationcam(inp: Inputs, ctx: Context):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020): ``w_k = (y - y_k) / y`` where ``y_k`` is the target score with
    channel k of A set to zero, computed by the head alone (one head pass per channel that is not all zero,
    chunked; no backbone recomputation).
    pytorch-grad-cam 1.5.7 ablates to 0 when the activation tensor's minimum is 0 (every post-ReLU layer), which
    jaxcam matches; for layers with negative values it uses ``min - 1e7`` recomputed in place along each chunk (a
    chunk-order-dependent quirk): jaxcam follows the paper and ablates to 0 there too."""
    return inp.acts * ablation_drops(inp, ctx)[None, None]


def ablation_drops(inp: Inputs, ctx: Context) -> jax.Array:
    """Ablation-CAM's channel weights ``(y - y_k) / y`` (K,): one head pass per channel that is not all zero,
    chunked. Ablating an all-zero channel leaves the activations unchanged, so ``y_k = y`` and its weight is 0
    exactly without a pass (the all-zero channels are sorted last and a while loop stops before them). Channels
    with identical nonzero maps are not merged: their head weights differ, so their ablations do too. A zero
    target score gives zero weights, not NaN (the reference divides by 0)."""
    y = ctx.score(inp.logits, inp.cls)
    k = inp.acts.shape[-1]
    zero = jnp.all(inp.acts == 0, axis=(0, 1))
    live = jnp.argsort(zero, stable=True).astype(jnp.int32)  # nonzero channels first
    position = jnp.zeros(k, jnp.int32).at[live].set(jnp.arange(k, dtype=jnp.int32))

    def ablated(c):
        a = inp.acts.at[..., c].set(0.0)
        return ctx.score(ctx.replay(inp.image[None], a[None])[0], inp.cls)

    yk = _leading_jobs(ablated, live, k - jnp.sum(zero, dtype=jnp.int32), ctx.batch_size)[position]
    yk = jnp.where(zero, y, yk)
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
    ``sum_k w_k A_k``. Noise comes from the example's key. Cost 1F + num_samples * u forwards, chunked (u distinct
    activation maps: identical maps get the same draw, hence the same masks; see the module note)."""
    h_w = inp.image.shape[:2]
    k = inp.acts.shape[-1]
    keys = jax.random.split(inp.key, num_samples)
    first, slot, u = distinct_maps(inp.acts)  # identical maps plus the same draw give identical masks

    def score(job):
        s, c = job // u, first[job % u]
        m = minmax(resize_align_corners(inp.acts[..., c], h_w) + std * jax.random.normal(keys[s], h_w, inp.acts.dtype),
                   1e-8)
        return ctx.score(ctx.forward((inp.image * m[..., None])[None])[0], inp.cls)

    done = _leading_jobs(score, jnp.arange(num_samples * k, dtype=jnp.int32), num_samples * u, ctx.batch_size)
    scores = done[jnp.arange(num_samples, dtype=jnp.int32)[:, None] * u + slot[None, :]]  # (num_samples, K)
    return inp.acts * jax.nn.softmax(scores.mean(axis=0))[None, None]


def decomcam(inp: Inputs, ctx: Context, channels: float = 0.1, components: int = 10):
    """DecomCAM (decomposition and integration; [ours] reconstruction, no reference library): keep the ``channels``
    fraction of channels with the largest Grad-CAM weight, decompose their (h*w, k) centred map matrix by SVD into
    ``components`` orthogonal sub-saliency maps (sign: largest magnitude positive), score each as a Score-CAM mask
    (``target(f(x * minmax(upsample(map))))``), and integrate ``sum_q softmax_q(score) * relu(map_q)``. Returns the
    (h, w) map. Cost 1F + 1B + ``components`` forwards at most (one per distinct sub-saliency map; a
    rank-deficient decomposition's all-zero components share one)."""
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
