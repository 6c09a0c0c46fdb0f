"""jaxcam.train checkpoints: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted run (for
real: a subprocess is killed after its first checkpoint), its history continues without duplicate steps, and a
checkpoint of another model or of other settings is one clear error before any work."""

import csv
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

import jaxcam
from jaxcam.models.reference_cnn import reference_model
from jaxcam.train import fit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTHS = (4, 8, 8)  # the reference CNN at its smallest: a few milliseconds per step on a CPU
RUN = dict(steps=150, batch_size=4, checkpoint_every=10, key=7, optimizer="adam", schedule="cosine",
           augment=("flip", "crop", "noise"), progress=False)

SCRIPT = """
import os, sys
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
from jaxcam.models.reference_cnn import reference_model
from jaxcam.train import fit
from test_train_resume import random_data
fit(reference_model(0, widths={widths!r}), random_data(), checkpoint_dir={ckpt!r}, history={hist!r}, **{run!r})
print("finished", flush=True)
"""


def random_data(n=24, seed=0):
    """Random images and labels: bit-identity needs no meaning, and they cost nothing to make."""
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(0, 1, (n, 48, 48, 3)).astype(np.float32), "label": rng.integers(0, 4, n)}


def _leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(model.params)]


def _steps_done(ckpt):
    return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) if os.path.isdir(ckpt) else []


def _kill_at_first_checkpoint(proc, ckpt, out):
    """Poll ``ckpt`` and SIGKILL ``proc`` as soon as a checkpoint is complete (orbax renames a step's folder into
    place only then); runs in a thread while the test computes the uninterrupted run."""
    deadline = time.monotonic() + 180
    while not _steps_done(ckpt):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            out["error"] = f"exit code {proc.wait()} before any checkpoint: {proc.stdout.read().decode()[-2000:]}"
            return
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(60)
    out["killed_at"] = max(_steps_done(ckpt))


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    ckpt, hist = str(tmp_path / "ckpt"), str(tmp_path / "history.csv")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(repo=REPO, tests=os.path.join(REPO, "tests"), widths=WIDTHS, ckpt=ckpt,
                                    hist=hist, run=RUN))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = {}
    killer = threading.Thread(target=_kill_at_first_checkpoint, args=(proc, ckpt, out))
    killer.start()
    try:  # the uninterrupted run, while the subprocess starts
        model, data = reference_model(0, widths=WIDTHS), random_data()
        whole = fit(model, data, **RUN)
    finally:
        killer.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "error" not in out, out.get("error")
    assert proc.returncode == -signal.SIGKILL and out["killed_at"] < RUN["steps"], (proc.returncode, out)

    resumed = fit(model, data, checkpoint_dir=ckpt, history=hist, **RUN)
    assert resumed.step == whole.step == RUN["steps"]
    for a, b in zip(_leaves(resumed.model), _leaves(whole.model), strict=True):
        assert np.array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(whole.model), _leaves(model)))
    # the history file: every step once, in order, and the resumed rows equal the uninterrupted run's
    assert list(resumed.history["step"]) == list(range(1, RUN["steps"] + 1))
    assert np.array_equal(resumed.history["loss"], whole.history["loss"])
    with open(hist, newline="") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(1, RUN["steps"] + 1))


def _small(tmp_path, **kw):
    run = dict(steps=4, batch_size=4, checkpoint_every=2, progress=False, checkpoint_dir=str(tmp_path / "c"))
    run.update(kw)
    return run


def test_resume_with_other_settings_names_them(tmp_path, monkeypatch):
    model, data = reference_model(0, widths=WIDTHS), random_data(8)
    fit(model, data, **_small(tmp_path))
    from jaxcam.train import pipeline

    monkeypatch.setattr(pipeline, "load_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(jaxcam.CheckpointError, match=r"learning_rate: checkpoint 0\.001, now 0\.01.*resume=False"):
        fit(model, data, learning_rate=0.01, **_small(tmp_path))
    with pytest.raises(jaxcam.CheckpointError, match=r"augment: .*'flip'.*'crop'"):
        fit(model, data, augment=("crop",), **_small(tmp_path))
    with pytest.raises(jaxcam.CheckpointError, match=r"\bdata: .*arrays"):
        fit(model, random_data(8, seed=1), **_small(tmp_path))
    other = reference_model(0, widths=(4, 8, 16))
    with pytest.raises(jaxcam.CheckpointError, match=r"holds model 'reference-cnn' \(parameter tree [0-9a-f]{16}\), "
                                                     r"not this model 'reference-cnn' \(parameter tree [0-9a-f]{16}\)"):
        fit(other, data, **_small(tmp_path))


def test_finished_run_and_fresh_start(tmp_path, monkeypatch):
    from jaxcam.train import pipeline

    model, data = reference_model(0, widths=WIDTHS), random_data(8)
    first = fit(model, data, **_small(tmp_path))
    with monkeypatch.context() as patch:  # already done: restored, nothing loaded, no step runs
        patch.setattr(pipeline, "load_data", lambda *a, **k: pytest.fail("data loaded for a finished run"))
        again = fit(model, data, **_small(tmp_path))
    assert len(again.history) == 0 and again.step == 4
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(first.model), _leaves(again.model)))
    # a constant schedule does not depend on the length: a finished run can be extended
    longer = fit(model, data, **_small(tmp_path, steps=6))
    assert longer.step == 6 and sorted(_steps_done(str(tmp_path / "c")))[-1] == 6
    # resume=False deletes the folder's checkpoints and starts again
    fresh = fit(model, data, **_small(tmp_path, resume=False, learning_rate=0.01))
    assert list(fresh.history["step"]) == [1, 2, 3, 4] and max(_steps_done(str(tmp_path / "c"))) == 4
