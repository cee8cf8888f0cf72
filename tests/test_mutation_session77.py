"""Tests that kill the mutants of session 77's new code the other tests let live (h489): the rounding judgement
of RGE (ranked or not) and SNES (its bound of 4 units of the last place, a central pair judged by its own
difference, the precision read from every loss, SNES at the last place of its largest sample), and
TorchOracle's global forward hooks (one only the whole-batch check sees, put back as they were, named beside
a module's hook or another global one) and settings dataclasses with ``__slots__``. Each test names the
plausible bug it catches."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

import zoracle as zo

from test_rounding_ranked import ESTIMATORS, Answers, _nudged, _said

MU = 5e-3


def _judged(values, estimator) -> float:
    oracle = Answers(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = zo.estimate_gradient(oracle, np.zeros(3), estimator, rng=0)
    assert oracle.calls == len(values)
    return est._rounding


def _rge(q, scheme="forward", shaping="none"):
    return zo.RGE(mu=MU, directions=q, scheme=scheme, shaping=shaping)


@pytest.mark.parametrize("shaping", ["none", "ranks"])
@pytest.mark.parametrize("base", [3.0, -3.0, 0.7])
def test_rounding_is_four_units_of_the_last_place_or_less_not_more(base, shaping):
    """The bound itself, against ``loss_rounding``'s definition (4 units of the last place, at or below is
    rounding): a strict ``<`` in SNES, ``>=`` in RGE, or a bound of 16 units were consistent with every other
    judgement the suite compares (each only against another estimator judged the same way)."""
    f0 = _nudged(base, 0)
    for k, want in ((4, np.inf), (-4, np.inf), (5, 0.0), (-5, 0.0)):
        far = _nudged(base, k)
        assert _judged([f0, f0, far], _rge(2, shaping=shaping)) == want, (k, shaping)
        assert _judged([f0, far, f0], _rge(1, "central", shaping)) == want, (k, shaping)
        assert _judged([f0, far, f0], zo.SNES(mu=MU, population=3)) == want, k


@pytest.mark.parametrize("shaping", ["none", "ranks"])
def test_a_central_pair_is_judged_by_its_own_difference_not_by_its_distance_from_the_base_loss(shaping):
    """The central scheme judged by the forward one's spread about the base loss (``scheme`` not passed on):
    at a minimum the pair lies far from f(x) and its difference, the estimate, is rounding."""
    # at a minimum f(x + mu u) and f(x - mu u) lie far above f(x), a few units of their last place apart
    f0, up = 3.0, _nudged(3.5, 0)
    for k in (-4, 4):
        assert _judged([f0, up, _nudged(3.5, k)], _rge(1, "central", shaping)) == np.inf
    # and a pair far apart is a real difference, whichever of the two is the larger
    for pair in ((3.0, 3.5), (3.5, 3.0)):
        assert _judged([f0, *pair], _rge(1, "central", shaping)) == 0.0


@pytest.mark.parametrize("where", [0, 4, 9])
def test_the_losses_precision_is_read_from_every_loss_wherever_it_lies(where):
    """The precision read from 8 of the losses (as CGE's check reads them), from all but the first, or
    from the first sample only (SNES): a float64 loss whose one short-of-float32 value lay elsewhere was
    judged at float32's rounding, 2**29 times too coarse."""
    # float32 numbers a unit of float32's last place apart, but for one loss 1e-7 off any float32
    # number: the loss is a float64 loss, its values 2**29 of its units apart, no rounding
    f0 = 3.0
    vals = [_nudged(3.0, 1) for _ in range(10)]
    vals[where] = 3.0 + 1e-7
    assert _judged([f0, *vals], _rge(10)) == 0.0
    assert _judged([f0, *vals], _rge(10, shaping="ranks")) == 0.0
    assert _judged([f0, *vals], zo.SNES(mu=MU, population=11)) == 0.0  # (11 samples: f0 among them)
    # all float32 numbers: a float32 loss's rounding
    vals[where] = _nudged(3.0, -1)
    assert _judged([f0, *vals], _rge(10)) == np.inf
    assert _judged([f0, *vals], zo.SNES(mu=MU, population=11)) == np.inf


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_snes_judges_its_samples_at_the_last_place_of_the_largest(sign):
    """SNES judged at the last place of its smallest sample, or of its largest signed one (``hi`` for
    negative losses): samples either side of a power of two were called a real difference."""
    # samples either side of 4 (float32's last place doubles there): 2 units below and 2 above, 3 units of
    # the wider place apart, within the 4 units of rounding at the largest's place, beyond the narrower's
    lo, hi = _nudged(4.0, -2), _nudged(4.0, 2)
    values = [sign * v for v in (lo, 4.0, hi)]
    ref = max(values, key=abs)
    want = _judged([ref, *values], zo.RGE(mu=MU, directions=3))
    assert want == np.inf
    assert _judged(values, zo.SNES(mu=MU, population=3)) == want
    assert _judged(values[::-1], zo.SNES(mu=MU, population=3)) == want
    # 3 units of the wider place apart and one of them 1 unit further: beyond rounding
    far = [sign * v for v in (_nudged(4.0, -4), 4.0, _nudged(4.0, 3))]
    assert _judged(far, zo.SNES(mu=MU, population=3)) == 0.0

@pytest.mark.parametrize("name", ["cge", "rge", "ranks forward", "snes"])
def test_the_epoch_of_zeros_warning_says_what_the_steps_did_and_where_the_queries_were(name):
    """CGE (no ``shaping``) read as ranked, or SNES's samples named as queries at +-mu: the warning told a run
    whose steps moved nothing that they were random steps of full size, or SNES's user of queries it makes
    at widths sigma."""
    estimator = {"cge": zo.CGE(mu=MU), "rge": zo.RGE(mu=MU, directions=4), **ESTIMATORS}[name]
    said = _said(lambda p: 2.5, estimator)
    assert len(said) == 1, said
    ranked = name in ("ranks forward", "snes")
    assert ("a random step of full size" in said[0]) == ranked and ("moved no parameter" in said[0]) != ranked
    where = f"samples (widths sigma, from mu = {MU:g})" if name == "snes" else f"queries at +-mu = {MU:g}"
    assert f"each step's {where} " in said[0], said



# ---- TorchOracle: global forward hooks, settings dataclasses with __slots__

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from zoracle.adapters.torch import TorchOracle  # noqa: E402

from test_torch_idioms_modern import (  # noqa: E402
    CE_ROWS, MU as TORCH_MU, _batch, _close, _global_hook, _mlp, _textbook)


@dataclasses.dataclass(slots=True)
class _Cfg:
    scale: float = 1.0
    shift: float = 0.0


class _Configured(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.cfg = _Cfg()

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)) * self.cfg.scale + self.cfg.shift)


def _checked(model):
    x, y = _batch((4,))
    oracle = TorchOracle(model, CE_ROWS, update_stats=False).bind((x, y))
    theta = oracle.initial_params()
    cge = zo.CGE(mu=TORCH_MU, scheme="central")
    zo.estimate_gradient(oracle, theta, cge)
    assert oracle._core.blocks
    return oracle, theta, cge, x, y


@pytest.mark.parametrize("field", ["scale", "shift"])
def test_a_slots_dataclass_settings_field_changed_after_the_check_is_named(field):
    """A dataclass with ``__slots__`` read as no fields (or none of their values, or all but the first): a
    field changed after the check was not in the split key, and only the query's spot check of the captured
    graph against model(x) found it, as a different loss rather than the attribute that changed."""
    torch.manual_seed(0)
    model = _Configured().double()
    oracle, theta, cge, x, y = _checked(model)
    setattr(model.cfg, field, 3.0)
    with pytest.warns(RuntimeWarning, match="since the split was checked, a module's attribute changed"):
        got = zo.estimate_gradient(oracle, theta, cge).grad
    kept = np.arange(theta.size)
    _close(got, kept, _textbook(model, oracle, x, y, theta, kept))


def test_a_global_hook_registered_beside_an_observing_one_is_named_as_global():
    """The key's global part read as its hooked flag: a global hook added beside one there at the check
    was named "a forward hook was registered", as if on a module."""
    torch.manual_seed(0)
    model = _mlp().double()
    calls = []
    observer = _global_hook("observe", calls)
    try:
        oracle, theta, cge, x, y = _checked(model)
        scaler = _global_hook("forward")
        try:
            with pytest.warns(RuntimeWarning, match=r"a global forward hook \(register_module_forward_hook or "
                                                    r"_pre_hook\) was registered or removed"):
                got = zo.estimate_gradient(oracle, theta, cge).grad
            kept = np.arange(theta.size)
            _close(got, kept, _textbook(model, oracle, x, y, theta, kept))
        finally:
            scaler.remove()
    finally:
        observer.remove()


@pytest.mark.parametrize("kind", ["observe", "forward"])
def test_the_split_check_puts_the_users_global_hooks_back_in_their_order(kind):
    """The check that runs model(x) without the global hooks must put them back: not restored, the user's
    hooks were gone after the first query (an observer stopped observing) and the estimate stayed right."""
    torch.manual_seed(0)
    model = _mlp().double()
    tables = nn.modules.module._global_forward_hooks
    calls = []
    first = _global_hook("observe", calls)
    second = _global_hook(kind, calls)
    before = list(tables.items())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x, y = _batch((4,))
            oracle = TorchOracle(model, CE_ROWS, update_stats=False).bind((x, y))
            zo.estimate_gradient(oracle, oracle.initial_params(), zo.CGE(mu=TORCH_MU, scheme="central"))
        assert list(tables.items()) == before
        calls.clear()
        model(torch.as_tensor(x))
        assert calls
    finally:
        first.remove()
        second.remove()


def _on_the_whole_batch(mod, args, out):
    # a global hook the split's self-check (on two samples) does not see: it changes a Linear's output
    # on the bound batch of 4 only
    if isinstance(mod, nn.Linear) and out.shape[0] > 2:
        return out * 2.0 + 0.3


def test_a_global_hook_only_the_whole_batch_check_sees_retires_the_split():
    """A global hook that the two-sample self-check passes: only ``_hook_check`` on the whole batch, with
    and without the global hooks, retires the split. Global hooks left out of that check (not taken out of
    torch's tables, the torch tools' taken instead, ``glob_off`` never set) kept the split and CGE was off."""
    torch.manual_seed(0)
    model = _mlp().double()
    x, y = _batch((4,))
    handle = nn.modules.module.register_module_forward_hook(_on_the_whole_batch)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            oracle = TorchOracle(model, CE_ROWS, update_stats=False).bind((x, y))
            theta = oracle.initial_params()
            got = zo.estimate_gradient(oracle, theta, zo.CGE(mu=TORCH_MU, scheme="central")).grad
        kept = np.arange(theta.size)
        _close(got, kept, _textbook(model, oracle, x, y, theta, kept))  # the textbook loop runs the hook too
        assert list(nn.modules.module._global_forward_hooks.values()) == [_on_the_whole_batch]
    finally:
        handle.remove()
    said = [str(w.message) for w in seen if str(w.message).startswith("TorchOracle")]
    assert len(said) == 1 and "with its forward hooks but" in said[0], said
    assert "global forward hooks '_on_the_whole_batch'" in said[0] and "run(s) forward hooks" not in said[0], said
    assert not oracle._core.blocks


def test_a_module_hook_and_a_global_hook_are_both_named():
    """The refusal names a module's hook and the global ones both, not only the first it found."""
    torch.manual_seed(0)
    model = _mlp().double()
    model[2].register_forward_hook(lambda mod, args, out: out * 1.5)
    x, y = _batch((4,))
    handle = nn.modules.module.register_module_forward_hook(_on_the_whole_batch)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            oracle = TorchOracle(model, CE_ROWS, update_stats=False).bind((x, y))
            zo.estimate_gradient(oracle, oracle.initial_params(), zo.CGE(mu=TORCH_MU, scheme="central"))
    finally:
        handle.remove()
    said = [str(w.message) for w in seen if str(w.message).startswith("TorchOracle")]
    assert any("'2' run(s) forward hooks and global forward hooks '_on_the_whole_batch'" in m for m in said), said
