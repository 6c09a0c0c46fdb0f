"""SHAM (passive fooling, DiffGradCAM paper): the entropy-aware decoy, the second-order loss, DiffGradCAM's
invariance to a shared logit offset on a trained-style linen model, and a smoke run of the experiment script."""

import functools
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcam import explain
from jaxcam.errors import InvalidArgumentError
from jaxcam.models.reference_cnn import ReferenceCNN, reference_model
from jaxcam.train.losses import LOSSES, LossContext, ce_loss, gradcam_maps
from jaxcam.train.sham import (default_entropy, distribution_entropy, measure_entropy, normalise, sham_loss,
                               sham_target, with_shared_offset)

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32  # a 4x4 CAM grid at stage3


@functools.cache
def tiny():
    """The reference CNN at tiny widths on 8 random images (the loss needs no real data; building it once)."""
    rng = np.random.default_rng(0)
    # LeCun-normal kernels drawn with NumPy on the module's shapes: linen's own init compiles a program per
    # initialiser (over 10 s on a busy 2-core CI machine), and these tests need any well-scaled weights
    shapes = jax.eval_shape(ReferenceCNN(4, (4, 6, 8)).init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    variables = jax.tree.map(lambda s: (rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape) if len(s.shape) > 1
                                        else np.zeros(s.shape)).astype(np.float32), shapes)
    model = reference_model(size=SIZE, widths=(4, 6, 8), variables=variables)
    images = rng.uniform(0, 1, (8, SIZE, SIZE, 3)).astype(np.float32)
    batch = {"image": model.preprocess(images), "label": jnp.asarray(rng.integers(0, 4, 8), jnp.int32)}
    ctx = LossContext(model.tapped.apply, model.layer_site(None), model.num_classes, tuple(model.tapped.sites))
    return model, batch, ctx


def test_target_is_the_papers_border_on_7x7_and_has_the_asked_entropy():
    t = sham_target(7, 7)  # default: ln 28 on 49 cells -> the paper's 28 border cells
    assert t.dtype == np.float32 and t.shape == (7, 7) and t.sum() == 28
    ring = np.ones((7, 7), bool)
    ring[1:-1, 1:-1] = False
    assert t[ring].all() and not t[2:5, 2:5].any()
    np.testing.assert_allclose(distribution_entropy(t), math.log(28), rtol=1e-6)
    assert sham_target(6, 6).sum() == round(28 * 36 / 49) == 21
    np.testing.assert_allclose(default_entropy(6, 6), math.log(28 * 36 / 49), rtol=1e-12)
    for h, w, entropy in ((6, 6, math.log(10)), (5, 8, 2.0), (4, 4, 0.0), (3, 3, 9.0)):
        t = sham_target(h, w, entropy)
        n = min(max(round(math.exp(entropy)), 1), h * w)
        assert t.sum() == n
        np.testing.assert_allclose(distribution_entropy(t), math.log(n), atol=1e-6)
    assert sham_target(6, 6, 2.0)[0, 0] == 1 and sham_target(6, 6, 2.0)[2:4, 2:4].sum() == 0  # outermost first
    with pytest.raises(InvalidArgumentError, match="entropy"):
        sham_target(6, 6, -1.0)
    with pytest.raises(InvalidArgumentError, match="h must"):
        sham_target(0, 6)


def test_measure_entropy_reads_relu_maps_as_distributions():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, :2, :2] = 3.0  # uniform over 4 cells
    maps[1] = -1.0
    maps[1, 0, :] = 0.5  # 4 positive cells, the rest negative (clipped)
    assert measure_entropy(maps) == pytest.approx(math.log(4), rel=1e-6)
    with pytest.raises(InvalidArgumentError, match="cams"):
        measure_entropy(np.zeros((4, 4)))


def test_loss_is_finite_deterministic_and_second_order():
    model, batch, ctx = tiny()
    key = jax.random.key(0)
    fn = jax.jit(jax.value_and_grad(lambda p: sham_loss(p, batch, key, ctx, lam=1.0)[0]))
    (v1, g1), (v2, g2) = fn(model.params), fn(model.params)
    assert np.isfinite(float(v1)) and float(v1) == float(v2)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
    _, aux = jax.jit(lambda p: sham_loss(p, batch, key, ctx))(model.params)
    assert set(aux) == {"accuracy", "ce", "cam_loss", "map_entropy"} and all(np.isfinite(v) for v in aux.values())
    assert float(v1) == pytest.approx(float(aux["ce"] + aux["cam_loss"]), rel=1e-5)
    # the CAM term moves the first convolution (through A) and the head, which enters the CAM only through
    # G = dS/dA = W_c / hw: a gradient of a gradient (second order)
    g_ce = jax.jit(jax.grad(lambda p: ce_loss(p, batch, key, ctx)[0]))(model.params)
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), g1, g_ce)
    assert diff["params"]["stage1"]["conv1"]["kernel"] > 1e-6 and diff["params"]["head"]["kernel"] > 1e-6
    assert LOSSES["sham"].fn is sham_loss and LOSSES["sham"].uses_cam
    # rematerialising the CAM pass changes memory, not the numbers
    g_remat = jax.jit(jax.grad(lambda p: sham_loss(p, batch, key, ctx, lam=1.0, remat=True)[0]))(model.params)
    for a, b in zip(jax.tree.leaves(g_remat), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_a_few_steps_pull_the_cam_toward_the_decoy():
    model, batch, ctx = tiny()
    key = jax.random.key(0)
    tx = optax.adam(3e-3)

    @jax.jit
    def step(p, s):
        (_, aux), g = jax.value_and_grad(lambda q: sham_loss(q, batch, key, ctx, lam=10.0), has_aux=True)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, aux["cam_loss"]

    p, s = model.params, tx.init(model.params)
    losses = []
    for _ in range(25):
        p, s, cam = step(p, s)
        losses.append(float(cam))
    assert losses[-1] < 0.6 * losses[0], losses
    # the explained Grad-CAM (the library's, not the loss's own pass) moved toward the decoy too
    target = sham_target(4, 4)
    raw0 = np.asarray(gradcam_maps(ctx.apply, model.params, batch["image"], batch["label"], ctx.site).cam)
    raw1 = np.asarray(explain(model.with_params(p), batch["image"], "gradcam", targets=batch["label"].tolist(),
                              preprocessed=True, raw=True)[0])
    dist = [float(np.mean((np.asarray(normalise(jnp.asarray(r))) - target) ** 2)) for r in (raw0, raw1)]
    assert dist[1] < dist[0]


def test_sham_loss_rejects_a_target_of_another_grid_and_unknown_classes():
    model, batch, ctx = tiny()
    with pytest.raises(InvalidArgumentError, match=r"target must be the CAM grid's shape \(4, 4\)"):
        sham_loss(model.params, batch, None, ctx, target=np.zeros((6, 6)))
    with pytest.raises(InvalidArgumentError, match="classes"):
        sham_loss(model.params, batch, None, ctx, classes="argmax")


def test_diffgradcam_ignores_a_constant_and_a_per_image_shared_offset_on_the_linen_model():
    """The must-show on the reference CNN (linen, through from_function): y'_j = y_j + c + g(A) for every j leaves
    DiffGradCAM(++) unchanged and changes Grad-CAM (tests/test_methods.py checks the same on the NNX toy)."""
    model, batch, _ = tiny()
    x = batch["image"][:4]
    methods = ["gradcam", "diffgradcam", "diffgradcam++"]
    honest = explain(model, x, methods, preprocessed=True, raw=True)
    shifted = explain(with_shared_offset(model, constant=7.0), x, methods, preprocessed=True, raw=True)
    fooled_model = with_shared_offset(model, constant=-3.0, scale=50.0)
    fooled = explain(fooled_model, x, methods, preprocessed=True, raw=True)
    np.testing.assert_allclose(jax.nn.softmax(fooled_model(x)), jax.nn.softmax(model(x)), atol=1e-5)
    for m in methods:
        np.testing.assert_allclose(shifted[m][0], honest[m][0], rtol=1e-5, atol=1e-7)
    for m in methods[1:]:
        np.testing.assert_allclose(fooled[m][0], honest[m][0], rtol=1e-4, atol=1e-6)
    assert not np.allclose(fooled["gradcam"][0], honest["gradcam"][0], rtol=1e-2)
    with pytest.raises(InvalidArgumentError, match="scale"):
        with_shared_offset(model, scale=float("nan"))


@pytest.mark.slow
def test_script_quick_run(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "sham_diffgradcam.py"), "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for ext in ("md", "csv", "png"):
        assert (tmp_path / f"sham_diffgradcam.{ext}").stat().st_size > 0
    text = (tmp_path / "sham_diffgradcam.md").read_text()
    assert "diffgradcam" in text and "gradcam" in text
