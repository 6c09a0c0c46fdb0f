"""Every workload of the benchmark suite, each a function ``(suite, **config) -> unit`` (a JSON-able dict with its
measurements and table rows). ``benchmarks/run.py`` chooses the configurations (full or ``--quick``) and runs them;
``benchmarks/bench_methods.py`` runs some of them on their own.

How each comparison is made (:class:`Suite`): jaxcam's program is compiled ahead of time first (its compile time
apart), then called once: those maps are the reference every baseline is compared with. Each baseline is called
once and its output compared (max |diff| <= 1e-3 and Pearson r >= 0.999 on CPU; 5e-2 and 0.995 on CUDA, where
TF32 convolutions round differently); a baseline that disagrees is not timed (the row says "refused" and why).
Then each side is timed: ``repeats`` calls (fewer for slow calls, at least 2; a call that takes at least
``long_call_s`` is timed once, by its agreement run), median and spread. On CUDA every timed call ends with
``torch.cuda.synchronize()`` or ``jax.block_until_ready``. Every CAM's time is also given as a multiple of the
bare jitted forward pass of the same model, batch, size and dtype (``x_forward``).

Workloads: ``gradcam`` (per model: jaxcam against pytorch-grad-cam, torchcam, the hand-written split Grad-CAM eager
and compiled, and the PyTorch forward / forward+backward floors), ``methods`` (each gradient method alone),
``all_gradient`` (the seven gradient methods in one jaxcam call against one pytorch-grad-cam call each),
``scorecam``, ``ablationcam``, ``batch_sweep``, ``size_sweep``, ``bf16`` (``compute_dtype="bfloat16"`` beside
float32), ``robustness`` (``bench_robustness``), ``metrics`` (``bench_metrics``), ``first_map`` and ``memory``
(fresh subprocesses, ``benchmarks/probe.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import harness as H  # noqa: E402
import jax_side as J  # noqa: E402
import torch  # noqa: E402
import torch_baselines as TB  # noqa: E402

import jaxcam  # noqa: E402
from jaxcam.models import random_state_dict  # noqa: E402
from jaxcam.postprocess import postprocess  # noqa: E402

GRADIENT_METHODS = tuple(TB.PGC_GRADIENT)
PGC_NAMES = {**TB.PGC_GRADIENT, **TB.PGC_OTHER}
JAXCAM_OPTIONS = {"ablationcam": {"batch_size": 256}}  # as in bench_methods: ablated copies 256 at a time


@dataclass
class Setup:
    """One model at one batch and size, on both sides."""

    arch: str
    batch: int
    size: int
    model: object
    tm: torch.nn.Module
    x: jax.Array
    xt: torch.Tensor
    classes: np.ndarray
    layer: torch.nn.Module

    def info(self, dtype: str = "float32") -> dict:
        return {"model": self.arch, "batch": self.batch, "size": self.size, "dtype": dtype,
                "input_shape_nhwc": [self.batch, self.size, self.size, 3], "layer": self.model.default_layer}


def _label(method) -> str:
    return method if isinstance(method, str) else f"{len(method)} methods in one call"


class Suite:
    """Shared state of one run: settings, the current models, and the measurements workloads reuse (the floor, a
    jaxcam program's timing, a pytorch-grad-cam method's timing) keyed by model, batch, size and dtype."""

    def __init__(self, *, repeats: int = 3, threads: int = 1, long_call_s: float = 10.0, budget_s: float = 15.0,
                 quick: bool = False, log=print):
        self.device = TB.Device(H.torch_device())
        self.gpu = self.device.cuda
        self.repeats, self.threads, self.quick = repeats, threads, quick
        self.long_call_s, self.budget_s = long_call_s, budget_s
        self.atol, self.min_r = (5e-2, 0.995) if self.gpu else (1e-3, 0.999)
        self.log = log
        self.progress = lambda unit: None  # set by run.py: writes a partial unit (a killed run keeps it)
        torch.set_num_threads(threads)
        self._models: dict[str, tuple] = {}
        self._cache: dict = {}
        self._handwritten: dict = {}

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self, arch: str, batch: int, size: int) -> Setup:
        if arch not in self._models:  # one architecture in memory at a time (VGG-16 is 0.5 GB per side)
            self._models.clear()
            self._handwritten = {k: v for k, v in self._handwritten.items() if k[0] == arch}
            sd = H.embedded_state_dict() if arch == "efficientnet_lite0" else random_state_dict(arch, seed=0)
            model = jaxcam.load_model(arch, weights=sd)
            tm = H.torch_twin(arch, sd).to(self.device.name)
            self._models[arch] = (model, tm)
        model, tm = self._models[arch]
        x_np = H.photos(batch, size, model.arch.mean, model.arch.std)
        x = jax.block_until_ready(jax.device_put(x_np))
        xt = self.device.tensor(x_np)
        classes = np.asarray(jnp.argmax(model(x), -1))
        return Setup(arch, batch, size, model, tm, x, xt, classes, TB.target_module(model, tm))

    def handwritten(self, st: Setup, compile: bool) -> TB.HandWrittenGradCAM:
        key = (st.arch, compile)
        if key not in self._handwritten:
            self._handwritten[key] = TB.HandWrittenGradCAM(st.model, st.tm, self.device, compile=compile)
        return self._handwritten[key]

    # ---------------------------------------------------------------------------------------------- timing
    def repeats_for(self, t: float) -> int:
        floor = min(2, self.repeats)
        if t <= 0:
            return self.repeats
        return max(floor, min(self.repeats, int(self.budget_s // t)))

    def _stats(self, fn, sync, first_s: float, first_is_run: bool) -> dict:
        """Time ``fn`` (already called once, in ``first_s``): repeats, or that one call when it was long."""
        if first_is_run and first_s >= self.long_call_s:
            return {**H.summarize([first_s]), "note": f"timed once: a {first_s:.1f} s call (its agreement run)"}
        return H.summarize([H.timed_call(fn, sync)[1] for _ in range(self.repeats_for(first_s))])

    def floor(self, st: Setup, dtype: str = "float32"):
        """The bare jitted forward of the same model, batch, size and dtype: ``(measurement, logits)``."""
        key = ("floor", st.arch, st.batch, st.size, dtype)
        if key not in self._cache:
            call, _ = J.forward_fn(st.model, st.x, dtype)
            out, first = H.timed_call(call)
            stats = self._stats(call, None, first, first_is_run=False)
            meas = {"side": "jax", "label": f"bare jitted forward ({dtype})", **st.info(dtype), "first_call_s": first,
                    "compile_s": max(0.0, first - stats["median_s"]), **stats}
            self._cache[key] = (meas, np.asarray(out))
            self.log(f"  {'jax forward (floor)':46s} {_ms(meas)}")
        return self._cache[key]

    def jaxcam(self, st: Setup, method, dtype: str = "float32", **kw):
        """jaxcam's maps and timing: AOT compile (compile time apart), one call (the maps every baseline is
        compared with), then the timed calls. ``(measurement, maps)``; raises TypeError if ``compute_dtype`` is not
        supported."""
        opts = {**(JAXCAM_OPTIONS.get(method, {}) if isinstance(method, str) else {}), **kw}
        if dtype != "float32":
            opts["compute_dtype"] = dtype
        key = ("jaxcam", st.arch, st.batch, st.size, dtype, method if isinstance(method, str) else tuple(method),
               tuple(sorted(opts.items())))
        if key in self._cache:
            return self._cache[key]
        meas = {"side": "jaxcam", "label": f"jaxcam {_label(method)}", **st.info(dtype),
                "method": method if isinstance(method, str) else list(method), "options": {k: v for k, v in
                                                                                          opts.items()}}
        try:
            meas["compile_s"], compiled = J.compile_explain(st.model, st.x, method, **opts)
            meas["xla_memory"] = J.memory_analysis(compiled)
            del compiled
        except TypeError:
            if "compute_dtype" in opts:
                raise
            meas["compile_s"], meas["aot_error"] = None, "ahead-of-time compilation unavailable"
        except Exception as exc:  # noqa: BLE001 - the first call compiles instead; recorded
            meas["compile_s"], meas["aot_error"] = None, f"{type(exc).__name__}: {exc}"
        fn = J.explain_fn(st.model, st.x, method, **opts)
        out, first = H.timed_call(fn)
        meas["first_call_s"] = first
        meas.update(self._stats(fn, None, first, first_is_run=meas["compile_s"] is not None))
        if meas["compile_s"] is None:
            meas["compile_s"] = max(0.0, first - meas["median_s"])
            meas["compile_note"] = "first call minus the median (no AOT compile)"
        maps = {k: np.asarray(v) for k, v in out.items()} if isinstance(out, dict) else np.asarray(out)
        self._cache[key] = (meas, maps)
        self.log(f"  {meas['label'] + (' ' + dtype if dtype != 'float32' else ''):46s} {_ms(meas)}"
                 f"  (compile {meas['compile_s']:.2f} s)")
        return self._cache[key]

    def agree(self, name: str, st: Setup, ours, ref, method: str | None = None, atol=None, min_r=None) -> dict:
        """Compare ``ref`` with jaxcam's ``ours``; raises :class:`harness.Disagreement`. Principal-component
        methods are compared up to the SVD's sign, per image."""
        ref = ref.detach().float().cpu().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
        if method in TB.SIGNLESS:
            ours = self.signless(st, method, ref)
        out = H.check_agreement(name, ours, ref, atol=self.atol if atol is None else atol,
                                min_r=self.min_r if min_r is None else min_r)
        if method in TB.SIGNLESS:
            out["note"] = "up to the SVD's sign, per image"
        return out

    def signless(self, st: Setup, method: str, ref: np.ndarray) -> np.ndarray:
        raws = jaxcam.explain(st.model, st.x, method, raw=True, eigen_sign="svd", preprocessed=True)
        size = st.x.shape[1:3]
        best = []
        for i in range(st.batch):
            opts = [np.asarray(postprocess([s * r[i] for r in raws], size)) for s in (1.0, -1.0)]
            best.append(min(opts, key=lambda o: np.abs(o - ref[i]).max()))
        return np.stack(best)

    def baseline(self, st: Setup, label: str, side: str, fn, ours, method: str | None = None, compare=True,
                 first=None, dtype: str = "float32", **tol):
        """One baseline: its first call (or ``first = (out, seconds)``), agreement with ``ours``, then its timing.
        ``(measurement or None if refused, agreement)``."""
        sync = self.device.sync
        out, first_s = first if first is not None else H.timed_call(fn, sync)
        agreement = {"kind": "floor (different output: not compared)"}
        if compare:
            try:
                agreement = self.agree(f"{st.arch} b{st.batch} {label}", st, ours, out, method, **tol)
            except H.Disagreement as d:
                self.log(f"  {label:46s} REFUSED: {d}")
                return None, {"refused": str(d), "max_abs_diff": d.max_abs_diff, "pearson_r": d.pearson_r}
        meas = {"side": side, "label": label, **st.info(dtype), "first_call_s": first_s,
                **self._stats(fn, sync, first_s, first_is_run=True)}
        self.log(f"  {label:46s} {_ms(meas)}")
        return meas, agreement

    def pgc(self, st: Setup, method: str, ours, layer: str | None = None, **kwargs):
        """pytorch-grad-cam's ``method`` at jaxcam's ``layer`` (default: the model's default layer), cached per
        model, batch and size, compared with ``ours`` each time."""
        key = ("pgc", st.arch, st.batch, st.size, method, layer)
        label = f"pytorch-grad-cam {PGC_NAMES[method]}"
        if key in self._cache:
            meas, out = self._cache[key]
            if meas is None:
                return None, out
            try:
                return meas, self.agree(f"{st.arch} b{st.batch} {label}", st, ours, out, method)
            except H.Disagreement as d:
                return None, {"refused": str(d), "max_abs_diff": d.max_abs_diff, "pearson_r": d.pearson_r}
        module = st.layer if layer is None else TB.target_module(st.model, st.tm, layer)
        with TB.pgc_method(method, st.tm, module, st.xt, st.classes, **kwargs) as fn:
            first = H.timed_call(fn, self.device.sync)
            meas, agreement = self.baseline(st, label, "pytorch-grad-cam", fn, ours, method, first=first)
        assert TB.hooks_left(st.tm) == 0, "pytorch-grad-cam left hooks on the model"
        self._cache[key] = (meas, first[0]) if meas is not None else (None, agreement)
        return meas, agreement

    def torchcam(self, st: Setup, method: str, ours):
        label = f"torchcam {TB.TORCHCAM[method]}"
        with TB.torchcam_method(method, st.tm, st.layer, st.xt, st.classes) as fn:
            meas, agreement = self.baseline(st, label, "torchcam", fn, ours, method)
        assert TB.hooks_left(st.tm) == 0, "torchcam left hooks on the model"
        return meas, agreement

    def hand_written(self, st: Setup, ours, compile: bool):
        """The hand-written split Grad-CAM (one instance per model and mode, so a compiled one is reused across
        batches and sizes): its first call at this shape compiles when ``compile``; the agreement run is then a
        second call."""
        hw = self.handwritten(st, compile)
        xt = hw.prepare(st.xt)
        out, t = hw.warm(xt)
        first_call_s = t
        if hw.compiled:
            out, t = H.timed_call(lambda: hw(xt), self.device.sync)
        meas, agreement = self.baseline(st, hw.label, "hand-written PyTorch", lambda: hw(xt), ours, first=(out, t))
        if meas is not None:
            meas["torch_compile"] = {"requested": compile, "used": hw.compiled, "error": hw.compile_error,
                                     "first_call_at_this_shape_s": first_call_s if hw.compiled else None,
                                     "tf32": self.gpu, "channels_last": hw.channels_last}
        return meas, agreement, hw


# -------------------------------------------------------------------------------------------------- rows
def _ms(meas: dict) -> str:
    return (f"{meas['median_s'] * 1e3:10.1f} ms  [{meas['min_s'] * 1e3:.1f} .. {meas['max_s'] * 1e3:.1f}] "
            f"x{meas['repeats']}")


def row(workload: str, st_info: dict, ours: dict, base: dict | None, agreement: dict, floor: dict | None,
        base_floor: dict | None = None, baseline_label: str | None = None, **extra) -> dict:
    """One line of the results table: jaxcam against one baseline (``base`` None: refused or not run)."""
    base_floor = base_floor or floor
    batch = st_info["batch"]
    r = {"workload": workload, **st_info, "jaxcam": ours["label"], "jaxcam_ms": ours["median_s"] * 1e3,
         "jaxcam_spread_ms": [ours["min_s"] * 1e3, ours["max_s"] * 1e3], "jaxcam_repeats": ours["repeats"],
         "compile_s": ours.get("compile_s"), "images_per_s": batch / ours["median_s"],
         "baseline": baseline_label or (base["label"] if base else None), "baseline_ms": None,
         "baseline_spread_ms": None, "baseline_repeats": None, "speedup": None, "baseline_images_per_s": None,
         "x_forward": ours["median_s"] / floor["median_s"] if floor else None, "baseline_x_forward": None,
         "agreement": agreement, **extra}
    if base is not None:
        r.update(baseline_ms=base["median_s"] * 1e3, baseline_spread_ms=[base["min_s"] * 1e3, base["max_s"] * 1e3],
                 baseline_repeats=base["repeats"], speedup=base["median_s"] / ours["median_s"],
                 baseline_images_per_s=batch / base["median_s"],
                 baseline_x_forward=base["median_s"] / base_floor["median_s"] if base_floor else None)
    return r


def new_unit(workload: str, **config) -> dict:
    return {"workload": workload, "config": config, "measurements": [], "rows": [], "notes": []}


def _add(unit: dict, *measurements) -> None:
    for m in measurements:
        if m is not None and m not in unit["measurements"]:
            unit["measurements"].append(m)


# ---------------------------------------------------------------------------------------------- workloads
def gradcam(S: Suite, model: str, batch: int, size: int) -> dict:
    """Grad-CAM on one model: jaxcam against pytorch-grad-cam, torchcam, the hand-written split Grad-CAM (eager and
    ``torch.compile``), and the floors (jitted forward; PyTorch forward and forward+backward)."""
    unit = new_unit("gradcam", model=model, batch=batch, size=size)
    st = S.setup(model, batch, size)
    info = st.info()
    floor, logits = S.floor(st)
    ours, maps = S.jaxcam(st, "gradcam")
    _add(unit, floor, ours)
    scale = max(1.0, float(np.abs(logits).max()))
    fwd, agree = S.baseline(st, "PyTorch forward (inference_mode)", "torch", TB.forward_fn(st.tm, st.xt), logits,
                            atol=1e-3 * scale, min_r=0.9999)
    _add(unit, fwd)
    unit["rows"].append(row("forward (floor)", info, floor, fwd, agree, floor,
                            baseline_label="PyTorch forward (inference_mode)"))
    S.progress(unit)
    base, agree = S.pgc(st, "gradcam", maps)
    _add(unit, base)
    unit["rows"].append(row("gradcam", info, ours, base, agree, floor, baseline_label="pytorch-grad-cam GradCAM"))
    S.progress(unit)
    base, agree = S.torchcam(st, "gradcam", maps)
    _add(unit, base)
    unit["rows"].append(row("gradcam", info, ours, base, agree, floor, baseline_label="torchcam GradCAM"))
    S.progress(unit)
    for compile in (False, True):
        base, agree, hw = S.hand_written(st, maps, compile)
        _add(unit, base)
        unit["rows"].append(row("gradcam", info, ours, base, agree, floor, baseline_label=hw.label))
        if compile and hw.compile_error:
            unit["notes"].append(hw.compile_error)
        S.progress(unit)
    fb, agree = S.baseline(st, "PyTorch forward+backward (floor)", "torch",
                           TB.forward_backward_fn(st.tm, st.xt, st.classes), None, compare=False)
    st.tm.zero_grad(set_to_none=True)
    _add(unit, fb)
    unit["rows"].append(row("gradcam", info, ours, fb, agree, floor, baseline_label=fb["label"]))
    return unit


def methods(S: Suite, model: str, batch: int, size: int, names=GRADIENT_METHODS) -> dict:
    """Each gradient method alone: jaxcam against pytorch-grad-cam (and torchcam where it has the method)."""
    unit = new_unit("methods", model=model, batch=batch, size=size, methods=list(names))
    st = S.setup(model, batch, size)
    info = st.info()
    floor, _ = S.floor(st)
    _add(unit, floor)
    for name in names:
        ours, maps = S.jaxcam(st, name)
        base, agree = S.pgc(st, name, maps)
        _add(unit, ours, base)
        unit["rows"].append(row(name, info, ours, base, agree, floor,
                                baseline_label=f"pytorch-grad-cam {PGC_NAMES[name]}", method=name))
        if name in TB.TORCHCAM:
            base, agree = S.torchcam(st, name, maps)
            _add(unit, base)
            unit["rows"].append(row(name, info, ours, base, agree, floor,
                                    baseline_label=f"torchcam {TB.TORCHCAM[name]}", method=name))
        S.progress(unit)
    return unit


def all_gradient(S: Suite, model: str, batch: int, size: int, names=GRADIENT_METHODS) -> dict:
    """The gradient methods in one jaxcam call against one pytorch-grad-cam call per method (their sum)."""
    unit = new_unit("all_gradient", model=model, batch=batch, size=size, methods=list(names))
    st = S.setup(model, batch, size)
    floor, _ = S.floor(st)
    ours, maps = S.jaxcam(st, list(names))
    _add(unit, floor, ours)
    parts, agreements, refused = [], {}, []
    for name in names:
        base, agree = S.pgc(st, name, maps[name])
        agreements[name] = agree
        if base is None:
            refused.append(name)
        else:
            parts.append(base)
            _add(unit, base)
        S.progress(unit)
    base = None
    if not refused:
        base = {"side": "pytorch-grad-cam", "label": f"pytorch-grad-cam, one call per method ({len(names)})",
                **st.info(), "median_s": sum(p["median_s"] for p in parts), "min_s": sum(p["min_s"] for p in parts),
                "max_s": sum(p["max_s"] for p in parts), "repeats": min(p["repeats"] for p in parts),
                "note": "the sum of each method's own timing (medians, minima, maxima)"}
        agreement = {"max_abs_diff": max(a["max_abs_diff"] for a in agreements.values()),
                     "pearson_r": min(a["pearson_r"] for a in agreements.values()), "per_method": agreements}
    else:
        agreement = {"refused": f"disagreeing methods: {', '.join(refused)}", "per_method": agreements}
    unit["rows"].append(row("all gradient methods", st.info(), ours, base, agreement, floor,
                            baseline_label=f"pytorch-grad-cam, one call per method ({len(names)})"))
    return unit


def perturbation(S: Suite, workload: str, model: str, batch: int, size: int, layer: str | None = None) -> dict:
    """Score-CAM or Ablation-CAM: jaxcam against pytorch-grad-cam (K forwards per image on the reference side, K the
    channels of ``layer``: the default layer, or a narrower one to keep a quick run short)."""
    unit = new_unit(workload, model=model, batch=batch, size=size, layer=layer,
                    jaxcam_options=JAXCAM_OPTIONS.get(workload, {}))
    st = S.setup(model, batch, size)
    floor, _ = S.floor(st)
    ours, maps = S.jaxcam(st, workload, **({"layer": layer} if layer else {}))
    _add(unit, floor, ours)
    S.progress(unit)
    base, agree = S.pgc(st, workload, maps, layer=layer)
    _add(unit, base)
    extra = {}
    if workload == "scorecam":  # the forwards jaxcam actually runs (one per distinct mask) against K per image
        from jaxcam.methods.perturbation import scorecam_forward_count
        from jaxcam.tapped import site_shapes

        site = st.model.layer_site(layer)
        k = int(site_shapes(st.model.tapped.apply, st.model.params, st.x, (site,))[site].shape[-1])
        photos = jnp.asarray(H.photos(4, st.size, st.model.arch.mean, st.model.arch.std))
        counts = [int(c) for c in np.asarray(scorecam_forward_count(st.model, photos, layer))]
        extra = {"forwards_per_image": counts[:st.batch], "channels": k}
        unit["notes"].append(f"Score-CAM on {st.arch}: distinct masks (forwards run, before rounding up to the "
                             f"chunk) on the 4 sample photos {counts} of {k} per image without deduplication")
    unit["rows"].append(row(workload, st.info(), ours, base, agree, floor,
                            baseline_label=f"pytorch-grad-cam {PGC_NAMES[workload]}",
                            layer=layer or st.model.default_layer, **extra))
    return unit


def scorecam(S: Suite, model: str, batch: int, size: int, layer: str | None = None) -> dict:
    return perturbation(S, "scorecam", model, batch, size, layer)


def ablationcam(S: Suite, model: str, batch: int, size: int, layer: str | None = None) -> dict:
    return perturbation(S, "ablationcam", model, batch, size, layer)


def _sweep_point(S: Suite, unit: dict, workload: str, st: Setup, point: dict) -> None:
    floor, _ = S.floor(st)
    ours, maps = S.jaxcam(st, "gradcam")
    _add(unit, floor, ours)
    info = st.info()
    unit["rows"].append(row(workload, info, floor, None, {"kind": "floor"}, floor, baseline_label=None,
                            series="jax forward", **point))
    base, agree = S.pgc(st, "gradcam", maps)
    _add(unit, base)
    unit["rows"].append(row(workload, info, ours, base, agree, floor, baseline_label="pytorch-grad-cam GradCAM",
                            series="jaxcam gradcam", **point))
    base, agree, hw = S.hand_written(st, maps, compile=True)
    _add(unit, base)
    unit["rows"].append(row(workload, info, ours, base, agree, floor, baseline_label=hw.label,
                            series="jaxcam gradcam", **point))
    if hw.compile_error and hw.compile_error not in unit["notes"]:
        unit["notes"].append(hw.compile_error)
    S.progress(unit)


def batch_sweep(S: Suite, model: str, size: int, batches) -> dict:
    """Grad-CAM throughput against batch size: jaxcam, pytorch-grad-cam, the hand-written (compiled) Grad-CAM and
    the bare jitted forward (images/s in every row)."""
    unit = new_unit("batch_sweep", model=model, size=size, batches=list(batches))
    for b in batches:
        S.log(f" batch {b}")
        _sweep_point(S, unit, "batch sweep", S.setup(model, b, size), {"sweep": "batch"})
    return unit


def size_sweep(S: Suite, model: str, batch: int, sizes) -> dict:
    """Grad-CAM against the image size (same sides as the batch sweep)."""
    unit = new_unit("size_sweep", model=model, batch=batch, sizes=list(sizes))
    for s in sizes:
        S.log(f" size {s}")
        _sweep_point(S, unit, "size sweep", S.setup(model, batch, s), {"sweep": "size"})
    return unit


def bf16(S: Suite, model: str, batch: int, size: int, names=GRADIENT_METHODS) -> dict:
    """``compute_dtype="bfloat16"`` beside float32 for Grad-CAM and the gradient methods in one call: throughput
    ratio and map agreement to float32 (Pearson r over all pixels, and the lowest per-image r)."""
    unit = new_unit("bf16", model=model, batch=batch, size=size)
    st = S.setup(model, batch, size)
    floor32, _ = S.floor(st)
    for what, method in (("gradcam", "gradcam"), ("all gradient methods", list(names))):
        f32, m32 = S.jaxcam(st, method)
        try:
            f16, m16 = S.jaxcam(st, method, dtype="bfloat16")
        except TypeError as exc:
            unit["status"] = "skipped"
            unit["reason"] = f"jaxcam.explain has no compute_dtype yet (TypeError: {exc})"
            S.log(f"  skipped: {unit['reason']}")
            return unit
        floor16, _ = S.floor(st, "bfloat16")
        _add(unit, floor32, floor16, f32, f16)
        if isinstance(m32, dict):
            per = {k: H.map_correlation(m16[k], m32[k]) for k in m32}
            agreement = H.map_correlation(np.concatenate([m16[k] for k in m32]),
                                          np.concatenate([m32[k] for k in m32]))
            agreement["per_method"] = {k: {"pearson_r": v["pearson_r"], "min_image_r": v["min_image_r"]}
                                       for k, v in per.items()}
            agreement["min_image_r"] = min(v["min_image_r"] for v in per.values())
        else:
            agreement = H.map_correlation(m16, m32)
        agreement.pop("per_image_r", None)
        agreement["kind"] = "bfloat16 against float32 (no threshold)"
        r = row(f"{what} bf16", st.info("bfloat16"), f16, f32, agreement, floor16, base_floor=floor32,
                baseline_label="jaxcam float32", throughput_ratio=f32["median_s"] / f16["median_s"])
        unit["rows"].append(r)
        S.log(f"  {what}: bf16/fp32 throughput {r['throughput_ratio']:.2f}x, r {agreement['pearson_r']:.5f} "
              f"(min per image {agreement['min_image_r']:.5f})")
        S.progress(unit)
    return unit


# ----------------------------------------------------------------------------- the bench_* scripts' machinery
def robustness(S: Suite, argv: list[str]) -> dict:
    """The noise-robustness grid of ``bench_robustness.py`` (its arguments: ``argv``)."""
    import bench_robustness as BR

    args = BR.build_parser().parse_args([*argv, "--threads", str(S.threads)])
    res = BR.run(args)
    unit = new_unit("robustness", argv=argv, **{k: v for k, v in res["config"].items() if k != "regions"})
    cfg = res["config"]
    info = {"model": res["model"], "batch": cfg["batch"], "size": res["size"], "dtype": "float32"}
    steady = res["jaxcam"]["steady_runs"]
    ours = {"label": f"jaxcam.robustness.run ({cfg['jobs']} noisy images, {cfg['maps']} maps)",
            **H.summarize([r["total_s"] for r in steady]), "compile_s": res["jaxcam"]["compile_estimate_s"]}
    base = {"label": f"pytorch-grad-cam + NumPy, extrapolated from {res['baseline']['sample_size']} sampled job(s)",
            "median_s": res["baseline"]["extrapolated_total_s"], "min_s": res["baseline"]["extrapolated_total_s"],
            "max_s": res["baseline"]["extrapolated_total_s"], "repeats": 1}
    diffs = [v["max_abs_diff"] for job in res["agreement"].values() for k, v in job.items()
             if isinstance(v, dict) and "max_abs_diff" in v and k != "rbo"]
    rs = [v["pearson_r"] for job in res["agreement"].values() for k, v in job.items()
          if isinstance(v, dict) and "pearson_r" in v and k != "rbo"]
    agreement = {"max_abs_diff": max(diffs), "pearson_r": min(rs), "jobs_checked": len(res["agreement"]),
                 "note": "every method's maps on the checked jobs' exact noisy images"}
    unit["rows"].append(row("robustness grid", info, ours, base, agreement, None,
                            note="baseline extrapolated (pytorch-grad-cam Ablation-CAM takes about a minute per "
                                 "image); x forward not applicable"))
    unit["detail"] = {k: v for k, v in res.items() if k != "env"}
    return unit


def metrics(S: Suite, model: str, batch: int, size: int, repeats: int, only=None) -> dict:
    """ROAD, deletion/insertion and Average Drop (``bench_metrics.py``) against pytorch-grad-cam and torchcam."""
    import bench_metrics as BM

    st = S.setup(model, batch, size)
    floor, _ = S.floor(st)
    argv = ["--model", model, "--batch", str(batch), "--size", str(size), "--repeats", str(repeats),
            "--threads", str(S.threads)] + (["--only", *only] if only else [])
    res = BM.run(BM.build_parser().parse_args(argv), setup=(st.model, st.tm, np.asarray(st.x), st.xt))
    unit = new_unit("metrics", model=model, batch=batch, size=size, repeats=repeats)
    _add(unit, floor)
    references = {"road_combined (pgc)": "pytorch-grad-cam ROADCombined",
                  "deletion+insertion (torchcam)": "torchcam DeletionInsertionMetric",
                  "average_drop (torchcam)": "torchcam ClassificationMetric (batched)"}
    for name, w in res["workloads"].items():
        ours = {"label": f"jaxcam {name.split(' (')[0]}", **w["jaxcam"]}
        base = {"label": references.get(name, name), **w["reference"]}
        base.setdefault("min_s", base["median_s"])
        base.setdefault("max_s", base["median_s"])
        ours.setdefault("compile_s", w["jaxcam"].get("compile_s"))
        agreement = {"max_abs_diff": w["max_abs_diff"], "pearson_r": w["pearson_r"]}
        extra = {}
        if "forwards_alone" in w:  # ROAD: its time over its own forwards alone (the floor of the metric)
            fa = w["forwards_alone"]
            extra = {"forwards_alone_ms": fa["median_s"] * 1e3, "x_own_forwards": w["x_forwards"],
                     "x_own_forwards_pairs": w["x_forwards_pairs"]}
            unit["notes"].append(f"{name.split(' (')[0]}: {w['jaxcam']['median_s']:.2f} s (default noise) = "
                                 f"{w['x_forwards']:.2f}x its {fa['forwards']} forwards alone ({fa['median_s']:.2f} s, "
                                 f"same chunks, no imputation; per-pair median {w['x_forwards_pairs']:.2f}x), "
                                 f"{w['speedup']:.1f}x {base['label']}; other processes "
                                 f"{w['other_processes_share']:.0%} of the machine while timed")
        unit["rows"].append(row(name.split(" (")[0], st.info(), ours, base, agreement, floor,
                                baseline_label=base["label"], **extra))
    unit["detail"] = {k: v for k, v in res.items() if k != "env"}
    return unit


# ------------------------------------------------------------------------------------ fresh-process probes
PROBE = os.path.join(HERE, "probe.py")


def run_probe(argv: list[str], env: dict | None = None, timeout: float = 900) -> tuple[dict, float]:
    """Run ``probe.py`` in a fresh process: ``(its result, wall-clock time of the spawn)``."""
    t_spawn = time.time()
    p = subprocess.run([sys.executable, PROBE, *argv], env=env, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("PROBE-RESULT ")]
    if p.returncode != 0 or not lines:
        tail = " | ".join((p.stderr or p.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"probe {' '.join(argv)} failed (exit {p.returncode}): {tail}")
    return json.loads(lines[-1][len("PROBE-RESULT "):]), t_spawn


def first_map(S: Suite, models, pgc_model: str | None) -> dict:
    """Time to the first map in a fresh process, cold (empty JAX compilation cache) and warm (the same cache
    directory, filled by the cold run), for each of ``models`` ("embedded" = ``load_model()``); the same for
    pytorch-grad-cam on ``pgc_model``. Import, model load and image load are reported apart."""
    unit = new_unit("first_map", models=list(models), pgc_model=pgc_model)
    unit["first_map"] = []
    pgc_total = None
    if pgc_model:
        res, t0 = run_probe(["first-map", "--side", "pgc", "--model", pgc_model, "--threads", str(S.threads)])
        pgc_total = _first_map_entry(res, t0, "pytorch-grad-cam", pgc_model, "n/a")
        unit["first_map"].append(pgc_total)
        S.log(f"  pytorch-grad-cam {pgc_model}: first map {pgc_total['total_s']:.2f} s "
              f"(import {pgc_total['import_s']:.2f} s)")
    for m in models:
        cache = tempfile.mkdtemp(prefix="jaxcam-bench-cache-")
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
        try:
            for state in ("cold", "warm"):
                res, t0 = run_probe(["first-map", "--side", "jaxcam", "--model", m], env=env)
                entry = _first_map_entry(res, t0, "jaxcam", m, state)
                entry["cache_files"] = sum(len(f) for _, _, f in os.walk(cache))
                unit["first_map"].append(entry)
                S.log(f"  jaxcam {m} {state}: first map {entry['total_s']:.2f} s (import {entry['import_s']:.2f} s, "
                      f"load {entry['load_s']:.2f} s, explain {entry['explain_s']:.2f} s; cache files "
                      f"{entry['cache_files']})")
                if pgc_total and res["model"].startswith(pgc_model):
                    ours = {"label": f"jaxcam first map ({state} cache)", **H.summarize([entry["total_s"]])}
                    base = {"label": "pytorch-grad-cam first map", **H.summarize([pgc_total["total_s"]])}
                    unit["rows"].append(row(f"time to first map ({state})", {"model": res["model"],
                                            "batch": entry["images"], "size": 224, "dtype": "float32"}, ours, base,
                                            {"kind": "wall time of a fresh process"}, None))
                S.progress(unit)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return unit


def _first_map_entry(res: dict, t_spawn: float, side: str, model: str, state: str) -> dict:
    return {"side": side, "model": res["model"], "requested": model, "cache": state, "images": res["shape"][0],
            "import_s": res["t_import"] - t_spawn, "load_s": res["t_load"] - res["t_import"],
            "images_s": res["t_images"] - res["t_load"], "explain_s": res["t_map"] - res["t_images"],
            "total_s": res["t_map"] - t_spawn, "interpreter_start_s": res["t_start"] - t_spawn,
            **{k: res[k] for k in ("cache_min_compile_time_s", "cache_min_entry_size_bytes") if k in res}}


def memory(S: Suite, model: str, batches, size: int, sides=("jaxcam", "pytorch-grad-cam", "hand-written")) -> dict:
    """Peak memory of Grad-CAM in a fresh process per side and batch (see ``probe.py``)."""
    unit = new_unit("memory", model=model, batches=list(batches), size=size)
    unit["memory"] = []
    flag = {"jaxcam": "jaxcam", "pytorch-grad-cam": "pgc", "hand-written": "handwritten"}
    for b in batches:
        for side in sides:
            res, _ = run_probe(["memory", "--side", flag[side], "--model", model, "--batch", str(b), "--size",
                                str(size), "--threads", str(S.threads)])
            res["side"] = side
            unit["memory"].append(res)
            xla = res.get("xla_memory_analysis")
            temp = f", XLA temp {xla['temp_size_in_bytes'] / 2 ** 20:.0f} MiB" if isinstance(xla, dict) and \
                "temp_size_in_bytes" in xla else ""
            S.log(f"  {side:18s} batch {b}: peak {res['peak_first_bytes'] / 2 ** 20:8.0f} MiB first call, "
                  f"{res['peak_steady_bytes'] / 2 ** 20:8.0f} MiB steady{temp}")
            S.progress(unit)
    return unit


WORKLOADS = {"gradcam": gradcam, "methods": methods, "all_gradient": all_gradient, "scorecam": scorecam,
             "ablationcam": ablationcam, "batch_sweep": batch_sweep, "size_sweep": size_sweep, "bf16": bf16,
             "robustness": robustness, "metrics": metrics, "first_map": first_map, "memory": memory,
             "profile": J.profile, "road_floor": lambda S, **cfg: __import__("bench_metrics").road_floor(S, **cfg)}
