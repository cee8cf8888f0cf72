"""`batches` as users pass them: what train refuses (before any query, naming the fix) and what
it warns about (a shuffled loader or one stream that a resumed run would not replay)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import zoracle as zo


class Counted:
    """A data oracle on (X, y) batches (or {"x", "y"} dicts) that counts its queries."""

    def __init__(self):
        self.queries = 0

    def bind(self, batch):
        X, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else batch
        X, y = np.asarray(X, float), np.asarray(y, float)

        def loss(w):
            self.queries += 1
            return float(np.mean((X @ w - y) ** 2))
        return loss


def _xy(n=20):
    r = np.random.default_rng(0)
    X = r.standard_normal((n, 3))
    return X, X @ np.array([1.0, -2.0, 0.5])


SETTINGS = dict(estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.05), rng=0, progress=False)


def _refused(batches, match, **kw):
    oracle = Counted()
    with pytest.raises(zo.ArgumentError, match=match) as err:
        zo.train(oracle, np.zeros(3), batches=batches, epochs=2, **SETTINGS, **kw)
    assert oracle.queries == 0  # refused before the run's first query
    return str(err.value)


def test_a_path_or_text_as_batches_is_refused_before_any_query():
    """A str is a Sequence: each character was bound as a batch, and the run failed in the oracle
    ("OracleError: oracle raised at bind(batch) ... not enough values to unpack")."""
    msg = _refused("data.npz", r"`batches` is a str \('data\.npz'\), which train would read as batches of one "
                               r"character each; load the data and pass zo\.Minibatches\(")
    assert "OracleError" not in msg
    _refused(b"xy", r"`batches` is a bytes \(b'xy'\)")


def test_an_empty_list_of_batches_is_refused_as_such():
    """It said only "`batches` gave no batch for epoch 0": not that the list given was empty."""
    _refused([], r"`batches` is empty: an epoch needs at least one batch, and this list holds none; pass one or more")
    _refused((), r"`batches` is empty: .*this tuple holds none")
    _refused(lambda epoch: [], r"`batches` gave no batch for epoch 0 \(`batches\(0\)` returned an empty list\); "
                               r"every epoch needs at least one")


def test_an_iterator_as_batches_is_refused_naming_what_epoch_two_would_get_and_the_fix():
    X, y = _xy()
    data = [(X[i:i + 4], y[i:i + 4]) for i in range(0, 20, 4)]
    for it in ((b for b in data), iter(data), itertools.cycle(data)):
        _refused(it, r"got \w+ \(an iterator cannot be replayed on resume\); it is read once, so every epoch after "
                     r"the first would have no batch: pass list\(it\) for the same batches every epoch, or a "
                     r"function epoch -> batches that returns a new iterator each call .*with steps_per_epoch")
    # the fixes it names run every epoch in full
    for fix in (list(iter(data)), lambda epoch: iter(data)):
        assert zo.train(Counted(), np.zeros(3), batches=fix, epochs=2, **SETTINGS).steps == 10
    r = zo.train(Counted(), np.zeros(3), batches=lambda epoch: itertools.cycle(data), steps_per_epoch=3, epochs=2,
                 **SETTINGS)
    assert r.steps == 6


def test_a_dict_an_array_and_a_frame_as_batches_are_refused_naming_their_fix():
    """Each was refused as "not a list of batches; pass [batch, ...]", which named no way from
    the object given (a dict of named fields, an array of batches, a DataFrame)."""
    X, y = _xy()
    _refused({"x": X, "y": y}, r"got dict \(a dict, such as one batch of named fields: pass \[d\] for that batch every "
                               r"step, or zo\.Minibatches\(tuple\(d\.values\(\)\), batch_size, seed=0\)")
    assert zo.train(Counted(), np.zeros(3), batches=[{"x": X, "y": y}], epochs=2, **SETTINGS).steps == 2
    stacked = np.stack([X[i:i + 4] for i in range(0, 20, 4)])  # (5 batches, 4 rows, 3)
    _refused(stacked, r"got ndarray \(an array of shape \(5, 4, 3\): pass list\(arr\) for one batch per entry of "
                      r"its first axis")
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "y": y})
    _refused(frame, r"got DataFrame \(a DataFrame, whose iteration gives its column names: pass "
                    r"zo\.Minibatches\(\(df\[features\], df\[target\]\), batch_size, seed=0\)")
    # the fix named runs
    mb = zo.Minibatches((frame[["a", "b", "c"]], frame["y"]), 8, seed=0)
    assert zo.train(Counted(), np.zeros(3), batches=mb, epochs=2, **SETTINGS).steps == 6


def test_an_iterable_dataset_loader_and_a_dataset_are_refused_naming_a_fix_they_can_take():
    """The refusal of a loader over an IterableDataset named
    zo.Minibatches(loader.dataset.tensors, ...), which has no `tensors`; a TensorDataset was
    "not a list of batches", with no word of its tensors."""
    torch = pytest.importorskip("torch")
    X, y = _xy()

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(zip(torch.tensor(X), torch.tensor(y)))

    loader = torch.utils.data.DataLoader(Stream(), batch_size=6)
    msg = _refused(loader, r"got DataLoader \(a DataLoader: .*an endless IterableDataset's: lambda epoch: loader, "
                           r"with steps_per_epoch\)")
    assert "dataset.tensors" not in msg
    ds = torch.utils.data.TensorDataset(torch.tensor(X), torch.tensor(y))  # named as "not a list of batches"
    _refused(ds, r"got TensorDataset \(a TensorDataset, whose items are samples, not batches: pass "
                 r"zo\.Minibatches\(dataset\.tensors, batch_size, seed=0\)\)")
    assert zo.train(Counted(), np.zeros(3), batches=zo.Minibatches(ds.tensors, 8, seed=0), epochs=2,
                    **SETTINGS).steps == 6
    assert zo.train(Counted(), np.zeros(3), batches=lambda epoch: loader, epochs=2, **SETTINGS).steps == 8


def _resumed_and_whole(tmp_path, make_batches, epochs=3, **kw):
    """An uninterrupted run, and one stopped after an epoch and resumed, each with fresh batches."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    whole = zo.train(Counted(), np.zeros(3), batches=make_batches(), epochs=epochs, **SETTINGS, **kw)
    ck = tmp_path / "run.npz"
    torch.manual_seed(0)
    zo.train(Counted(), np.zeros(3), batches=make_batches(), epochs=1, checkpoint=ck, **SETTINGS, **kw)
    torch.manual_seed(0)
    resumed = zo.train(Counted(), np.zeros(3), batches=make_batches(), epochs=epochs, resume=ck, **SETTINGS, **kw)
    return whole.params, resumed.params


def test_a_shuffling_loader_returned_for_every_epoch_warns_in_a_run_a_resume_replays(tmp_path):
    """`lambda epoch: loader` with shuffle=True: its order comes from torch's generator, which a
    resumed run starts afresh, so the resumed run trained on other batches than the run it
    continued, without a word. A run that checkpoints or resumes warns now; a loader made for
    each epoch, seeded by it, is replayed and not warned about."""
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset
    X, y = _xy()
    ds = TensorDataset(torch.tensor(X), torch.tensor(y))

    def one_loader(**kw):
        loader = DataLoader(ds, batch_size=6, shuffle=True, **kw)
        return lambda epoch: loader

    warned = r"`batches\(\d\)` returned a DataLoader that shuffles by {}.*: a resumed run does not replay that order"
    with pytest.warns(UserWarning, match=warned.format("torch's global generator")):
        whole, resumed = _resumed_and_whole(tmp_path / "global", one_loader)
    assert not np.array_equal(whole, resumed)  # what the warning is about
    with pytest.warns(UserWarning, match=warned.format("one generator that runs on from epoch to epoch")):
        whole, resumed = _resumed_and_whole(tmp_path / "own", lambda: one_loader(
            generator=torch.Generator().manual_seed(0)))
    assert not np.array_equal(whole, resumed)

    def per_epoch():  # the fix the warning names
        return lambda epoch: DataLoader(ds, batch_size=6, shuffle=True,
                                        generator=torch.Generator().manual_seed(epoch))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole, resumed = _resumed_and_whole(tmp_path / "seeded", per_epoch)
        assert np.array_equal(whole, resumed)
        # a run that neither checkpoints nor resumes is not warned about
        zo.train(Counted(), np.zeros(3), batches=one_loader(), epochs=2, **SETTINGS)


def test_one_endless_iterator_returned_for_every_epoch_warns_in_a_run_a_resume_replays(tmp_path):
    """`lambda epoch: stream` with steps_per_epoch: each epoch ran on from where the last stopped,
    and a resumed run, which makes the stream afresh, started it over: other batches, silently."""
    X, y = _xy()
    data = [(X[i:i + 4], y[i:i + 4]) for i in range(0, 20, 4)]

    def one_stream():
        stream = itertools.cycle(data)
        return lambda epoch: stream

    with pytest.warns(UserWarning, match=r"`batches\(2\)` returned the cycle it returned for the epoch before, "
                                         r"which runs on .*a resumed run makes it afresh and starts it over"):
        whole, resumed = _resumed_and_whole(tmp_path / "one", one_stream, steps_per_epoch=3)
    assert not np.array_equal(whole, resumed)
    ck = tmp_path / "ck.npz"  # warned in the run that writes the checkpoint too, at its second epoch
    with pytest.warns(UserWarning, match=r"`batches\(1\)` returned the cycle it returned for the epoch before"):
        zo.train(Counted(), np.zeros(3), batches=one_stream(), steps_per_epoch=3, epochs=2, checkpoint=ck, **SETTINGS)
    with warnings.catch_warnings():  # a stream made for each epoch: replayed, not warned about
        warnings.simplefilter("error")
        whole, resumed = _resumed_and_whole(
            tmp_path / "each", lambda: lambda epoch: itertools.islice(itertools.cycle(data), 3 * epoch, None),
            steps_per_epoch=3)
        assert np.array_equal(whole, resumed)
