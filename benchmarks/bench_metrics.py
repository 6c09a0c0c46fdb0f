"""jaxcam's metrics against pytorch-grad-cam 1.5.7 and torchcam 0.5.0 on identical weights, images and maps (CPU).

Workloads (ResNet-50 with jaxcam's deterministic random weights, 8 photographs at 224 x 224, Grad-CAM maps from
layer4 computed once by jaxcam and handed to both sides):
- ROAD combined at pytorch-grad-cam's default percentiles (10..90) against ``ROADCombined``: imputation noise off on
  both sides to compare the answers (the reference's noise is unseeded), then jaxcam timed as a user calls it (its
  default noise), alternating with ROAD's forwards alone (the 2 x 9 x N forwards in the same chunks, no imputation:
  ``x_forwards`` is ROAD's time over theirs);
- deletion + insertion AUC (20 steps, zeros substrate for both curves, softmax scores) against torchcam's
  ``DeletionInsertionMetric`` (its default batch of 32 forwards);
- Average Drop / Increase in Confidence against torchcam's ``ClassificationMetric``.
The outputs are compared before anything is timed. Writes benchmarks/results/metrics-<model>-b<batch>-<device>.json.
``run(args, setup)`` is also the ``metrics`` workload of the whole suite (``benchmarks/run.py``).

    pip install -e '.[torch]' && python benchmarks/bench_metrics.py [--batch 8] [--repeats 3] [--only road deletion]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from functools import partial
from unittest import mock

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from harness import check_agreement, environment, same_model_and_photos, timeit, write  # noqa: E402

import jaxcam  # noqa: E402
from jaxcam import metrics as M  # noqa: E402


class FixedCAMs:
    """torchcam's CAM-extractor protocol, returning precomputed maps (both libraries score the same maps)."""

    def __init__(self, model, cams):
        import torch

        device = next(model.parameters()).device
        self.model, self.cams = model, torch.from_numpy(cams).to(device)

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
        return [self.cams]

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        return contextlib.nullcontext()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", nargs="*", default=None, choices=["road", "deletion", "average_drop"])
    return ap


def main() -> None:
    args = build_parser().parse_args()
    res = run(args)
    only = "" if args.only is None else "-" + "+".join(sorted(args.only))
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"metrics-{args.model}-b{args.batch}-{jax.devices()[0].platform}{only}.json")
    write(res, out)
    print("wrote", out)


def run(args, setup=None) -> dict:
    """Every metric workload ``args`` asks for; ``setup``: ``(jaxcam model, torch model, x NHWC, x NCHW)`` to
    reuse (default: :func:`harness.same_model_and_photos`). Returns the results dict."""
    import torch
    import torchcam.metrics as tcm
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, tm, x, xt = setup or same_model_and_photos(args.model, args.batch, args.size, args.threads)
    xj = jax.device_put(x)
    cams = np.asarray(jaxcam.explain(model, xj, "gradcam", preprocessed=True))
    classes = [int(c) for c in np.argmax(np.asarray(model(xj)), -1)]
    soft = partial(torch.softmax, dim=-1)
    res = {"env": environment(), "model": args.model, "batch": args.batch, "size": args.size, "dtype": "float32",
           "maps": "gradcam layer4", "workloads": {}}
    want = set(args.only or ["road", "deletion", "average_drop"])

    def record(name, ours_fn, ref_fn, tol=1e-4, ref_repeats=None, time_ours=True):
        t0 = time.perf_counter()
        ours_out = ours_fn()  # the first call compiles: reported apart as compile_s
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref_out = ref_fn()
        ref_first = time.perf_counter() - t0
        agree = check_agreement(name, ours_out, ref_out, atol=tol, min_r=0.99)
        r = timeit(ref_fn, ref_repeats, warmup=0) if ref_repeats else {"median_s": ref_first, "repeats": 1}
        if not time_ours:  # the caller times jaxcam itself
            res["workloads"][name] = {"jaxcam": {"agreement_run_s": compile_s}, "reference": r, **agree}
            return
        o = timeit(ours_fn, args.repeats, warmup=0)
        o["compile_s"] = compile_s
        res["workloads"][name] = {"jaxcam": o, "reference": r, "speedup": r["median_s"] / o["median_s"], **agree}
        print(f"{name:28s} jaxcam {o['median_s']:8.2f} s (first call {compile_s:.1f} s)  reference "
              f"{r['median_s']:8.2f} s  speed-up {r['median_s'] / o['median_s']:6.1f}x", flush=True)

    if "road" in want:
        def ours_road():  # the agreement run: noise off on both sides
            return np.asarray(M.road(model, xj, cams, which="combined", noise=0.0))

        def ours_road_default():  # what a user gets: jaxcam's defaults (noise 0.01 in pixel units, key 0)
            return np.asarray(M.road(model, xj, cams, which="combined"))

        def ref_road():
            with mock.patch("torch.randn_like", lambda t: torch.zeros_like(t)):  # the unseeded noise, off
                return ROADCombined()(xt, cams, [ClassifierOutputSoftmaxTarget(c) for c in classes], tm)

        name = "road_combined (pgc)"
        record(name, ours_road, ref_road, tol=1e-4, time_ours=False)  # the reference takes minutes: one run
        res["workloads"][name].update(road_timing(model, xj, cams, args.repeats, ours_road_default))
        w = res["workloads"][name]
        w["speedup"] = w["reference"]["median_s"] / w["jaxcam"]["median_s"]
        print(f"{'  (default noise, timed)':28s} jaxcam {w['jaxcam']['median_s']:8.2f} s = {w['x_forwards']:.2f}x its "
              f"{w['forwards_alone']['forwards']} forwards alone ({w['forwards_alone']['median_s']:.2f} s)  "
              f"speed-up {w['speedup']:.1f}x", flush=True)

    if "deletion" in want:
        def ours_di():
            c = M.deletion_insertion(model, xj, cams, classes, steps=20, insertion_substrate="zeros")
            return np.asarray([float(c.deletion_auc.mean()), float(c.insertion_auc.mean())])

        def ref_di():
            m = tcm.DeletionInsertionMetric(FixedCAMs(tm, cams), soft, steps=20)
            m.update(xt, classes)
            s = m.summary()
            return np.asarray([s["deletion_auc"], s["insertion_auc"]])

        record("deletion+insertion (torchcam)", ours_di, ref_di, tol=1e-4, ref_repeats=args.repeats)

    if "average_drop" in want:
        def ours_ad():
            return np.asarray(M.average_drop(model, xj, cams, classes, space="normalised"))

        def ref_ad():
            m = tcm.ClassificationMetric(FixedCAMs(tm, cams), soft)
            out = []
            for i in range(len(classes)):  # per image, to compare per-image values; the timing is one batched call
                m.cam_extractor.cams = torch.from_numpy(cams[i:i + 1]).to(xt.device)
                m.update(xt[i:i + 1], classes[i:i + 1])
                out.append(m.summary()["avg_drop"])
                m.reset()
            m.cam_extractor.cams = torch.from_numpy(cams).to(xt.device)
            return np.asarray(out)

        def ref_ad_batched():
            m = tcm.ClassificationMetric(FixedCAMs(tm, cams), soft)
            m.update(xt, classes)
            return m.summary()["avg_drop"]

        record("average_drop (torchcam)", ours_ad, ref_ad, tol=1e-4)
        res["workloads"]["average_drop (torchcam)"]["reference"] = timeit(ref_ad_batched, args.repeats, warmup=1)
        w = res["workloads"]["average_drop (torchcam)"]
        w["speedup"] = w["reference"]["median_s"] / w["jaxcam"]["median_s"]
        print(f"{'  (reference batched)':28s} {w['reference']['median_s']:8.3f} s  speed-up {w['speedup']:.1f}x")

    return res


def road_forwards(model, x, percentiles=None, batch_size=None):
    """ROAD's forwards alone, the floor of :func:`jaxcam.metrics.road` (``which="combined"``): the same
    2 x len(percentiles) x N images' forwards in the same chunks (``batch_size``, default as ``road``'s), one jitted
    ``lax.map``, no imputation. Returns ``(blocking call, number of forwards)``."""
    import jax.numpy as jnp

    from jaxcam.imputation import PERCENTILES
    from jaxcam.metrics.inputs import default_batch_size

    n = x.shape[0]
    total = 2 * len(percentiles or PERCENTILES) * n
    b = min(default_batch_size(batch_size), total)
    chunks = -(-total // b)
    idx = (jnp.arange(chunks * b) % total).reshape(chunks, b)

    @jax.jit
    def run(params, x):
        def chunk(ks):  # scaled per chunk so that no two chunks are the same computation
            imgs = x[ks % n] * (1.0 + 1e-6 * ks[0].astype(x.dtype))
            return jnp.max(jax.nn.softmax(model.forward_fn.func(params, imgs), -1), -1)
        return jax.lax.map(chunk, idx)

    return (lambda: jax.block_until_ready(run(model.params, x))), total


def road_timing(model, x, cams, repeats: int, road_fn) -> dict:
    """Time ``road_fn`` (ROAD as a user calls it) and ROAD's forwards alone (:func:`road_forwards`) alternately,
    each compiled first, ``repeats`` pairs: ``{"jaxcam", "forwards_alone", "x_forwards", ...}``; ``x_forwards`` is
    the ratio of the medians, ``x_forwards_pairs`` the median of the per-pair ratios (robust to load that drifts)."""
    from harness import OtherLoad, summarize

    forwards, n_forwards = road_forwards(model, x)
    t0 = time.perf_counter()
    forwards()
    fwd_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    road_fn()
    road_compile = time.perf_counter() - t0
    load = OtherLoad()
    f_times, r_times = [], []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        forwards()
        f_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        road_fn()
        r_times.append(time.perf_counter() - t0)
    ours, floor = summarize(r_times), summarize(f_times)
    ours.update(first_s=None, compile_s=road_compile, options="defaults: noise=0.01 (pixel units), key=0")
    floor.update(compile_s=fwd_compile, forwards=n_forwards,
                 note="the same forwards in the same chunks, no imputation (jitted lax.map)")
    ratios = sorted(r / f for r, f in zip(r_times, f_times))
    return {"jaxcam": ours, "forwards_alone": floor, "x_forwards": ours["median_s"] / floor["median_s"],
            "x_forwards_pairs": float(np.median(ratios)), "other_processes_share": load.share(),
            "timed": "jaxcam with its default noise (agreement checked with noise 0 on both sides); the reference's "
                     "one run has its noise replaced by zeros (the same work)"}


def road_floor(S, model: str, batch: int, size: int) -> dict:
    """The ``road_floor`` workload (``benchmarks/run.py --accelerator``; jaxcam only, no torch): ROAD combined as a
    user calls it on ``batch`` photographs with Grad-CAM maps, against its own forwards alone (:func:`road_timing`),
    on whatever device JAX runs (imputations vmapped on accelerators)."""
    from harness import photos

    from jaxcam.models import random_state_dict

    m = jaxcam.load_model(model, weights=random_state_dict(model, seed=0))
    x = jax.block_until_ready(jax.device_put(photos(batch, size, m.arch.mean, m.arch.std)))
    cams = jax.block_until_ready(jaxcam.explain(m, x, "gradcam", preprocessed=True))
    t = road_timing(m, x, cams, max(2, S.repeats), lambda: np.asarray(M.road(m, x, cams, which="combined")))
    fa = t["forwards_alone"]
    note = (f"road_combined: {t['jaxcam']['median_s'] * 1e3:.1f} ms (default noise) = {t['x_forwards']:.2f}x its "
            f"{fa['forwards']} forwards alone ({fa['median_s'] * 1e3:.1f} ms; per-pair median "
            f"{t['x_forwards_pairs']:.2f}x) on {jax.devices()[0].device_kind}")
    S.log("  " + note)
    return {"workload": "road_floor", "config": {"model": model, "batch": batch, "size": size},
            "measurements": [{"label": "jaxcam road_combined (defaults)", **t["jaxcam"]},
                             {"label": "ROAD's forwards alone", **fa}],
            "rows": [], "notes": [note], "road": t}


if __name__ == "__main__":
    main()
