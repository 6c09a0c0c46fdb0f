"""from_nnx: a user's flax.nnx module explained through the tapped forward. The tiny residual CNN of tiny_resnet.py
gives every gradient method's maps equal to a hand-written split, between the blocks and inside a residual block;
Ablation-CAM's weights equal a hand-computed ablation; the compiled programs hold only the convolutions they need;
the whole library runs on it; training mode, shared submodules and bad layers are each one clear error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcam
from jaxcam import robustness
from jaxcam.errors import LayerNotCalledError
from jaxcam.models.nnx_adapter import from_nnx
from jaxcam.tapped import capture, identity_tap, input_gradients, replay
from jaxcam.targets import resolve

from . import tiny_resnet as T


def convolutions(f, *args) -> int:
    """Convolutions in the compiled program (under jit XLA removes the work a replay makes dead)."""
    return jax.jit(f).lower(*args).compile().as_text().count("convolution(")


@pytest.fixture(scope="module")
def model():
    return from_nnx(T.nnx_model(), input_size=T.SIZE, name="tiny")


@pytest.fixture(scope="module")
def params():
    return {k: tuple(jnp.asarray(a) for a in v) for k, v in T.weights().items()}


def test_sites_are_submodule_paths_in_call_order(model, params):
    assert model.tapped.sites == ("stem", "block1.conv_a", "block1.conv_b", "block1", "block2.conv_a",
                                  "block2.conv_b", "block2")
    assert model.default_layer == "block2" and model.tapped.gap_fc_sites == {"block2"}
    assert model.num_classes == T.CLASSES
    np.testing.assert_allclose(model(T.images()), T.marked_fn(params, T.images()), atol=1e-5)


def test_every_gradient_method_equals_a_hand_split_and_ablation_equals_a_hand_ablation(model, params):
    """Both sites in one explain call (raw per-layer maps); block2.conv_a sits inside a residual block, where the
    rest of the network also needs the skip input: the hand split passes it, the tapped forward keeps it."""
    T.check_against_hand_split(model, params)


def test_compiled_programs_hold_only_the_convolutions_they_need(model):
    """Five convolutions forward. The gradient program adds one per convolution after the layer (block1: block2's
    two; block2.conv_a: conv_b); a head-only replay at block1 keeps block2's two, and inside block2 it keeps the
    skip path (stem, block1: three) and conv_b, but never the replaced conv_a."""
    p, x, apply, logit = model.params, T.images(), model.tapped.apply, resolve("logit")
    assert convolutions(lambda p, x: apply(p, x, identity_tap), p, x) == 5
    acts = capture(apply, p, x, (T.BETWEEN, T.INSIDE)).acts
    for site, grad, head in ((T.BETWEEN, 7, 2), (T.INSIDE, 6, 4)):
        assert convolutions(lambda p, x: capture(apply, p, x, (site,), (logit,)).grads, p, x) == grad
        assert convolutions(lambda p, x, a: replay(apply, p, x, site, a), p, x, acts[site]) == head


def test_explain_evaluate_and_robustness_run_on_an_nnx_user_model(model, tmp_path):
    images = list(jaxcam.sample_images().values())[:2]
    maps = jaxcam.explain(model, images, "gradcam")
    assert maps.shape == (2, T.SIZE, T.SIZE) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    table = jaxcam.evaluate(model, images, "cam", ["deletion_auc", "sparseness"])
    assert len(table) == 4 and np.isfinite(table["value"].astype(float)).all()
    rows = robustness.run(model, images, str(tmp_path / "run"), methods=("gradcam",), noises=("gaussian",),
                          severities=(1,), draws=1, image_batch=2, chunk=8, size=T.SIZE, progress=False)
    assert len(rows) == 2


class Normed(nnx.Module):
    """conv -> BatchNorm -> relu -> dropout -> gap -> dense: training mode matters here."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), strides=2, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.conv2 = nnx.Conv(4, 6, (3, 3), use_bias=False, rngs=rngs)
        self.fc = nnx.Linear(6, 3, rngs=rngs)
        rng = np.random.default_rng(0)  # running statistics away from (0, 1), so the effective bias matters
        self.bn.mean[...] = jnp.asarray(rng.normal(0, 0.5, 4), jnp.float32)
        self.bn.var[...] = jnp.asarray(rng.uniform(0.5, 2, 4), jnp.float32)
        self.bn.bias[...] = jnp.asarray(rng.normal(0, 0.3, 4), jnp.float32)

    def __call__(self, x):
        h = self.drop(jax.nn.relu(self.bn(self.conv(x))))
        return self.fc(jax.nn.relu(self.conv2(h)).mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def normed():
    return Normed(nnx.Rngs(0))  # in training mode, as NNX builds it


def test_training_mode_is_refused_with_the_fix_and_eval_mode_is_batch_independent(normed):
    with pytest.raises(jaxcam.InvalidArgumentError, match=r"training mode.*bn \(BatchNorm.*drop \(Dropout.*"
                                                          r"module\.eval\(\)"):
        from_nnx(normed, input_size=32)
    model = from_nnx(nnx.view(normed, use_running_average=True, deterministic=True), input_size=32)
    assert normed.bn.use_running_average is False  # the view is a copy: the user's module is unchanged
    x = T.images(4)
    np.testing.assert_allclose(model(x)[:1], model(jnp.concatenate([x[:1], 10 * x[1:]]))[:1], atol=1e-6)


def test_fullgrad_bias_sites_are_complete(normed):
    """For a network that is piecewise linear given its biases, logit = <dS/dx, x> + sum_l <dS/dy_l, b_l> + fc bias
    exactly (FullGrad's completeness): the bias sites sit after every bias-carrying layer with a map output (the
    conv's bias, the BatchNorm's effective bias from running statistics), computed from the traced params."""
    module = nnx.view(normed, use_running_average=True, deterministic=True)
    model = from_nnx(module, input_size=32)
    assert model.tapped.bias_sites == ("bias:0", "bias:1")  # conv (with bias), bn; conv2 has none; fc is pooled
    x, logit, sites = T.images(), resolve("logit"), model.tapped.bias_sites

    @jax.jit
    def completeness(params, x):
        logits, gx, gsites = input_gradients(model.tapped.apply, params, x, sites, logit)
        biases = model.tapped.biases(params)
        total = (gx * x).sum((1, 2, 3)) + sum((gsites[s] * biases[s][None, None, None]).sum((1, 2, 3)) for s in sites)
        return logits, total

    logits, total = completeness(model.params, x)
    cls = jnp.argmax(logits, axis=-1)
    np.testing.assert_allclose(total + module.fc.bias[...][cls], logits[jnp.arange(2), cls], rtol=1e-4, atol=1e-5)
    assert jaxcam.explain(model, x, "fullgrad", preprocessed=True).shape == (2, 32, 32)


class Shared(nnx.Module):
    """One block applied twice (shared weights), and a submodule the forward never calls."""

    def __init__(self, rngs):
        self.stem = nnx.Conv(3, 4, (3, 3), strides=2, rngs=rngs)
        self.block = nnx.Conv(4, 4, (3, 3), rngs=rngs)
        self.unused = nnx.Conv(4, 4, (1, 1), rngs=rngs)
        self.fc = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.block(jax.nn.relu(self.block(jax.nn.relu(self.stem(x))))))
        return self.fc(h.mean(axis=(1, 2)))


def test_two_instances_of_a_module_share_one_compiled_program():
    """The tapped forward holds the graph definition, not the weights: a second instance of the same class (other
    weights) is an equal, equally hashed Tapped, so explain reuses the compiled program (and gives its own maps)."""
    from jaxcam import _explain

    a, b = from_nnx(Shared(nnx.Rngs(0)), input_size=32), from_nnx(Shared(nnx.Rngs(1)), input_size=32)
    assert a.tapped == b.tapped and hash(a.tapped) == hash(b.tapped)
    x = T.images()
    maps_a = jaxcam.explain(a, x, "gradcam", preprocessed=True)
    traced = _explain.TRACE_COUNT["explain"]
    maps_b = jaxcam.explain(b, x, "gradcam", preprocessed=True)
    assert _explain.TRACE_COUNT["explain"] == traced and not np.allclose(maps_a, maps_b)


def test_a_submodule_called_twice_gets_one_site_per_call():
    module = Shared(nnx.Rngs(0))
    model = from_nnx(module, input_size=32)
    assert model.tapped.sites == ("stem", "block#0", "block#1") and model.default_layer == "block#1"
    x = T.images()
    acts = capture(model.tapped.apply, model.params, x, ("block#0", "block#1")).acts
    np.testing.assert_allclose(acts["block#1"], module.block(jax.nn.relu(acts["block#0"])), atol=1e-5)
    np.testing.assert_allclose(replay(model.tapped.apply, model.params, x, "block#1", acts["block#1"]), model(x),
                               atol=1e-6)
    with pytest.raises(jaxcam.UnknownLayerError, match=r"called 2 times.*valid layers: 'block#0', 'block#1'"):
        from_nnx(Shared(nnx.Rngs(0)), input_size=32, layers=["block"])


def test_bad_layers_and_outputs_are_one_clear_error(model):
    module = Shared(nnx.Rngs(0))
    with pytest.raises(LayerNotCalledError, match="'unused'.*never calls it"):
        from_nnx(module, input_size=32, layers=["unused"])
    with pytest.raises(jaxcam.UnknownLayerError, match="did you mean 'stem'"):
        from_nnx(module, input_size=32, default_layer="stme")
    with pytest.raises(jaxcam.UnknownLayerError, match="did you mean 'block1'"):
        jaxcam.explain(model, T.images(), layer="blok1", preprocessed=True)
    with pytest.raises(jaxcam.InvalidArgumentError, match="'fc' of Shared outputs float32\\[2, 3\\], not a feature"):
        from_nnx(module, input_size=32, layers=["fc"])
    with pytest.raises(jaxcam.InvalidArgumentError, match="takes a flax.nnx.Module"):
        from_nnx(lambda x: x)


class Pair(nnx.Module):
    def __init__(self, rngs):
        self.net = Shared(rngs)

    def __call__(self, x):
        return self.net(x), {"aux": x}


def test_an_output_that_is_not_logits_needs_a_selector():
    with pytest.raises(jaxcam.InvalidArgumentError, match="must return logits of shape \\(N, C\\).*pass output="):
        from_nnx(Pair(nnx.Rngs(0)), input_size=32)
    model = from_nnx(Pair(nnx.Rngs(0)), input_size=32, output=0)
    assert model.tapped.sites == ("net.stem", "net.block#0", "net.block#1") and model.num_classes == 3


class Rematted(nnx.Module):
    """A block run under a transformation inside __call__: nnx.remat, or jax.checkpoint of a function of it."""

    def __init__(self, rngs, nnx_remat):
        self.stem = nnx.Conv(3, 4, (3, 3), strides=2, rngs=rngs)
        self.block = nnx.Conv(4, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(4, 3, rngs=rngs)
        self.nnx_remat = nnx_remat

    def __call__(self, x):
        h = jax.nn.relu(self.stem(x))
        if self.nnx_remat:
            h = nnx.remat(lambda b, h: b(h))(self.block, h)
        else:
            h = jax.checkpoint(lambda h: self.block(h))(h)
        return self.fc(h.mean(axis=(1, 2)))


def test_layers_inside_a_transformation_are_refused_and_nnx_transforms_under_vjp_explained():
    """A call inside the module's own remat/scan/vmap runs in another trace: it is not a site, and naming it says
    why. Flax itself refuses nnx.remat under jax.vjp of the forward (TraceContextError): one error with the fix."""
    x = T.images()
    with pytest.raises(jaxcam.InvalidArgumentError, match="'block' of Rematted runs inside a transformation within "
                                                          "the model.*pick a layer outside it: stem"):
        from_nnx(Rematted(nnx.Rngs(0), False), input_size=32, layers=["block"])
    model = from_nnx(Rematted(nnx.Rngs(0), False), input_size=32)
    assert model.tapped.sites == ("stem",)
    assert jaxcam.explain(model, x, "gradcam", preprocessed=True).shape == (2, 32, 32)
    model = from_nnx(Rematted(nnx.Rngs(0), True), input_size=32)
    with pytest.raises(jaxcam.InvalidArgumentError, match=r"runs an NNX transformation.*jax.checkpoint\(lambda h"):
        jaxcam.explain(model, x, "gradcam", preprocessed=True)

