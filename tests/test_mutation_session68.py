"""Behaviour the tests of session 68's new code left open, found by mutating that code by hand
(a flipped comparison, a dropped condition, a skipped restore) and seeing which change no test
noticed: the time cadence's boundary and units, the run diagnostics' edge cases, and the failing
query's params. Each test here fails with its mutation and passes without."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import zoracle as zo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh(code: str, tmp_path, *args: str) -> dict:
    """The JSON object that ``code`` prints last, run by a fresh interpreter on this checkout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("JAX_ENABLE_X64", None)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                       timeout=300, cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- checkpoint_every as a time (zoracle/_cadence.py) ------------------------------------------

def _saves_seen(tmp_path, clock, every, steps=12):
    """What the checkpoint held at each step's callback (before that step's save): d=3 with forward
    CGE is 4 queries, 4 fake seconds, a step; epochs of 4 steps."""
    path = tmp_path / "run.npz"
    seen = []

    def loss(x):
        clock.t += 1.0
        return float(((np.asarray(x) - 1.0) ** 2).sum())

    def cb(event, rec, params):
        if event == "step":
            seen.append(len(zo.History.from_checkpoint(path).steps) if os.path.exists(path) else 0)

    zo.train(loss, np.zeros(3), epochs=steps // 4, steps_per_epoch=4, checkpoint=path, checkpoint_every=every,
             callbacks=[cb], progress=False, rng=0)
    return seen


def test_a_time_cadence_saves_at_the_step_end_where_exactly_its_time_has_passed(tmp_path, clock):
    # "8s" at 4 s a step: 8 s have passed at the end of step 2, so it saves there (not one step later)
    assert _saves_seen(tmp_path, clock, "8s") == [0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10]


@pytest.mark.parametrize("every", ["0.003h", "0.003 hours"])
def test_hours_are_hours(tmp_path, clock, every):
    # 0.003 h = 10.8 s: saves at steps 3, 6, 9 (12 s each), as "10s" does; not every step
    assert _saves_seen(tmp_path, clock, every) == [0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9]


def test_an_upper_case_m_is_refused_as_ambiguous_too(tmp_path):
    with pytest.raises(zo.ArgumentError, match=r"`checkpoint_every` is '10M': \"m\" is no unit here .*"
                                               r"pass checkpoint_every=\"10min\""):
        zo.train(lambda p: float(p @ p), np.zeros(3), checkpoint=tmp_path / "run.npz", checkpoint_every="10M",
                 progress=False, rng=0)


@pytest.mark.parametrize("value", [0, -1, True])
def test_a_count_below_one_is_refused_before_the_first_query(tmp_path, value):
    # (0 was taken, and the run failed at its first step's end with ZeroDivisionError, its queries spent)
    calls = []

    def loss(p):
        calls.append(1)
        return float(p @ p)

    with pytest.raises(zo.ArgumentError, match=r"`checkpoint_every` must be an integer >= 1"):
        zo.train(loss, np.zeros(3), epochs=2, checkpoint=tmp_path / "c.npz", checkpoint_every=value, progress=False,
                 rng=0)
    assert calls == []


# ---- runs that do not learn (zoracle/_diagnose.py) ---------------------------------------------

class _Layout:
    """A plain oracle with a layout; ``loss`` says which entries it reads."""

    def __init__(self, blocks, loss):
        self.blocks, self.loss = blocks, loss

    def __call__(self, p):
        return self.loss(p)


def test_a_layout_longer_than_the_params_only_turns_the_block_check_off():
    # an oracle whose `blocks` describe more entries than the params given (a layout of the whole
    # model, the run tunes a prefix): the run goes on, no IndexError from the per-block check
    oracle = _Layout([slice(0, 3), slice(3, 8)], lambda p: float(np.sum((p - 1.0) ** 2)))
    r = zo.train(oracle, np.zeros(5), epochs=4, optimizer=zo.sgd(0.1), rng=0, progress=False)
    assert np.all(np.abs(r.params - 1.0) < 1.0)


def test_a_block_whose_estimate_was_nonzero_at_one_step_is_not_called_dead():
    # the second block moves at the first step only, the first from the second step on: each moved
    # at some step, so neither is "exactly 0 at each of the first steps"
    calls = []

    def loss(p):
        calls.append(1)
        if len(calls) <= 6:  # the first step's 6 queries (forward CGE, d=5): only the second block counts
            return float(np.sum(p[3:]))
        return float(np.sum((p[:3] - 1.0) ** 2))

    zo.train(_Layout([slice(0, 3), slice(3, 5)], loss), np.zeros(5), epochs=4, optimizer=zo.sgd(0.1), rng=0,
             progress=False)


def test_a_flat_loss_gets_the_flat_epoch_warning_only():
    # every estimate 0 everywhere: the whole-epoch warning says it; the per-block one would name
    # every block for the same cause
    oracle = _Layout([slice(0, 3), slice(3, 5)], lambda p: 1.0)
    with pytest.warns(UserWarning) as rec:
        zo.train(oracle, np.zeros(5), epochs=4, optimizer=zo.sgd(0.1), rng=0, progress=False)
    texts = [str(w.message) for w in rec]
    assert len(texts) == 1 and "every gradient estimate of epoch 0" in texts[0], texts


def test_many_dead_blocks_are_named_six_at_most():
    oracle = _Layout([slice(i, i + 1) for i in range(9)], lambda p: float((p[0] - 1.0) ** 2))
    with pytest.warns(UserWarning, match=r"the gradient estimates of params\[1:2\], params\[2:3\], params\[3:4\], "
                                         r"params\[4:5\], params\[5:6\], params\[6:7\] and 2 more were 0 to within the "
                                         r"loss's rounding"):
        zo.train(oracle, np.zeros(9), epochs=3, optimizer=zo.sgd(0.1), rng=0, progress=False)


def test_a_sparse_run_of_an_oracle_with_a_layout_names_no_block():
    # sparse CGE leaves the estimates of the coordinates outside its mask at 0 by design: a block
    # outside this epoch's mask is not dead
    oracle = _Layout([slice(i, i + 1) for i in range(6)], lambda p: float(np.sum((p - 1.0) ** 2)))
    zo.train(oracle, np.zeros(6), epochs=2, steps_per_epoch=4, sparsity=0.5, ratios="uniform", blocks=[slice(0, 6)],
             optimizer=zo.sgd(0.1), rng=0, progress=False)


def _in_place_sgd():
    """An own optimizer that updates the params it is given in place and returns them."""
    from typing import NamedTuple

    class State(NamedTuple):
        count: int

    def update(grad, state, params, lr=None):
        params -= lr * grad
        return params, State(state.count + 1)

    return zo.Optimizer(lambda params: State(0), update, 0.1, "in_place_sgd", "in_place_sgd(0.1)")


def test_an_optimizer_that_updates_in_place_is_not_said_to_leave_the_params_still():
    r = zo.train(lambda p: float(np.sum((p - 1.0) ** 2)), np.zeros(3), epochs=3, optimizer=_in_place_sgd(), rng=0,
                 progress=False)
    assert np.all(np.abs(r.params - 1.0) < 1.0)


def test_params_that_stay_still_name_the_learning_rate_of_the_last_step_that_pushed_them():
    # (a falling schedule: a rising one is a warm-up, watched on until it stops rising)
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = (x @ rng.standard_normal((8, 4))).argmax(1)
    oracle = TorchOracle(model, torch.nn.CrossEntropyLoss(reduction="none"))
    with pytest.warns(UserWarning, match=r"the params did not change over epoch 0, .*\(lr was 2\.5e-15\)"):
        zo.train(oracle, oracle.initial_params(), batches=zo.Minibatches((x, y), batch_size=16, seed=0), epochs=1,
                 estimator=zo.CGE(mu=5e-3), optimizer=zo.sgd(lambda step: 1e-14 / (step + 1)), rng=0,
                 progress=False)


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    return x, (x @ rng.standard_normal((8, 4))).argmax(1)


@pytest.mark.parametrize("past", ["inf", "nan", "raise"])
def test_a_diverged_run_whose_loss_fails_where_it_ended_says_it_diverged_and_no_more(past):
    # lr 10 on a least-squares loss: params grow to ~4e13 at step 10, where mu = 1e-3 is no step. The
    # loss there (probed twice for the noise note) overflows, is undefined, or raises: no claim that
    # the loss "is not deterministic" from two infs or NaNs, and the probe's error is not the one raised.
    # (Its epoch 9, at a loss of 1.8e25, moves over mu by a few units of float64's last place: that estimate
    # is rounding, and the every-estimate-0 warning says so first.)
    x, y = _data()

    def loss(p):
        if np.max(np.abs(p)) > 1e13:
            if past == "raise":
                raise FloatingPointError("the solver failed")
            return float(past)
        return float(np.mean((x @ p - y) ** 2))

    with pytest.raises(zo.ArgumentError, match=r"training diverged at step \d+ .*lower the learning rate") as err, \
            pytest.warns(UserWarning, match=r"epoch 9 \(1 step\) was 0 to within the loss's rounding"):
        zo.train(loss, np.zeros(8), epochs=200, estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(10.0), rng=0,
                 progress=False)
    assert "not deterministic" not in str(err.value)


# ---- the failing query's params (OracleError.params) -------------------------------------------

def test_twenty_params_are_shown_without_a_count():
    with pytest.raises(zo.OracleError) as info:
        zo.estimate_gradient(lambda p: float("nan"), np.arange(20.0))
    assert "19.0]" in str(info.value) and "the first 20" not in str(info.value)


def test_a_batched_query_that_fails_has_no_params():
    class Batch:
        def __call__(self, p):
            return float(p @ p)

        def batch(self, points):
            raise ValueError("the batch failed")

    with pytest.raises(zo.OracleError, match="the batch failed") as info:
        zo.estimate_gradient(Batch(), np.ones(3))
    assert info.value.params is None


def test_the_params_are_shown_once_where_the_oracles_message_repeats_the_query():
    def solver(p):
        if p[0] < 0:
            raise ValueError("diverged at coordinate 0 (step -0.5)")
        return float(p @ p)

    with pytest.raises(zo.OracleError) as info:
        zo.estimate_gradient(solver, np.array([0.25, 1.0]), zo.CGE(mu=0.5, scheme="central"))
    assert str(info.value).count("params [") == 1, str(info.value)


# ---- a run stopped inside a step (zoracle/_train.py: save_mid_step, step_began) ---------------

def _fails_in_step_3(then):
    calls = []

    def loss(p):
        calls.append(1)
        if len(calls) == 3 * 4 + 2:  # a query of step 3 (forward CGE on 3 params: 4 queries a step)
            then()
        return float(np.sum((p - 1.0) ** 2))

    return loss


def test_params_made_non_finite_by_an_update_are_not_saved_as_the_steps_before(tmp_path):
    # the error comes after the update, outside the step's queries: the params are the step's own
    # (non-finite), not those of the steps before it, so no mid-step save writes them
    ckpt = tmp_path / "c.npz"
    with np.errstate(over="ignore", invalid="ignore"), \
            pytest.raises(zo.ArgumentError, match=r"training diverged at step 2 .*params became non-finite"):
        zo.train(lambda p: float(p @ p), np.full(3, 10.0), epochs=1, steps_per_epoch=6, checkpoint=ckpt,
                 checkpoint_every=100, optimizer=zo.sgd(lambda step: 0.1 if step < 2 else 1e308), rng=0,
                 progress=False)
    assert not ckpt.exists()


def test_a_mid_step_save_that_fails_leaves_the_runs_own_error_and_no_warning(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()

    def licence_server_down():
        shutil.rmtree(folder)
        folder.write_text("a file now: no checkpoint can be written in it")
        raise RuntimeError("licence server down")

    with warnings.catch_warnings(record=True) as seen, pytest.raises(zo.OracleError, match="licence server down"):
        warnings.simplefilter("always")
        zo.train(_fails_in_step_3(licence_server_down), np.zeros(3), epochs=1, steps_per_epoch=6,
                 checkpoint=folder / "c.npz", checkpoint_every=100, optimizer=zo.sgd(0.1), rng=0, progress=False)
    assert [str(w.message) for w in seen] == []  # (not "the result is returned": it is not)


def test_an_interrupt_inside_a_step_of_a_run_without_a_checkpoint_logs_no_save(caplog):
    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), caplog.at_level(logging.WARNING, logger="zoracle"):
        zo.train(_fails_in_step_3(interrupt), np.zeros(3), epochs=1, steps_per_epoch=6, optimizer=zo.sgd(0.1), rng=0,
                 progress=False)
    assert "stopped inside step" not in caplog.text, caplog.text


# ---- the progress bar's clock (zoracle/_train.py: _steady_bar) ---------------------------------

def test_the_bar_follows_no_wall_clock(monkeypatch):
    # tqdm's own import of time.time and the time module's both set an hour back after the start:
    # the bar's elapsed time and ETA stay >= 0
    import tqdm.std

    start = time.time()
    for owner in (tqdm.std, time):
        wall = iter([start])
        monkeypatch.setattr(owner, "time", lambda wall=wall: next(wall, start - 3600))
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    zo.train(lambda x: float(x @ x), np.ones(2), epochs=3, optimizer=zo.sgd(0.1), rng=0, progress=True)
    last = stream.getvalue().splitlines()[-1]
    assert "3/3" in last and "[" in last, last
    assert "-" not in last[last.index("[") + 1:last.index("]")], last


# ---- Dask's local cluster and Ray's local session give back what they change ------------------

class _HangsAtHalf:
    """A loss whose query at p[0] == 0.5 hangs: its shard times out and its worker is restarted."""

    def __call__(self, p):
        if p[0] == 0.5:
            time.sleep(120)
        return float(p @ p)


class _DiesOnce:
    """A loss whose first call ends its worker process: the nanny starts another."""

    def __init__(self, flag):
        self.flag = flag

    def __call__(self, p):
        if not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os._exit(1)
        return float(p @ p)


@pytest.fixture
def dask_env(monkeypatch):
    """Values of the program's own for some variables the nannies set, none for another."""
    pytest.importorskip("distributed")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # (workers cannot import test modules)
    for k, v in {"OMP_NUM_THREADS": "3", "MALLOC_TRIM_THRESHOLD_": "123"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)


def test_a_local_dask_cluster_gives_back_the_programs_own_values(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    from zoracle.executors import DaskExecutor

    for k, v in {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3",
                 "MALLOC_TRIM_THRESHOLD_": "123", "PYTHONHASHSEED": "7"}.items():
        monkeypatch.setenv(k, v)
    before = dict(os.environ)
    with DaskExecutor("local:1", local_directory=str(tmp_path)) as ex:
        zo.estimate_gradient(np.linalg.norm, np.ones(3), zo.CGE(), executor=ex)
        started = dict(os.environ)
    assert started == before
    assert dict(os.environ) == before


@pytest.mark.slow  # (a cluster start: run in CI's slow suite, keeping the default run under 10 min loaded)
def test_a_restarted_dask_worker_leaves_the_environment_as_found(tmp_path, dask_env):
    from zoracle.executors import DaskExecutor, ShardTimeout

    before = dict(os.environ)
    with DaskExecutor("local:1", local_directory=str(tmp_path), timeout=2.0) as ex:
        with pytest.raises(ShardTimeout):
            zo.estimate_gradient(_HangsAtHalf(), np.array([0.0, 1.0]), zo.CGE(mu=0.5), executor=ex)
        restarted = dict(os.environ)
        zo.estimate_gradient(np.linalg.norm, np.ones(3), zo.CGE(), executor=ex)  # the new worker serves
    assert restarted == before
    assert dict(os.environ) == before


@pytest.mark.slow
def test_a_dask_worker_its_nanny_restarts_leaves_the_environment_as_found_after_close(tmp_path, dask_env):
    from zoracle.executors import DaskExecutor

    before = dict(os.environ)
    with DaskExecutor("local:1", local_directory=str(tmp_path)) as ex:
        try:
            zo.estimate_gradient(_DiesOnce(str(tmp_path / "flag")), np.ones(2), zo.CGE(), executor=ex)
        except zo.ZoracleError:  # (the shard's worker died: retried, or reported)
            pass
        assert (tmp_path / "flag").exists()
    assert dict(os.environ) == before


RAY = """
    import json, os, signal, sys, tempfile
    import numpy as np
    import zoracle as zo
    from zoracle.executors import RayExecutor

    def mine(signum, frame):
        pass

    def newer(signum, frame):
        pass

    def session():
        return RayExecutor("local:1", allow_network=True, _temp_dir=tempfile.mkdtemp(prefix="s", dir=sys.argv[1]))

    signal.signal(signal.SIGTERM, mine)
    os.environ["PYTHONBREAKPOINT"] = "pdb.set_trace"  # the program's own, before Ray
    with session() as ex:
        zo.estimate_gradient(np.linalg.norm, np.ones(3), zo.CGE(), executor=ex)
    first = {"sigterm": signal.getsignal(signal.SIGTERM) is mine, "breakpoint": os.environ.get("PYTHONBREAKPOINT")}
    with session() as ex:  # the program sets a handler and a hook of its own while the session runs
        zo.estimate_gradient(np.linalg.norm, np.ones(3), zo.CGE(), executor=ex)
        signal.signal(signal.SIGTERM, newer)
        os.environ["PYTHONBREAKPOINT"] = "mine.hook"
    second = {"sigterm": signal.getsignal(signal.SIGTERM) is newer, "breakpoint": os.environ.get("PYTHONBREAKPOINT")}
    print(json.dumps({"first": first, "second": second}))
"""


def _need_ray():
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray not installed (pip install -e '.[ray]')")
    import conftest

    return conftest.RAY_DIR


@pytest.mark.slow  # (a cluster start: run in CI's slow suite, keeping the default run under 10 min loaded)
def test_a_local_ray_session_gives_back_the_programs_hook_and_keeps_what_it_set_meanwhile(tmp_path):
    got = _fresh(RAY, tmp_path, _need_ray())
    assert got["first"] == {"sigterm": True, "breakpoint": "pdb.set_trace"}
    assert got["second"] == {"sigterm": True, "breakpoint": "mine.hook"}


RAY_X64 = """
    import json, os, sys, tempfile, types
    import numpy as np
    import zoracle as zo
    from zoracle.executors import RayExecutor

    jax = types.ModuleType("jax")  # a stand-in: its x64 switch is all zoracle reads of the driver's JAX
    jax.config = types.SimpleNamespace(jax_enable_x64=True)
    sys.modules["jax"] = jax

    def loss(x):
        return float(x @ x) + (100.0 if os.environ.get("JAX_ENABLE_X64") == "1" else 0.0)

    with RayExecutor("local:1", allow_network=True, _temp_dir=tempfile.mkdtemp(prefix="s", dir=sys.argv[1])) as ex:
        est = zo.estimate_gradient(loss, np.arange(3.0), zo.CGE(), executor=ex)
    print(json.dumps({"loss": est.loss}))
"""


@pytest.mark.slow  # (a cluster start: run in CI's slow suite, keeping the default run under 10 min loaded)
def test_a_local_ray_sessions_workers_get_the_drivers_x64_switch(tmp_path):
    assert _fresh(RAY_X64, tmp_path, _need_ray())["loss"] == 105.0


SPAWN_AFTER = """
    import json, multiprocessing
    import numpy as np
    import zoracle as zo
    from tqdm.contrib.concurrent import process_map

    zo.train(lambda p: float(p @ p), np.ones(2), epochs=1, optimizer=zo.sgd(0.1), rng=0, progress=True)
    multiprocessing.set_start_method("spawn")  # the program's choice, after a run with a bar
    print(json.dumps({"map": process_map(abs, [-1, -2], max_workers=1, disable=True)}))
"""


def test_a_program_that_chooses_spawn_after_a_run_with_a_bar_can_use_tqdms_process_map(tmp_path):
    # the lock made for the run's bar was one of the fork context, kept as tqdm's: process_map sent
    # it to the spawned workers, and Python refused ("A SemLock created in a fork context is being
    # shared with a process in a spawn context"); tqdm now makes its own, in the program's context
    assert _fresh(SPAWN_AFTER, tmp_path) == {"map": [1, 2]}
