"""from_hf: tiny Hugging Face Flax ViT and ResNet (random weights, configs built here, nothing downloaded).

Every gradient method, Ablation-CAM and Score-CAM equal a hand-written split of the Hugging Face modules at a
layer between blocks and at one inside a residual block; the NCHW wrapper and the module agree; the config's
labels, patch size and ViT default layer are used.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam.methods import gradient_methods
from jaxcam.models.hf import from_hf

from .hand_split import assert_maps_close, random_variables, reference_raw_maps

transformers = pytest.importorskip("transformers")

SIZE = 32
METHODS = gradient_methods() + ["ablationcam", "scorecam"]


@pytest.fixture(scope="module")
def vit():
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=SIZE, patch_size=8, num_labels=5)
    hf = transformers.FlaxViTForImageClassification(config, _do_init=False)
    variables = random_variables(hf.module, SIZE)
    return hf, variables, from_hf(hf, params=variables["params"])


@pytest.fixture(scope="module")
def resnet():
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                                       num_labels=4, id2label={i: f"kind {i}" for i in range(4)})
    hf = transformers.FlaxResNetForImageClassification(config, _do_init=False)
    variables = random_variables(hf.module, SIZE, seed=1)
    return hf, variables, from_hf(hf, params=variables, input_size=SIZE)


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(0).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32))


def vit_split(hf, variables, where):
    """The ViT cut after block 0 ("between") or at block 1's layernorm_before ("inside" its residual branch), as
    a grid: the CLS token of the real features is kept, as the adapter keeps prefix tokens."""
    bound = hf.module.bind(variables)
    vit, layers = bound.vit, bound.vit.encoder.layer.layers

    def tokens(x):
        h0 = layers[0](vit.embeddings(x, deterministic=True), deterministic=True)[0]
        return h0 if where == "between" else layers[1].layernorm_before(h0)

    def rest(x, t):
        if where == "between":
            out = layers[1](t, deterministic=True)[0]
        else:
            block = layers[1]
            h0 = layers[0](vit.embeddings(x, deterministic=True), deterministic=True)[0]
            att = block.attention(t, deterministic=True)[0] + h0
            out = block.output(block.intermediate(block.layernorm_after(att)), att, deterministic=True)
        return bound.classifier(vit.layernorm(out)[:, 0])

    def features(x):
        t = tokens(x)
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[-1])

    def head(x, g):
        t = tokens(x)
        return rest(x, jnp.concatenate([t[:, :1], g.reshape(t.shape[0], 16, t.shape[-1])], axis=1))

    return features, head


def resnet_split(hf, variables, where):
    """The ResNet cut after stage 0 ("between") or at stage 1's first conv layer ("inside" its residual block,
    whose shortcut convolution runs on the skip path)."""
    bound = hf.module.bind(variables)
    resnet = bound.resnet
    stages = resnet.encoder.stages.stages

    def stage0(x):
        return stages[0](resnet.embedder(x, deterministic=True), deterministic=True)

    def classify(h):
        return bound.classifier(h.mean(axis=(1, 2)))

    if where == "between":
        return stage0, lambda x, a: classify(stages[1](a, deterministic=True))
    block = stages[1].layers.layers[0]

    def features(x):
        return block.layer.layer[0](stage0(x), deterministic=True)

    def head(x, a):
        h = block.layer.layer[1](a, deterministic=True) + block.shortcut(stage0(x), deterministic=True)
        return classify(jax.nn.relu(h))

    return features, head


VIT_LAYERS = {"between": "vit.encoder.layer.0", "inside": "vit.encoder.layer.1.layernorm_before"}
RESNET_LAYERS = {"between": "resnet.encoder.stages.0",
                 "inside": "resnet.encoder.stages.1.layers.0.layer.layer_0"}


@pytest.mark.parametrize("where", ["between", "inside"])
def test_vit_methods_equal_a_hand_written_split(vit, x, where):
    hf, variables, model = vit
    want, logits = reference_raw_maps(*vit_split(hf, variables, where), x, METHODS)
    ours, our_logits, _ = jaxcam.explain(model, x, METHODS, layer=VIT_LAYERS[where], preprocessed=True, raw=True,
                                         return_logits=True)
    np.testing.assert_allclose(our_logits, logits, rtol=1e-5, atol=1e-5)
    for name in METHODS:
        assert ours[name][0].shape == (2, 4, 4)
        assert_maps_close(ours[name][0], want[name], 1e-5, f"{name} at {VIT_LAYERS[where]}")


@pytest.mark.parametrize("where", ["between", "inside"])
def test_resnet_methods_equal_a_hand_written_split(resnet, x, where):
    hf, variables, model = resnet
    want, logits = reference_raw_maps(*resnet_split(hf, variables, where), x, METHODS)
    ours, our_logits, _ = jaxcam.explain(model, x, METHODS, layer=RESNET_LAYERS[where], preprocessed=True,
                                         raw=True, return_logits=True)
    np.testing.assert_allclose(our_logits, logits, rtol=1e-5, atol=1e-5)
    for name in METHODS:
        assert_maps_close(ours[name][0], want[name], 1e-5, f"{name} at {RESNET_LAYERS[where]}")


def test_the_nchw_wrapper_and_the_module_agree(vit, resnet, x):
    """The wrapper takes NCHW pixel_values; jaxcam calls the module on NHWC: same logits."""
    for hf, variables, model in (vit, resnet):
        params = variables if "batch_stats" in variables else variables["params"]
        want = hf(jnp.transpose(x, (0, 3, 1, 2)), params=params).logits
        np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)


def test_config_gives_names_sizes_and_defaults(vit, resnet):
    _, _, v = vit
    _, _, r = resnet
    assert v.default_layer == "vit.encoder.layer.1.layernorm_before"  # pytorch-grad-cam's blocks[-1].norm1
    assert v.input_size == SIZE and v.mean == (0.5, 0.5, 0.5) and v.num_classes == 5
    assert v.class_names == tuple(f"LABEL_{i}" for i in range(5))
    assert "vit.pooler" not in v.tapped.sites and "vit.layernorm" in v.tapped.sites
    assert v.tapped.gap_fc_sites == frozenset() and v.tapped.bias_sites == ("bias:0",)  # the patch projection
    assert r.default_layer == "resnet.encoder.stages.1" and r.class_names == tuple(f"kind {i}" for i in range(4))
    assert "resnet.encoder.stages.1" in r.tapped.gap_fc_sites
    assert "resnet.encoder.stages.1.layers.0.layer" not in r.tapped.gap_fc_sites  # before the add and relu
    assert len(r.tapped.bias_sites) == 6  # every BatchNorm (the convolutions have no bias)
    assert r.mean == (0.485, 0.456, 0.406)


def test_cam_and_fullgrad_on_the_resnet(resnet, x):
    _, _, model = resnet
    maps = jaxcam.explain(model, x, ["cam", "gradcam", "fullgrad"], preprocessed=True)
    np.testing.assert_allclose(maps["cam"], maps["gradcam"], atol=1e-5)
    assert np.isfinite(maps["fullgrad"]).all() and maps["fullgrad"].max() == pytest.approx(1.0)
    with pytest.raises(jaxcam.UnknownLayerError, match="CAM needs the layer right before"):
        jaxcam.explain(model, x, "cam", layer=RESNET_LAYERS["between"], preprocessed=True)


def test_not_a_hugging_face_model():
    with pytest.raises(jaxcam.InvalidArgumentError, match="Hugging Face Flax model"):
        from_hf(object())


@pytest.mark.parametrize("kind", ["beit", "dinov2", "regnet"])
def test_other_hugging_face_classifiers(kind, x):
    """BEiT (mean-pooled patch tokens), DINOv2 (CLS + mean of the patch tokens) and RegNet take the same path: the
    tapped forward's logits equal the module's, and the default layer gets a non-zero gradient on its grid."""
    from jaxcam import targets
    from jaxcam.tapped import capture

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE, patch_size=8,
                 num_labels=3)
    cls, config, default = {
        "beit": (transformers.FlaxBeitForImageClassification, transformers.BeitConfig(intermediate_size=64, **small),
                 "beit.encoder.layer.1.layernorm_before"),
        "dinov2": (transformers.FlaxDinov2ForImageClassification, transformers.Dinov2Config(mlp_ratio=2, **small),
                   "dinov2.encoder.layer.1.norm1"),
        "regnet": (transformers.FlaxRegNetForImageClassification,
                   transformers.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8,
                                             num_labels=3), "regnet.encoder.stages.1")}[kind]
    with jax.numpy_rank_promotion("allow"):  # BEiT's layer scale broadcasts (C,) against (N, T, C)
        hf = cls(config, _do_init=False)
        variables = random_variables(hf.module, SIZE, seed=2)
        params = variables if "batch_stats" in variables else variables["params"]
        model = from_hf(hf, params=params, input_size=SIZE)
        cap = jax.jit(lambda p, x: capture(model.tapped.apply, p, x, (default,), (targets.logit,)))(model.params, x)
        want = jax.jit(lambda p, x: hf.module.apply(p, x).logits)(variables, x)
    np.testing.assert_allclose(cap.logits, want, atol=1e-5)
    assert model.default_layer == default
    assert cap.acts[default].shape[:3] == (2, 4, 4) if kind != "regnet" else cap.acts[default].ndim == 4
    assert float(jnp.abs(cap.grads[targets.logit][default]).max()) > 0
