"""The methods engine: registry battery (jit == eager, vmap == loop), one pass for all gradient methods,
no recompiles, closed-form identities, degenerate inputs, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import METHODS, explain
from jaxcam._explain import TRACE_COUNT
from jaxcam.methods import gradient_methods

from .jaxprs import count
from .toy import toy_input, toy_model


@pytest.fixture(scope="module")
def x64():
    return jnp.asarray(np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype(np.float32))


# small settings for the costly methods, so the battery stays fast
FAST = {"sscam": {"num_samples": 2}, "cameras": {"scales": (64, 80)},
        "metacam": {"members": ("gradcam", "layercam", "eigencam")}}


def fast(names):
    return {m: o for m, o in FAST.items() if m in names}


def fast_toy(names):
    return {m: o for m, o in TOY_FAST.items() if m in names}


# BroadCAM needs weights fitted on a set of images (its only required option); fitted once on the toy network
TOY_BROADCAM = jaxcam.fit_broadcam(toy_model(), toy_input(6, seed=7), labels=[0, 1, 2, 3, 4, 0], layer="relu")
TOY_FAST = FAST | {"cameras": {"scales": (32, 40)}, "broadcam": {"weights": TOY_BROADCAM},
                   "sycam": {"expression": "mean(G) + softmax(S) * D"}}  # every kind of SyCAM terminal
CNN_METHODS = [m for m, spec in METHODS.items() if not spec.attention and not spec.own_maps]  # all but those
# reading a ViT's attention or a model's own exit maps (tests/test_vit.py, tests/test_ame.py)


@pytest.fixture(scope="module")
def toy():
    return toy_model()


@pytest.fixture(scope="module")
def all_toy(toy):
    return explain(toy, toy_input(), "all", layer="relu", preprocessed=True, batch_size=4, method_options=TOY_FAST)


def test_registry_declares_everything():
    for name, spec in METHODS.items():
        assert spec.name == name and callable(spec.fn)
        assert spec.family in ("gradient", "activation", "perturbation", "ensemble", "model", "synthesised")
        assert spec.output in ("weighted", "projection", "map", "whole_network", "multiscale", "ensemble")
        assert spec.gradients or spec.family != "gradient"
        assert not (spec.gradients and spec.family == "activation")
        assert spec.paper and spec.parity and spec.cost
    assert {"gradcam", "gradcam++", "scorecam", "ablationcam", "eigencam", "finercam"} <= set(METHODS)


def test_all_methods_give_maps_in_unit_range(all_toy):
    # the toy's layer feeds GAP + FC, so CAM applies too; AD-CAM needs a ViT's attention (tests/test_vit.py)
    assert list(all_toy) == CNN_METHODS
    for name, maps in all_toy.items():
        maps = np.asarray(maps)
        assert maps.shape == (2, 32, 32) and maps.dtype == np.float32, name
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, name
        assert maps.max() > 0.5, name  # not degenerate on a random model


def test_cam_applies_only_before_gap_fc(resnet18, x64):
    """"all" keeps CAM only where the layer feeds global average pooling and the classifier."""
    from jaxcam._explain import _gap_fc_ok

    assert _gap_fc_ok(resnet18, (resnet18.layer_site("layer4"),))
    assert not _gap_fc_ok(resnet18, (resnet18.layer_site("layer3"),))
    maps = explain(resnet18, x64, ["gradcam", "layercam", "eigencam", "reciprocam"], layer="layer3",
                   preprocessed=True)
    assert all(m.shape == (2, 64, 64) for m in maps.values())


@pytest.mark.parametrize("name", CNN_METHODS)
def test_vmap_equals_loop(name, toy, all_toy):
    x = toy_input()
    one = [explain(toy, x[i:i + 1], name, layer="relu", preprocessed=True, batch_size=4,
                   method_options=fast_toy([name]))[0] for i in range(2)]
    np.testing.assert_allclose(np.stack(one), all_toy[name], atol=2e-5)


@pytest.mark.parametrize("name", CNN_METHODS)
def test_jit_equals_eager(name, toy, all_toy):
    x = toy_input()
    with jax.disable_jit():
        eager = explain(toy, x, name, layer="relu", preprocessed=True, batch_size=4, method_options=fast_toy([name]))
    np.testing.assert_allclose(all_toy[name], eager, atol=2e-5)


def _convs(model, x, methods, layer):
    from jaxcam import _explain

    sites = _explain._resolve_layers(model, layer)
    scores = tuple(jaxcam.targets.resolve(METHODS[m].target) for m in methods)
    cfg = _explain.Config(sites, tuple(methods), scores, raw=False, eigen_smooth=False,
                          eigen_sign="max_abs", aug_smooth=False, noise_samples=0, noise_std=0.0, batch_size=32,
                          sequential_examples=True, options=(), mean=model.arch.mean, std=model.arch.std)
    prog = _explain._program(model.tapped, cfg)
    return count(jax.make_jaxpr(prog)(model.params, x, None, jax.random.key(0)).jaxpr, "conv_general_dilated")


def test_all_gradient_methods_share_one_forward_and_one_backward(resnet18, x64):
    """ResNet-18 has 17 spatial convolutions (its three 1x1 downsamples are matrix products); from layer3 the
    backward crosses layer4's 4. One method or all first-order gradient methods (three different target scores
    among them) trace the same 21 convolutions."""
    first_order = [m for m in gradient_methods() if not METHODS[m].hvp]
    assert len(first_order) >= 10
    assert _convs(resnet18, x64, ["gradcam"], "layer3") == 21
    assert _convs(resnet18, x64, first_order, "layer3") == 21
    assert _convs(resnet18, x64, ["eigencam"], "layer3") == 17  # no gradient, no backward


def test_new_classes_and_batches_do_not_recompile(resnet18, x64):
    explain(resnet18, x64, ["gradcam", "layercam"], targets=[1, 2], preprocessed=True)
    before = TRACE_COUNT["explain"]
    explain(resnet18, x64, ["gradcam", "layercam"], targets=[7, 999], preprocessed=True)
    explain(resnet18, x64 * 0.5, ["gradcam", "layercam"], targets=3, preprocessed=True)
    assert TRACE_COUNT["explain"] == before
    explain(resnet18, x64, ["gradcam", "layercam"], preprocessed=True)  # predicted targets: a new program
    assert TRACE_COUNT["explain"] == before + 1


def test_given_targets_are_used(resnet18, x64):
    _, logits, cls = explain(resnet18, x64, "gradcam", preprocessed=True, return_logits=True)
    assert cls.tolist() == np.argmax(logits, -1).tolist()
    _, _, cls = explain(resnet18, x64, "gradcam", targets=[3, 4], preprocessed=True, return_logits=True)
    assert cls.tolist() == [3, 4]


def test_gap_fc_identities():
    """On a GAP + FC head the gradient is W_c / (h w) everywhere, so Grad-CAM, HiResCAM and XGrad-CAM give the same
    raw map and CAM gives h*w times it; Recipro-CAM has a closed form."""
    model = toy_model()
    x = toy_input()
    raw = explain(model, x, ["gradcam", "hirescam", "xgradcam", "cam", "shapleycam", "reciprocam", "eigencam"],
                  layer="relu", preprocessed=True, raw=True, target="logit")
    g = np.asarray(raw["gradcam"][0])
    hw = g.shape[1] * g.shape[2]
    np.testing.assert_allclose(raw["hirescam"][0], g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raw["xgradcam"][0], g, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(raw["cam"][0], g * hw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(raw["shapleycam"][0], g, rtol=1e-5, atol=1e-6)  # linear head: zero Hessian
    # Recipro-CAM: keeping only position (i, j) -> GAP gives A_ij / (h w) -> softmax_c(W A_ij / hw + b)
    features_fn, _ = model.split("relu")
    a = np.asarray(features_fn(x))
    kernel, bias = (np.asarray(model.params["head"]["fc"][k][...]) for k in ("kernel", "bias"))
    logits = a / hw @ kernel + bias
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    cls = np.argmax(np.asarray(model(x)), -1)
    want = np.stack([p[n, :, :, cls[n]] for n in range(2)])
    np.testing.assert_allclose(raw["reciprocam"][0], want, rtol=1e-5, atol=1e-6)
    # Eigen-CAM: the first principal component, sign fixed so the largest magnitude is positive
    flat = a[0].reshape(-1, a.shape[-1]) - a[0].reshape(-1, a.shape[-1]).mean(0)
    proj = flat @ np.linalg.svd(flat, full_matrices=False)[2][0]
    proj = -proj if abs(proj.min()) > abs(proj.max()) else proj
    np.testing.assert_allclose(raw["eigencam"][0][0].ravel(), proj, rtol=1e-4, atol=1e-5)


def test_diffgradcam_ignores_a_shared_logit_offset():
    """Passive fooling (DiffGradCAM paper): adding g(A) to every logit leaves probabilities and DiffGradCAM unchanged
    but changes Grad-CAM."""
    honest, fooled = toy_model(offset=0.0), toy_model(offset=3.0)
    x = toy_input()
    a = explain(honest, x, ["diffgradcam", "diffgradcam++", "gradcam"], layer="relu", preprocessed=True, raw=True)
    b = explain(fooled, x, ["diffgradcam", "diffgradcam++", "gradcam"], layer="relu", preprocessed=True, raw=True)
    np.testing.assert_allclose(jax.nn.softmax(honest(x)), jax.nn.softmax(fooled(x)), atol=1e-6)
    np.testing.assert_allclose(a["diffgradcam"][0], b["diffgradcam"][0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a["diffgradcam++"][0], b["diffgradcam++"][0], rtol=1e-4, atol=1e-6)
    assert not np.allclose(a["gradcam"][0], b["gradcam"][0], rtol=1e-2)


@pytest.mark.parametrize("gap", [5.0, 30.0, 80.0])
def test_logit_difference_cancels_a_shared_offset_however_confident(gap):
    """The contrastive weights sum to 1 even when the explained class leads by far (a trained model): written as
    p_j / (1 - p_c) they underflowed once 1 - p_c did, and a shared offset leaked back (0.72 at a lead of 30)."""
    from jaxcam.targets import resolve

    score = resolve("logit_difference")
    y = jnp.asarray([gap, 0.5, -1.0, 0.0])
    assert float(jax.grad(lambda o: score(y + o, 0))(0.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(jax.grad(lambda o: score(y + o, 2))(0.0)) == pytest.approx(0.0, abs=1e-6)


def test_faster_scorecam_with_all_channels_is_scorecam():
    model, x = toy_model(), toy_input()
    both = explain(model, x, ["scorecam", "faster_scorecam"], layer="relu", preprocessed=True, raw=True,
                   method_options={"faster_scorecam": {"top_fraction": 1.0}})
    np.testing.assert_allclose(both["faster_scorecam"][0], both["scorecam"][0], rtol=1e-5, atol=1e-6)
    top = explain(model, x, "faster_scorecam", layer="relu", preprocessed=True, raw=True,
                  method_options={"faster_scorecam": {"top_fraction": 0.34}})
    assert top[0].shape == both["scorecam"][0].shape


def test_degenerate_inputs_give_defined_maps():
    """A zero head (zero gradients, zero target scores) and constant images: finite maps, zero where undefined."""
    model = toy_model(zero_head=True)
    for x in (toy_input(), jnp.zeros((2, 32, 32, 3)), jnp.full((2, 32, 32, 3), 0.3)):
        maps = explain(model, x, "all", layer="relu", preprocessed=True, batch_size=4, method_options=TOY_FAST)
        for name, m in maps.items():
            m = np.asarray(m)
            assert np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1, name
            if name in gradient_methods() or name in ("ablationcam", "fullgrad", "cameras"):
                assert m.max() == 0, name


def test_multi_layer_and_raw_outputs(resnet18, x64):
    raw = explain(resnet18, x64, "gradcam", layer=["layer4", "layer3"], preprocessed=True, raw=True)
    assert [r.shape for r in raw] == [(2, 2, 2), (2, 4, 4)]  # in the order asked, at feature resolution
    fused = explain(resnet18, x64, "gradcam", layer=["layer3", "layer4"], preprocessed=True)
    from jaxcam.postprocess import fuse, layer_map

    want = jax.vmap(lambda a, b: fuse([layer_map(a, (64, 64)), layer_map(b, (64, 64))]))(raw[1], raw[0])
    np.testing.assert_allclose(fused, want, atol=1e-6)


def test_eigen_smooth_and_aug_smooth_run(resnet18, x64):
    e = explain(resnet18, x64, "gradcam", preprocessed=True, eigen_smooth=True)
    a = explain(resnet18, x64, "gradcam", preprocessed=True, aug_smooth=True)
    assert e.shape == a.shape == (2, 64, 64) and np.isfinite(a).all() and float(a.max()) <= 1


def test_errors(resnet18, x64):
    with pytest.raises(jaxcam.UnknownNameError, match="gradcam\\+\\+"):
        explain(resnet18, x64, "gradcamm", preprocessed=True)
    with pytest.raises(jaxcam.UnknownLayerError, match="layer5"):
        explain(resnet18, x64, "gradcam", layer="layer5", preprocessed=True)
    with pytest.raises(jaxcam.UnknownLayerError, match="not a feature map"):
        explain(resnet18, x64, "gradcam", layer="fc", preprocessed=True)
    with pytest.raises(jaxcam.UnknownLayerError, match="global average pooling"):
        explain(resnet18, x64, "cam", layer="layer3", preprocessed=True)
    with pytest.raises(jaxcam.ClassIndexError, match="1000 out of range"):
        explain(resnet18, x64, "gradcam", targets=[1, 1000], preprocessed=True)
    with pytest.raises(jaxcam.ClassIndexError, match="3 class indices for 2 images"):
        explain(resnet18, x64, "gradcam", targets=[1, 2, 3], preprocessed=True)
    with pytest.raises(jaxcam.ClassIndexError, match="class index"):
        explain(resnet18, x64, "gradcam", targets=[0.5, 1.0], preprocessed=True)
    with pytest.raises(jaxcam.ImageShapeError):
        explain(resnet18, x64[0], "gradcam", preprocessed=True)
    with pytest.raises(jaxcam.UnknownNameError, match="top_fraction"):
        explain(resnet18, x64, "faster_scorecam", preprocessed=True, method_options={"faster_scorecam": {"k": 3}})
    with pytest.raises(jaxcam.UnknownNameError, match="target score"):
        explain(resnet18, x64, "gradcam", preprocessed=True, target="logits")


def test_user_target_function(resnet18, x64):
    a = explain(resnet18, x64, "gradcam", preprocessed=True, target=lambda y, c: 2.0 * y[c])
    b = explain(resnet18, x64, "gradcam", preprocessed=True)
    np.testing.assert_allclose(a, b, atol=1e-5)  # a positive scale of the score does not change the map


def test_readme_method_table_is_generated_from_the_registry():
    import os

    from jaxcam.methods import markdown_table

    with open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8") as f:
        assert markdown_table() in f.read(), "regenerate README's method table from jaxcam.methods.markdown_table()"


@pytest.mark.parametrize("name", ["efficientnet_lite0", "vgg11_bn"])
def test_fullgrad_on_every_family(name):
    """FullGrad taps every bias layer (BatchNorm, biased convolutions) whatever the module graph's order."""
    from jaxcam.models.taps import bias_layers
    from jaxcam.tapped import site_shapes

    model = jaxcam.load_model(name, weights=None)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32))
    sites = model.tapped.bias_sites
    shapes = site_shapes(model.tapped.apply, model.params, x, sites)
    biases = bias_layers(model)
    traced = model.tapped.biases(model.params)
    assert len(shapes) == len(biases) == len(sites)
    assert all(shapes[s].shape[-1] == b.shape[0] for s, (_, b) in zip(sites, biases))
    for s, (_, b) in zip(sites, biases):
        np.testing.assert_array_equal(np.asarray(traced[s]), b)
    maps = np.asarray(explain(model, x, "fullgrad", preprocessed=True))
    assert maps.shape == (1, 64, 64) and np.isfinite(maps).all() and maps.max() == pytest.approx(1.0, abs=1e-6)
