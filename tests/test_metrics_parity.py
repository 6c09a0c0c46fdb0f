"""Metrics against their reference libraries on identical weights, images and maps, from golden fixtures made by
scripts/make_metric_goldens.py (pytorch-grad-cam 1.5.7, torchcam 0.5.0, Quantus 0.6.0; no torch needed here).

ResNet-18 with jaxcam's deterministic random weights (seed 0), four photographs at 64 x 64, Grad-CAM maps from
layer3 (the fourth quantised to four levels, so that ties matter)."""

import os

import numpy as np
import pytest

from jaxcam import metrics as M

from .conftest import FIXTURES

G = np.load(os.path.join(FIXTURES, "metric_goldens.npz"))


@pytest.fixture(scope="module")
def setup(resnet18):
    return resnet18, G["x"], G["cams"]


def test_same_model_and_inputs(setup):
    model, x, _ = setup
    np.testing.assert_allclose(np.asarray(model(x)), G["logits"], atol=2e-4)


def test_pytorch_grad_cam_confidence_change(setup):
    model, x, cams = setup
    change = np.asarray(M.cam_mult_confidence_change(model, x, cams))
    np.testing.assert_allclose(change, G["pgc_cam_mult_change"], atol=2e-6)
    np.testing.assert_allclose(np.maximum(-change, 0), G["pgc_drop_in_confidence"], atol=2e-6)
    np.testing.assert_array_equal(change > 0, G["pgc_increase_in_confidence"] > 0)


@pytest.mark.parametrize("which,kw,key", [("morf", {}, "pgc_road_morf_avg"), ("lerf", {}, "pgc_road_lerf_avg"),
                                          ("combined", {}, "pgc_road_combined"),
                                          ("morf", {"percentiles": (80,)}, "pgc_road_morf_80"),
                                          ("lerf", {"percentiles": (20,)}, "pgc_road_lerf_20")])
def test_pytorch_grad_cam_road_without_noise(setup, which, kw, key):
    """Image 3's quantised map ties whole regions at the thresholds: the strict ``cam < percentile`` rule removes the
    ties with the top, and LeRF at 10 % removes every pixel (all imputed to 0), exactly as the reference does."""
    model, x, cams = setup
    ours = np.asarray(M.road(model, x, cams, which=which, noise=0.0, **kw))
    np.testing.assert_allclose(ours, G[key], atol=2e-5)


def test_torchcam_average_drop_and_increase(setup):
    model, x, cams = setup
    np.testing.assert_allclose(M.average_drop(model, x, cams, space="normalised"), G["tc_avg_drop"], atol=2e-5)
    np.testing.assert_array_equal(np.asarray(M.increase_in_confidence(model, x, cams, space="normalised")),
                                  G["tc_conf_increase"].astype(np.float32))


@pytest.mark.parametrize("steps", [20, 7])
def test_torchcam_deletion_insertion(setup, steps):
    model, x, cams = setup
    c = M.deletion_insertion(model, x, cams, steps=steps, insertion_substrate="zeros")
    np.testing.assert_allclose(c.fractions, G[f"tc_fractions_s{steps}"], atol=1e-7)
    np.testing.assert_allclose(c.deletion, G[f"tc_deletion_curve_s{steps}"], atol=2e-5)
    np.testing.assert_allclose(c.insertion, G[f"tc_insertion_curve_s{steps}"], atol=2e-5)
    np.testing.assert_allclose(c.deletion_auc, G[f"tc_deletion_auc_s{steps}" if steps != 20 else "tc_deletion_auc"],
                               atol=2e-5)
    np.testing.assert_allclose(c.insertion_auc,
                               G[f"tc_insertion_auc_s{steps}" if steps != 20 else "tc_insertion_auc"], atol=2e-5)


def test_quantus_map_metrics():
    """Quantus' defaults divide every map by one maximum over the whole batch (and take |a| for Sparseness and
    Complexity): scale-invariant metrics agree with jaxcam's per-map definitions on signed maps too."""
    cams, masks, signed = G["cams"], G["masks"], G["q_signed_maps"]
    for variant, maps in (("raw", cams), ("default", cams), ("default_signed", signed)):
        np.testing.assert_allclose(M.sparseness(maps), G[f"q_sparseness_{variant}"], atol=1e-5)
        np.testing.assert_allclose(M.pointing_game(maps, masks), G[f"q_pointing_game_{variant}"])
        np.testing.assert_allclose(M.relevance_mass_accuracy(maps, masks), G[f"q_relevance_mass_{variant}"],
                                   rtol=1e-5)
        # Quantus sorts with an unstable argsort: where ties straddle the mask any order is valid; jaxcam's stable
        # order is one of them (its value is stored as column 2 of the bounds)
        bounds = G[f"q_tiebounds_relevance_rank_{variant}"]
        ours = np.asarray(M.relevance_rank_accuracy(maps, masks))
        np.testing.assert_allclose(ours, bounds[:, 2], atol=1e-6)
        assert ((ours >= bounds[:, 0] - 1e-6) & (ours <= bounds[:, 1] + 1e-6)).all()
        exact = bounds[:, 0] == bounds[:, 1]
        np.testing.assert_allclose(ours[exact], G[f"q_relevance_rank_{variant}"][exact], atol=1e-6)
    np.testing.assert_allclose(M.entropy(cams), G["q_complexity_raw"], atol=1e-4)


def test_quantus_complexity_does_not_broadcast_channels():
    """Quantus 0.6.0's Complexity on (N, 1, H, W) maps beside (N, 3, H, W) images is entropy(channels=1): it does not
    repeat the map over the image's channels (which would add log 3). Pinned on every golden variant, so the
    docstring's parity note cannot drift again."""
    assert tuple(G["q_complexity_raw_a_shape"]) == (4, 1, 64, 64) and G["x"].shape[-1] == 3
    for variant, maps in (("raw", G["cams"]), ("default", G["cams"]), ("default_signed", G["q_signed_maps"])):
        np.testing.assert_allclose(M.entropy(maps, channels=1), G[f"q_complexity_{variant}"], atol=1e-4)
        np.testing.assert_allclose(M.entropy(maps, channels=3) - G[f"q_complexity_{variant}"], np.log(3), atol=1e-4)


@pytest.mark.torch
def test_live_torchcam_metrics_and_cam_mult(setup):
    """The references themselves, on other maps (the goldens' maps flipped, a smooth ramp), when torch is here."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    tcm = pytest.importorskip("torchcam.metrics")
    pgc_metrics = pytest.importorskip("pytorch_grad_cam.metrics.cam_mult_image")
    import contextlib
    from functools import partial

    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from jaxcam.models import random_state_dict

    model, x, cams = setup
    cams = np.ascontiguousarray(cams[:, ::-1, :])
    cams[0] = np.linspace(0, 1, cams[0].size, dtype=np.float32).reshape(cams[0].shape)
    tm = torchvision.models.resnet18()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in random_state_dict("resnet18", seed=0).items()},
                       strict=False)
    tm.eval()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    cls = [int(c) for c in np.argmax(np.asarray(model(x)), -1)]

    class Fixed:  # torchcam's extractor protocol, returning the maps under test
        def __init__(self):
            self.model = tm

        def __call__(self, class_idx=None, scores=None, normalized=True, **kw):
            return [torch.from_numpy(cams)]

        def fuse_cams(self, c):
            return c[0]

        def _hooks_off(self):
            return contextlib.nullcontext()

    soft = partial(torch.softmax, dim=-1)
    di = tcm.DeletionInsertionMetric(Fixed(), soft, steps=10)
    ad = tcm.ClassificationMetric(Fixed(), soft)
    ours_di = M.deletion_insertion(model, x, cams, steps=10, insertion_substrate="zeros")
    ours_ad = M.average_drop(model, x, cams, space="normalised")
    di.update(xt, cls)
    ad.update(xt, cls)
    np.testing.assert_allclose(di.summary()["deletion_auc"], float(np.mean(ours_di.deletion_auc)), atol=2e-5)
    np.testing.assert_allclose(di.summary()["insertion_auc"], float(np.mean(ours_di.insertion_auc)), atol=2e-5)
    np.testing.assert_allclose(ad.summary()["avg_drop"], float(np.mean(ours_ad)), atol=2e-5)
    want = pgc_metrics.CamMultImageConfidenceChange()(xt, cams, [ClassifierOutputSoftmaxTarget(c) for c in cls], tm)
    np.testing.assert_allclose(M.cam_mult_confidence_change(model, x, cams), np.ravel(want), atol=2e-6)
