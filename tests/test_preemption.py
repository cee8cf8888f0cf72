"""Preemption: a job stopped by SIGTERM (SLURM, Kubernetes) or Ctrl-C inside a slow black box keeps
every step it finished, and the progress bar's clock does not follow the wall clock's steps."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest

import zoracle as zo

# a black box over 4 batches an epoch (4 queries a step with CGE on 3 parameters) that blocks, once
# the file BLOCK exists, inside its next call, as a query of minutes would: the signal comes there
MODULE = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import zoracle as zo

    HERE = os.path.dirname(os.path.abspath(__file__))
    BLOCK, BLOCKED = os.path.join(HERE, "block"), os.path.join(HERE, "blocked")

    class Slow:
        def bind(self, batch):
            return lambda w: Slow.loss(w, batch)

        @staticmethod
        def loss(w, batch):
            if os.path.exists(BLOCK):
                with open(BLOCKED, "a") as f:
                    f.write(f"{os.getpid()}\\n")
                for _ in range(600):  # (ended by the signal, or the test's timeout)
                    time.sleep(0.2)
            return float(np.sum((w - batch) ** 2))

    def run(**kw):
        return zo.train(Slow(), np.zeros(3), batches=[0.0, 1.0, 2.0, 3.0], epochs=4, estimator=zo.CGE(),
                        optimizer=zo.sgd(0.1, momentum=0.9), rng=0, progress=False, **kw)

    def block_after_step_6(event, record, params):  # 6 steps done: the 7th blocks (epoch 1, batch 2)
        if event == "step" and record["step"] == 5:
            open(BLOCK, "w").close()

    if __name__ == "__main__":
        import signal
        from zoracle.executors import JoblibExecutor

        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # as docs/training.md says
        zo.executors.EXIT_WAIT = 0.5  # (the threads left in the blocked query, after the save: 5 s at exit)
        make = {"processes": lambda: JoblibExecutor(2), "threads": lambda: JoblibExecutor(2, backend="threading")}
        executor = make[sys.argv[2]]() if sys.argv[2] in make else None
        try:
            run(checkpoint=sys.argv[1], callbacks=[block_after_step_6], executor=executor)
        finally:
            if executor is not None:
                executor.close()
    """
)


@pytest.fixture
def job(tmp_path, monkeypatch):
    (tmp_path / "prem.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "prem", raising=False)  # (another test's folder)
    import prem

    return prem


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _terminated(tmp_path, how):
    """Start the job, wait until its 7th step is inside a blocked query, send it SIGTERM; the
    job's exit, its stderr and the processes it had started."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, str(tmp_path / "prem.py"), str(tmp_path / "c.npz"), how], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300  # (a bound on a loaded machine, not a timing)
        while not (tmp_path / "blocked").exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None and (tmp_path / "blocked").exists(), p.communicate()[1].decode()[-2000:]
        kids = [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
        before = os.stat(tmp_path / "c.npz").st_ino  # the epoch's save (step 4); the step-6 save replaces it
        saved = [None]  # seconds from SIGTERM to the checkpoint of the steps finished

        def watch(start):  # until the save, or the job's exit without one (looked for once more after it)
            while True:
                ended = p.poll() is not None
                try:
                    replaced = os.stat(tmp_path / "c.npz").st_ino != before
                except OSError:  # (no file: nothing replaced yet)
                    replaced = False
                if replaced:
                    saved[0] = time.monotonic() - start
                if replaced or ended:
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, args=(time.monotonic(),), daemon=True)
        p.send_signal(signal.SIGTERM)
        watcher.start()
        _, err = p.communicate(timeout=300)
        watcher.join(10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, err.decode(), kids, saved[0]


@pytest.mark.parametrize("how", ["serial", "processes"])
def test_sigterm_in_a_slow_query_keeps_every_step_finished(tmp_path, job, how):
    """A job given SIGTERM (turned into SystemExit, as docs/training.md shows) inside a query of its
    7th step lost the steps since the last save: with checkpoint_every="epoch", steps 5 and 6 (a slow
    black box's epoch: hours). Now the 6 steps finished are saved on the way out, the run resumes from
    there bit for bit, the exit status is the handler's, and no worker process is left."""
    rc, err, kids, _ = _terminated(tmp_path, how)
    assert rc == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped inside step 6 (SystemExit)" in err and "holds the 6 steps" in err, err[-2000:]
    assert (len(kids) >= 2) == (how == "processes"), kids
    deadline = time.monotonic() + 120
    while [k for k in kids if _alive(k)] and time.monotonic() < deadline:
        time.sleep(0.1)  # (workers stopped by the executor, or by their parent's death)
    assert not [k for k in kids if _alive(k)], kids
    _, meta = zo.load_checkpoint(tmp_path / "c.npz")
    assert (meta["step"], meta["epoch"], meta["pos"]) == (6, 1, 2), (meta["step"], meta["epoch"], meta["pos"])
    assert meta["nfev"] == 6 * 4  # the step in flight is not counted: it is run again
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
    (tmp_path / "block").unlink()
    resumed = job.run(checkpoint=tmp_path / "c.npz", resume=True)
    whole = job.run()
    assert resumed.params.tobytes() == whole.params.tobytes() and resumed.nfev == whole.nfev
    assert [r["loss"] for r in resumed.history.steps] == [r["loss"] for r in whole.history.steps]


@pytest.mark.parametrize("how", ["processes", "threads"])
def test_sigterm_saves_the_steps_finished_before_the_workers_grace(tmp_path, job, how):
    """SIGTERM (SystemExit) inside a slow query on process or thread workers waited ABORT_WAIT_S (10 s)
    for the blocked shards before the save of the finished steps, where Ctrl-C did not: a scheduler
    that kills a job less than 10 s after its SIGTERM lost them. The save now comes first (a bound
    for a loaded machine: it took over 10 s)."""
    rc, err, kids, saved = _terminated(tmp_path, how)
    assert rc == 128 + signal.SIGTERM, err[-2000:]
    assert saved is not None and saved < 5.0, (saved, err[-2000:])
    assert zo.load_checkpoint(tmp_path / "c.npz")[1]["step"] == 6


def _losses(fail_at, error, calls):
    def loss(w, batch):
        calls.append(1)
        if len(calls) == fail_at:
            raise error
        return float(np.sum((w - batch) ** 2))

    return loss


class Batched:
    def __init__(self, fn):
        self.fn = fn

    def bind(self, batch):
        return lambda w: self.fn(w, batch)


def _run(oracle, **kw):
    return zo.train(oracle, np.zeros(3), batches=[0.0, 1.0, 2.0, 3.0], epochs=3, estimator=zo.CGE(),
                    optimizer=zo.sgd(0.1), rng=0, progress=False, **kw)


@pytest.mark.parametrize("error, raised", [(KeyboardInterrupt(), KeyboardInterrupt),
                                           (RuntimeError("licence server down"), zo.OracleError)])
def test_an_interrupt_or_error_inside_a_query_saves_the_steps_before_it(tmp_path, caplog, error, raised):
    """Ctrl-C (or a failing query) in the 7th step lost steps 5 and 6: the checkpoint of
    checkpoint_every="epoch" held step 4. Now it holds step 6, and the resumed run is the whole one."""
    ckpt = tmp_path / "c.npz"
    with pytest.raises(raised), caplog.at_level("WARNING", logger="zoracle"):
        _run(Batched(_losses(6 * 4 + 2, error, [])), checkpoint=ckpt)
    assert f"stopped inside step 6 ({raised.__name__})" in caplog.text, caplog.text
    _, meta = zo.load_checkpoint(ckpt)
    assert (meta["step"], meta["epoch"], meta["pos"], meta["nfev"]) == (6, 1, 2, 24)
    resumed = _run(Batched(_losses(0, error, [])), checkpoint=ckpt, resume=True)
    whole = _run(Batched(_losses(0, error, [])))
    assert resumed.params.tobytes() == whole.params.tobytes() and resumed.nfev == whole.nfev


def test_an_interrupt_in_the_first_step_writes_no_checkpoint(tmp_path):
    """No step finished: nothing is saved mid-step (a checkpoint of step 0 would only fix the settings)."""
    with pytest.raises(KeyboardInterrupt):
        _run(Batched(_losses(2, KeyboardInterrupt(), [])), checkpoint=tmp_path / "c.npz")
    assert not (tmp_path / "c.npz").exists()


def test_an_interrupt_mid_step_saves_nothing_where_the_step_may_have_changed_the_oracle_state(tmp_path):
    """An oracle with a state of its own that does not say whether a step's calls change it:
    mid-step, the state may already hold the step in flight, so the last scheduled save stands."""
    calls = []

    class Stateful(Batched):
        def state_arrays(self):
            return {"calls": np.array([float(len(calls))])}

        def load_state_arrays(self, arrays):
            pass

    ckpt = tmp_path / "c.npz"
    with pytest.raises(KeyboardInterrupt):
        _run(Stateful(_losses(6 * 4 + 2, KeyboardInterrupt(), calls)), checkpoint=ckpt)
    _, meta = zo.load_checkpoint(ckpt)
    assert meta["step"] == 4


def test_an_interrupt_mid_step_of_a_batchnorm_model_in_train_mode_keeps_its_running_statistics(tmp_path,
                                                                                                monkeypatch):
    """A TorchOracle's plain call (the step's base point) updates BatchNorm's running statistics: a
    save after it, mid-step, held them one update ahead of its params, and the resumed model's
    statistics differed from the uninterrupted run's. The epoch's save stands, and they agree."""
    torch = pytest.importorskip("torch")
    from adapters.torch import TorchOracle

    def oracle():
        torch.manual_seed(0)
        # (no bias before the BatchNorm, whose mean subtraction cancels it: its float32 estimates are 0 up to
        # rounding, and which of them rounding leaves nonzero changes with the CPU's kernels and torch's thread
        # count; on a CPU where all were exactly 0, train would warn of a dead block)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.BatchNorm1d(4),
                                    torch.nn.Linear(4, 1)).train()
        return TorchOracle(model, torch.nn.functional.mse_loss)

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)) for _ in range(4)]

    def run(o, **kw):
        return zo.train(o, o.initial_params(), batches=batches, epochs=3, estimator=zo.CGE(), optimizer=zo.sgd(0.05),
                        rng=0, progress=False, **kw)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    def after_step_6(event, record, params):  # the 7th step's queries after its plain call: Ctrl-C
        if event == "step" and record["step"] == 5:
            for name in ("coordinate_losses", "batch"):
                monkeypatch.setattr(TorchOracle, name, interrupt)

    ckpt = tmp_path / "c.npz"
    first = oracle()
    assert first.plain_call_updates_state
    with pytest.raises(KeyboardInterrupt):
        run(first, checkpoint=ckpt, callbacks=[after_step_6])
    monkeypatch.undo()
    assert zo.load_checkpoint(ckpt)[1]["step"] == 4
    resumed, whole = oracle(), oracle()
    r, w = run(resumed, checkpoint=ckpt, resume=True), run(whole)
    assert r.params.tobytes() == w.params.tobytes()
    stats = whole.state_arrays()
    assert all(np.array_equal(a, stats[k]) for k, a in resumed.state_arrays().items())


def test_the_bar_clock_is_monotonic(monkeypatch):
    """tqdm times a bar with time.time: a wall clock set an hour back (NTP, a VM resumed) froze the bar
    (no redraw, no log line) until the clock caught up, then showed a negative elapsed time and ETA."""
    import tqdm.std

    wall = iter([1e9])  # tqdm's clock: the bar's start, then an hour earlier for the rest of the run
    monkeypatch.setattr(tqdm.std, "time", lambda: next(wall, 1e9 - 3600))
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)
    stream = io.StringIO()  # no terminal: a line at the end
    monkeypatch.setattr(sys, "stderr", stream)
    zo.train(lambda x: float(x @ x), np.ones(2), epochs=3, optimizer=zo.sgd(0.1), rng=0, progress=True)
    last = stream.getvalue().splitlines()[-1]
    assert "3/3" in last and "[" in last, last
    times = last[last.index("[") + 1:last.index("]")]
    assert "-" not in times, last


def test_a_run_that_diverges_inside_a_step_keeps_its_last_scheduled_save(tmp_path):
    """The save on an error inside a step wrote the diverged params (max|params| about 1e13) over the
    last scheduled save, whose params were still sane: a divergence keeps that save as it was."""
    ckpt = tmp_path / "run.npz"
    with pytest.raises(zo.ArgumentError, match="training diverged"):
        zo.train(lambda x: float(x @ x), np.ones(3, dtype=np.float32), epochs=1, steps_per_epoch=50,
                 optimizer=zo.sgd(1e6), estimator=zo.CGE(), checkpoint=ckpt, rng=0, progress=False)
    assert not ckpt.exists()  # no epoch ended: nothing was scheduled, and the diverged state is not saved
    with pytest.raises(zo.ArgumentError, match="training diverged"):
        zo.train(lambda x: float(x @ x), np.ones(3, dtype=np.float32), epochs=1, steps_per_epoch=50,
                 optimizer=zo.sgd(1e6), estimator=zo.CGE(), checkpoint=ckpt, checkpoint_every=1, rng=0,
                 progress=False)
    arrays, _ = zo.load_checkpoint(ckpt)
    assert np.abs(arrays["params"]).max() < 1e12, np.abs(arrays["params"]).max()  # the last sane step's
