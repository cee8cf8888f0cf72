"""zoracle.AskTell with ``batches``: a black box that evaluates a loss on a data minibatch (a model on
hardware, a rater scoring a batch of items) learns each ask's batch from ``opt.batch``; answered by
``oracle.bind(opt.batch)``, the run is ``zo.train(oracle, params, batches=...)``'s, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo
from test_ask_tell import same_run  # (the equality of two runs, as test_ask_tell.py checks it)

DATA = np.random.default_rng(0).standard_normal((40, 6))
TARGET = DATA @ np.linspace(-1.0, 1.0, 6) + 0.1 * np.sin(np.arange(40))
X0 = np.linspace(-0.5, 0.5, 6) + 0.05
BLOCKS = [slice(0, 3), slice(3, 6)]


class LeastSquares:
    """A data oracle: the mean squared error of ``A @ x`` against ``t`` on its batch ``(A, t)`` (the
    whole data set unbound); ``binds`` logs the batches ``bind`` was given."""

    def __init__(self, batch=None, binds=None):
        self.batch = (DATA, TARGET) if batch is None else batch
        self.binds = binds

    def bind(self, batch) -> LeastSquares:
        if self.binds is not None:
            self.binds.append(batch)
        return LeastSquares(batch)

    def __call__(self, x) -> float:
        a, t = self.batch
        return float(((a @ x - t) ** 2).mean())


def by_epoch(epoch):
    """``batches`` as a callable: epoch -> its 4 batches of 10 rows, shuffled by the epoch."""
    order = np.random.default_rng([7, epoch]).permutation(len(DATA))
    return [(DATA[i], TARGET[i]) for i in np.array_split(order, 4)]


BATCHES = {
    "minibatches": lambda: zo.Minibatches((DATA, TARGET), batch_size=10, seed=3),
    "list": lambda: [(DATA[i:i + 8], TARGET[i:i + 8]) for i in range(0, 40, 8)],
    "callable": lambda: by_epoch,
}

SETTINGS = {
    "cge": dict(estimator=zo.CGE()),
    "rge": dict(estimator=zo.RGE(directions=4)),
    "zo-grasp": dict(estimator=zo.CGE(), sparsity=0.5, blocks=BLOCKS, grasp_directions=8),
    "zo-grasp-batch": dict(estimator=zo.CGE(scheme="central"), sparsity=0.5, blocks=BLOCKS, grasp_directions=8,
                           grasp_batch=(DATA[::2], TARGET[::2]), mask_shuffle_interval="step"),
}


def answered(opt, oracle=None, tells=None, batches=None):
    """Answer ``opt``'s asks with ``oracle.bind(opt.batch)`` (the plain oracle where the batch is None)
    until the run ends (or ``tells`` tells); ``batches`` collects each ask's batch."""
    oracle = LeastSquares() if oracle is None else oracle
    batches = [] if batches is None else batches
    while not opt.done and (tells is None or len(batches) < tells):
        X = opt.ask()
        batches.append(opt.batch)
        f = oracle if opt.batch is None else oracle.bind(opt.batch)
        opt.tell([f(x) for x in X])
    return batches




def same_batch(a, b) -> bool:
    return a is b or (a is not None and b is not None and len(a) == len(b)
                      and all(np.array_equal(u, v) for u, v in zip(a, b)))


@pytest.mark.parametrize("form", sorted(BATCHES))
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_asks_answered_on_their_batch_are_train_with_those_batches_bit_for_bit(name, form):
    common = dict(epochs=3, optimizer=zo.adam(0.05), rng=2, progress=False, **SETTINGS[name])
    binds: list = []
    ref = zo.train(LeastSquares(binds=binds), X0, batches=BATCHES[form](), **common)
    opt = zo.AskTell(X0, batches=BATCHES[form](), **common)
    asked = answered(opt)
    same_run(opt.result, ref)
    # each ask on the batch train bound for it: ZO-GraSP's two scoring asks on its one batch first
    want = [binds[0], *binds] if "sparsity" in common else binds
    assert len(asked) == len(want) == ref.steps + (2 if "sparsity" in common else 0)
    assert all(same_batch(a, b) for a, b in zip(asked, want))
    if "grasp_batch" in common:
        assert asked[0] is asked[1] is common["grasp_batch"]  # the object given, as train binds it
    elif "sparsity" in common:
        assert same_batch(asked[0], asked[2])  # (by default the first batch)


def test_a_grasp_batch_without_batches_scores_on_it_and_steps_ask_the_plain_loss():
    gb = (DATA[:10], TARGET[:10])
    common = dict(epochs=4, optimizer=zo.sgd(0.02), rng=1, progress=False, sparsity=0.5, blocks=BLOCKS,
                  grasp_directions=8, grasp_batch=gb)
    ref = zo.train(LeastSquares(), X0, **common)
    opt = zo.AskTell(X0, **common)
    asked = answered(opt)
    same_run(opt.result, ref)
    assert asked[0] is asked[1] is gb and asked[2:] == [None] * ref.steps


@pytest.mark.parametrize("stop", ["after tell", "between ask and tell"])
@pytest.mark.parametrize("name, form", [("rge", "minibatches"), ("zo-grasp", "callable"),
                                        ("zo-grasp-batch", "list")])
def test_a_resumed_ask_tell_with_batches_is_the_uninterrupted_one(tmp_path, name, form, stop):
    common = dict(epochs=3, optimizer=zo.adam(0.05), rng=4, progress=False, **SETTINGS[name])
    whole = zo.AskTell(X0, batches=BATCHES[form](), **common)
    whole_batches = answered(whole)
    path = tmp_path / "run.npz"
    first = zo.AskTell(X0, batches=BATCHES[form](), checkpoint=path, **common)
    answered(first, tells=5)
    if stop == "between ask and tell":
        pending, pending_batch = first.ask(), first.batch
    first.close()  # (a process killed here: the checkpoint holds what tell() returned after)
    again = zo.AskTell(X0, batches=BATCHES[form](), checkpoint=path, resume=True, **common)
    if stop == "between ask and tell":
        assert np.array_equal(again.ask(), pending) and same_batch(again.batch, pending_batch)
        again.tell([LeastSquares().bind(pending_batch)(x) for x in pending])
    rest = answered(again)
    assert all(same_batch(a, b) for a, b in zip(rest, whole_batches[-len(rest):]))
    same_run(again.result, whole.result)
    assert zo.load_checkpoint(path)[1]["step"] == whole.result.steps


def test_batch_names_the_points_batch_from_before_the_ask_to_the_tell_and_is_refused_where_there_is_none():
    batches = [(DATA[:20], TARGET[:20]), (DATA[20:], TARGET[20:])]
    opt = zo.AskTell(X0, batches=batches, epochs=2, optimizer=zo.sgd(0.02), progress=False, rng=0)
    assert opt.batch is batches[0]  # the points the next ask() returns
    X = opt.ask()
    assert opt.batch is batches[0]
    opt.tell([LeastSquares(batches[0])(x) for x in X])
    assert opt.batch is batches[1]
    answered(opt)
    with pytest.raises(zo.ZoracleError, match=r"\.batch after the run ended: no points are left to evaluate"):
        opt.batch
    with zo.AskTell(X0, batches=batches, epochs=2, progress=False) as closed:
        closed.ask()
    with pytest.raises(zo.ZoracleError, match=r"\.batch of a closed AskTell: it asks no more points"):
        closed.batch
    plain = zo.AskTell(X0, epochs=2, progress=False)
    with pytest.raises(zo.ZoracleError, match=r"\.batch of an AskTell without `batches`: its points need no "
                                              r"data \(to evaluate each ask on a minibatch, pass batches="):
        plain.batch
    plain.close()


def test_trains_refusals_of_batches_are_asktells():
    with pytest.raises(zo.ArgumentError, match="steps_per_epoch") as err:
        zo.AskTell(X0, batches=[(DATA, TARGET)], steps_per_epoch=3, progress=False)
    with pytest.raises(zo.ArgumentError) as ref:
        zo.train(LeastSquares(), X0, batches=[(DATA, TARGET)], steps_per_epoch=3, progress=False)
    assert str(err.value) == str(ref.value)
