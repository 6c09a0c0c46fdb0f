"""from_nnx on a Vision Transformer written in NNX: token outputs (N, prefix + h*w, C) become layers seen as patch
grids (jaxcam.models.tokens), the default layer is the last block's first LayerNorm, and Grad-CAM there equals a
hand-written split of the tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcam
from jaxcam.models.inspect import layers
from jaxcam.models.nnx_adapter import from_nnx

from . import tiny_resnet as T


class ViTBlock(nnx.Module):
    def __init__(self, dim, rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(2, dim, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, t):
        t = t + self.attn(self.norm1(t))
        return t + self.mlp(jax.nn.gelu(self.norm2(t)))


class TinyViT(nnx.Module):
    """Patch 8 on 32 px (a 4x4 grid), a CLS token, two blocks, the classifier on CLS."""

    def __init__(self, rngs, dim=8):
        self.patch = nnx.Conv(3, dim, (8, 8), strides=8, padding="VALID", rngs=rngs)
        self.cls = nnx.Param(jax.random.normal(jax.random.key(0), (1, 1, dim)))
        self.blocks = nnx.List([ViTBlock(dim, rngs), ViTBlock(dim, rngs)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, 3, rngs=rngs)

    def embed(self, x):
        p = self.patch(x)
        t = p.reshape(p.shape[0], -1, p.shape[-1])
        return jnp.concatenate([jnp.broadcast_to(self.cls[...], (t.shape[0], 1, t.shape[2])), t], axis=1)

    def __call__(self, x):
        t = self.embed(x)
        for b in self.blocks:
            t = b(t)
        return self.head(self.norm(t)[:, 0])


def test_a_vit_in_nnx_explains_at_the_last_blocks_first_norm():
    """Tokens (N, 1 + 16, C) are layers seen as 4x4 grids. The default is the last block's first LayerNorm: there
    Grad-CAM equals a hand split (token gradients mapped to the grid); at the last block's output the patch
    tokens get no gradient (only CLS reaches the head), so Grad-CAM is blank there."""
    module = TinyViT(nnx.Rngs(0))
    with pytest.raises(jaxcam.InvalidArgumentError, match="pass patch_size="):
        from_nnx(module, input_size=32, layers=["blocks.1.norm1"])
    model = from_nnx(module, input_size=32, patch_size=8)
    assert model.default_layer == "blocks.1.norm1" and "blocks.1" in model.tapped.sites
    x = T.images()
    out = jaxcam.explain(model, x, ["gradcam"], layer=["blocks.1.norm1", "blocks.1"], raw=True, preprocessed=True)
    assert np.abs(np.asarray(out["gradcam"][1])).max() == 0

    block = module.blocks[1]
    skip = module.blocks[0](module.embed(x))
    tokens = block.norm1(skip)

    def head(t):  # the rest of the last block from its first norm's output, then the classifier
        h = skip + block.attn(t)
        return module.head(module.norm(h + block.mlp(jax.nn.gelu(block.norm2(h))))[:, 0])

    logits = head(tokens)
    cls = jnp.argmax(logits, axis=-1)
    g = jax.grad(lambda t: jnp.take_along_axis(head(t), cls[:, None], 1).sum())(tokens)
    grid, ggrid = tokens[:, 1:].reshape(2, 4, 4, -1), g[:, 1:].reshape(2, 4, 4, -1)
    ref = (grid * ggrid.mean(axis=(1, 2), keepdims=True)).sum(-1)
    np.testing.assert_allclose(out["gradcam"][0], ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    row = layers(model).where(layer="blocks.1.norm1").rows()[0]
    assert row["kind"] == "tokens->grid" and row["shape"] == "4 x 4 x 8" and row["default"]

