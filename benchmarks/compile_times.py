"""Time to first map per method set, and whether the persistent compilation cache hits across processes.

    python benchmarks/compile_times.py [--sets gradcam gradient each_gradient scorecam all] [--no-all]
                                       [--commands explain evaluate robustness ablate] [--out FILE.md]

Part 1 (issue 17, "time to first map"): for the embedded model (``jaxcam.load_model()``) at batch 1, each method set
is explained in a fresh process with the persistent cache switched off (``JAXCAM_COMPILATION_CACHE=off``, and JAX's
own cache directory unset), so the first call pays the whole compilation. Per set: the first call (trace + compile
+ run), a second call (run only), how many explain programs were traced (``jaxcam._explain.TRACE_COUNT``) and how
many XLA programs were compiled during the first call (JAX's ``/jax/core/compile/backend_compile_duration`` events;
small eager operations count too). ``each_gradient`` explains every gradient method alone, one after another in
one process, and sums the times: the price of not sharing one program.

Part 2 (the persistent cache): every CLI command runs twice in fresh processes sharing one new temporary cache
directory (``JAXCAM_COMPILATION_CACHE=DIR``). Per run: wall time, and the cache hits and misses JAX logs (with the
names of the programs that missed on the second run: every miss there is a program the cache failed to serve).

Results go to ``benchmarks/results/compile_times.md`` (written atomically). Keep runs small on a shared CPU: the
sets use batch 1 and the commands two sample photos and a couple of methods.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SETS = ("gradcam", "gradient", "each_gradient", "scorecam", "all")
COMMANDS = ("explain", "evaluate", "robustness", "ablate")

# ------------------------------------------------------------------------------------------ part 1: method sets

SET_CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np, jax, jax.numpy as jnp, jaxcam
from jaxcam import _explain
from jaxcam.methods import gradient_methods

compiles = {{"n": 0, "s": 0.0, "names": []}}
def on_duration(event, duration_secs, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        compiles["n"] += 1
        compiles["s"] += duration_secs
        compiles["names"].append(f"{{kwargs.get('fun_name', '?')}} {{duration_secs:.2f}}s")
jax.monitoring.register_event_duration_secs_listener(on_duration)

name = {name!r}
model = jaxcam.load_model()
x = np.random.default_rng(0).standard_normal((1, model.input_size, model.input_size, 3)).astype(np.float32)
jax.block_until_ready(jnp.zeros(1) + 1)  # the backend started before any timing
grads = list(gradient_methods())
groups = {{"gradcam": [["gradcam"]], "gradient": [grads], "each_gradient": [[m] for m in grads],
          "scorecam": [["scorecam"]], "all": ["all"]}}[name]
out = {{"first_s": 0.0, "second_s": 0.0, "traces": 0, "compiles": 0, "compile_s": 0.0, "methods": 0, "names": []}}
for group in groups:
    traces, n, s = _explain.TRACE_COUNT["explain"], compiles["n"], compiles["s"]
    t = time.perf_counter()
    maps = jax.block_until_ready(jaxcam.explain(model, x, group, preprocessed=True))
    out["first_s"] += time.perf_counter() - t
    out["traces"] += _explain.TRACE_COUNT["explain"] - traces
    out["compiles"] += compiles["n"] - n
    out["compile_s"] += compiles["s"] - s
    out["names"] += compiles["names"][n:]
    out["methods"] += len(maps)
    t = time.perf_counter()
    jax.block_until_ready(jaxcam.explain(model, x, group, preprocessed=True))
    out["second_s"] += time.perf_counter() - t
    if not all(bool(np.isfinite(np.asarray(v)).all()) for v in maps.values()):
        raise SystemExit(f"non-finite maps in {{group}}")
print(json.dumps(out))
"""


def _env(cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAXCAM_COMPILATION_CACHE=cache, JAX_PLATFORMS=env.get("JAX_PLATFORMS", "cpu"))
    return env


def time_set(name: str, timeout: float) -> dict:
    """One method set in a fresh process without a persistent cache: the child's JSON line, plus its wall time
    (``{"timeout_s": timeout}`` when it runs longer)."""
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", SET_CHILD.format(root=ROOT, name=name)], capture_output=True,
                              text=True, env=_env("off"), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timeout_s": timeout}
    if proc.returncode:
        raise RuntimeError(f"method set {name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t
    return result


# ---------------------------------------------------------------------------- part 2: the cache across processes

CLI_CHILD = r"""
import json, logging, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
counts = {{"hits": [], "misses": []}}

class Recorder(logging.Handler):
    def emit(self, record):
        text = record.getMessage()
        if text.startswith("PERSISTENT COMPILATION CACHE MISS for "):
            counts["misses"].append(text.split("'")[1])
        elif text.startswith("Persistent compilation cache hit for "):
            counts["hits"].append(text.split("'")[1])

log = logging.getLogger("jax._src.compiler")
log.setLevel(logging.DEBUG)
log.addHandler(Recorder(logging.DEBUG))
log.propagate = False
import jax
compiles = {{"n": 0, "slow": []}}
def on_duration(event, duration_secs, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        compiles["n"] += 1  # a program compiled or read from the persistent cache
        if duration_secs >= 0.5:
            compiles["slow"].append(f"{{kwargs.get('fun_name', '?')}} {{duration_secs:.1f}}s")
jax.monitoring.register_event_duration_secs_listener(on_duration)
from jaxcam.cli import main
rc = main({argv!r})
print(json.dumps({{"rc": rc, "wall_s": time.perf_counter() - t0, "compiles": compiles["n"], "slow": compiles["slow"],
                  "hits": len(counts["hits"]), "misses": counts["misses"]}}))
"""


def command_argv(command: str, out: str) -> list[str]:
    """A small run of each command: two sample photos, a couple of methods, the embedded model."""
    from jaxcam.data import sample_images

    photos = []
    folder = os.path.join(out, "photos")
    os.makedirs(folder, exist_ok=True)
    from PIL import Image
    import numpy as np

    for name, img in list(sample_images().items())[:2]:
        photos.append(os.path.join(folder, f"{name}.png"))
        if not os.path.exists(photos[-1]):
            pixels = np.asarray(img, np.float32)  # RGB in [0, 1]
            Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)).save(photos[-1])
    target = os.path.join(out, f"{command}-out")
    return {
        "explain": ["explain", *photos, "--method", "gradcam", "gradcam++", "--out", target],
        "evaluate": ["evaluate", *photos, "--methods", "gradcam", "gradcam++", "--metrics", "deletion_auc",
                     "sparseness", "--out", target],
        "robustness": ["robustness", *photos, "--methods", "gradcam", "gradcam++", "--noises", "gaussian",
                       "--severities", "1", "3", "--draws", "1", "--out", target],
        "ablate": ["ablate", *photos, "--method", "gradcam", "--out", target],
    }[command]


def cache_runs(command: str, work: str) -> list[dict]:
    """The command twice, each in a fresh process, sharing one empty cache directory; each run's output directory
    is removed before the next so the second does the same work."""
    import shutil

    cache = os.path.join(work, f"cache-{command}")
    runs = []
    for _ in range(2):
        argv = command_argv(command, work)
        shutil.rmtree(argv[argv.index("--out") + 1], ignore_errors=True)
        proc = subprocess.run([sys.executable, "-c", CLI_CHILD.format(root=ROOT, argv=argv)], capture_output=True,
                              text=True, env=_env(cache), cwd=work)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode or not lines or not lines[-1].startswith("{"):
            raise RuntimeError(f"jaxcam {' '.join(argv)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        run = json.loads(lines[-1])
        if run["rc"]:
            raise RuntimeError(f"jaxcam {' '.join(argv)} exited {run['rc']}:\n{proc.stderr[-3000:]}")
        runs.append(run)
    return runs


# ------------------------------------------------------------------------------------------------------ report


def markdown(sets: dict, commands: dict, skipped: list[str], cmd: str) -> str:
    import jax

    lines = ["# Time to first map and the persistent compilation cache", "",
             f"Measured with `{cmd}` on {platform.machine()} with {os.cpu_count()} CPU cores (shared with other "
             f"work: wall times vary by tens of per cent), jax {jax.__version__}, backend cpu.", ""]
    if sets:
        lines += ["## Time to first map per method set (embedded model, batch 1, no persistent cache)", "",
                  "first call = trace + compile + run; second call = run only; programs traced = explain programs "
                  "(`jaxcam._explain.TRACE_COUNT`); XLA compiles = every compiled program during the first call(s), "
                  "small eager operations included.", "",
                  "| method set | methods | first call (s) | second call (s) | XLA compile (s) | explain programs "
                  "traced | XLA compiles |", "|---|---|---|---|---|---|---|"]
        for name, r in sets.items():
            if "timeout_s" in r:
                lines.append(f"| {name} | | > {r['timeout_s']:.0f} (stopped) | | | | |")
                continue
            lines.append(f"| {name} | {r['methods']} | {r['first_s']:.1f} | {r['second_s']:.2f} | "
                         f"{r['compile_s']:.1f} | {r['traces']} | {r['compiles']} |")
        if all(k in sets and "timeout_s" not in sets[k] for k in ("gradient", "each_gradient")):
            g, e = sets["gradient"], sets["each_gradient"]
            lines += ["", f"The {g['methods']} gradient methods in one explain call: one program, first call "
                      f"{g['first_s']:.1f} s; each alone: {e['traces']} programs, {e['first_s']:.1f} s in all "
                      f"({e['first_s'] / g['first_s']:.1f}x)."]
        lines.append("")
    if skipped:
        lines += [f"Not measured: {', '.join(skipped)} (left out with --no-all or --sets).", ""]
    if commands:
        lines += ["## The persistent cache across processes (each command twice, fresh processes, one new cache "
                  "directory)", "",
                  "| command | first run (s) | second run (s) | compiles (1st / 2nd) | cache hits 2nd | misses 2nd |",
                  "|---|---|---|---|---|---|"]
        for c, (a, b) in commands.items():
            missed = ", ".join(sorted(set(b["misses"]))) or "none"
            lines.append(f"| jaxcam {c} | {a['wall_s']:.1f} | {b['wall_s']:.1f} | {a['compiles']} / "
                         f"{b['compiles']} | {b['hits']} | {len(b['misses'])} ({missed}) |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="*", choices=SETS, default=list(SETS), help="method sets to time")
    p.add_argument("--no-all", action="store_true", help="leave out the 'all' set (minutes of compilation)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per method set before it is stopped")
    p.add_argument("--commands", nargs="*", choices=COMMANDS, default=list(COMMANDS),
                   help="CLI commands whose cache hits to check")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "compile_times.md"))
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from jaxcam.files import atomic_write

    names = [s for s in args.sets if not (s == "all" and args.no_all)]
    skipped = [s for s in SETS if s not in names]
    sets, commands = {}, {}
    for name in names:
        sets[name] = time_set(name, args.timeout)
        print(name, json.dumps(sets[name]), flush=True)
    with tempfile.TemporaryDirectory(prefix="jaxcam-cache-") as work:
        for c in args.commands:
            commands[c] = cache_runs(c, work)
            print(c, json.dumps(commands[c]), flush=True)
    cmd = "python benchmarks/compile_times.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(sets, commands, skipped, cmd.strip())
    atomic_write(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
