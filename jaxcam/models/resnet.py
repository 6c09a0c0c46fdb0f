"""torchvision ResNet-18/34/50/101/152 (v1.5: the stride sits on the 3x3 conv), in Flax NNX, NHWC.

Module and parameter names mirror torchvision (``layer3.1.conv2``, ``layer1.0.downsample.0``), so weight conversion
is a rename plus transposes. Stages, in order: ``conv1, bn1, relu, maxpool, layer1.0 ... layer4.{n-1}, avgpool, fc``;
``layer1`` .. ``layer4`` are aliases of the last block of each stage. Default CAM layer: ``layer4`` (what
pytorch-grad-cam's README uses, ``model.layer4[-1]``).
"""

from __future__ import annotations

import jax
from flax import nnx

from .layers import batch_norm, conv, global_avg_pool, linear, max_pool

_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
           101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}


def _downsample(cin: int, cout: int, stride: int, rngs: nnx.Rngs):
    if stride == 1 and cin == cout:
        return None
    return nnx.List([conv(cin, cout, 1, stride, 0, rngs=rngs), batch_norm(cout, rngs=rngs)])


class BasicBlock(nnx.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = conv(cin, planes, 3, stride, 1, rngs=rngs)
        self.bn1 = batch_norm(planes, rngs=rngs)
        self.conv2 = conv(planes, planes, 3, 1, 1, rngs=rngs)
        self.bn2 = batch_norm(planes, rngs=rngs)
        self.downsample = _downsample(cin, planes, stride, rngs)

    def __call__(self, x):
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        idt = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(y + idt)


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = conv(cin, planes, 1, 1, 0, rngs=rngs)
        self.bn1 = batch_norm(planes, rngs=rngs)
        self.conv2 = conv(planes, planes, 3, stride, 1, rngs=rngs)
        self.bn2 = batch_norm(planes, rngs=rngs)
        self.conv3 = conv(planes, planes * 4, 1, 1, 0, rngs=rngs)
        self.bn3 = batch_norm(planes * 4, rngs=rngs)
        self.downsample = _downsample(cin, planes * 4, stride, rngs)

    def __call__(self, x):
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        idt = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(y + idt)


class ResNet(nnx.Module):
    def __init__(self, depth: int, num_classes: int = 1000, *, rngs: nnx.Rngs):
        kind, counts = _BLOCKS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.conv1 = conv(3, 64, 7, 2, 3, rngs=rngs)
        self.bn1 = batch_norm(64, rngs=rngs)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts)):
            blocks = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                blocks.append(block(cin, planes, stride, rngs=rngs))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nnx.List(blocks))
        self.fc = linear(cin, num_classes, rngs=rngs)

    def stages(self):
        out = [("conv1", self.conv1), ("bn1", self.bn1), ("relu", jax.nn.relu),
               ("maxpool", lambda x: max_pool(x, 3, 2, 1))]
        for i in range(1, 5):
            for j, blk in enumerate(getattr(self, f"layer{i}")):
                out.append((f"layer{i}.{j}", blk))
        out += [("avgpool", global_avg_pool), ("fc", self.fc)]
        return out

    def layer_aliases(self):
        return {f"layer{i}": f"layer{i}.{len(getattr(self, f'layer{i}')) - 1}" for i in range(1, 5)}
