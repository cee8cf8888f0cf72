"""Training-loop contracts a mutation test found unguarded (each mutant changed a result and passed
every test): when checkpoints are written, which epochs are evaluated, what an epoch record holds,
which batches are drawn, how resume validates a checkpoint, and what the plain-call planner hands
an oracle. Each is checked against an independent reference: a hand count, a schedule evaluated
by hand, torch's DataLoader, a textbook finite-difference loop."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import zoracle as zo


class Quad:
    """A data oracle: the squared distance of params from its batch's target value."""

    def bind(self, t):
        t = float(t)
        return lambda x: float(((x - t) ** 2).sum())


def test_checkpoint_every_saves_after_every_nth_step(tmp_path):
    """checkpoint_every=3: a step's callback runs before that step's save, so at step k's
    callback the file holds the last multiple of 3 below k (a save one step early passed)."""
    path = tmp_path / "run.npz"
    seen = []

    def cb(event, rec, params):
        if event == "step":
            seen.append(len(zo.History.from_checkpoint(path).steps) if os.path.exists(path) else 0)

    zo.train(lambda x: float(((x - 1) ** 2).sum()), np.zeros(3), epochs=1, steps_per_epoch=8, checkpoint=path,
             checkpoint_every=3, callbacks=[cb], progress=False, rng=0)
    assert seen == [3 * ((k - 1) // 3) for k in range(1, 9)]


def test_checkpoint_every_without_a_checkpoint_is_refused_before_the_first_query(tmp_path, monkeypatch):
    """checkpoint_every=5 with no `checkpoint` was accepted and ignored: a run whose black box failed
    at its 200th query had saved nothing (train refuses the sparse split's settings without
    `sparsity` for the same reason)."""
    monkeypatch.chdir(tmp_path)
    calls = []

    def f(x):
        calls.append(1)
        return float(((x - 1) ** 2).sum())

    with pytest.raises(zo.ArgumentError, match=r"`checkpoint_every`=5 sets how often `checkpoint` is saved, but no "
                                               r"`checkpoint` path was given"):
        zo.train(f, np.zeros(3), epochs=10, checkpoint_every=5, progress=False, rng=0)
    assert calls == [] and os.listdir(tmp_path) == []
    # the reference: with a path it saves, and the default "epoch" needs none
    zo.train(f, np.zeros(3), epochs=10, checkpoint=tmp_path / "run.npz", checkpoint_every=5, progress=False, rng=0)
    assert len(zo.History.from_checkpoint(tmp_path / "run.npz").steps) == 10
    assert zo.train(f, np.zeros(3), epochs=2, checkpoint_every="epoch", progress=False, rng=0).nfev == 8



def test_checkpoint_every_counts_steps_across_one_step_epochs(tmp_path):
    """A plain callable takes one step an epoch: checkpoint_every=4 saved at every epoch's end, so
    at every step (ten saves for ten steps), not after every fourth step as the docs say
    (training.md: "checkpoint_every=100 saves a hundredth as often"). A resume from the file a
    crash left is still the uninterrupted run."""
    path = tmp_path / "run.npz"
    seen = []

    def cb(event, rec, params):
        if event == "step":
            seen.append(len(zo.History.from_checkpoint(path).steps) if os.path.exists(path) else 0)

    loss = lambda x: float(((x - 1) ** 2).sum())  # noqa: E731
    kw = dict(epochs=10, optimizer=zo.sgd(0.1), checkpoint=path, checkpoint_every=4, progress=False, rng=0)
    full = zo.train(loss, np.zeros(3), callbacks=[cb], **kw)
    assert seen == [4 * ((k - 1) // 4) for k in range(1, 11)]
    assert zo.load_checkpoint(path)[1]["step"] == 10  # the end is always saved

    def crash(event, rec, params):
        if event == "epoch" and rec["epoch"] == 6:
            raise KeyboardInterrupt

    path.unlink()
    with pytest.raises(KeyboardInterrupt):
        zo.train(loss, np.zeros(3), callbacks=[crash], **kw)
    assert zo.load_checkpoint(path)[1]["step"] == 7  # epoch 6, its record in, is saved before the error
    res = zo.train(loss, np.zeros(3), resume=True, **kw)
    assert res.params.tobytes() == full.params.tobytes()
    for name in ("loss", "total_nfev"):
        np.testing.assert_array_equal(res.history.column(name), full.history.column(name))
        np.testing.assert_array_equal(res.history.column(name, "epoch"), full.history.column(name, "epoch"))


@pytest.mark.parametrize("case", ["last epoch", "stopped"])
def test_checkpoint_every_saves_the_run_end_before_eval_fn_can_fail(tmp_path, case):
    """With an int checkpoint_every, the run's last epoch (step 10 of 10) and an epoch a callback
    stopped (step 6) are saved at their end before eval_fn runs, although neither step is one of
    checkpoint_every=4's: an eval_fn that raises there loses none of the run's steps."""
    path = tmp_path / "run.npz"
    end = 10 if case == "last epoch" else 6
    steps = []

    def stop(event, rec, params):
        if event == "step":
            steps.append(rec["step"])
            return case == "stopped" and len(steps) == end
        return None

    def eval_fn(params):
        if len(steps) == end:
            raise RuntimeError("eval_fn failed")
        return {"steps": float(len(steps))}

    loss = lambda x: float(((x - 1) ** 2).sum())  # noqa: E731
    with pytest.raises(RuntimeError, match="eval_fn failed"):
        zo.train(loss, np.zeros(3), epochs=10, optimizer=zo.sgd(0.1), checkpoint=path, checkpoint_every=4,
                 eval_fn=eval_fn, callbacks=[stop], progress=False, rng=0)
    assert len(steps) == end
    assert zo.load_checkpoint(path)[1]["step"] == end
    assert len(zo.History.from_checkpoint(path).steps) == end


def test_epoch_records_the_last_steps_lr_and_the_last_epoch_is_evaluated():
    """The epoch record's lr is its last step's (the schedule by hand), and the last epoch is
    evaluated whatever eval_every says (epochs 2 and 3 of four at eval_every=3)."""
    sched = lambda t: 0.1 / (1 + t)  # noqa: E731
    res = zo.train(Quad(), np.zeros(2), batches=[1.0, 2.0, 3.0, 4.0], epochs=4, optimizer=zo.sgd(sched),
                   eval_fn=lambda p: float(p.sum()), eval_every=3, progress=False, rng=0)
    assert [e["lr"] for e in res.history.epochs] == [sched(4 * e + 3) for e in range(4)]
    assert [e["epoch"] for e in res.history.epochs if "eval" in e] == [2, 3]


def test_a_budget_stop_at_an_epochs_end_draws_no_further_epoch():
    """Stopped by max_queries at the end of epoch 0, the run asked its callable for epoch 1 too
    (a source that has no epoch 1 crashed the finished run)."""
    asked = []

    def batches(epoch):
        asked.append(epoch)
        if epoch >= 1:
            raise RuntimeError("only epoch 0 exists")
        return [1.0, 2.0]

    res = zo.train(Quad(), np.zeros(2), batches=batches, epochs=3, max_queries=5, progress=False, rng=0)
    assert asked == [0] and res.stopped and res.steps == 2


def test_zo_grasp_scores_on_the_first_batch_by_default():
    """The default ZO-GraSP batch is the first batch of epoch 0: the same ratios as passing it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 8))
    X[:4, 4:] = 0
    X[4:, :4] = 0  # the first batch uses block 0 only, the second block 1 only
    y = rng.normal(size=8)

    class Lin:
        def bind(self, batch):
            Xb, yb = batch
            return lambda w: float(((Xb @ w - yb) ** 2).mean())

    batches = [(X[:4], y[:4]), (X[4:], y[4:])]
    kw = dict(batches=batches, epochs=1, sparsity=0.5, ratios="zo_grasp", blocks=[slice(0, 4), slice(4, 8)],
              grasp_directions=16, progress=False, rng=0)
    a = zo.train(Lin(), np.full(8, 0.3), **kw)
    b = zo.train(Lin(), np.full(8, 0.3), grasp_batch=batches[0], **kw)
    c = zo.train(Lin(), np.full(8, 0.3), grasp_batch=batches[1], **kw)
    np.testing.assert_array_equal(a.ratios, b.ratios)
    assert not np.array_equal(a.ratios, c.ratios)  # the batch matters here


def test_steps_per_epoch_cuts_a_callables_batches_and_bounds_the_schedule_check():
    """A callable's four batches at steps_per_epoch=2 run two steps an epoch; a schedule valid
    only at the steps the run reaches is taken (a check of the list's length refused it)."""
    res = zo.train(Quad(), np.zeros(2), batches=lambda e: [1.0, 2.0, 3.0, 4.0], steps_per_epoch=2, epochs=2,
                   progress=False, rng=0)
    assert res.steps == 4
    res = zo.train(Quad(), np.zeros(2), batches=[1.0] * 10, steps_per_epoch=2, epochs=1,
                   optimizer=zo.sgd(lambda t: 0.1 if t < 2 else -1.0), progress=False, rng=0)
    assert res.steps == 2


def test_minibatches_drop_last_matches_torchs_dataloader():
    torch = pytest.importorskip("torch")
    x = np.arange(10.0)
    mb = zo.Minibatches((x, x), batch_size=4, drop_last=True, seed=0, shuffle=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x)), batch_size=4,
                                         drop_last=True)
    assert len(mb) == len(loader) == 2
    assert [len(b[0]) for b in mb(0)] == [len(b[0]) for b in loader] == [4, 4]


def test_a_resume_with_other_steps_per_epoch_is_refused(tmp_path):
    """A plain oracle (no batches to fingerprint) resumed with another steps_per_epoch went on."""
    path = tmp_path / "run.npz"
    f = lambda x: float(((x - 1) ** 2).sum())  # noqa: E731
    zo.train(f, np.zeros(3), epochs=1, steps_per_epoch=2, checkpoint=path, progress=False, rng=0)
    with pytest.raises(zo.CheckpointError, match="steps_per_epoch"):
        zo.train(f, np.zeros(3), epochs=2, steps_per_epoch=3, checkpoint=path, resume=path, progress=False, rng=0)


def _tampered(tmp_path, edit_meta=None, edit_arrays=None, **kw):
    path = tmp_path / f"run{len(list(tmp_path.iterdir()))}.npz"  # a new file each time
    run = dict(batches=[1.0, 2.0, 3.0], progress=False, rng=0, optimizer=zo.sgd(0.1, momentum=0.9))
    zo.train(Quad(), np.zeros(4), checkpoint=path, **{**run, "epochs": 2, **kw})
    arrays, meta = zo.load_checkpoint(path)
    for k in ("format", "version"):
        meta.pop(k)
    if edit_meta:
        edit_meta(meta)
    if edit_arrays:
        edit_arrays(arrays)
    zo.save_checkpoint(path, arrays, meta)
    with pytest.raises(zo.CheckpointError) as info:
        zo.train(Quad(), np.zeros(4), checkpoint=path, resume=True, **{**run, "epochs": 3})
    return str(info.value)


def test_resume_refuses_a_checkpoint_whose_history_disagrees_with_its_header(tmp_path):
    """Six forged fields a resume accepted (a mutant dropping each check passed every test):
    step records' epochs out of order, a `pos` other than the epoch's records, a run total
    below the steps' own queries, NaN in the optimizer state, fewer epoch records than the
    header's epoch. Each is a CheckpointError now as before, naming what disagrees."""
    def swap_epochs(m):
        s = m["history"]["steps"]
        s[0]["epoch"], s[3]["epoch"] = 1, 0

    def low_nfev(m):
        for r in m["history"]["steps"]:
            r.pop("total_nfev")
        m["nfev"] = 1

    def nan_momentum(a):
        a["opt/momentum"] = a["opt/momentum"].copy()
        a["opt/momentum"][0] = np.nan

    assert "epoch" in _tampered(tmp_path, swap_epochs)
    assert "nfev" in _tampered(tmp_path, low_nfev)
    assert "opt/momentum" in _tampered(tmp_path, edit_arrays=nan_momentum)
    assert "epoch" in _tampered(tmp_path, lambda m: m["history"].__setitem__("epochs", m["history"]["epochs"][:1]))
    # a run stopped by its budget after the first step: pos 1, which the records must match
    assert "pos" in _tampered(tmp_path, lambda m: m.__setitem__("pos", 0), max_queries=5)


def test_plain_call_queries_are_the_textbook_points_bit_for_bit():
    """Every point a plain-call CGE queries is x0 + s e_i built from a fresh copy (restoring by
    subtracting the step instead drifted by rounding: later queries moved off x0)."""
    x0 = np.random.default_rng(1).normal(size=64) * 0.37
    seen = []

    def f(x):
        seen.append(x.copy())
        return float(np.sin(x).sum())

    zo.estimate_gradient(f, x0, zo.CGE(mu=5e-3, scheme="central"))
    want = [x0]
    for s in (5e-3, -5e-3):
        for i in range(64):
            p = x0.copy()
            p[i] = p[i] + s
            want.append(p)
    assert len(seen) == len(want)
    for got, ref in zip(seen, want):
        assert got.tobytes() == ref.tobytes()


def test_coordinates_given_to_a_coordinate_oracle_are_read_only():
    """An oracle writing into the coordinates it was given (a local index) moved the gradient to
    other coordinates in silence; it gets an OracleError."""
    f = lambda x: float((np.arange(1, 5) * x ** 2).sum())  # noqa: E731

    class O:
        def __call__(self, x):
            return f(x)

        def coordinate_losses(self, params, coords, step):
            out = []
            for i in coords.tolist():
                x = params.copy()
                x[i] += step
                out.append(f(x))
            coords -= coords.min()
            return np.array(out)

    with pytest.raises(zo.OracleError):
        zo.estimate_gradient(O(), np.array([0.5, -1.0, 2.0, 0.25]), zo.CGE(mu=1e-4), coordinates=np.array([2, 3]))


def test_a_non_finite_estimate_from_finite_losses_is_named_as_the_runs_divergence():
    # float32 params and a float64 loss past float32's range: the estimate cast to float32 is inf. The
    # optimizer's own check (a gradient must be finite) named `sgd.update()` and no step; train names
    # its step, as it does for params that became non-finite
    def f(p):
        return float(np.sum(np.cosh(10 * p.astype(np.float64))))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(zo.ArgumentError, match=r"training diverged at step 0 \(epoch 0\): the gradient estimate "
                                                   r"is non-finite .*overflow float32\); scale the loss down, or pass float64 params"):
            zo.train(f, np.full(3, 9.0, np.float32), steps_per_epoch=3, estimator=zo.CGE(mu=1e-3),
                     optimizer=zo.sgd(1e-3), progress=False, rng=0)


def test_a_non_finite_estimate_at_float64_params_is_not_told_to_pass_float64_params():
    # float64 params whose loss differences over mu overflow float64 itself (1e308 apart over mu = 1e-3):
    # "pass float64 params" would change nothing; the estimate the reference formula gives is inf too
    def f(p):
        return 1e308 * float(np.tanh(1e6 * np.sum(p)))

    mu = 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = (f(np.array([mu, 0.0])) - f(np.zeros(2))) / mu  # forward CGE's first coordinate, by hand
    assert np.isinf(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(zo.ArgumentError, match=r"training diverged at step 0 \(epoch 0\): the gradient estimate "
                                                   r"is non-finite .*overflow float64\); scale the loss down") as err:
            zo.train(f, np.zeros(2), steps_per_epoch=3, estimator=zo.CGE(mu=mu), optimizer=zo.sgd(1e-3),
                     progress=False, rng=0)
    assert "float64 params" not in str(err.value)


class _SimWithBlocks:
    """A plain black box whose own settings have a field named `blocks` (a simulator's block count,
    a board), which is no parameter layout."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __call__(self, x):
        return float(((x - 1.0) ** 2).sum())


@pytest.mark.parametrize("blocks", [4, np.zeros((2, 2))])
def test_a_dense_run_ignores_an_oracle_attribute_named_blocks(blocks):
    """A dense run reads no block layout: an oracle with a `blocks` attribute that is no layout
    trains as the plain function does (it raised a bare TypeError / ValueError before the first
    query), and a sparse run that would read it is refused with an ArgumentError naming it."""
    plain = zo.train(lambda x: float(((x - 1.0) ** 2).sum()), np.zeros(3), epochs=2, progress=False, rng=0)
    got = zo.train(_SimWithBlocks(blocks), np.zeros(3), epochs=2, progress=False, rng=0)
    ref = np.zeros(3)
    for _ in range(2):  # forward-difference CGE and SGD(0.1) by hand (the default estimator and optimizer)
        f0 = float(((ref - 1.0) ** 2).sum())
        g = np.array([(float(((ref + 5e-3 * e - 1.0) ** 2).sum()) - f0) / ((ref + 5e-3 * e) - ref)[i]
                      for i, e in enumerate(np.eye(3))])
        ref = ref - 0.1 * g
    np.testing.assert_array_equal(got.params, plain.params)
    np.testing.assert_allclose(got.params, ref, rtol=1e-12)
    if np.ndim(blocks) == 0:
        with pytest.raises(zo.ArgumentError, match="oracle's `blocks`"):
            zo.train(_SimWithBlocks(blocks), np.zeros(3), epochs=1, sparsity=0.5, progress=False, rng=0)


def test_async_callbacks_and_eval_fn_are_refused_before_any_query():
    """An `async def` callback returned a coroutine that train never awaited: its body never ran (an
    early stop returning True from it never stopped the run: 6 epochs instead of 4), with a warning
    that only True stops training; an async eval_fn stopped the run after its first epoch's queries."""
    import functools
    import gc
    import warnings

    calls, ran = [], []

    def loss(x):
        calls.append(1)
        return float(np.sum((x - 3.0) ** 2))

    async def early_stop(event, record, params):
        ran.append(1)
        return event == "epoch" and record["loss"] < 10.0

    async def aeval(params):
        ran.append(1)
        return 0.5

    class AsyncCall:
        async def __call__(self, event, record, params):
            ran.append(1)

    settings = dict(epochs=6, estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.1), rng=0, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kwargs in (dict(callbacks=[early_stop]), dict(callbacks=[AsyncCall()]),
                       dict(callbacks=[functools.partial(early_stop)]), dict(eval_fn=aeval)):
            with pytest.raises(zo.ArgumentError, match=r"async def.*asyncio\.run"):
                zo.train(loss, np.zeros(4), **settings, **kwargs)
        gc.collect()
    assert not calls and not ran
    assert not [w for w in caught if "never awaited" in str(w.message)]

    # the reference: the same callback written synchronously stops after 4 epochs (losses 36, 23.0, 14.7, 9.44)
    def sync_stop(event, record, params):
        return event == "epoch" and record["loss"] < 10.0

    assert zo.train(loss, np.zeros(4), **settings, callbacks=[sync_stop]).epochs == 4


def test_an_async_callbacks_fix_works_in_a_running_event_loop():
    """The refusal of an `async def` callback names `def fn(...): return asyncio.run(afn(...))`; in a
    running event loop (Jupyter, where async callbacks are written) that raises "asyncio.run() cannot be
    called from a running event loop" at the first step: the message must name the thread that works."""
    import asyncio
    import re

    async def astop(event, record, params):
        return event == "epoch" and record["loss"] < 10.0

    def loss(x):
        return float(np.sum((x - 3.0) ** 2))

    settings = dict(epochs=6, estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.1), rng=0, progress=False)
    with pytest.raises(zo.ArgumentError) as info:
        zo.train(loss, np.zeros(4), **settings, callbacks=[astop])
    text = str(info.value)

    def fn(event, record, params):  # the fix the message names
        return asyncio.run(astop(event, record, params))

    async def cell():  # a notebook cell: the loop is running
        assert re.search(r"asyncio\.to_thread\(zo\.train", text), text  # the way that works there
        return await asyncio.to_thread(zo.train, loss, np.zeros(4), **settings, callbacks=[fn])

    def sync_stop(event, record, params):
        return event == "epoch" and record["loss"] < 10.0

    got = asyncio.run(cell())
    want = zo.train(loss, np.zeros(4), **settings, callbacks=[sync_stop])
    assert got.epochs == want.epochs == 4 and np.array_equal(got.params, want.params)
