"""The torch model zoo: each model builds, runs forward on its documented input, and keeps
the idioms it exists for (in-place activations, shared modules, tied weights, own forwards)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from zoracle.adapters import torch_models as tm  # noqa: E402


@pytest.mark.parametrize("name", sorted(tm.ZOO))
def test_zoo_model_runs_forward_and_backward_on_its_input(name):
    torch.manual_seed(0)
    model = tm.ZOO[name].build().double().train()
    x, y = tm.zoo_batch(name, 5, seed=1)
    assert x.shape == (5,) + tm.ZOO[name].sample_shape and y.shape == (5,)
    out = model(torch.as_tensor(x))
    assert out.shape == (5, 10) and out.dtype == torch.float64 and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.as_tensor(y)).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "conv1d_groupnorm", "bn_act"])
def test_models_use_in_place_activations_and_no_zoracle_steps(name):
    model = tm.ZOO[name].build()
    assert not hasattr(model, "zoracle_steps")
    assert any(getattr(m, "inplace", False) for m in model.modules())


def test_resnet18_is_torchvision_shaped():
    model = tm.resnet18(width=8)
    blocks = [m for m in model.modules() if isinstance(m, tm.TVBasicBlock)]
    assert len(blocks) == 8 and sum(b.downsample is not None for b in blocks) == 3
    assert model.fc.in_features == 64 and tm.resnet18(width=4).fc.in_features == 32
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20  # stem + 16 block convs + 3 downsample convs (ResNet-18 = 17 conv + 1 fc layers)


def test_mobilenet_has_depthwise_se_hardswish_and_residual_blocks():
    model = tm.mobilenet_v3_small()
    mods = list(model.modules())
    assert sum(isinstance(m, tm.SqueezeExcitation) for m in mods) == 9
    assert sum(isinstance(m, nn.Hardswish) for m in mods) > 0 and any(isinstance(m, nn.Hardsigmoid) for m in mods)
    assert any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in mods)
    assert sum(isinstance(m, tm.InvertedResidual) and m.use_res_connect for m in mods) >= 5


def test_vit_dropout_makes_train_mode_random_and_eval_deterministic():
    torch.manual_seed(0)
    model = tm.TinyViT().double()
    x = torch.as_tensor(tm.zoo_batch("vit", 4)[0])
    assert sum(isinstance(m, nn.TransformerEncoderLayer) for m in model.modules()) == 2
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_text_classifier_ignores_padding():
    torch.manual_seed(0)
    model = tm.TextClassifier().double().eval()
    tok = torch.tensor([[3, 7, 9, 0, 0]])
    assert torch.allclose(model(tok), model(torch.tensor([[3, 7, 9]])))


def test_shared_and_tied_parameters_are_counted_once():
    model = tm.SharedTiedMLP()
    assert model.fc_tied.weight is model.fc2.weight
    names = [n for n, _ in model.named_parameters()]
    assert "fc_tied.weight" not in names and "fc_tied.bias" in names
    seq = tm.shared_sequential()
    assert seq[1] is seq[3] is seq[5] and seq[2] is seq[4]
    assert len(list(seq.parameters())) == 6


def test_batchnorm_act_runs_its_own_forward():
    torch.manual_seed(0)
    bn = tm.BatchNormAct2d(3).double().train()
    plain = nn.BatchNorm2d(3).double().train()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    out = bn(x)
    assert torch.allclose(out, torch.relu(plain(x)))  # BN, then the activation
    assert torch.allclose(bn.running_mean, plain.running_mean) and int(bn.num_batches_tracked) == 1
    bn.eval(), plain.eval()
    assert torch.allclose(bn(x), torch.relu(plain(x)))
    assert isinstance(bn, nn.BatchNorm2d) and type(bn).forward is not nn.BatchNorm2d.forward


def test_zoo_batch_rejects_unknown_names():
    with pytest.raises(ValueError, match="resnet18"):
        tm.zoo_batch("resnet50", 2)
    x, _ = tm.zoo_batch("text", 3)
    assert x.dtype == np.int64 and x.min() >= 0 and x.max() < tm.ZOO["text"].vocab
