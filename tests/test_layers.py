"""The fast layer forms equal the convolutions they replace (same parameters, same result)."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxcam.models.layers import DepthwiseConv, PointwiseConv, conv


@pytest.mark.parametrize("k,stride,padding,size", [(3, 1, "SAME", 14), (3, 2, "SAME", 15), (5, 2, "SAME", 16),
                                                   (5, 1, 2, 9), (3, 2, 1, 12)])
@pytest.mark.parametrize("bias", [False, True])
def test_depthwise_equals_grouped_convolution(k, stride, padding, size, bias):
    c = 6
    layer = conv(c, c, k, stride, padding, bias=bias, groups=c, rngs=nnx.Rngs(0),
                 kernel_init=nnx.initializers.lecun_normal())
    assert isinstance(layer, DepthwiseConv)
    if bias:
        layer.bias[...] = jax.random.normal(jax.random.key(1), (c,))
    ref = nnx.Conv(c, c, (k, k), (stride, stride), padding=padding if isinstance(padding, str)
                   else ((padding, padding), (padding, padding)), feature_group_count=c, use_bias=bias,
                   rngs=nnx.Rngs(0))
    ref.kernel[...] = layer.kernel[...]
    if bias:
        ref.bias[...] = layer.bias[...]
    x = np.random.default_rng(0).standard_normal((2, size, size, c)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(ref(x)), atol=1e-5, rtol=1e-5)


def test_pointwise_equals_convolution_with_bias_and_stride():
    layer = conv(4, 7, 1, 2, 0, bias=True, rngs=nnx.Rngs(0), kernel_init=nnx.initializers.lecun_normal())
    assert isinstance(layer, PointwiseConv)
    layer.bias[...] = jax.random.normal(jax.random.key(1), (7,))
    ref = nnx.Conv(4, 7, (1, 1), (2, 2), padding=((0, 0), (0, 0)), rngs=nnx.Rngs(0))
    ref.kernel[...], ref.bias[...] = layer.kernel[...], layer.bias[...]
    x = np.random.default_rng(0).standard_normal((2, 9, 9, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(ref(x)), atol=1e-5, rtol=1e-5)
