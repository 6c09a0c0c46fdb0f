"""from_equinox: an Equinox model (one example at a time, channels-first) explained through the tapped forward: the
adapter vmaps over the batch and taps through a primitive whose batching rule runs the tap on the whole batch. The
tiny residual CNN of tiny_resnet.py gives every gradient method's maps equal to a hand-written split between and
inside the residual blocks, Ablation-CAM equal to a hand ablation and compiled programs with only the convolutions
they need; inference mode, stateful BatchNorm and bad layers are covered."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam.tapped import capture, identity_tap, input_gradients, replay
from jaxcam.targets import resolve

from . import tiny_resnet as T

eqx = pytest.importorskip("equinox")
from jaxcam.models.equinox_adapter import from_equinox  # noqa: E402


def convolutions(f, *args) -> int:
    return jax.jit(f).lower(*args).compile().as_text().count("convolution(")


@pytest.fixture(scope="module")
def model():
    return from_equinox(T.equinox_model(), input_size=T.SIZE)


@pytest.fixture(scope="module")
def params():
    return {k: tuple(jnp.asarray(a) for a in v) for k, v in T.weights().items()}


def test_sites_are_submodule_paths_in_call_order(model, params):
    assert model.tapped.sites == ("stem", "block1.conv_a", "block1.conv_b", "block1", "block2.conv_a",
                                  "block2.conv_b", "block2")
    assert model.default_layer == "block2" and model.tapped.gap_fc_sites == {"block2"}
    np.testing.assert_allclose(model(T.images()), T.marked_fn(params, T.images()), atol=1e-5)


def test_every_gradient_method_equals_a_hand_split_and_ablation_a_hand_ablation(model, params):
    T.check_against_hand_split(model, params)


def test_compiled_programs_hold_only_the_convolutions_they_need(model):
    """The vmapped per-example convolutions compile to one batched convolution each, so the counts are those of the
    NNX and function adapters: 5 forward, +2/+1 for the gradient, 2 and 4 in the head-only replays."""
    p, x, apply, logit = model.params, T.images(), model.tapped.apply, resolve("logit")
    assert convolutions(lambda p, x: apply(p, x, identity_tap), p, x) == 5
    acts = capture(apply, p, x, (T.BETWEEN, T.INSIDE)).acts
    for site, grad, head in ((T.BETWEEN, 7, 2), (T.INSIDE, 6, 4)):
        assert convolutions(lambda p, x: capture(apply, p, x, (site,), (logit,)).grads, p, x) == grad
        assert convolutions(lambda p, x, a: replay(apply, p, x, site, a), p, x, acts[site]) == head


class Normed(eqx.Module):
    """conv -> BatchNorm (stateful) -> relu -> dropout -> gap -> linear."""

    conv: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    drop: eqx.nn.Dropout
    fc: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(3, 4, 3, stride=2, key=k1)
        self.bn = eqx.nn.BatchNorm(4, axis_name="batch", mode="ema")
        self.drop = eqx.nn.Dropout(0.5)
        self.fc = eqx.nn.Linear(4, 3, key=k2)

    def __call__(self, x, state):
        h, state = self.bn(self.conv(x), state)
        return self.fc(self.drop(jax.nn.relu(h)).mean(axis=(1, 2))), state


@pytest.fixture(scope="module")
def normed():
    net, state = eqx.nn.make_with_state(Normed)(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)  # running statistics away from (0, 1), so the effective bias matters
    mean, var = jnp.asarray(rng.normal(0, 0.5, 4), jnp.float32), jnp.asarray(rng.uniform(0.5, 2, 4), jnp.float32)
    return net, state.set(net.bn.ema_state_index, (mean, var))


def test_inference_mode_on_a_copy_state_traced_and_fullgrad_complete(normed):
    """Dropout off and BatchNorm on running statistics (logits independent of the rest of the batch) without
    touching the caller's model; the conv bias and the BatchNorm's effective bias are FullGrad's sites and
    complete: logit = <dS/dx, x> + sum_l <dS/dy_l, b_l> + the linear layer's bias."""
    net, state = normed
    model = from_equinox(net, state=state, input_size=32)
    assert net.drop.inference is False and model.tapped.bias_sites == ("bias:0", "bias:1")
    assert model.tapped.sites == ("conv", "bn", "drop")
    x = T.images(4)
    np.testing.assert_allclose(model(x)[:1], model(jnp.concatenate([x[:1], 10 * x[1:]]))[:1], atol=1e-6)
    sites = model.tapped.bias_sites

    @jax.jit
    def completeness(params, x):
        logits, gx, gs = input_gradients(model.tapped.apply, params, x, sites, resolve("logit"))
        b = model.tapped.biases(params)
        return logits, (gx * x).sum((1, 2, 3)) + sum((gs[s] * b[s][None, None, None]).sum((1, 2, 3)) for s in sites)

    logits, total = completeness(model.params, x)
    cls = jnp.argmax(logits, axis=-1)
    np.testing.assert_allclose(total + net.fc.bias[cls], logits[jnp.arange(4), cls], rtol=1e-4, atol=1e-5)


class InnerVmap(eqx.Module):
    """A model that maps one of its submodules over a leading axis with its own jax.vmap."""

    stem: eqx.nn.Conv2d
    conv: eqx.nn.Conv2d
    fc: eqx.nn.Linear

    def __call__(self, x):
        h = self.stem(x)
        h = jax.vmap(self.conv)(jnp.stack([h, -h])).sum(0)
        return self.fc(h.mean(axis=(1, 2)))


def test_bad_layers_are_one_clear_error(model):
    with pytest.raises(jaxcam.UnknownLayerError, match="did you mean 'block1'"):
        from_equinox(T.equinox_model(), input_size=T.SIZE, layers=["blok1"])
    with pytest.raises(jaxcam.UnknownLayerError, match="did you mean 'block2'"):
        jaxcam.explain(model, T.images(), layer="blok2", preprocessed=True)
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    inner = InnerVmap(eqx.nn.Conv2d(3, 4, 3, key=k[0]), eqx.nn.Conv2d(4, 4, 3, key=k[1]), eqx.nn.Linear(4, 3, key=k[2]))
    assert from_equinox(inner, input_size=32).tapped.sites == ("stem",)  # conv runs inside the model's own vmap
    with pytest.raises(jaxcam.InvalidArgumentError, match="'conv' of InnerVmap runs inside a transformation within "
                                                          "the model.*pick a layer outside it: stem"):
        from_equinox(inner, input_size=32, layers=["conv"])
    with pytest.raises(jaxcam.InvalidArgumentError, match="takes an equinox.Module"):
        from_equinox(lambda x: x)


class TokenBlock(eqx.Module):
    mix: eqx.nn.Linear

    def __call__(self, t):  # (T, C): a per-token layer through the model's own vmap, then a residual
        return t + jnp.tanh(jax.vmap(self.mix)(t))


class TokenNet(eqx.Module):
    """8x8 patches of a 32 px image (a 4x4 grid) after a CLS token, a token block, the head on CLS + mean patch."""

    patch: eqx.nn.Conv2d
    cls: jax.Array
    block: TokenBlock
    head: eqx.nn.Linear

    def __call__(self, x):
        p = self.patch(x)  # (C, 4, 4)
        t = jnp.concatenate([self.cls, p.reshape(p.shape[0], -1).T])
        t = self.block(t)
        return self.head(t[0] + t[1:].mean(0))


def test_token_outputs_are_patch_grids_and_replays_keep_the_prefix():
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    net = TokenNet(eqx.nn.Conv2d(3, 4, 8, stride=8, key=k[0]), jax.random.normal(k[1], (1, 4)),
                   TokenBlock(eqx.nn.Linear(4, 4, key=k[2])), eqx.nn.Linear(4, 3, key=k[3]))
    model = from_equinox(net, input_size=32, patch_size=8)
    assert model.tapped.sites == ("patch", "block") and model.tapped.apply.token_sites == {"block"}
    x = T.images()
    grid = capture(model.tapped.apply, model.params, x, ("block",)).acts["block"]
    tokens = jax.vmap(lambda e: net.block(jnp.concatenate([net.cls, net.patch(e).reshape(4, -1).T])))(
        jnp.moveaxis(x, -1, 1))
    np.testing.assert_allclose(grid, tokens[:, 1:].reshape(2, 4, 4, 4), atol=1e-5)
    zeroed = replay(model.tapped.apply, model.params, x, "block", jnp.zeros_like(grid))
    np.testing.assert_allclose(zeroed, jax.vmap(lambda t: net.head(t[0]))(tokens), atol=1e-5)  # CLS kept
