"""Map-only metrics (localisation and complexity) on closed-form cases, boxes, and degenerate inputs."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import metrics as M


def _maps():
    rng = np.random.default_rng(0)
    cams = rng.uniform(size=(3, 20, 24)).astype(np.float32)
    masks = np.zeros((3, 20, 24), bool)
    masks[0, 2:8, 3:9] = True
    masks[1, 10:20, 0:24] = True
    masks[2, 5:6, 5:6] = True
    return cams, masks


def test_pointing_game_hits_misses_and_tolerance():
    cams, masks = _maps()
    cams[0] = 0.0
    cams[0, 4, 4] = 1.0  # inside
    cams[1] = 0.0
    cams[1, 0, 0] = 1.0  # outside, 10 rows from the mask
    cams[2] = 0.0
    cams[2, 5, 8] = 1.0  # 3 px right of the one-pixel mask
    np.testing.assert_array_equal(M.pointing_game(cams, masks), [1, 0, 0])
    np.testing.assert_array_equal(M.pointing_game(cams, masks, tolerance=3), [1, 0, 1])
    np.testing.assert_array_equal(M.pointing_game(cams, masks, tolerance=10), [1, 1, 1])
    cams[1, 15, 3] = 1.0  # a second maximal pixel inside the mask: a hit, as Quantus counts it
    assert float(M.pointing_game(cams, masks)[1]) == 1.0


def test_mass_rank_and_iou_by_hand():
    cams, masks = _maps()
    c, m = cams.reshape(3, -1), masks.reshape(3, -1)
    mass = (c * m).sum(1) / c.sum(1)
    np.testing.assert_allclose(M.relevance_mass_accuracy(cams, masks), mass, rtol=1e-5)
    np.testing.assert_allclose(M.energy_pointing_game(cams, masks), mass, rtol=1e-5)
    signed = cams - 0.5
    s = signed.reshape(3, -1)
    np.testing.assert_allclose(M.relevance_mass_accuracy(signed, masks), (s * m).sum(1) / s.sum(1), rtol=1e-4)
    pos = np.maximum(s, 0)
    np.testing.assert_allclose(M.energy_pointing_game(signed, masks), (pos * m).sum(1) / pos.sum(1), rtol=1e-5)
    k = m.sum(1)
    order = np.argsort(-c, axis=1, kind="stable")
    rank = np.array([np.isin(np.arange(c.shape[1]), order[i, :k[i]]) for i in range(3)])
    np.testing.assert_allclose(M.relevance_rank_accuracy(cams, masks), (rank & m).sum(1) / k, rtol=1e-6)
    on = c >= 0.7
    np.testing.assert_allclose(M.iou(cams, masks, threshold=0.7), (on & m).sum(1) / (on | m).sum(1), rtol=1e-6)


def test_boxes_are_clipped_unioned_and_checked():
    masks = M.boxes_to_masks([[0, 0, 2, 3], [[-5, -5, 1, 1], [3, 3, 10, 10]]], (4, 5))
    assert masks.shape == (2, 4, 5)
    assert masks[0].sum() == 6 and masks[1, 0, 0] and masks[1, 3, 4] and masks[1].sum() == 1 + 2
    cams = np.random.default_rng(1).uniform(size=(2, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(M.relevance_mass_accuracy(cams, boxes=[[0, 0, 2, 3], [[0, 0, 4, 5]]]),
                               [cams[0, :2, :3].sum() / cams[0].sum(), 1.0], rtol=1e-5)
    with pytest.raises(jaxcam.MaskError, match="outside"):
        M.boxes_to_masks([[10, 10, 12, 12]], (4, 5))
    with pytest.raises(jaxcam.MaskError, match="end before its start"):
        M.boxes_to_masks([[3, 3, 1, 1]], (4, 5))
    with pytest.raises(ValueError, match="exactly one"):
        M.iou(cams)


def test_localisation_errors_and_degenerate_maps():
    cams, masks = _maps()
    empty = masks.copy()
    empty[1] = False
    with pytest.raises(jaxcam.MaskError, match=r"masks\[1\] is empty"):
        M.pointing_game(cams, empty)
    with pytest.raises(jaxcam.MaskError, match="shape"):
        M.iou(cams, masks[:, :10])
    with pytest.raises(jaxcam.MapError, match="NaN"):
        M.relevance_mass_accuracy(np.where(masks, np.nan, cams), masks)
    zero = np.zeros_like(cams)
    for fn in (M.pointing_game, M.energy_pointing_game, M.relevance_mass_accuracy, M.relevance_rank_accuracy,
               M.iou):
        v = np.asarray(fn(zero, masks))
        assert np.isfinite(v).all(), fn.__name__
    np.testing.assert_array_equal(M.energy_pointing_game(zero, masks), 0.0)
    np.testing.assert_array_equal(M.pointing_game(zero, masks), 1.0)  # every pixel is maximal


def test_sparseness_is_the_gini_index():
    n = 100
    one_hot = np.zeros((1, 10, 10), np.float32)
    one_hot[0, 3, 4] = 1.0
    uniform = np.full((1, 10, 10), 0.3, np.float32)
    np.testing.assert_allclose(M.sparseness(one_hot), (n - 1) / n, atol=1e-4)
    np.testing.assert_allclose(M.sparseness(uniform), 0.0, atol=1e-6)
    cams = np.random.default_rng(2).uniform(size=(2, 10, 10)).astype(np.float32)
    a = np.sort(np.abs(cams.reshape(2, -1)).astype(np.float64) + 1e-7, axis=1)
    i = np.arange(1, n + 1)
    gini = ((2 * i - n - 1) * a).sum(1) / (n * a.sum(1))
    np.testing.assert_allclose(M.sparseness(cams), gini, rtol=1e-5)
    np.testing.assert_allclose(M.sparseness(-cams), gini, rtol=1e-5)  # absolute values
    assert np.isfinite(np.asarray(M.sparseness(np.zeros((1, 10, 10))))).all()


def test_entropy():
    cams = np.random.default_rng(3).uniform(size=(2, 10, 10)).astype(np.float32)
    p = cams.reshape(2, -1) / cams.reshape(2, -1).sum(1, keepdims=True)
    h = -(p * np.log(p)).sum(1)
    np.testing.assert_allclose(M.entropy(cams), h, rtol=1e-5)
    np.testing.assert_allclose(M.entropy(cams, channels=3), h + np.log(3), rtol=1e-5)
    np.testing.assert_allclose(M.entropy(np.zeros((1, 10, 10))), np.log(100), rtol=1e-6)  # uniform
    one_hot = np.zeros((1, 10, 10), np.float32)
    one_hot[0, 0, 0] = 2.0
    np.testing.assert_allclose(M.entropy(one_hot), 0.0, atol=1e-6)
    with pytest.raises(jaxcam.MapError):
        M.entropy(jnp.ones((10, 10)))
