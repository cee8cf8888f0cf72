"""TorchOracle and state the user's model changes on itself: a module's ``inplace`` flag set after
the build, a dropout's output written in place, buffers assigned in a train-mode forward, and an
input kept on the module for the next call. Each is computed as the textbook loop computes it, or
refused with a warning naming the cause and the fix; never silently another function."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import zoracle as zo  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402
from test_torch_exact import CE_ROWS, model_loss  # noqa: E402
from test_torch_fuzz import MU, Residual, _estimate_after_swap, _textbook_error, textbook_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(shape=(2, 1, 4, 4), seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.integers(0, 3, shape[0])


def test_inplace_switched_on_after_the_build_is_seen_as_the_users_flip():
    """``relu.inplace = True`` on a ReLU already in the model, after an estimate, where the ReLU's
    input is read again (``x + body(x)``): the oracle switches ``inplace`` off itself while it
    runs, so its key of the model left the flag out, and the user's flip went unseen: the split
    stayed, silently computing ``x + relu(x)`` where ``model(x)`` is ``2 relu(x)`` (off by 60% of
    the gradient's largest entry). Now the flip retires the split and the warning says that the
    oracle runs the activation out of place, as for one in place at the build."""
    torch.manual_seed(0)
    model = nn.Sequential(Residual(nn.Sequential(nn.ReLU()), False), nn.Flatten(), nn.Linear(16, 3)).double().train()
    x, y = _data()

    def flip(m):
        m[0].body[0].inplace = True

    with pytest.warns(RuntimeWarning) as caught:
        oracle, theta, got = _estimate_after_swap(model, flip, x.copy(), y)
    said = [str(w.message) for w in caught]
    assert any("a module's attribute changed" in s for s in said)
    assert sum("in-place activations run out of place" in s and "inplace=False" in s for s in said) == 1
    ref = textbook_model(model, in_place=False)  # the function the warning says the oracle computes
    assert _textbook_error(oracle, ref, x, y, got) < 1e-10
    assert model[0].body[0].inplace is True  # the user's flag, as set


def test_inplace_flag_left_alone_keeps_the_split_silently():
    """The guard: the oracle's own switching of ``inplace=True`` during its queries is not a change."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(8, 3)).double().train()
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle, theta, got = _estimate_after_swap(model, lambda m: None, x.copy(), y)
    assert oracle._core.blocks
    assert _textbook_error(oracle, textbook_model(model), x, y, got) < 1e-10
    assert model[1].inplace is True


class _DropoutResidual(nn.Module):
    """torchvision's ``out += identity`` after a dropout (a module, or ``F.dropout``) on the block's input."""

    def __init__(self, functional=False):
        super().__init__()
        self.conv, self.drop, self.fc = nn.Conv2d(1, 1, 3, padding=1), nn.Dropout(0.5), nn.Linear(16, 3)
        self.functional = functional

    def forward(self, x):
        out = F.dropout(x, 0.5, self.training) if self.functional else self.drop(x)
        out += x
        return self.fc(self.conv(out).flatten(1))


@pytest.mark.parametrize("functional", [False, True], ids=["module", "functional"])
def test_a_write_into_a_train_mode_dropouts_output_is_not_a_write_into_the_input(functional):
    """``out = self.drop(x); out += x`` in train mode writes into the dropout's output, a new
    tensor: the oracle's dropout-off returned its input itself, so the write landed in the bound
    batch, and the model was refused as writing into its input (its plain calls drifting:
    1.6e38, 3.1e38, 6.2e38 where the loss is 1.28). Now the dropout, off, returns a new tensor
    where torch's does (train mode, p > 0): no warning, the split kept, the textbook's gradient."""
    torch.manual_seed(0)
    model = _DropoutResidual(functional).double().train()
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle, theta, got = _estimate_after_swap(model, lambda m: None, x.copy(), y)
    assert oracle._core.blocks
    ref = textbook_model(model)
    ref.functional = False  # its dropout module, which model_loss switches off (p = 0)
    assert _textbook_error(oracle, ref, x, y, got) < 1e-10
    want = model_loss(ref, x, y, CE_ROWS)
    assert [oracle(theta) for _ in range(3)] == pytest.approx([want] * 3, rel=1e-12, abs=0)


@pytest.mark.parametrize("functional", [False, True], ids=["module", "functional"])
def test_a_write_into_an_eval_mode_dropouts_output_is_still_a_write_into_the_input(functional):
    """The guard: in eval mode torch's dropout returns its input itself, so ``out += x`` does write
    into the input there, and the oracle still says so."""
    torch.manual_seed(0)
    model = _DropoutResidual(functional).double().eval()
    x, y = _data()
    with pytest.warns(RuntimeWarning, match=r"its forward writes into its input x in place"):
        TorchOracle(model, CE_ROWS, (x, y))


class _KeptByHand(nn.Module):
    """Buffers assigned out of place in a train-mode forward: a call counter and a running mean of
    the hidden features kept by hand, read by the same forward."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 4), nn.Linear(4, 3)
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("running", torch.zeros(4))

    def forward(self, x):
        h = self.a(x.flatten(1))
        if self.training:
            self.count = self.count + 1
            self.running = (0.9 * self.running + 0.1 * h.abs().mean(0)).detach()
        return self.b(h - self.running)


@pytest.mark.filterwarnings("ignore:TorchOracle. step mean:RuntimeWarning")  # the running mean mixes samples
def test_buffers_assigned_out_of_place_in_a_train_forward_are_put_back_as_the_textbook_does():
    """``self.count = self.count + 1`` and ``self.running = 0.9 * self.running + ...`` register new
    tensors: the oracle put its saved values back into the old ones, so the buffers moved with
    every forward: refused as "not repeatable" (blaming a random op) and, warnings aside, the
    estimate crashed with vmap's "your tensor may have escaped" (the next test). The textbook loop starts each forward from the buffers as they were (its
    ``load_state_dict``); so does the oracle now, and leaves them as it found them."""
    torch.manual_seed(0)
    model = _KeptByHand().double().train()
    x, y = _data()
    ref = textbook_model(model)
    oracle = TorchOracle(model, CE_ROWS, (x.copy(), y), update_stats=False)
    theta = oracle.initial_params()
    for _ in range(2):
        got = zo.estimate_gradient(oracle, theta, zo.CGE(mu=MU, scheme="central")).grad
        assert _textbook_error(oracle, ref, x, y, got) < 1e-10
    assert float(model.count) == 0 and float(model.running.abs().max()) == 0
    assert model.running is model._buffers["running"] and dict(model.named_buffers()).keys() == {"count", "running"}


class _ScaleKeptByHand(nn.Module):
    """A running scale of the hidden features, assigned (not written in place) in train mode and
    read after, by the same forward."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 3)
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x):
        h = self.a(x)
        if self.training:
            self.scale = (0.9 * self.scale + 0.1 * h.abs().mean(0)).detach()
        return self.b(h / self.scale)


@pytest.mark.filterwarnings("ignore:TorchOracle. step mean:RuntimeWarning")  # the running mean mixes samples
def test_a_running_statistic_assigned_in_a_train_forward_does_not_escape_the_vectorized_forward():
    """Before: a warning that ``model(x) is not repeatable`` (blaming a random op), then
    ``OracleError: oracle raised at coordinates 0..30 ... RuntimeError: Either your tensor may have
    escaped from inside a function being vmapped`` (the vectorized forward left its batched scale
    on the module, which the next forward read)."""
    torch.manual_seed(0)
    model = _ScaleKeptByHand().double().train()
    x, y = _data((4, 3))
    ref = textbook_model(model)
    oracle = TorchOracle(model, CE_ROWS, (x.copy(), y), update_stats=False)
    theta = oracle.initial_params()
    got = zo.estimate_gradient(oracle, theta, zo.CGE(mu=MU, scheme="central")).grad
    assert _textbook_error(oracle, ref, x, y, got) < 1e-10
    assert torch.equal(model.scale, torch.ones(4, dtype=torch.float64))


def test_a_forward_keeping_its_last_activation_gives_the_same_estimates_run_after_run():
    """``self.prev = h.detach()`` read at the next call (h432's model): refused as not repeatable,
    but the attribute stayed in the model's key, which held the tensor's id; whether a query
    checked again (running the check's forwards, which move ``prev``) depended on whether a freed
    id was reused, so the forwards per estimate (59, 53, 57, 61 ...) and the estimates differed
    from one run to the next. The attribute the forward writes is now dropped from the key when
    the model is found not repeatable: the same forwards and bits every run."""
    from test_torch_fallback_once import _Prev, _batch

    x, y = _batch()
    runs = []
    for _ in range(3):
        torch.manual_seed(0)
        model = _Prev().double()
        calls = [0]
        model.a.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            oracle = TorchOracle(model, CE_ROWS, (x, y), update_stats=False)
            theta = oracle.initial_params()
            got = []
            for _ in range(4):
                before = calls[0]
                g = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-4, scheme="central")).grad
                got.append((calls[0] - before, g))
        said = [str(w.message) for w in caught if "is not repeatable" in str(w.message)]
        assert len(said) == 1 and "'_Prev.prev'" in said[0]
        assert len({n for n, _ in got[1:]}) == 1, [n for n, _ in got]
        runs.append(got)
    for other in runs[1:]:
        assert [n for n, _ in other] == [n for n, _ in runs[0]]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(other, runs[0]))
