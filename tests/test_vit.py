"""Vision Transformers: token sequences as grids (prefix tokens, h and w from input and patch size, the derived
inverse), the layer facts (the last block's output has zero gradient on the patch tokens, its first LayerNorm
does not), parity with pytorch-grad-cam 1.5.7 on a tiny ViT and its Flax twin (committed goldens; live with
torch), and explain/evaluate/robustness on a ViT."""

import importlib.util
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import targets
from jaxcam.models.linen import from_linen
from jaxcam.models.tokens import TokenGrid, patch_grid, token_grid
from jaxcam.tapped import capture

from .conftest import FIXTURES
from .hand_split import random_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDENS = os.path.join(FIXTURES, "vit_goldens.npz")
PGC = {"GradCAM": "gradcam", "LayerCAM": "layercam", "ScoreCAM": "scorecam", "AblationCAM": "ablationcam"}
SIZE = 32


# -- tokens <-> grids ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", [0, 1, 2, 5])  # GAP head, CLS, DeiT's CLS + distillation, DINOv2 + 4 registers
def test_token_grid_round_trip_keeps_prefix_tokens(prefix):
    h, w, c = 4, 8, 3  # a 32 x 64 input with 8-pixel patches: 32 patches, no integer square root
    assert patch_grid((32, 64), 8) == (4, 8) and patch_grid((32, 64), (8, 16)) == (4, 4)
    grid = token_grid((2, prefix + h * w, c), (32, 64), 8)
    assert grid == TokenGrid(prefix, h, w)
    t = jnp.asarray(np.random.default_rng(prefix).standard_normal((2, prefix + h * w, c)).astype(np.float32))
    g = grid.to_grid(t)
    np.testing.assert_array_equal(g[:, 1, 2], t[:, prefix + 1 * w + 2])  # row-major patches after the prefix
    np.testing.assert_array_equal(grid.from_grid(t, g), t)  # a zero change gives the tokens back, bit for bit
    g2 = jnp.full_like(g, 7.0)
    back = grid.from_grid(t, g2)
    np.testing.assert_array_equal(back[:, :prefix], t[:, :prefix])
    np.testing.assert_allclose(back[:, prefix:], 7.0, rtol=1e-6)
    # linear in the grid: the gradient with respect to the grid is the gradient with respect to the patch tokens
    gt = jax.grad(lambda u: jnp.sum(grid.from_grid(t, u) * t))(g)
    np.testing.assert_array_equal(gt, g)


def test_outputs_without_a_token_grid():
    assert token_grid((2, 32), (32, 32), 8) is None  # a pooled vector
    assert token_grid((2, 17, 8), (32, 32), None) is None  # no patch size given
    assert token_grid((2, 10, 8), (32, 32), 8) is None  # fewer tokens than patches
    assert token_grid((2, 17, 8), (32, 32), 8, prefix=2) is None  # the declared prefix does not fit
    with pytest.raises(jaxcam.InvalidArgumentError, match="patch_size"):
        token_grid((2, 17, 8), (32, 32), 0)


class DistilledViT(nn.Module):
    """A one-block ViT with DeiT's two prefix tokens (CLS + distillation); the head reads both."""

    @nn.compact
    def __call__(self, x):
        p = nn.Conv(16, (8, 8), strides=8, name="patches")(x)
        t = p.reshape(p.shape[0], -1, 16)
        prefix = self.param("prefix", nn.initializers.normal(1.0), (1, 2, 16))
        t = jnp.concatenate([jnp.broadcast_to(prefix, (t.shape[0], 2, 16)), t], axis=1)
        h = nn.LayerNorm(name="norm1")(t)
        t = t + nn.Dense(16, name="mix")(h.mean(axis=1, keepdims=True) + h)
        t = nn.LayerNorm(name="norm2")(t)
        return nn.Dense(4, name="head")((t[:, 0] + t[:, 1]) / 2)


def test_prefix_count_is_inferred_and_replays_keep_it():
    v = DistilledViT().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    m = from_linen(DistilledViT(), v, input_size=SIZE, patch_size=8)
    sites = {s.name: s for s in m.tapped.apply.sites}
    assert sites["norm1"].prefix == 2 and sites["mix"].prefix == 2 and sites["patches"].prefix is None
    assert m.tapped.apply.token_sites == {"norm1", "mix", "norm2"}
    assert m.default_layer == "norm1"  # the first LayerNorm of the last block holding two
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32))
    cap = capture(m.tapped.apply, m.params, x, ("norm1",), (targets.logit,))
    assert cap.acts["norm1"].shape == (2, 4, 4, 16)

    def norm1_tokens(x):
        p = nn.Conv(16, (8, 8), strides=8).apply({"params": v["params"]["patches"]}, x).reshape(2, -1, 16)
        t = jnp.concatenate([jnp.broadcast_to(v["params"]["prefix"], (2, 2, 16)), p], axis=1)
        return nn.LayerNorm().apply({"params": v["params"]["norm1"]}, t)

    np.testing.assert_allclose(cap.acts["norm1"], norm1_tokens(x)[:, 2:].reshape(2, 4, 4, 16), atol=1e-6)
    maps = jaxcam.explain(m, x, ["gradcam", "ablationcam"], preprocessed=True)
    assert all(np.isfinite(v).all() and v.shape == (2, SIZE, SIZE) for v in maps.values())


# -- a tiny Hugging Face ViT -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vit():
    transformers = pytest.importorskip("transformers")
    from jaxcam.models.hf import from_hf

    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=SIZE, patch_size=8, num_labels=5)
    hf = transformers.FlaxViTForImageClassification(config, _do_init=False)
    variables = random_variables(hf.module, SIZE)
    return hf, variables, from_hf(hf, params=variables["params"])


def test_last_block_output_has_zero_patch_gradient_and_its_first_norm_does_not(vit):
    """Only the CLS token reaches the classifier, and every later operation is per token: the patch tokens of the
    last block's output get exactly zero gradient (a blank Grad-CAM); the last block's first LayerNorm feeds the
    attention, which mixes patches into the CLS token."""
    _, _, model = vit
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32))
    last, norm = "vit.encoder.layer.1", "vit.encoder.layer.1.layernorm_before"
    cap = capture(model.tapped.apply, model.params, x, (last, norm), (targets.logit,))
    g = cap.grads[targets.logit]
    assert np.abs(g[last]).max() == 0.0
    assert np.abs(g[norm]).min(axis=(1, 2, 3)).shape == (2,) and (np.abs(g[norm]).max(axis=(1, 2, 3)) > 1e-4).all()
    raw = jaxcam.explain(model, x, "gradcam", layer=[last, norm], preprocessed=True, raw=True)
    assert np.abs(raw[0]).max() == 0.0 and np.asarray(raw[1]).std() > 0
    assert model.default_layer == norm


def test_layers_without_a_token_grid_are_clear_errors(vit):
    from jaxcam.models.hf import from_hf

    hf, variables, _ = vit
    with pytest.raises(jaxcam.InvalidArgumentError, match=r"'classifier' cannot be explained: .*no spatial grid"):
        from_hf(hf, params=variables["params"], layer="classifier")
    with pytest.raises(jaxcam.InvalidArgumentError, match=r"outputs tokens \(2, 17, 32\): pass patch_size="):
        from_linen(hf.module, variables, output="logits", input_size=SIZE, default_layer="vit.encoder.layer.1")
    with pytest.raises(jaxcam.UnknownLayerError, match="did you mean 'vit.encoder.layer.1.layernorm_before'"):
        from_hf(hf, params=variables["params"], layer="vit.encoder.layer.1.layernorm_befor")
    model = vit[2]
    with pytest.raises(jaxcam.InvalidArgumentError, match=r"fails on a 48x48 input .* wrapped at 32x32"):
        jaxcam.explain(model, jnp.zeros((1, 48, 48, 3)), "gradcam", preprocessed=True)


def test_explain_evaluate_and_robustness_run_on_a_vit(vit, tmp_path):
    _, _, model = vit
    images = list(jaxcam.sample_images().values())[:2]
    maps = jaxcam.explain(model, images, ["gradcam", "layercam", "scorecam"])
    assert all(m.shape == (2, SIZE, SIZE) and np.isfinite(m).all() for m in maps.values())
    table = jaxcam.evaluate(model, images, ["gradcam"], ["deletion_auc", "road_combined", "sparseness"])
    assert len(table) == 6 and np.isfinite(np.asarray(table["value"], np.float64)).all()
    rows = jaxcam.robustness.run(model, images, str(tmp_path), methods=("gradcam",), noises=("gaussian",),
                                 severities=(1,), draws=1, image_batch=2, chunk=8, size=SIZE, progress=False)
    assert len(rows) == 2


def test_the_registry_says_which_methods_do_not_apply_to_a_vit(vit):
    """"all" runs every method that makes sense on tokens and leaves out those whose registry entry says why not;
    naming one of those gives that reason (and MetaCAM's default members include FullGrad)."""
    _, _, model = vit
    x = jnp.asarray(np.random.default_rng(4).standard_normal((1, SIZE, SIZE, 3)).astype(np.float32))
    not_on_tokens = {n for n, s in jaxcam.METHODS.items() if s.on_tokens}
    assert not_on_tokens == {"fullgrad", "cameras"}
    maps = jaxcam.explain(model, x, "all", preprocessed=True,
                          method_options={"sscam": {"num_samples": 2}})
    skipped = set(jaxcam.METHODS) - set(maps)
    # adcam runs (it reads the attention); amecam needs a model with its own class maps (exits), not a ViT;
    # broadcam and sycam need their required option (fitted weights, an expression)
    assert skipped == not_on_tokens | {"cam", "metacam", "broadcam", "amecam", "sycam"}, skipped
    assert all(np.isfinite(np.asarray(m)).all() for m in maps.values())
    for name, says in (("cameras", "position embeddings fix one input size"), ("fullgrad", "patch projection"),
                       ("metacam", "include 'fullgrad'")):
        with pytest.raises(jaxcam.InvalidArgumentError, match=says):
            jaxcam.explain(model, x, name, preprocessed=True)
    members = jaxcam.explain(model, x, "metacam", preprocessed=True,
                             method_options={"metacam": {"members": ("gradcam", "layercam")}})
    assert np.isfinite(np.asarray(members)).all()


def test_adcam_diffuses_grad_cam_with_the_models_own_attention(vit):
    """AD-CAM on a ViT: the attention probabilities are those Hugging Face's module returns with
    output_attentions=True, captured in the same forward; the raw map is adcam.diffuse of the base Grad-CAM."""
    from jaxcam.methods import adcam

    hf, variables, model = vit
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32))
    assert model.tapped.attention_sites == ("attn:vit.encoder.layer.0.attention.attention",
                                            "attn:vit.encoder.layer.1.attention.attention")
    attn = jnp.stack(hf.module.apply(variables, x, output_attentions=True).attentions, axis=1)  # (N, L, h, T, T)
    raw = jaxcam.explain(model, x, ["gradcam", "adcam"], preprocessed=True, raw=True)
    for i in range(2):
        want = adcam.diffuse(attn[i], jax.nn.relu(raw["gradcam"][0][i]), None, 1)
        np.testing.assert_allclose(raw["adcam"][0][i], want, atol=1e-5)
    assert np.abs(np.asarray(raw["adcam"][0]) - np.asarray(jax.nn.relu(raw["gradcam"][0]))).max() > 1e-4
    # parameters are traced here too: a program built for one ViT explains another with its parameters
    other = model.with_params(jax.tree.map(lambda a: a * 1.1, model.params))
    fn = jaxcam.explainer(model, "adcam")
    np.testing.assert_allclose(fn(other.params, x, None, jax.random.key(0)),
                               jaxcam.explain(other, x, "adcam", preprocessed=True), atol=1e-5)


def test_adcam_needs_attention(vit):
    from tests.toy import toy_input, toy_model

    with pytest.raises(jaxcam.InvalidArgumentError, match="attention probabilities"):
        jaxcam.explain(toy_model(), toy_input(1), "adcam", preprocessed=True)


# -- parity with pytorch-grad-cam ----------------------------------------------------------------------------

def _agree(ours, want):
    ours, want = np.asarray(ours, np.float64), np.asarray(want, np.float64)
    return np.abs(ours - want).max(), np.corrcoef(ours.ravel(), want.ravel())[0, 1]


@pytest.fixture(scope="module")
def golden():
    transformers = pytest.importorskip("transformers")
    from flax.traverse_util import unflatten_dict

    from jaxcam.models.hf import from_hf

    with np.load(GOLDENS) as f:
        data = {k: f[k] for k in f.files}
    config = transformers.ViTConfig(**json.loads(str(data["config"])))
    hf = transformers.FlaxViTForImageClassification(config, _do_init=False)
    params = unflatten_dict({tuple(k.split("/")[1:]): jnp.asarray(v) for k, v in data.items() if k[:5] == "flax/"})
    model = from_hf(hf, params=params)
    names = [str(n) for n in data["images"]]
    x = jaxcam.preprocess(list(jaxcam.sample_images(names).values()), size=int(data["size"]), mean=model.mean,
                          std=model.std)
    return data, model, x


def test_goldens_match_pytorch_grad_cam(golden):
    """Grad-CAM, LayerCAM, Score-CAM and Ablation-CAM at the last block's first LayerNorm, predicted and given
    classes: max |difference| <= 1e-3 and Pearson r >= 0.999 against pytorch-grad-cam 1.5.7 with its
    reshape_transform (Ablation-CAM with patch tokens ablated to 0: see scripts/make_vit_goldens.py)."""
    data, model, x = golden
    np.testing.assert_allclose(model(x), data["torch/logits"], atol=1e-5)
    layer = str(data["layer"])
    for which, tg in (("pred", None), ("given", np.asarray(data["given"]))):
        ours = jaxcam.explain(model, x, list(PGC.values()), targets=tg, layer=layer, preprocessed=True,
                              batch_size=64, return_logits=True)
        if which == "pred":
            assert np.asarray(ours[2]).tolist() == data["torch/pred"].tolist()
        for pgc_name, name in PGC.items():
            want = data[f"{pgc_name}/{which}"]
            assert want.std() > 0.05, f"{pgc_name}/{which}: a flat reference map compares nothing"
            diff, r = _agree(ours[0][name], want)
            assert diff <= 1e-3 and r >= 0.999, f"{pgc_name}/{which}: max |diff| {diff:.2e}, r {r:.6f}"


def _script():
    spec = importlib.util.spec_from_file_location("make_vit_goldens", os.path.join(ROOT, "scripts",
                                                                                    "make_vit_goldens.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.torch
def test_live_parity_with_pytorch_grad_cam():
    """A fresh PyTorch ViT (another seed) and its Flax twin converted by transformers, against pytorch-grad-cam."""
    pytest.importorskip("torch")
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("transformers")
    from jaxcam.models.hf import from_hf

    script = _script()
    tm = script.build_torch(seed=5)
    model = from_hf(script.flax_twin(tm))
    x = script.inputs()
    for pgc_name in ("GradCAM", "AblationCAM"):
        want = script.pgc_maps(tm, x, pgc_name, None)
        ours = jaxcam.explain(model, x, PGC[pgc_name], layer=script.LAYER, preprocessed=True, batch_size=64)
        diff, r = _agree(ours, want)
        assert diff <= 1e-3 and r >= 0.999, f"{pgc_name}: max |diff| {diff:.2e}, r {r:.6f}"
