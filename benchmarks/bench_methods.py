"""jaxcam's methods engine against pytorch-grad-cam 1.5.7 on identical weights and inputs (CPU by default).

Workloads (ResNet-50, batch 8 at 224x224 unless told otherwise; same random weights converted by jaxcam; same
preprocessed photographs): Grad-CAM alone; every gradient method pytorch-grad-cam has, in one jaxcam call against one
pytorch-grad-cam call per method; Ablation-CAM and Score-CAM (a smaller batch: pytorch-grad-cam needs K forwards per
image, so its single timed run is already minutes); and the bare jitted forward pass as the physical floor. Maps are compared before anything is
timed. Writes benchmarks/results/methods-<device>.json.

    pip install -e '.[torch]' && python benchmarks/bench_methods.py [--batch 8] [--perturbation-batch 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from harness import check_agreement, environment, same_model_and_photos, timeit, write  # noqa: E402

import jaxcam  # noqa: E402

PGC_GRADIENT = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
                "hirescam": "HiResCAM", "gradcam_elementwise": "GradCAMElementWise", "layercam": "LayerCAM",
                "eigengradcam": "EigenGradCAM"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--perturbation-batch", type=int, default=1, help="batch for Ablation-CAM and Score-CAM")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", nargs="*", default=None, choices=["gradcam", "all_gradient", "ablationcam", "scorecam"],
                    help="run only these workloads (default: all)")
    args = ap.parse_args()

    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, tm, x, xt = same_model_and_photos(args.model, args.batch, args.size, args.threads)
    layer = [tm.layer4[-1]]
    xj = jax.device_put(x)
    classes = np.argmax(np.asarray(model(xj)), -1)
    tt = [ClassifierOutputTarget(int(c)) for c in classes]
    res = {"env": environment(), "model": args.model, "batch": args.batch, "size": args.size, "dtype": "float32",
           "layer": "layer4", "workloads": {}}

    def record(name, ours_fn, ref_fn, tol=1e-3, ref_repeats=None):
        t0 = time.perf_counter()
        ours_out = ours_fn()  # the first call compiles: reported apart as compile_s
        compile_s = time.perf_counter() - t0
        agree = check_agreement(name, ours_out, ref_fn(), atol=tol)
        o, r = timeit(ours_fn, args.repeats, warmup=0), timeit(ref_fn, ref_repeats or args.repeats, warmup=0)
        o["compile_s"] = compile_s
        res["workloads"][name] = {"jaxcam": o, "reference": r, "speedup": r["median_s"] / o["median_s"], **agree}
        print(f"{name:28s} jaxcam {o['median_s'] * 1e3:9.1f} ms (compile {compile_s:.2f} s)  "
              f"reference {r['median_s'] * 1e3:9.1f} ms  speed-up {r['median_s'] / o['median_s']:6.1f}x", flush=True)

    def ours(method, n=None, **kw):
        xx = xj if n is None else xj[:n]
        return lambda: jax.block_until_ready(jaxcam.explain(model, xx, method, preprocessed=True, **kw))

    def ref(cls, n=None, **kw):
        cam = getattr(pgc, cls)(tm, layer, **kw)
        xx, targets = (xt, tt) if n is None else (xt[:n], tt[:n])
        return lambda: cam(xx, targets=targets)

    def wanted(name):
        return args.only is None or name in args.only

    # Grad-CAM alone, and the floor: the bare jitted forward
    if wanted("gradcam"):
        run_gradcam(ours, ref, record, model, xj, res, args)
    if wanted("all_gradient"):
        run_all_gradient(ours, ref, model, res, args)
    n = args.perturbation_batch  # the reference needs K (2048) forwards per image: keep its run short
    if wanted("ablationcam"):
        ab_ours, ab_ref = ours("ablationcam", n=n, batch_size=256), ref("AblationCAM", n=n)
        record(f"ablationcam (batch {n})", ab_ours, ab_ref, ref_repeats=1)
    if wanted("scorecam"):
        sc_ref = pgc.ScoreCAM(tm, layer)  # its default batch of 16
        sc_ours = ours("scorecam", n=n)  # jaxcam's default chunk
        record(f"scorecam (batch {n})", sc_ours, lambda: sc_ref(xt[:n], targets=tt[:n]), ref_repeats=1)
    only = "" if args.only is None else "-" + "+".join(args.only)
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"methods-{args.model}-b{args.batch}-{jax.devices()[0].platform}{only}.json")
    write(res, out)
    print("wrote", out)


def run_gradcam(ours, ref, record, model, xj, res, args):
    gc_ours, gc_ref = ours("gradcam"), ref("GradCAM")  # one reference object: each one hooks the layer
    record("gradcam", gc_ours, gc_ref)
    fwd = jax.jit(lambda p, v: model.forward_fn.func(p, v))
    floor = timeit(lambda: jax.block_until_ready(fwd(model.params, xj)), args.repeats)
    res["workloads"]["bare_forward"] = {"jaxcam": floor}
    res["gradcam_over_forward"] = res["workloads"]["gradcam"]["jaxcam"]["median_s"] / floor["median_s"]
    print(f"bare jitted forward          {floor['median_s'] * 1e3:9.1f} ms; Grad-CAM / forward = "
          f"{res['gradcam_over_forward']:.2f}", flush=True)


def run_all_gradient(ours, ref, model, res, args):
    # every gradient method: one jaxcam call against one pytorch-grad-cam call per method
    names = list(PGC_GRADIENT)
    all_ours = ours(names)
    refs = [ref(PGC_GRADIENT[n]) for n in names]
    t0 = time.perf_counter()
    got = all_ours()
    compile_all = time.perf_counter() - t0
    for n, r in zip(names, refs):
        if n != "eigengradcam":  # compared up to the SVD sign by the parity tests
            check_agreement(n, got[n], r())
    o, r = timeit(all_ours, args.repeats, warmup=0), timeit(lambda: [f() for f in refs], args.repeats, warmup=0)
    o["compile_s"] = compile_all
    res["workloads"]["all_gradient_methods"] = {"methods": names, "jaxcam": o, "reference": r,
                                                "speedup": r["median_s"] / o["median_s"]}
    print(f"{'all gradient methods (' + str(len(names)) + ')':28s} jaxcam {o['median_s'] * 1e3:9.1f} ms  reference "
          f"{r['median_s'] * 1e3:9.1f} ms  speed-up {r['median_s'] / o['median_s']:6.1f}x", flush=True)


if __name__ == "__main__":
    main()
