"""Tests from the mutation run over session 71's new code (h370): each fails on a mutant of it that
the session's tests let through, and passes on the code as it is."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zoracle as zo
from zoracle._executors_core import _deterministic
from zoracle._pickling import LoadFailed, Pickled
from zoracle._plan import BaseTask, CoordTask, assemble, merge_calls, reshard, shard_tasks
from zoracle.executors import JoblibExecutor

from test_executor_carryovers import _FailsLoading  # noqa: E402  (an oracle whose loading raises)


def _answer(task) -> np.ndarray:
    """A stand-in for ``task.run``: each column's losses name its step and coordinate, so a column
    given to the wrong task, or computed with another task's steps, reads another value."""
    if isinstance(task, BaseTask):
        return np.array([[-1.0]])
    return np.array([[1000.0 * s + c for c in task.coords] for s in task.steps])


_STEPS = [(1e-3,), (-1e-3, 1e-3), (2e-3,)]


@st.composite
def _plans(draw):
    """A BaseTask, then coordinate tasks: plain calls (a few step sets) and batched ones, mixed."""
    tasks, lo = [BaseTask()], 0
    for _ in range(draw(st.integers(1, 8))):
        n = draw(st.integers(1, 6))
        mode = draw(st.sampled_from(["call", "call", "batch"]))
        tasks.append(CoordTask(np.arange(lo, lo + n), draw(st.sampled_from(_STEPS)), mode, -1, 2, cost=float(n)))
        lo += n
    return tasks


@settings(max_examples=60, deadline=None)
@given(tasks=_plans(), workers=st.integers(1, 4), min_cost=st.sampled_from([0.5, 2.0, 7.0]))
def test_merged_plain_calls_give_each_task_its_own_answer(tasks, workers, min_cost):
    """merge_calls joins only neighbouring plain-call tasks of the same steps (a batched task or
    other steps between them ends a run), and assemble gives every task its columns back."""
    shards, costs, groups, back = shard_tasks(tasks, workers, lambda t: 1.0, min_cost=min_cost)
    got = assemble([_answer(s) for s in shards], groups, back)
    assert len(got) == len(tasks)
    for t, g in zip(tasks, got):
        np.testing.assert_array_equal(g, _answer(t))
    merged, _ = merge_calls(tasks)
    for m in merged:  # a merged task's steps are those of every task in it
        if isinstance(m, CoordTask) and m.mode == "call":
            owners = [t for t in tasks[1:] if np.isin(t.coords, m.coords).any()]
            assert all(t.steps == m.steps and t.mode == "call" for t in owners)
            assert m.coords.tolist() == sorted(c for t in owners for c in t.coords.tolist())


def test_an_untimed_oracles_tasks_are_not_merged():
    """Without timed queries (min_cost 0) the tasks are resharded as planned, none merged."""
    tasks = [BaseTask()] + [CoordTask(np.arange(5 * i, 5 * i + 5), (1e-3,), "call", -1, 5, cost=5.0) for i in range(8)]
    shards, costs, groups, back = shard_tasks(tasks, 2, lambda t: 1.0)
    assert back is None
    want = reshard(tasks, 2, lambda t: 1.0)
    assert len(shards) == len(want[0]) == 9 and groups == want[2] and costs == want[1]
    assert len(shard_tasks(tasks, 2, lambda t: 1.0, min_cost=1e-9)[0]) < 9  # (timed: merged, then cut by cost)


@pytest.mark.parametrize("times", [1.0, 1.5, 2.5, 3.99, 4.0, 10.0])
def test_no_piece_of_a_cut_task_costs_less_than_min_cost(times):
    """A task of ``times`` * min_cost is cut into floor(times) pieces here (24 by cost alone), none
    below min_cost: a shard's round trip is paid for at least min_cost of queries."""
    task = CoordTask(np.arange(400), (1e-3,), "call", -1, 1, cost=400.0)
    shards, costs, _ = reshard([BaseTask(), task], 8, lambda t: 1.0, min_cost=400.0 / times)
    pieces = costs[1:]
    assert len(pieces) == max(1, int(times)) and min(pieces) >= 400.0 / times * (1 - 1e-12)


def _sum_of_cubes(x):
    return float(np.sum(np.arange(1, x.size + 1) * x ** 3))


def test_an_untimed_oracles_first_run_is_spread_as_planned_whatever_the_least_shard():
    """An oracle's first run on an executor is not timed yet: its costs are units, not seconds, so
    ``min_shard_s`` (seconds) does not apply and no task is merged: a plain callable of 40
    coordinates on 2 workers runs as planned, 8 tasks of 5 and the base point's (9 shards), and one
    of 5 coordinates as 6, even where the least shard is large (held on one worker otherwise)."""
    x = np.linspace(-1.0, 1.0, 40)
    with JoblibExecutor(2, backend="threading") as ex:
        ex._impl.min_shard_s = 1e3
        for d, shards in ((40, 9), (5, 6)):
            f = lambda p: _sum_of_cubes(p)  # noqa: E731  (a new oracle each: not timed yet)
            got = zo.estimate_gradient(f, x[:d], zo.CGE(), executor=ex)
            assert ex.last_run.shards == shards
            assert np.array_equal(got.grad, zo.estimate_gradient(f, x[:d], zo.CGE()).grad)
        got = zo.estimate_gradient(f, x[:5], zo.CGE(), executor=ex)  # (timed now: one shard beside the base's)
        assert ex.last_run.shards == 2


def _result():
    return zo.train(lambda x: float(np.sum((x - 3.0) ** 2)), np.zeros(2), progress=False)


def test_reading_a_result_by_a_key_that_is_no_name_says_only_not_subscriptable():
    """A key that is not a field's name (a list, an array: not hashable) gets Python's own words,
    not a TypeError about hashing raised inside them; result["loss"] names the attribute."""
    res = _result()
    for key in ([0], np.array([0, 1]), 0):
        with pytest.raises(TypeError, match=r"^'TrainResult' object is not subscriptable$"):
            res[key]
    with pytest.raises(TypeError, match=r"^'TrainResult' object is not subscriptable: read the attribute, "
                                        r"result\.loss$"):
        res["loss"]
    assert res.loss == res.history.steps[-1]["loss"]


@pytest.mark.parametrize("shape", [(0,), (2, 0)])
def test_an_empty_loss_array_is_told_it_holds_no_loss(shape):
    """An empty array is neither the 1-element array told to use .item() nor one to reduce."""
    with pytest.raises(zo.OracleError, match=re.escape(f"got shape {shape}: an empty array holds no loss (a mask") + ".*a float$"):
        zo.estimate_gradient(lambda x: np.zeros(shape), np.zeros(2))




def _load_error(error) -> zo.ZoracleError:
    blob = pickle.dumps(_FailsLoading(error))
    with pytest.raises(zo.ZoracleError) as info:
        Pickled(blob).load()
    return info.value


def test_a_load_that_ran_out_of_memory_is_retried_as_a_shards_error():
    """A worker short of memory when loading (another may have it) is a shard's error, retried once
    on another worker, as an OSError is: not a LoadFailed, which stops the run."""
    exc = _load_error(MemoryError("no room for the weights"))
    assert not isinstance(exc, LoadFailed) and not _deterministic(exc)
    assert "(MemoryError: no room for the weights)" in str(exc)
    exc = _load_error(ValueError("12 classes saved, 10 built"))
    assert isinstance(exc, LoadFailed) and _deterministic(exc)


def test_a_load_failure_names_the_package_to_register_and_a_missing_class_its_fix():
    """A module of a package that the workers cannot import: cloudpickle.register_pickle_by_value takes
    the package (its top-level module); a class the workers' copy lacks is another version there."""
    exc = _load_error(ModuleNotFoundError("No module named 'mylab.models'", name="mylab.models"))
    assert isinstance(exc, LoadFailed)
    assert ("the module 'mylab.models' must be importable on the workers: install it there or put its folder on "
            "their PYTHONPATH, or send it by value with cloudpickle.register_pickle_by_value(mylab) in the driver"
            in str(exc))
    exc = _load_error(AttributeError("Can't get attribute 'Net' on <module 'mylab' from '/srv/mylab.py'>"))
    assert isinstance(exc, LoadFailed)
    assert str(exc).endswith("the workers' copy of the module it names lacks that class or function (another "
                             "version of your code there): give the workers the same code, or send the module by "
                             "value with cloudpickle.register_pickle_by_value (ray.cloudpickle's for RayExecutor)")


@pytest.mark.usefixtures("one_torch_thread")
def test_a_layers_class_swapped_after_the_oracle_was_built_is_seen():
    """``layer.__class__ = MaskedLinear`` (a subclass whose forward masks the weight, same parameters
    and attributes) after the build: the split's key holds the layer's class, so the split is checked
    again and the closed form the nn.Linear had is not used for it; CGE matches autograd."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from zoracle.adapters.torch import TorchOracle

    class MaskedLinear(nn.Linear):
        def forward(self, h):
            return nn.functional.linear(h, self.weight.triu(), self.bias)

    ce = nn.CrossEntropyLoss(reduction="none")
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 4)).double()
    rng = np.random.default_rng(0)
    x, y = torch.as_tensor(rng.standard_normal((8, 6))), torch.as_tensor(rng.integers(0, 4, 8))
    oracle = TorchOracle(model, ce, (x, y))
    theta = oracle.initial_params()
    cge = zo.CGE(mu=1e-6, scheme="central")
    zo.estimate_gradient(oracle, theta, cge)
    model[2].__class__ = MaskedLinear
    est = zo.estimate_gradient(oracle, theta, cge).grad
    oracle.load(theta)
    want = torch.autograd.grad(ce(model(x), y).mean(), oracle._core.params)
    want = torch.cat([g.reshape(-1) for g in want]).numpy()
    assert np.linalg.norm(est - want) / np.linalg.norm(want) < 1e-6
