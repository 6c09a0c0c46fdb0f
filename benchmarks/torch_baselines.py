"""The PyTorch side of the benchmark suite: every baseline jaxcam is timed against, built on the same weights.

- pytorch-grad-cam 1.5.7: one ``with Method(model, [layer]) as cam`` object per measurement (its hooks are released
  afterwards, so no other measurement pays for them), ``ClassifierOutputTarget`` per image;
- torchcam 0.5.0 (``torchcam.methods``): forward with gradients, the extractor's maps (min-max at feature
  resolution), then the bilinear upsample to the input and a min-max (what jaxcam and pytorch-grad-cam return);
- the plain PyTorch floors: forward under ``torch.inference_mode`` and forward + backward of the target scores
  (with parameter gradients, as ``loss.backward()`` in pytorch-grad-cam computes them);
- the strongest hand-written PyTorch Grad-CAM: the trunk up to the target layer under ``torch.no_grad()``, then
  ``acts.requires_grad_()``, only the head, ``torch.autograd.grad(score, acts)``, weights = gradient mean over
  (h, w), ReLU of the weighted sum, per-image min-max, bilinear upsample (and the min-max pytorch-grad-cam does after
  it), on a channels-last copy of the model, with ``torch.compile`` where it works (a failure is recorded and the
  eager version is used) and TF32 on CUDA.

Imported by ``benchmarks/workloads.py`` and ``benchmarks/probe.py``; needs torch, torchvision, grad-cam, torchcam
(and timm for EfficientNet-Lite0): ``pip install -c constraints.txt -e '.[torch]'``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

PGC_GRADIENT = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
                "hirescam": "HiResCAM", "gradcam_elementwise": "GradCAMElementWise", "layercam": "LayerCAM",
                "eigengradcam": "EigenGradCAM"}
PGC_OTHER = {"scorecam": "ScoreCAM", "ablationcam": "AblationCAM", "eigencam": "EigenCAM"}
TORCHCAM = {"gradcam": "GradCAM", "gradcam++": "GradCAMpp", "xgradcam": "XGradCAM", "layercam": "LayerCAM"}
SIGNLESS = {"eigengradcam", "eigencam"}  # principal components: the sign of the SVD is arbitrary
EPS = 1e-7


class Device:
    """Where torch runs, and the synchronisation every timed call ends with on CUDA."""

    def __init__(self, name: str = "cpu"):
        self.name = name
        self.cuda = name == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def tensor(self, x_nhwc: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))).to(self.name)

    @contextlib.contextmanager
    def tf32(self):
        """TF32 matmuls and convolutions on CUDA (the hand-written baseline's best case), restored afterwards."""
        if not self.cuda:
            yield
            return
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ------------------------------------------------------------------------------------------ model anatomy
def target_module(model, tm: nn.Module, layer: str | None = None) -> nn.Module:
    """The torch module whose output is jaxcam ``model``'s CAM layer ``layer`` (default: its default layer; a
    ResNet stage ``layerK`` or a VGG ``features.N`` otherwise)."""
    family, layer = model.arch.family, model.canonical_layer(layer) if layer else model.default_layer
    if family == "resnet":
        stage, _, block = layer.partition(".")
        return getattr(tm, stage)[int(block) if block else -1]
    if family == "vgg":
        return tm.features[int(layer.split(".")[1])]
    if family == "efficientnet_lite" and layer == model.default_layer:
        return tm.bn2  # timm's BatchNormAct2d (BN + ReLU6) = jaxcam's ``_bn1``
    raise ValueError(f"no torch module for layer {layer!r} of {model.name}")


class _Call(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def split(model, tm: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(trunk, head)`` of the torch model at jaxcam ``model``'s default CAM layer: ``head(trunk(x)) == tm(x)``."""
    family = model.arch.family
    if family == "resnet":
        trunk = nn.Sequential(tm.conv1, tm.bn1, tm.relu, tm.maxpool, tm.layer1, tm.layer2, tm.layer3, tm.layer4)
        return trunk, nn.Sequential(tm.avgpool, nn.Flatten(1), tm.fc)
    if family == "vgg":
        n = int(model.default_layer.split(".")[1])
        return tm.features[:n + 1], nn.Sequential(tm.features[n + 1:], tm.avgpool, nn.Flatten(1), tm.classifier)
    if family == "efficientnet_lite":
        return _Call(tm.forward_features), _Call(tm.forward_head)
    raise ValueError(f"no torch twin for {model.name}")


def hooks_left(tm: nn.Module) -> int:
    """Forward/backward hooks still registered anywhere in ``tm`` (0 between measurements)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in tm.modules())


def minmax(m: torch.Tensor) -> torch.Tensor:
    """Per-image min-max over every axis but the first: ``(m - min) / (1e-7 + max(m - min))``."""
    flat = m.flatten(1)
    flat = flat - flat.amin(1, keepdim=True)
    return (flat / (EPS + flat.amax(1, keepdim=True))).view_as(m)


# ------------------------------------------------------------------------------------------------ floors
def forward_fn(tm: nn.Module, xt: torch.Tensor):
    """The plain PyTorch forward (``torch.inference_mode``): the floor on the torch side."""
    def run():
        with torch.inference_mode():
            return tm(xt)
    return run


def forward_backward_fn(tm: nn.Module, xt: torch.Tensor, classes):
    """Forward + backward of the sum of the target logits, parameter gradients included (what
    ``loss.backward()`` in pytorch-grad-cam computes)."""
    idx = torch.tensor(np.array(classes, dtype=np.int64), device=xt.device).view(-1, 1)

    def run():
        tm.zero_grad(set_to_none=True)
        out = tm(xt)
        out.gather(1, idx).sum().backward()
        return out.detach()
    return run


# -------------------------------------------------------------------------------------- pytorch-grad-cam
@contextlib.contextmanager
def pgc_method(method: str, tm: nn.Module, layer: nn.Module, xt: torch.Tensor, classes, **kwargs):
    """A pytorch-grad-cam method as a call ``() -> (N, H, W) numpy maps``; hooks released on exit."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pgc, {**PGC_GRADIENT, **PGC_OTHER}[method])
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with cls(model=tm, target_layers=[layer]) as cam:
        for k, v in kwargs.items():
            setattr(cam, k, v)
        yield lambda: cam(input_tensor=xt, targets=targets)


# ------------------------------------------------------------------------------------------------- torchcam
@contextlib.contextmanager
def torchcam_method(method: str, tm: nn.Module, layer: nn.Module, xt: torch.Tensor, classes):
    """A torchcam extractor as a call ``() -> (N, H, W)`` maps at the input resolution; hooks removed on exit."""
    import torchcam.methods as tcm

    ext = getattr(tcm, TORCHCAM[method])(tm, target_layer=layer, input_shape=tuple(xt.shape[1:]))
    cls = [int(c) for c in classes]
    size = tuple(xt.shape[-2:])

    def run():
        scores = tm(xt)
        cams = ext(class_idx=cls, scores=scores)[0]
        up = F.interpolate(cams[:, None], size=size, mode="bilinear", align_corners=False)
        return minmax(up)[:, 0]
    try:
        yield run
    finally:
        ext.remove_hooks()


# --------------------------------------------------------------------------------------- hand-written Grad-CAM
def _post(acts: torch.Tensor, grads: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    w = grads.mean(dim=(2, 3), keepdim=True)
    cam = minmax(torch.relu((w * acts).sum(1, keepdim=True)))
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return minmax(cam)[:, 0]


class HandWrittenGradCAM:
    """Split Grad-CAM: trunk without autograd, gradients through the head only (see the module docstring).

    ``compile=True`` wraps the trunk, the head and the map arithmetic in ``torch.compile`` (default settings: a
    static graph for the first shape, dynamic shapes after a recompilation); the first call compiles. If compiling
    fails (no C++ compiler, an unsupported op), ``compile_error`` says why and the eager version runs instead."""

    def __init__(self, model, tm: nn.Module, device: Device, compile: bool = False, channels_last: bool = True):
        self.device, self.channels_last = device, channels_last
        tm = copy.deepcopy(tm)  # its own copy: channels-last weights must not change the other baselines' model
        if channels_last:
            tm = tm.to(memory_format=torch.channels_last)
        for p in tm.parameters():
            p.requires_grad_(False)  # gradients flow to the activations only
        self.trunk, self.head = split(model, tm)
        self.post = _post
        self.compile_requested, self.compile_error, self.compile_s = compile, None, None
        self._eager = (self.trunk, self.head, self.post)
        if compile:
            try:
                self.trunk, self.head, self.post = (torch.compile(self.trunk), torch.compile(self.head),
                                                    torch.compile(_post))
            except Exception as exc:  # noqa: BLE001 - recorded, then the eager version runs
                self._fallback(exc)

    @property
    def compiled(self) -> bool:
        return self.compile_requested and self.compile_error is None

    @property
    def label(self) -> str:
        form = "channels-last" if self.channels_last else "NCHW"
        if self.compiled:
            return f"hand-written split Grad-CAM (torch.compile, {form})"
        return f"hand-written split Grad-CAM (eager, {form})"

    def _fallback(self, exc: BaseException) -> None:
        text = " ".join(str(exc).split())[:300]
        self.compile_error = f"torch.compile unavailable: {type(exc).__name__}: {text}"
        self.trunk, self.head, self.post = self._eager

    def prepare(self, xt: torch.Tensor) -> torch.Tensor:
        return xt.contiguous(memory_format=torch.channels_last) if self.channels_last else xt

    def __call__(self, xt: torch.Tensor) -> torch.Tensor:
        with self.device.tf32():
            with torch.no_grad():
                acts = self.trunk(xt)
            acts = acts.detach().requires_grad_()
            with torch.enable_grad():
                logits = self.head(acts)
                score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
                (grads,) = torch.autograd.grad(score, acts)
            with torch.no_grad():
                return self.post(acts.detach(), grads, tuple(xt.shape[-2:]))

    def warm(self, xt: torch.Tensor):
        """The first call (compiling when asked); falls back to eager on a compile error. ``(maps, seconds)``."""
        t0 = time.perf_counter()
        try:
            out = self(xt)
            self.device.sync()
        except Exception as exc:  # noqa: BLE001 - torch.compile fails lazily, at the first call
            if not self.compiled:
                raise
            self._fallback(exc)
            t0 = time.perf_counter()
            out = self(xt)
            self.device.sync()
        dt = time.perf_counter() - t0
        if self.compiled and self.compile_s is None:
            self.compile_s = dt
        return out, dt
