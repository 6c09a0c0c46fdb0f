"""The suite's report: a markdown table and PNG plots from a results dict (the JSON ``benchmarks/run.py`` writes).

- ``<prefix>.md``: one table row per comparison (workload, model, batch, jaxcam ms, baseline, baseline ms,
  speed-up, each side's time as a multiple of the bare jitted forward, agreement), then time to first map, peak
  memory, notes, and the units that were skipped or failed;
- ``<prefix>-throughput.png``: images/s against batch size (and against image size) per side;
- ``<prefix>-speedup.png``: jaxcam's speed-up per method and baseline (log scale).

No JAX or torch: also run on its own to redraw the report of an existing results file:

    python benchmarks/report.py benchmarks/results/suite-cpu.json
"""

from __future__ import annotations

import json
import math
import os
import sys

COLUMNS = ("workload", "model", "batch", "size", "dtype", "jaxcam ms", "baseline", "baseline ms", "speed-up",
           "jaxcam x fwd", "baseline x fwd", "agreement")


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _ms(v, spread=None) -> str:
    if v is None:
        return "-"
    text = _num(v)
    if spread and spread[1] > spread[0]:
        text += f" ({_num(spread[0])}-{_num(spread[1])})"
    return text


def agreement_text(a) -> str:
    """One cell: the agreement of a comparison, or why it was refused."""
    if not a:
        return "-"
    if "refused" in a:
        detail = []
        if a.get("max_abs_diff") is not None:
            detail.append(f"max abs diff {_num(a['max_abs_diff'])}")
        if a.get("pearson_r") is not None:
            detail.append(f"r {a['pearson_r']:.4f}")
        reason = a["refused"] if not detail else ", ".join(detail)
        return f"REFUSED, not timed ({reason})".replace("|", "/")
    if "min_image_r" in a:
        return f"r {a['pearson_r']:.5f} (min per image {a['min_image_r']:.5f})"
    if "max_abs_diff" in a:
        return f"max abs diff {a['max_abs_diff']:.1e}, r {a['pearson_r']:.6f}"
    return a.get("kind", "-")


def rows_of(results: dict) -> list[dict]:
    """Every unit's rows, in run order, each comparison once (``methods`` repeats ``gradcam``'s Grad-CAM rows)."""
    out, seen = [], set()
    for u in results.get("units", {}).values():
        for r in u.get("rows", []):
            key = (r["workload"], r["model"], r["batch"], r.get("size"), r.get("dtype"), r.get("jaxcam"),
                   r.get("baseline"))
            if key not in seen:
                seen.add(key)
                out.append(r)
    return out


def table(rows: list[dict]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        if r.get("throughput_ratio") is not None:
            speed = f"{r['throughput_ratio']:.2f}x (bf16/fp32 throughput)"
        cells = [r["workload"], r["model"], str(r["batch"]), str(r.get("size", "-")), r.get("dtype", "float32"),
                 _ms(r["jaxcam_ms"], r.get("jaxcam_spread_ms")), (r.get("baseline") or "-").replace("|", "/"),
                 _ms(r.get("baseline_ms"), r.get("baseline_spread_ms")), speed,
                 _num(r.get("x_forward")), _num(r.get("baseline_x_forward")), agreement_text(r.get("agreement"))]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _env_lines(results: dict) -> list[str]:
    env, suite = results.get("env", {}), results.get("suite", {})
    v = env.get("versions", {})
    device = env.get("torch_cuda") or env.get("jax_device_kind") or "?"
    threads = env.get("threads", {})
    lines = [f"- device: {device} ({env.get('jax_backend', '?')}); CPU {env.get('processor', '?')}, "
             f"{env.get('cpus', '?')} cores ({env.get('cpu_affinity', '?')} usable), {env.get('memory_gib', '?')} GiB",
             f"- threads: torch {env.get('torch_threads', '?')}, XLA_FLAGS `{threads.get('XLA_FLAGS', '')}`",
             "- versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)),
             f"- run: {'--quick' if suite.get('quick') else 'full'}, started {suite.get('started', '?')}, "
             f"wall {_num(suite.get('wall_s'))} s, command `{suite.get('command', '')}`"]
    return lines


def profile_lines(unit: dict) -> list[str]:
    """The ``profile`` unit's summary: timing, cost analysis and the XLA ops that took the most time."""
    p, m = unit["profile"], unit["measurements"][0]
    ca = m.get("cost_analysis", {})
    lines = [f"- {m['label']}, {p['model']} batch {p['batch']} at {p['size']} px on {p.get('device_kind', '?')}: "
             f"median {_num(m['median_s'] * 1e3)} ms, compile {_num(m.get('compile_s'))} s; "
             f"cost analysis {_num(ca.get('flops', 0) / 1e9)} GFLOP, {_num(ca.get('bytes accessed', 0) / 2 ** 20)} MiB "
             f"accessed" + (f", {_num(m['achieved_tflop_s'])} TFLOP/s achieved" if m.get("achieved_tflop_s") else ""),
             f"- trace: `{p.get('trace_dir', '-')}` ({p.get('calls_traced', '?')} calls)"]
    ops = p.get("op_times") or {}
    if p.get("trace_error"):
        lines.append(f"- trace unavailable: {p['trace_error']}")
    elif "top" in ops:
        lines.append(f"- {ops['ops']} XLA ops, {_num(ops['total_ms'])} ms in the traced calls; by kind: " +
                     ", ".join(f"{k} {_num(v)} ms" for k, v in list(ops["by_kind_ms"].items())[:6]))
        lines += ["", "| op | ms (all traced calls) | share | count |", "|---|---|---|---|"]
        lines += [f"| {o['op']} | {_num(o['ms'])} | {o['share']:.1%} | {o['count']} |" for o in ops["top"][:12]]
    return lines


def markdown(results: dict) -> str:
    """The whole markdown report of ``results``."""
    suite = results.get("suite", {})
    units = results.get("units", {})
    parts = [f"# jaxcam benchmark suite ({suite.get('device', '?')}{', quick' if suite.get('quick') else ''})", "",
             *_env_lines(results), "",
             "Times are medians (min-max over the repeats in parentheses); speed-up = baseline / jaxcam; "
             "`x fwd` = that side's time over the bare jitted forward of the same model, batch, size and dtype "
             "(the physical floor; on XLA's CPU backend the forward-only program can run slower than the Grad-CAM "
             "program, so `x fwd` below 1 happens). A baseline whose output disagrees with jaxcam's is not timed; "
             "a call of 5 s or more is timed once (its agreement run).", "",
             "## Results", "", table(rows_of(results))]
    fm = [e for u in units.values() for e in u.get("first_map", [])]
    if fm:
        parts += ["", "## Time to first map (fresh process, wall time from process start)", "",
                  "| side | model | cache | images | import s | model load s | image load s | explain s | total s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for e in fm:
            parts.append(f"| {e['side']} | {e['model']} | {e['cache']} | {e['images']} | {_num(e['import_s'])} | "
                         f"{_num(e['load_s'])} | {_num(e['images_s'])} | {_num(e['explain_s'])} | "
                         f"{_num(e['total_s'])} |")
    mem = [e for u in units.values() for e in u.get("memory", [])]
    if mem:
        parts += ["", "## Peak memory of Grad-CAM (fresh process, above the memory held after loading)", "",
                  "| model | batch | size | side | peak, first call MiB | peak, steady MiB | XLA temp MiB |",
                  "|---|---|---|---|---|---|---|"]
        for e in mem:
            xla = e.get("xla_memory_analysis")
            temp = _num(xla["temp_size_in_bytes"] / 2 ** 20) if isinstance(xla, dict) and \
                "temp_size_in_bytes" in xla else "-"
            parts.append(f"| {e['model']} | {e['batch']} | {e['size']} | {e['side']} | "
                         f"{_num(e['peak_first_bytes'] / 2 ** 20)} | {_num(e['peak_steady_bytes'] / 2 ** 20)} | "
                         f"{temp} |")
    profiles = [(k, u) for k, u in units.items() if u.get("profile") and u.get("measurements")]
    for k, u in profiles:
        parts += ["", f"## Profile: {k}", "", *profile_lines(u)]
    notes = [(k, n) for k, u in units.items() for n in u.get("notes", [])]
    other = [(k, u) for k, u in units.items() if u.get("status") not in (None, "ok")]
    if notes or other:
        parts += ["", "## Notes", ""]
        parts += [f"- {k}: {n}" for k, n in notes]
        parts += [f"- {k}: {u['status']}: {u.get('reason') or u.get('error', '')}" for k, u in other]
    timing = [(k, u) for k, u in units.items() if u.get("elapsed_s") is not None]
    if timing:
        parts += ["", "## Time per unit", "",
                  "Other processes' CPU time while the unit ran, as a share of the machine (~0 on an idle machine; "
                  "above 10% the timings are not trustworthy, torch's most of all).", "",
                  "| unit | status | seconds | other processes |", "|---|---|---|---|"]
        for k, u in timing:
            share = u.get("other_processes_share")
            flag = "-" if share is None else f"{share:.0%}" + (" (busy machine)" if share > 0.1 else "")
            parts.append(f"| {k} | {u.get('status', '?')} | {_num(u['elapsed_s'])} | {flag} |")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------------- plots
def _series(rows: list[dict], sweep: str) -> dict[str, list[tuple[float, float]]]:
    """``{side: [(x, images/s)]}`` from a sweep's rows (x: batch or size)."""
    key = "batch" if sweep == "batch" else "size"
    out: dict[str, dict] = {}
    for r in rows:
        if r.get("sweep") != sweep:
            continue
        x = r[key]
        side = r.get("series") or r["jaxcam"]
        out.setdefault(side, {})[x] = r["images_per_s"]
        if r.get("baseline") and r.get("baseline_images_per_s"):
            out.setdefault(r["baseline"], {})[x] = r["baseline_images_per_s"]
    return {k: sorted(v.items()) for k, v in out.items()}


def plot_throughput(results: dict, path: str) -> str | None:
    rows = rows_of(results)
    sweeps = [s for s in ("batch", "size") if _series(rows, s)]
    if not sweeps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(7 * len(sweeps), 4.8), squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        model = next(r["model"] for r in rows if r.get("sweep") == sweep)
        for side, pts in _series(rows, sweep).items():
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=side)
        ax.set_xlabel("batch size" if sweep == "batch" else "image size (px)")
        ax.set_ylabel("images / s")
        if sweep == "batch":
            ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"Grad-CAM throughput, {model} ({results.get('suite', {}).get('device', '?')})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_speedups(results: dict, path: str) -> str | None:
    rows = [r for r in rows_of(results) if r.get("speedup") and not r.get("sweep")
            and r.get("throughput_ratio") is None and "floor" not in r["workload"]]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['workload']} ({r['model']}, b{r['batch']}) vs {r['baseline']}" for r in rows]
    values = [r["speedup"] for r in rows]
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(rows) + 1.5))
    colors = ["tab:blue" if v >= 1 else "tab:red" for v in values]
    ax.barh(range(len(rows)), values, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.1f}x", va="center", fontsize=7)
    ax.set_xlabel("speed-up of jaxcam (baseline time / jaxcam time, log scale)")
    ax.set_title(f"jaxcam speed-up per workload and baseline ({results.get('suite', {}).get('device', '?')})")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: dict, prefix: str) -> list[str]:
    """Write ``<prefix>.md`` and the plots; returns the paths written."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    written = []
    with open(prefix + ".md", "w") as f:
        f.write(markdown(results))
    written.append(prefix + ".md")
    for fn, suffix in ((plot_throughput, "-throughput.png"), (plot_speedups, "-speedup.png")):
        p = fn(results, prefix + suffix)
        if p:
            written.append(p)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].endswith(".json"):
        sys.exit("usage: python benchmarks/report.py RESULTS.json")
    with open(sys.argv[1]) as fh:
        print("\n".join(write_report(json.load(fh), sys.argv[1][:-len(".json")])))
