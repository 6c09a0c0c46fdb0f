"""from_function: a plain ``fn(params, x)`` tapped at its ``checkpoint_name`` markers (a jaxpr interpreter), or a
function taking the tap itself. The tiny residual CNN of tiny_resnet.py gives every gradient method's maps equal to
a hand-written split between and inside the residual blocks, Ablation-CAM equal to a hand ablation, compiled
programs with only the convolutions they need, one trace per input shape, and one clear error per bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import checkpoint_name

import jaxcam
from jaxcam.models.function_adapter import from_function
from jaxcam.tapped import capture, identity_tap, input_gradients, replay
from jaxcam.targets import resolve

from . import tiny_resnet as T


def convolutions(f, *args) -> int:
    return jax.jit(f).lower(*args).compile().as_text().count("convolution(")


@pytest.fixture(scope="module")
def params():
    return {k: tuple(jnp.asarray(a) for a in v) for k, v in T.weights().items()}


@pytest.fixture(scope="module")
def marked(params):
    return from_function(T.marked_fn, params, input_size=T.SIZE)


def test_markers_become_sites_in_order_and_cam_holds_before_the_head(marked, params):
    assert marked.tapped.sites == ("stem", "block1.conv_a", "block1", "block2.conv_a", "block2")
    assert marked.default_layer == "block2" and marked.tapped.gap_fc_sites == {"block2"}
    np.testing.assert_array_equal(marked(T.images()), jax.jit(T.marked_fn)(params, T.images()))


@pytest.mark.parametrize("fn", [T.marked_fn, T.tapped_fn], ids=["markers", "tap-argument"])
def test_every_gradient_method_equals_a_hand_split_and_ablation_a_hand_ablation(fn, params):
    model = from_function(fn, params, input_size=T.SIZE)
    T.check_against_hand_split(model, params)


def test_compiled_programs_hold_only_the_convolutions_they_need(marked):
    """As for NNX: 5 forward; gradients add one per convolution after the layer; replays drop what is before."""
    p, x, apply, logit = marked.params, T.images(), marked.tapped.apply, resolve("logit")
    assert convolutions(lambda p, x: apply(p, x, identity_tap), p, x) == 5
    acts = capture(apply, p, x, (T.BETWEEN, T.INSIDE)).acts
    for site, grad, head in ((T.BETWEEN, 7, 2), (T.INSIDE, 6, 4)):
        assert convolutions(lambda p, x: capture(apply, p, x, (site,), (logit,)).grads, p, x) == grad
        assert convolutions(lambda p, x, a: replay(apply, p, x, site, a), p, x, acts[site]) == head


def test_the_function_is_traced_once_per_input_shape():
    calls = []

    def fn(params, x):
        calls.append(x.shape)
        return checkpoint_name(jax.nn.relu(x * params), "features").mean(axis=(1, 2))

    model = from_function(fn, jnp.float32(2.0), input_size=32)
    traced = len(calls)
    for n in (2, 2, 3, 3):
        x = jnp.ones((n, 32, 32, 3))
        capture(model.tapped.apply, model.params, x, ("features",))
        replay(model.tapped.apply, model.params, x, "features", jnp.zeros((n, 32, 32, 3)))
    assert len(calls) - traced == 1  # batch 2 was traced at construction; batch 3 once, then cached


def repeated_fn(params, x):
    for _ in range(2):
        x = checkpoint_name(jax.nn.relu(x * params), "block")
    return x.mean(axis=(1, 2))


def test_a_marker_name_used_twice_gets_one_site_per_use():
    model = from_function(repeated_fn, jnp.float32(0.5), input_size=32)
    assert model.tapped.sites == ("block#0", "block#1")
    acts = capture(model.tapped.apply, model.params, jnp.ones((1, 32, 32, 3)), ("block#0", "block#1")).acts
    np.testing.assert_allclose(acts["block#0"], 0.5)
    np.testing.assert_allclose(acts["block#1"], 0.25)


def biased_fn(params, x):
    """conv + bias (marked for FullGrad) -> relu -> gap -> dense."""
    y = jax.lax.conv_general_dilated(x, params["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = checkpoint_name(jax.nn.relu(checkpoint_name(y + params["b"].reshape(1, 1, 1, -1), "bias:conv")), "features")
    return h.mean(axis=(1, 2)) @ params["fc"]


def conv_biases(params):
    return {"bias:conv": params["b"]}


def test_bias_markers_are_fullgrad_sites_and_complete():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=4), jnp.float32), "fc": jnp.asarray(rng.normal(size=(4, 3)),
                                                                                 jnp.float32)}
    model = from_function(biased_fn, params, biases=conv_biases, input_size=32)
    assert model.tapped.sites == ("features",) and model.tapped.bias_sites == ("bias:conv",)
    x = T.images()
    logits, gx, gs = input_gradients(model.tapped.apply, model.params, x, ("bias:conv",), resolve("logit"))
    cls = jnp.argmax(logits, axis=-1)
    total = (gx * x).sum((1, 2, 3)) + (gs["bias:conv"] * params["b"][None, None, None]).sum((1, 2, 3))
    np.testing.assert_allclose(total, logits[jnp.arange(2), cls], rtol=1e-4, atol=1e-5)
    with pytest.raises(jaxcam.InvalidArgumentError, match="biases= is missing"):
        from_function(biased_fn, params, input_size=32)


def scanned_fn(params, x):
    def body(h, _):
        return checkpoint_name(jax.nn.relu(h * params), "inner"), None
    h, _ = jax.lax.scan(body, x, None, length=2)
    return checkpoint_name(h, "features").mean(axis=(1, 2))


def rematted_fn(params, x):
    return jax.checkpoint(lambda h: checkpoint_name(jax.nn.relu(h * params), "inner"))(x).mean(axis=(1, 2))


def plain_fn(params, x):
    return (x * params).mean(axis=(1, 2))


def test_bad_inputs_are_one_clear_error(marked):
    with pytest.raises(jaxcam.UnknownLayerError, match="marker 'inner' sits inside a lax.scan.*move the "
                                                       "checkpoint_name marker out"):
        from_function(scanned_fn, jnp.float32(1.0), input_size=32, layers=["inner"])
    assert from_function(scanned_fn, jnp.float32(1.0), input_size=32).tapped.sites == ("features",)
    with pytest.raises(jaxcam.InvalidArgumentError, match=r"no checkpoint_name marker at its top level and takes "
                                                          r"no tap argument.*'inner' inside jax.checkpoint"):
        from_function(rematted_fn, jnp.float32(1.0), input_size=32)
    with pytest.raises(jaxcam.InvalidArgumentError, match="no checkpoint_name marker.*checkpoint_name\\(h, "
                                                          "'features'\\)"):
        from_function(plain_fn, jnp.float32(1.0), input_size=32)
    with pytest.raises(jaxcam.UnknownLayerError, match="did you mean 'block1'"):
        from_function(T.marked_fn, marked.params, input_size=T.SIZE, layers=["blok1"])
    with pytest.raises(jaxcam.UnknownLayerError, match="did you mean 'block2'"):
        jaxcam.explain(marked, T.images(), layer="blok2", preprocessed=True)
    with pytest.raises(jaxcam.InvalidArgumentError, match="must return logits of shape \\(N, C\\)"):
        from_function(lambda p, x: checkpoint_name(x * p, "f"), jnp.float32(1.0), input_size=32)


def vit_fn(params, x):
    """A token model: 8x8 patches of a 32 px image (a 4x4 grid) after a CLS token, one token-mixing step, the
    classifier on CLS plus the mean patch."""
    p = jax.lax.conv_general_dilated(x, params["patch"], (8, 8), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    t = jnp.concatenate([jnp.broadcast_to(params["cls"], (x.shape[0], 1, 4)), p.reshape(x.shape[0], 16, 4)], 1)
    t = checkpoint_name(t, "tokens")
    t = checkpoint_name(t + jnp.tanh(t @ params["mix"]), "block")
    return (t[:, 0] + t[:, 1:].mean(1)) @ params["head"]


def test_markers_on_tokens_are_patch_grids_and_replays_keep_the_prefix():
    rng = np.random.default_rng(0)
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in
              {"patch": (8, 8, 3, 4), "cls": (1, 1, 4), "mix": (4, 4), "head": (4, 3)}.items()}
    with pytest.raises(jaxcam.InvalidArgumentError, match="no layer whose output is a feature map.*pass patch_size="):
        from_function(vit_fn, params, input_size=32)
    model = from_function(vit_fn, params, input_size=32, patch_size=8)
    assert model.tapped.sites == ("tokens", "block") and model.tapped.apply.token_sites == {"tokens", "block"}
    x = T.images()
    grid = capture(model.tapped.apply, model.params, x, ("tokens",)).acts["tokens"]
    patches = jax.lax.conv_general_dilated(x, params["patch"], (8, 8), "VALID",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(grid, patches, atol=1e-5)  # the 4x4 grid is the patch embedding, CLS dropped
    zeroed = replay(model.tapped.apply, model.params, x, "tokens", jnp.zeros_like(grid))
    t = jnp.concatenate([jnp.broadcast_to(params["cls"], (2, 1, 4)), jnp.zeros((2, 16, 4))], 1)  # CLS kept
    t = t + jnp.tanh(t @ params["mix"])
    np.testing.assert_allclose(zeroed, (t[:, 0] + t[:, 1:].mean(1)) @ params["head"], atol=1e-5)


def test_input_size_is_checked(params):
    with pytest.raises(jaxcam.InvalidArgumentError, match="input_size must be an int >= 32"):
        from_function(T.marked_fn, params, input_size="224")
