"""TorchOracle's feature reuse on model families written the way torchvision and timm write them
(DenseNet, Inception, ConvNeXt, ShuffleNetV2, UNet, ResNeXt / RegNet, a module called twice): CGE
(forward and central, every coordinate and a sparse mask) and RGE equal the textbook loop of plain
``model(x)`` forwards, in float64, with the split kept and the stock layers' closed forms used."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import zoracle as zo  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CE_ROWS = nn.CrossEntropyLoss(reduction="none")
MU = 1e-3


def pixel_ce(out, y):
    """Per-sample loss of a segmentation output (N, classes, H, W)."""
    return F.cross_entropy(out, y, reduction="none").mean((1, 2))


# ---- DenseNet, as torchvision writes it (_DenseLayer, _DenseBlock(nn.ModuleDict), _Transition)
class DenseLayer(nn.Module):
    def __init__(self, cin, growth, bn_size=2, drop_rate=0.0, memory_efficient=False):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, kernel_size=1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, kernel_size=3, padding=1, bias=False)
        self.drop_rate, self.memory_efficient = float(drop_rate), memory_efficient

    def bn_function(self, inputs):
        return self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))

    def any_requires_grad(self, inputs):
        return any(t.requires_grad for t in inputs)

    def forward(self, input):
        prev_features = [input] if isinstance(input, torch.Tensor) else input
        if self.memory_efficient and self.any_requires_grad(prev_features):
            raise NotImplementedError("checkpointed bottleneck")
        new_features = self.conv2(self.relu2(self.norm2(self.bn_function(prev_features))))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers, cin, growth):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth))

    def forward(self, init_features):
        features = [init_features]
        for _, layer in self.items():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm, self.relu = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    def __init__(self, growth=3, init=4, classes=5):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, init, 3, padding=1, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(init))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        c = init
        for i in (1, 2):
            self.features.add_module(f"denseblock{i}", DenseBlock(2, c, growth))
            c += 2 * growth
            if i == 1:
                self.features.add_module("transition1", Transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        out = F.relu(self.features(x), inplace=True)
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


# ---- Inception (torchvision's BasicConv2d, InceptionA, and InceptionB's reduction with a MaxPool branch)
class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 3, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 2, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(2, 3, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 3, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(3, 3, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def _forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return [b1, b5, b3, bp]

    def forward(self, x):
        return torch.cat(self._forward(x), 1)


class InceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 4, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 2, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(2, 3, kernel_size=3, stride=2)

    def forward(self, x):
        outputs = [self.branch3x3(x), self.branch3x3dbl_2(self.branch3x3dbl_1(x)),
                   F.max_pool2d(x, kernel_size=3, stride=2)]
        return torch.cat(outputs, 1)


class Inception(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.Conv2d_1a = BasicConv2d(3, 4, kernel_size=3, padding=1)
        self.Mixed_5b = InceptionA(4, pool_features=2)  # 3 + 3 + 3 + 2 = 11 channels
        self.Mixed_6a = InceptionB(11)                  # 4 + 3 + 11 = 18 channels
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(18, classes)

    def forward(self, x):
        x = F.max_pool2d(self.Conv2d_1a(x), kernel_size=2, stride=1)
        x = self.Mixed_6a(self.Mixed_5b(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---- ConvNeXt (the block as written in the paper's code; torchvision's CNBlock with Permute modules)
class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim, layer_scale=0.5):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x):
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        return shortcut + x


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class TVCNBlock(nn.Module):
    def __init__(self, dim, layer_scale=0.5):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim), Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)

    def forward(self, input):
        return self.layer_scale * self.block(input) + input


class ConvNeXt(nn.Module):
    def __init__(self, dims=(3, 4), classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=2, stride=2), LayerNorm2d(dims[0], eps=1e-6))
        self.stage1 = CNBlock(dims[0])
        self.down = nn.Sequential(LayerNorm2d(dims[0], eps=1e-6), nn.Conv2d(dims[0], dims[1], kernel_size=2, stride=2))
        self.stage2 = TVCNBlock(dims[1])
        self.norm, self.head = nn.LayerNorm(dims[1], eps=1e-6), nn.Linear(dims[1], classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean([-2, -1])))


# ---- ShuffleNetV2 (torchvision's channel_shuffle and InvertedResidual)
def channel_shuffle(x, groups: int):
    batchsize, num_channels, height, width = x.size()
    x = x.view(batchsize, groups, num_channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


class ShuffleUnit(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride, bf = stride, oup // 2
        self.branch1 = nn.Sequential()
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, bias=False, groups=inp), nn.BatchNorm2d(inp),
                nn.Conv2d(inp, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True))
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else bf, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True),
            nn.Conv2d(bf, bf, 3, stride, 1, bias=False, groups=bf), nn.BatchNorm2d(bf),
            nn.Conv2d(bf, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stage2 = nn.Sequential(ShuffleUnit(4, 8, 2), ShuffleUnit(8, 8, 1))
        self.conv5 = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = self.conv5(self.stage2(self.maxpool(self.conv1(x))))
        return self.fc(x.mean([2, 3]))


# ---- UNet (down path, bilinear F.interpolate and ConvTranspose2d up, skip concatenation)
class DoubleConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.double_conv(x)


class Up(nn.Module):
    def __init__(self, cin, cout, bilinear):
        super().__init__()
        self.bilinear = bilinear
        if not bilinear:
            self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(cin, cout)

    def forward(self, x1, x2):
        x1 = F.interpolate(x1, scale_factor=2, mode="bilinear", align_corners=True) if self.bilinear else self.up(x1)
        dy, dx = x2.size()[2] - x1.size()[2], x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class UNet(nn.Module):
    def __init__(self, cin=2, classes=3):
        super().__init__()
        self.inc = DoubleConv(cin, 2)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(2, 4))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(4, 4))
        self.up1 = Up(8, 4, bilinear=True)    # cat(4 skip, 4 upsampled)
        self.up2 = Up(4, 2, bilinear=False)   # ConvTranspose 4 -> 2, cat(2 skip, 2 up)
        self.outc = nn.Conv2d(2, classes, kernel_size=1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x = self.up1(self.down2(x2), x2)
        x = self.up2(x, x1)
        return self.outc(x)


# ---- ResNeXt's grouped bottleneck, RegNetY's grouped block with squeeze-excitation
class Bottleneck(nn.Module):
    expansion = 2

    def __init__(self, inplanes, planes, stride=1, groups=2, base_width=4, downsample=None):
        super().__init__()
        width = int(planes * (base_width / 4.0)) * groups
        self.conv1, self.bn1 = nn.Conv2d(inplanes, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class RegNetYBlock(nn.Module):
    def __init__(self, cin, cout, stride, group_width=2):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, stride, 1, groups=cout // group_width, bias=False),
                               nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.se_reduce, self.se_expand = nn.Conv2d(cout, 2, 1), nn.Conv2d(2, cout, 1)
        self.c = nn.Sequential(nn.Conv2d(cout, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.b(self.a(x))
        s = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(F.adaptive_avg_pool2d(h, 1)))))
        return self.activation(self.proj(x) + self.c(h * s))


class ResNeXtRegNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        downsample = nn.Sequential(nn.Conv2d(4, 8, 1, 2, bias=False), nn.BatchNorm2d(8))
        self.layer1 = Bottleneck(4, 4, stride=2, groups=2, downsample=downsample)
        self.layer2 = RegNetYBlock(8, 8, 2)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---- one block called twice in forward, and a convolution applied in a loop
class Reused(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.mid = nn.Conv2d(4, 4, 1)
        self.loop = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        x = self.block(self.stem(x))
        x = self.mid(x)
        x = self.block(x) + x
        for _ in range(2):
            x = torch.tanh(self.loop(x))
        return self.fc(x.mean((2, 3)))


class SharedHead(nn.Module):
    """RetinaNet-style: one head over two pyramid levels of different sizes, and a lateral conv's
    weight read again functionally (``F.conv2d(p2, self.lat.weight)``)."""

    def __init__(self, classes=5):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.lat = nn.Conv2d(4, 4, 1)
        self.head = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
                                  nn.Conv2d(4, classes, 1))

    def forward(self, x):
        p1 = self.c1(x)
        p2 = self.c2(torch.relu(p1))
        p1 = self.lat(p1) + F.interpolate(F.conv2d(p2, self.lat.weight, self.lat.bias), scale_factor=2)
        return torch.cat([self.head(p).flatten(2) for p in (p1, p2)], 2).mean(2)


#: name -> (model class, sample shape, loss, classes); inputs of 8x8 (Inception's reductions need 12x12)
FAMILIES = {
    "densenet": (DenseNet, (3, 8, 8), CE_ROWS, 5),
    "inception": (Inception, (3, 12, 12), CE_ROWS, 5),
    "convnext": (ConvNeXt, (3, 8, 8), CE_ROWS, 5),
    "shufflenet_v2": (ShuffleNetV2, (3, 8, 8), CE_ROWS, 5),
    "unet": (UNet, (2, 8, 8), pixel_ce, 3),
    "resnext_regnet": (ResNeXtRegNet, (3, 8, 8), CE_ROWS, 5),
    "reused": (Reused, (3, 8, 8), CE_ROWS, 5),
    "shared_head": (SharedHead, (3, 8, 8), CE_ROWS, 5),
}

#: the closed forms of the exact stock layers (``kinds`` in the oracle's core)
_CLOSED = {nn.Conv2d: "conv2d", nn.Linear: "linear", nn.BatchNorm2d: "bn", nn.LayerNorm: "ln", nn.GroupNorm: "bn"}
#: blocks the docs say run their rest per perturbation (a module used twice), not in closed form
_USED_TWICE = {"reused": {"block.0", "block.1", "loop"}, "shared_head": {"lat", "head.0", "head.1", "head.3"}}


def _family(name, train, seed=0, n=3):
    cls, shape, loss_fn, classes = FAMILIES[name]
    torch.manual_seed(seed)
    model = cls().double()
    rng = np.random.default_rng(seed)
    if not train:  # running statistics of another batch, so eval mode is not train mode's arithmetic
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        with torch.no_grad():
            model(torch.as_tensor(1.5 * rng.standard_normal((8,) + shape) + 0.2))
    model.train(train)
    x = rng.standard_normal((n,) + shape)
    y = rng.integers(0, classes, (n,) + (shape[1:] if loss_fn is pixel_ce else ()))
    return model, x, y, loss_fn


def _plain_loss(model, oracle, x, y, loss_fn):
    """The loss at a flat vector (the oracle's order) by a plain forward of a copy of the model."""
    ref = copy.deepcopy(model)
    where = [(ref.get_parameter(i.name), i.slice) for i in oracle.param_info]
    X, Y = torch.as_tensor(x), torch.as_tensor(y)

    def loss(theta):
        with torch.no_grad():
            t = torch.tensor(np.asarray(theta, dtype=np.float64))
            for p, s in where:
                p.copy_(t[s].view_as(p))
            return float(loss_fn(ref(X), Y).mean())

    return loss


def _textbook(loss, theta, coords, scheme):
    """CGE by the textbook loop: one coordinate at a time, perturb, plain forward."""
    g = np.empty(len(coords))
    base = loss(theta) if scheme == "forward" else None
    for r, i in enumerate(coords):
        up, down = theta.copy(), theta.copy()
        up[i] += MU
        down[i] -= MU
        if scheme == "forward":
            g[r] = (loss(up) - base) / (up[i] - theta[i])
        else:
            g[r] = (loss(up) - loss(down)) / (up[i] - down[i])
    return g


def _close(got, want, what):
    assert np.count_nonzero(want) >= len(want) // 2, (what, "the model's units are dead here")
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-9, (what, err)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_keeps_its_split_and_cge_rge_equal_the_textbook_loop(name, train):
    model, x, y, loss_fn = _family(name, train)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fast path, taken silently: no fallback warning
        oracle = TorchOracle(model, loss_fn, (x, y), update_stats=False)
        theta = oracle.initial_params()
        loss = _plain_loss(model, oracle, x, y, loss_fn)
        assert abs(oracle(theta) - loss(theta)) <= 1e-12 * abs(loss(theta))
        # one block per layer, each stock layer used once in its closed form
        mods = dict(model.named_modules())
        kinds = dict(zip(oracle.block_names, oracle._core.kinds))
        assert len(oracle._core.blocks) == len(oracle.blocks) == len(kinds) > 1
        assert {n for n, m in mods.items() if type(m) in _CLOSED} <= set(kinds)  # every stock layer, a block
        twice = _USED_TWICE.get(name, set())
        for block, kind in kinds.items():
            closed = _CLOSED.get(type(mods.get(block)), "")
            assert kind == ("" if block in twice else closed), (block, kind)
        for b, blk in enumerate(oracle.blocks):  # a sharded estimate's prefix and suffix: the same losses
            ends = np.array([blk.start, blk.stop - 1])
            fused = oracle.coordinate_losses(theta, ends, MU)
            assert np.array_equal(oracle.suffix(oracle.prefix(theta, b), theta, b, ends, MU), fused), b

        rng = np.random.default_rng(1)
        d = theta.size
        edges = {b.start for b in oracle.blocks} | {b.stop - 1 for b in oracle.blocks}
        checked = np.array(sorted(edges | set(rng.choice(d, 24, replace=False).tolist())))
        mask = np.sort(rng.choice(d, d // 8, replace=False))  # a sparse CGE's coordinates
        for scheme in ("forward", "central"):
            cge = zo.CGE(mu=MU, scheme=scheme)
            if train:  # every coordinate (checked on the block edges and a random few)
                dense = zo.estimate_gradient(oracle, theta, cge).grad
                _close(dense[checked], _textbook(loss, theta, checked, scheme), (scheme, "dense"))
            sparse = zo.estimate_gradient(oracle, theta, cge, coordinates=mask).grad
            _close(sparse[mask], _textbook(loss, theta, mask, scheme), (scheme, "sparse"))
            assert not np.any(np.delete(sparse, mask))
        for scheme in ("forward", "central"):
            rge = zo.RGE(mu=MU, directions=6, scheme=scheme)
            got = zo.estimate_gradient(oracle, theta, rge, rng=3).grad
            _close(got, zo.estimate_gradient(loss, theta, rge, rng=3).grad, (scheme, "rge"))


class _ListBlock(nn.ModuleList):
    """A container with a forward of its own (as torchvision's ``_DenseBlock(nn.ModuleDict)``)."""

    def forward(self, x):
        for layer in self:
            x = layer(x)
        return x


class _DictBlock(nn.ModuleDict):
    def forward(self, x):
        feats = [x]
        for layer in self.values():
            feats.append(layer(feats[-1]))
        return torch.cat(feats, 1)


@pytest.mark.parametrize("container", [_ListBlock, _DictBlock])
def test_a_container_with_its_own_forward_is_traced_through(container):
    # a ModuleList / ModuleDict subclass with a forward of its own was one opaque step: holding a
    # train-mode BatchNorm, it mixed samples, and the whole model ran full forwards with a warning
    torch.manual_seed(0)
    layers = [nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Tanh()]
    inner = container(layers) if container is _ListBlock else container({"fc": layers[0], "bn": layers[1]})
    model = nn.Sequential(nn.Linear(3, 4), inner, nn.Linear(4 if container is _ListBlock else 12, 2)).double().train()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle = TorchOracle(model, CE_ROWS, (x, y), update_stats=False)
        theta = oracle.initial_params()
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=MU, scheme="central"))
    inner_names = ["1.0", "1.1"] if container is _ListBlock else ["1.fc", "1.bn"]
    assert oracle.block_names == ["0"] + inner_names + ["2"]
    assert oracle._core.kinds == ["linear", "linear", "bn", "linear"]
    loss = _plain_loss(model, oracle, x, y, CE_ROWS)
    _close(est.grad, _textbook(loss, theta, np.arange(theta.size), "central"), "container")


def test_densenet_memory_efficient_runs_its_dense_blocks_whole_and_says_so_in_train_mode():
    # torchvision's memory_efficient=True branches on ``tensor.requires_grad``, which torch.fx cannot
    # trace: the dense blocks are captured whole, and in train mode (BatchNorm inside) the split is
    # refused with a warning naming the block; the full forwards are exact
    model, x, y, loss_fn = _family("densenet", True)
    for m in model.modules():
        if isinstance(m, DenseLayer):
            m.memory_efficient = True
    with pytest.warns(RuntimeWarning, match=r"denseblock1 \(DenseBlock\) mixes samples"):
        oracle = TorchOracle(model, loss_fn, (x, y), update_stats=False)
        theta = oracle.initial_params()
        mask = np.sort(np.random.default_rng(1).choice(theta.size, 40, replace=False))
        got = zo.estimate_gradient(oracle, theta, zo.CGE(mu=MU, scheme="central"), coordinates=mask).grad
    assert not oracle._core.blocks
    _close(got[mask], _textbook(_plain_loss(model, oracle, x, y, loss_fn), theta, mask, "central"), "memory_efficient")
