"""The benchmark suite's own machinery (``benchmarks/``): the report writer, the harness's refusal to time different
answers, run.py's arguments and plan, and ``jaxcam bench``'s errors. Fast, and without torch except where marked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import report  # noqa: E402
import run as suite_run  # noqa: E402

from jaxcam.cli import bench as cli_bench  # noqa: E402
from jaxcam.cli import main as cli_main  # noqa: E402


def synthetic_results() -> dict:
    """A results dict shaped like run.py's, written by hand (no workload runs)."""
    info = {"model": "resnet50", "batch": 8, "size": 224, "dtype": "float32"}

    def row(workload, jax_ms, base_ms, agreement, baseline="pytorch-grad-cam GradCAM", batch=8, **extra):
        r = {"workload": workload, **info, "batch": batch, "jaxcam": "jaxcam gradcam", "jaxcam_ms": jax_ms,
             "jaxcam_spread_ms": [jax_ms * 0.9, jax_ms * 1.1], "jaxcam_repeats": 3, "compile_s": 1.2,
             "images_per_s": batch / jax_ms * 1e3, "baseline": baseline, "baseline_ms": base_ms,
             "baseline_spread_ms": [base_ms, base_ms * 1.2] if base_ms else None, "baseline_repeats": 3,
             "speedup": base_ms / jax_ms if base_ms else None,
             "baseline_images_per_s": batch / base_ms * 1e3 if base_ms else None, "x_forward": 1.05,
             "baseline_x_forward": 2.5 if base_ms else None, "agreement": agreement, **extra}
        return r

    ok = {"max_abs_diff": 3e-6, "pearson_r": 0.9999999}
    sweep = []
    for b in (1, 2, 4, 8):
        sweep.append(row("batch sweep", 10.0 * b, None, {"kind": "floor"}, baseline=None, batch=b,
                         series="jax forward", sweep="batch"))
        sweep.append(row("batch sweep", 12.0 * b, 40.0 * b, ok, batch=b, series="jaxcam gradcam", sweep="batch"))
    return {
        "suite": {"quick": True, "device": "cpu", "wall_s": 12.5, "started": "2026-01-01T00:00:00Z",
                  "command": "python benchmarks/run.py --quick"},
        "env": {"processor": "Test CPU", "cpus": 2, "cpu_affinity": 2, "jax_backend": "cpu", "jax_device_kind": "cpu",
                "torch_threads": 2, "threads": {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"},
                "versions": {"jax": "0.10.2", "torch": "2.14.1"}},
        "units": {
            "gradcam/resnet50": {"workload": "gradcam", "status": "ok", "elapsed_s": 30.0, "notes": [
                "torch.compile unavailable: RuntimeError: no compiler"], "rows": [
                row("gradcam", 290.0, 740.0, ok),
                row("gradcam", 290.0, None, {"refused": "outputs disagree", "max_abs_diff": 0.3,
                                             "pearson_r": 0.97}, baseline="torchcam GradCAMpp"),
                row("gradcam", 290.0, 900.0, {"kind": "floor (different output: not compared)"},
                    baseline="PyTorch forward+backward (floor)")]},
            "batch_sweep/resnet50": {"workload": "batch_sweep", "status": "ok", "rows": sweep},
            "bf16/resnet50": {"workload": "bf16", "status": "ok", "rows": [
                row("gradcam bf16", 350.0, 290.0, {"pearson_r": 0.9995, "min_image_r": 0.998},
                    baseline="jaxcam float32", throughput_ratio=290.0 / 350.0)]},
            "first_map": {"workload": "first_map", "status": "ok", "rows": [], "first_map": [
                {"side": "jaxcam", "model": "efficientnet_lite0", "cache": "cold", "images": 4, "import_s": 1.5,
                 "load_s": 0.5, "images_s": 0.1, "explain_s": 3.0, "total_s": 5.1},
                {"side": "jaxcam", "model": "efficientnet_lite0", "cache": "warm", "images": 4, "import_s": 1.4,
                 "load_s": 0.5, "images_s": 0.1, "explain_s": 0.8, "total_s": 2.8}]},
            "memory": {"workload": "memory", "status": "ok", "rows": [], "memory": [
                {"side": "jaxcam", "model": "resnet50", "batch": 8, "size": 224, "peak_first_bytes": 300 * 2 ** 20,
                 "peak_steady_bytes": 80 * 2 ** 20, "xla_memory_analysis": {"temp_size_in_bytes": 60 * 2 ** 20}},
                {"side": "pytorch-grad-cam", "model": "resnet50", "batch": 8, "size": 224,
                 "peak_first_bytes": 500 * 2 ** 20, "peak_steady_bytes": 400 * 2 ** 20}]},
            "scorecam/resnet50": {"workload": "scorecam", "status": "error", "error": "RuntimeError: boom",
                                  "rows": []},
        },
    }


# ---------------------------------------------------------------------------------------------------- report
def test_markdown_table_from_synthetic_results():
    md = report.markdown(synthetic_results())
    assert md.startswith("# jaxcam benchmark suite (cpu, quick)")
    header = "| " + " | ".join(report.COLUMNS) + " |"
    assert header in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| gradcam | resnet50 | 8 |")]
    assert len(lines) == 3
    assert all(ln.count("|") == len(report.COLUMNS) + 1 for ln in lines)
    assert "2.55x" in lines[0] and "max abs diff 3.0e-06" in lines[0]
    assert "REFUSED, not timed" in lines[1] and "| - |" in lines[1]
    assert "floor (different output" in lines[2]
    assert "0.83x (bf16/fp32 throughput)" in md and "min per image 0.99800" in md
    assert "## Time to first map" in md and "| jaxcam | efficientnet_lite0 | warm | 4 |" in md
    assert "## Peak memory" in md and "| resnet50 | 8 | 224 | jaxcam | 300 | 80 | 60 |" in md
    assert "scorecam/resnet50: error: RuntimeError: boom" in md
    assert "torch.compile unavailable" in md


def test_report_writes_markdown_and_plots(tmp_path):
    prefix = str(tmp_path / "suite-test")
    written = report.write_report(synthetic_results(), prefix)
    assert written == [prefix + ".md", prefix + "-throughput.png", prefix + "-speedup.png"]
    for p in written[1:]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    series = report._series(report.rows_of(synthetic_results()), "batch")
    assert set(series) == {"jax forward", "jaxcam gradcam", "pytorch-grad-cam GradCAM"}
    assert [b for b, _ in series["jaxcam gradcam"]] == [1, 2, 4, 8]


def test_report_of_empty_results_has_no_plots(tmp_path):
    written = report.write_report({"units": {}}, str(tmp_path / "empty"))
    assert written == [str(tmp_path / "empty.md")]


# --------------------------------------------------------------------------------------------------- harness
def test_check_agreement_refuses_different_answers():
    a = np.linspace(0, 1, 100).reshape(4, 5, 5)
    out = harness.check_agreement("same", a, a + 1e-5)
    assert out["max_abs_diff"] < 1e-4 and out["pearson_r"] > 0.999
    with pytest.raises(harness.Disagreement) as info:
        harness.check_agreement("shifted", a, a + 0.01)
    assert isinstance(info.value, SystemExit)  # a standalone benchmark stops with the message
    assert "refusing to benchmark" in str(info.value) and info.value.max_abs_diff == pytest.approx(0.01)
    with pytest.raises(harness.Disagreement):
        harness.check_agreement("decorrelated", a, a[::-1], atol=2.0)  # within atol, but r < min_r
    with pytest.raises(harness.Disagreement):
        harness.check_agreement("shape", a, a[:2])
    with pytest.raises(harness.Disagreement):
        harness.check_agreement("nan", a, np.full_like(a, np.nan))


def test_timeit_and_summarize():
    calls = []
    t = harness.timeit(lambda: calls.append(1), repeats=3, warmup=2, sync=lambda: None)
    assert len(calls) == 5 and t["repeats"] == 3 and t["first_s"] is not None
    assert t["min_s"] <= t["q1_s"] <= t["median_s"] <= t["q3_s"] <= t["max_s"]
    s = harness.summarize([3.0, 1.0, 2.0])
    assert s["median_s"] == 2.0 and s["min_s"] == 1.0 and s["max_s"] == 3.0


def test_map_correlation_per_image():
    rng = np.random.default_rng(0)
    a = rng.random((3, 8, 8))
    b = a.copy()
    b[2] = rng.random((8, 8))
    c = harness.map_correlation(a, b)
    assert c["per_image_r"][0] == pytest.approx(1.0) and c["min_image_r"] < 0.9 < c["pearson_r"] + 0.5


# ----------------------------------------------------------------------------------------------------- run.py
def test_run_parser():
    p = suite_run.build_parser()
    args = p.parse_args(["--quick", "--only", "gradcam", "memory", "--models", "resnet50", "vgg16", "--out",
                         "/tmp/x", "--resume", "--threads", "2"])
    assert args.quick and args.only == ["gradcam", "memory"] and args.models == ["resnet50", "vgg16"]
    assert args.out == "/tmp/x" and args.resume and args.threads == 2
    defaults = p.parse_args([])
    assert not defaults.quick and defaults.only is None and defaults.models is None and defaults.out is None
    for bad in (["--only", "nope"], ["--models", "alexnet"], ["--threads", "two"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_plan_covers_every_workload():
    quick = suite_run.plan(quick=True, gpu=False)
    assert {w for _, w, _ in quick} == set(suite_run.WORKLOADS) - set(suite_run.ACCELERATOR_ONLY)
    assert all(c.get("model", "resnet18") == "resnet18" for _, _, c in quick)
    full = suite_run.plan(quick=False, gpu=False)
    assert {c["model"] for _, w, c in full if w == "gradcam"} == set(suite_run.FULL_MODELS)
    assert {c["model"] for _, w, c in full if w == "bf16"} == {"resnet18", "resnet50"}  # CPU: ResNets only
    sweep = next(c for _, w, c in full if w == "batch_sweep")
    assert sweep["batches"] == (1, 2, 4, 8, 16, 32, 64)
    gpu_sweep = next(c for _, w, c in suite_run.plan(quick=False, gpu=True) if w == "batch_sweep")
    assert gpu_sweep["batches"][-2:] == (128, 256)
    assert {c["model"] for _, w, c in suite_run.plan(False, True) if w == "bf16"} == set(suite_run.FULL_MODELS)
    only = suite_run.plan(quick=False, gpu=False, models=["vgg16"], only=["gradcam", "scorecam"])
    # Score-CAM also runs on the embedded model (its real weights), whatever --models says
    assert [k for k, _, _ in only] == ["gradcam/vgg16", "scorecam/resnet50", "scorecam/efficientnet_lite0"]
    assert {c["model"] for _, w, c in full if w == "scorecam"} == {"resnet50", "efficientnet_lite0"}
    assert all("also" not in c for _, _, c in full)
    keys = [k for k, _, _ in full]
    assert len(keys) == len(set(keys))
    assert keys.index("methods/resnet50") < keys.index("all_gradient/resnet50")  # pgc timings reused


def test_accelerator_plan_lists_the_gpu_units(capsys):
    assert suite_run.main(["--accelerator", "--list"]) == 0
    out = capsys.readouterr().out
    full = suite_run.accelerator_plan()
    keys = [k for k, _, _, _ in full]
    assert len(keys) == len(set(keys)) and all(k in out for k in keys)
    for w in ("gradcam", "all_gradient"):
        assert sorted(c["batch"] for _, x, c, _ in full if x == w) == [8, 32, 128, 256]
    assert {w for _, w, _, _ in full} == {"gradcam", "all_gradient", "bf16", "scorecam", "ablationcam", "robustness",
                                          "profile", "road_floor"}
    assert next(c for _, w, c, _ in full if w == "profile")["batch"] == 256
    assert "--batch" in (argv := next(c for _, w, c, _ in full if w == "robustness")["argv"])
    assert argv[argv.index("--batch") + 1] == "64"
    assert all(c["model"] == "resnet50" for _, w, c, _ in full if w != "robustness")
    # the budget covers the most informative units; the estimates of everything stay near 8 minutes
    assert sum(e for *_, e in full) <= 600 and suite_run.ACCELERATOR_BUDGET_S + 30 <= 480
    assert [k for k, *_ in full[:3]] == ["gradcam/resnet50/b8", "gradcam/resnet50/b256", "profile/resnet50/b256"]
    quick = suite_run.accelerator_plan(quick=True)
    assert {c.get("model", "resnet18") for _, w, c, _ in quick if w != "robustness"} == {"resnet18"}
    assert {w for _, w, _, _ in quick} == {w for _, w, _, _ in full}
    with pytest.raises(SystemExit):
        suite_run.main(["--accelerator", "--models", "vgg16", "--list"])


def test_accelerator_budget_skips_what_does_not_fit(tmp_path):
    out = tmp_path / "acc"
    assert suite_run.main(["--accelerator", "--quick", "--only", "profile", "--budget", "1", "--out", str(out)]) == 0
    res = json.loads((tmp_path / "acc.json").read_text())
    (unit,) = res["units"].values()
    assert unit["status"] == "skipped" and "budget" in unit["reason"] and res["suite"]["budget_s"] == 1
    assert "skipped" in (tmp_path / "acc.md").read_text()


def test_accelerator_quick_profile_runs_without_torch(tmp_path):
    """The jaxcam-only path of ``--accelerator --quick``: the profile unit end to end (trace, per-op times, cost
    analysis, JSON and markdown) in a process that never imports torch."""
    out = tmp_path / "acc"
    code = ("import runpy, sys; sys.argv = ['benchmarks/run.py', '--accelerator', '--quick', '--only', 'profile', "
            f"'--out', {str(out)!r}]\ntry:\n    runpy.run_path('benchmarks/run.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\nassert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)
    res = json.loads((tmp_path / "acc.json").read_text())
    unit = res["units"]["profile/resnet18/b4"]
    assert unit["status"] == "ok", unit.get("error")
    ops = unit["profile"]["op_times"]
    assert ops["ops"] > 0 and ops["total_ms"] > 0 and ops["top"][0]["ms"] >= ops["top"][-1]["ms"]
    assert unit["measurements"][0]["cost_analysis"]["flops"] > 0
    assert (tmp_path / "acc-trace").is_dir() and "## Profile: profile/resnet18/b4" in (tmp_path / "acc.md").read_text()



@pytest.mark.slow
def test_accelerator_quick_road_floor_runs_without_torch(tmp_path):
    """``--accelerator --quick --only road_floor``: ROAD against its own forwards, end to end, without torch."""
    out = tmp_path / "acc"
    code = ("import runpy, sys; sys.argv = ['benchmarks/run.py', '--accelerator', '--quick', '--only', 'road_floor', "
            f"'--out', {str(out)!r}]\ntry:\n    runpy.run_path('benchmarks/run.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\nassert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=600)
    res = json.loads((tmp_path / "acc.json").read_text())
    road = res["units"]["road_floor/resnet18/b2"]
    assert road["status"] == "ok", road.get("error")
    assert road["road"]["forwards_alone"]["forwards"] == 2 * 9 * 2 and road["road"]["x_forwards"] > 0
    assert "forwards alone" in (tmp_path / "acc.md").read_text()


def test_op_times_reads_a_trace(tmp_path):
    import jax
    import jax.numpy as jnp
    import jax_side

    f = jax.jit(lambda a: jnp.tanh(a @ a).sum())
    a = jnp.ones((64, 64))
    f(a).block_until_ready()
    with jax.profiler.trace(str(tmp_path)):
        f(a).block_until_ready()
    (pb,) = tmp_path.glob("**/*.xplane.pb")
    ops = jax_side.op_times(str(pb))
    assert ops["ops"] >= 1 and ops["total_ms"] > 0 and sum(ops["by_kind_ms"].values()) == pytest.approx(
        ops["total_ms"])
    assert jax_side.cost_analysis(f.lower(a).compile())["flops"] >= 2 * 64 ** 3


def test_suite_modules_import_without_torch():
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import run, report, harness; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# -------------------------------------------------------------------------------------------------- jaxcam bench
def test_bench_errors_clearly_without_torch(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # find_spec("torch") is None: as if not installed
    assert "torch" in cli_bench.missing_dependencies()
    assert cli_main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxcam: error: ") and len(err.strip().splitlines()) == 1
    assert "torch" in err and "pip install -c constraints.txt -e '.[torch]'" in err


def test_bench_names_packages_outside_the_extra(monkeypatch):
    monkeypatch.setattr(cli_bench, "suite_script", lambda: BENCH / "run.py")
    monkeypatch.setattr(cli_bench, "missing_dependencies", lambda: ["rbo"])
    with pytest.raises(cli_bench.MissingDependencyError,
                       match=r"needs rbo .*install them with: pip install --no-deps rbo=="):
        cli_bench.check()


def test_bench_errors_clearly_without_the_source_checkout(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli_bench, "suite_script", lambda: tmp_path / "benchmarks" / "run.py")
    assert cli_main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "source checkout" in err and "pip install -c constraints.txt -e '.[torch]'" in err


def test_bench_passes_every_argument_through(monkeypatch):
    seen = {}

    class FakePopen:
        def __init__(self, cmd, cwd=None):
            seen["cmd"], seen["cwd"] = cmd, cwd

        def wait(self):
            return seen.get("code", 0)

    monkeypatch.setattr(cli_bench, "missing_dependencies", lambda: [])
    monkeypatch.setattr(cli_bench.subprocess, "Popen", FakePopen)
    assert cli_main(["bench", "--quick", "--only", "gradcam", "--models", "resnet50", "--help"]) == 0
    assert seen["cmd"][0] == sys.executable and seen["cmd"][1] == str(BENCH / "run.py")
    assert seen["cmd"][2:] == ["--quick", "--only", "gradcam", "--models", "resnet50", "--help"]
    assert seen["cwd"] is None  # a relative --out is relative to where the user runs jaxcam
    seen["code"] = 1
    assert cli_main(["bench", "--only", "gradcam"]) == 2  # a failed suite is one error line


# ------------------------------------------------------------------------------------------------------ torch
@pytest.mark.torch
def test_hand_written_gradcam_matches_jaxcam():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    import jax

    import jaxcam
    import torch_baselines as TB
    from jaxcam.models import random_state_dict

    torch.set_num_threads(1)
    sd = random_state_dict("resnet18", seed=0)
    model = jaxcam.load_model("resnet18", weights=sd)
    tm = harness.torch_twin("resnet18", sd)
    x = harness.photos(2, 96, model.arch.mean, model.arch.std)
    dev = TB.Device("cpu")
    xt = dev.tensor(x)
    trunk, head = TB.split(model, tm)
    with torch.no_grad():
        np.testing.assert_allclose(head(trunk(xt)).numpy(), tm(xt).numpy(), atol=1e-4)
    hw = TB.HandWrittenGradCAM(model, tm, dev, compile=False)
    ours = np.asarray(jax.block_until_ready(jaxcam.explain(model, x, "gradcam", preprocessed=True)))
    harness.check_agreement("hand-written", ours, hw(hw.prepare(xt)).numpy())
    assert TB.hooks_left(tm) == 0


# ----------------------------------------------------------------------------------------- ROAD's own floor
def test_road_timing_records_its_forwards_alone():
    """The suite's ROAD measurement: ROAD as a user calls it, alternating with its 2 x 9 x N forwards alone (the same
    chunks, no imputation), and the ratio of the two; no torch needed."""
    import jax.numpy as jnp

    import bench_metrics as BM
    import jaxcam
    from jaxcam import metrics as M
    from tests.toy import toy_input, toy_model

    model, x = toy_model(), toy_input()
    cams = jaxcam.explain(model, x, "gradcam", layer="relu", preprocessed=True)
    fwd, n = BM.road_forwards(model, x)
    assert n == 2 * 9 * x.shape[0] and np.asarray(fwd()).size >= n
    calls = []

    def road():
        calls.append(1)
        return np.asarray(M.road(model, x, cams, which="combined"))

    t = BM.road_timing(model, x, cams, 2, road)
    assert len(calls) == 3  # compile, then 2 timed calls
    assert t["jaxcam"]["repeats"] == 2 and t["forwards_alone"]["forwards"] == n
    assert t["x_forwards"] == pytest.approx(t["jaxcam"]["median_s"] / t["forwards_alone"]["median_s"])
    assert t["x_forwards_pairs"] > 0 and 0 <= t["other_processes_share"] <= 1
    assert jnp.isfinite(jnp.asarray(road())).all()
