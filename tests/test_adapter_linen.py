"""from_linen: a user's flax.linen CNN with residual blocks (random weights) explained through the interceptor tap.

Parity with a hand-written split at a layer between blocks and at one inside a residual block (every gradient
method, Ablation-CAM and Score-CAM), the same maps through nn.remat, convolutions counted in the compiled HLO,
explain/evaluate/robustness on the user model, FullGrad's effective biases, and one clear error per bad input.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import targets
from jaxcam.methods import gradient_methods
from jaxcam.models.linen import from_linen
from jaxcam.tapped import capture, replay

from .hand_split import assert_maps_close, reference_raw_maps

SIZE = 32


class Block(nn.Module):
    """relu(x + conv2(relu(conv1(x)))): a residual block whose skip path is the block's input."""

    channels: int

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(self.channels, (3, 3), name="conv1")(x))
        h = nn.Conv(self.channels, (3, 3), name="conv2")(h)
        return nn.relu(x + h)


class Pool(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x.mean(axis=(1, 2))


class CNN(nn.Module):
    """stem (stride 2) -> block_1 -> block_2 -> global average pool -> head: five convolutions."""

    remat: bool = False
    num_classes: int = 5

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), strides=2, name="stem")(x))
        block = nn.remat(Block) if self.remat else Block
        x = block(8, name="block_1")(x)
        x = block(8, name="block_2")(x)
        return nn.Dense(self.num_classes, name="head")(Pool(name="pool")(x))


def conv(p, x, strides=1):
    return nn.Conv(p["kernel"].shape[-1], (3, 3), strides=strides).apply({"params": p}, x)


def hand_stem(v, x):
    return nn.relu(conv(v["params"]["stem"], x, 2))


def hand_block(p, x):
    return nn.relu(x + conv(p["conv2"], nn.relu(conv(p["conv1"], x))))


def hand_head(v, h):
    return nn.Dense(5).apply({"params": v["params"]["head"]}, h.mean(axis=(1, 2)))


def split_between(v):
    """The split at block_1's output."""
    p = v["params"]
    return (lambda x: hand_block(p["block_1"], hand_stem(v, x)),
            lambda x, a: hand_head(v, hand_block(p["block_2"], a)))


def split_inside(v):
    """The split at block_2.conv1's output, inside the residual block: the head needs the skip path from x."""
    p = v["params"]

    def skip(x):
        return hand_block(p["block_1"], hand_stem(v, x))

    return (lambda x: conv(p["block_2"]["conv1"], skip(x)),
            lambda x, a: hand_head(v, nn.relu(skip(x) + conv(p["block_2"]["conv2"], nn.relu(a)))))


@pytest.fixture(scope="module")
def variables():
    return CNN().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))


@pytest.fixture(scope="module")
def model(variables):
    return from_linen(CNN(), variables, input_size=SIZE)


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(0).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32))


def test_sites_are_module_paths_in_forward_order(model):
    assert model.tapped.sites == ("stem", "block_1.conv1", "block_1.conv2", "block_1", "block_2.conv1",
                                  "block_2.conv2", "block_2")
    assert model.default_layer == "block_2"
    assert model.tapped.gap_fc_sites == frozenset({"block_2"})  # only there is the head FC(mean)
    assert model.tapped.bias_sites == tuple(f"bias:{i}" for i in range(5))  # the five convolutions with a bias
    assert model.num_classes == 5 and model.input_size == SIZE


@pytest.mark.parametrize("where", ["between", "inside"])
def test_every_method_equals_a_hand_written_split(model, variables, x, where):
    layer, (features, head) = {"between": ("block_1", split_between(variables)),
                               "inside": ("block_2.conv1", split_inside(variables))}[where]
    methods = gradient_methods() + ["ablationcam", "scorecam"]
    want, logits = reference_raw_maps(features, head, x, methods)
    ours, our_logits, _ = jaxcam.explain(model, x, methods, layer=layer, preprocessed=True, raw=True,
                                         return_logits=True)
    np.testing.assert_allclose(our_logits, logits, rtol=1e-5, atol=1e-5)
    for name in methods:
        assert_maps_close(ours[name][0], want[name], 1e-5, f"{name} at {layer}")
        assert np.abs(want[name]).max() > 0, name  # not a vacuous comparison


def test_remat_gives_the_same_activations_gradients_and_replays(model, variables, x):
    """nn.remat runs the blocks in a nested trace: sites there are tapped through collections in two passes.
    Activations, gradients, replays and FullGrad's bias gradients equal the plain model's, so every map does."""
    remat = from_linen(CNN(remat=True), variables, input_size=SIZE)
    assert remat.tapped.sites == model.tapped.sites and remat.tapped.bias_sites == model.tapped.bias_sites
    assert [s.lifted for s in remat.tapped.apply.sites] == [s.path[0].startswith("block")
                                                            for s in remat.tapped.apply.sites]
    sites = ("block_1", "block_2.conv1") + model.tapped.bias_sites

    def both(v, x, a):
        out = []
        for m in (model, remat):
            cap = capture(m.tapped.apply, v, x, sites, (targets.logit,))
            out.append((cap.logits, cap.acts, cap.grads[targets.logit],
                        [replay(m.tapped.apply, v, x, s, a[s]) for s in ("block_1", "block_2.conv1")]))
        return out

    a = {"block_1": 0.5 * jnp.ones((2, 16, 16, 8)), "block_2.conv1": -jnp.ones((2, 16, 16, 8))}
    plain, rem = jax.jit(both)(variables, x, a)
    for p, r in zip(jax.tree.leaves(plain), jax.tree.leaves(rem)):
        np.testing.assert_allclose(r, p, rtol=1e-5, atol=1e-5)
    got = jaxcam.explain(remat, x, ["gradcam", "ablationcam"], layer="block_2.conv1", preprocessed=True)
    want = jaxcam.explain(model, x, ["gradcam", "ablationcam"], layer="block_2.conv1", preprocessed=True)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)


def test_a_python_side_channel_inside_remat_leaks(variables, x):
    """Why remat needs the collections: a tap recording into a dict from inside nn.remat leaks a tracer."""
    seen = {}

    def intercept(f, args, kwargs, ctx):
        y = f(*args, **kwargs)
        if ctx.module.path == ("block_1", "conv1") and ctx.method_name == "__call__":
            seen["a"] = y
        return y

    def run(v, x):
        with nn.intercept_methods(intercept):
            CNN(remat=True).apply(v, x)
        return seen["a"]

    with pytest.raises(jax.errors.UnexpectedTracerError):
        jax.jit(run)(variables, x)


def _convolutions(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text().count(" convolution(")


def test_compiled_programs_hold_only_the_convolutions_they_need(model, variables, x):
    apply, score = model.tapped.apply, (targets.logit,)
    assert _convolutions(lambda v, x: model.tapped.forward(v, x), variables, x) == 5
    # the gradient program: the forward's 5 convolutions plus one backward convolution per conv after the layer
    for layer, after in (("block_1", 2), ("block_2.conv1", 1), ("block_2", 0)):
        n = _convolutions(lambda v, x, s=layer: capture(apply, v, x, (s,), score).grads, variables, x)
        assert n == 5 + after, (layer, n)
    # head-only replays: nothing before a layer between blocks; inside a block the skip path's convs remain
    a1 = jnp.zeros((2, 16, 16, 8))
    assert _convolutions(lambda v, x, a: replay(apply, v, x, "block_1", a), variables, x, a1) == 2
    assert _convolutions(lambda v, x, a: replay(apply, v, x, "block_2.conv1", a), variables, x, a1) == 4


def test_explain_evaluate_and_robustness_run_on_a_user_model(model, tmp_path):
    images = list(jaxcam.sample_images().values())[:2]
    maps = jaxcam.explain(model, images, ["gradcam", "cam"])
    assert maps["gradcam"].shape == (2, SIZE, SIZE) and np.isfinite(maps["gradcam"]).all()
    np.testing.assert_allclose(maps["cam"], maps["gradcam"], atol=1e-5)  # CAM = Grad-CAM x h*w on GAP + FC
    table = jaxcam.evaluate(model, images, ["gradcam"], ["deletion_auc", "road_combined", "sparseness"])
    assert len(table) == 6 and np.isfinite(np.asarray(table["value"], np.float64)).all()
    rows = jaxcam.robustness.run(model, images, str(tmp_path), methods=("gradcam",), noises=("gaussian",),
                                 severities=(1,), draws=1, image_batch=2, chunk=8, size=SIZE, progress=False)
    assert len(rows) == 2


def test_training_mode_and_missing_collections_are_refused():
    class BNNet(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.BatchNorm(use_running_average=not train, name="bn")(nn.Conv(4, (3, 3), name="conv")(x))
            return nn.Dense(3)(x.mean(axis=(1, 2)))

    class DropNet(nn.Module):
        @nn.compact
        def __call__(self, x, deterministic: bool = False):
            x = nn.Dropout(0.5)(nn.Conv(4, (3, 3))(x), deterministic=deterministic)
            return nn.Dense(3)(x.mean(axis=(1, 2)))

    xs = jnp.zeros((1, SIZE, SIZE, 3))
    bn_vars = BNNet().init(jax.random.key(0), xs, train=False)
    with pytest.raises(jaxcam.InvalidArgumentError, match=r"training mode.*'train': False"):
        from_linen(BNNet(), bn_vars, input_size=SIZE)
    with pytest.raises(jaxcam.InvalidArgumentError, match="batch_stats"):
        from_linen(BNNet(), {"params": bn_vars["params"]}, input_size=SIZE, call_kwargs={"train": False})
    drop_vars = DropNet().init(jax.random.key(0), xs, deterministic=True)
    with pytest.raises(jaxcam.InvalidArgumentError, match=r"dropout.*'deterministic': True"):
        from_linen(DropNet(), drop_vars, input_size=SIZE)
    m = from_linen(BNNet(), bn_vars, input_size=SIZE, call_kwargs={"train": False})
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, SIZE, SIZE, 3)).astype(np.float32))
    np.testing.assert_allclose(m(x)[:1], m(x[:1]), atol=1e-6)  # evaluation mode: no dependence on the batch


def test_fullgrad_uses_effective_batchnorm_biases():
    class BNNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(
                nn.Conv(4, (3, 3), use_bias=False, name="conv")(x)))
            return nn.Dense(3, name="fc")(x.mean(axis=(1, 2)))

    v = BNNet().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    rng = np.random.default_rng(2)
    stats = {"mean": rng.standard_normal(4).astype(np.float32), "var": rng.uniform(0.5, 2, 4).astype(np.float32)}
    params = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape).astype(np.float32)), v["params"])
    v = {"params": params, "batch_stats": {"bn": stats}}
    m = from_linen(BNNet(), v, input_size=SIZE)
    assert m.tapped.bias_sites == ("bias:0",)  # the conv has no bias; the BatchNorm has
    p = params["bn"]
    want = p["bias"] - stats["mean"] * p["scale"] / np.sqrt(stats["var"] + 1e-3)
    np.testing.assert_allclose(m.tapped.biases(m.params)["bias:0"], want, rtol=1e-6)
    maps = jaxcam.explain(m, jnp.ones((1, SIZE, SIZE, 3)), "fullgrad", preprocessed=True)
    assert maps.shape == (1, SIZE, SIZE) and np.isfinite(maps).all()


def test_outputs_that_are_not_arrays_need_a_selector():
    class Tupled(nn.Module):
        dict_out: bool = False

        @nn.compact
        def __call__(self, x):
            h = nn.Conv(4, (3, 3), name="conv")(x)
            logits = nn.Dense(3)(h.mean(axis=(1, 2)))
            return {"logits": logits, "features": h} if self.dict_out else (logits, {"features": h})

    v = Tupled().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    with pytest.raises(jaxcam.InvalidArgumentError, match=r"returns a tuple.*pass output=.*output=0"):
        from_linen(Tupled(), v, input_size=SIZE)
    with pytest.raises(jaxcam.InvalidArgumentError, match="does not select an array"):
        from_linen(Tupled(dict_out=True), v, input_size=SIZE, output="scores")
    x = jnp.ones((1, SIZE, SIZE, 3))
    by_index = from_linen(Tupled(), v, input_size=SIZE, output=0)
    by_key = from_linen(Tupled(dict_out=True), v, input_size=SIZE, output="logits")
    by_fn = from_linen(Tupled(), v, input_size=SIZE, output=lambda out: out[0])
    np.testing.assert_array_equal(by_index(x), by_key(x))
    np.testing.assert_array_equal(by_fn(x), by_key(x))


def test_unknown_pooled_and_scanned_layers_are_clear_errors(model, variables, x):
    with pytest.raises(jaxcam.UnknownLayerError, match=r"did you mean 'block_2'.*'block_1.conv1'"):
        from_linen(CNN(), variables, input_size=SIZE, default_layer="blok_2")
    with pytest.raises(jaxcam.UnknownLayerError, match="did you mean 'block_1'"):
        jaxcam.explain(model, x, layer="block1", preprocessed=True)
    with pytest.raises(jaxcam.InvalidArgumentError, match=r"'pool' cannot be explained: .*pooled vector"):
        from_linen(CNN(), variables, input_size=SIZE, layers=["pool"])
    assert "pooled vector" in dict(model.tapped.apply.refused)["pool"]  # for errors raised later, by layer name

    class Body(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return x + nn.Conv(4, (3, 3), name="conv")(x), None

    class Scanned(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3), name="stem")(x)
            x, _ = nn.scan(Body, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)(
                name="blocks")(x, None)
            return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))

    sv = Scanned().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    with pytest.raises(jaxcam.InvalidArgumentError, match=r"'blocks.conv' cannot be explained: it runs inside nn.scan"):
        from_linen(Scanned(), sv, input_size=SIZE, default_layer="blocks.conv")
    m = from_linen(Scanned(), sv, input_size=SIZE)
    assert m.tapped.sites == ("stem",)  # the scanned body's layers are not offered
    with pytest.raises(jaxcam.InvalidArgumentError, match="FullGrad needs .* inside nn.scan"):
        jaxcam.explain(m, x[:1, :, :, :], "fullgrad", preprocessed=True)
    with pytest.raises(jaxcam.InvalidArgumentError, match="flax.linen Module"):
        from_linen(object(), variables)
    with pytest.raises(jaxcam.InvalidArgumentError, match=r"\{'params'"):
        from_linen(CNN(), variables["params"], input_size=SIZE)


def test_shared_modules_and_channels_first_modules():
    """A module called twice gets one site per call (``conv#0``, ``conv#1``); a module taking NCHW input is
    explained with layout="NCHW" exactly as its NHWC twin."""

    class Twice(nn.Module):
        nchw: bool = False

        @nn.compact
        def __call__(self, x):
            x = jnp.transpose(x, (0, 2, 3, 1)) if self.nchw else x
            conv = nn.Conv(3, (3, 3), name="conv")
            x = conv(nn.relu(conv(x)))
            return nn.Dense(2, name="head")(x.mean(axis=(1, 2)))

    v = Twice().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    nhwc = from_linen(Twice(), v, input_size=SIZE)
    nchw = from_linen(Twice(nchw=True), v, input_size=SIZE, layout="NCHW")
    assert nhwc.tapped.sites == nchw.tapped.sites == ("conv#0", "conv#1")
    assert set(dict(nhwc.tapped.apply.refused)) == {"head"}  # the classifier outputs no grid
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32))
    a = jaxcam.explain(nhwc, x, ["gradcam", "ablationcam"], layer="conv#0", preprocessed=True)
    b = jaxcam.explain(nchw, x, ["gradcam", "ablationcam"], layer="conv#0", preprocessed=True)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6)
    cap = capture(nhwc.tapped.apply, v, x, ("conv#0", "conv#1"))
    first = nn.Conv(3, (3, 3)).apply({"params": v["params"]["conv"]}, x)
    np.testing.assert_allclose(cap.acts["conv#0"], first, atol=1e-6)
    np.testing.assert_allclose(cap.acts["conv#1"], nn.Conv(3, (3, 3)).apply({"params": v["params"]["conv"]},
                                                                              nn.relu(first)), atol=1e-6)
