"""The robustness runner: rows, one compiled chunk program, resume after SIGKILL, process split, 8-device sharding."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import jaxcam
from jaxcam import robustness as R

from .toy import toy_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(methods=("gradcam", "eigencam"), noises=("gaussian", "impulse"), severities=(1, 3), draws=2,
             image_batch=2, chunk=8, size=32, progress=False)


def _images():
    return list(jaxcam.sample_images().values())[:3]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted single-process, single-device run every other run is compared with."""
    return R.run(toy_model(), _images(), str(tmp_path_factory.mktemp("full")), **SMALL)


def test_rows_summary_and_one_compiled_chunk_program(tmp_path):
    model = toy_model()
    before = R.TRACES["chunk"]
    rows = R.run(model, _images(), str(tmp_path / "a"), **SMALL)
    assert R.TRACES["chunk"] - before <= 2  # one program (one more if the last batch's region count pads higher)
    assert rows.columns == list(R.COLUMNS)
    assert len(rows) == 3 * 2 * 2 * 2 * 2  # images x methods x noises x severities x draws
    v = rows["value"].astype(float)
    assert np.isfinite(v).all() and (v >= -1e-6).all() and (v <= 1 + 1e-6).all()
    assert set(rows["method"]) == {"gradcam", "eigencam"}
    s = R.summarise(rows, n_resamples=50)
    assert len(s) == 2 * 2 * 2
    for r in s.rows():
        assert r["n_unchanged"] + r["n_changed"] == 6  # 3 images x 2 draws per cell


def test_existing_results_are_never_overwritten_and_config_must_match(tmp_path):
    model = toy_model()
    out = str(tmp_path / "b")
    R.run(model, _images(), out, **{**SMALL, "noises": ("gaussian",), "severities": (1,)})
    with pytest.raises(R.RunConfigError, match="resume=True"):
        R.run(model, _images(), out, **{**SMALL, "noises": ("gaussian",), "severities": (1,)})
    with pytest.raises(R.RunConfigError, match="another configuration"):
        R.run(model, _images(), out, **{**SMALL, "noises": ("gaussian",), "severities": (2,)}, resume=True)


def test_resume_after_a_partial_run_equals_an_uninterrupted_run(tmp_path, full):
    model = toy_model()
    out = str(tmp_path / "part")
    partial = R.run(model, _images(), out, **SMALL, max_chunks=2)
    assert 0 < len(partial) < len(full)
    resumed = R.run(model, _images(), out, **SMALL, resume=True)
    assert R.run_digest(resumed) == R.run_digest(full)


def test_process_split_covers_the_run_once(tmp_path, full):
    model = toy_model()
    out = str(tmp_path / "two")
    R.run(model, _images(), out, **SMALL, process=(0, 2))
    both = R.run(model, _images(), out, **SMALL, process=(1, 2), resume=True)
    assert len(both) == len(full)
    for c in R.COLUMNS:
        if c in ("value", "conf_before", "conf_after", "conf_after_original"):
            np.testing.assert_allclose(both[c].astype(float), full[c].astype(float), atol=1e-5)
        else:
            np.testing.assert_array_equal(both[c], full[c])


_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import jaxcam
    from jaxcam import robustness as R
    from tests.toy import toy_model
    kw = {kw!r}
    R.run(toy_model(), list(jaxcam.sample_images().values())[:3], {out!r}, **kw, resume=True)
""")


def _script(out, kw):
    return _SCRIPT.format(root=ROOT, kw=kw, out=out)


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path, full):
    model = toy_model()
    out = str(tmp_path / "killed")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", _script(out, SMALL)], env=env, cwd=ROOT)
    parts = os.path.join(out, "parts")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(parts) and any(f.endswith(".parquet") for f in os.listdir(parts)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = [f for f in os.listdir(parts) if f.endswith(".parquet")]
    assert 1 <= len(written) <= 4  # image batches of 2 and 1, one chunk per noise each: 4 parts in all
    resumed = R.run(model, _images(), out, **SMALL, resume=True)
    assert R.run_digest(resumed) == R.run_digest(full)


def test_eight_cpu_devices_give_the_single_device_rows(tmp_path, full):
    out = str(tmp_path / "eight")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    code = "import jax; assert jax.local_device_count() == 8, jax.devices()\n" + _script(out, SMALL)
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=300)
    rows = R.read(out)
    assert len(rows) == len(full)
    np.testing.assert_array_equal(rows["pred_after"], full["pred_after"])
    np.testing.assert_allclose(rows["value"].astype(float), full["value"].astype(float), atol=1e-4)


def test_run_many_covers_models_by_datasets(tmp_path):
    imgs = _images()[:2]
    rows = R.run_many({"a": toy_model(seed=0), "b": toy_model(seed=1)}, {"two": imgs, "one": imgs[:1]},
                      str(tmp_path), **{**SMALL, "noises": ("gaussian",), "severities": (1,), "draws": 1})
    assert len(rows) == (2 + 1) * 2 * 2  # (images of both datasets) x models x methods
    assert set(rows["dataset"]) == {"two", "one"} and set(rows["model"]) == {"a", "b"}
    assert os.path.isdir(tmp_path / "b" / "one" / "parts")
