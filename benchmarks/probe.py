"""Measurements that need a fresh process, run by ``benchmarks/run.py`` as subprocesses (one probe per process).

``first-map``: wall time from process start to the first Grad-CAM map being ready, with the import, model-load
and image-load times apart. The parent records the wall-clock time just before starting this process; this
process records wall-clock times (``time.time()``) at each stage, so interpreter start-up is inside the import time.
- ``--side jaxcam``: ``jaxcam.explain(load_model(...), sample images, "gradcam")`` (``--model embedded``: the
  bundled EfficientNet-Lite0; otherwise ``load_model(arch, weights=None)``, deterministic random weights). The JAX
  persistent compilation cache is whatever the parent put in the environment (``JAX_COMPILATION_CACHE_DIR``,
  ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0``, ``JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1``): empty for
  the cold run, filled by it for the warm one.
- ``--side pgc``: the same with torch, torchvision and pytorch-grad-cam (no JAX imported): torchvision's model
  with its own random initialisation, the photographs resized with Pillow and normalised with NumPy.

``memory``: the peak memory of one workload (Grad-CAM of ``--batch`` photographs) above the memory the process
holds once everything is loaded. On CPU: the peak resident set size (``VmHWM``, reset through
``/proc/self/clear_refs`` after loading; ``ru_maxrss`` if that is not allowed) minus the resident set after loading,
for the first call (compilation included for JAX) and for a second, steady-state call; for jaxcam also the
compiled XLA program's ``memory_analysis()``. On CUDA: ``peak_bytes_in_use`` of JAX's device above its bytes in use
after loading; ``torch.cuda.max_memory_allocated`` above ``memory_allocated`` after loading.
- ``--side jaxcam`` | ``pgc`` | ``handwritten`` (the eager split Grad-CAM of ``torch_baselines``).

The result is printed as one JSON line prefixed ``PROBE-RESULT``.

    python benchmarks/probe.py first-map --side jaxcam --model embedded
    python benchmarks/probe.py memory --side pgc --model resnet50 --batch 8 --threads 2
"""

from __future__ import annotations

import time

T_START = time.time()  # before any other import

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX = "PROBE-RESULT "


# ------------------------------------------------------------------------------------------------- memory
def _status() -> dict:
    try:
        with open("/proc/self/status") as f:
            text = f.read()
        return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}
    except (OSError, AttributeError):
        return {}


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss() -> int:
    return _status().get("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak(resettable: bool) -> int:
    return _status().get("VmHWM") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class CpuMemory:
    """Peak RSS above the RSS at ``start()``, per phase."""

    def __init__(self):
        self.resettable = reset_peak()
        self.base = rss()

    def start(self):
        gc.collect()
        self.resettable = reset_peak()
        self.base = rss()
        return self.base

    def peak_above_base(self) -> int:
        return peak(self.resettable) - self.base


# ------------------------------------------------------------------------------------------------- images
def sample_pixels(size: int, batch: int | None = None):
    """scikit-image's photographs as a float (N, size, size, 3) array in [0, 1], resized with Pillow."""
    import numpy as np
    from PIL import Image
    from skimage import data

    names = ("chelsea", "coffee", "astronaut", "rocket")
    pics = [getattr(data, n)() for n in names]
    n = batch or len(pics)
    out = [np.asarray(Image.fromarray(pics[i % len(pics)]).resize((size, size), Image.BILINEAR), np.float32) / 255.0
           for i in range(n)]
    return np.stack(out)


def torch_batch(size: int, batch: int | None, device: str):
    import numpy as np
    import torch

    x = (sample_pixels(size, batch) - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
        [0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)


# ----------------------------------------------------------------------------------------------- first map
def first_map_jaxcam(args) -> dict:
    import jax

    import jaxcam

    t_import = time.time()
    model = jaxcam.load_model() if args.model == "embedded" else jaxcam.load_model(args.model, weights=None)
    t_load = time.time()
    images = list(jaxcam.sample_images().values())
    t_images = time.time()
    maps = jax.block_until_ready(jaxcam.explain(model, images, "gradcam"))
    t_map = time.time()
    return {"t_start": T_START, "t_import": t_import, "t_load": t_load, "t_images": t_images, "t_map": t_map,
            "model": model.name, "shape": list(maps.shape), "backend": jax.default_backend(),
            "cache_dir": jax.config.jax_compilation_cache_dir,
            "cache_min_compile_time_s": jax.config.jax_persistent_cache_min_compile_time_secs,
            "cache_min_entry_size_bytes": jax.config.jax_persistent_cache_min_entry_size_bytes}


def first_map_pgc(args) -> dict:
    import pytorch_grad_cam as pgc
    import torch
    import torchvision
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.set_num_threads(args.threads)
    t_import = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    arch = "resnet50" if args.model == "embedded" else args.model
    tm = getattr(torchvision.models, arch)().eval().to(device)
    layer = tm.layer4[-1] if hasattr(tm, "layer4") else tm.features[-2]
    t_load = time.time()
    xt = torch_batch(224, None, device)
    t_images = time.time()
    with torch.no_grad():
        classes = tm(xt).argmax(1).tolist()  # each image's predicted class, as jaxcam explains by default
    with pgc.GradCAM(model=tm, target_layers=[layer]) as cam:
        maps = cam(input_tensor=xt, targets=[ClassifierOutputTarget(c) for c in classes])
    t_map = time.time()
    return {"t_start": T_START, "t_import": t_import, "t_load": t_load, "t_images": t_images, "t_map": t_map,
            "model": arch, "shape": list(maps.shape), "device": device}


# --------------------------------------------------------------------------------------------------- memory
def memory_jaxcam(args) -> dict:
    import jax

    import jaxcam

    sys.path.insert(0, HERE)
    import harness as H
    import jax_side

    model = jaxcam.load_model(args.model, weights=None)
    x = jax.device_put(H.photos(args.batch, args.size, model.arch.mean, model.arch.std))
    jax.block_until_ready(x)
    gpu = jax.default_backend() == "gpu"
    out = {"side": "jaxcam", "model": args.model, "batch": args.batch, "size": args.size}
    run = lambda: jax.block_until_ready(jaxcam.explain(model, x, "gradcam", preprocessed=True))  # noqa: E731
    if gpu:
        dev = jax.devices()[0]
        base = dev.memory_stats()["bytes_in_use"]
        run()
        stats = dev.memory_stats()
        out.update(base_bytes=base, peak_first_bytes=stats["peak_bytes_in_use"] - base,
                   note="JAX device memory: peak_bytes_in_use above bytes_in_use after loading (not resettable: "
                        "the steady-state peak equals the first call's or less)")
        run()
        out["peak_steady_bytes"] = dev.memory_stats()["peak_bytes_in_use"] - base
    else:
        out.update(cpu_peaks(run))
    try:
        _, compiled = jax_side.compile_explain(model, x, "gradcam")
        out["xla_memory_analysis"] = jax_side.memory_analysis(compiled)
    except Exception as exc:  # noqa: BLE001 - recorded, the RSS numbers stand
        out["xla_memory_analysis"] = f"unavailable: {type(exc).__name__}: {exc}"
    return out


def memory_torch(args) -> dict:
    import torch

    sys.path.insert(0, HERE)
    import harness as H
    import torch_baselines as TB

    import jaxcam  # the same random weights and photographs as the jaxcam probe
    from jaxcam.models import random_state_dict

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = jaxcam.load_model(args.model, weights=random_state_dict(args.model, seed=0))
    tm = H.torch_twin(args.model, random_state_dict(args.model, seed=0)).to(device)
    dev = TB.Device(device)
    x = H.photos(args.batch, args.size, model.arch.mean, model.arch.std)
    xt = dev.tensor(x)
    with torch.no_grad():
        classes = tm(xt).argmax(1).tolist()
    out = {"side": args.side, "model": args.model, "batch": args.batch, "size": args.size}
    with contextlib_exit() as stack:
        if args.side == "pgc":
            run = stack.enter_context(TB.pgc_method("gradcam", tm, TB.target_module(model, tm), xt, classes))
        else:
            hw = TB.HandWrittenGradCAM(model, tm, dev, compile=False)
            xt = hw.prepare(xt)
            run = lambda: hw(xt)  # noqa: E731
        if dev.cuda:
            dev.sync()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run()
            dev.sync()
            out.update(base_bytes=base, peak_first_bytes=torch.cuda.max_memory_allocated() - base,
                       note="torch.cuda.max_memory_allocated above memory_allocated after loading")
            torch.cuda.reset_peak_memory_stats()
            run()
            dev.sync()
            out["peak_steady_bytes"] = torch.cuda.max_memory_allocated() - base
        else:
            out.update(cpu_peaks(run))
    return out


def cpu_peaks(run) -> dict:
    """Peak RSS above the memory held before, of a first ``run()`` and of a second (steady) one."""
    mem = CpuMemory()
    out = {"base_bytes": mem.start()}
    run()
    out["peak_first_bytes"] = mem.peak_above_base()
    mem.start()
    run()
    out["peak_steady_bytes"] = mem.peak_above_base()
    out["resettable_peak"] = mem.resettable
    return out


def contextlib_exit():
    import contextlib

    return contextlib.ExitStack()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("probe", choices=["first-map", "memory"])
    ap.add_argument("--side", choices=["jaxcam", "pgc", "handwritten"], default="jaxcam")
    ap.add_argument("--model", default="embedded", help="'embedded' (first-map only) or an architecture")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.probe == "first-map":
        res = first_map_jaxcam(args) if args.side == "jaxcam" else first_map_pgc(args)
    else:
        res = memory_jaxcam(args) if args.side == "jaxcam" else memory_torch(args)
    print(PREFIX + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
