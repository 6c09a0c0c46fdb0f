"""Golden CAM maps from pytorch-grad-cam 1.5.7, so that jaxcam's tests can check parity without torch.

Writes tests/fixtures/pgc_goldens.npz. Regenerate with

    pip install -e '.[torch]' && python scripts/make_cam_goldens.py

(``--full`` also runs ScoreCAM/AblationCAM on every resnet50 configuration; ``--skip-batch-check`` skips the
batch-size invariance check.) The last run took 27.6 min (1658 s) on 2 CPU threads of a shared, loaded machine
(about 2x slower than idle): ScoreCAM and AblationCAM on resnet50/layer4 ~8.5 min each, on resnet18 25-65 s per
configuration, the batch-size check 85 s, every other call < 10 s. Output: 97 maps, 9.8 MB.

Models and inputs (all rebuildable without torch)
-------------------------------------------------
* ``resnet18`` and ``resnet50``: torchvision models holding ``jaxcam.models.random_state_dict(name, seed=0)``
  (``jaxcam.load_model(name, weights=None, seed=0)`` is the same model in JAX), ``eval()``, CPU, float32,
  ``torch.set_num_threads(2)``, ``torch.manual_seed(0)``.
* ``x = jaxcam.preprocess(sample_images(["chelsea", "coffee", "astronaut"]), size=160, mean=IMAGENET_MEAN,
  std=IMAGENET_STD)`` (NHWC), transposed to NCHW for torch.

Calls (pytorch-grad-cam 1.5.7, default constructor and call arguments unless stated)
------------------------------------------------------------------------------------
For each model, target layer ``layer4`` = ``[tm.layer4[-1]]`` and ``layer3`` = ``[tm.layer3[-1]]``, and targets
``pred`` / ``given``::

    cam = Method(model=tm, target_layers=[layer])
    maps = cam(input_tensor=xt, targets=T)          # (3, 160, 160) float32 in [0, 1]

with Method in GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, GradCAMElementWise, LayerCAM, EigenCAM, EigenGradCAM,
ScoreCAM, AblationCAM, ShapleyCAM, FinerCAM and

* ``pred``: ``T = None`` (pgc targets the argmax of the logits); ``given``: ``T = [ClassifierOutputTarget(c) for c
  in [281, 504, 950]]``.
* ShapleyCAM: ``T = [ClassifierOutputReST(c) ...]`` with c = the argmax classes (pred) or the given classes
  (given), because with a plain logit target of a ReLU network its Hessian-vector term is zero (ShapleyCAM would
  equal GradCAM). Recorded as ``meta/shapley_target``.
* FinerCAM (base_method=GradCAM, alpha=1, comparison categories = default (1, 2, 3)): ``pred`` is
  ``cam(input_tensor=xt, targets=None)``, i.e. its default behaviour (main class = argmax); ``given`` calls it
  image by image, ``cam(input_tensor=xt[i:i+1], targets=None, target_idx=given[i])``, because ``target_idx`` is
  one class for the whole batch. The (main, comparison) classes pgc used are recorded (by a subclass of
  FinerWeightedTarget that only records its arguments) in ``meta/finer/{model}/{targets}/main`` (3,) and
  ``.../comparison`` (3, 3); they do not depend on the layer.
* ScoreCAM runs with ``cam.batch_size = 64`` and AblationCAM with ``batch_size=64``; the batch size only groups
  forward passes (checked: resnet18/layer3/pred with pgc's defaults 16 / 32 gives the same maps; the max
  differences are in ``meta/batch_check/*``).
* ScoreCAM and AblationCAM on resnet50 (2048 / 1024 forward passes of resnet50 per image and configuration) are
  run for ``layer4`` + ``pred`` only, unless ``--full``. resnet18 has all four configurations.
* EigenCAM ignores targets: it is run for both target settings, checked identical, and stored under both.
* FullGrad ignores target layers (it uses every Conv2d/BatchNorm2d with a bias, i.e. every BatchNorm2d of a
  ResNet): ``FullGrad(model=tm, target_layers=[])`` once per model and target setting, stored under layer ``all``.
* resnet18 only, layer4, pred: ``GradCAM_eigen_smooth`` = GradCAM called with ``eigen_smooth=True``;
  ``GradCAM_aug_smooth`` = GradCAM called with ``aug_smooth=True``; and GradCAM with
  ``target_layers=[tm.layer3[-1], tm.layer4[-1]]`` stored under layer ``layer3+layer4``.

Contents of the npz (``np.load`` without ``allow_pickle``)
---------------------------------------------------------
* ``{model}/{method}/{layer}/{targets}``: uint16 (3, 160, 160) = ``round(map * 65535)``. pgc's maps are checked to
  lie in [0, 1] before quantising, so ``golden / 65535`` is within 0.5 / 65535 <= 7.7e-6 of pgc's map.
  All-zero maps (pgc returns them when the CAM is <= 0 everywhere before its ReLU) are stored as they are. With
  these random weights the given classes 281 and 504 have negative logits on resnet18 images 0 and 1, and 950
  on resnet50 image 2; GradCAM, XGradCAM, HiResCAM (layer4) and ShapleyCAM return all-zero maps for some of them.
* ``map_keys`` (N,) str, ``map_allzero`` / ``map_constant`` (N, 3) bool (per image, of the float map),
  ``map_seconds`` (N,) float64 (time of the pgc call that produced the key).
* ``{model}/logits`` float32 (3, 1000), torch logits of xt; ``{model}/pred`` int64 (3,) their argmax.
* ``given`` int64 [281, 504, 950]; ``images`` str (3,); ``size`` 160; ``versions`` str (torch, torchvision,
  grad-cam, numpy, opencv); ``quant_scale`` 65535.
* ``meta/shapley_target``, ``meta/eigencam``, ``meta/restricted``: str notes; ``meta/finer/...`` as above;
  ``meta/batch_check/ScoreCAM`` and ``meta/batch_check/AblationCAM``: max |difference| of the float maps.
"""

from __future__ import annotations

import argparse
import os
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # ScoreCAM/AblationCAM draw a progress bar per image otherwise

import numpy as np

import jaxcam
from jaxcam.models import random_state_dict
from jaxcam.models.architectures import IMAGENET_MEAN, IMAGENET_STD

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "pgc_goldens.npz"
MODELS = ("resnet18", "resnet50")
IMAGES = ("chelsea", "coffee", "astronaut")
SIZE = 160
GIVEN = [281, 504, 950]
LAYERS = ("layer4", "layer3")
TARGETS = ("pred", "given")
LAYER_METHODS = ("GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "GradCAMElementWise", "LayerCAM",
                 "EigenCAM", "EigenGradCAM", "ScoreCAM", "AblationCAM", "ShapleyCAM", "FinerCAM")
EXPENSIVE = ("ScoreCAM", "AblationCAM")  # one forward pass per channel of the target layer per image
BATCH = 64  # ScoreCAM / AblationCAM batch size
QUANT = 65535


def build_model(name):
    import torch
    import torchvision

    sd = random_state_dict(name, seed=0)
    tm = getattr(torchvision.models, name)()
    res = tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    assert not res.unexpected_keys and all(k.endswith("num_batches_tracked") for k in res.missing_keys), res
    return tm.eval()


def inputs():
    imgs = jaxcam.sample_images(list(IMAGES))
    x = jaxcam.preprocess([imgs[n] for n in IMAGES], size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert x.shape == (len(IMAGES), SIZE, SIZE, 3) and x.dtype == np.float32, (x.shape, x.dtype)
    return x


class FinerRecorder:
    """Record the (main, comparison) classes FinerCAM builds its FinerWeightedTargets with; behaviour unchanged."""

    def __init__(self):
        import pytorch_grad_cam.finer_cam as finer_mod

        recorded = self.recorded = []
        base = finer_mod.FinerWeightedTarget

        class RecordingFinerWeightedTarget(base):
            def __init__(self, main_category, comparison_categories, alpha):
                super().__init__(main_category, comparison_categories, alpha)
                recorded.append((int(main_category), [int(c) for c in comparison_categories], float(alpha)))

        finer_mod.FinerWeightedTarget = RecordingFinerWeightedTarget

    def take(self):
        out, self.recorded[:] = list(self.recorded), []
        return out


def run_cam(cls, model, target_layers, x, targets, ctor=None, call=None, batch_size=None):
    """One pgc call; hooks are released afterwards (not via ``with``: pgc's __exit__ swallows IndexError)."""
    cam = cls(model=model, target_layers=target_layers, **(ctor or {}))
    if batch_size is not None:
        cam.batch_size = batch_size  # ScoreCAM reads self.batch_size (default 16); AblationCAM stores its argument
    try:
        out = cam(input_tensor=x, targets=targets, **(call or {}))
    finally:
        getattr(cam, "base_cam", cam).activations_and_grads.release()
    out = np.asarray(out)
    assert out.shape == (x.shape[0], SIZE, SIZE) and out.dtype == np.float32, (cls.__name__, out.shape, out.dtype)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--full", action="store_true", help="ScoreCAM/AblationCAM on every resnet50 configuration")
    ap.add_argument("--skip-batch-check", action="store_true")
    args = ap.parse_args()

    import cv2
    import torch
    import torchvision
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget

    torch.set_num_threads(2)
    torch.manual_seed(0)
    t_start = time.time()
    finer = FinerRecorder()

    x = inputs()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    versions = (f"torch {torch.__version__}, torchvision {torchvision.__version__}, grad-cam {version('grad-cam')}, "
                f"numpy {np.__version__}, opencv {cv2.__version__}")
    print(versions, flush=True)
    out = {"given": np.array(GIVEN, np.int64), "images": np.array(IMAGES), "size": np.array(SIZE),
           "versions": np.array(versions), "quant_scale": np.array(QUANT),
           "meta/shapley_target": np.array("ClassifierOutputReST (pred: of the argmax class; given: of the given "
                                           "classes)"),
           "meta/eigencam": np.array("EigenCAM ignores targets: run with both settings, identical, stored under "
                                     "both"),
           "meta/restricted": np.array("" if args.full else
                                       "resnet50 ScoreCAM and AblationCAM: layer4/pred only")}
    maps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}

    def record(key, fn):
        t0 = time.time()
        m = fn()
        seconds[key] = time.time() - t0
        maps[key] = m
        print(f"  {key:45s} {seconds[key]:7.1f}s  min {m.min():.4f} max {m.max():.4f} mean {m.mean():.4f}",
              flush=True)
        return m

    for name in MODELS:
        tm = build_model(name)
        with torch.no_grad():
            logits = tm(xt).numpy()
        pred = logits.argmax(-1).astype(np.int64)
        out[f"{name}/logits"], out[f"{name}/pred"] = logits, pred
        print(f"{name}: pred {pred.tolist()}, given-class logits "
              f"{np.round(logits[np.arange(3), GIVEN], 3).tolist()}", flush=True)
        layer_modules = {"layer4": tm.layer4[-1], "layer3": tm.layer3[-1]}
        classes = {"pred": [int(c) for c in pred], "given": GIVEN}

        for layer in LAYERS:
            tl = [layer_modules[layer]]
            for tname in TARGETS:
                logit_targets = None if tname == "pred" else [ClassifierOutputTarget(c) for c in GIVEN]
                for method in LAYER_METHODS:
                    key = f"{name}/{method}/{layer}/{tname}"
                    if (method in EXPENSIVE and name == "resnet50" and not args.full
                            and (layer, tname) != ("layer4", "pred")):
                        continue
                    cls = getattr(pgc, method)
                    if method == "ShapleyCAM":
                        rest = [ClassifierOutputReST(c) for c in classes[tname]]
                        record(key, lambda: run_cam(cls, tm, tl, xt, rest))
                    elif method == "FinerCAM":
                        if tname == "pred":
                            record(key, lambda: run_cam(cls, tm, tl, xt, None))
                        else:
                            record(key, lambda: np.concatenate(
                                [run_cam(cls, tm, tl, xt[i:i + 1], None, call={"target_idx": c})
                                 for i, c in enumerate(GIVEN)]))
                        used = finer.take()
                        assert len(used) == 3 and all(a == 1.0 for _, _, a in used), used
                        main_cls = np.array([u[0] for u in used], np.int64)
                        comp = np.array([u[1] for u in used], np.int64)
                        assert (main_cls == np.array(classes[tname])).all(), (main_cls, classes[tname])
                        for k, v in (("main", main_cls), ("comparison", comp)):
                            fk = f"meta/finer/{name}/{tname}/{k}"
                            assert fk not in out or (out[fk] == v).all(), (fk, out[fk], v)
                            out[fk] = v
                    elif method in EXPENSIVE:
                        ctor = {"batch_size": BATCH} if method == "AblationCAM" else None
                        bs = None if method == "AblationCAM" else BATCH
                        record(key, lambda: run_cam(cls, tm, tl, xt, logit_targets, ctor=ctor, batch_size=bs))
                    else:
                        record(key, lambda: run_cam(cls, tm, tl, xt, logit_targets))
                    if method == "EigenCAM" and tname == "given":
                        assert (maps[key] == maps[f"{name}/EigenCAM/{layer}/pred"]).all(), "EigenCAM used targets"

        for tname in TARGETS:
            logit_targets = None if tname == "pred" else [ClassifierOutputTarget(c) for c in GIVEN]
            record(f"{name}/FullGrad/all/{tname}", lambda: run_cam(pgc.FullGrad, tm, [], xt, logit_targets))

        if name == "resnet18":
            l4 = [tm.layer4[-1]]
            record(f"{name}/GradCAM_eigen_smooth/layer4/pred",
                   lambda: run_cam(pgc.GradCAM, tm, l4, xt, None, call={"eigen_smooth": True}))
            record(f"{name}/GradCAM_aug_smooth/layer4/pred",
                   lambda: run_cam(pgc.GradCAM, tm, l4, xt, None, call={"aug_smooth": True}))
            record(f"{name}/GradCAM/layer3+layer4/pred",
                   lambda: run_cam(pgc.GradCAM, tm, [tm.layer3[-1], tm.layer4[-1]], xt, None))
            if not args.skip_batch_check:
                # pgc's own defaults (ScoreCAM 16, AblationCAM 32) must reproduce the BATCH=64 goldens.
                tl = [tm.layer3[-1]]
                for method, kw in (("ScoreCAM", {}), ("AblationCAM", {})):
                    t0 = time.time()
                    m = run_cam(getattr(pgc, method), tm, tl, xt, None, **kw)
                    d = float(np.abs(m - maps[f"{name}/{method}/layer3/pred"]).max())
                    out[f"meta/batch_check/{method}"] = np.array(d)
                    print(f"  batch check {method} (pgc default batch size vs {BATCH}): max |diff| {d:.2e} "
                          f"({time.time() - t0:.1f}s)", flush=True)
                    assert d < 1e-4, d

    # Sanity check, quantise, save.
    keys = list(maps)
    allzero = np.zeros((len(keys), len(IMAGES)), bool)
    constant = np.zeros((len(keys), len(IMAGES)), bool)
    bad = []
    print(f"\n{'key':50s} {'min':>8s} {'max':>8s} {'mean':>8s}  flags")
    for i, key in enumerate(keys):
        m = maps[key]
        nan = ~np.isfinite(m).all(axis=(1, 2))
        allzero[i] = (m == 0).all(axis=(1, 2))
        constant[i] = m.max(axis=(1, 2)) == m.min(axis=(1, 2))
        flags = [f"{f} {np.flatnonzero(v).tolist()}" for f, v in (("NaN", nan), ("ALL-ZERO", allzero[i]),
                                                                    ("CONSTANT", constant[i] & ~allzero[i]))
                 if v.any()]
        print(f"{key:50s} {np.nanmin(m):8.4f} {np.nanmax(m):8.4f} {np.nanmean(m):8.4f}  {', '.join(flags)}")
        if nan.any() or m.min() < 0 or m.max() > 1:
            bad.append(key)
    assert not bad, f"maps with NaN or outside [0, 1]: {bad}"
    for key in keys:
        out[key] = np.round(maps[key].astype(np.float64) * QUANT).astype(np.uint16)
    out["map_keys"] = np.array(keys)
    out["map_allzero"], out["map_constant"] = allzero, constant
    out["map_seconds"] = np.array([seconds[k] for k in keys])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    total = time.time() - t_start
    print(f"\n{len(keys)} maps; degenerate (all-zero/constant) maps: "
          f"{[k for k, z, c in zip(keys, allzero, constant) if (z | c).any()]}")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {total:.0f}s ({total / 60:.1f} min)")


if __name__ == "__main__":
    main()
