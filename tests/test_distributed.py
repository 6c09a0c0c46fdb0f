"""A real multi-process run on JAX's distributed runtime (scripts/distributed_run.py): 2 and 4 local processes with
2 CPU devices each, joined by jax.distributed.initialize into one global mesh, give the robustness rows and the
explain maps of one process, bit for bit; a SIGKILLed worker and a restart of the group resume to the same rows.

The 2-process explain check runs in CI. The others take minutes on a shared 2-core machine:
    python -m pytest tests/test_distributed.py -q -m slow
"""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("distributed_run", os.path.join(ROOT, "scripts", "distributed_run.py"))
D = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(D)

_REFERENCE = {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``reference(task)``: the directory of a one-process, one-device run of ``task``, computed here, once."""
    out = str(tmp_path_factory.mktemp("one-process"))

    def get(task):
        if task in ("explain", "all") and "explain" not in _REFERENCE:
            D.run_explain(out)
            _REFERENCE["explain"] = True
        if task in ("robustness", "all") and "robustness" not in _REFERENCE:
            D.run_robustness(out)
            _REFERENCE["robustness"] = True
        return out

    _REFERENCE.clear()
    return get


def _group(tmp_path, processes, task, **kwargs):
    out = str(tmp_path / f"p{processes}")
    result = D.launch(processes, 2, out, task, timeout=1200, **kwargs)
    return out, result


def _assert_ran(result, processes, task):
    assert result["ok"], result
    for i, w in enumerate(result["workers"]):
        assert (w["process"], w["processes"], w["devices"], w["local_devices"]) == (i, processes, 2 * processes, 2)
        if task in ("explain", "all"):  # every map lives on every process's devices: one global mesh
            assert set(w["devices_per_map"].values()) == {2 * processes}
            assert w["rows"] == [i * D.IMAGES // processes, (i + 1) * D.IMAGES // processes]


def _assert_identical(out, ref, task, maps_atol=0.0):
    """Rows bit for bit; maps, logits and classes equal (within ``maps_atol``)."""
    diff = D.compare(out, ref, ("robustness", "explain") if task == "all" else (task,))
    if task in ("robustness", "all"):
        assert diff["rows"] == [128, 128] and diff["digest_equal"], diff
    if task in ("explain", "all"):
        assert set(diff["maps_diff"]) == {*D.EXPLAIN_METHODS, "logits", "classes"}
        assert max(diff["maps_diff"].values()) <= maps_atol, diff
        assert diff["maps_diff"]["classes"] == 0, diff
    assert diff["identical"] or maps_atol > 0, diff


def test_two_processes_explain_one_global_batch_with_the_maps_of_one_process(tmp_path, reference):
    out, result = _group(tmp_path, 2, "explain")
    _assert_ran(result, 2, "explain")
    _assert_identical(out, reference("explain"), "explain")


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
def test_robustness_rows_and_maps_of_several_processes_equal_one_process(tmp_path, reference, processes):
    out, result = _group(tmp_path, processes, "all")
    _assert_ran(result, processes, "all")
    assert result["parts_after"] == 8  # 4 image batches x 2 noises, one chunk each
    if processes == 2:
        _assert_identical(out, reference("all"), "all")
        return
    # 4 x 2 devices hold one image each, and XLA's CPU kernels round a batch of 1 differently from a batch of 8
    # (maps differ from the one-device run by one float32 ulp); one process with 8 devices gives the same maps bit
    # for bit, so running as several processes changes nothing
    _assert_identical(out, reference("all"), "all", maps_atol=2.5e-7)
    eight = str(tmp_path / "one-process-8-devices")
    assert D.launch(1, 8, eight, "explain")["ok"]
    _assert_identical(out, eight, "explain")


@pytest.mark.slow
def test_a_killed_worker_and_a_restarted_group_resume_to_the_uninterrupted_rows(tmp_path, reference):
    out, killed = _group(tmp_path, 2, "all", kill_after_parts=1, kill_worker=1)
    assert not killed["ok"] and killed["killed"] == 1 and -9 in killed["returncodes"]
    assert 1 <= killed["parts_after"] < 8, killed
    out, again = _group(tmp_path, 2, "all")
    _assert_ran(again, 2, "all")
    assert again["parts_before"] == killed["parts_after"] and again["parts_after"] == 8
    _assert_identical(out, reference("all"), "all")


@pytest.mark.parametrize("argv, message", [
    (["--processes", "3", "--devices-per-process", "1"], "must divide the 8 images"),
    (["--processes", "2", "--kill-after-parts", "1", "--kill-worker", "2"], "--kill-worker must be in 0..1"),
    (["--processes", "0"], "at least 1"),
])
def test_a_bad_launch_is_refused_before_any_process_starts(tmp_path, capsys, argv, message):
    out = str(tmp_path / "run")
    with pytest.raises(SystemExit) as exc:
        D.main([*argv, "--out", out])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not os.path.exists(out)
