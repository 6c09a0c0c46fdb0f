"""Timing harness shared by the benchmarks: warm-up, compile time apart, medians over repeats, parity first."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from importlib import metadata

import numpy as np


def timeit(fn, repeats: int = 5, warmup: int = 1) -> dict:
    """Run ``fn`` (which must block until its result is ready) ``warmup`` times, then ``repeats`` times. The first
    warm-up call's time is reported separately (``first_s``: compilation for jitted code); with ``warmup=0`` the
    caller has already warmed ``fn`` up (for example while checking agreement)."""
    first = None
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0 if i == 0 else first
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"first_s": first, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": repeats}


def check_agreement(name: str, ours, reference, atol: float = 1e-3, min_r: float = 0.999) -> dict:
    """Refuse to time two programs that give different answers: max |diff| <= atol and Pearson r >= min_r."""
    a, b = np.asarray(ours, np.float64).ravel(), np.asarray(reference, np.float64).ravel()
    diff = float(np.abs(a - b).max())
    r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float(np.allclose(a, b))
    if diff > atol or r < min_r:
        raise SystemExit(f"{name}: outputs disagree (max |diff| {diff:.3g}, r {r:.6f}); refusing to benchmark")
    return {"max_abs_diff": diff, "pearson_r": r}


def environment() -> dict:
    import jax

    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "numpy", "torch", "torchvision", "grad-cam", "torchcam"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    return {"machine": platform.machine(), "processor": _cpu_name(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "jax_devices": [str(d) for d in jax.devices()],
            "torch_threads": threads, "versions": versions,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write(results: dict, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")


def same_model_and_photos(arch: str, batch: int, size: int, threads: int):
    """The setup every benchmark shares: ``(jaxcam model, torchvision model, x NHWC numpy, x NCHW torch)`` with the
    same deterministic random weights on both sides and ``batch`` of scikit-image's photographs (cycled)."""
    import torch
    import torchvision

    import jaxcam
    from jaxcam.models import random_state_dict
    from jaxcam.models.architectures import IMAGENET_MEAN, IMAGENET_STD

    torch.set_num_threads(threads)
    sd = random_state_dict(arch, seed=0)
    model = jaxcam.load_model(arch, weights=sd)
    tm = getattr(torchvision.models, arch)()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    tm.eval()
    photos = list(jaxcam.sample_images().values())
    x = jaxcam.preprocess([photos[i % len(photos)] for i in range(batch)], size=size, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD)
    return model, tm, x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
