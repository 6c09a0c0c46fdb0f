"""The tapped-forward core (jaxcam.tapped) on a model written as a plain function: capture equals a hand-written
split, replay is a head-only pass (in the compiled HLO), and the whole library (explain, evaluate, robustness,
sanity) runs on a Model built with Model.from_tapped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam.models.model import Model
from jaxcam.tapped import Tapped, capture, identity_tap, replay, site_shapes


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def apply(params, x, tap):
    """conv -> relu -> [conv -> relu, skip] (a residual block whose inner activation is a site) -> gap -> fc."""
    h = tap("stem", jax.nn.relu(conv(x, params["w0"])))
    inner = tap("block.inner", jax.nn.relu(conv(h, params["w1"])))
    h = tap("block", jax.nn.relu(h + conv(inner, params["w2"])))
    return h.mean(axis=(1, 2)) @ params["fc"] + params["b"][None]


TAPPED = Tapped(apply, ("stem", "block.inner", "block"), "block", gap_fc_sites=frozenset({"block"}))


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    params = {k: jnp.asarray(rng.normal(0, 0.5, s).astype(np.float32)) for k, s in
              {"w0": (3, 3, 3, 4), "w1": (3, 3, 4, 4), "w2": (3, 3, 4, 4), "fc": (4, 3), "b": (3,)}.items()}
    return Model.from_tapped(TAPPED, params, name="tiny-residual", input_size=32)


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32))


def test_from_tapped_reads_the_output_and_names_layers(model):
    assert model.num_classes == 3 and model.default_layer == "block"
    assert model.stage_names == ("stem", "block.inner", "block", "output")
    with pytest.raises(jaxcam.UnknownLayerError, match="did you mean 'block'"):
        model.layer_site("blok")
    with pytest.raises(jaxcam.UnknownLayerError, match="not a feature map"):
        model.layer_site("output")


def test_capture_equals_a_hand_written_split_inside_a_residual_block(model, x):
    """At 'block.inner' (inside the residual block) the gradient needs the skip path: the hand split keeps it."""
    p = model.params
    score = lambda logits, c: logits[c]  # noqa: E731
    cap = capture(apply, p, x, ("block.inner",), (score,))
    h = jax.nn.relu(conv(x, p["w0"]))
    inner = jax.nn.relu(conv(h, p["w1"]))

    def head(a):  # the rest of the network given the inner activation (and the real skip input h)
        out = jax.nn.relu(h + conv(a, p["w2"]))
        return out.mean(axis=(1, 2)) @ p["fc"] + p["b"][None]
    logits, vjp_fn = jax.vjp(head, inner)
    cls = jnp.argmax(logits, -1)
    (g,) = vjp_fn(jax.nn.one_hot(cls, 3))
    np.testing.assert_allclose(cap.acts["block.inner"], inner, atol=1e-6)
    np.testing.assert_allclose(cap.grads[score]["block.inner"], g, atol=1e-5)
    np.testing.assert_allclose(replay(apply, p, x, "block.inner", inner * 0.5), head(inner * 0.5), atol=1e-5)
    maps = jaxcam.explain(model, x, jaxcam.methods.gradient_methods(), layer="block.inner", preprocessed=True,
                          raw=True)
    weights = g.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(maps["gradcam"][0], (weights * inner).sum(-1), atol=1e-5)


def test_site_shapes_list_every_site_in_call_order(model, x):
    shapes = site_shapes(apply, model.params, x)
    assert list(shapes) == ["stem", "block.inner", "block"] and shapes["block"].shape == (2, 32, 32, 4)


def _convs(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text().count("convolution(")


def test_compiled_programs_hold_only_the_convolutions_they_need(model, x):
    """In the compiled HLO (XLA removes dead work; jaxpr counts would over-count): the forward has 3 convolutions;
    the gradient at 'block' adds none (nothing after it but pooling); at 'stem' it adds the backward through the
    two after it (2 convolutions each for data gradients: 4); a replay at 'block' has no convolution at all, and
    one inside the residual block keeps only the skip path's convolution before it plus the one after it."""
    p = model.params
    score = lambda logits, c: logits[c]  # noqa: E731
    assert _convs(lambda p, x: apply(p, x, identity_tap), p, x) == 3
    grad_at = lambda site: lambda p, x: capture(apply, p, x, (site,), (score,)).grads[score][site]  # noqa: E731
    assert _convs(grad_at("block"), p, x) == 3
    assert _convs(grad_at("stem"), p, x) == 3 + 2
    a_block = jnp.zeros((2, 32, 32, 4))
    assert _convs(lambda p, x, a: replay(apply, p, x, "block", a), p, x, a_block) == 0
    assert _convs(lambda p, x, a: replay(apply, p, x, "block.inner", a), p, x, a_block) == 2


def test_the_library_runs_on_a_tapped_model(model, x, tmp_path):
    maps = jaxcam.explain(model, x, "all", preprocessed=True)
    assert all(np.isfinite(np.asarray(m)).all() for m in maps.values())
    table = jaxcam.evaluate(model, x, ["gradcam", "ablationcam"], ["deletion_auc", "road_combined", "sparseness"],
                            preprocessed=True)
    assert len(table) == 2 * 2 * 3
    images = list(np.random.default_rng(2).uniform(size=(2, 32, 32, 3)).astype(np.float32))
    rows = jaxcam.robustness.run(model, images, str(tmp_path / "rob"), methods=("gradcam",), noises=("gaussian",),
                                 severities=(1,), draws=1, size=32, progress=False)
    assert len(rows) == 2
    stages = jaxcam.metrics.stage_parameters(model)
    assert stages == {"stem": ("w0",), "block.inner": ("w1",), "block": ("w2",), "output": ("b", "fc")}
    steps = jaxcam.metrics.cascading_randomisation(model, x, "gradcam", preprocessed=True,
                                                   similarities=("spearman",))
    assert set(steps["stage"].tolist()) >= {"output", "block", "block.inner", "stem"}
    assert np.isfinite(steps["value"].astype(float)).all()


def test_fullgrad_is_refused_clearly_without_bias_sites(model, x):
    with pytest.raises(jaxcam.JaxcamError, match="fullgrad"):
        jaxcam.explain(model, x, "fullgrad", preprocessed=True)
