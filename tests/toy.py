"""A tiny hand-built classifier for closed-form method tests: conv -> relu -> [avgpool -> fc (+ shared offset)]."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcam.models import Architecture, Model
from jaxcam.models.layers import conv, global_avg_pool


class OffsetLinear(nnx.Module):
    """A linear classifier that can add one shared function of the features to every logit (passive fooling)."""

    def __init__(self, cin, cout, offset, *, rngs):
        self.fc = nnx.Linear(cin, cout, rngs=rngs)
        self.out_features = cout
        self.offset = offset

    def __call__(self, pooled):
        return self.fc(pooled) + self.offset * jnp.sum(pooled ** 2, axis=-1, keepdims=True)


class Toy(nnx.Module):
    def __init__(self, num_classes=5, offset=0.0, channels=6, *, rngs):
        self.conv = conv(3, channels, 3, 2, 1, bias=True, rngs=rngs, kernel_init=nnx.initializers.lecun_normal())
        self.head = OffsetLinear(channels, num_classes, offset, rngs=rngs)

    def stages(self):
        return [("conv", self.conv), ("relu", jax.nn.relu), ("avgpool", global_avg_pool), ("fc", self.head)]

    def layer_aliases(self):
        return {}


def toy_model(offset=0.0, seed=0, zero_head=False, num_classes=5):
    arch = Architecture("toy", "toy", lambda n, rngs: Toy(n, offset, rngs=rngs), "relu", "head.fc.kernel",
                        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=32)
    module = Toy(num_classes, offset, rngs=nnx.Rngs(seed))
    if zero_head:
        module.head.fc.kernel[...] = jnp.zeros_like(module.head.fc.kernel[...])
        module.head.fc.bias[...] = jnp.zeros_like(module.head.fc.bias[...])
    graphdef, state = nnx.split(module)
    return Model(arch, graphdef, state, source="toy")


def toy_input(n=2, size=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype(np.float32))


class LinearToy(nnx.Module):
    """A classifier linear in its input: 1x1 conv -> global average pool -> fc (no nonlinearity)."""

    def __init__(self, num_classes=4, channels=5, *, rngs):
        self.conv = nnx.Conv(3, channels, kernel_size=(1, 1), use_bias=True, rngs=rngs)
        self.fc = nnx.Linear(channels, num_classes, rngs=rngs)

    def stages(self):
        return [("conv", self.conv), ("avgpool", global_avg_pool), ("fc", self.fc)]

    def layer_aliases(self):
        return {}


def linear_model(seed=0, num_classes=4):
    arch = Architecture("linear_toy", "toy", lambda n, rngs: LinearToy(n, rngs=rngs), "conv", "fc.kernel",
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=16)
    graphdef, state = nnx.split(LinearToy(num_classes, rngs=nnx.Rngs(seed)))
    return Model(arch, graphdef, state, source="toy")
