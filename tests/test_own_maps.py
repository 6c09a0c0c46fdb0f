"""Methods that read the model's own class maps (``Tapped.map_sites``; AME-CAM): the driver records the first map
site in the same forward and the method returns the explained class's channel; models without one refuse it."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam


class ExitNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        maps = nn.Conv(3, (1, 1), name="maps")(h)  # (N, h, w, 3): one map per class
        return jnp.mean(maps, axis=(1, 2))


@pytest.fixture(scope="module")
def models():
    module = ExitNet()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    plain = jaxcam.from_linen(module, variables, input_size=32, default_layer="conv")
    own = jaxcam.Model.from_tapped(dataclasses.replace(plain.tapped, map_sites=("maps",)), variables,
                                   name="exitnet", input_size=32)
    return module, variables, plain, own


def test_amecam_returns_the_explained_class_channel(models):
    module, variables, _, own = models
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    targets = [2, 0]
    out = jaxcam.explain(own, x, method=["amecam", "gradcam"], targets=targets, preprocessed=True, raw=True)
    _, inter = module.apply(variables, x, capture_intermediates=lambda m, _: m.name == "maps")
    maps = inter["intermediates"]["maps"]["__call__"][0]
    want = np.stack([maps[i, :, :, c] for i, c in enumerate(targets)])
    np.testing.assert_allclose(out["amecam"][0], want, rtol=1e-6, atol=1e-6)
    assert out["gradcam"][0].shape == (2, 32, 32)  # the gradient methods still run at the model's layers


def test_a_model_without_map_sites_refuses_it_and_all_leaves_it_out(models):
    _, _, plain, _ = models
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(jaxcam.InvalidArgumentError, match="declares no map sites"):
        jaxcam.explain(plain, x, method="amecam", preprocessed=True)
    from jaxcam._explain import unavailable_methods  # what --method all leaves out

    assert "amecam" in unavailable_methods(plain) and "amecam" not in unavailable_methods(models[3])
