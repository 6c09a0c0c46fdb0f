"""The whole jaxcam benchmark suite, one command: every workload against the PyTorch libraries, on one device.

    python benchmarks/run.py [--quick] [--only WORKLOAD ...] [--models MODEL ...] [--out PREFIX] [--resume]
    jaxcam bench [--quick] [...the same arguments]
    python benchmarks/run.py --accelerator          # the GPU run: installs nothing, about 8 minutes of device time

Workloads (``benchmarks/workloads.py`` says how each is measured):
  gradcam       per model: Grad-CAM against pytorch-grad-cam 1.5.7, torchcam 0.5.0, the hand-written split
                PyTorch Grad-CAM (eager and torch.compile, channels-last) and the floors (bare jitted forward,
                PyTorch forward, PyTorch forward+backward)
  methods       each gradient method alone (gradcam, gradcam++, xgradcam, hirescam, gradcam_elementwise, layercam,
                eigengradcam) against pytorch-grad-cam, and torchcam where it has the method
  all_gradient  per model: the seven gradient methods in one jaxcam call against one pytorch-grad-cam call each
  scorecam      Score-CAM against pytorch-grad-cam
  ablationcam   Ablation-CAM against pytorch-grad-cam
  batch_sweep   Grad-CAM images/s at batch 1..64 (and 128, 256 on GPUs): jaxcam, pytorch-grad-cam, hand-written,
                bare forward
  size_sweep    Grad-CAM at 224 and 448 px
  bf16          per model: compute_dtype="bfloat16" beside float32 (throughput ratio, map agreement)
  robustness    the noise-robustness grid (bench_robustness.py's machinery; the baseline is extrapolated)
  metrics       ROAD, deletion/insertion, Average Drop (bench_metrics.py's machinery); ROAD timed as a user calls
                it (default noise) alternating with its 2 x 9 x N forwards alone: "x own forwards" in the notes
  first_map     time to the first map in a fresh process, cold and warm JAX compilation cache, import apart
  memory        peak memory of Grad-CAM in a fresh process per side (RSS on CPU, allocator peaks on CUDA), and
                the compiled XLA program's memory_analysis()
  road_floor    (``--accelerator``) ROAD combined as a user calls it (8 images, imputations vmapped) against its own
                144 forwards alone (jaxcam only, no torch)
  profile       (``--accelerator``) the batch-256 Grad-CAM program: a jax.profiler trace in <PREFIX>-trace/, the
                time per XLA op read back from it, and the compiled program's cost_analysis() (jaxcam only, no torch)

The full run: ResNet-18, ResNet-50, VGG-16 and EfficientNet-Lite0 (``--models``) at batch 8, 224 px for the
per-model workloads; the single-model ones on ResNet-50 (the slow pytorch-grad-cam Score-CAM and Ablation-CAM at
batch 1). ``--quick``: ResNet-18 only, batch <= 4, 96-112 px, 2 repeats, every workload kind, the slow
pytorch-grad-cam baselines on 64 channels (layer1) and 1 image, the robustness grid on 3 fast methods (a few
minutes).

``--accelerator``: the GPU-relevant units in one command that installs nothing (the ``torch`` extra and a CUDA
jaxlib must already be there), ResNet-50 at 224 px: Grad-CAM (``gradcam``: pytorch-grad-cam, torchcam, the compiled
hand-written split PyTorch, the floors) and the seven gradient methods in one call (``all_gradient``) at batch 8,
32, 128 and 256, ROAD against its own forwards (``road_floor``), bf16 against fp32 at batch 256, Score-CAM and
Ablation-CAM at batch 4, the robustness grid at 64 images, and the ``profile`` of the batch-256 Grad-CAM program.
Sized for 8 minutes of device time on an H100/H200: each unit carries an estimate (``--list`` prints them) and a
unit whose estimate no longer fits ``--budget`` (default 450 s of units) is skipped and recorded as such, most
informative units first. The estimates: ResNet-50 Grad-CAM is ~8 GFLOP per image, the 2-core CPU does batch 8 in
~0.3 s (~200 GFLOP/s), an H100 sustains ~25 TFLOP/s on this (~100x), so every timed call is under 0.5 s and the
units are dominated by compilation: ~10-15 s per XLA program, ~45 s per torch.compile (a static graph at the first
batch, one dynamic recompilation after), and pytorch-grad-cam's Score-CAM/Ablation-CAM at 2048 channels (~4 x 2048
forwards, ~8 s a call). ``--accelerator --quick`` is the same plan on ResNet-18 at 64-96 px with batches 2 and 4 (a
CPU check that the command works).

Every CAM is compared with its baseline before anything is timed. Threads are pinned for both libraries
(``--threads``, default: the CPUs this process may use; torch.set_num_threads and XLA's intra-op threads) and
recorded. On CUDA, JAX allocates on demand (XLA_PYTHON_CLIENT_PREALLOCATE=false) so torch shares the GPU.

Output: ``<PREFIX>.json`` (every unit as soon as it finishes, so a killed run keeps what it measured; ``--resume``
skips the units already done), ``<PREFIX>.md`` (the table) and ``<PREFIX>-throughput.png``,
``<PREFIX>-speedup.png``. Default PREFIX: benchmarks/results/suite-<device>[-quick].
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

WORKLOADS = ("gradcam", "methods", "all_gradient", "scorecam", "ablationcam", "batch_sweep", "size_sweep", "bf16",
             "robustness", "metrics", "first_map", "memory", "profile", "road_floor")
JAX_ONLY = ("profile", "road_floor")  # workloads that need neither torch nor the reference libraries
ACCELERATOR_ONLY = ("road_floor",)  # on the CPU, the ``metrics`` unit measures the same (and the reference)
ACCELERATOR_BUDGET_S = 450.0  # of units; with the process start (~30 s) within 8 minutes of device time
PER_MODEL = ("gradcam", "all_gradient", "bf16")  # run for every model of --models
FULL_MODELS = ("resnet18", "resnet50", "vgg16", "efficientnet_lite0")
QUICK_MODELS = ("resnet18",)
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg11", "vgg13", "vgg16", "vgg19",
          "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "efficientnet_lite0")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.splitlines()[0],
                                 epilog="\n".join(__doc__.splitlines()[2:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ResNet-18, small batches and images, every workload kind")
    ap.add_argument("--only", nargs="+", choices=WORKLOADS, metavar="WORKLOAD",
                    help=f"run only these workloads: {', '.join(WORKLOADS)}")
    ap.add_argument("--models", nargs="+", choices=MODELS, metavar="MODEL",
                    help="models of the per-model workloads (gradcam, all_gradient, bf16); default "
                         f"{' '.join(FULL_MODELS)} ({' '.join(QUICK_MODELS)} with --quick)")
    ap.add_argument("--out", help="output prefix (default benchmarks/results/suite-<device>[-quick])")
    ap.add_argument("--resume", action="store_true", help="keep the units already in <out>.json, run the others")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads for torch and XLA (default: the CPUs this process may use)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 3; 2 quick)")
    ap.add_argument("--list", action="store_true", help="print the units this run would measure and exit")
    ap.add_argument("--accelerator", action="store_true",
                    help="the GPU-relevant units, sized for 8 minutes of device time (with --quick: a tiny CPU check)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds of units: a unit whose estimate no longer fits is skipped (default "
                         f"{ACCELERATOR_BUDGET_S:g} with --accelerator, none otherwise or with --quick)")
    return ap


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def plan(quick: bool, gpu: bool, models=None, only=None) -> list[tuple[str, str, dict]]:
    """The units of a run, in order: ``[(key, workload, config)]``. Units on the same model run together (one
    model pair in memory at a time; the pytorch-grad-cam timings of ``methods`` are reused by ``all_gradient``)."""
    models = tuple(models or (QUICK_MODELS if quick else FULL_MODELS))
    if quick:  # 96-112 px: XLA's CPU convolutions are ~10x slower at 64 px than at 80 px (2x2 maps in layer4)
        single, b, s = "resnet18", 2, 112
        cfg = {"gradcam": dict(batch=b, size=s), "all_gradient": dict(batch=b, size=s),
               "bf16": dict(batch=b, size=s),
               "methods": dict(model=single, batch=b, size=s),
               # layer1: 64 channels, so pytorch-grad-cam needs 64 forwards, not 512
               "scorecam": dict(model=single, batch=1, size=s, layer="layer1"),
               "ablationcam": dict(model=single, batch=1, size=s, layer="layer1"),
               "batch_sweep": dict(model=single, size=s, batches=(1, 2, 4)),
               "size_sweep": dict(model=single, batch=b, sizes=(96, s)),
               "metrics": dict(model=single, batch=1, size=96, repeats=1),
               "robustness": dict(argv=["--quick", "--model", single, "--size", "96", "--repeats", "1",
                                        "--methods", "gradcam", "hirescam", "eigencam", "--noises", "gaussian"]),
               "first_map": dict(models=("embedded", single), pgc_model=single),
               "memory": dict(model=single, batches=(b,), size=s),
               "profile": dict(model=single, batch=b, size=s, method="gradcam")}
    else:
        single = "resnet50"
        cfg = {"gradcam": dict(batch=8, size=224), "all_gradient": dict(batch=8, size=224),
               "bf16": dict(batch=8, size=224),
               "methods": dict(model=single, batch=8, size=224),
               # also on the embedded model (real weights: its constant channels, which Score-CAM deduplicates,
               # depend on them) against timm's tf_efficientnet_lite0 with the same weights
               "scorecam": dict(model=single, batch=1, size=224, also=("efficientnet_lite0",)),
               "ablationcam": dict(model=single, batch=1, size=224),
               "batch_sweep": dict(model=single, size=224,
                                   batches=(1, 2, 4, 8, 16, 32, 64) + ((128, 256) if gpu else ())),
               "size_sweep": dict(model=single, batch=4, sizes=(224, 448)),
               "metrics": dict(model=single, batch=8, size=224, repeats=2),
               "robustness": dict(argv=["--model", single, "--baseline-jobs", "1", "--agree-jobs", "1",
                                        "--repeats", "1"]),
               "first_map": dict(models=("embedded", single), pgc_model=single),
               "memory": dict(model=single, batches=(8, 32), size=224),
               "profile": dict(model=single, batch=256 if gpu else 8, size=224, method="gradcam")}
        if not gpu:  # CPUs emulate bfloat16: the bf16 comparison on the ResNets only (VGG-16 would take minutes)
            cfg["bf16"]["models"] = ("resnet18", "resnet50")
    wanted = set(only or WORKLOADS)
    units = []
    extra = [m for w in wanted if w in cfg for m in cfg[w].get("also", ()) if m not in models and m != single]
    order = list(models) + ([single] if single not in models else []) + list(dict.fromkeys(extra))
    for m in order:
        for w in ("gradcam", "methods", "all_gradient", "bf16", "batch_sweep", "size_sweep", "scorecam",
                  "ablationcam", "metrics"):
            if w not in wanted:
                continue
            c = dict(cfg[w])
            if w in PER_MODEL:
                allowed = c.pop("models", None)
                if m not in models or (allowed is not None and m not in allowed):
                    continue
                c["model"] = m
            elif c["model"] != m and m not in c.get("also", ()):
                continue
            c.pop("also", None)
            c["model"] = m
            units.append((f"{w}/{m}", w, c))
    for w in ("robustness", "first_map", "memory", "profile"):
        if w in wanted:
            units.append((w, w, cfg[w]))
    return units


# (key, workload, config, estimated seconds on an H100/H200), most informative first: the budget skips from the end
def accelerator_plan(quick: bool = False) -> list[tuple[str, str, dict, float]]:
    """The ``--accelerator`` run: ``[(key, workload, config, estimated device seconds)]`` (see the module's
    docstring for how the estimates were made). ``quick``: ResNet-18, small images and batches (a CPU check)."""
    if quick:
        m, s, batches, big, cam_batch = "resnet18", 96, (2, 4), 4, 1
        robust = ["--quick", "--model", m, "--size", "64", "--batch", "2", "--repeats", "1", "--methods", "gradcam",
                  "hirescam", "--noises", "gaussian"]
        cam = {"layer": "layer1"}
    else:
        m, s, batches, big, cam_batch = "resnet50", 224, (8, 32, 128, 256), 256, 4
        robust = ["--model", m, "--batch", "64", "--baseline-jobs", "1", "--agree-jobs", "1", "--repeats", "1"]
        cam = {}
    first, last = batches[0], batches[-1]
    units = [(f"gradcam/{m}/b{first}", "gradcam", dict(model=m, batch=first, size=s), 70.0),
             (f"gradcam/{m}/b{last}", "gradcam", dict(model=m, batch=last, size=s), 60.0),
             (f"profile/{m}/b{big}", "profile", dict(model=m, batch=big, size=s, method="gradcam"), 20.0),
             (f"all_gradient/{m}/b{last}", "all_gradient", dict(model=m, batch=last, size=s), 30.0),
             (f"road_floor/{m}/b{2 if quick else 8}", "road_floor",
              dict(model=m, batch=2 if quick else 8, size=64 if quick else s), 40.0),
             (f"bf16/{m}/b{big}", "bf16", dict(model=m, batch=big, size=s), 45.0),
             (f"scorecam/{m}", "scorecam", dict(model=m, batch=cam_batch, size=s, **cam), 40.0),
             (f"ablationcam/{m}", "ablationcam", dict(model=m, batch=cam_batch, size=s, **cam), 40.0),
             ("robustness", "robustness", dict(argv=robust), 90.0),
             (f"all_gradient/{m}/b{first}", "all_gradient", dict(model=m, batch=first, size=s), 25.0)]
    for b in batches[1:-1]:
        units += [(f"gradcam/{m}/b{b}", "gradcam", dict(model=m, batch=b, size=s), 25.0),
                  (f"all_gradient/{m}/b{b}", "all_gradient", dict(model=m, batch=b, size=s), 25.0)]
    return units


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    threads = args.threads or default_threads()
    import harness as H

    thread_info = H.configure_threads(threads)
    H.prepare_device_env()
    import jax

    gpu = jax.default_backend() == "gpu"
    device = H.device_label()
    estimates = {}
    if args.accelerator:
        if args.models:
            raise SystemExit("benchmarks/run.py: --models does not apply to --accelerator (ResNet-50; ResNet-18 quick)")
        full = accelerator_plan(args.quick)
        estimates = {k: e for k, _, _, e in full}
        units = [(k, w, c) for k, w, c, _ in full if not args.only or w in args.only]
    else:
        units = plan(args.quick, gpu, args.models, args.only)
    budget = args.budget if args.budget is not None else (
        ACCELERATOR_BUDGET_S if args.accelerator and not args.quick else None)  # the estimates are a GPU's
    if args.list:
        for key, _, cfg in units:
            est = f"~{estimates[key]:4.0f} s  " if key in estimates else ""
            print(f"{key:28s} {est}{cfg}")
        if estimates:
            print(f"estimated device time of the units: ~{sum(estimates[k] for k, _, _ in units):.0f} s "
                  f"(budget {budget:g} s; a unit that no longer fits is skipped)")
        return 0
    kind = "accelerator" if args.accelerator else "suite"
    prefix = args.out or os.path.join(HERE, "results", f"{kind}-{device}{'-quick' if args.quick else ''}")
    prefix = prefix[:-len(".json")] if prefix.endswith(".json") else prefix
    path = prefix + ".json"

    import jax_side as J
    import report

    needs_torch = any(w not in JAX_ONLY for _, w, _ in units)
    if needs_torch:
        import workloads as W

        assert set(W.WORKLOADS) == set(WORKLOADS), "run.py and workloads.py list different workloads"
        run_unit = W.WORKLOADS
    else:  # a jaxcam-only run (``--only profile road_floor``): no torch imported
        import bench_metrics as BM

        run_unit = {"profile": J.profile, "road_floor": BM.road_floor}
    results = {"units": {}}
    if args.resume and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        results["units"] = {k: u for k, u in old.get("units", {}).items() if u.get("status") == "ok"}
        print(f"resuming {path}: keeping {len(results['units'])} finished unit(s)", flush=True)
    t_start = time.perf_counter()
    results["suite"] = {"command": " ".join(["python benchmarks/run.py", *(argv if argv is not None else
                                                                            sys.argv[1:])]),
                        "quick": args.quick, "device": device, "threads": threads,
                        "repeats": args.repeats or (2 if args.quick else 3),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "plan": [[k, w, c] for k, w, c in units], "resumed": bool(args.resume),
                        "accelerator": bool(args.accelerator), "budget_s": budget,
                        "estimates_s": {k: estimates[k] for k, _, _ in units if k in estimates}}
    results["env"] = H.environment(thread_info)
    if needs_torch:
        suite = W.Suite(repeats=results["suite"]["repeats"], threads=threads, quick=args.quick,
                        long_call_s=5.0, budget_s=4.0 if args.quick else 15.0)
    else:
        suite = J.JaxSuite(repeats=results["suite"]["repeats"], threads=threads, quick=args.quick)
    suite.out_prefix = prefix
    results["env"] = H.environment(thread_info)  # again, now that torch is imported (its threads)

    def save(final: bool = False) -> None:
        results["suite"]["wall_s"] = time.perf_counter() - t_start
        results["suite"]["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        H.write(results, path)
        if final:
            written = report.write_report(results, prefix)
            print("wrote", path, *written, sep="\n  ", flush=True)
        else:
            with open(prefix + ".md", "w") as f:
                f.write(report.markdown(results))

    print(f"jaxcam benchmark suite on {device} ({results['env']['jax_device_kind']}), {threads} thread(s), "
          f"{len(units)} unit(s) -> {path}", flush=True)
    units_s = 0.0
    try:
        for key, workload, cfg in units:
            if key in results["units"]:
                print(f"== {key}: already done, skipped", flush=True)
                continue
            if budget is not None and key in estimates and units_s + estimates[key] > budget:
                reason = (f"the budget: {units_s:.0f} s of units done, this one is estimated at "
                          f"{estimates[key]:.0f} s, the budget is {budget:g} s")
                print(f"== {key}: skipped ({reason})", flush=True)
                results["units"][key] = {**new_unit(workload, cfg), "status": "skipped", "reason": reason}
                save()
                continue
            print(f"== {key} {cfg}", flush=True)
            t0 = time.perf_counter()
            load = H.OtherLoad()

            def progress(unit, key=key, t0=t0):
                results["units"][key] = {**unit, "status": "partial", "elapsed_s": time.perf_counter() - t0}
                save()

            suite.progress = progress
            try:
                unit = run_unit[workload](suite, **cfg)
                unit.setdefault("status", "ok")
            except H.Disagreement as d:
                unit = {**results["units"].get(key, new_unit(workload, cfg)), "status": "refused",
                        "reason": str(d)}
            except Exception as exc:  # noqa: BLE001 - one failing unit must not lose the others
                unit = {**results["units"].get(key, new_unit(workload, cfg)), "status": "error",
                        "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
                print(unit["traceback"], file=sys.stderr, flush=True)
            unit["elapsed_s"] = time.perf_counter() - t0
            units_s += unit["elapsed_s"]
            unit["other_processes_cpu_s"], unit["other_processes_share"] = load.cpu_s(), load.share()
            results["units"][key] = unit
            busy = unit["other_processes_share"]
            print(f"   {key}: {unit['status']} in {unit['elapsed_s']:.1f} s" +
                  (f" (other processes used {busy:.0%} of the machine: timings unreliable)" if busy > 0.1 else ""),
                  flush=True)
            save()
    except KeyboardInterrupt:
        print("interrupted: the units measured so far are saved; --resume continues", file=sys.stderr)
        results["suite"]["interrupted"] = True
        save(final=True)
        return 130
    results["suite"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save(final=True)
    failed = [k for k, u in results["units"].items() if u.get("status") in ("error", "refused")]
    if failed:
        print("units that failed or were refused: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def new_unit(workload: str, config: dict) -> dict:
    """An empty unit (``workloads.new_unit``'s shape, without importing torch)."""
    return {"workload": workload, "config": dict(config), "measurements": [], "rows": [], "notes": []}


if __name__ == "__main__":
    sys.exit(main())
