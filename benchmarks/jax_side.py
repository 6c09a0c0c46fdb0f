"""The jaxcam side of the benchmark suite: the calls that are timed, the bare jitted forward (the physical floor),
and ahead-of-time compilation of an ``explain`` program (its compile time apart from any run, and the compiled
XLA program's ``memory_analysis()``).

No torch here: imported by ``benchmarks/workloads.py`` and ``benchmarks/probe.py``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

import jaxcam

FLOAT_DTYPES = ("float32", "bfloat16")


def explain_fn(model, x, method, **kw):
    """A blocking call of :func:`jaxcam.explain` on the preprocessed batch ``x`` (maps, or a dict of maps)."""
    return lambda: jax.block_until_ready(jaxcam.explain(model, x, method, preprocessed=True, **kw))


def _program(model, method, kw):
    """The jitted program ``explain(model, x, method, **kw)`` runs, and its argument list builder."""
    from jaxcam import _explain as E

    kw = dict(kw)
    layer = kw.pop("layer", None)
    try:
        cfg, _ = E._configure(model, method, layer, **kw)
        return E._program(model.tapped, cfg)
    except (AttributeError, TypeError):
        if not isinstance(method, str):
            raise
        return jaxcam.explainer(model, method, layer=layer, **kw).program  # the public route, one method


def compile_explain(model, x, method, **kw):
    """Compile ``explain(model, x, method, **kw)``'s program ahead of time: ``(seconds, compiled)``. The compiled
    executable lands in JAX's compilation caches, so the first ``explain`` call afterwards only traces."""
    program = _program(model, method, kw)
    t0 = time.perf_counter()
    compiled = program.lower(model.params, x, None, jax.random.key(0)).compile()
    return time.perf_counter() - t0, compiled


def memory_analysis(compiled) -> dict:
    """The compiled program's memory analysis (bytes) as a plain dict."""
    ma = compiled.memory_analysis()
    if ma is None:
        return {"unavailable": "memory_analysis() returned None on this backend"}
    fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "generated_code_size_in_bytes")
    return {f: int(getattr(ma, f)) for f in fields if hasattr(ma, f)}


def forward_fn(model, x, dtype: str = "float32"):
    """The bare jitted forward of ``model`` on ``x`` (logits only, nothing else): the physical floor of any CAM.
    ``dtype="bfloat16"`` casts parameters and input as ``compute_dtype="bfloat16"`` does. Returns
    ``(blocking call, jitted function)``."""
    if dtype == "float32":
        fwd = jax.jit(lambda p, v: model.forward_fn.func(p, v))
        params = model.params
    else:
        dt = jnp.dtype(dtype)
        fwd = jax.jit(lambda p, v: model.forward_fn.func(p, v.astype(dt)).astype(jnp.float32))
        params = jax.tree.map(lambda a: a.astype(dt) if jnp.issubdtype(a.dtype, jnp.floating) else a, model.params)
        params = jax.block_until_ready(params)
    return (lambda: jax.block_until_ready(fwd(params, x))), fwd


# ------------------------------------------------------------------------------------------- the profile unit
class JaxSuite:
    """What :func:`profile` needs of ``workloads.Suite`` (settings, a log, progress), for runs without torch."""

    def __init__(self, *, repeats: int = 3, threads: int = 1, quick: bool = False, log=print):
        self.repeats, self.threads, self.quick, self.log = repeats, threads, quick, log
        self.progress = lambda unit: None
        self.out_prefix = None


def cost_analysis(compiled) -> dict:
    """The compiled program's ``cost_analysis()`` totals (flops, transcendentals, bytes accessed) as a plain dict."""
    try:
        ca = compiled.cost_analysis()
    except Exception as exc:  # noqa: BLE001 - some backends have none; recorded
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
    if isinstance(ca, (list, tuple)):  # older jax: one dict per device program
        ca = ca[0] if ca else None
    if not ca:
        return {"unavailable": "cost_analysis() returned nothing on this backend"}
    return {k: float(v) for k, v in ca.items() if k in ("flops", "transcendentals", "bytes accessed",
                                                         "optimal_seconds")}


def op_times(xspace_path: str, top: int = 40) -> dict:
    """Time per XLA op from a ``jax.profiler`` trace (its ``.xplane.pb``), read with ``jax.profiler.ProfileData``
    (no TensorBoard needed): the events of the device's "XLA Ops" line on GPUs, the thunks that carry an ``hlo_op``
    on the CPU. Only the module with the most time (the profiled program) is kept. Returns the total, the ``top``
    ops by time, and the time per op kind (the name without its number: ``fusion``, ``convolution``...)."""
    pd = jax.profiler.ProfileData.from_file(xspace_path)
    per_module: dict[str, dict[str, list]] = {}
    for plane in pd.planes:
        for line in plane.lines:
            for ev in line.events:
                stats = dict(ev.stats)
                if line.name != "XLA Ops" and "hlo_op" not in stats:
                    continue
                if ev.name.startswith("end: "):
                    continue
                module = str(stats.get("hlo_module", plane.name))
                name = str(stats.get("hlo_op", ev.name))
                acc = per_module.setdefault(module, {}).setdefault(name, [0.0, 0, str(stats.get("hlo_category", ""))])
                acc[0] += float(ev.duration_ns)
                acc[1] += 1
    if not per_module:
        return {"unavailable": "the trace has no XLA op events"}
    module = max(per_module, key=lambda m: sum(v[0] for v in per_module[m].values()))
    ops = per_module[module]
    total = sum(v[0] for v in ops.values())
    kinds: dict[str, float] = {}
    for name, (ns, _, cat) in ops.items():
        kind = cat or name.split(".")[0]
        kinds[kind] = kinds.get(kind, 0.0) + ns
    ranked = sorted(ops.items(), key=lambda kv: -kv[1][0])[:top]
    return {"module": module, "modules_seen": sorted(per_module), "total_ms": total / 1e6, "ops": len(ops),
            "top": [{"op": n, "ms": ns / 1e6, "share": ns / total if total else 0.0, "count": c,
                     **({"category": cat} if cat else {})} for n, (ns, c, cat) in ranked],
            "by_kind_ms": {k: v / 1e6 for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}}


def profile(S, model: str, batch: int, size: int, method: str = "gradcam", calls: int = 3) -> dict:
    """The ``profile`` workload: jaxcam's ``method`` program at ``batch``: compiled ahead of time (compile time,
    ``cost_analysis()``, ``memory_analysis()``), timed, then ``calls`` calls under ``jax.profiler.trace`` into
    ``<out_prefix>-trace/`` and the time per XLA op read back from that trace (:func:`op_times`). No torch."""
    import glob
    import os
    import shutil
    import tempfile

    import harness as H
    from jaxcam.models import random_state_dict

    unit = {"workload": "profile", "config": {"model": model, "batch": batch, "size": size, "method": method},
            "measurements": [], "rows": [], "notes": []}
    m = jaxcam.load_model(model, weights=random_state_dict(model, seed=0))
    x = jax.block_until_ready(jax.device_put(H.photos(batch, size, m.arch.mean, m.arch.std)))
    compile_s, compiled = compile_explain(m, x, method)
    costs, mem = cost_analysis(compiled), memory_analysis(compiled)
    del compiled
    fn = explain_fn(m, x, method)
    _, first = H.timed_call(fn)
    stats = H.summarize([H.timed_call(fn)[1] for _ in range(max(2, S.repeats))])
    prefix = S.out_prefix or os.path.join(tempfile.gettempdir(), "jaxcam-profile")
    trace_dir = f"{prefix}-trace"
    shutil.rmtree(trace_dir, ignore_errors=True)
    os.makedirs(trace_dir, exist_ok=True)
    info = {"model": model, "batch": batch, "size": size, "dtype": "float32", "method": method,
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind}
    meas = {"side": "jaxcam", "label": f"jaxcam {method} (profiled program)", **info, "compile_s": compile_s,
            "first_call_s": first, **stats, "cost_analysis": costs, "xla_memory": mem}
    if "flops" in costs and stats["median_s"] > 0:
        meas["achieved_tflop_s"] = costs["flops"] / stats["median_s"] / 1e12
    unit["measurements"].append(meas)
    unit["profile"] = {**info, "trace_dir": trace_dir, "calls_traced": calls}
    S.log(f"  {meas['label']:46s} {stats['median_s'] * 1e3:10.1f} ms (compile {compile_s:.2f} s); "
          f"cost analysis: {costs}")
    try:
        with jax.profiler.trace(trace_dir):
            for _ in range(calls):
                fn()
        files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
        if not files:
            raise RuntimeError(f"no .xplane.pb written under {trace_dir}")
        unit["profile"]["xplane"] = files[-1]
        ops = op_times(files[-1])
        unit["profile"]["op_times"] = ops
        if "top" in ops:
            S.log(f"  traced {calls} call(s): {ops['total_ms']:.1f} ms in {ops['ops']} XLA ops; top: " +
                  ", ".join(f"{o['op']} {o['ms']:.2f} ms" for o in ops["top"][:5]))
    except Exception as exc:  # noqa: BLE001 - a profiler that cannot start must not lose the unit
        unit["profile"]["trace_error"] = f"{type(exc).__name__}: {exc}"
        unit["notes"].append(f"profile trace unavailable: {type(exc).__name__}: {exc}")
        S.log(f"  trace unavailable: {type(exc).__name__}: {exc}")
    return unit
