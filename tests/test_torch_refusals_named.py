"""TorchOracle's fast-path refusals as a user reads them: a warning that turns feature reuse off
names the module (its qualified name in the model), the real cause and the fix, for models written
the way users write them (a Python branch on a tensor, a ``requires_grad`` check as torchvision's
DenseNet with memory_efficient=True has, state stored in forward). The fast paths taken stay
taken: only the messages are checked here, with the estimates exact either way."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import zoracle as zo  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CE_ROWS = nn.CrossEntropyLoss(reduction="none")


def _batch(n=4, d=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.tensor([0, 1, 1, 0][:n])


class _EfficientLayer(nn.Module):
    """torchvision's ``_DenseLayer`` with memory_efficient=True: it asks whether its inputs need
    gradients before it chooses the checkpointed path, which torch.fx cannot trace."""

    def __init__(self, cin, growth):
        super().__init__()
        self.norm, self.fc = nn.BatchNorm1d(cin), nn.Linear(cin, growth)
        self.memory_efficient = True

    def any_requires_grad(self, inputs):
        return any(t.requires_grad for t in inputs)

    def forward(self, inputs):
        if self.memory_efficient and self.any_requires_grad(inputs):
            raise NotImplementedError("checkpointed bottleneck")
        return torch.tanh(self.fc(self.norm(torch.cat(inputs, 1))))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, cin, growth):
        super().__init__()
        self.add_module("denselayer1", _EfficientLayer(cin, growth))
        self.add_module("denselayer2", _EfficientLayer(cin + growth, growth))

    def forward(self, x):
        features = [x]
        for _, layer in self.items():
            features.append(layer(features))
        return torch.cat(features, 1)


class _DenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("fc0", nn.Linear(3, 4))
        self.features.add_module("denseblock1", _DenseBlock(4, 2))
        self.classifier = nn.Linear(8, 2)

    def forward(self, x):
        return self.classifier(self.features(x))


def _densenet():
    torch.manual_seed(0)
    return _DenseNet().double()


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)

    def forward(self, x):
        h = self.bn(self.fc(x))
        if h.sum() > 0:  # data-dependent control flow
            h = h * 2
        return h


class _Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.blk, self.b = nn.Linear(3, 4), _Branchy(), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.blk(self.a(x)))


def _build(model, x, y):
    oracle = TorchOracle(model, CE_ROWS, (x, y), update_stats=False)
    theta = oracle.initial_params()
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-4, scheme="central"))
    return oracle, est.grad


def _full_forwards(model, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = TorchOracle(copy.deepcopy(model), CE_ROWS, (x, y), blocks="none", update_stats=False)
        return zo.estimate_gradient(oracle, oracle.initial_params(), zo.CGE(mu=1e-4, scheme="central")).grad


def test_densenet_memory_efficient_names_the_untraceable_requires_grad_check_and_the_fix():
    """The warning said only that step features.denseblock1 mixes samples, which is true of the whole
    block, not why it is one step: fx could not trace denselayer1's ``requires_grad`` check."""
    x, y = _batch()
    model = _densenet().train()
    with pytest.warns(RuntimeWarning) as got:
        oracle, grad = _build(model, x, y)
    text = " | ".join(str(w.message) for w in got)
    assert "step features.denseblock1 (_DenseBlock) mixes samples" in text
    assert "features.denseblock1 runs as one step" in text
    assert "torch.fx could not trace through it (TraceError" in text
    assert "'features.denseblock1.denselayer1'" in text  # the forward that failed, by its qualified name
    assert "any(t.requires_grad for t in inputs)" in text  # the line, as written
    assert "memory_efficient=False" in text and "torch.where" in text  # the fixes
    assert not oracle._core.blocks  # refused as before: full forwards
    np.testing.assert_allclose(grad, _full_forwards(model, x, y), rtol=1e-9, atol=1e-12)


def test_densenet_memory_efficient_in_eval_mode_keeps_its_split_and_names_what_it_costs():
    """The split is kept (exact), but features.denseblock1's layers get no blocks of their own: that
    was silent; it is said once, as a speed cost (tests/test_torch_fallback_once.py)."""
    x, y = _batch()
    model = _densenet().eval()
    with pytest.warns(RuntimeWarning, match="a speed cost, not an error") as got:
        oracle, _ = _build(model, x, y)
    assert len(got) == 1 and "features.denseblock1 runs as one step" in str(got[0].message)
    assert oracle._core.block_names == ["features.fc0", "features.denseblock1", "classifier"]


def test_a_branch_on_a_tensor_in_a_submodule_names_its_line_when_the_split_is_refused():
    x, y = _batch()
    model = _Outer().double().train()
    with pytest.warns(RuntimeWarning) as got:
        oracle, grad = _build(model, x, y)
    text = " | ".join(str(w.message) for w in got)
    assert "step blk (_Branchy) mixes samples" in text
    assert "in the forward of 'blk' at test_torch_refusals_named.py:" in text
    assert "(if h.sum() > 0:" in text and "torch.where" in text
    assert not oracle._core.blocks
    # the estimate is the plain perturbed forwards' (nothing but the message changed)
    np.testing.assert_allclose(grad, _full_forwards(model, x, y), rtol=1e-9, atol=1e-12)


def test_a_branch_on_a_tensor_in_the_model_itself_names_its_line_and_the_fix():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            if h.sum() > 0:
                h = h * 2
            return self.b(h)

    x, y = _batch()
    with pytest.warns(RuntimeWarning) as got:
        oracle, _ = _build(Net().double(), x, y)
    text = str(got[0].message)
    assert text.startswith("TorchOracle: torch.fx cannot trace Net (TraceError")
    assert "in the forward of the model at test_torch_refusals_named.py:" in text and "(if h.sum() > 0:)" in text
    assert "torch.where" in text and "no feature reuse" in text
    assert not oracle._core.blocks


def test_state_stored_in_forward_and_read_back_is_named_not_called_noise():
    """``self.prev = h.detach()`` read by the next call: the warning blamed "a random op such as
    torch.randn_like" for a forward that draws nothing; it names the attribute and the fix."""
    class Prev(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
            self.prev = None

        def forward(self, x):
            h = self.a(x)
            if self.prev is not None and self.prev.shape == h.shape:
                h = h + 0.5 * self.prev
            self.prev = h.detach()
            return self.b(h)

    x, y = _batch()
    with pytest.warns(RuntimeWarning) as got:
        oracle, _ = _build(Prev().double(), x, y)
    text = str(got[0].message)
    assert "model(x) is not repeatable" in text
    assert "'Prev.prev'" in text and "register_buffer" in text
    assert "randn_like" not in text
    assert not oracle._core.blocks


def test_a_random_draw_is_still_called_noise():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1  # written every call, but the draw is what differs
            h = self.a(x)
            return self.b(h + 0.1 * torch.randn_like(h))

    x, y = _batch()
    with pytest.warns(RuntimeWarning) as got:
        _build(Noisy().double(), x, y)
    assert "randn_like" in str(got[0].message) and "Noisy.calls" not in str(got[0].message)


@pytest.mark.parametrize("pre", [False, True])
def test_a_hook_that_changes_a_modules_output_names_the_module_and_the_fix(pre):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    if pre:
        model[2].register_forward_pre_hook(lambda mod, inp: (inp[0] * 3,))
    else:
        model[0].register_forward_hook(lambda mod, inp, out: out * 2)
    x, y = _batch()
    with pytest.warns(RuntimeWarning) as got:
        oracle, grad = _build(model, x, y)
    text = str(got[0].message)
    assert f"'{2 if pre else 0}' run(s) forward hooks, which the split's closed forms do not run" in text
    assert "in the forward of a module of your own wrapping the layer, to keep feature reuse" in text
    assert not oracle._core.blocks
    np.testing.assert_allclose(grad, _full_forwards(model, x, y), rtol=1e-9, atol=1e-12)


class _Centered(nn.Module):
    """A hand-written batch statistic inside a submodule: its function steps are named after fx's
    nodes ('mean'), which say nothing of where they are."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        return h - h.mean(0)


def test_a_batch_statistic_in_a_submodule_names_that_submodule_and_the_fix():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.body, self.b = nn.Linear(3, 4), nn.Sequential(_Centered(), nn.Tanh()), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.body(self.a(x)))

    torch.manual_seed(0)
    x, y = _batch()
    model = Net().double()
    with pytest.warns(RuntimeWarning) as got:
        oracle, grad = _build(model, x, y)
    text = str(got[0].message)
    assert "step mean (in the forward of 'body.0', _Centered) mixes samples" in text
    assert "a statistic per sample (over the dimensions after the batch) keeps feature reuse" in text
    assert not oracle._core.blocks
    np.testing.assert_allclose(grad, _full_forwards(model, x, y), rtol=1e-9, atol=1e-12)


def test_a_batch_statistic_in_the_models_own_forward_names_that_forward():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h / (1 + h.abs().max().item()))

    torch.manual_seed(0)
    x, y = _batch()
    with pytest.warns(RuntimeWarning) as got:
        oracle, _ = _build(Net().double(), x, y)
    text = " | ".join(str(w.message) for w in got)
    assert "step max_1 (in Net.forward) mixes samples" in text
    assert not oracle._core.blocks


class _ClampInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        x.clamp_(-1, 1)
        return self.fc(x)


class _ClampLeaf(nn.Hardtanh):
    """A stock subclass with its own forward (a leaf, one step) clamping its input in place."""

    def forward(self, x):
        return x.clamp_(-0.3, 0.3)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # torch's vmap of clamp_
@pytest.mark.parametrize("leaf", [False, True])
def test_an_in_place_write_into_a_modules_input_names_that_module_and_the_fix(leaf):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
            self.c = nn.Sequential(_ClampLeaf() if leaf else _ClampInput())

        def forward(self, x):
            return self.b(self.c(self.a(x)))

    torch.manual_seed(0)
    x, y = _batch()
    model = Net().double()
    with pytest.warns(RuntimeWarning) as got:
        oracle, grad = _build(model, x, y)
    text = str(got[0].message)
    if leaf:  # the step is the module: the self-check sees the write
        assert "step c.0 (_ClampLeaf) writes in place into the output of step a, which the fast paths read" in text
        assert "x = x.clamp(...) rather than x.clamp_(...)" in text
    else:  # traced through: the graph shows the write, said where it is
        assert "Net.forward writes into a tensor in place (clamp_, in the forward of 'c.0', _ClampInput)" in text
        assert "h = h.clamp(...) rather than h.clamp_(...)" in text
    assert not oracle._core.blocks
    np.testing.assert_allclose(grad, _full_forwards(model, x, y), rtol=1e-9, atol=1e-12)
