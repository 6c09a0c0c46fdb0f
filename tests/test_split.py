"""split(model, layer) round-trips at every stage of every architecture; stage names, aliases and defaults."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam.models import ARCHITECTURES


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32))


# one network per block type in the default run (basic, bottleneck, plain conv, conv+BN, MBConv); the deeper ones
# repeat the same blocks more times and run eagerly stage by stage (up to 28 s each on 2 cores): behind `slow`
ROUND_TRIP_DEFAULT = {"resnet18", "resnet50", "vgg11", "vgg11_bn", "efficientnet_lite0"}


@pytest.mark.parametrize("name", [n if n in ROUND_TRIP_DEFAULT else pytest.param(n, marks=pytest.mark.slow)
                                  for n in ARCHITECTURES])
def test_split_round_trips_at_every_stage(name, x):
    model = jaxcam.load_model(name, weights=None)
    with jax.disable_jit():  # eager: identical ops on both sides, so the round trip is exact
        want = model.forward_fn(x)
        for stage in model.stage_names:
            features_fn, head_fn = jaxcam.split(model, stage)
            np.testing.assert_array_equal(head_fn(features_fn(x)), want, err_msg=f"{name} split at {stage}")
    assert want.shape == (1, 1000)


def test_split_under_jit_and_as_pytree(resnet18, x):
    features_fn, head_fn = resnet18.split("layer3")
    acts = jax.jit(lambda f, x: f(x))(features_fn, x)  # a Partial passes through jit as a pytree of parameters
    assert acts.shape == (1, 2, 2, 256)
    np.testing.assert_allclose(jax.jit(lambda h, a: h(a))(head_fn, acts), resnet18(x), atol=1e-5)
    leaves = jax.tree.leaves(features_fn)
    assert len(leaves) == len(jax.tree.leaves(resnet18.params))


def test_split_is_pure_and_cached_by_value(resnet18, x):
    f1, _ = resnet18.split("layer4")
    f2, _ = resnet18.split("layer4.1")  # alias and canonical name give the same function
    assert f1.func == f2.func and hash(f1.func) == hash(f2.func)
    np.testing.assert_array_equal(f1(x), f1(x))


@pytest.mark.parametrize("name,stages,default,alias", [
    ("resnet18", 14, "layer4.1", ("layer4", "layer4.1")),
    ("resnet50", 22, "layer4.2", ("layer3", "layer3.5")),
    ("resnet152", 56, "layer4.2", ("layer2", "layer2.7")),
    ("vgg16", 39, "features.29", ("features", "features.30")),
    ("vgg16_bn", 52, "features.42", ("last_conv_relu", "features.42")),
    ("vgg11", 29, "features.19", ("features", "features.20")),
    ("efficientnet_lite0", 22, "_bn1", ("stage7", "_blocks.15")),
])
def test_stage_names_mirror_the_source(name, stages, default, alias):
    model = jaxcam.load_model(name, weights=None)
    assert len(model.stage_names) == stages
    assert model.default_layer == default
    assert model.canonical_layer(alias[0]) == alias[1]
    assert model.canonical_layer(None) == default
    assert model.canonical_layer(-1) == model.stage_names[-1]


def test_default_layer_resolution(resnet18):
    assert resnet18.stage_names[:4] == ("conv1", "bn1", "relu", "maxpool")
    assert resnet18.stage_names[-2:] == ("avgpool", "fc")
    assert resnet18.split(None)[0].func == resnet18.split("layer4")[0].func


def test_unknown_layer_lists_valid_names(resnet18):
    with pytest.raises(jaxcam.UnknownLayerError, match="layer9") as err:
        resnet18.split("layer9")
    assert "'layer4.1'" in str(err.value) and "'layer4'" in str(err.value)
    with pytest.raises(jaxcam.UnknownLayerError, match="out of range"):
        resnet18.split(99)
    assert isinstance(err.value, ValueError)


def test_vgg_adaptive_pool_matches_torch_rule():
    from jaxcam.models.layers import adaptive_avg_pool

    a = jnp.arange(2 * 10 * 9 * 1, dtype=jnp.float32).reshape(2, 10, 9, 1)
    out = adaptive_avg_pool(a, (7, 7))
    # PyTorch bins for 10 -> 7: [floor(i*10/7), ceil((i+1)*10/7)); check one bin by hand
    np.testing.assert_allclose(out[0, 1, 2, 0], a[0, 1:3, 2:4, 0].mean(), rtol=1e-6)
    assert adaptive_avg_pool(a[:, :7, :7], (7, 7)) is not None
    np.testing.assert_array_equal(adaptive_avg_pool(a[:, :7, :7], (7, 7)), a[:, :7, :7])
