"""jaxcam's noise-robustness runner against the same protocol written with pytorch-grad-cam 1.5.7 and NumPy (CPU).

Workload (the issue's): the paper's six methods (Grad-CAM, Grad-CAM++, XGrad-CAM, Ablation-CAM, HiResCAM, Eigen-CAM)
x 4 ImageNet-C noises (gaussian, shot, impulse, speckle) x 5 severities x 2 draws on 8 photographs at 224 x 224,
ResNet-50 with jaxcam's deterministic random weights on both sides, maps from layer4, each perturbed image explained
for its own (new) prediction, RBO (p = 0.9) of the Quickshift region rankings against the clean maps'.

- jaxcam: ``jaxcam.robustness.run`` over the whole grid into a fresh temporary directory (progress off). It is run
  1 + ``--repeats`` times, each time into a new directory: the first run includes compilation, the others are the
  steady state; the speed-up uses their median. Both include everything ``run`` does: Quickshift, the clean pass, the chunk programs,
  the Parquet parts and reading them back (a per-stage breakdown is recorded).
- baseline: per job what a careful user writes: NumPy noise with the same ImageNet-C constants
  (``np.random.default_rng`` seeded per job), a torch forward for the new prediction, each pytorch-grad-cam method
  (``with Method(model, [layer4[-1]]) as cam``) for that class (``ClassifierOutputTarget``), region means with
  ``np.bincount`` over the clean image's Quickshift labels, and ``rbo.RankingSimilarity(clean, noisy).rbo_ext(0.9)``;
  per image a clean pass (forward + every method + region ranking). pytorch-grad-cam's Ablation-CAM takes about a
  minute per image on 2 CPU cores, so the baseline is timed on a seeded random sample of ``--baseline-jobs`` jobs
  (every method on each, plus the clean passes of their images) and extrapolated linearly: per-method mean seconds
  per job x number of jobs (and per clean pass x number of images), plus the shared per-job costs (noise, forward,
  regions + RBO). Quickshift (``jaxcam.metrics.quickshift_regions``, the same labels on both sides) is inside both
  timings: jaxcam's run computes it itself; the baseline's is measured once per image, in full (not extrapolated).

Before anything is timed, on ``--agree-jobs`` jobs jaxcam's exact noisy image (``jaxcam.noise.perturb`` with the
run's job key) is explained by both libraries: the predictions must match and the maps agree (max |diff| <= 1e-3,
r >= 0.999; Eigen-CAM up to the SVD sign), and the region scores and RBO of both implementations must agree on
identical maps. Writes benchmarks/results/robustness-<model>-b<batch>-<device>[-quick].json. ``run(args)`` is also
the ``robustness`` workload of the whole suite (``benchmarks/run.py``, which passes its own arguments).

    pip install -e '.[torch]' rbo && python benchmarks/bench_robustness.py [--batch 8] [--baseline-jobs 4] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from unittest import mock

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from harness import (check_agreement, environment, machine_busy_s, own_cpu_s, same_model_and_photos,  # noqa: E402
                     torch_device, write)

import jaxcam  # noqa: E402
import jaxcam.robustness as jrob  # noqa: E402
from jaxcam import noise as jnoise  # noqa: E402
from jaxcam.metrics import robustness as rm  # noqa: E402
from jaxcam.models.architectures import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from jaxcam.postprocess import postprocess  # noqa: E402

PGC = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "ablationcam": "AblationCAM",
       "hirescam": "HiResCAM", "eigencam": "EigenCAM"}
SIGNLESS = {"eigencam"}
# ImageNet-C's constants (hendrycks/robustness, make_imagenet_c.py), written out as a user would copy them
IMAGENET_C = {"gaussian": (0.08, 0.12, 0.18, 0.26, 0.38), "shot": (60, 25, 12, 5, 3),
              "impulse": (0.03, 0.06, 0.09, 0.17, 0.27), "speckle": (0.15, 0.2, 0.35, 0.45, 0.6)}
RBO_P = 0.9
KEY = 0


# ------------------------------------------------------------------------------------------------- the baseline
def numpy_noise(name: str, x: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """ImageNet-C noise ``name`` at ``level`` (1..5) on one (H, W, 3) float image in [0, 1], clipped to [0, 1]."""
    c = IMAGENET_C[name][level - 1]
    if name == "gaussian":
        out = x + rng.normal(size=x.shape, scale=c)
    elif name == "shot":
        out = rng.poisson(x * c) / c
    elif name == "impulse":  # skimage random_noise(mode="s&p", amount=c): per value, salt or pepper with equal odds
        out = np.where(rng.random(x.shape) < c, (rng.random(x.shape) < 0.5).astype(x.dtype), x)
    elif name == "speckle":
        out = x + x * rng.normal(size=x.shape, scale=c)
    else:
        raise ValueError(name)
    return np.clip(out, 0, 1).astype(np.float32)


def region_ranking(cam: np.ndarray, labels: np.ndarray, m: int) -> np.ndarray:
    """Regions by descending mean map value (ties by index: a stable sort)."""
    lab = labels.ravel()
    scores = np.bincount(lab, weights=cam.ravel(), minlength=m) / np.maximum(np.bincount(lab, minlength=m), 1)
    return np.argsort(-scores, kind="stable")


def rbo_ext(clean_rank: np.ndarray, noisy_rank: np.ndarray) -> float:
    import rbo

    return float(rbo.RankingSimilarity(clean_rank, noisy_rank).rbo_ext(p=RBO_P))


class Baseline:
    """The protocol with pytorch-grad-cam and NumPy, stage by stage, each stage timed."""

    def __init__(self, tm, methods):
        import pytorch_grad_cam as pgc
        import torch
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        self.torch, self.tm, self.methods = torch, tm, list(methods)
        self.device = next(tm.parameters()).device
        self.classes = {m: getattr(pgc, PGC[m]) for m in self.methods}
        self.target = ClassifierOutputTarget
        self.mean, self.std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)

    def tensor(self, pixels: np.ndarray):
        x = (pixels - self.mean) / self.std
        return self.torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None])).to(self.device)

    def predict(self, xt) -> tuple[int, float]:
        with self.torch.no_grad():
            probs = self.torch.softmax(self.tm(xt), -1)[0]
        pred = int(probs.argmax())
        return pred, float(probs[pred])

    def cam(self, method: str, xt, cls: int) -> np.ndarray:
        with self.classes[method](model=self.tm, target_layers=[self.tm.layer4[-1]]) as cam:
            return cam(input_tensor=xt, targets=[self.target(cls)])[0]

    def clean_pass(self, pixels, labels, m) -> tuple[dict, dict]:
        """Clean prediction, maps and region rankings of one image: (rankings, seconds per stage)."""
        t = {}
        t0 = time.perf_counter()
        xt = self.tensor(pixels)
        pred, _ = self.predict(xt)
        t["forward"] = time.perf_counter() - t0
        ranks, t["regions"] = {}, 0.0
        for method in self.methods:
            t0 = time.perf_counter()
            g = self.cam(method, xt, pred)
            t1 = time.perf_counter()
            ranks[method] = region_ranking(g, labels, m)
            t[method], t["regions"] = t1 - t0, t["regions"] + time.perf_counter() - t1
        return ranks, t

    def job(self, pixels, labels, m, clean_ranks, noise, level, seed) -> tuple[dict, dict]:
        """One job: (RBO per method, seconds per stage)."""
        t = {}
        t0 = time.perf_counter()
        noisy = numpy_noise(noise, pixels, level, np.random.default_rng(seed))
        xt = self.tensor(noisy)
        t1 = time.perf_counter()
        pred, _conf = self.predict(xt)
        t["noise"], t["forward"] = t1 - t0, time.perf_counter() - t1
        out, t["regions_rbo"] = {}, 0.0
        for method in self.methods:
            t0 = time.perf_counter()
            g = self.cam(method, xt, pred)
            t1 = time.perf_counter()
            out[method] = rbo_ext(clean_ranks[method], region_ranking(g, labels, m))
            t[method], t["regions_rbo"] = t1 - t0, t["regions_rbo"] + time.perf_counter() - t1
        out["pred_after"] = pred
        return out, t


# ----------------------------------------------------------------------------------------------------- helpers
def grid_jobs(n_images, noises, severities, draws):
    """(image, noise, level, draw) in jaxcam.robustness's order within an image."""
    return [(i, q, s, d) for i in range(n_images) for q in noises for s in severities for d in range(draws)]


def job_seed(i, noise, level, draw):
    return [KEY, i, jnoise.noise_id(noise), level, draw]


def jaxcam_noisy(pixels, i, noise, level, draw):
    """The exact perturbed image jaxcam.robustness.run computes for this job (ids are positions)."""
    key = jnoise.job_key(jax.random.key(KEY), jrob.image_hash(i), noise, level, draw)
    return np.asarray(jnoise.perturb(noise, key, pixels[i], level))


def explain_one(model, pixels, methods):
    """jaxcam's maps (dict), class, and the raw Eigen-CAM maps of one pixel image."""
    x = ((pixels - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32))[None]
    maps, _, cls = jaxcam.explain(model, x, list(methods), layer="layer4", preprocessed=True, return_logits=True)
    maps = {k: np.asarray(v)[0] for k, v in maps.items()}
    raws = {m: jaxcam.explain(model, x, m, layer="layer4", preprocessed=True, raw=True, eigen_sign="svd")
            for m in methods if m in SIGNLESS}
    return maps, int(np.asarray(cls)[0]), raws


def agreement(model, base, pixels, labels, counts, methods, jobs) -> dict:
    """Both libraries on jaxcam's noisy images of ``jobs``; raises SystemExit on any disagreement."""
    out = {}
    size = pixels.shape[1:3]
    for i, noise, level, draw in jobs:
        name = f"image {i} {noise} s{level} d{draw}"
        noisy = jaxcam_noisy(pixels, i, noise, level, draw)
        ours, cls, raws = explain_one(model, noisy, methods)
        clean, _, _ = explain_one(model, pixels[i], methods)
        xt = base.tensor(noisy)
        pred, _ = base.predict(xt)
        if pred != cls:
            raise SystemExit(f"{name}: predictions disagree (jaxcam {cls}, torch {pred}); refusing to benchmark")
        rec = {"pred": cls}
        m = int(counts[i])
        rbo_ours, rbo_ref = [], []
        for method in methods:
            ref = base.cam(method, xt, pred)
            got = ours[method]
            if method in SIGNLESS:  # the SVD's sign is arbitrary: the closer of the two signs
                opts = [np.asarray(postprocess([s * r[0] for r in raws[method]], size)) for s in (1.0, -1.0)]
                got = min(opts, key=lambda o: np.abs(o - ref).max())
            rec[method] = check_agreement(f"{name} {method}", got, ref, atol=1e-3)
            # region scores and RBO: jaxcam's implementation and the baseline's on identical maps
            s_clean = np.asarray(rm.region_scores(clean[method], labels[i], m))
            s_noisy = np.asarray(rm.region_scores(ref, labels[i], m))
            lab = labels[i].ravel()
            ref_scores = np.bincount(lab, weights=ref.ravel(), minlength=m) / np.bincount(lab, minlength=m)
            check_agreement(f"{name} {method} region scores", s_noisy, ref_scores, atol=1e-5)
            rbo_ours.append(float(rm.rbo(s_clean, s_noisy, m, p=RBO_P)))
            rbo_ref.append(rbo_ext(np.argsort(-s_clean, kind="stable"), np.argsort(-s_noisy, kind="stable")))
        rec["rbo"] = {"jaxcam": rbo_ours, "rbo_package": rbo_ref,
                      **check_agreement(f"{name} rbo", rbo_ours, rbo_ref, atol=1e-5, min_r=0.999)}
        out[name] = rec
        worst = max(rec[mm]["max_abs_diff"] for mm in methods)
        print(f"agreement {name}: pred {cls}, worst map |diff| {worst:.2e}, rbo |diff| "
              f"{rec['rbo']['max_abs_diff']:.1e}", flush=True)
    return out


def timed_run(model, pixels, out_dir, grid_kw) -> tuple[float, dict, object]:
    """One jaxcam.robustness.run, with a per-stage breakdown (the stages are wrapped, not changed)."""
    stages = {"quickshift": 0.0, "clean_pass": 0.0, "chunks": 0.0, "write_parts": 0.0, "read": 0.0}
    calls = {"chunks": 0}

    per_noise = {n: 0.0 for n in grid_kw["noises"]}

    def wrap(name, fn):
        def inner(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                stages[name] += dt
                calls[name] = calls.get(name, 0) + 1
                if name == "chunks":  # _run_chunk(..., img, noise, lev, drw): the noise index is the 13th argument
                    per_noise[grid_kw["noises"][a[12]]] += dt
        return inner

    with ExitStack() as stack:
        for mod, attr, name in ((rm, "quickshift_regions", "quickshift"), (jrob, "_clean_pass", "clean_pass"),
                                (jrob, "_run_chunk", "chunks"), (jrob, "_write_part", "write_parts"),
                                (jrob, "read", "read")):
            stack.enter_context(mock.patch.object(mod, attr, wrap(name, getattr(mod, attr))))
        t0 = time.perf_counter()
        rows = jrob.run(model, pixels, out_dir, progress=False, layer="layer4", key=KEY, **grid_kw)
        total = time.perf_counter() - t0
    stages["other"] = total - sum(stages.values())
    return total, {"seconds": stages, "calls": calls, "chunk_seconds_per_noise": per_noise}, rows


def end_to_end(model, pixels, labels, counts, rows, methods, jobs) -> dict:
    """The run's stored RBO values for ``jobs`` against an independent path: jaxcam.explain on the clean image and
    on the exact noisy image, region rankings with np.bincount, RBO with the rbo package."""
    diffs, changed = [], []
    img, meth = np.asarray(rows["image"]).astype(str), np.asarray(rows["method"])
    noi, sev, drw = np.asarray(rows["noise"]), np.asarray(rows["severity"]), np.asarray(rows["draw"])
    for i, noise, level, draw in jobs:
        clean, _, _ = explain_one(model, pixels[i], methods)
        noisy, cls, _ = explain_one(model, jaxcam_noisy(pixels, i, noise, level, draw), methods)
        m = int(counts[i])
        for method in methods:
            sel = (img == str(i)) & (meth == method) & (noi == noise) & (sev == level) & (drw == draw)
            stored = float(np.asarray(rows["value"])[sel][0])
            indep = rbo_ext(region_ranking(clean[method], labels[i], m), region_ranking(noisy[method], labels[i], m))
            diffs.append(abs(stored - indep))
            changed.append(int(np.asarray(rows["pred_after"])[sel][0]) != cls)
    return {"jobs": [list(map(str, j)) for j in jobs], "max_abs_diff": max(diffs),
            "pred_after_mismatches": int(sum(changed))}


# --------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=None, help="images (default 8; 2 with --quick)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--methods", nargs="+", default=list(PGC), choices=list(PGC))
    ap.add_argument("--noises", nargs="+", default=None, choices=list(IMAGENET_C),
                    help="default: all four (gaussian shot with --quick)")
    ap.add_argument("--severities", nargs="+", type=int, default=None, help="default 1..5 (1 5 with --quick)")
    ap.add_argument("--draws", type=int, default=None, help="default 2 (1 with --quick)")
    ap.add_argument("--baseline-jobs", type=int, default=None,
                    help="jobs of the grid timed with the baseline, every method on each (default 4; 1 with --quick)")
    ap.add_argument("--agree-jobs", type=int, default=None, help="jobs checked for agreement (default 2; 1 quick)")
    ap.add_argument("--chunk", type=int, default=64, help="jaxcam.robustness.run's jobs per compiled chunk")
    ap.add_argument("--repeats", type=int, default=2, help="jaxcam steady-state runs after the first (median)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the choice of the sampled jobs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 images, 2 noises, 2 severities, 1 draw")
    ap.add_argument("--out", default=None)
    return ap


def main() -> None:
    args = build_parser().parse_args()
    res = run(args)
    batch, q = res["config"]["batch"], res["config"]["quick"]
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"robustness-{args.model}-b{batch}-{jax.devices()[0].platform}"
                                   f"{'-quick' if q else ''}.json")
    write(res, out)
    print("wrote", out)


def run(args) -> dict:
    """The whole benchmark for parsed ``args`` (see :func:`build_parser`): the results dict."""
    q = args.quick
    batch = args.batch or (2 if q else 8)
    noises = tuple(args.noises or (("gaussian", "shot") if q else IMAGENET_C))
    severities = tuple(args.severities or ((1, 5) if q else (1, 2, 3, 4, 5)))
    draws = args.draws or (1 if q else 2)
    n_sample = args.baseline_jobs if args.baseline_jobs is not None else (1 if q else 4)
    n_agree = args.agree_jobs if args.agree_jobs is not None else (1 if q else 2)
    methods = tuple(args.methods)
    for n in noises:  # the baseline's copied constants are jaxcam's
        assert tuple(map(float, IMAGENET_C[n])) == jnoise.NOISES[n].severities, n

    busy0, own0 = machine_busy_s(), own_cpu_s()
    model, tm, _, _ = same_model_and_photos(args.model, batch, args.size, args.threads, device=torch_device())
    photos = list(jaxcam.sample_images().values())
    pixels = jaxcam.preprocess([photos[i % len(photos)] for i in range(batch)], size=args.size, mean=(0, 0, 0),
                               std=(1, 1, 1)).clip(0, 1)
    jobs = grid_jobs(batch, noises, severities, draws)
    n_jobs = len(jobs)
    rng = np.random.default_rng(args.seed)
    sample = [jobs[k] for k in sorted(rng.choice(n_jobs, size=min(n_sample, n_jobs), replace=False))]
    agree_jobs = [jobs[k] for k in sorted(rng.choice(n_jobs, size=min(n_agree, n_jobs), replace=False))]
    grid_kw = dict(methods=methods, noises=noises, severities=severities, draws=draws, image_batch=batch,
                   chunk=args.chunk, size=args.size, rbo_p=RBO_P)
    base = Baseline(tm, methods)

    print(f"grid: {len(methods)} methods x {len(noises)} noises x {len(severities)} severities x {draws} draws x "
          f"{batch} images = {n_jobs} noisy images ({n_jobs * len(methods)} noisy maps) + {batch} clean passes",
          flush=True)
    # Quickshift once per image, measured: the baseline's labels (jaxcam's run computes its own, inside its time)
    t0 = time.perf_counter()
    labels, counts = rm.quickshift_regions(pixels)
    quickshift_s = time.perf_counter() - t0
    print(f"quickshift: {quickshift_s:.2f} s for {batch} images, regions {counts.tolist()}", flush=True)

    # 1. agreement before timing
    agree = agreement(model, base, pixels, labels, counts, methods, agree_jobs)

    # 2. jaxcam: the whole grid, 1 + repeats times, each into a fresh directory
    runs = []
    for r in range(1 + max(1, args.repeats)):
        with tempfile.TemporaryDirectory() as d:
            total, breakdown, rows = timed_run(model, pixels, d, grid_kw)
        runs.append({"total_s": total, **breakdown})
        st = breakdown["seconds"]
        print(f"jaxcam run {r + 1} ({'compile + run' if r == 0 else 'steady state'}): {total:.2f} s  [" +
              ", ".join(f"{k} {v:.2f}" for k, v in st.items()) + "]; chunks per noise [" +
              ", ".join(f"{k} {v:.2f}" for k, v in breakdown["chunk_seconds_per_noise"].items()) + "]", flush=True)
    n_rows = len(rows["value"])
    assert n_rows == n_jobs * len(methods), (n_rows, n_jobs, len(methods))
    e2e = end_to_end(model, pixels, labels, counts, rows, methods, agree_jobs)
    print(f"run rows vs independent path (jaxcam maps, bincount, rbo package) on the agreement jobs: max |diff| "
          f"{e2e['max_abs_diff']:.2e}, pred_after mismatches {e2e['pred_after_mismatches']}", flush=True)

    # 3. the baseline on the sampled jobs (and the clean passes of their images)
    clean_ranks, clean_t = {}, []
    sample_t, sample_out = [], []
    for i, noise, level, draw in sample:
        if i not in clean_ranks:
            clean_ranks[i], t = base.clean_pass(pixels[i], labels[i], int(counts[i]))
            clean_t.append(t)
            print(f"baseline clean pass image {i}: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()), flush=True)
        out, t = base.job(pixels[i], labels[i], int(counts[i]), clean_ranks[i], noise, level,
                          job_seed(i, noise, level, draw))
        sample_t.append(t)
        sample_out.append(out)
        print(f"baseline job image {i} {noise} s{level} d{draw}: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()),
              flush=True)

    def mean(ts, k):
        return statistics.fmean(t[k] for t in ts)

    per_method = {}
    for method in methods:
        per_method[method] = {"job_samples_s": [t[method] for t in sample_t], "job_mean_s": mean(sample_t, method),
                              "clean_samples_s": [t[method] for t in clean_t], "clean_mean_s": mean(clean_t, method)}
        per_method[method]["extrapolated_s"] = (per_method[method]["job_mean_s"] * n_jobs
                                                + per_method[method]["clean_mean_s"] * batch)
        per_method[method]["extrapolated_from_medians_s"] = (
            statistics.median(per_method[method]["job_samples_s"]) * n_jobs
            + statistics.median(per_method[method]["clean_samples_s"]) * batch)
    shared = {k: {"samples_s": [t[k] for t in sample_t], "mean_s": mean(sample_t, k),
                  "extrapolated_s": mean(sample_t, k) * n_jobs} for k in ("noise", "forward", "regions_rbo")}
    clean_shared = {k: {"samples_s": [t[k] for t in clean_t], "mean_s": mean(clean_t, k),
                        "extrapolated_s": mean(clean_t, k) * batch} for k in ("forward", "regions")}
    base_total = (sum(v["extrapolated_s"] for v in per_method.values()) + sum(v["extrapolated_s"] for v in
                  shared.values()) + sum(v["extrapolated_s"] for v in clean_shared.values()) + quickshift_s)
    sample_measured = sum(sum(t.values()) for t in sample_t) + sum(sum(t.values()) for t in clean_t)
    base_total_median = base_total + sum(v["extrapolated_from_medians_s"] - v["extrapolated_s"]
                                         for v in per_method.values())

    ours = statistics.median(r["total_s"] for r in runs[1:])
    speedup = base_total / ours
    print()
    print(f"{'':34s} {'total':>12s} {'per noisy image':>16s}")
    print(f"{'jaxcam run 1 (incl. compile)':34s} {runs[0]['total_s']:10.1f} s {runs[0]['total_s'] / n_jobs * 1e3:13.1f} ms")
    print(f"{'jaxcam steady state (median of ' + str(len(runs) - 1) + ')':34s} {ours:10.1f} s "
          f"{ours / n_jobs * 1e3:13.1f} ms")
    print(f"{'baseline, EXTRAPOLATED':34s} {base_total:10.1f} s {base_total / n_jobs * 1e3:13.1f} ms")
    print(f"  (from {len(sample)} sampled job(s) + {len(clean_t)} clean pass(es), {sample_measured:.1f} s measured; "
          f"Quickshift {quickshift_s:.1f} s measured in full)")
    for method, v in per_method.items():
        print(f"  {method:14s} {v['job_mean_s']:8.2f} s/job (samples " +
              " ".join(f"{s:.2f}" for s in v["job_samples_s"]) + f")  -> {v['extrapolated_s']:9.1f} s")
    for k, v in shared.items():
        print(f"  {k:14s} {v['mean_s']:8.3f} s/job  -> {v['extrapolated_s']:9.1f} s")
    print(f"  (per-method medians instead of means: {base_total_median:.1f} s, speed-up "
          f"{base_total_median / ours:.1f}x)")
    print(f"{'speed-up (baseline extrap. / steady)':34s} {speedup:10.1f}x")
    other = (machine_busy_s() - busy0) - (own_cpu_s() - own0)
    print(f"other processes used {other:.0f} CPU-s during this benchmark (~0 on an otherwise idle machine)")

    res = {"env": environment(), "model": args.model, "layer": "layer4", "size": args.size, "dtype": "float32",
           "config": {"batch": batch, "methods": list(methods), "noises": list(noises),
                      "severities": list(severities), "draws": draws, "jobs": n_jobs, "maps": n_jobs * len(methods),
                      "chunk": args.chunk, "rbo_p": RBO_P, "similarity": "rbo", "explain_class": "new_prediction",
                      "quick": q, "seed": args.seed, "regions": counts.tolist()},
           "quickshift": {"seconds": quickshift_s, "note": "inside both timings: jaxcam.robustness.run computes its "
                          "own; the baseline's is measured once per image, in full"},
           "agreement": agree, "run_vs_independent_path": e2e,
           "jaxcam": {"run1_incl_compile": runs[0], "steady_runs": runs[1:], "steady_median_s": ours,
                      "compile_estimate_s": runs[0]["total_s"] - ours, "per_noisy_image_s": ours / n_jobs},
           "baseline": {"note": "measured on a random sample of jobs (every method on each) and the clean passes of "
                                "their images, extrapolated linearly: mean per job x jobs + mean per clean pass x "
                                "images, + Quickshift measured in full",
                        "sample_jobs": [[i, n, s, d] for i, n, s, d in sample], "sample_size": len(sample),
                        "clean_passes": len(clean_t), "sample_measured_s": sample_measured,
                        "per_method": per_method, "shared_per_job": shared, "clean_pass_shared": clean_shared,
                        "sample_rbo": sample_out, "extrapolated_total_s": base_total,
                        "extrapolated_total_from_medians_s": base_total_median,
                        "per_noisy_image_s": base_total / n_jobs},
           "speedup": speedup, "speedup_note": "baseline extrapolated total / jaxcam steady-state median",
           "other_processes_cpu_s": other}
    return res


if __name__ == "__main__":
    main()
