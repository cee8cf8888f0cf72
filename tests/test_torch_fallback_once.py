"""TorchOracle's fallback warnings, follow-ups to tests/test_torch_refusals_named.py: the "not
repeatable" warning said once per oracle and cause, a buffer's fix for a buffer written in place,
vmap failures naming the module, line and fix, and the speed cost of a submodule kept whole
(silent before) said once."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import zoracle as zo  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402

from test_torch_refusals_named import CE_ROWS, _batch, _build, _densenet, _full_forwards, _Outer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _estimates(oracle, n=3):
    theta = oracle.initial_params()
    return [zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-4, scheme="central")).grad for _ in range(n)]


class _Prev(nn.Module):
    """Keeps its last activation as a plain attribute and reads it at the next call."""

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


def test_not_repeatable_is_said_once_per_oracle_however_many_queries():
    """The written attribute changes the model's key at every call, so every query checked again
    and warned again: 9 identical warnings over three estimates."""
    torch.manual_seed(0)
    x, y = _batch()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        oracle = TorchOracle(_Prev().double(), CE_ROWS, (x, y), update_stats=False)
        _estimates(oracle)
    said = [str(w.message) for w in got if "is not repeatable" in str(w.message)]
    assert len(said) == 1, said
    assert "'_Prev.prev'" in said[0]


class _Decay(nn.Module):
    """A running scale updated in place in the train-mode forward, then read."""

    def __init__(self, after=False):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
        self.register_buffer("scale", torch.full((4,), 2.0))
        self.after = after

    def forward(self, x):
        h = self.a(x)
        if self.after:  # read, then update: the captured steps see what forward sees
            out = self.b(h / self.scale)
        if self.training:
            with torch.no_grad():
                self.scale.mul_(0.9).add_(0.1)
        return out if self.after else self.b(h / self.scale)


def test_a_buffer_written_in_place_gets_a_buffers_fix_and_the_fix_keeps_feature_reuse():
    """The refusal told a running buffer to write h = h.mul(...), an activation's fix. It names the
    buffer and says what keeps the fast path, both checked here: eval mode, or the update after
    the forward's last read of the buffer."""
    x, y = _batch()
    torch.manual_seed(0)
    model = _Decay().double().train()
    with pytest.warns(RuntimeWarning) as got:
        oracle, grad = _build(copy.deepcopy(model), x, y)
    text = next(str(w.message) for w in got if "in place" in str(w.message))
    assert "writes into a tensor in place (mul_), the buffer 'scale'," in text
    assert "model.eval()" in text and "after the forward's last read" in text
    assert "h = h.mul" not in text
    assert not oracle._core.blocks
    np.testing.assert_allclose(grad, _full_forwards(model, x, y), rtol=1e-9, atol=1e-12)
    # the advice holds: in eval mode the split is kept, and so it is with the update after the read
    for fixed in (copy.deepcopy(model).eval(), _after(model)):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*write buffers in their train-mode forward")
            oracle, grad = _build(copy.deepcopy(fixed), x, y)
            want = _full_forwards(fixed, x, y)
        assert oracle._core.block_names == ["a", "b"]
        np.testing.assert_allclose(grad, want, rtol=1e-7, atol=1e-10)


def _after(model):
    fixed = _Decay(after=True).double().train()
    fixed.load_state_dict(model.state_dict())
    return fixed


class _RunningScale(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.register_buffer("scale", torch.ones(n))

    def forward(self, h):
        if self.training:
            with torch.no_grad():
                self.scale.mul_(0.9).add_(0.1 * h.abs().mean(0))
        return h / self.scale


def test_a_vmap_failure_names_the_module_its_line_the_cost_and_the_fix():
    """"torch.func.vmap failed (RuntimeError: output with shape [4] doesn't match the broadcast
    shape [12, 4])": torch's words only, no module."""
    x, y = _batch()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), _RunningScale(4), nn.Linear(4, 2)).double().train()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        oracle, grad = _build(copy.deepcopy(model), x, y)
    said = [str(w.message) for w in got if "vmap failed" in str(w.message)]
    assert len(said) == 1, said
    text = said[0]
    assert "in the forward of '1' (_RunningScale) at test_torch_fallback_once.py:" in text
    assert "self.scale.mul_(0.9)" in text  # the line, as written
    assert "one forward per perturbation" in text  # the cost
    assert "eval mode" in text  # the fix for a buffer
    np.testing.assert_allclose(grad, _full_forwards(model, x, y), rtol=1e-9, atol=1e-12)


def test_a_vmap_failure_from_state_kept_between_calls_names_the_forward_and_the_fix():
    torch.manual_seed(0)
    x, y = _batch()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        _build(_Prev().double(), x, y)
    text = next(str(w.message) for w in got if "vmap failed" in str(w.message))
    assert "in _Prev.forward at test_torch_fallback_once.py:" in text
    assert "self.prev = h" in text and "keep no such state" in text


@pytest.mark.parametrize("make", [lambda: _densenet().eval(), lambda: _Outer().double().eval()],
                         ids=["densenet-memory-efficient", "branch-in-a-block"])
def test_a_submodule_kept_whole_in_eval_mode_says_what_it_costs_once(make):
    """The capture keeps a submodule fx cannot trace through as one step: exact, but its layers
    lose their own blocks and closed forms. That was silent."""
    x, y = _batch()
    model = make()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        oracle = TorchOracle(copy.deepcopy(model), CE_ROWS, (x, y), update_stats=False)
        grads = _estimates(oracle)
    said = [str(w.message) for w in got if "TorchOracle" in str(w.message)]
    assert len(said) == 1, said
    whole = oracle._core.block_names[1]
    assert said[0].startswith("TorchOracle: a speed cost, not an error")
    assert f"{whole} runs as one step (its layers get no blocks of their own)" in said[0]
    assert "torch.where" in said[0]  # the fix
    for grad in grads:
        np.testing.assert_allclose(grad, _full_forwards(model, x, y), rtol=1e-9, atol=1e-12)


def test_a_custom_module_without_children_kept_whole_says_nothing():
    """A leaf of the project's own with no layers inside loses nothing by running whole."""
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(4))

        def forward(self, h):
            if h.sum() > 0:
                h = h * 2
            return h * self.w

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.g, self.b = nn.Linear(3, 4), Gate(), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.g(self.a(x)))

    x, y = _batch()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oracle, _ = _build(Net().double().eval(), x, y)
    assert oracle._core.block_names == ["a", "g", "b"]
