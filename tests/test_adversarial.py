"""PGD-AT and PART (jaxcam.train.adversarial): the attack stays in its (per-pixel) budget and in [0, 1], PART with
eps_low = eps is PGD-AT bit for bit, determinism, gradients, the CAM budget, typed errors, a fit smoke run, and a
smoke run of scripts/part_vs_pgdat.py (slow)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcam.errors import InvalidArgumentError, UnknownNameError
from jaxcam.models.reference_cnn import reference_model
from jaxcam.synthetic import synthetic_arrays
from jaxcam.train import LOSSES, LossContext, cross_entropy, fit
from jaxcam.train.adversarial import (cam_weights, part_budget, part_loss, pgd_at_loss, pgd_attack,
                                      robust_accuracy)

SIZE = 32
MODEL = reference_model(0, size=SIZE, widths=(4, 8, 8))
CTX = LossContext(MODEL.tapped.apply, "stage3", 4, ("stage1", "stage2", "stage3"))
DATA = synthetic_arrays(jax.random.key(0), 6, size=SIZE)
M = jnp.asarray(MODEL.mean, jnp.float32).reshape(1, 1, 1, 3)
S = jnp.asarray(MODEL.std, jnp.float32).reshape(1, 1, 1, 3)
PIXELS = jnp.asarray(DATA["image"])
BATCH = {"image": (PIXELS - M) / S, "label": jnp.asarray(DATA["label"])}
OPTS = {"eps": 8 / 255, "alpha": 2 / 255, "steps": 1}


def _no_tap(site, a):
    return a


def _graded(fn, **extra):
    """The loss and its parameter gradient at a key, compiled once per option set (keeps the file fast)."""
    return jax.jit(jax.value_and_grad(lambda p, k: fn(p, BATCH, k, CTX, **OPTS, **extra), has_aux=True))


PGD_AT = _graded(pgd_at_loss)
PART_FULL = jax.jit(lambda p, k: part_loss(p, BATCH, k, CTX, eps_low=OPTS["eps"], **OPTS))
PART_ZERO = _graded(part_loss, eps_low=0.0)
ATTACK = jax.jit(lambda x, y, k, b: pgd_attack(MODEL.tapped.apply, MODEL.params, x, y, k, b, alpha=2 / 255, steps=2,
                                               mean=M, std=S))


def test_attack_stays_in_elementwise_budget_and_raises_the_loss():
    budget = jax.random.uniform(jax.random.key(1), PIXELS.shape[:3] + (1,), jnp.float32, 0.0, 3 / 255)
    adv = ATTACK(PIXELS, BATCH["label"], jax.random.key(2), budget)
    assert adv.shape == PIXELS.shape
    assert float(jnp.min(adv)) >= 0.0 and float(jnp.max(adv)) <= 1.0
    assert bool(jnp.all(jnp.abs(adv - PIXELS) <= budget + 1e-6))
    # the budget is used, not just respected: most elements sit at the edge of their box or of [0, 1]
    at_edge = (jnp.abs(jnp.abs(adv - PIXELS) - budget) < 1e-6) | (adv == 0.0) | (adv == 1.0)
    assert float(jnp.mean(at_edge)) > 0.5

    def ce(x):
        return float(cross_entropy(MODEL.tapped.apply(MODEL.params, (x - M) / S, _no_tap), BATCH["label"]))

    assert ce(adv) > ce(PIXELS)


def test_part_with_eps_low_equal_to_eps_is_pgd_at_bit_for_bit():
    key = jax.random.key(3)
    (a_loss, a_aux), _ = PGD_AT(MODEL.params, key)
    p_loss, p_aux = PART_FULL(MODEL.params, key)
    assert float(a_loss) == float(p_loss)
    assert float(a_aux["accuracy"]) == float(p_aux["accuracy"])
    assert float(p_aux["important_share"]) == 1.0
    (low_loss, low_aux), _ = PART_ZERO(MODEL.params, key)
    assert float(low_loss) != float(a_loss)
    assert 0.0 < float(low_aux["important_share"]) < 0.5


def test_part_attack_respects_the_cam_budget():
    classes = jnp.argmax(MODEL.tapped.apply(MODEL.params, BATCH["image"], _no_tap), axis=-1)
    w, _ = cam_weights(MODEL.tapped.apply, MODEL.params, BATCH["image"], classes, "stage3")
    assert w.shape == PIXELS.shape[:3]
    np.testing.assert_allclose(np.mean(np.asarray(w), axis=(1, 2)), 0.0, atol=1e-4)
    budget = part_budget(w, 8 / 255, 2 / 255)
    assert set(np.unique(np.asarray(budget)).tolist()) <= {np.float32(8 / 255), np.float32(2 / 255)}
    adv = ATTACK(PIXELS, BATCH["label"], jax.random.key(4), budget)
    delta = jnp.abs(adv - PIXELS)
    assert bool(jnp.all(delta <= budget + 1e-6))
    assert float(jnp.max(jnp.where(budget < 8 / 255 - 1e-6, delta, 0.0))) <= 2 / 255 + 1e-6
    assert float(jnp.max(delta)) > 2 / 255 + 1e-6  # important pixels do get the larger budget
    for method in ("xgradcam", "layercam"):
        wm, _ = cam_weights(MODEL.tapped.apply, MODEL.params, BATCH["image"], classes, "stage3", method)
        assert bool(jnp.all(jnp.isfinite(wm)))


def test_losses_are_finite_deterministic_and_reach_the_parameters():
    for f in (PGD_AT, PART_ZERO):
        (l1, aux), g = f(MODEL.params, jax.random.key(5))
        (l2, _), _ = f(MODEL.params, jax.random.key(5))
        (l3, _), _ = f(MODEL.params, jax.random.key(6))
        assert np.isfinite(float(l1)) and float(l1) == float(l2) and float(l1) != float(l3)
        assert set(aux) >= {"accuracy", "clean_accuracy"}
        norms = [float(jnp.linalg.norm(leaf)) for leaf in jax.tree.leaves(g)]
        assert all(np.isfinite(norms)) and all(n > 0 for n in norms)


@pytest.mark.parametrize("fn,options,error", [
    (pgd_at_loss, {"eps": -1.0}, InvalidArgumentError),
    (pgd_at_loss, {"alpha": float("nan")}, InvalidArgumentError),
    (pgd_at_loss, {"steps": 0}, InvalidArgumentError),
    (pgd_at_loss, {"random_start": 1}, InvalidArgumentError),
    (pgd_at_loss, {"std": (0.5, 0.0, 0.5)}, InvalidArgumentError),
    (pgd_at_loss, {"mean": (0.5, 0.5)}, InvalidArgumentError),
    (part_loss, {"eps_low": 9 / 255}, InvalidArgumentError),
    (part_loss, {"threshold": "1"}, InvalidArgumentError),
    (part_loss, {"cam_method": "gradcm"}, UnknownNameError),
    (part_loss, {"cam_class": "true"}, UnknownNameError),
])
def test_bad_options_raise_typed_errors_naming_the_option(fn, options, error):
    with pytest.raises(error, match=next(iter(options)) if error is InvalidArgumentError else "did you mean|valid"):
        fn(MODEL.params, BATCH, jax.random.key(0), CTX, **options)


def test_registered_and_trains_through_fit_and_robust_accuracy():
    assert LOSSES["part"].fn is part_loss and "eps_low" in LOSSES["part"].options
    assert LOSSES["pgd_at"].fn is pgd_at_loss
    data = {"image": DATA["image"], "label": DATA["label"]}
    opts = {"steps": 1, "mean": tuple(MODEL.mean), "std": tuple(MODEL.std)}
    res = fit(MODEL, data, steps=2, batch_size=6, loss="part", loss_options=opts, progress=False, augment=())
    assert res.step == 2 and np.isfinite(np.asarray(res.history["loss"], float)).all()
    with pytest.raises(UnknownNameError):
        fit(MODEL, data, steps=1, batch_size=6, loss="part", loss_options={"eps_lo": 0.0}, progress=False)
    clean = float(np.mean(np.argmax(MODEL.tapped.apply(MODEL.params, BATCH["image"], _no_tap), -1) == DATA["label"]))
    robust = robust_accuracy(MODEL, DATA["image"], DATA["label"], 0, eps=0.0 + 1e-9, steps=1, random_start=False)
    assert abs(robust - clean) < 1e-6  # a (near) zero budget changes no prediction
    with pytest.raises(InvalidArgumentError, match="images"):
        robust_accuracy(MODEL, DATA["image"][0], DATA["label"], 0)


@pytest.mark.slow
def test_script_quick(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "scripts", "part_vs_pgdat.py"), "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    for ext in ("md", "csv", "png"):
        assert (tmp_path / f"part_vs_pgdat.{ext}").stat().st_size > 0
    assert "## Verdict" in (tmp_path / "part_vs_pgdat.md").read_text()
