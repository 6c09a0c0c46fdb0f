"""Region ablation: the substrates, the same-area random control, the per-region ranking and determinism."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam.errors import InvalidArgumentError, MapError, UnknownNameError
from jaxcam.metrics.ablation import (ABLATIONS, ablate, ablated_images, random_regions, region_ablation,
                                     region_ablation_drop)
from jaxcam.regions import EmptyRegionsError

S = 32
CUE = (slice(2, 8), slice(2, 8))  # the only pixels class 0 reads
DECOY = (slice(20, 28), slice(20, 28))


class Probe(nn.Module):
    """Logits linear in the pixels: class 0 = 0.5 * sum of the red channel (normalised) over CUE."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(3, (1, 1), name="conv")(x)
        return nn.Dense(4, name="head")(h.reshape(h.shape[0], -1))


@pytest.fixture(scope="module")
def probe():
    module = Probe()
    v = module.init(jax.random.key(0), jnp.zeros((1, S, S, 3)))
    w = np.zeros((S, S, 3, 4), np.float32)
    w[CUE[0], CUE[1], 0, 0] = 0.5
    params = {"conv": {"kernel": jnp.eye(3).reshape(1, 1, 3, 3), "bias": jnp.zeros(3)},
              "head": {"kernel": jnp.asarray(w.reshape(-1, 4)), "bias": jnp.zeros(4)}}
    return jaxcam.from_linen(module, {"params": params}, input_size=S, mean=(0.5,) * 3, std=(0.5,) * 3,
                             default_layer="conv")


def _data(n=3):
    images = np.full((n, S, S, 3), 0.5, np.float32)
    images[:, CUE[0], CUE[1], 0] = 1.0
    cams = np.zeros((n, S, S), np.float32)
    cams[:, DECOY[0], DECOY[1]] = 1.0  # region 1: the map's favourite, which the model ignores
    cams[:, CUE[0], CUE[1]] = 0.8  # region 2: what the model uses
    return images, cams, np.zeros(n, np.int32)


def test_ablations_touch_only_the_mask():
    img = jax.random.uniform(jax.random.key(1), (S, S, 3))
    mask = np.zeros((S, S), bool)
    mask[10:20, 5:15] = True
    for how in ABLATIONS:
        out = np.asarray(ablate(img, mask, how, key=3))
        np.testing.assert_array_equal(out[~mask], np.asarray(img)[~mask])
        assert not np.allclose(out[mask], np.asarray(img)[mask]), how
    flat = jnp.full((S, S, 3), 0.25)
    np.testing.assert_allclose(ablate(flat, mask, "inpaint"), flat, atol=1e-5)
    np.testing.assert_allclose(ablate(flat, mask, "mean"), flat, atol=1e-6)
    np.testing.assert_array_equal(ablate(img, mask, "noise", key=3), ablate(img, mask, "noise", key=3))
    assert not np.array_equal(ablate(img, mask, "noise", key=3), ablate(img, mask, "noise", key=4))


def test_ablate_errors():
    img = jnp.zeros((S, S, 3))
    with pytest.raises(UnknownNameError, match="blur"):
        ablate(img, np.ones((S, S), bool), "blurr")
    with pytest.raises(MapError, match="region_mask"):
        ablate(img, np.ones((S, S - 1), bool), "mean")
    with pytest.raises(InvalidArgumentError, match="key"):
        ablate(img, np.ones((S, S), bool), "noise")


def test_random_regions_have_the_exact_area():
    for area in (1, 37, 500):
        m = random_regions(jax.random.key(area), jnp.asarray(area), (S, S))
        assert int(m.sum()) == area


def test_cue_region_ranks_first_and_beats_the_control(probe):
    images, cams, labels = _data()
    r = region_ablation(probe, images, cams, labels, key=0, how="mean")
    n = len(images)
    assert r.before.shape == r.after.shape == r.control_after.shape == (n, 4)
    assert r.region_change.shape == (n, 5)
    assert np.isnan(r.region_change[:, 2:]).all() and np.isfinite(r.region_change[:, :2]).all()
    np.testing.assert_allclose(r.before.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(r.area_fraction, (64 + 36) / S ** 2)
    np.testing.assert_array_equal(r.control_area_fraction, r.area_fraction)
    np.testing.assert_array_equal(r.top_region, 2)  # the cue, though the map ranks it second
    assert (r.before[:, 0] > 0.99).all()
    assert (r.explained_change < -0.5).all()
    assert (r.region_change[:, 1] < -0.5).all() and (np.abs(r.region_change[:, 0]) < 1e-3).all()
    assert (r.others_change > 0.1).all()
    np.testing.assert_allclose(r.explained_change, r.after[:, 0] - r.before[:, 0], atol=1e-6)
    table = r.to_table()
    assert len(table) == n and "control_explained_change" in table.columns


def test_deterministic_with_the_key(probe):
    images, cams, labels = _data(2)
    a = region_ablation(probe, images, cams, labels, key=5, how="noise", batch_size=3)
    b = region_ablation(probe, images, cams, labels, key=jax.random.key(5), how="noise", batch_size=3)
    c = region_ablation(probe, images, cams, labels, key=6, how="noise", batch_size=3)
    np.testing.assert_array_equal(a.after, b.after)
    np.testing.assert_array_equal(a.control_after, b.control_after)
    assert not np.array_equal(a.after, c.after)


def test_blob_maps_shapes_and_metric(probe):
    model = probe
    images = np.asarray(jax.random.uniform(jax.random.key(2), (2, S, S, 3)))
    yy, xx = np.mgrid[:S, :S]
    cams = np.stack([np.exp(-((yy - 8) ** 2 + (xx - 20) ** 2) / 30.0), np.exp(-((yy - 24) ** 2 + (xx - 9) ** 2) / 50.0)])
    r = region_ablation(model, images, cams, [1, 2], key=0, how="blur", top=0.1, max_regions=3)
    assert r.region_change.shape == (2, 3) and r.top_region.shape == (2,)
    np.testing.assert_array_equal(r.control_area_fraction, r.area_fraction)
    assert all(1 <= t <= rg.count for t, rg in zip(r.top_region, r.regions))
    drop = region_ablation_drop(model, model.preprocess(images), cams, [1, 2], how="blur", top=0.1, max_regions=3)
    np.testing.assert_allclose(drop, -r.explained_change, atol=1e-6)


def test_region_ablation_errors(probe):
    images, cams, labels = _data(2)
    with pytest.raises(UnknownNameError, match="inpaint"):
        region_ablation(probe, images, cams, labels, how="inpaintt")
    with pytest.raises(MapError, match="cams"):
        region_ablation(probe, images, cams[:, :-1], labels)
    with pytest.raises(InvalidArgumentError, match="input size"):
        region_ablation(probe, images[:, :-1], cams, labels)
    with pytest.raises(InvalidArgumentError, match="labels"):
        region_ablation(probe, images, cams, [0, 7])
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        region_ablation(probe, images, cams, labels, batch_size=0)
    with pytest.raises(EmptyRegionsError, match="threshold"):
        region_ablation(probe, images, cams * 0.1, labels)


def test_a_map_without_regions_is_an_error_naming_the_image_or_a_documented_zero(probe):
    images, cams, labels = _data(3)
    cams[1] = 0.0  # a constant map: min-max leaves it all zero, so no pixel passes any threshold
    with pytest.raises(EmptyRegionsError, match=r"image 1: .*empty='zero'"):
        region_ablation(probe, images, cams, labels, how="mean")
    with pytest.raises(UnknownNameError, match="empty"):
        region_ablation(probe, images, cams, labels, empty="skip")
    r = region_ablation(probe, images, cams, labels, key=0, how="mean", empty="zero")
    assert r.regions[1].count == 0 and r.area_fraction[1] == 0 and r.top_region[1] == 0
    np.testing.assert_array_equal(r.after[1], r.before[1])
    np.testing.assert_array_equal(r.control_after[1], r.before[1])
    for v in (r.explained_change, r.others_change, r.control_explained_change, r.control_others_change):
        assert v[1] == 0 and np.isfinite(v).all()
    assert np.isnan(r.region_change[1]).all()
    np.testing.assert_array_equal(r.top_region[[0, 2]], 2)  # the other images are scored as before
    assert (r.explained_change[[0, 2]] < -0.5).all()


def test_evaluate_runs_region_ablation_drop(probe):
    from jaxcam.evaluate import METRICS

    images, _, _ = _data(2)
    images[1, 12:20, 12:20] = 0.9
    assert METRICS["region_ablation_drop"].higher_is_better and METRICS["region_ablation_drop"].needs == "model"
    opts = {"region_ablation": {"how": "mean", "top": 0.05}}
    table = jaxcam.evaluate(probe, images, "gradcam", ["region_ablation_drop"], key=3, metric_options=opts)
    assert len(table) == 2 and set(table["metric"].tolist()) == {"region_ablation_drop"}
    x = probe.preprocess(images)
    maps = jaxcam.explain(probe, x, "gradcam", preprocessed=True)
    direct = region_ablation_drop(probe, x, maps, table["class"], key=jax.random.key(3), how="mean", top=0.05)
    np.testing.assert_allclose(table["value"], np.asarray(direct), atol=1e-6)
    assert np.isfinite(table["value"]).all()
    huge = {"region_ablation": {"min_area": S * S + 1}}  # no region survives: scored 0 (nothing removed) ...
    zero = jaxcam.evaluate(probe, images, "gradcam", ["region_ablation_drop"], metric_options=huge)
    np.testing.assert_array_equal(zero["value"], 0.0)
    huge["region_ablation"]["empty"] = "error"  # ... or, asked for, a clear error naming method and image
    with pytest.raises(EmptyRegionsError, match=r"gradcam's maps: image 0: .*empty"):
        jaxcam.evaluate(probe, images, "gradcam", ["region_ablation_drop"], metric_options=huge)
    constant = region_ablation_drop(probe, x, np.zeros((2, S, S)), how="mean")
    np.testing.assert_array_equal(constant, 0.0)


def test_ablated_images_are_what_the_model_saw_and_the_summary_intervals(probe):
    images, cams, labels = _data(3)
    images[1] -= 0.1
    r = region_ablation(probe, images, cams, labels, key=4, how="noise")
    cam_img, ctrl_img = ablated_images(images, r, key=4, how="noise")
    assert cam_img.shape == ctrl_img.shape == images.shape and r.control_masks.shape == (3, S, S)
    np.testing.assert_array_equal(cam_img[~np.stack([g.mask() for g in r.regions])], images[~np.stack(
        [g.mask() for g in r.regions])])
    np.testing.assert_array_equal(ctrl_img[~r.control_masks], images[~r.control_masks])
    for pictures, expected in ((cam_img, r.after), (ctrl_img, r.control_after)):
        probs = jax.nn.softmax(probe(probe.preprocess(pictures)), axis=-1)
        np.testing.assert_allclose(probs, expected, atol=1e-5)
    r = region_ablation(probe, images, cams, labels, key=4, how="mean")
    table = r.summary()
    assert table["ablation"].tolist() == ["cam regions", "random control", "cam - control"]
    mean, low, high = (np.asarray(table[c]) for c in ("mean", "low", "high"))
    np.testing.assert_allclose(mean[0], r.explained_change.mean(), atol=1e-12)
    assert (low <= mean).all() and (mean <= high).all() and table["n"].tolist() == [3] * 3
    assert (high - low)[[0, 2]].min() > 0 and mean[0] < -0.5 and high[2] < 0
    with pytest.raises(UnknownNameError):
        ablated_images(images, r, key=4, how="smudge")
    with pytest.raises(InvalidArgumentError, match="images"):
        ablated_images(images[:2], r, key=4, how="noise")
