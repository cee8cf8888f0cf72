"""zoracle.AskTell driven by real concurrency, as a lab's program drives it (training.md, "Ask and
tell"): an asyncio program whose instrument driver is async, the constructor and each tell run through
``asyncio.to_thread`` (so the loop's other tasks go on while the run computes its step, and ask and
tell come from different threads in turn), a process pool's results told by row as they complete, and
Dask's and Ray's futures. Each run is ``zo.train``'s with the same arguments, bit for bit."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
import pytest

import zoracle as zo
import zoracle._ask_tell as ask_tell

X0 = np.linspace(-1.0, 1.0, 12)
BLOCKS = [slice(0, 4), slice(4, 12)]

#: plain forward CGE (13 points a step); ZO-GraSP's two scoring asks (9 points each), then sparse CGE
SETTINGS = {"cge": dict(epochs=4, optimizer=zo.adam(0.05), rng=0, progress=False),
            "grasp": dict(epochs=3, sparsity=0.5, blocks=BLOCKS, grasp_directions=8, optimizer=zo.sgd(0.05), rng=0,
                          progress=False)}


def f(x):
    return float(((x - 3) ** 2).sum() + np.sin(3 * x).sum())


def timeless(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def same_run(result, kind):
    ref = zo.train(f, X0, **SETTINGS[kind])
    assert np.array_equal(result.params, ref.params) and result.nfev == ref.nfev
    assert timeless(result.history.steps) == timeless(ref.history.steps)
    if kind == "grasp":
        assert np.array_equal(result.ratios, ref.ratios) and np.array_equal(result.coordinates, ref.coordinates)


class Instrument:
    """An async instrument driver: ``await instrument.measure(x)``, each round trip of its own length,
    so that measurements come back out of the rows' order."""

    async def measure(self, x, turn=0):
        await asyncio.sleep(0.001 * (turn % 5))
        return f(x)


async def in_the_coroutine(fn, *args, **kwargs):
    """``fn(*args)`` called in the coroutine, as ``await asyncio.to_thread(fn, *args)`` calls it in a thread."""
    return fn(*args, **kwargs)


async def ask_tell_async(kind, collect, opened=None, waiting=asyncio.to_thread, **extra):
    """The lab's loop: ask in the coroutine, measure concurrently, tell through ``waiting`` (in an
    executor's thread). The result, and the threads that asked and told (``opened(opt)``: the AskTell
    made, for a test's tasks)."""
    instrument, threads = Instrument(), {"ask": set(), "tell": set()}

    def tell(losses):
        threads["tell"].add(threading.get_ident())
        opt.tell(losses)

    async def row(j, x):  # (the last rows come back first)
        return j, await instrument.measure(x, len(X) - j)

    opt = await waiting(zo.AskTell, X0, **SETTINGS[kind], **extra)
    if opened is not None:
        opened(opt)
    with opt:
        while not opt.done:
            X = opt.ask()
            threads["ask"].add(threading.get_ident())
            if collect == "gather":  # in the rows' order
                losses = await asyncio.gather(*(instrument.measure(x, j) for j, x in enumerate(X)))
            else:  # as they complete, by row
                losses = dict([await done for done in asyncio.as_completed([row(j, x) for j, x in enumerate(X)])])
                assert list(losses) != sorted(losses)  # (out of order: the rows put them back)
            await waiting(tell, losses)
        return opt.result, threads


@pytest.mark.parametrize("kind", sorted(SETTINGS))
@pytest.mark.parametrize("collect", ["gather", "as_completed"])
def test_an_asyncio_loop_telling_through_to_thread_is_the_serial_run(kind, collect):
    result, threads = asyncio.run(ask_tell_async(kind, collect))
    same_run(result, kind)
    assert threads["ask"] == {threading.get_ident()}  # the loop's thread asks ...
    assert threading.get_ident() not in threads["tell"]  # ... and the executor's threads tell, in turn


@pytest.mark.parametrize("waiting", [asyncio.to_thread, in_the_coroutine])
def test_the_event_loop_goes_on_while_a_tell_through_to_thread_waits_on_the_runs_step(waiting):
    """The run's step (here a callback, in the run's thread while the caller's tell waits) goes on
    once a heartbeat task of the loop has ticked. Through to_thread it ticks during each tell, reading
    .params and .history beside the run's thread (each read a step's params, never half-updated); a
    tell called in the coroutine holds the loop, and the heartbeat never ticks during it."""
    tick = threading.Event()
    ticked, reads, steps = [], [], [X0]
    threaded = waiting is asyncio.to_thread

    def needs_a_tick(event, record, params):
        if event == "step":
            steps.append(params)
            tick.clear()
            # (generous where it must tick; a loop that the tell holds never ticks, however long)
            ticked.append(tick.wait(60 if threaded else 0.2))

    async def heartbeat(opt):
        while True:
            reads.append((opt.params, len(opt.history.steps)))
            tick.set()
            await asyncio.sleep(0.001)

    async def main():
        beats = []
        try:
            return await ask_tell_async("cge", "gather", callbacks=[needs_a_tick], waiting=waiting,
                                        opened=lambda opt: beats.append(asyncio.create_task(heartbeat(opt))))
        finally:
            beats[0].cancel()

    result, _ = asyncio.run(main())
    assert ticked == [threaded] * 4
    same_run(result, "cge")
    assert all(any(np.array_equal(params, p) for p in steps) for params, _ in reads)
    counts = [n for _, n in reads]
    assert counts == sorted(counts) and {1, 2, 3} <= set(counts)


def test_ctrl_c_while_a_tell_waits_in_to_thread_ends_the_run_and_keeps_its_steps(ctrl_c, tmp_path):
    """asyncio.run cancels the main task on Ctrl-C; the `with` block's close() ends the run (the tell
    waiting in the executor's thread returns), its steps saved; resume=True goes on as train does."""
    path = tmp_path / "run.npz"
    holder, loops = [], []

    def interrupt(event, record, params):
        if event == "step" and record["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the loop cancels its task: `with opt` closes the run
            deadline = time.monotonic() + 60
            while not holder[0]._channel.closed and time.monotonic() < deadline:
                # (sent from this thread, the signal can land as the loop's thread goes into its wait
                # for events, which it does not end: a terminal's Ctrl-C comes at a time of its own)
                loops[0].call_soon_threadsafe(lambda: None)
                time.sleep(0.01)

    def opened(opt):
        holder.append(opt)
        loops.append(asyncio.get_running_loop())

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(ask_tell_async("cge", "gather", callbacks=[interrupt], checkpoint=str(path), opened=opened))
    opt = holder[0]
    opt._thread.join(60)
    assert not opt._thread.is_alive() and opt._channel.closed and not opt.done
    assert zo.load_checkpoint(str(path))[1]["step"] == 3  # every step told was saved
    result, _ = asyncio.run(ask_tell_async("cge", "gather", checkpoint=str(path), resume=True))
    same_run(result, "cge")


@pytest.mark.parametrize("kind", sorted(SETTINGS))
def test_a_process_pools_results_told_by_row_as_they_complete_are_the_serial_run(kind):
    with ProcessPoolExecutor(2) as pool:
        opt = zo.AskTell(X0, **SETTINGS[kind])
        while not opt.done:
            X = opt.ask()
            futures = {pool.submit(f, x): row for row, x in enumerate(X)}
            opt.tell({futures[done]: done.result() for done in as_completed(futures)})
    same_run(opt.result, kind)


@pytest.mark.parametrize("kind", sorted(SETTINGS))
def test_dask_futures_told_by_row_as_they_complete_are_the_serial_run(kind, tmp_path):
    distributed = pytest.importorskip("distributed", reason="dask[distributed] not installed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0",
                                  scheduler_kwargs={"dashboard": False},
                                  local_directory=str(tmp_path)) as cluster, distributed.Client(cluster) as client:
        opt = zo.AskTell(X0, **SETTINGS[kind])
        while not opt.done:
            X = opt.ask()
            futures = client.map(f, list(X))
            rows = {fut.key: row for row, fut in enumerate(futures)}
            assert len(rows) == len(X)  # (a key each: no two points alike)
            opt.tell({rows[fut.key]: loss for fut, loss in distributed.as_completed(futures, with_results=True)})
    same_run(opt.result, kind)


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray session (2 CPUs) whose files stay in a temporary folder, its token private
    (conftest points Ray's token at its own directory); the driver's state as before at the end."""
    pytest.importorskip("ray", reason="ray not installed (pip install -e '.[ray]')")
    import ray
    import conftest
    from zoracle import _executors_ray

    tmp = tempfile.mkdtemp(prefix="s", dir=conftest.RAY_DIR)  # (short: Ray's socket paths)
    state = _executors_ray._ray_driver_state()
    _executors_ray._private_token()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             _temp_dir=os.path.join(tmp, "r"))
    try:
        yield ray
    finally:
        ray.shutdown()
        _executors_ray._ray_driver_state_back(state)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("kind", sorted(SETTINGS))
def test_ray_refs_told_by_row_as_ray_wait_returns_them_are_the_serial_run(kind, ray_session):
    ray = ray_session
    import ray.cloudpickle as cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # (Ray's workers cannot import the tests)
    try:
        measure = ray.remote(f)
        opt = zo.AskTell(X0, **SETTINGS[kind])
        while not opt.done:
            X = opt.ask()
            refs = {measure.remote(x): row for row, x in enumerate(X)}
            pending, told = list(refs), {}
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                told[refs[ready[0]]] = ray.get(ready[0])
            opt.tell(told)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    same_run(opt.result, kind)


def test_an_ask_while_another_threads_tell_waits_on_the_step_is_refused_in_words():
    """A tell through to_thread that is not awaited before the next ask(): the run still computes its
    step. ask() failed with AttributeError: 'NoneType' object has no attribute 'copy'; it says what to do,
    and once the tell returns, the run goes on as the serial one."""
    go = threading.Event()

    def hold(event, record, params):
        if event == "step" and record["step"] == 1:
            go.wait(60)  # (the step's work: the test asks meanwhile)

    async def main():
        opt = zo.AskTell(X0, **SETTINGS["cge"], callbacks=[hold])
        opt.tell([f(x) for x in opt.ask()])
        X = opt.ask()
        telling = asyncio.create_task(asyncio.to_thread(opt.tell, [f(x) for x in X]))  # (not awaited)
        try:
            deadline = time.monotonic() + 60
            while opt._channel.queries is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.001)  # (until the run has taken the losses: its step runs)
            with pytest.raises(zo.ZoracleError, match=r"ask\(\) while a tell\(\) is still waiting for the run's "
                                                      r"next points \(in another thread: an `asyncio.to_thread\("
                                                      r"opt.tell, losses\)` not awaited\?\): let that tell return, "
                                                      r"then ask"):
                opt.ask()
        finally:
            go.set()
            await telling
        while not opt.done:
            opt.tell([f(x) for x in opt.ask()])
        return opt.result

    same_run(asyncio.run(main()), "cge")


def test_an_ask_between_another_threads_tell_and_the_run_taking_its_losses_is_refused(monkeypatch):
    """The other window of a tell still in flight: the losses handed over, the run's thread not yet
    back with them. ask() handed out the points just told again (their tell was then refused, as told
    already or as one without an ask, or failed with an AttributeError)."""
    held, go, pausing = threading.Event(), threading.Event(), threading.Event()
    made = ask_tell._Channel.__init__

    def init(channel, *args, **kwargs):
        made(channel, *args, **kwargs)
        restore = channel.cond._acquire_restore  # (how Condition.wait takes its lock back once notified)

        def paused(state):
            if pausing.is_set() and threading.current_thread().name == "zoracle.AskTell":
                pausing.clear()
                held.set()
                go.wait(60)
            return restore(state)

        channel.cond._acquire_restore = paused

    monkeypatch.setattr(ask_tell._Channel, "__init__", init)
    opt = zo.AskTell(X0, **SETTINGS["cge"])
    X = opt.ask()
    pausing.set()
    teller = threading.Thread(target=opt.tell, args=([f(x) for x in X],))
    teller.start()
    assert held.wait(60)  # the run's thread is notified and held before it takes the losses
    try:
        with pytest.raises(zo.ZoracleError, match=r"ask\(\) while a tell\(\) is still waiting"):
            opt.ask()
    finally:
        go.set()
        teller.join(60)
    while not opt.done:
        opt.tell([f(x) for x in opt.ask()])
    same_run(opt.result, "cge")
