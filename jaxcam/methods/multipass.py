"""Multi-pass and ensemble methods, computed by the driver from several captures or several member maps.

- CAMERAS (Jalwana et al., CVPR 2021, following the authors' code): the input is resized (bicubic) to several
  scales; at each scale one forward and one backward give activations and gradients at the target layer; both are
  upsampled (bilinear) to the input resolution and averaged separately over the scales whose prediction equals the
  explained class; the map is ``relu(sum_k mean(G)_k * mean(A)_k)`` at full resolution. Cost: S x (1F + 1B), the
  passes growing with the scale's area. Scales have different shapes, so the program unrolls them (a fixed,
  static count; no runtime loop).
- MetaCAM (Kaczmarek et al., arXiv 2307.16863; [ours] reconstruction of the consensus): every member map (in [0, 1])
  is binarised at its top-``k`` fraction of pixels; the map is ``votes / n + delta * mean(members)``. Its adaptive
  per-image thresholding needs ROAD (the metrics module) and is not part of this method.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def default_scales(size: int) -> tuple[int, ...]:
    """The authors' default, range(224, 1000, 100) at 224 input, scaled to the input size."""
    return tuple(int(round(size * r / 224)) for r in range(224, 1000, 100))


def cameras(x, cls, features, tail, score, scales):
    """CAMERAS raw maps (N, H, W) at the input resolution. ``features(x) -> A``, ``tail(A) -> logits``."""
    n, h, w, _ = x.shape
    acc_a = acc_g = 0.0
    count = jnp.zeros((n,), x.dtype)
    for r in scales:
        xr = x if r == h else jax.image.resize(x, (n, r, r * w // h, 3), "cubic")
        a = features(xr)
        logits, vjp_fn = jax.vjp(tail, a)
        (g,) = vjp_fn(jax.vmap(jax.grad(score))(logits, cls))
        keep = (jnp.argmax(logits, axis=-1) == cls).astype(x.dtype)
        up = (n, h, w, a.shape[-1])
        acc_a = acc_a + keep[:, None, None, None] * jax.image.resize(a, up, "linear")
        acc_g = acc_g + keep[:, None, None, None] * jax.image.resize(g, up, "linear")
        count = count + keep
    count = jnp.maximum(count, 1.0)[:, None, None, None]
    return jax.nn.relu(jnp.sum((acc_g / count) * (acc_a / count), axis=-1))


def metacam(member_maps, k: float = 0.1, delta: float = 1e-3):
    """MetaCAM consensus of member maps (list of (N, H, W) in [0, 1]) -> (N, H, W)."""
    stack = jnp.stack(member_maps)  # (M, N, H, W)
    flat = stack.reshape(stack.shape[0], stack.shape[1], -1)
    thresh = jnp.quantile(flat, 1.0 - k, axis=-1)[..., None, None]
    votes = jnp.sum(stack >= thresh, axis=0).astype(stack.dtype)
    return votes / stack.shape[0] + delta * jnp.mean(stack, axis=0)


META_MEMBERS = ("gradcam", "hirescam", "gradcam_elementwise", "gradcam++", "xgradcam", "ablationcam", "scorecam",
                "eigencam", "eigengradcam", "layercam", "fullgrad")
