"""Models that ship with zoracle's torch adapter, each split finely for feature reuse.

- :class:`ResNet20`: the CIFAR-10 ResNet-20 (He et al. 2016, option-A shortcuts, about
  270K parameters) with one block per convolution and per BatchNorm (39 blocks; the
  DeepZero reference splits it into 12 modules).
- :class:`DigitsCNN`: a small CNN for 8x8 inputs (``sklearn.datasets.load_digits``).
- :func:`make_mlp`, :func:`make_cnn`: the speed benchmark's models.
- The zoo (``ZOO``, :func:`zoo_batch`): models written the way torchvision and timm write
  them, with no ``zoracle_steps()``: :func:`resnet18` (torchvision layout, width 8),
  :func:`mobilenet_v3_small`, :class:`TinyViT` (``nn.TransformerEncoderLayer``),
  :class:`Conv1dGroupNormNet`, :class:`TextClassifier` (``nn.Embedding``),
  :class:`SharedTiedMLP` and :func:`shared_sequential` (shared modules, tied weights),
  :class:`BNActNet` (timm-style :class:`BatchNormAct2d`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("zoracle.adapters.torch_models needs torch: pip install torch==2.13.0 && pip install -e '.[torch]' "
                      "(for the CPU wheel, add --index-url https://download.pytorch.org/whl/cpu to the first)") from exc
import torch.nn.functional as F
from torch import nn

from zoracle._errors import check_flag

from ._torch_chain import Step, fork

__all__ = ["ResNet20", "BasicBlock", "DigitsCNN", "make_mlp", "make_cnn",
           "TVBasicBlock", "TVResNet", "resnet18", "ConvBNAct", "SqueezeExcitation", "InvertedResidual",
           "MobileNetV3Small", "mobilenet_v3_small", "TinyViT", "Conv1dGroupNormNet", "TextClassifier",
           "SharedTiedMLP", "shared_sequential", "BatchNormAct2d", "BNActNet", "ZooEntry", "ZOO", "zoo_batch"]


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus an option-A shortcut (subsample, zero-pad channels)."""

    _no_functional_dropout = True  # no F.dropout in its forward or steps: TorchOracle needs no dropout mode

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
        # the sum is a fresh tensor: rectify it in place (one pass less, same values)
        return (torch.add(state[0], self.shortcut(state[1])).relu_(),) + tuple(state[2:])

    def join_channel(self, col, ch, state):
        """``join``'s main output when only channels ``ch`` of ``state[0]`` changed, to ``col``."""
        skip = self.shortcut(state[1]).index_select(1, ch).transpose(0, 1)  # (k, B, H, W)
        return torch.add(col, skip).relu_()

    join.layout_free = True  # slicing, padding and elementwise ops only

    def zoracle_steps(self) -> list:
        return [fork, self.conv1, self.bn1, self.relu, self.conv2, self.bn2,
                Step(fn=self.join, name="join", channel_fn=self.join_channel)]

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _flatten_pool(state):
    return (F.adaptive_avg_pool2d(state[0], 1).flatten(1),) + tuple(state[1:])


_flatten_pool.layout_free = True  # any memory layout (channels-last suffixes, see TorchOracle)


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

    _no_functional_dropout = True  # no F.dropout in its forward or steps: TorchOracle needs no dropout mode

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
    """A small CNN for 1x8x8 digit images (1,442 parameters with ``width=8``).

    conv3x3(1->w)-BN-ReLU, conv3x3(w->2w, stride 2)-BN-ReLU, global average pool, linear.
    An ``nn.Sequential``, so the split is derived automatically. The convolutions have no bias,
    as torchvision writes a convolution before a BatchNorm: in train mode its mean subtraction
    cancels a bias, whose coordinates would be queries spent for nothing (``train`` warns of them).
    """

    def __init__(self, num_classes: int = 10, width: int = 8, in_channels: int = 1):
        w = width
        super().__init__(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
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
    """The benchmark CNN for 8x8 inputs: two conv3x3 (+BN) layers, pooling, a linear head.

    With ``batchnorm`` (5,082 parameters at the defaults) the convolutions have no bias, which the
    BatchNorm after each would cancel in train mode (as torchvision writes them); without it they
    have one (5,050)."""
    c = channels
    norm = check_flag("batchnorm", batchnorm)
    bn = (lambda n: [nn.BatchNorm2d(n)]) if norm else (lambda n: [])
    return nn.Sequential(
        nn.Conv2d(in_channels, c, 3, padding=1, bias=not norm), *bn(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1, bias=not norm), *bn(c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c * 16, num_classes),
    )


# ------------------------------------------------------------------------------------------
# Models written the way torchvision and timm write them: in-place activations, residual
# adds in ``forward()``, modules with their own ``forward``, no ``zoracle_steps()``. They
# are the adapter's test and benchmark zoo; ``ZOO`` lists each with its input.
# ------------------------------------------------------------------------------------------
def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class TVBasicBlock(nn.Module):
    """A torchvision-style residual block: one in-place ReLU module applied twice, ``out += identity``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class TVResNet(nn.Module):
    """A torchvision-style ResNet: 7x7 stem, max pool, four stages, average pool, ``fc``.

    ``width`` is the first stage's planes (64 in torchvision); stages double it. Input
    ``(N, in_channels, H, W)``, any ``H, W >= 32``.
    """

    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 10, width: int = 8, in_channels: int = 3):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [TVBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [TVBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnet18(num_classes: int = 10, width: int = 8, in_channels: int = 3) -> TVResNet:
    """Torchvision's ResNet-18 layout at ``width`` planes (64 in torchvision; about 175K parameters at 8)."""
    return TVResNet((2, 2, 2, 2), num_classes, width, in_channels)


def _divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never below 90% of ``v`` (MobileNet's rule)."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


class ConvBNAct(nn.Sequential):
    """Conv2d, BatchNorm2d and an optional in-place activation (torchvision's ``Conv2dNormActivation``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act=nn.ReLU):
        layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel attention with its own ``forward``: pool, 1x1 conv, ReLU, 1x1 conv, Hardsigmoid, rescale."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def _scale(self, x):
        s = self.avgpool(x)
        s = self.activation(self.fc1(s))
        return self.scale_activation(self.fc2(s))

    def forward(self, x):
        return self._scale(x) * x


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expand, depthwise kxk, optional SE, 1x1 project, ``result += x``."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, use_se: bool, act, stride: int):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        layers = []
        if expanded != cin:
            layers.append(ConvBNAct(cin, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, _divisible(expanded // 4)))
        layers.append(ConvBNAct(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


# MobileNetV3-small's bottlenecks: kernel, expanded, out, SE, activation, stride (Howard et al. 2019, Table 2)
_MNV3_SMALL = ((3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
               (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
               (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
               (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1))


class MobileNetV3Small(nn.Module):
    """A torchvision-style MobileNetV3-small: Hardswish stem, 11 inverted residuals, dropout head.

    ``width_mult`` scales every channel count (1.0 in torchvision; about 120K parameters at
    0.25 with 10 classes). Input ``(N, in_channels, H, W)``, any ``H, W >= 32``.
    """

    def __init__(self, num_classes: int = 10, width_mult: float = 0.25, in_channels: int = 3,
                 dropout: float = 0.2):
        super().__init__()
        ch = lambda c: _divisible(c * width_mult)  # noqa: E731
        acts = {"RE": nn.ReLU, "HS": nn.Hardswish}
        cin = ch(16)
        layers = [ConvBNAct(in_channels, cin, 3, 2, act=nn.Hardswish)]
        for k, exp, out, se, act, stride in _MNV3_SMALL:
            layers.append(InvertedResidual(cin, k, ch(exp), ch(out), se, acts[act], stride))
            cin = ch(out)
        last_conv = 6 * cin
        layers.append(ConvBNAct(cin, last_conv, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = ch(1024)
        self.classifier = nn.Sequential(nn.Linear(last_conv, last), nn.Hardswish(inplace=True),
                                        nn.Dropout(p=dropout, inplace=True), nn.Linear(last, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v3_small(num_classes: int = 10, width_mult: float = 0.25, in_channels: int = 3) -> MobileNetV3Small:
    """Torchvision's MobileNetV3-small layout at ``width_mult`` (see :class:`MobileNetV3Small`)."""
    return MobileNetV3Small(num_classes, width_mult, in_channels)


class TinyViT(nn.Module):
    """A small vision transformer: patch-embedding conv, class token, learned positions,
    ``nn.TransformerEncoderLayer(dropout=0.1, batch_first=True)`` layers, LayerNorm, linear head.

    Input ``(N, in_channels, image, image)``; ``image`` divisible by ``patch``.
    """

    def __init__(self, num_classes: int = 10, image: int = 16, patch: int = 4, in_channels: int = 3,
                 dim: int = 16, depth: int = 2, heads: int = 2, mlp: int = 32, dropout: float = 0.1):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        n = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n + 1, dim))
        self.pos_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, mlp, dropout=dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, x], dim=1) + self.pos_embed)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x[:, 0]))


class Conv1dGroupNormNet(nn.Module):
    """A 1-D signal classifier: Conv1d + GroupNorm + in-place SiLU stem, one residual block, pool, head.

    Input ``(N, in_channels, length)``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 4, channels: int = 16, groups: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(in_channels, channels, 5, padding=2), nn.GroupNorm(groups, channels),
                                  nn.SiLU(inplace=True))
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(groups, channels)
        self.act = nn.SiLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.stem(x)
        out = self.act(self.gn1(self.conv1(x)))
        out = self.gn2(self.conv2(out))
        out += x
        out = self.act(out)
        return self.fc(self.pool(out).flatten(1))


class TextClassifier(nn.Module):
    """Token ids ``(N, seq_len)`` (int64 in ``[0, vocab)``, 0 = padding) -> class logits.

    Embedding, masked mean over tokens, Linear + in-place ReLU, dropout, Linear.
    """

    def __init__(self, vocab: int = 50, dim: int = 16, hidden: int = 32, num_classes: int = 10,
                 dropout: float = 0.1):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.fc1 = nn.Linear(dim, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, tokens):
        mask = (tokens != 0).unsqueeze(-1).to(self.embedding.weight.dtype)
        e = (self.embedding(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.fc2(self.dropout(self.relu(self.fc1(e))))


class SharedTiedMLP(nn.Module):
    """One activation instance applied three times and a weight-tied Linear.

    ``fc_tied`` shares ``fc2``'s weight (one Parameter, two modules; its bias is its own),
    and ``fc2`` itself runs twice. Input ``(N, in_features)``.
    """

    def __init__(self, in_features: int = 8, hidden: int = 16, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc_tied = nn.Linear(hidden, hidden)
        self.fc_tied.weight = self.fc2.weight
        self.act = nn.Tanh()
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        h = self.act(self.fc1(x))
        h = self.act(self.fc2(h))
        h = self.act(self.fc_tied(h)) + self.fc2(h)
        return self.head(h)


def shared_sequential(in_features: int = 8, hidden: int = 16, num_classes: int = 10) -> nn.Sequential:
    """An ``nn.Sequential`` listing one ReLU instance three times and one Linear instance twice.

    Input ``(N, in_features)``.
    """
    act, mid = nn.ReLU(), nn.Linear(hidden, hidden)
    return nn.Sequential(nn.Linear(in_features, hidden), act, mid, act, mid, act, nn.Linear(hidden, num_classes))


class BatchNormAct2d(nn.BatchNorm2d):
    """timm-style BatchNorm2d subclass whose own ``forward`` normalizes, then applies an activation."""

    def __init__(self, num_features: int, act_layer=nn.ReLU, inplace: bool = True, **kwargs):
        super().__init__(num_features, **kwargs)
        self.act = act_layer(inplace=inplace)

    def forward(self, x):
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or self.running_mean is None
        x = F.batch_norm(x, self.running_mean if not self.training or self.track_running_stats else None,
                         self.running_var if not self.training or self.track_running_stats else None,
                         self.weight, self.bias, use_batch, momentum, self.eps)
        return self.act(x)


class BNActNet(nn.Module):
    """conv3x3 - BatchNormAct2d(ReLU) - conv3x3 (stride 2) - BatchNormAct2d(SiLU) - pool - linear.

    Input ``(N, in_channels, H, W)``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, channels: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(channels)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, 2, 1, bias=False)
        self.bn2 = BatchNormAct2d(2 * channels, act_layer=nn.SiLU)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * channels, num_classes)

    def forward(self, x):
        x = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """A zoo model's factory and its input: ``sample_shape`` per sample; ``vocab`` for token ids."""

    build: Callable[..., nn.Module]
    sample_shape: tuple
    vocab: int | None = None


ZOO = {
    "resnet18": ZooEntry(resnet18, (3, 32, 32)),
    "mobilenet_v3_small": ZooEntry(mobilenet_v3_small, (3, 32, 32)),
    "vit": ZooEntry(TinyViT, (3, 16, 16)),
    "conv1d_groupnorm": ZooEntry(Conv1dGroupNormNet, (4, 32)),
    "text": ZooEntry(TextClassifier, (12,), vocab=50),
    "shared_tied": ZooEntry(SharedTiedMLP, (8,)),
    "shared_sequential": ZooEntry(shared_sequential, (8,)),
    "bn_act": ZooEntry(BNActNet, (3, 8, 8)),
}
"""The zoo: a :class:`ZooEntry` per model name (the names :func:`zoo_batch` takes)."""


def zoo_batch(name: str, batch: int, seed: int = 0, dtype: str = "float64", num_classes: int = 10):
    """A random minibatch ``(x, y)`` (NumPy) for the zoo model ``name`` at its default sizes."""
    if name not in ZOO:
        raise ValueError(f"`name` must be one of {sorted(ZOO)}, got {name!r}")
    e = ZOO[name]
    rng = np.random.default_rng(seed)
    if e.vocab is not None:
        x = rng.integers(0, e.vocab, (batch,) + e.sample_shape)
    else:
        x = rng.standard_normal((batch,) + e.sample_shape).astype(dtype)
    return x, rng.integers(0, num_classes, batch)
