"""Extending zoracle as the docs invite: an optimizer, an oracle with prefix / suffix, an executor of one's own.

What a user gets wrong in each is refused with the argument, the value and the fix, before the queries
it would waste (an ``update`` that cannot take ``lr=``), or at the step it happens (an ``update`` that
returns the new params alone, or its state as a plain tuple); a prefix / suffix pair that composes to
another loss than the plain call in a later block alone is refused by the run's first-estimate check.
"""

from __future__ import annotations

import concurrent.futures
import functools
from typing import NamedTuple

import numpy as np
import pytest

import zoracle as zo


def quadratic(p) -> float:
    return float(np.sum((p - np.arange(p.size)) ** 2))


class Counted:
    def __init__(self):
        self.calls = 0

    def __call__(self, p):
        self.calls += 1
        return quadratic(p)


class LionState(NamedTuple):
    count: int
    m: np.ndarray


def lion(lr=0.05, b1=0.9, b2=0.99) -> zo.Optimizer:
    def init(params):
        return LionState(0, np.zeros_like(params))

    def update(grad, state, params, lr=None):
        c = b1 * state.m + (1 - b1) * grad
        new = (params - lr * np.sign(c)).astype(params.dtype)
        return new, LionState(state.count + 1, b2 * state.m + (1 - b2) * grad)

    return zo.Optimizer(init, update, lr, "lion", f"lion(lr={lr}, b1={b1}, b2={b2})")


def _own(update) -> zo.Optimizer:
    return zo.Optimizer(lambda p: LionState(0, np.zeros_like(p)), update, 0.1, "mine", "mine(lr=0.1)")


def test_an_update_without_lr_is_refused_before_any_query():
    """It raised a bare TypeError from inside train after the first step's queries."""
    oracle = Counted()
    opt = _own(lambda grad, state, params: (params - 0.1 * grad, LionState(state.count + 1, state.m)))
    with pytest.raises(zo.ArgumentError, match=r"`optimizer` 'mine': train calls update\(grad, state, params, "
                                               r"lr=lr\), which its signature \(grad, state, params\) cannot take.*"
                                               r"def update\(grad, state, params, lr=None\)"):
        zo.train(oracle, np.zeros(4), epochs=2, optimizer=opt, rng=0, progress=False)
    assert oracle.calls == 0


def test_an_update_decorated_with_functools_wraps_that_takes_lr_trains():
    """A wrapper that takes ``lr=`` and calls an update without it (``functools.wraps`` copies the inner
    signature) was refused before any query, though train's call ``update(..., lr=lr)`` works; the bare
    wrapper and a ``functools.partial`` train as the plain update does."""

    def fixed_lr(update):
        @functools.wraps(update)
        def wrapper(grad, state, params, lr=None):
            return update(grad, state, params)
        return wrapper

    @fixed_lr
    def update(grad, state, params):
        return (params - 0.1 * grad).astype(params.dtype), LionState(state.count + 1, state.m)

    def plain(grad, state, params, lr=None):
        return (params - 0.1 * grad).astype(params.dtype), LionState(state.count + 1, state.m)

    want = zo.train(quadratic, np.zeros(4), epochs=2, optimizer=_own(plain), rng=0, progress=False)
    for own in (update, functools.partial(plain)):
        got = zo.train(quadratic, np.zeros(4), epochs=2, optimizer=_own(own), rng=0, progress=False)
        assert got.params.tobytes() == want.params.tobytes()


def test_an_update_returning_the_params_alone_names_the_pair():
    """It raised NumPy's bare 'too many values to unpack (expected 2)'."""
    opt = _own(lambda grad, state, params, lr=None: params - lr * grad)
    with pytest.raises(zo.ArgumentError, match=r"`optimizer` 'mine': update\(\) returned a ndarray of shape \(4,\) "
                                               r"at step 0; it must return the pair \(params, state\)"):
        zo.train(quadratic, np.zeros(4), epochs=2, optimizer=opt, rng=0, progress=False)


def test_a_state_returned_as_a_plain_tuple_is_named_so():
    """The message showed `got <built-in method count of tuple object at 0x7f...>`."""
    opt = _own(lambda grad, state, params, lr=None: (params - lr * grad, (state.count + 1, state.m)))
    with pytest.raises(zo.ArgumentError, match=r"got a plain tuple, no NamedTuple \(return the state as init builds "
                                               r"it: LionState\(count=state.count \+ 1, \.\.\.\)\)") as info:
        zo.train(quadratic, np.zeros(4), epochs=2, optimizer=opt, rng=0, progress=False)
    assert "built-in method" not in str(info.value)


def test_an_own_optimizers_state_is_checkpointed_and_resumed_bit_for_bit(tmp_path):
    path = str(tmp_path / "run.npz")
    settings = dict(optimizer=lion(), rng=0, progress=False)
    whole = zo.train(quadratic, np.zeros(5), epochs=8, **settings)
    zo.train(quadratic, np.zeros(5), epochs=3, checkpoint=path, **settings)
    resumed = zo.train(quadratic, np.zeros(5), epochs=8, checkpoint=path, resume=path, **settings)
    assert type(resumed.optimizer_state) is LionState and resumed.optimizer_state.count == 8
    assert resumed.params.tobytes() == whole.params.tobytes()
    assert resumed.optimizer_state.m.tobytes() == whole.optimizer_state.m.tobytes()


class MLP:
    """A 2-layer tanh MLP on a fixed minibatch; blocks W1, b1, W2, b2, prefix / suffix reusing features."""

    def __init__(self, x, y, n_hidden=6):
        self.x, self.y = x, y
        self.shapes = [(n_hidden, x.shape[1]), (n_hidden,), (y.shape[1], n_hidden), (y.shape[1],)]
        ends = np.cumsum([int(np.prod(s)) for s in self.shapes])
        self.blocks = [slice(int(a), int(b)) for a, b in zip([0, *ends[:-1]], ends)]

    def layers(self, p):
        return [p[b].reshape(s) for b, s in zip(self.blocks, self.shapes)]

    def head(self, h, p):
        _, _, W2, b2 = self.layers(p)
        return float(np.mean((h @ W2.T + b2 - self.y) ** 2))

    def hidden(self, x, p):
        W1, b1, _, _ = self.layers(p)
        return np.tanh(x @ W1.T + b1)

    def __call__(self, p):
        return self.head(self.hidden(self.x, p), p)

    def prefix(self, p, block):
        return self.x if block < 2 else self.hidden(self.x, p)

    def suffix(self, feats, p, block, coords, step):
        out = np.empty(len(coords))
        for j, i in enumerate(coords):
            q = p.copy()
            q[i] += step
            out[j] = self.head(self.hidden(feats, q) if block < 2 else feats, q)
        return out


class StaleHidden(MLP):
    """Its prefix for the second layer reads the hidden features without the bias b1: the first layer's
    blocks (0 and 1) agree with the plain call, the second's do not."""

    def prefix(self, p, block):
        W1 = self.layers(p)[0]
        return self.x if block < 2 else np.tanh(self.x @ W1.T)


def _mlp(cls):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 2))
    oracle = cls(x, y)
    return oracle, 0.5 * rng.standard_normal(oracle.blocks[-1].stop)


def test_a_prefix_wrong_in_a_later_block_alone_is_refused_and_the_run_is_the_plain_calls():
    """The check probed the first block's suffix only: the run trained through the wrong features silently."""
    oracle, p0 = _mlp(StaleHidden)
    plain, _ = _mlp(MLP)
    settings = dict(epochs=4, estimator=zo.CGE(), optimizer=zo.sgd(0.1), rng=0, progress=False)
    want = zo.train(lambda p: plain(p), p0, **settings)
    with pytest.warns(RuntimeWarning, match=r"StaleHidden: its `prefix and suffix` disagrees with its plain call at "
                                            r"params with coordinate \d+ moved by 0.005: .*\(asked twice, alike\)\. "
                                            r"The gap is in block 2: its `prefix`"):
        res = zo.train(oracle, p0, **settings)
    assert res.params.tobytes() == want.params.tobytes()


def test_a_sound_split_oracle_is_checked_once_a_block_and_trains_as_the_plain_call():
    oracle, p0 = _mlp(MLP)
    settings = dict(epochs=3, estimator=zo.CGE(), optimizer=zo.sgd(0.1), rng=0, progress=False)
    want = zo.train(lambda p: oracle(p), p0, **settings)
    res = zo.train(oracle, p0, **settings)  # (no warning: pytest makes zoracle's errors)
    assert np.allclose(res.params, want.params, rtol=0, atol=1e-12)
    assert res.nfev == want.nfev + len(oracle.blocks)  # one plain call a block, once a run


class ThreadExecutor:
    """The Executor protocol on a concurrent.futures thread pool: results in task order."""

    def __init__(self, n_workers=2, completed_order=False):
        self.n_workers, self.completed_order = n_workers, completed_order

    def __enter__(self):
        self.pool = concurrent.futures.ThreadPoolExecutor(self.n_workers)
        return self

    def __exit__(self, *exc):
        self.pool.shutdown()
        return False

    def run(self, oracle, params, tasks):
        futures = [self.pool.submit(task.run, oracle, params) for task in tasks]
        if self.completed_order:  # the mistake: results as they complete
            return [f.result() for f in concurrent.futures.as_completed(futures)][::-1]
        return [f.result() for f in futures]


def test_an_own_thread_pool_executor_equals_serial_and_a_reordering_one_is_refused():
    oracle, p0 = _mlp(MLP)
    for est in (zo.CGE(), zo.RGE(directions=8)):
        want = zo.estimate_gradient(oracle, p0, est, rng=0)
        with ThreadExecutor(2) as ex:
            got = zo.estimate_gradient(oracle, p0, est, rng=0, executor=ex)
        assert got.grad.tobytes() == want.grad.tobytes() and got.nfev == want.nfev
    with ThreadExecutor(2, completed_order=True) as ex, \
            pytest.raises(zo.ArgumentError, match=r"executor ThreadExecutor: run\(oracle, params, tasks\) returned, "
                                                  r"for task 0, a result of shape"):
        zo.estimate_gradient(oracle, p0, zo.CGE(), executor=ex)
