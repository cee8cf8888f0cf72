"""The CGE step through TorchOracle at large d: work that is not the estimate's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

import zoracle as zo  # noqa: E402
from zoracle.adapters import _torch_chain, _torch_channels  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402
from zoracle.adapters.torch_models import BasicBlock, ResNet20  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Largest(TorchFunctionMode):
    """The most elements of any tensor a torch call returns while it is on."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.most = max(self.most, out.numel())
        return out


def _flatten_rows(out_features, runs, seed=0):
    """``absorb_rows``' arguments for rows changed in one of 16 channels of 4 positions each,
    flattened into ``Linear(64, out_features)``: ``runs`` rows per channel, channels ascending."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(64, out_features)
    chs = torch.repeat_interleave(torch.arange(16), runs)
    M = len(chs)
    return lin, torch.randn(M, 4, generator=g), chs, torch.randn(M, out_features, generator=g)


@pytest.mark.parametrize("out_features, runs", [(1600, 12), (160, 40), (10, 40)])
def test_flatten_rows_match_the_per_row_weight_gather_bit_for_bit(out_features, runs):
    lin, delta, chs, base = _flatten_rows(out_features, runs)
    with torch.no_grad():
        got = _torch_channels.absorb_rows("flatten", lin, delta, chs, base)
        w = lin.weight.view(out_features, 16, 4).index_select(1, chs).permute(1, 2, 0)
        want = torch.baddbmm(base.unsqueeze(1), delta.reshape(len(chs), 1, 4), w).squeeze(1)
    assert torch.equal(got, want)


def test_flatten_rows_into_a_wide_layer_copy_no_weights_per_row():
    # 192 rows into Linear(64, 1600): a copy of each row's (4, 1600) weights was 1.2 M floats,
    # where the result is 0.3 M (on the study's largest model, 100 MB a chunk)
    lin, delta, chs, base = _flatten_rows(1600, 12)
    with torch.no_grad(), _Largest() as seen:
        out = _torch_channels.absorb_rows("flatten", lin, delta, chs, base)
    assert seen.most <= out.numel(), f"a {seen.most}-element temporary for a {out.numel()}-element result"


def test_estimate_through_a_wide_flatten_layer_is_unchanged():
    # the digits demo CNN with a hidden layer of 160 (the study's middle size): the rows path
    # reads each channel's weights as a view; the estimate is the per-row gather's, bit for bit
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 16, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 160), nn.ReLU(), nn.Linear(160, 10))
    oracle = TorchOracle(model, nn.CrossEntropyLoss(reduction="none"))
    params = oracle.initial_params()
    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((32, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 32))
    second = next(b for b in oracle.blocks if b.start > 36)  # the second convolution's weights and bias
    coords = np.arange(second.start, second.stop)

    def estimate():
        return zo.estimate_gradient(oracle.bind(batch), params, zo.CGE(mu=5e-3), coordinates=coords).grad

    fast = estimate()
    mp = pytest.MonkeyPatch()
    mp.setattr(_torch_channels, "_RUN_ELEMENTS", 1 << 60)  # the gather, whatever the rows
    try:
        gathered = estimate()
    finally:
        mp.undo()
    assert np.array_equal(fast, gathered) and np.count_nonzero(fast[coords]) > 0.5 * len(coords)


def test_resnet20_runs_without_the_dropout_mode():
    from zoracle.adapters._torch_chain import _needs_dropout_mode

    class Mine(ResNet20):  # a subclass may call functional dropout: the mode stays on
        pass

    assert not _needs_dropout_mode(ResNet20(width=2)) and not _needs_dropout_mode(BasicBlock(2, 2))
    assert _needs_dropout_mode(Mine(width=2))


def test_resnet20_estimate_is_the_same_without_the_dropout_mode():
    torch.manual_seed(0)
    oracle = TorchOracle(ResNet20(width=2), nn.CrossEntropyLoss(reduction="none"))
    params = oracle.initial_params()
    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((4, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, 4))
    coords = np.array([b.start for b in oracle.blocks])

    def estimate():
        _torch_chain._INFO.clear()
        return zo.estimate_gradient(oracle.bind(batch), params, zo.CGE(mu=5e-3), coordinates=coords).grad

    without = estimate()
    mp = pytest.MonkeyPatch()
    mp.setattr(ResNet20, "_no_functional_dropout", False)
    try:
        with_mode = estimate()
    finally:
        mp.undo()
        _torch_chain._INFO.clear()
    assert np.array_equal(without, with_mode) and np.count_nonzero(without[coords]) > 0
