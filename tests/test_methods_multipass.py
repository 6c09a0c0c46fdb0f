"""Closed-form and behavioural tests for the methods without a reference library: SS-CAM, MI-CAM, DecomCAM,
CAMERAS, MetaCAM, and noise averaging of any method."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcam import explain
from jaxcam._explain import TRACE_COUNT
from jaxcam.methods.multipass import metacam

from .toy import toy_input, toy_model


@pytest.fixture(scope="module")
def toy():
    return toy_model()


def run(model, name, **kw):
    return np.asarray(explain(model, toy_input(), name, layer="relu", preprocessed=True, batch_size=4, **kw))


def test_sscam_without_noise_is_scorecam_and_keys_matter(toy):
    opts = {"sscam": {"num_samples": 2, "std": 0.0}}
    np.testing.assert_allclose(run(toy, "sscam", method_options=opts), run(toy, "scorecam"), atol=1e-6)
    noisy = {"sscam": {"num_samples": 3, "std": 0.5}}
    a = run(toy, "sscam", method_options=noisy, key=1)
    np.testing.assert_array_equal(a, run(toy, "sscam", method_options=noisy, key=1))
    assert not np.allclose(a, run(toy, "sscam", method_options=noisy, key=2))


def test_noise_averaging(toy):
    plain = run(toy, "gradcam")
    np.testing.assert_allclose(run(toy, "gradcam", noise_samples=3, noise_std=0.0), plain, atol=1e-6)
    a = run(toy, "gradcam", noise_samples=4, key=jax.random.key(3))
    np.testing.assert_array_equal(a, run(toy, "gradcam", noise_samples=4, key=jax.random.key(3)))
    before = TRACE_COUNT["explain"]
    b = run(toy, "gradcam", noise_samples=4, key=jax.random.key(4))  # a new key is traced, not recompiled
    assert TRACE_COUNT["explain"] == before and not np.allclose(a, b)
    with pytest.raises(ValueError, match="noise_samples"):
        run(toy, "gradcam", noise_samples=-1)
    with pytest.raises(ValueError, match="one of"):
        run(toy, "gradcam", noise_samples=2, aug_smooth=True)


def test_cameras_at_one_scale_is_upsampled_hirescam(toy):
    """With the input size as its only scale, CAMERAS = relu(sum_k U(G)_k U(A)_k) at input resolution."""
    x = toy_input()
    raw = explain(toy, x, "cameras", layer="relu", preprocessed=True, raw=True,
                  method_options={"cameras": {"scales": (32,)}})[0]
    features_fn, head_fn = toy.split("relu")
    a = features_fn(x)
    cls = jnp.argmax(toy(x), -1)
    g = jax.grad(lambda a_: jnp.sum(jnp.take_along_axis(head_fn(a_), cls[:, None], 1)))(a)
    up = (2, 32, 32, a.shape[-1])
    want = jax.nn.relu(jnp.sum(jax.image.resize(g, up, "linear") * jax.image.resize(a, up, "linear"), -1))
    np.testing.assert_allclose(raw, want, rtol=1e-5, atol=1e-6)
    multi = run(toy, "cameras", method_options={"cameras": {"scales": (32, 48, 64)}})
    assert multi.shape == (2, 32, 32) and np.isfinite(multi).all()


def test_metacam_consensus_closed_form():
    m1 = jnp.asarray(np.arange(16, dtype=np.float32).reshape(1, 4, 4) / 15)
    m2 = m1[:, ::-1]
    out = np.asarray(metacam([m1, m2], k=0.25, delta=0.0))
    # top 25 % of m1 is its last row, of m2 its first row: each gets one vote of two
    want = np.zeros((1, 4, 4))
    want[0, 3] = want[0, 0] = 0.5
    np.testing.assert_allclose(out, want)
    agree = np.asarray(metacam([m1, m1], k=0.25, delta=0.0))
    assert agree[0, 3].tolist() == [1.0] * 4 and agree[0, :3].sum() == 0


def test_metacam_in_explain(toy):
    members = ("gradcam", "layercam", "eigencam")
    maps = explain(toy, toy_input(), ["metacam", "gradcam"], layer="relu", preprocessed=True,
                   method_options={"metacam": {"members": members, "k": 0.2}})
    assert set(maps) == {"metacam", "gradcam"}  # members are computed, only what was asked is returned
    assert float(maps["metacam"].max()) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(Exception, match="members of 'metacam'"):
        explain(toy, toy_input(), "metacam", layer="relu", preprocessed=True,
                method_options={"metacam": {"members": ("gradcam", "nope")}})


def _mi(a, b, bins):
    ia = np.minimum((a * bins).astype(int), bins - 1)
    ib = np.minimum((b * bins).astype(int), bins - 1)
    joint = np.zeros((bins, bins))
    np.add.at(joint, (ia.ravel(), ib.ravel()), 1)
    joint /= joint.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())


def test_micam_weights_are_histogram_mutual_information(toy):
    """MI-CAM's raw map equals sum_k MI(luminance, minmax(U(A_k))) A_k with a NumPy histogram estimate."""
    from jaxcam.postprocess import resize

    x = toy_input(n=1)
    raw = np.asarray(explain(toy, x, "micam", layer="relu", preprocessed=True, raw=True,
                             method_options={"micam": {"bins": 8}})[0][0])
    a = np.asarray(toy.split("relu")[0](x))[0]
    gray = np.clip(np.asarray(x[0]) @ np.array([0.299, 0.587, 0.114]), 0, 1)  # the toy's input is RGB
    w = []
    for k in range(a.shape[-1]):
        m = np.asarray(resize(jnp.asarray(a[..., k]), gray.shape))
        m = (m - m.min()) / (m.max() - m.min() + 1e-8)
        w.append(_mi(gray, m, 8))
    np.testing.assert_allclose(raw, (a * np.array(w)).sum(-1), rtol=1e-4, atol=1e-5)


def test_decomcam_single_component(toy):
    """With one component DecomCAM is relu of the first principal map of the selected channels (one softmax
    weight of 1)."""
    x = toy_input(n=1)
    raw = np.asarray(explain(toy, x, "decomcam", layer="relu", preprocessed=True, raw=True,
                             method_options={"decomcam": {"channels": 1.0, "components": 1}})[0][0])
    a = np.asarray(toy.split("relu")[0](x))[0]
    flat = a.reshape(-1, a.shape[-1]) - a.reshape(-1, a.shape[-1]).mean(0)
    u, s, _ = np.linalg.svd(flat, full_matrices=False)
    comp = (u[:, 0] * s[0]).reshape(a.shape[:2])
    comp = -comp if abs(comp.min()) > abs(comp.max()) else comp
    np.testing.assert_allclose(raw, np.maximum(comp, 0), rtol=1e-4, atol=1e-5)
