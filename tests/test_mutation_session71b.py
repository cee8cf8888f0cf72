"""Tests that kill the mutants of session 71's later changes that its own tests let live (h378): what a
run saves when it stops between steps, and the rest listed in the report."""

from __future__ import annotations

import errno
import itertools
import re
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import zoracle as zo
import zoracle._run_save as run_save


def _quad(x):
    return float(((np.asarray(x, dtype=np.float64) - 1.0) ** 2).sum())


class _Boom(Exception):
    pass


class _Shifted:
    """A data oracle: a batch is a number, the quadratic's centre."""

    def bind(self, batch):
        return lambda x: float(((np.asarray(x, dtype=np.float64) - batch) ** 2).sum())


def test_an_error_in_an_epoch_callback_saves_a_checkpoint_a_resume_takes(tmp_path):
    """A callback raising at epoch 0's end, after the epoch's record joined the history: a save then
    wrote a checkpoint of epoch 0 holding epoch 0's record, which resume=True refused ("header field
    'epoch' is 0, expected the number of epoch records (1)"). The finished epoch is saved once, as the
    next epoch's start (h377), and a resume ends as the uninterrupted run does."""
    path = tmp_path / "run.npz"
    kw = dict(epochs=3, steps_per_epoch=3, optimizer=zo.sgd(0.1), checkpoint=path, checkpoint_every=2,
              progress=False, rng=0)

    def cb(event, record, params):
        if event == "epoch" and record["epoch"] == 0:
            raise _Boom("at epoch 0's end")

    with pytest.raises(_Boom):
        zo.train(_quad, np.zeros(3), callbacks=[cb], **kw)
    assert zo.load_checkpoint(path)[1]["step"] == 3
    resumed = zo.train(_quad, np.zeros(3), resume=True, **kw)
    whole = zo.train(_quad, np.zeros(3), **{**kw, "checkpoint": tmp_path / "whole.npz"})
    assert [e["epoch"] for e in resumed.history.epochs] == [0, 1, 2]
    assert resumed.params.tobytes() == whole.params.tobytes()


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_params_made_non_finite_by_an_update_are_not_saved_as_the_steps_before(tmp_path):
    """The update of step 5 overflows float32 ("params became non-finite"): the error came after the
    update wrote the params, before the step was recorded. Saved then, the checkpoint held inf params
    under the 5 steps before, and the log said resume=True continues there."""
    path = tmp_path / "run.npz"
    quartic = lambda x: float(((np.asarray(x, dtype=np.float64) - 1.0) ** 4).sum())  # noqa: E731
    with pytest.raises(zo.ArgumentError, match="params became non-finite"):
        zo.train(quartic, np.full(4, 2.0, dtype=np.float32), epochs=3, steps_per_epoch=4, estimator=zo.CGE(mu=1e-2),
                 optimizer=zo.sgd(lambda t: 0.01 if t < 5 else 1e300), checkpoint=path, checkpoint_every=100,
                 progress=False, rng=0)
    assert not path.exists() or np.isfinite(zo.load_checkpoint(path)[0]["params"]).all()


def test_a_save_that_failed_is_not_tried_again_on_the_way_out(tmp_path, monkeypatch):
    """A due save at step 4 fails (a full disk): the error says the checkpoint still holds step 2. A
    second try on the way out (as for an error between steps) wrote step 4 once the disk had room, and
    the error's word was then wrong; the file is as the error says."""
    path = tmp_path / "run.npz"
    real, calls = run_save.save_checkpoint, []

    def flaky(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(run_save, "save_checkpoint", flaky)
    with pytest.raises(zo.CheckpointError, match="still holds step 2"):
        zo.train(_quad, np.zeros(3), epochs=3, steps_per_epoch=3, optimizer=zo.sgd(0.1), checkpoint=path,
                 checkpoint_every=2, progress=False, rng=0)
    assert len(calls) == 2
    assert zo.load_checkpoint(path)[1]["step"] == 2


def test_an_error_from_the_next_epochs_batches_keeps_the_epoch_before(tmp_path):
    """`batches(1)` fails (a data source gone) after epoch 0 ended: with checkpoint_every=100 nothing was
    due, and epoch 0's 3 steps are saved first, as for an error inside a step."""
    path = tmp_path / "run.npz"

    def batches(epoch):
        if epoch == 1:
            raise _Boom("data source gone")
        return [1.0, 2.0, 3.0]

    with pytest.raises(_Boom):
        zo.train(_Shifted(), np.zeros(3), batches=batches, epochs=3, optimizer=zo.sgd(0.1),
                 checkpoint=path, checkpoint_every=100, progress=False, rng=0)
    assert zo.load_checkpoint(path)[1]["step"] == 3


@pytest.mark.skipif(sys.platform == "win32", reason="process workers' socket pair: POSIX")
def test_the_socket_pair_of_a_driver_with_all_three_streams_closed_is_above_them(tmp_path):
    """``python run.py <&- >&- 2>&-`` (a daemon closes stdin too): the pair took descriptors 0 and 1, and
    moved to the lowest free one from 2 up, one end landed on 2, the worker's stderr."""
    out = tmp_path / "fds.txt"
    # (the low descriptors the pair took are closed by it, not left to the garbage collector: "unclosed socket")
    code = ("import gc, warnings\n"
            "warnings.simplefilter('always', ResourceWarning)\n"
            "left = []\n"
            "warnings.showwarning = lambda message, *rest, **kw: left.append(str(message))\n"
            "from zoracle._fds import socket_pair\n"
            "a, b = socket_pair()\n"
            "gc.collect()\n"
            f"open({str(out)!r}, 'w').write(f'{{a.fileno()}} {{b.fileno()}} {{left}}')\n")
    subprocess.run(["sh", "-c", 'exec "$0" "$@" <&- >&- 2>&-', sys.executable, "-c", code], timeout=120, check=True)
    a, b, left = out.read_text().split(" ", 2)
    assert int(a) > 2 and int(b) > 2 and left == "[]", out.read_text()


class _SplitOnly:
    """An oracle whose only fast path is ``prefix`` / ``suffix`` over its ``blocks`` (no ``batch``, no
    ``coordinate_losses``): train checks that path once too."""

    blocks = [slice(0, 4), slice(4, 8)]

    def __call__(self, p):
        return float(np.sum((np.asarray(p) - 1.0) ** 2))

    def prefix(self, params, block):
        return np.asarray(params)

    def suffix(self, state, params, block):
        return self(params)


def test_short_budget_reserves_the_check_of_a_split_oracle():
    """The fast-path check's query is reserved for an oracle with ``prefix`` / ``suffix`` as for one with
    ``batch`` or ``coordinate_losses``: at a budget of whole steps, one step fewer than for the same oracle
    that checks itself."""
    p0 = np.full(8, 0.5)
    kw = dict(coordinates=2, grasp_directions=4, blocks=_SplitOnly.blocks)
    checked = _SplitOnly()
    checked.fast_paths_checked = True
    assert zo.recipes.short_budget(checked, p0, 40, **kw)["max_queries"] == 40
    assert zo.recipes.short_budget(_SplitOnly(), p0, 40, **kw)["max_queries"] < 40


def test_short_budget_refuses_a_budget_with_no_room_for_the_check_naming_it(tmp_path):
    """The smallest budget of two steps, for an oracle with a fast path train checks, counts that check's
    query: one less is refused naming the check, not passed on to a run of one step."""
    p0 = np.full(8, 0.5)
    kw = dict(coordinates=2, grasp_directions=4, blocks=[slice(0, 4), slice(4, 8)])
    checked = _SplitOnly()
    checked.fast_paths_checked = True
    with pytest.raises(zo.ArgumentError, match=r"pass budget >= \d+ for two steps") as err:
        zo.recipes.short_budget(checked, p0, 1, **kw)
    least = int(re.search(r"budget >= (\d+)", str(err.value)).group(1))
    zo.recipes.short_budget(checked, p0, least, **kw)
    # (prefix / suffix: one query a block, two blocks here)
    said = rf"\(and train checks the fast path: up to 2 queries\); pass budget >= {least + 2} for two steps"
    with pytest.raises(zo.ArgumentError, match=said):
        zo.recipes.short_budget(_SplitOnly(), p0, least + 1, **kw)
    assert zo.recipes.short_budget(_SplitOnly(), p0, least + 2, **kw)["max_queries"] == least


def test_loss_spread_reads_losses_below_the_base_one():
    """How far the losses differenced lie from the base loss, on either side: a central scheme's at a
    maximum lie below it."""
    from zoracle import _grid

    assert _grid.loss_spread(np.array([[-5.0, 2.0], [0.0, 1.5]]), 1.0) == 6.0
    assert _grid.loss_spread(np.array([[3.0, 2.0]]), 1.0) == 2.0


def test_a_loss_grid_is_not_read_from_the_differences_alone_where_the_losses_lie_off_it():
    """Central losses 3.3 and 2.3 about a base loss of 1.0: their difference, 1.0, is whole, the losses
    are not; no count's grid."""
    from zoracle import _grid

    assert _grid.loss_grid(1.0, [1.0], far=2.3) is None
    assert _grid.loss_grid(1.0, [1.0], far=2.0)[0] == 1.0  # (a count's: 1, 3, 2)


def test_a_base_loss_within_float64s_rounding_of_0_reads_as_no_decimal_grid():
    """A base loss of 5e-324 is written in no decimals (rounded to none): whole differences about it are
    no loss rounded to 0 decimals."""
    from zoracle import _grid

    assert _grid.loss_grid(5e-324, [1.0, -2.0]) is None
    assert _grid.loss_grid(5e-324, [1.0], far=2.0) is None


class _Linear:
    """A data oracle on (X, y) batches."""

    def bind(self, batch):
        X, y = (np.asarray(v, dtype=np.float64) for v in batch)
        return lambda w: float(np.mean((X @ w - y) ** 2))


def _data(n=20):
    X = np.random.default_rng(0).standard_normal((n, 3))
    return X, X @ np.array([1.0, -2.0, 0.5])


_BATCHES_RUN = dict(estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.05), rng=0, progress=False)


def test_a_loader_that_does_not_shuffle_returned_for_every_epoch_is_not_warned_about(tmp_path):
    """`lambda epoch: loader` with shuffle=False: the same batches in the same order every epoch, which a
    resume replays; only a shuffling loader's order is not."""
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    X, y = _data()
    loader = DataLoader(TensorDataset(torch.tensor(X), torch.tensor(y)), batch_size=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zo.train(_Linear(), np.zeros(3), batches=lambda epoch: loader, epochs=2, checkpoint=tmp_path / "ck.npz",
                 **_BATCHES_RUN)


def test_one_endless_iterator_in_a_run_that_neither_checkpoints_nor_resumes_is_not_warned_about():
    """The stream running on from epoch to epoch is what such a run trains on; only a resume would
    start it over."""
    X, y = _data()
    stream = itertools.cycle([(X[i:i + 4], y[i:i + 4]) for i in range(0, 20, 4)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = zo.train(_Linear(), np.zeros(3), batches=lambda epoch: stream, steps_per_epoch=3, epochs=3,
                       **_BATCHES_RUN)
    assert res.steps == 9


def test_an_iterator_returned_again_that_ran_short_is_warned_about_once(tmp_path):
    """An iterator of 5 batches returned for every epoch at steps_per_epoch=3: epoch 1 gets the 2 left,
    which the warning about a short epoch says (naming the iterator read once); not a second warning
    that it "runs on"."""
    X, y = _data()
    it = iter([(X[i:i + 4], y[i:i + 4]) for i in range(0, 20, 4)])
    with pytest.warns(UserWarning) as got:
        zo.train(_Linear(), np.zeros(3), batches=lambda epoch: it, steps_per_epoch=3, epochs=2,
                 checkpoint=tmp_path / "ck.npz", **_BATCHES_RUN)
    said = [str(w.message) for w in got]
    assert len(said) == 1 and "gave 2 batches, fewer than `steps_per_epoch`=3" in said[0], said


def test_a_one_dimensional_array_as_batches_is_refused_naming_list_of_it():
    """np.arange(4) as batches (seeds, one a step): refused naming list(arr), as a stacked array of
    batches is, not as "not a list of batches"."""
    with pytest.raises(zo.ArgumentError, match=r"an array of shape \(4,\): pass list\(arr\) for one batch per entry"):
        zo.train(_Linear(), np.zeros(3), batches=np.arange(4), epochs=2, **_BATCHES_RUN)


def test_parameter_names_follow_a_parametrization_registered_after_the_build_asked_first():
    """``parameter_names`` read before ``param_info`` (which renamed them for both): the old name
    ``0.weight``, no Parameter of the model now."""
    torch = pytest.importorskip("torch")
    from torch import nn
    from torch.nn.utils import parametrize
    from zoracle.adapters.torch import TorchOracle

    class Symmetric(nn.Module):
        def forward(self, w):
            return w.triu() + w.triu(1).T

    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    oracle = TorchOracle(net, nn.CrossEntropyLoss(reduction="none"), (x, torch.zeros(6, dtype=torch.long)))
    held = net[0].weight
    parametrize.register_parametrization(net[0], "weight", Symmetric())
    names = oracle.parameter_names
    assert names[0] == "0.parametrizations.weight.original" and net.get_parameter(names[0]) is held


def test_predict_on_a_model_made_half_after_the_build_is_refused_naming_the_conversion():
    """predict writes the float32 flat vector into the converted model and feeds it a float32 x: refused
    as every query is, not torch's "mat1 and mat2 must have the same dtype"."""
    torch = pytest.importorskip("torch")
    from torch import nn
    from zoracle.adapters.torch import TorchOracle

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    oracle = TorchOracle(net, nn.CrossEntropyLoss(reduction="none"), (x, torch.zeros(8, dtype=torch.long)))
    theta = oracle.initial_params()
    net.half()
    with pytest.raises(zo.ArgumentError, match=r"built on torch.float32 ones \(model.half\(\)"):
        oracle.predict(theta, x.numpy())


def test_pool_threads_keep_their_count_between_runs_and_set_nothing_the_second_time(monkeypatch):
    """The process-wide count is put back from a thread of its own: the pool thread that finished last
    keeps the caller's count, so a second run's shards find it set and set nothing (put back from the
    pool thread, it was set again, and the process-wide count read again, at every run)."""
    torch = pytest.importorskip("torch")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from zoracle.executors import JoblibExecutor

    # the first run must reach both pool threads (on a loaded machine one thread could take every shard, and
    # the other then set its count in a later run): each thread's first call waits for the other's
    both, seen, warmed = threading.Barrier(2, timeout=60), threading.local(), set()

    def loss(theta):
        if warming and not getattr(seen, "ran", False):
            seen.ran = True
            warmed.add(threading.get_ident())
            both.wait()
        t = torch.tensor(theta)
        return float((t * t).sum())

    before = torch.get_num_threads()
    real, calls = torch.set_num_threads, []
    torch.set_num_threads(2)
    try:
        with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
            with JoblibExecutor(2, backend="threading") as ex:
                x = np.linspace(-1.0, 1.0, 6)
                warming = True
                zo.estimate_gradient(loss, x, zo.CGE(scheme="central"), executor=ex)
                warming = False
                assert len(warmed) == 2 and threading.get_ident() not in warmed
                monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n))[1])
                for _ in range(3):
                    zo.estimate_gradient(loss, x, zo.CGE(scheme="central"), executor=ex)
        assert calls == []
    finally:
        monkeypatch.undo()
        torch.set_num_threads(before)
