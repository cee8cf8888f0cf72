"""The fixed cost of a CGE step through TorchOracle (what every step pays whatever its
coordinates): fewer ``norm_context`` entries and torch calls, the same losses bit for bit."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

import zoracle as zo  # noqa: E402
from zoracle.adapters import _torch_batches, _torch_chain, _torch_channels, _torch_walk  # noqa: E402
from zoracle.adapters import torch as torch_adapter  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402

from conftest import split_calls  # noqa: E402

CE = nn.CrossEntropyLoss(reduction="none")


def _net(dropout: bool = False) -> nn.Sequential:
    """The demo CNN's shape, small: stock layers only (an inert norm_context), or with a dropout
    (which norm_context patches)."""
    torch.manual_seed(0)
    head = [nn.Dropout(0.5)] if dropout else []
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), *head, nn.Linear(24, 5)).double()


def _batch(n: int = 12):
    rng = np.random.default_rng(5)
    return rng.standard_normal((n, 1, 8, 8)), rng.integers(0, 5, n)


class _Calls(TorchFunctionMode):
    """The torch operators called from Python, by name (attribute reads left out)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name != "__get__":
            self.names.append(name)
        return func(*args, **(kwargs or {}))


def _entries(monkeypatch) -> list:
    """Counts the norm_context entries TorchOracle makes."""
    seen = []
    real = torch_adapter.norm_context

    def counted(*args, **kwargs):
        seen.append(1)
        return real(*args, **kwargs)

    for module in (torch_adapter, _torch_batches, _torch_walk):  # TorchOracle's methods, in these modules
        monkeypatch.setattr(module, "norm_context", counted)
    return seen


@pytest.mark.parametrize("budget", [None, 16 * 2**10])
def test_an_inert_context_is_entered_once_for_every_block(monkeypatch, budget):
    """A model whose norm_context patches, switches and saves nothing (stock layers, no dropout,
    BatchNorm or in-place activation) ran each block's prefix and each suffix call in a context of
    its own: two entries a block, about 8 us each on the demo model. coordinate_losses now enters
    one for every block, with the losses of the split calls bit for bit, fresh (each prefix computes
    the base rows in a context of its own inside it) and after a plain call, in several chunks."""
    x, y = _batch()
    oracle = TorchOracle(_net(), CE, (x, y), budget_bytes=budget)
    theta = oracle.initial_params() + 0.05 * np.random.default_rng(1).standard_normal(oracle.size)
    assert len(oracle.blocks) == 3
    coords = np.sort(np.random.default_rng(2).choice(oracle.size, 80, replace=False))
    if budget is not None:
        assert oracle.max_queries_per_call < 40  # several chunks a block
    want = split_calls(TorchOracle(_net(), CE, (x, y), budget_bytes=budget), theta, coords, 1e-4)
    fresh = TorchOracle(_net(), CE, (x, y), budget_bytes=budget).coordinate_losses(theta, coords, 1e-4)
    assert np.array_equal(fresh, want) and np.ptp(want) > 0
    oracle(theta)  # the base rows cached: the blocks' contexts are all coordinate_losses enters
    seen = _entries(monkeypatch)
    got = oracle.coordinate_losses(theta, coords, 1e-4)
    assert np.array_equal(got, want)
    # was 6 more: a prefix and a suffix context for each of the 3 blocks (under the small budget the
    # plain call kept no activations: one more context runs the chain for them)
    assert len(seen) == 1 + (budget is not None)
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-4), coordinates=coords)
    unfused = type("Unfused", (TorchOracle,), {"fused_coordinate_losses": False})(_net(), CE, (x, y),
                                                                                  budget_bytes=budget)
    split = zo.estimate_gradient(unfused, theta, zo.CGE(mu=1e-4), coordinates=coords)
    assert np.array_equal(est.grad, split.grad) and est.loss == split.loss


def test_a_context_with_work_to_undo_stays_one_a_call(monkeypatch):
    """A dropout makes the context patch a forward (a context inside it would undo that on leaving):
    each prefix and suffix keeps its own context, the first call having found that out once, with
    the losses of the split calls bit for bit."""
    x, y = _batch()
    net = _net(dropout=True).train()
    oracle = TorchOracle(net, CE, (x, y))
    theta = oracle.initial_params()
    coords = np.arange(0, oracle.size, 3)
    want = split_calls(TorchOracle(_net(dropout=True).train(), CE, (x, y)), theta, coords, 1e-4)
    oracle(theta)
    seen = _entries(monkeypatch)
    assert np.array_equal(oracle.coordinate_losses(theta, coords, 1e-4), want)
    assert len(seen) == 1 + 2 * 3  # the try, then a prefix and a suffix context a block
    seen.clear()
    assert np.array_equal(oracle.coordinate_losses(theta, coords, 1e-4), want)
    assert len(seen) == 2 * 3  # not tried again


@pytest.mark.parametrize("make", [lambda v: v, lambda v: torch.cat([torch.zeros(3, dtype=v.dtype), v])[3:],
                                  lambda v: torch.stack([v, -v], 1)[:, 0]],
                         ids=["contiguous", "offset", "strided"])
def test_load_makes_one_view_a_parameter(make):
    """A load wrote each parameter from ``flat[slice].view_as(p)``, two torch calls a parameter, and a
    step loads twice. Where the flat tensor is contiguous it now takes one ``as_strided`` view a
    parameter; an offset or strided tensor loads the same values."""
    x, y = _batch()
    oracle = TorchOracle(_net(), CE, (x, y))
    v = torch.as_tensor(np.random.default_rng(3).standard_normal(oracle.size))
    t = make(v)
    assert torch.equal(t, v)
    with _Calls() as calls:
        oracle.load(t)
    got = torch.cat([p.detach().reshape(-1) for p in oracle.model.parameters()])
    assert torch.equal(got, v)
    n = len(oracle.param_info)
    views = sum(name in ("__getitem__", "view_as", "as_strided") for name in calls.names)
    assert views == (n if t.is_contiguous() else 2 * n)  # was 2 n for every tensor


def test_perturbed_channels_writes_each_parameters_run_in_place():
    """The coordinates of a block that span its weight and its bias: each parameter's run of
    positions was computed into a temporary and copied into the changed channels by ``__setitem__``;
    it is now computed into its slab of them, the same values bit for bit."""
    x, y = _batch()
    oracle = TorchOracle(_net(), CE, (x, y))
    theta = oracle.initial_params()
    oracle(theta)
    for block in range(3):
        blk = oracle.blocks[block]
        local = np.arange(0, blk.stop - blk.start, 2)  # weights and biases
        feats = oracle.prefix(theta, block)
        core = oracle._core
        st = core.chain.steps[core.block_steps[block]]
        h = torch.full((local.size,), 1e-3, dtype=torch.float64)
        args = (core.kinds[block], st.module, feats.state[0], feats.out, feats.cache, core.block_params[block],
                local, h)
        with _Calls() as calls:
            ch, col = _torch_channels.perturbed_channels(*args)
        assert "__setitem__" not in calls.names  # was one a parameter
        # the values as computed before: each parameter's run by its own operation, then copied in
        want = torch.empty_like(col)
        for role, pos, idx in _torch_chain._split_roles(core.block_params[block], local, col.device):
            one = np.zeros_like(local, dtype=bool)
            one[pos] = True
            part_ch, part = _torch_channels.perturbed_channels(*args[:6], local[one], h[torch.as_tensor(one)])
            want[pos] = part
            assert torch.equal(ch[torch.as_tensor(one)], part_ch)
        assert torch.equal(col, want)
