"""Vision Transformer token sequences as CAM grids, and back.

A ViT block outputs ``(N, P + h*w, C)``: ``P`` prefix tokens (1 for a CLS token, 2 for DeiT's CLS + distillation
tokens, 1 + registers for DINOv2 with registers, 0 for a GAP head) followed by one token per patch in row-major
order. A CAM needs ``(N, h, w, C)``: :func:`to_grid` drops the prefix and reshapes, with ``h, w`` from the input
size and the patch size (``H // p``), never from the square root of the token count, so non-square inputs and
prefixes of any length are handled. Swin-style stages that are already ``(N, H, W, C)`` need no mapping.

Replays (head-only passes, gradients at a site) go the other way: the tap sees a grid ``g = to_grid(t)``, returns
``g'``, and the model must continue with tokens. :func:`from_grid` derives the inverse from ``to_grid`` alone:
``t + linear_transpose(to_grid)(g' - g)``. The transpose of "drop the prefix, reshape" scatters a grid back into
the patch positions with zeros at the prefix, so the prefix tokens keep their values, the patch tokens become
``g'``, and a zero change (``g' = g``) gives ``t`` back bit for bit. Being linear, it also carries gradients: the
derivative of the logits with respect to ``g'`` is the derivative with respect to the patch tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax

from ..errors import InvalidArgumentError


def patch_grid(image_hw: tuple[int, int], patch_size) -> tuple[int, int]:
    """``(h, w)`` of the patch grid of an ``image_hw`` input: ``(H // ph, W // pw)`` (a ViT's patch embedding is a
    convolution with stride ``patch_size`` and no padding, which drops a remainder the same way)."""
    ph, pw = as_pair(patch_size)
    return int(image_hw[0]) // ph, int(image_hw[1]) // pw


def as_pair(patch_size) -> tuple[int, int]:
    """``patch_size`` (an int or an ``(h, w)`` pair of positive ints) as a pair."""
    pair = (patch_size, patch_size) if isinstance(patch_size, int) and not isinstance(patch_size, bool) else patch_size
    ok = (isinstance(pair, (tuple, list)) and len(pair) == 2
          and all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in pair))
    if not ok:
        raise InvalidArgumentError(f"patch_size must be a positive int or a pair of them (the ViT's patch size in "
                                   f"pixels, e.g. 16), got {patch_size!r}")
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True)
class TokenGrid:
    """How one site's tokens ``(N, prefix + h*w, C)`` map to a grid ``(N, h, w, C)``; hashable."""

    prefix: int
    h: int
    w: int

    def to_grid(self, t: jax.Array) -> jax.Array:
        """``(N, prefix + h*w, C)`` -> ``(N, h, w, C)``: the patch tokens, row-major."""
        return t[:, self.prefix:].reshape(t.shape[0], self.h, self.w, t.shape[-1])

    def from_grid(self, t: jax.Array, g: jax.Array) -> jax.Array:
        """Tokens ``t`` with their patch tokens replaced by the grid ``g``, the prefix tokens kept:
        ``t + linear_transpose(to_grid)(g - to_grid(t))``."""
        (back,) = jax.linear_transpose(self.to_grid, jax.ShapeDtypeStruct(t.shape, t.dtype))(g - self.to_grid(t))
        return t + back


def token_grid(shape, image_hw: tuple[int, int], patch_size, prefix: int | None = None) -> TokenGrid | None:
    """The :class:`TokenGrid` of a token output of ``shape`` ``(N, T, C)`` for an ``image_hw`` input, or None when
    the tokens hold no patch grid (``T`` is not ``prefix + h*w``: a pooled vector, a text sequence, another
    stage's resolution). ``prefix`` None: inferred as ``T - h*w`` (0 <= prefix < h*w, so a CLS, distillation or
    register count is found without being told)."""
    if len(shape) != 3 or patch_size is None:
        return None
    h, w = patch_grid(image_hw, patch_size)
    if h * w == 0:
        return None
    p = shape[1] - h * w if prefix is None else int(prefix)
    if not 0 <= p < h * w or shape[1] != p + h * w:
        return None
    return TokenGrid(p, h, w)


def check_prefix(prefix_tokens) -> int | None:
    """``prefix_tokens`` validated: None (infer per site) or a non-negative int."""
    if prefix_tokens is None:
        return None
    if not isinstance(prefix_tokens, int) or isinstance(prefix_tokens, bool) or prefix_tokens < 0:
        raise InvalidArgumentError(f"prefix_tokens must be None (inferred from the token count) or a non-negative "
                                   f"int (1 for a CLS token, 2 for DeiT, 1 + registers for DINOv2 with registers, "
                                   f"0 for a GAP head), got {prefix_tokens!r}")
    return prefix_tokens


__all__ = ["TokenGrid", "as_pair", "check_prefix", "patch_grid", "token_grid"]
