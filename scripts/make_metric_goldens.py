"""Golden CAM-metric values from pytorch-grad-cam 1.5.7, torchcam 0.5.0 and Quantus 0.6.0, for torch-free tests.

Writes tests/fixtures/metric_goldens.npz (a deterministic zip: fixed timestamps, sorted keys, so two runs give
byte-identical files). Regenerate with

    pip install -e '.[torch]'            # torch 2.14.1, torchvision 0.29.1, grad-cam 1.5.7, torchcam 0.5.0
    pip install --no-deps quantus==0.6.0  # plain `pip install quantus==0.6.0` would add opencv-python beside the
    pip install pandas cachetools         # installed opencv-python-headless; these two are its import-time deps
    python scripts/make_metric_goldens.py

(the environment this fixture was made in got pandas 3.1.1 and cachetools 8.0.1). Runs in ~85 s on 2 CPU threads
(ROAD's sparse solves dominate). Two runs produced byte-identical files (nothing random remains: ROAD noise is
zeroed, torch/numpy are seeded anyway, no timings are stored).

Shared inputs (all stored, so the references can be recomputed without torch)
----------------------------------------------------------------------------
* ``x`` float32 (4, 64, 64, 3) NHWC = ``jaxcam.preprocess(list(jaxcam.sample_images().values()), size=64,
  mean=IMAGENET_MEAN, std=IMAGENET_STD)`` (chelsea, coffee, astronaut, rocket); torch gets ``x.transpose(0,3,1,2)``.
* Model: torchvision ``resnet18()`` holding ``jaxcam.models.random_state_dict("resnet18", seed=0)`` (only
  ``num_batches_tracked`` missing), ``eval()``, CPU float32, ``torch.set_num_threads(2)``, ``torch.manual_seed(0)``.
  JAX side: ``jaxcam.load_model("resnet18", weights=random_state_dict("resnet18", seed=0))``.
* ``logits`` float32 (4, 1000): torch logits of the batch of 4; ``classes`` int32 (4,) their argmax.
* ``cams`` float32 (4, 64, 64) in [0, 1]: ``jaxcam.explain(model, x, "gradcam", layer="layer3",
  preprocessed=True)`` (argmax targets), then ``cams[3] = np.round(cams[3] * 3) / 3`` (float32; 4 levels, heavy ties).
  Note: even images 0-2 have ties (2500 distinct values of 4096: the upsampling clamps the 8-pixel borders).
  Per-image maxima are 0.9999999 / 0.9999999 / 0.9999998 / 1.0.
* ``masks`` bool (4, 64, 64) and ``boxes`` int32 (4, 4) = (y0, x0, y1, x1), exclusive ends:
  [8:40, 10:50], [0:20, 0:64], [30:64, 30:64], [20:36, 36:52]. The last box straddles the edge of the top level
  (value 1.0, 675 tied pixels) of the 4-level map, so the tie order decides RelevanceRankAccuracy / TopKIntersection.

1. pytorch-grad-cam 1.5.7 (``pytorch_grad_cam.metrics``), keys ``pgc_*``, float32 (4,)
--------------------------------------------------------------------------------------
Called as ``metric(xt, cams, targets, model)`` on the whole batch, ``targets = [ClassifierOutputSoftmaxTarget(c)
for c in classes]`` (softmax over the 1000 logits of each image, then the class entry).
* ``pgc_cam_mult_change`` = s(x * cam) - s(x): the cam (H, W) multiplies every channel of the *normalised* input.
  ``pgc_drop_in_confidence`` = max(0, -change) (absolute, not divided by s(x)); ``pgc_increase_in_confidence`` =
  float32(change > 0).
* ROAD: keep-mask for MoRF(p) = ``cam < np.percentile(cam, p)`` (numpy default 'linear' percentile of the float32
  (H, W) map, returns float32; strict '<', so every pixel tied with the threshold is REMOVED too: with ties the
  removed fraction is > (100 - p) %). LeRF(p) is the same on ``1 - cam`` computed in float32 torch (so it keeps
  ``1 - cam < percentile(1 - cam, p)``). Removed pixels are imputed by the noisy linear imputer: each removed pixel =
  weighted mean of its in-image 8-neighbours (1/6 edge, 1/12 diagonal, weights renormalised by dropping
  out-of-image neighbours), known neighbours on the right-hand side, sparse system solved by
  ``scipy.sparse.linalg.spsolve`` in float64 (all 3 channels as columns), cast to float32 and written into the
  normalised input. Score = s(x_imputed) - s(x) (one forward of the imputed batch of 4).
  NOISE: pgc adds ``noise * torch.randn_like`` (noise=0.01, unseeded) to the imputed pixels, and every ROAD class
  builds its ``NoisyLinearImputer()`` with the default argument (the Average classes even build new
  ROADMostRelevantFirst objects inside ``__call__``). This script sets the default to zero for the duration of the
  ROAD calls: ``road.NoisyLinearImputer.__init__.__defaults__ = (0.0, road.neighbors_weights)`` (restored
  afterwards); it asserts that the imputers built have ``noise == 0.0`` and that MoRF(80) gives identical results
  under two different torch seeds. (0 * randn is still drawn, so it is exactly 0; the imputed values are the pure
  linear solve.)
  ``pgc_road_morf_avg`` / ``pgc_road_lerf_avg``: ROAD{Most,Least}RelevantFirstAverage() = np.mean over
  p in [10, 20, ..., 90] of the float32 per-p scores; ``pgc_road_combined`` = ROADCombined() = (lerf_avg -
  morf_avg) / 2; ``pgc_road_morf_80`` = ROADMostRelevantFirst(percentile=80); ``pgc_road_lerf_20`` =
  ROADLeastRelevantFirst(percentile=20). Diagnostics (same calls, one p at a time): ``pgc_road_percentiles`` int32
  (9,), ``pgc_road_morf_per_percentile`` / ``pgc_road_lerf_per_percentile`` float32 (4, 9) and
  ``pgc_road_morf_removed`` / ``pgc_road_lerf_removed`` int32 (4, 9) = number of imputed pixels. Tie effects on
  image 3: MoRF p10-p30 impute 3984 pixels (all but the 112 zeros); LeRF p10 imputes ALL 4096 pixels (percentile
  of 1 - cam is 0.0 and nothing is < 0), the system then has b = 0 and spsolve returns 0, i.e. the imputed image
  is all zeros in normalised space.

2. torchcam 0.5.0 (``torchcam.metrics``), keys ``tc_*``, float64 (4,) (python floats from ``.item()``)
---------------------------------------------------------------------------------------------------
A fake extractor (``FixedCAMs`` below: ``model``, ``__call__(class_idx, scores, ...) -> [cams[rows]]``,
``fuse_cams`` -> its single element, ``_hooks_off`` -> nullcontext) returns the stored cams. Each image is
evaluated alone: ``update(xt[i:i+1], class_idx=[classes[i]])``, ``summary()``, ``reset()``;
``logits_fn=partial(torch.softmax, dim=-1)``. The CAM is resized with bilinear ``align_corners=False`` to the
input size, which at 64 -> 64 is exactly the identity (checked).
All tc_* AUC / drop values are float32 results held in float64.
* ``tc_avg_drop`` = relu(Y - Y') / (Y + 1e-7), ``tc_conf_increase`` = float(Y < Y') with Y = softmax score of the
  class on x, Y' on ``cam * x`` (normalised input; float32 arithmetic; summed with ``.item()``).
* ``DeletionInsertionMetric(steps=S, batch_size=32)``, baseline None = zeros (in normalised space). Pixels are
  ranked by ``torch.argsort(cam.flatten(), descending=True, stable=True)`` (ties: lower flat index (row-major y*W+x)
  first); rank shared by the 3 channels. N = 4096, step = ceil(N / S); counts = [0, step, 2 step, ... < N] + [N]
  (S=20: step 205, 21 points, last interval 201 pixels; S=7: step 586, 8 points, last interval 580). fractions =
  float32(counts) / N. Deletion at count k: the k top-ranked pixels set to the baseline; insertion at k: baseline
  image with the k top-ranked pixels restored. deletion[0] = insertion[-1] = score of the original image from the
  first (unperturbed) forward; deletion[-1] = insertion[0] = the all-baseline image (one shared forward). AUC =
  ``torch.trapezoid(curve, fractions)`` in float32 (non-uniform last interval!). Scores = softmax of the class.
  Keys ``tc_deletion_auc``, ``tc_insertion_auc`` (S=20), ``tc_deletion_auc_s7``, ``tc_insertion_auc_s7`` (S=7), and
  the curves as torchcam computed them (its ``_compute_curves`` is wrapped to record its return value):
  ``tc_fractions_s20`` float32 (21,), ``tc_deletion_curve_s20`` / ``tc_insertion_curve_s20`` float32 (4, 21), and
  the same with ``_s7`` ((8,), (4, 8)).

3. Quantus 0.6.0 (map-only metrics), keys ``q_<metric>_<variant>``, (4,) in the dtype Quantus returned
------------------------------------------------------------------------------------------------------------
``metric(model=tm, x_batch=x NCHW float32, y_batch=classes (int64), a_batch=cams[:, None] float32 (4,1,64,64),
s_batch=masks[:, None] float32 0/1 (4,1,64,64), device="cpu")``, ``batch_size`` default 64 (one batch),
``disable_warnings=True``. A fresh copy of a_batch is passed to every call, because with ``normalise=False`` Quantus
works on the caller's array and Sparseness (``a += 1e-7``) and Complexity (``a /= sum``) modify it IN PLACE.
Pre-processing (``Metric.general_preprocess``): a (4,1,64,64) map is kept as is (same ndim as x, NOT broadcast to 3
channels: every metric below saw a_batch (4,1,64,64) and s_batch (4,1,64,64) in ``evaluate_batch``, recorded as
``q_*_a_shape`` / ``q_*_s_shape``), so features = 4096 pixels. Then, in this order: if normalise,
``a = normalise_by_max(a)`` = a / max(|a|) over ALL axes INCLUDING THE BATCH (one global scalar; skipped if a is
all zeros); then if abs, ``a = |a|``. Variants: ``_raw`` = ``normalise=False, abs=False``; ``_default`` = the
metric's own defaults (below). With these cams the batch max |a| is exactly 1.0 (image 3), so ``_default`` equals
``_raw`` here; to exercise the defaults a third variant ``_default_signed`` uses the signed, differently scaled
maps ``q_signed_maps`` float32 (4, 64, 64) = (cams - 0.25) * [1, 0.5, 2, 0.25][:, None, None] (batch max |a| =
1.4999996, image 2); Complexity with abs=False on signed maps would take log of negatives, so only defaults are run on them.
* Sparseness (defaults abs=True, normalise=True): a.reshape(B, -1); a += 1e-7 (in the map's float32);
  a = sort ascending; score = sum((2 i - n - 1) a_i) / (n sum a), i = 1..n (int64 * float32 -> float64).
* Complexity (abs=True, normalise=True): p = a / sum|a| (float32, in place); -sum(p * log(p + 1e-12)) (float32).
* PointingGame (weighted=False, abs=False, normalise=True): hit = any(mask & (a == max a)) (all tied maxima
  count); NaN for an empty mask. Returned bool, stored as float64.
* RelevanceMassAccuracy (abs=False, normalise=True): sum(a * s) / sum(a) (no epsilon).
* RelevanceRankAccuracy (abs=False, normalise=True): K = |s|; order = ``np.argsort(-a)`` (numpy DEFAULT kind,
  i.e. NOT stable: the order of tied values is implementation-defined, and differs from the stable order for every
  image here); score = (#mask pixels among the first K of order) / K.
* TopKIntersection(k=100) (concept_influence=False, abs=False, normalise=True): same ``np.argsort(-a)``;
  score = mean(mask over the first 100).
* AttributionLocalisation (weighted=False, max_size=1.0, positive_attributions=False, abs=True, normalise=True):
  sum(a * s) / (sum(a) + 1e-9); NaN if the mask is empty or the ratio > 1. (Its "size_data" is
  ``x_batch[2:].size``, only used by weighted / the max_size warning.)
Because the argsort tie order of RelevanceRankAccuracy / TopKIntersection is not reproducible by a different
implementation, ``q_tiebounds_<metric>_<variant>`` float64 (4, 3) holds (min over all tie orders, max over all tie
orders, value with a STABLE descending order (ties: lower flat index first)), computed by this script in numpy
(not a reference output). A parity test should require lo <= value <= hi, or equality with the stable value if
jaxcam breaks ties that way. Only image 3 (box 3 straddles the 675 tied maxima) has lo < hi: RelevanceRankAccuracy
[0, 0.8242] (Quantus here: 0.40234, stable: 0), TopKIntersection [0, 1] (Quantus here: 0.32, stable: 0); the Quantus
value there depends on numpy's sort implementation (numpy 2.4.6 here) and may differ on another CPU/numpy.

Other keys
----------
``images`` str (4,), ``versions`` str, ``failures`` str (F,) (``"<key>: <ExceptionType>: <message>"``, empty when
every reference call succeeded), ``notes`` str (free text below, machine-readable copies of the facts above).
Failures observed in the last run: none.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
import zipfile
from functools import partial
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np

import jaxcam
from jaxcam.models import random_state_dict
from jaxcam.models.architectures import IMAGENET_MEAN, IMAGENET_STD

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "metric_goldens.npz"
SIZE = 64
BOXES = np.array([[8, 10, 40, 50], [0, 0, 20, 64], [30, 30, 64, 64], [20, 36, 36, 52]], np.int32)  # y0 x0 y1 x1
SIGNED_SCALES = np.array([1.0, 0.5, 2.0, 0.25], np.float32)
SIGNED_OFFSET = np.float32(0.25)
ROAD_PERCENTILES = [10, 20, 30, 40, 50, 60, 70, 80, 90]
TOPK = 100


def build_torch_model():
    import torch
    import torchvision

    sd = random_state_dict("resnet18", seed=0)
    tm = torchvision.models.resnet18()
    res = tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    assert not res.unexpected_keys and all(k.endswith("num_batches_tracked") for k in res.missing_keys), res
    return tm.eval()


def shared_inputs():
    imgs = jaxcam.sample_images()
    names = list(imgs)
    x = jaxcam.preprocess(list(imgs.values()), size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert x.shape == (4, SIZE, SIZE, 3) and x.dtype == np.float32, (x.shape, x.dtype)
    model = jaxcam.load_model("resnet18", weights=random_state_dict("resnet18", seed=0))
    cams = np.array(jaxcam.explain(model, x, "gradcam", layer="layer3", preprocessed=True), dtype=np.float32)
    assert cams.shape == (4, SIZE, SIZE) and cams.min() >= 0 and cams.max() <= 1, (cams.shape, cams.min(), cams.max())
    cams[3] = np.round(cams[3] * 3) / 3  # hard case: 4 levels, many exact ties
    masks = np.zeros((4, SIZE, SIZE), bool)
    for m, (y0, x0, y1, x1) in zip(masks, BOXES):
        m[y0:y1, x0:x1] = True
    return names, x, cams, masks


class FixedCAMs:
    """Minimal torchcam CAM extractor (protocol of torchcam/metrics.py) returning precomputed maps."""

    def __init__(self, model, cams, classes):
        import torch

        self.model = model
        self.cams = torch.from_numpy(cams)
        self.classes = [int(c) for c in classes]
        self.rows = None  # the images of the batch being evaluated; set before every update()

    def __call__(self, class_idx=None, scores=None, normalized=True, *, targets=None, **kwargs):
        assert targets is None and list(class_idx) == [self.classes[r] for r in self.rows], (class_idx, self.rows)
        assert scores.shape[0] == len(self.rows)
        return [self.cams[self.rows]]

    def fuse_cams(self, cams):
        assert len(cams) == 1
        return cams[0]

    def _hooks_off(self):
        return contextlib.nullcontext()


@contextlib.contextmanager
def road_without_noise():
    """Make every NoisyLinearImputer built inside pgc's ROAD classes default to noise=0.0."""
    from pytorch_grad_cam.metrics import road

    old = road.NoisyLinearImputer.__init__.__defaults__
    road.NoisyLinearImputer.__init__.__defaults__ = (0.0, road.neighbors_weights)
    try:
        yield road
    finally:
        road.NoisyLinearImputer.__init__.__defaults__ = old


def tie_bounds(a, s, k):
    """(min, max, stable) fraction of mask pixels among the k largest values of a, over all tie orders."""
    out = []
    for ai, si in zip(a.reshape(len(a), -1), s.reshape(len(s), -1).astype(bool)):
        order = np.argsort(-ai, kind="stable")
        t = ai[order[k - 1]]  # the value at the cut
        above = ai > t
        n_above, n_above_in = above.sum(), (above & si).sum()
        tied = ai == t
        n_tied, n_tied_in = tied.sum(), (tied & si).sum()
        need = k - n_above
        lo = n_above_in + max(0, need - (n_tied - n_tied_in))
        hi = n_above_in + min(need, n_tied_in)
        out.append([lo / k, hi / k, si[order[:k]].sum() / k])
    return np.array(out, np.float64)


def save_npz_deterministic(path: Path, arrays: dict) -> None:
    """np.savez_compressed, but with fixed zip timestamps and sorted keys so identical inputs give identical bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            arr = np.asarray(arrays[key])
            assert arr.dtype != object, key
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    import torch
    import torchvision
    import quantus
    from pytorch_grad_cam.metrics.cam_mult_image import (CamMultImageConfidenceChange, DropInConfidence,
                                                         IncreaseInConfidence)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric
    from quantus.functions.normalise_func import normalise_by_max

    torch.set_num_threads(2)
    torch.manual_seed(0)
    np.random.seed(0)
    t_start = time.time()

    names, x, cams, masks = shared_inputs()
    tm = build_torch_model()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        logits = tm(xt).numpy()
    classes = logits.argmax(-1).astype(np.int32)
    versions = (f"torch {torch.__version__}, torchvision {torchvision.__version__}, grad-cam {version('grad-cam')}, "
                f"torchcam {version('torchcam')}, quantus {version('quantus')}, numpy {np.__version__}, "
                f"scipy {version('scipy')}, jax {version('jax')}")
    print(versions, flush=True)
    print("classes", classes.tolist(), flush=True)

    out: dict[str, np.ndarray] = {
        "x": x, "cams": cams, "classes": classes, "logits": logits.astype(np.float32), "masks": masks,
        "boxes": BOXES, "images": np.array(names), "versions": np.array(versions),
    }
    failures: list[str] = []

    def attempt(key, fn):
        t0 = time.time()
        try:
            val = fn()
        except Exception as e:  # record and carry on
            msg = f"{key}: {type(e).__name__}: {e}"
            failures.append(msg)
            print("FAILED", msg, flush=True)
            return None
        shown = {k: np.round(v, 5).tolist() for k, v in val.items()} if isinstance(val, dict) else \
            np.round(np.asarray(val, np.float64).ravel()[:8], 5)
        print(f"  {key:40s} {time.time() - t0:6.1f}s  {shown}", flush=True)
        return val

    # ---------------------------------------------------------------- 1. pytorch-grad-cam
    print("pytorch-grad-cam", flush=True)
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]

    def pgc(key, metric):
        val = attempt(key, lambda: np.asarray(metric(xt, cams.copy(), targets, tm), np.float32))
        if val is not None:
            assert val.shape == (4,), (key, val.shape)
            out[key] = val

    pgc("pgc_cam_mult_change", CamMultImageConfidenceChange())
    pgc("pgc_drop_in_confidence", DropInConfidence())
    pgc("pgc_increase_in_confidence", IncreaseInConfidence())

    with road_without_noise() as road:
        probe = [road.ROADMostRelevantFirst(80), road.ROADLeastRelevantFirst(20)]
        assert all(p.perturbation.imputer.noise == 0.0 for p in probe)
        # noise really is zero: two different torch seeds give identical MoRF(80) scores
        torch.manual_seed(1)
        a1 = road.ROADMostRelevantFirst(80)(xt, cams.copy(), targets, tm)
        torch.manual_seed(2)
        a2 = road.ROADMostRelevantFirst(80)(xt, cams.copy(), targets, tm)
        assert np.array_equal(a1, a2), (a1, a2)
        torch.manual_seed(0)

        pgc("pgc_road_morf_avg", road.ROADMostRelevantFirstAverage())
        pgc("pgc_road_lerf_avg", road.ROADLeastRelevantFirstAverage())
        pgc("pgc_road_combined", road.ROADCombined())
        pgc("pgc_road_morf_80", road.ROADMostRelevantFirst(percentile=80))
        pgc("pgc_road_lerf_20", road.ROADLeastRelevantFirst(percentile=20))

        # diagnostics: per-percentile scores and the number of imputed pixels
        for name, cls in (("morf", road.ROADMostRelevantFirst), ("lerf", road.ROADLeastRelevantFirst)):
            per_p, removed = [], []
            for p in ROAD_PERCENTILES:
                m = cls(p)
                counts = []
                orig_imputer = m.perturbation.imputer

                def counting_imputer(img, mask, _orig=orig_imputer, _counts=counts):
                    _counts.append(int((mask == 0).sum()))
                    return _orig(img, mask)

                m.perturbation.imputer = counting_imputer
                v = attempt(f"pgc_road_{name}_p{p}", lambda: np.asarray(m(xt, cams.copy(), targets, tm), np.float32))
                per_p.append(v if v is not None else np.full(4, np.nan, np.float32))
                removed.append(counts if len(counts) == 4 else [-1] * 4)
            out["pgc_road_percentiles"] = np.array(ROAD_PERCENTILES, np.int32)
            out[f"pgc_road_{name}_per_percentile"] = np.stack(per_p, 1).astype(np.float32)
            out[f"pgc_road_{name}_removed"] = np.array(removed, np.int32).T.copy()
        if "pgc_road_morf_avg" in out:  # the averager is np.mean(axis=0) of exactly these values as a C-order (9, 4)
            assert np.array_equal(out["pgc_road_morf_avg"],
                                  np.mean(np.stack(list(out["pgc_road_morf_per_percentile"].T)), axis=0))
            assert np.array_equal(out["pgc_road_lerf_avg"],
                                  np.mean(np.stack(list(out["pgc_road_lerf_per_percentile"].T)), axis=0))

    # ---------------------------------------------------------------- 2. torchcam
    print("torchcam", flush=True)
    ext = FixedCAMs(tm, cams, classes)
    softmax = partial(torch.softmax, dim=-1)
    # the bilinear resize torchcam applies (64 -> 64, align_corners=False) is exactly the identity
    from torchcam.metrics import _resize_cam
    assert torch.equal(_resize_cam(ext.cams, (SIZE, SIZE)), ext.cams)

    def per_image(metric, keys):
        res = {k: [] for k in keys}
        for i in range(4):
            ext.rows = [i]
            metric.reset()
            metric.update(xt[i:i + 1], class_idx=[int(classes[i])])
            summ = metric.summary()
            assert metric.total == 1 and metric.nan_count == 0
            for k in keys:
                res[k].append(summ[k])
        metric.reset()
        return {k: np.array(v, np.float64) for k, v in res.items()}

    r = attempt("tc_classification", lambda: per_image(ClassificationMetric(ext, softmax),
                                                       ["avg_drop", "conf_increase"]))
    if r is not None:
        out["tc_avg_drop"], out["tc_conf_increase"] = r["avg_drop"], r["conf_increase"]

    for steps, suffix in ((20, ""), (7, "_s7")):
        metric = DeletionInsertionMetric(ext, softmax, steps=steps, batch_size=32)
        curves = []
        orig = metric._compute_curves

        def recording(*a, _orig=orig, _curves=curves, **k):
            res = _orig(*a, **k)
            _curves.append(tuple(t.detach().numpy().copy() for t in res))
            return res

        metric._compute_curves = recording
        r = attempt(f"tc_deletion_insertion_s{steps}",
                    lambda: per_image(metric, ["deletion_auc", "insertion_auc"]))
        if r is None:
            continue
        out[f"tc_deletion_auc{suffix}"], out[f"tc_insertion_auc{suffix}"] = r["deletion_auc"], r["insertion_auc"]
        assert len(curves) == 4 and all(np.array_equal(c[0], curves[0][0]) for c in curves)
        s = f"_s{steps}"
        out[f"tc_fractions{s}"] = curves[0][0].astype(np.float32)
        out[f"tc_deletion_curve{s}"] = np.concatenate([c[1] for c in curves]).astype(np.float32)
        out[f"tc_insertion_curve{s}"] = np.concatenate([c[2] for c in curves]).astype(np.float32)
        # the AUC torchcam summed is torch.trapezoid of exactly these float32 curves
        fr = torch.from_numpy(out[f"tc_fractions{s}"])
        for key, cv in (("deletion", f"tc_deletion_curve{s}"), ("insertion", f"tc_insertion_curve{s}")):
            auc = torch.trapezoid(torch.from_numpy(out[cv]), fr, dim=1).numpy().astype(np.float64)
            assert np.array_equal(auc, out[f"tc_{key}_auc{suffix}"]), (key, auc, out[f"tc_{key}_auc{suffix}"])

    # ---------------------------------------------------------------- 3. Quantus
    print("quantus", flush=True)
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    a_cams = cams[:, None].copy()
    signed = ((cams - SIGNED_OFFSET) * SIGNED_SCALES[:, None, None]).astype(np.float32)
    out["q_signed_maps"] = signed
    out["q_signed_scales"] = SIGNED_SCALES
    out["q_signed_offset"] = np.array(SIGNED_OFFSET, np.float32)
    s_batch = masks[:, None].astype(np.float32)
    y_batch = classes.astype(np.int64)
    q_metrics = {
        "sparseness": (quantus.Sparseness, {}),
        "complexity": (quantus.Complexity, {}),
        "pointing_game": (quantus.PointingGame, {}),
        "relevance_mass": (quantus.RelevanceMassAccuracy, {}),
        "relevance_rank": (quantus.RelevanceRankAccuracy, {}),
        "topk_intersection": (quantus.TopKIntersection, {"k": TOPK}),
        "attribution_localisation": (quantus.AttributionLocalisation, {}),
    }
    variants = {"raw": (a_cams, {"normalise": False, "abs": False}), "default": (a_cams, {}),
                "default_signed": (signed[:, None], {})}
    for mname, (cls, kw) in q_metrics.items():
        for vname, (a_in, vkw) in variants.items():
            key = f"q_{mname}_{vname}"
            try:
                metric = cls(disable_warnings=True, **kw, **vkw)
            except TypeError as e:  # argument not supported by this metric: skip the variant, note it
                failures.append(f"{key}: skipped, {type(e).__name__}: {e}")
                continue
            seen = {}
            orig_eval = metric.evaluate_batch

            def recording_eval(*a, _orig=orig_eval, _seen=seen, **k):
                _seen["a"] = np.shape(k["a_batch"])
                _seen["s"] = np.shape(k["s_batch"]) if k.get("s_batch") is not None else ()
                return _orig(*a, **k)

            metric.evaluate_batch = recording_eval
            a_copy = a_in.copy()
            val = attempt(key, lambda: metric(model=tm, x_batch=x_nchw.copy(), y_batch=y_batch.copy(),
                                              a_batch=a_copy, s_batch=s_batch.copy(), device="cpu"))
            if val is None:
                continue
            val = np.asarray(val)
            if val.dtype == bool:
                val = val.astype(np.float64)
            assert val.shape == (4,), (key, val.shape)
            out[key] = val
            out[f"{key}_a_shape"] = np.array(seen["a"], np.int32)
            out[f"{key}_s_shape"] = np.array(seen["s"], np.int32)
            if mname in ("relevance_rank", "topk_intersection"):
                a_eff = a_in.astype(np.float32)
                if metric.normalise:
                    a_eff = normalise_by_max(a_eff)
                if metric.abs:
                    a_eff = np.abs(a_eff)
                ks = masks.reshape(4, -1).sum(1) if mname == "relevance_rank" else [TOPK] * 4
                tb = np.concatenate([tie_bounds(a_eff[i:i + 1], masks[i:i + 1], int(k)) for i, k in enumerate(ks)])
                assert np.all(tb[:, 0] <= val + 1e-12) and np.all(val <= tb[:, 1] + 1e-12), (key, tb, val)
                out[f"q_tiebounds_{mname}_{vname}"] = tb

    notes = [
        "pgc ROAD: NoisyLinearImputer default noise set to 0.0 via __init__.__defaults__ (pgc's 0.01*randn is "
        "unseeded); MoRF(p) removes cam >= np.percentile(cam, p) (strict <, ties removed); LeRF(p) the same on "
        "1 - cam (float32).",
        "torchcam: per image (batch of 1), softmax scores, stable descending argsort ranks (ties: lower flat index "
        "first), step = ceil(4096/steps), counts 0..N with last point N, AUC = torch.trapezoid over float32 fractions.",
        "quantus: a_batch (4,1,64,64) not broadcast to 3 channels (see q_*_a_shape); normalise_by_max is one global "
        "max|a| over the whole batch, applied before abs; _default == _raw here because the batch max is exactly 1.0; "
        "_default_signed uses q_signed_maps = (cams - q_signed_offset) * q_signed_scales.",
        "quantus RelevanceRankAccuracy / TopKIntersection use np.argsort(-a) (default kind, unstable): tie order is "
        "implementation-defined; q_tiebounds_* = (min, max, stable-order value) over tie orders, computed here.",
        "quantus dtypes: values stored as returned (Sparseness float64, Complexity float32, ...); PointingGame bool "
        "stored as float64.",
    ]
    out["notes"] = np.array(notes)
    out["failures"] = np.array(failures, dtype="<U512") if failures else np.zeros((0,), "<U1")
    for f in failures:
        print("failure:", f)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_npz_deterministic(args.out, out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.3f} MB, {len(out)} keys) in "
          f"{time.time() - t_start:.1f}s")


if __name__ == "__main__":
    main()
