"""AME-CAM (jaxcam.train.ame): the multi-exit module and its map site, the losses on hand cases, the polarity rule,
the two training phases through fit, explain integration and save/load. Tiny model: 32 px, widths (4, 8)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam.errors import CheckpointError, UnknownLayerError
from jaxcam.keys import init_key
from jaxcam.train import ame
from jaxcam.train.losses import LOSSES, LossContext, cross_entropy, tap_values

SIZE, C = 32, 3


@pytest.fixture(scope="module")
def model():
    return ame.ame_model(0, num_classes=C, size=SIZE, widths=(4, 8), features=4)


def arrays(seed, n):
    """Random images in [0, 1] and labels (NumPy: no PRNG program to compile; the maps need no real objects)."""
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(size=(n, SIZE, SIZE, 3)).astype(np.float32),
            "label": rng.integers(0, C, n).astype(np.int32)}


@pytest.fixture(scope="module")
def data():
    return arrays(3, 6)


def test_shapes_sites_and_layers(model, data):
    x = model.preprocess(data["image"])
    sites = ("exit1", "exit2", ame.AGG_SITE, ame.MAP_SITE)
    logits, seen = jax.jit(lambda p, v: tap_values(model.tapped.apply, p, v, sites))(model.params, x)
    assert logits.shape == (6, C)
    assert seen["exit1"].shape == (6, 16, 16, C) and seen["exit2"].shape == (6, 8, 8, C)
    assert seen[ame.AGG_SITE].shape == seen[ame.MAP_SITE].shape == (6, SIZE, SIZE, C)
    final = np.asarray(seen[ame.MAP_SITE])
    assert final.min() >= 0 and final.max() <= 1 + 1e-6
    # logits are the last exit's GAP [ours]
    np.testing.assert_allclose(logits, jnp.mean(seen["exit2"], axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert model.tapped.sites == ("stage1", "stage2", "exit2") and model.tapped.map_sites == ("ame",)
    assert model.default_layer == "stage2" and "exit1" not in model.tapped.gap_fc_sites


def test_softmax_weights_sum_to_one():
    agg = ame.Aggregator(features=4)
    x = jax.random.normal(jax.random.key(1), (2, SIZE, SIZE, 3))
    ones = tuple(jnp.ones((2, s, s, C)) for s in (16, 8, 4))
    variables = jax.jit(agg.init)(init_key(0), x, ones)
    variables = jax.tree.map(lambda a: a + 0.3, variables)  # non-trivial weights and prior

    @jax.jit
    def m_agg(maps):
        return agg.apply(variables, x, maps, capture_intermediates=True)[1]["intermediates"]["agg"]["__call__"][0]

    for v in (1.0, 2.5):
        maps = tuple(jnp.full((2, s, s, C), v) for s in (16, 8, 4))
        np.testing.assert_allclose(m_agg(maps), v, rtol=1e-5)  # sum_i a_i v = v  <=>  sum_i a_i = 1
    # distinct constant maps: M_agg is a convex combination, strictly inside (0, 1) for values 0, 0, 1
    got = np.asarray(m_agg((jnp.zeros((2, 16, 16, C)), jnp.zeros((2, 8, 8, C)), jnp.ones((2, 4, 4, C)))))
    assert 0 < got.min() and got.max() < 1


def test_polarity_rule(model, data):
    base = ame.ame_maps(model, data["image"], data["label"])["ame"]
    assert ame.polarity(model) == (False, False)
    same, info = ame.decide_polarity(model, data["image"], base > 0.5, data["label"])
    assert (info["invert"], info["invert_agg"]) == (False, False) and ame.polarity(same) == (False, False)
    assert info["dice"][(False, False)] == max(info["dice"].values()) and len(info["dice"]) == 4
    flipped, info = ame.decide_polarity(model, data["image"], base <= 0.5, data["label"], agg=False)  # spec's rule
    assert info["invert"] is True and ame.polarity(flipped) == (True, False)
    assert info["dice"][(True, False)] > info["dice"][(False, False)] and len(info["dice"]) == 2
    np.testing.assert_allclose(ame.ame_maps(flipped, data["image"], data["label"])["ame"], 1 - base, atol=1e-6)
    # invert_agg: 1 - M_agg enters the mean of the exits' maps
    m = ame.with_polarity(model, False, True)
    x = model.preprocess(data["image"])
    _, seen = jax.jit(lambda p, v: tap_values(m.tapped.apply, p, v, ("exit1", "exit2", ame.AGG_SITE, ame.MAP_SITE)))(
        m.params, x)
    up = sum(jax.image.resize(seen[s], seen[ame.AGG_SITE].shape, "bilinear") for s in ("exit1", "exit2"))
    np.testing.assert_allclose(seen[ame.MAP_SITE], ame.minmax((up + 1 - seen[ame.AGG_SITE]) / 3), atol=1e-5)


def test_contrastive_loss_hand_cases():
    lo, hi = ame.SIM_CLAMP
    a = 0.25
    same = jnp.asarray([[1.0, 2.0], [1.0, 2.0]])
    fg, bg = jnp.asarray([[1.0, 0.0], [2.0, 0.0]]), jnp.asarray([[0.0, 1.0], [0.0, 5.0]])
    gray = jnp.ones((2, 4, 4))

    @jax.jit  # one program for every case (eager ops would compile one by one)
    def values(m):
        terms = ame.contrastive_terms(gray, jnp.ones((2, 4, 4)), a)
        return {"min_same": ame.sim_min(same, 3 * same), "min_orth": ame.sim_min(fg, bg),
                "min_opposite": ame.sim_min(fg, -fg), "max_same": ame.sim_max(same, a),
                "max_orth": ame.sim_max(jnp.eye(2), a), "terms_simmin": terms["simmin"],
                "terms_simmax_fg": terms["simmax_fg"],
                "grad": jax.grad(lambda m: sum(ame.contrastive_terms(gray, m, a).values()))(m)}

    v = values(jax.random.uniform(jax.random.key(0), (2, 4, 4)))
    # identical (up to scale) foreground and background embeddings: SimMin at its maximum -log(1 - 0.9995)
    np.testing.assert_allclose(v["min_same"], -math.log(1 - hi), rtol=1e-4)
    # orthogonal (or opposite) embeddings: the minimum -log(1 - 5e-4)
    np.testing.assert_allclose(v["min_orth"], -math.log(1 - lo), rtol=1e-4)
    np.testing.assert_allclose(v["min_opposite"], -math.log(1 - lo), rtol=1e-4)
    # SimMax of two identical rows: every similarity 0.9995, ranks 0 and 1 per row -> weights e^{a}, e^0
    np.testing.assert_allclose(v["max_same"], -math.log(hi) * (math.exp(a) + 1.0) / 2, rtol=1e-4)
    # orthogonal rows: self 0.9995 (rank 0, weight e^a), the other 5e-4 (rank 1, weight 1)
    np.testing.assert_allclose(v["max_orth"], (-math.log(hi) * math.exp(a) - math.log(lo)) / 2, rtol=1e-4)
    # the terms on images: an all-ones map leaves no background (SimMin minimal); identical foregrounds
    np.testing.assert_allclose(v["terms_simmin"], -math.log(1 - lo), rtol=1e-4)
    np.testing.assert_allclose(v["terms_simmax_fg"], -math.log(hi) * (math.exp(a) + 1.0) / 2, rtol=1e-4)
    assert np.isfinite(np.asarray(v["grad"])).all() and np.abs(np.asarray(v["grad"])).max() > 0


def test_multi_exit_loss_weights(model, data):
    assert ame.exit_weights(4) == ame.PAPER_EXIT_WEIGHTS
    np.testing.assert_allclose(ame.exit_weights(3), (1 / 3, 2 / 3, 1.0))
    ctx = LossContext(model.tapped.apply, "stage2", C, model.tapped.sites)
    batch = {"image": model.preprocess(data["image"]), "label": jnp.asarray(data["label"])}

    @jax.jit
    def run(params, batch):
        _, seen = tap_values(model.tapped.apply, params, batch["image"], ("exit1", "exit2"))
        ce = [cross_entropy(jnp.mean(seen[s], axis=(1, 2)), batch["label"]) for s in ("exit1", "exit2")]
        return (ame.multi_exit_loss(params, batch, None, ctx), ame.multi_exit_loss(params, batch, None, ctx,
                                                                                    weights=(2.0, 0.0))[0], ce)

    (loss, aux), loss2, ce = run(model.params, batch)
    np.testing.assert_allclose(loss, 0.5 * ce[0] + 1.0 * ce[1], rtol=1e-5)
    np.testing.assert_allclose(loss2, 2.0 * ce[0], rtol=1e-5)
    assert {"accuracy", "exit1_accuracy", "exit2_accuracy"} <= set(aux)
    assert LOSSES["ame_exits"].fn is ame.multi_exit_loss and LOSSES["ame_aggregation"].fn is ame.aggregation_loss


def test_phases_train_the_right_parameters(model, data):
    tr = arrays(4, 16)
    r2 = ame.train_exits(model, tr, steps=2, batch_size=8, progress=False)
    p0, p2 = model.params["params"], r2.model.params["params"]
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p0["ame"], p2["ame"]))
    assert not jnp.array_equal(p0["exit1"]["kernel"], p2["exit1"]["kernel"])
    assert not jnp.array_equal(p0["stage1"]["conv1"]["kernel"], p2["stage1"]["conv1"]["kernel"])
    r3 = ame.train_aggregator(r2.model, tr, steps=2, batch_size=8, progress=False)
    p3 = r3.model.params["params"]
    for k in ("stage1", "stage2", "exit1", "exit2"):
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p2[k], p3[k]))
    assert not jnp.array_equal(p2["ame"]["conv1"]["kernel"], p3["ame"]["conv1"]["kernel"])
    assert {"simmax_fg", "simmin", "simmax_bg"} <= set(r3.history.columns)


def test_explain_amecam_is_the_modules_own_map(model, data):
    out = jaxcam.explain(model, data["image"], method=["amecam", "gradcam"], targets=data["label"].tolist())
    own = ame.ame_maps(model, data["image"], data["label"])["ame"]
    own = (own - own.min(axis=(1, 2), keepdims=True)) / np.ptp(own, axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(np.asarray(out["amecam"]), own, atol=1e-4)
    for layer in ("stage1", "exit2"):
        g = np.asarray(jaxcam.explain(model, data["image"][:2], method="gradcam", layer=layer))
        assert g.shape == (2, SIZE, SIZE) and np.isfinite(g).all() and g.max() > 0
    with pytest.raises(UnknownLayerError):
        jaxcam.explain(model, data["image"][:2], method="gradcam", layer="exit1")  # logits do not depend on it


def test_aggregator_is_dead_code_unless_recorded(model):
    x = jnp.zeros((2, SIZE, SIZE, 3))
    apply = model.tapped.apply

    def convs(fn):
        return jax.jit(fn).lower(model.params, x).compile().as_text().count("convolution(")

    plain = convs(lambda p, v: model.tapped.forward(p, v))
    recorded = convs(lambda p, v: tap_values(apply, p, v, (ame.MAP_SITE,)))
    assert recorded >= plain + 4  # the aggregator's four convolutions run only when its map is recorded


def test_save_load_round_trip_and_errors(model, data, tmp_path):
    trained = ame.with_polarity(model, True, True)
    path = ame.save_ame(trained, tmp_path / "ame")
    back = ame.load_ame(path)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), trained.params, back.params))
    assert ame.polarity(back) == (True, True) and back.class_names == trained.class_names and back.input_size == SIZE
    np.testing.assert_array_equal(ame.ame_maps(back, data["image"], data["label"])["ame"],
                                  ame.ame_maps(trained, data["image"], data["label"])["ame"])
    ame.save_ame(back, path)  # replacing an earlier save works
    with pytest.raises(CheckpointError, match="no ame.json"):
        ame.load_ame(tmp_path / "nothing")
    config = json.loads((path / "ame.json").read_text())
    (path / "ame.json").write_text(json.dumps({**config, "widths": [4, 16]}))
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        ame.load_ame(path)
    (path / "ame.json").write_text(json.dumps(config))
    victim = next(p for p in sorted((path / "variables").rglob("*")) if p.is_file() and p.stat().st_size > 0)
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="altered"):
        ame.load_ame(path)
    (path / "ame.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        ame.load_ame(path)


@pytest.mark.slow
def test_script_quick(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, os.path.join(root, "scripts", "ame_cam.py"), "--quick", "--out", str(tmp_path)],
                   check=True, cwd=root, timeout=600)
    for ext in ("md", "csv", "png"):
        assert (tmp_path / f"ame_cam.{ext}").stat().st_size > 0
