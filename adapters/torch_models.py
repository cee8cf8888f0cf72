"""Models that ship with zoracle's torch adapter, each split finely for feature reuse.

- :class:`ResNet20`: the CIFAR-10 ResNet-20 (He et al. 2016, option-A shortcuts, about
  270K parameters) with one block per convolution and per BatchNorm (39 blocks; the
  DeepZero reference splits it into 12 modules).
- :class:`DigitsCNN`: a small CNN for 8x8 inputs (``sklearn.datasets.load_digits``).
- :func:`make_mlp`, :func:`make_cnn`: the speed benchmark's models.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._torch_chain import Step, fork

__all__ = ["ResNet20", "BasicBlock", "DigitsCNN", "make_mlp", "make_cnn"]


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus an option-A shortcut (subsample, zero-pad channels)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.stride = stride
        self.pad = planes - in_planes

    def shortcut(self, x):
        if self.stride != 1 or self.pad:
            x = x[:, :, :: self.stride, :: self.stride]
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def join(self, state):
        """``(main, skip) -> relu(main + shortcut(skip))``: the end of the residual block."""
        return (F.relu(state[0] + self.shortcut(state[1])),) + tuple(state[2:])

    def zoracle_steps(self) -> list:
        return [fork, self.conv1, self.bn1, self.relu, self.conv2, self.bn2, Step(fn=self.join, name="join")]

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _flatten_pool(state):
    return (F.adaptive_avg_pool2d(state[0], 1).flatten(1),) + tuple(state[1:])


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 inputs (CIFAR-10): 3 stages of 3 basic blocks (16, 32, 64 planes).

    ``zoracle_steps()`` exposes one step per convolution and per BatchNorm, so
    ``TorchOracle`` reuses features down to single layers; ``forward`` runs the same chain.

    Parameters
    ----------
    num_classes : int
    in_channels : int
    width : int
        Planes of the first stage (16 in the paper).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        blocks, inp = [], w
        for planes, stride in ((w, 1), (2 * w, 2), (4 * w, 2)):
            for i in range(3):
                blocks.append(BasicBlock(inp, planes, stride if i == 0 else 1))
                inp = planes
        self.layers = nn.ModuleList(blocks)
        self.linear = nn.Linear(inp, num_classes)
        self._relu = nn.ReLU()
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def zoracle_steps(self) -> list:
        steps = [self.conv1, self.bn1, self._relu]
        for blk in self.layers:
            steps += blk.zoracle_steps()
        return steps + [Step(fn=_flatten_pool, name="pool"), self.linear]

    def forward(self, x):
        state = (x,)
        for st in self.zoracle_steps():
            state = st(state) if isinstance(st, Step) else (st(state[0]),) + tuple(state[1:])
        return state[0]


class DigitsCNN(nn.Sequential):
    """A small CNN for 1x8x8 digit images (about 1.5K parameters with ``width=8``).

    conv3x3(1->w)-BN-ReLU, conv3x3(w->w, stride 2)-BN-ReLU, global average pool, linear.
    An ``nn.Sequential``, so the split is derived automatically.
    """

    def __init__(self, num_classes: int = 10, width: int = 8, in_channels: int = 1):
        w = width
        super().__init__(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, num_classes),
        )


def make_mlp(in_features: int = 64, hidden: int = 64, depth: int = 4, num_classes: int = 10) -> nn.Sequential:
    """The benchmark MLP: ``depth`` hidden Linear+ReLU layers of width ``hidden``."""
    layers, inp = [], in_features
    for _ in range(depth):
        layers += [nn.Linear(inp, hidden), nn.ReLU()]
        inp = hidden
    layers.append(nn.Linear(inp, num_classes))
    return nn.Sequential(*layers)


def make_cnn(channels: int = 16, num_classes: int = 10, in_channels: int = 1, batchnorm: bool = True) -> nn.Sequential:
    """The benchmark CNN for 8x8 inputs: two conv3x3 (+BN) layers, pooling, a linear head."""
    c = channels
    bn = (lambda n: [nn.BatchNorm2d(n)]) if batchnorm else (lambda n: [])
    return nn.Sequential(
        nn.Conv2d(in_channels, c, 3, padding=1), *bn(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1), *bn(c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c * 16, num_classes),
    )
