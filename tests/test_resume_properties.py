"""Checkpoint and resume at every boundary: a run interrupted any number of times (a callback
that returns True or raises, an exception from the oracle at its k-th query, a query budget,
an exception from ``eval_fn``) and resumed from its checkpoint each time ends with the same
params, history and nfev as the uninterrupted run, bit for bit: plain and data oracles (a
list of batches, Minibatches, a callable), serial or on threads, float64 or float32 params.

The interruptions are aimed at the loop's boundaries: the first step, an epoch's last step,
the step where a fresh mask is drawn, an evaluated epoch, the middle of ZO-GraSP (before the
first save), the last step; and the run is resumed twice or more, or resumed with more
``epochs`` than the interrupted attempts were given."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zoracle as zo
from zoracle._pruning import grasp_queries
from zoracle.executors import ThreadPool

# The generated runs include settings that climb (ranked RGE with momentum 0.9 on a quadratic: 5.5 to 376
# in 10 steps), which the run-end warning rightly names; what is tested here is that resuming changes
# nothing, so it is ignored here (tests/test_run_end_far_above.py tests it, on resumed runs too)
pytestmark = pytest.mark.filterwarnings("ignore:.*the run ended far above where it started:UserWarning")


class Crash(Exception):
    """Raised by the oracle (or eval_fn) to interrupt a run, as a crash or a kill would."""


def _problem(kind: str, d: int):
    """A quadratic of d weights, or a 1-hidden-layer tanh network whose d weights are the
    parameters (the largest hidden width that fits, the rest a quadratic penalty)."""
    w = np.linspace(0.5, 2.0, d)
    if kind == "quadratic" or d < 5:
        return lambda x: float((w * (x - 0.7) ** 2).sum() + 0.05 * np.sin(3 * x).sum())
    X = np.linspace(-1, 1, 16).reshape(8, 2)
    y = np.sin(X.sum(axis=1))
    h = (d - 1) // 4  # weights (2h), biases (h), output weights (h), output bias (1)

    def mlp(x):
        W1, b1, W2, b2 = x[:2 * h].reshape(2, h), x[2 * h:3 * h], x[3 * h:4 * h], x[4 * h]
        pred = np.tanh(X @ W1 + b1) @ W2 + b2
        return float(((pred - y) ** 2).mean() + 1e-2 * (x[4 * h + 1:] ** 2).sum())

    return mlp


class Oracle:
    """The problem's loss, counting its queries (under a lock: an executor's threads share it);
    raises :class:`Crash` at query ``crash_at``. With ``data``, a data oracle: ``bind(batch)``
    shifts the loss by the batch's mean, and every bound oracle counts into this one."""

    def __init__(self, fn, crash_at=None, data=False):
        self.fn, self.crash_at, self.n, self.lock = fn, crash_at, 0, threading.Lock()
        if data:
            self.bind = self._bind

    def _count(self):
        with self.lock:
            self.n += 1
            n = self.n
        if self.crash_at is not None and n >= self.crash_at:
            raise Crash(f"crash at query {n}")

    def __call__(self, x):
        self._count()
        return self.fn(np.asarray(x, dtype=np.float64))

    def _bind(self, batch):
        shift = float(np.mean(batch[0]))

        def bound(x):
            self._count()
            x = np.asarray(x, dtype=np.float64)
            return self.fn(x) + shift * float(x.sum())

        return bound


ROWS = np.linspace(-0.5, 0.5, 12)


def _batches(kind, seed):
    """An epoch's batches: a list (the same each epoch), Minibatches shuffled by (seed, epoch), or
    a callable epoch -> batches."""
    if kind == "list":
        return [(ROWS[i:i + 4],) for i in range(0, 12, 4)]
    if kind == "minibatches":
        return zo.Minibatches((ROWS,), batch_size=4, seed=seed)
    return lambda epoch: [(ROWS[(i + epoch) % 12:(i + epoch) % 12 + 1] * (1 + epoch),) for i in range(3)]


def _records(recs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


@st.composite
def configs(draw, big=False):
    d = draw(st.integers(3, 30 if big else 12))
    data = draw(st.sampled_from([None, None, "list", "minibatches", "callable"]))
    per_epoch = draw(st.integers(1, 3 if data else 4 if big else 3))
    epochs = draw(st.integers(1, 5 if big else 4))
    total = per_epoch * epochs
    est = draw(st.sampled_from(["cge", "cge-central", "rge", "rge-central", "rge-ranks", "snes"]))
    directions = draw(st.integers(1, 3))
    estimator = {"cge": zo.CGE(mu=1e-3), "cge-central": zo.CGE(mu=1e-3, scheme="central"),
                 "rge": zo.RGE(mu=1e-2, directions=directions),
                 "rge-central": zo.RGE(mu=1e-2, directions=directions, scheme="central"),
                 "rge-ranks": zo.RGE(mu=1e-2, directions=directions + 1, distribution="sphere", shaping="ranks"),
                 "snes": zo.SNES(mu=0.1, population=4)}[est]
    lr = draw(st.sampled_from(["const", "cosine"]))
    lr = 0.02 if lr == "const" else zo.cosine_schedule(0.03, total_steps=total, warmup_steps=min(1, total - 1))
    opt = draw(st.sampled_from(["sgd", "momentum", "adam", "sign"]))
    optimizer = {"sgd": zo.sgd(lr), "momentum": zo.sgd(lr, momentum=0.9, weight_decay=1e-3),
                 "adam": zo.adam(lr), "sign": zo.sign_sgd(lr)}[opt]
    kw = dict(epochs=epochs, steps_per_epoch=per_epoch, estimator=estimator, optimizer=optimizer,
              rng=draw(st.integers(0, 2**32)), progress=False)
    if data:
        kw["batches"] = _batches(data, draw(st.integers(0, 9)))
    if est != "snes" and draw(st.booleans()):
        kw["mu"] = zo.cosine_schedule(2e-3, total_steps=total, final=5e-4)
    interval = 1
    if est.startswith("cge") and d >= 4 and draw(st.booleans()):  # sparse CGE over two blocks
        cut = draw(st.integers(1, d - 1))
        ratios = draw(st.sampled_from(["uniform", "random", "zo_grasp"]))
        interval = draw(st.sampled_from([1, 2, 3, "step"]))
        kw.update(sparsity=draw(st.sampled_from([0.25, 0.5, 0.75])), blocks=[slice(0, cut), slice(cut, d)],
                  ratios=ratios, mask_shuffle_interval=interval)
        if ratios == "zo_grasp":
            kw["grasp_directions"] = draw(st.integers(1, 4))
    if draw(st.booleans()):
        kw["eval_every"] = draw(st.integers(1, 3))
    kw["checkpoint_every"] = draw(st.sampled_from(["epoch", 1, 2, 3]))
    kind = draw(st.sampled_from(["quadratic", "mlp"]))
    kw["executor"] = draw(st.sampled_from([None, None, "threads"]))
    kw["dtype"] = draw(st.sampled_from([np.float64, np.float64, np.float32]))
    return d, kind, kw, interval


# an interruption: (how, where) with ``where`` a step, an epoch or a query picked from the
# uninterrupted run's history; the boundaries are drawn more often than the rest
HOWS = ["stop-step", "stop-epoch", "crash-query", "crash-step-start", "crash-grasp", "budget", "crash-eval",
        "crash-step-callback", "crash-epoch-callback"]
PLACES = ["first", "epoch-end", "mask", "eval", "last", "middle", "any"]


def _step_at(place, rng_value, kw, total, interval):
    per_epoch = kw["steps_per_epoch"]
    if place == "first":
        return 0
    if place == "epoch-end":
        return min(total - 1, per_epoch * (1 + rng_value % kw["epochs"]) - 1)
    if place == "mask":  # the first step of an epoch that draws a fresh mask (every step: any step)
        if interval == "step":
            return rng_value % total
        redraws = [e * per_epoch for e in range(0, kw["epochs"], interval)]
        return redraws[rng_value % len(redraws)]
    if place == "eval":  # the last step of an evaluated epoch
        every = kw.get("eval_every", 1)
        evaluated = [e for e in range(kw["epochs"]) if (e + 1) % every == 0 or e == kw["epochs"] - 1]
        return (evaluated[rng_value % len(evaluated)] + 1) * per_epoch - 1
    if place == "last":
        return total - 1
    if place == "middle":
        return total // 2
    return rng_value % total


def _check_resumes(tmp_path, d, kind, kw, interval, events, extend, twice_at_end, pool):
    fn = _problem(kind, d)
    data = "batches" in kw
    if kw.get("executor") is not None:
        kw["executor"] = pool
    x0 = np.random.default_rng(d).normal(0, 0.5, d).astype(kw.pop("dtype"))
    evals = kw.pop("eval_every", None)
    eval_fn = (lambda p: {"eval": fn(p), "norm": float(np.abs(p).sum())}) if evals is not None else None
    if evals is not None:
        kw["eval_every"] = evals
    plain = {k: v for k, v in kw.items() if k != "checkpoint_every"}
    ref = zo.train(Oracle(fn, data=data), x0, eval_fn=eval_fn, **plain)
    total = kw["steps_per_epoch"] * kw["epochs"]
    grasp = grasp_queries(kw["grasp_directions"]) if kw.get("ratios") == "zo_grasp" else 0
    steps, epochs_rec = ref.history.steps, ref.history.epochs
    path = tmp_path / "run.npz"
    if path.exists():
        path.unlink()
    # the interrupted attempts may be given fewer epochs (then the last attempt has them all);
    # every epoch is evaluated there, so that the first attempts' last epoch has its eval as
    # the uninterrupted run does
    first_epochs = kw["epochs"]
    if extend:
        first_epochs = max(1, kw["epochs"] - 1 - (events[0][2] % kw["epochs"] if events else 0))
    for how, place, value in events:
        attempt = dict(kw, epochs=first_epochs)
        oracle, callbacks, evaluate = Oracle(fn, data=data), [], eval_fn
        if how in ("stop-step", "stop-epoch", "crash-step-callback", "crash-epoch-callback"):
            step = _step_at(place, value, kw, total, interval)
            event, at = ("step", step) if "step" in how else ("epoch", step // kw["steps_per_epoch"])

            def callback(ev, rec, p, event=event, at=at, crash=how.startswith("crash"), fired=[]):
                if ev == event and rec[event] == at and not fired:
                    fired.append(True)  # (one attempt's: a resumed run may pass here again)
                    if crash:
                        raise Crash(f"callback failed at {event} {at}")
                    return True
                return None

            callbacks = [callback]
        elif how == "budget":  # reached at the end of the chosen step
            attempt["max_queries"] = steps[_step_at(place, value, kw, total, interval)]["total_nfev"]
        elif how == "crash-grasp":
            oracle = Oracle(fn, data=data, crash_at=1 + value % max(1, grasp))
        elif how == "crash-step-start":  # at the first query of the chosen step (or right after it)
            step = _step_at(place, value, kw, total, interval)
            oracle = Oracle(fn, data=data, crash_at=steps[step]["total_nfev"] - steps[step]["nfev"] + 1 + value % 2)
        elif how == "crash-query":
            oracle = Oracle(fn, data=data, crash_at=1 + value % ref.nfev)
        elif how == "crash-eval" and eval_fn is not None:
            calls = [0]
            target = value % max(1, len(epochs_rec))

            def evaluate(p, calls=calls, target=target):
                calls[0] += 1
                if calls[0] > target:
                    raise Crash("eval failed")
                return eval_fn(p)
        # a crash counts the queries of this attempt only: it happens at most once, so every
        # attempt moves the run on (or finds it finished)
        if how == "crash-query" or how == "crash-step-start" or how == "crash-grasp":
            oracle.crash_at = max(1, oracle.crash_at - _done_queries(path, grasp))
        try:
            zo.train(oracle, x0, eval_fn=evaluate, callbacks=callbacks, checkpoint=path, resume=True, **attempt)
        except Exception as exc:  # the crash itself, or train's report of it naming the cause
            chain, e = [], exc
            while e is not None:
                chain.append(e)
                e = e.__cause__ or e.__context__
            assert any(isinstance(c, Crash) for c in chain), exc
    got = zo.train(Oracle(fn, data=data), x0, eval_fn=eval_fn, checkpoint=path, resume=True, **kw)
    if twice_at_end:  # resuming a finished run returns the same run
        got = zo.train(Oracle(fn, data=data), x0, eval_fn=eval_fn, checkpoint=path, resume=True, **kw)
    assert np.array_equal(got.params, ref.params)
    assert got.params.dtype == ref.params.dtype
    assert _records(got.history.steps) == _records(ref.history.steps)
    assert _records(got.history.epochs) == _records(ref.history.epochs)
    assert (got.nfev, got.steps, got.epochs, got.stopped) == (ref.nfev, ref.steps, ref.epochs, ref.stopped)
    for a, b in ((got.ratios, ref.ratios), (got.coordinates, ref.coordinates),
                 (got.estimator_state, ref.estimator_state)):
        assert (a is None) == (b is None) and (a is None or np.array_equal(a, b))
    saved = zo.History.from_checkpoint(path)
    assert _records(saved.steps) == _records(ref.history.steps)


def _done_queries(path, grasp):
    """The queries the checkpoint at ``path`` holds (0 without one): a resumed attempt's oracle
    is asked only for what comes after."""
    if not path.exists():
        return 0
    steps = zo.History.from_checkpoint(path).steps
    return steps[-1]["total_nfev"] if steps else grasp


@pytest.fixture(scope="module")
def pool():
    with ThreadPool(2) as p:
        yield p


event = st.tuples(st.sampled_from(HOWS), st.sampled_from(PLACES), st.integers(0, 10**6))


@given(cfg=configs(), events=st.lists(event, min_size=1, max_size=3), extend=st.booleans(), twice_at_end=st.booleans())
@settings(max_examples=60)
def test_a_run_interrupted_anywhere_and_resumed_ends_as_the_uninterrupted_run(
        tmp_path_factory, pool, cfg, events, extend, twice_at_end):
    d, kind, kw, interval = cfg
    if extend and kw.get("eval_every", 1) != 1:  # a run's last epoch is always evaluated
        kw["eval_every"] = 1
    _check_resumes(tmp_path_factory.mktemp("resume"), d, kind, kw, interval, events, extend, twice_at_end, pool)


@pytest.mark.slow
@given(cfg=configs(big=True), events=st.lists(event, min_size=1, max_size=5), extend=st.booleans(),
       twice_at_end=st.booleans())
@settings(max_examples=400)
def test_a_run_interrupted_anywhere_and_resumed_ends_as_the_uninterrupted_run_slow(
        tmp_path_factory, pool, cfg, events, extend, twice_at_end):
    d, kind, kw, interval = cfg
    if extend and kw.get("eval_every", 1) != 1:
        kw["eval_every"] = 1
    _check_resumes(tmp_path_factory.mktemp("resume"), d, kind, kw, interval, events, extend, twice_at_end, pool)
