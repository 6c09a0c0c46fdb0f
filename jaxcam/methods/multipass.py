"""Multi-pass and ensemble methods, computed by the driver from several captures or several member maps.

- CAMERAS (Jalwana et al., CVPR 2021, following the authors' code): the input is resized (bicubic) to several
  scales; at each scale one forward and one backward give activations and gradients at the target layer; both are
  upsampled (bilinear) to the input resolution and averaged separately over the scales whose prediction equals the
  explained class; the map is ``relu(sum_k mean(G)_k * mean(A)_k)`` at full resolution. Cost: S x (1F + 1B), the
  passes growing with the scale's area. Scales have different shapes, so the program unrolls them (a fixed,
  static count; no runtime loop).
- MetaCAM (Kaczmarek et al., arXiv 2307.16863; [ours] reconstruction of the consensus): every member map (in [0, 1])
  is binarised at its top-``k`` fraction of pixels; the map is ``votes / n + delta * mean(members)``. With
  ``adaptive=True`` each member's ``k`` is chosen per image from ``k_grid`` as the one whose thresholded map
  (``L * [L >= Q_{1-k}(L)]``) has the best ROAD combined score (probability target, no imputation noise), as the
  paper's adaptive thresholding does. That optimises the test metric at test time, so a ROAD score reported on
  adaptive MetaCAM maps is optimistic. Cost: members x |k_grid| x 2 x |percentiles| extra forwards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def default_scales(size: int) -> tuple[int, ...]:
    """The authors' default, range(224, 1000, 100) at 224 input, scaled to the input size."""
    return tuple(int(round(size * r / 224)) for r in range(224, 1000, 100))


def cameras(x, cls, capture_at, scales):
    """CAMERAS raw maps (N, H, W) at the input resolution. ``capture_at(x) -> (logits, A, dS/dA)`` at the target
    layer for the explained classes ``cls`` (one forward and one backward to the layer)."""
    n, h, w, _ = x.shape
    acc_a = acc_g = 0.0
    count = jnp.zeros((n,), x.dtype)
    for r in scales:
        xr = x if r == h else jax.image.resize(x, (n, r, r * w // h, 3), "cubic")
        logits, a, g = capture_at(xr)
        keep = (jnp.argmax(logits, axis=-1) == cls).astype(x.dtype)
        up = (n, h, w, a.shape[-1])
        acc_a = acc_a + keep[:, None, None, None] * jax.image.resize(a, up, "linear")
        acc_g = acc_g + keep[:, None, None, None] * jax.image.resize(g, up, "linear")
        count = count + keep
    count = jnp.maximum(count, 1.0)[:, None, None, None]
    return jax.nn.relu(jnp.sum((acc_g / count) * (acc_a / count), axis=-1))


def top_fraction_threshold(maps, k):
    """The (1 - k)-quantile (linear interpolation, as ``numpy.quantile``) of each map over its pixels.
    ``maps`` (..., H, W) and ``k`` broadcastable to maps.shape[:-2]; returns (..., 1, 1)."""
    flat = jnp.sort(maps.reshape(*maps.shape[:-2], -1), axis=-1)
    pos = (1.0 - jnp.asarray(k, maps.dtype)) * (flat.shape[-1] - 1)
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, flat.shape[-1] - 1)
    frac = pos - lo
    take = lambda i: jnp.take_along_axis(flat, jnp.broadcast_to(i, flat.shape[:-1])[..., None], -1)[..., 0]  # noqa
    return (take(lo) * (1 - frac) + take(hi) * frac)[..., None, None]


def metacam(member_maps, k=0.1, delta: float = 1e-3):
    """MetaCAM consensus of member maps (list of (N, H, W) in [0, 1]) -> (N, H, W). ``k``: one fraction, or one
    per member and image (M, N), as adaptive thresholding chooses."""
    stack = jnp.stack(member_maps)  # (M, N, H, W)
    votes = jnp.sum(stack >= top_fraction_threshold(stack, k), axis=0).astype(stack.dtype)
    return votes / stack.shape[0] + delta * jnp.mean(stack, axis=0)


def adaptive_k(maps, road_fn, k_grid):
    """Per image, the k in ``k_grid`` whose thresholded map ``L * [L >= Q_{1-k}(L)]`` maximises ``road_fn``
    (maps (N, H, W) -> scores (N,)). Returns (N,)."""
    grid = jnp.asarray(k_grid, maps.dtype)

    def score(k):
        return road_fn(maps * (maps >= top_fraction_threshold(maps, k)))

    scores = jax.lax.map(score, grid)  # (K, N)
    return grid[jnp.argmax(scores, axis=0)]


K_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


META_MEMBERS = ("gradcam", "hirescam", "gradcam_elementwise", "gradcam++", "xgradcam", "ablationcam", "scorecam",
                "eigencam", "eigengradcam", "layercam", "fullgrad")
