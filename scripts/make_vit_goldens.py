"""Golden ViT maps from pytorch-grad-cam 1.5.7, so that jaxcam's ViT parity is checked without torch.

Writes tests/fixtures/vit_goldens.npz. Run it in a separate virtual environment, so the main one stays torch-free:

    python3 -m venv /work/venv-ref && . /work/venv-ref/bin/activate
    pip install -c constraints.txt -e '.[dev]' torch==2.14.1 torchvision==0.29.1 grad-cam==1.5.7 transformers==4.57.6
    python scripts/make_vit_goldens.py

It takes a few seconds on 2 CPU threads; the output is about 0.3 MB.

Model (local, nothing downloaded)
---------------------------------
``ViTForImageClassification(ViTConfig(**CONFIG))`` after ``torch.manual_seed(SEED)``, ``eval()``, CPU, float32
(``initializer_range=0.2`` instead of 0.02, so the random logits differ by more than float noise). Its Flax twin is
``FlaxViTForImageClassification.from_pretrained(dir, from_pt=True)`` after ``save_pretrained(dir)``: transformers'
own PyTorch -> Flax conversion. The twin's parameters are stored, so the test rebuilds it without torch.

Inputs: ``jaxcam.preprocess(sample_images(IMAGES), size=64, mean=0.5, std=0.5)`` (NHWC), transposed to NCHW.

Calls (pytorch-grad-cam 1.5.7)
------------------------------
Target layer ``model.vit.encoder.layer[-1].layernorm_before`` (pytorch-grad-cam's recommendation for ViTs:
``blocks[-1].norm1``; the last block's output has zero gradient on the patch tokens), through a wrapper module
returning ``.logits``, with the ``reshape_transform`` of pytorch-grad-cam's ViT tutorial (drop the CLS token,
reshape to (N, h, w, C), channels first). For targets ``pred`` (None: the argmax) and ``given`` (GIVEN):

* ``GradCAM``, ``LayerCAM``: default arguments.
* ``ScoreCAM``: ``cam.batch_size = 64`` (the batch size only groups forward passes).
* ``AblationCAM(..., ablation_layer=PatchAblation(), batch_size=64)``: ``PatchAblation`` is pytorch-grad-cam's
  ``AblationLayerVit`` setting channel k of the patch tokens to 0, the paper's ablation on the grid jaxcam
  explains. The stock ``AblationLayerVit`` also ablates the CLS token, and on a layer with negative values (every
  LayerNorm output) writes ``min - 1e7`` instead of 0; its maps are stored under ``stock/AblationCAM/...`` for
  reference, not compared (jaxcam keeps prefix tokens and ablates to 0, see ``jaxcam.methods.perturbation``).

Contents of the npz (``np.load`` without ``allow_pickle``)
---------------------------------------------------------
* ``config``: the ViTConfig as JSON; ``seed``; ``images`` (3,) str; ``size``; ``given`` (3,) int64;
  ``layer``: the jaxcam layer name; ``versions`` str.
* ``flax/<path>``: every parameter of the Flax twin (``/``-joined path under ``params``), float32.
* ``torch/logits`` (3, C) float32 and ``torch/pred`` (3,) int64.
* ``{method}/{targets}``: (3, 64, 64) float32 maps in [0, 1], method in GradCAM, LayerCAM, ScoreCAM, AblationCAM;
  ``stock/AblationCAM/{targets}`` likewise.
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np

import jaxcam
from jaxcam.models.hf import from_hf

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "vit_goldens.npz"
CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=64,
              patch_size=8, num_labels=10, initializer_range=0.2)
SEED = 0
IMAGES = ("chelsea", "coffee", "astronaut")
SIZE = 64
GIVEN = [3, 7, 1]
METHODS = ("GradCAM", "LayerCAM", "ScoreCAM", "AblationCAM")
LAYER = "vit.encoder.layer.1.layernorm_before"
BATCH = 64


def build_torch(config=None, seed=SEED):
    """The PyTorch ViT with random weights from ``seed``."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**(config or CONFIG))).eval()


def flax_twin(torch_model):
    """The Flax model with the same weights, by transformers' local PyTorch -> Flax conversion."""
    from transformers import FlaxViTForImageClassification

    with tempfile.TemporaryDirectory() as d:
        torch_model.save_pretrained(d)
        return FlaxViTForImageClassification.from_pretrained(d, from_pt=True)


def inputs():
    imgs = jaxcam.sample_images(list(IMAGES))
    return np.asarray(jaxcam.preprocess([imgs[n] for n in IMAGES], size=SIZE, mean=(0.5,) * 3, std=(0.5,) * 3))


def reshape_transform(tensor, height=SIZE // CONFIG["patch_size"], width=SIZE // CONFIG["patch_size"]):
    """pytorch-grad-cam's ViT reshape: drop the CLS token, tokens -> (N, C, h, w)."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def pgc_maps(torch_model, x_nhwc, method, targets, stock_ablation=False):
    """One pytorch-grad-cam call on the ViT's last block's first LayerNorm: (N, H, W) maps in [0, 1]."""
    import pytorch_grad_cam as pgc
    import torch
    from pytorch_grad_cam.ablation_layer import AblationLayerVit
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(pixel_values=x).logits

    class PatchAblation(AblationLayerVit):
        """AblationLayerVit ablating channel k of the patch tokens to 0 (the CLS token kept)."""

        def __call__(self, x):
            output = self.activations
            for i in range(output.size(0)):
                output[i, 1:, self.indices[i]] = 0
            return output

    wrapped = Logits(torch_model).eval()
    layer = [torch_model.vit.encoder.layer[-1].layernorm_before]
    kw = {"reshape_transform": reshape_transform}
    if method == "AblationCAM":
        kw.update(ablation_layer=AblationLayerVit() if stock_ablation else PatchAblation(), batch_size=BATCH)
    cam = getattr(pgc, method)(model=wrapped, target_layers=layer, **kw)
    if method == "ScoreCAM":
        cam.batch_size = BATCH
    xt = torch.from_numpy(np.ascontiguousarray(np.transpose(x_nhwc, (0, 3, 1, 2))))
    tg = None if targets is None else [ClassifierOutputTarget(int(c)) for c in targets]
    try:
        out = cam(input_tensor=xt, targets=tg)
    finally:
        getattr(cam, "base_cam", cam).activations_and_grads.release()
    out = np.asarray(out, np.float32)
    assert out.shape == (x_nhwc.shape[0], SIZE, SIZE) and 0 <= out.min() and out.max() <= 1, out.shape
    return out


def main():
    import torch
    from flax.traverse_util import flatten_dict

    torch.set_num_threads(2)
    tm = build_torch()
    fm = flax_twin(tm)
    x = inputs()
    with torch.no_grad():
        logits = tm(pixel_values=torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())).logits.numpy()
    model = from_hf(fm)
    ours_logits = np.asarray(model(x))
    print(f"torch vs flax logits: max |diff| {np.abs(ours_logits - logits).max():.2e}")
    out = {"config": np.str_(json.dumps(CONFIG)), "seed": np.int64(SEED), "images": np.array(IMAGES),
           "size": np.int64(SIZE), "given": np.array(GIVEN, np.int64), "layer": np.str_(LAYER),
           "versions": np.array([f"{p}=={version(p)}" for p in ("torch", "transformers", "grad-cam", "numpy")]),
           "torch/logits": logits.astype(np.float32), "torch/pred": logits.argmax(-1).astype(np.int64)}
    for path, v in flatten_dict(fm.params).items():
        out["flax/" + "/".join(path)] = np.asarray(v, np.float32)
    jax_names = {"GradCAM": "gradcam", "LayerCAM": "layercam", "ScoreCAM": "scorecam", "AblationCAM": "ablationcam"}
    for which, targets in (("pred", None), ("given", GIVEN)):
        for method in METHODS:
            want = pgc_maps(tm, x, method, targets)
            out[f"{method}/{which}"] = want
            ours = np.asarray(jaxcam.explain(model, x, jax_names[method], targets=targets, layer=LAYER,
                                             preprocessed=True, batch_size=BATCH))
            r = np.corrcoef(ours.ravel(), want.ravel())[0, 1]
            print(f"{method:12s} {which:5s} max |diff| {np.abs(ours - want).max():.2e}  r {r:.6f}")
        stock = pgc_maps(tm, x, "AblationCAM", targets, stock_ablation=True)
        out[f"stock/AblationCAM/{which}"] = stock
        ours = np.asarray(jaxcam.explain(model, x, "ablationcam", targets=targets, layer=LAYER, preprocessed=True))
        print(f"stock AblationLayerVit {which}: r {np.corrcoef(ours.ravel(), stock.ravel())[0, 1]:.4f} (not compared)")
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
