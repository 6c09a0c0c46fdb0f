"""jaxcam's methods engine against pytorch-grad-cam 1.5.7 (and torchcam 0.5.0, and a hand-written PyTorch Grad-CAM)
on identical weights and inputs: a subset of the suite's workloads (``benchmarks/workloads.py``) for one model.

Workloads (ResNet-50, batch 8 at 224x224 unless told otherwise; same random weights converted by jaxcam; same
preprocessed photographs): Grad-CAM against pytorch-grad-cam, torchcam and the hand-written split Grad-CAM (eager
and ``torch.compile``), with the floors (bare jitted forward, PyTorch forward and forward+backward); every gradient
method pytorch-grad-cam has, in one jaxcam call against one pytorch-grad-cam call per method; Ablation-CAM and
Score-CAM (a smaller batch: pytorch-grad-cam needs K forwards per image, so its single timed run is already
minutes). Maps are compared before anything is timed. Writes benchmarks/results/methods-<model>-b<batch>-<device>.json
in the suite's format. ``python benchmarks/run.py`` runs these and every other workload.

    pip install -c constraints.txt -e '.[torch]' && python benchmarks/bench_methods.py [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

CHOICES = ["gradcam", "all_gradient", "ablationcam", "scorecam"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--perturbation-batch", type=int, default=1, help="batch for Ablation-CAM and Score-CAM")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", nargs="*", default=None, choices=CHOICES, help="run only these workloads (default: all)")
    return ap


def main() -> None:
    args = build_parser().parse_args()
    threads = H.configure_threads(args.threads)
    H.prepare_device_env()
    import jax

    import workloads as W

    suite = W.Suite(repeats=args.repeats, threads=args.threads)
    res = {"env": H.environment(threads), "units": {}}
    for name in args.only or CHOICES:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        if name in ("gradcam", "all_gradient"):
            unit = W.WORKLOADS[name](suite, model=args.model, batch=args.batch, size=args.size)
        else:
            unit = W.WORKLOADS[name](suite, model=args.model, batch=args.perturbation_batch, size=args.size)
        unit["elapsed_s"] = time.perf_counter() - t0
        res["units"][f"{name}/{args.model}"] = unit
        for r in unit["rows"]:
            speed = f"{r['speedup']:.1f}x" if r["speedup"] else "refused" if "refused" in r["agreement"] else "-"
            base = f"{r['baseline_ms']:.1f} ms" if r["baseline_ms"] else "-"
            print(f"{r['workload']:24s} jaxcam {r['jaxcam_ms']:9.1f} ms  {r['baseline'] or '':58s} {base:>12s}  "
                  f"{speed}", flush=True)
    only = "" if args.only is None else "-" + "+".join(args.only)
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"methods-{args.model}-b{args.batch}-{jax.devices()[0].platform}{only}.json")
    H.write(res, out)
    print("wrote", out)


if __name__ == "__main__":
    main()
