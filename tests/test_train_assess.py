"""The experiment helpers: intervals, entropy, correlation and localisation scores on hand-made maps."""

import numpy as np
import pytest

import jaxcam
from jaxcam.train.assess import localisation, map_entropy, mean_interval, pearson, predict_accuracy


def test_mean_interval_is_the_student_t_interval():
    m, h = mean_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.302652729911275 * 1.0 / np.sqrt(3))
    assert mean_interval([0.5]) == (0.5, 0.0)
    with pytest.raises(jaxcam.InvalidArgumentError):
        mean_interval([])


def test_entropy_and_pearson_closed_forms():
    flat = np.ones((1, 7, 4))
    one = np.zeros((1, 7, 4)); one[0, 3, 2] = 5.0
    assert map_entropy(flat)[0] == pytest.approx(np.log(28))
    assert map_entropy(one)[0] == 0 and map_entropy(np.zeros((1, 3, 3)))[0] == 0
    a = np.random.default_rng(0).random((2, 5, 5))
    np.testing.assert_allclose(pearson(a, 3 * a + 1), 1.0)
    np.testing.assert_allclose(pearson(a, -a), -1.0)
    assert pearson(flat, one)[0] == 0


def test_localisation_scores_a_model_and_checks_shapes():
    m = jaxcam.reference_model(0, size=32)
    d = jaxcam.synthetic.synthetic_arrays(0, 6, size=32)
    out = localisation(m, d["image"], d["mask"], d["label"], methods=["gradcam"], batch_size=4)
    r = out["gradcam"]
    assert r["maps"].shape == (6, 32, 32) and 0 <= r["pointing_game"] <= 1 and 0 <= r["iou_best"] <= 1
    # the best threshold's IoU is the best over the grid: recompute it by hand at that threshold
    t = r["best_threshold"]
    inter = ((r["maps"] >= t) & d["mask"]).sum((1, 2)); union = ((r["maps"] >= t) | d["mask"]).sum((1, 2))
    assert r["iou_best"] == pytest.approx(np.mean(inter / union), abs=1e-6)
    assert 0 <= predict_accuracy(m, d["image"], d["label"]) <= 1
    with pytest.raises(jaxcam.InvalidArgumentError, match="masks"):
        localisation(m, d["image"], d["mask"][:, :16], d["label"])


@pytest.mark.slow
def test_train_reference_quick_run_writes_its_tables(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_reference.py"
    subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], check=True, timeout=600)
    md = (tmp_path / "train_reference.md").read_text()
    assert "| gradcam | 1 |" in md and (tmp_path / "train_reference.csv").exists()
    assert (tmp_path / "train_reference.png").stat().st_size > 1000
