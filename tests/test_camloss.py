"""CAM-loss and ReCAM (jaxcam.train.camloss): hand-checked values on a tiny GAP + FC model, where the gradients go,
determinism, ReCAM's inference map through explain, and a smoke run of scripts/camloss_recam.py (slow)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcam import explain
from jaxcam.errors import InvalidArgumentError, UnknownNameError
from jaxcam.models.reference_cnn import ReferenceCNN, reference_model
from jaxcam.train import LOSSES, LossContext, fit, gradcam_maps
from jaxcam.train.camloss import (cam_loss, class_agnostic_map, minmax, recam_cam, recam_kernel, recam_loss,
                                  recam_model, with_recam_head)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_apply(params, x, tap):
    """A 1x1 convolution + ReLU (the CAM site "feat", K = 5 channels), global average pooling, a linear head."""
    p = params["params"]
    a = tap("feat", jax.nn.relu(jnp.einsum("bhwc,ck->bhwk", x, p["proj"]["kernel"])))
    return jnp.mean(a, axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"][None, :]


CTX = LossContext(tiny_apply, "feat", 3, ("feat",))


def tiny(seed=0, head=None, recam=True):
    r = np.random.default_rng(seed)
    p = {"proj": {"kernel": r.normal(size=(3, 5)).astype(np.float32)},
         "head": {"kernel": (r.normal(size=(5, 3)) if head is None else head).astype(np.float32),
                  "bias": r.normal(size=(3,)).astype(np.float32)}}
    if recam:
        p["recam"] = {"kernel": r.normal(size=(5, 3)).astype(np.float32)}
    batch = {"image": r.normal(size=(2, 4, 4, 3)).astype(np.float32), "label": np.array([2, 0], np.int32)}
    return jax.tree.map(jnp.asarray, {"params": p}), jax.tree.map(jnp.asarray, batch)


def by_hand(params, batch):
    """Everything the two losses compute, in NumPy float64 from the papers' equations."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)["params"]
    x, y = np.asarray(batch["image"], np.float64), np.asarray(batch["label"])
    a = np.maximum(x @ p["proj"]["kernel"], 0)  # (B, h, w, K)
    z = a.mean(axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ce = -logp[np.arange(2), y].mean()
    w_y = p["head"]["kernel"][:, y].T  # (B, K)
    cam = np.einsum("bhwk,bk->bhw", a, w_y) / 16  # Grad-CAM = CAM / (h w)
    caam = a.sum(-1)

    def mm(m):
        lo, hi = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
        return (m - lo) / (hi - lo + 1e-8)

    term = np.abs(mm(caam) - mm(cam)).mean()
    mask = np.maximum(cam, 0)
    mask = mask / (mask.max(axis=(1, 2), keepdims=True) + 1e-5)
    rel = (mask[..., None] * a).mean(axis=(1, 2)) @ p["recam"]["kernel"]
    rlogp = rel - np.log(np.exp(rel).sum(-1, keepdims=True))
    sce = -rlogp[np.arange(2), y].mean()
    t = np.eye(3)[y]
    bce = -(t * np.log(1 / (1 + np.exp(-z))) + (1 - t) * np.log(1 / (1 + np.exp(z)))).mean()
    recam_map = np.maximum(np.einsum("bhwk,bk->bhw", a, w_y * p["recam"]["kernel"][:, y].T), 0) / 16
    return {"ce": ce, "term": term, "sce": sce, "bce": bce, "recam_map": recam_map}


def test_registered():
    spec = LOSSES["cam_loss"]
    assert spec.fn is cam_loss and spec.options == ("alpha",) and spec.uses_cam
    assert LOSSES["recam"].fn is recam_loss and set(LOSSES["recam"].options) == {"lam", "base"}


def test_values_by_hand():
    params, batch = tiny()
    ref = by_hand(params, batch)
    loss, aux = cam_loss(params, batch, None, CTX, alpha=0.5)
    assert ref["term"] > 0.05  # a case where the two maps differ
    np.testing.assert_allclose([aux["ce"], aux["cam_loss"], loss],
                               [ref["ce"], ref["term"], ref["ce"] + 0.5 * ref["term"]], rtol=1e-5)
    loss, aux = recam_loss(params, batch, None, CTX, lam=0.7)
    np.testing.assert_allclose([aux["bce"], aux["sce"], loss],
                               [ref["bce"], ref["sce"], ref["bce"] + 0.7 * ref["sce"]], rtol=1e-5)
    loss, aux = recam_loss(params, batch, None, CTX, lam=1.0, base="ce")
    np.testing.assert_allclose([aux["ce"], loss], [ref["ce"], ref["ce"] + ref["sce"]], rtol=1e-5)
    np.testing.assert_allclose(recam_cam(tiny_apply, params, batch["image"], batch["label"], "feat"), ref["recam_map"],
                               rtol=1e-5, atol=1e-7)


def test_cam_equal_to_caam_gives_zero_term():
    # every head column constant (and positive): CAM_y = (y + 1) * CAAM, so the normalised maps coincide
    params, batch = tiny(head=np.tile(np.arange(1.0, 4.0), (5, 1)))
    loss, aux = cam_loss(params, batch, None, CTX, alpha=3.0)
    assert float(aux["cam_loss"]) < 1e-6
    np.testing.assert_allclose(loss, aux["ce"], rtol=1e-6)


def test_deterministic():
    params, batch = tiny(1)
    for fn, opts in ((cam_loss, {"alpha": 1.0}), (recam_loss, {"lam": 1.0})):
        f = jax.jit(jax.value_and_grad(lambda p: fn(p, batch, None, CTX, **opts)[0]))
        (l1, g1), (l2, g2) = f(params), f(params)
        assert np.isfinite(float(l1)) and float(l1) == float(l2)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))


def _grads(fn, params, batch, **opts):
    return jax.jit(jax.grad(lambda p: fn(p, batch, None, CTX, **opts)[0]))(params)["params"]


def test_cam_loss_gradient_only_through_caam():
    params, batch = tiny(2)
    with_term, without = _grads(cam_loss, params, batch, alpha=1.0), _grads(cam_loss, params, batch, alpha=0.0)
    # the CAM target is detached and the CAAM does not depend on the classifier: the term adds nothing to its
    # gradient, and moves the backbone's
    for leaf in ("kernel", "bias"):
        np.testing.assert_allclose(with_term["head"][leaf], without["head"][leaf], atol=1e-7)
    assert float(jnp.max(jnp.abs(with_term["proj"]["kernel"] - without["proj"]["kernel"]))) > 1e-4

    # without the stop-gradient the classifier would move: the detachment is what the test sees
    def undetached(p):
        loss, _ = cam_loss(p, batch, None, CTX, alpha=0.0)
        cp = gradcam_maps(tiny_apply, p, batch["image"], batch["label"], "feat")
        return loss + jnp.mean(jnp.abs(minmax(class_agnostic_map(cp.acts)) - minmax(cp.cam)))

    assert float(jnp.max(jnp.abs(jax.grad(undetached)(params)["params"]["head"]["kernel"]
                                 - without["head"]["kernel"]))) > 1e-4


def test_recam_gradients():
    params, batch = tiny(3)
    on, off = _grads(recam_loss, params, batch, lam=1.0), _grads(recam_loss, params, batch, lam=0.0)
    assert not np.any(np.asarray(off["recam"]["kernel"]))  # W' is only in the SCE term
    assert float(jnp.max(jnp.abs(on["recam"]["kernel"]))) > 1e-4
    # the mask is not detached (as the authors' code): SCE also trains the classifier W and the backbone
    assert float(jnp.max(jnp.abs(on["head"]["kernel"] - off["head"]["kernel"]))) > 1e-5
    assert float(jnp.max(jnp.abs(on["proj"]["kernel"] - off["proj"]["kernel"]))) > 1e-5


def test_errors():
    params, batch = tiny(recam=False)
    with pytest.raises(InvalidArgumentError, match="with_recam_head"):
        recam_loss(params, batch, None, CTX)
    with pytest.raises(InvalidArgumentError, match="alpha"):
        cam_loss(params, batch, None, CTX, alpha=-1.0)
    with pytest.raises(InvalidArgumentError, match="lam"):
        recam_loss(params, batch, None, CTX, lam=float("nan"))
    with pytest.raises(UnknownNameError, match="'bce'"):
        recam_loss(params, batch, None, CTX, base="bse")


@pytest.fixture(scope="module")
def model():
    module = ReferenceCNN(4, (4, 4, 8))  # one compiled init instead of flax's op-by-op one (seconds on a busy CPU)
    variables = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
    return reference_model(size=32, widths=(4, 4, 8), variables=variables)


def test_recam_head_and_explain_map(model):
    m = with_recam_head(model, 1)
    assert recam_kernel(m.params).shape == (8, 4)
    with pytest.raises(InvalidArgumentError, match="already"):
        with_recam_head(m)
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    x = model.preprocess(images)
    np.testing.assert_array_equal(m.tapped.forward(m.params, x), model.tapped.forward(model.params, x))
    labels = jnp.array([1, 3], jnp.int32)
    want = recam_cam(m.tapped.apply, m.params, x, labels, "stage3") * 16  # CAM = Grad-CAM * h w (4x4 grid)
    raw = explain(recam_model(m), images, method="cam", targets=[1, 3], raw=True)[0]
    np.testing.assert_allclose(jnp.maximum(raw, 0), want, rtol=1e-4, atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="head"):
        recam_model(m, head="stage3")


def test_fit_runs_both_losses(model):
    r = np.random.default_rng(0)
    data = {"image": r.uniform(size=(16, 32, 32, 3)).astype(np.float32), "label": r.integers(0, 4, 16)}
    for m, loss, opts in ((model, "cam_loss", {"alpha": 1.0}), (with_recam_head(model), "recam", {"lam": 1.0})):
        res = fit(m, data, steps=2, batch_size=8, loss=loss, loss_options=opts, progress=False)
        term = "cam_loss" if loss == "cam_loss" else "sce"
        assert term in res.history and np.all(np.isfinite(res.history[term])) and np.all(res.history[term] > 0)
        leaves = jax.tree.leaves(res.model.params)
        assert all(np.all(np.isfinite(np.asarray(v))) for v in leaves)
        assert any(not np.array_equal(a, b) for a, b in zip(leaves, jax.tree.leaves(m.params)))


@pytest.mark.slow
def test_script_quick(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "camloss_recam.py"), "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    for ext in ("md", "csv", "png"):
        assert (tmp_path / f"camloss_recam.{ext}").stat().st_size > 0
    text = (tmp_path / "camloss_recam.md").read_text()
    assert "ReCAM" in text and "CAM-loss" in text
