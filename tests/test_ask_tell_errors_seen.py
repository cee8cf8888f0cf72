"""train's refusals and warnings as a zo.AskTell caller meets them: the run is train's, in a thread, on
losses the caller told, and the caller wrote no oracle and called no train. Messages read the context
(zoracle._errors.TOLD, set in AskTell's run thread and its tell()): they said "zo.train(oracle, ...)" for
a new run from a checkpoint, "the oracle's losses ...; return the loss unrounded", "queries ...
returned the same loss", "two calls ..., and check the oracle with zoracle.testing.check_oracle",
"return a mean", "leave `batches` out for the oracle's own data", "run train in a thread there"."""

import numpy as np
import pytest

import zoracle as zo
from zoracle import _estimators as est_module


def _quadratic(x) -> float:
    return float(((x - 3) ** 2).sum())


def _answered(answer=_quadratic, params=None, **kw):
    """An AskTell run answered by ``answer`` until it ends (its error raised)."""
    kw.setdefault("progress", False)
    opt = zo.AskTell(np.zeros(3) if params is None else params, **kw)
    try:
        while not opt.done:
            opt.tell([answer(x) for x in opt.ask()])
    finally:
        opt.close()
    return opt


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "run.npz"
    _answered(checkpoint=path, epochs=2)
    return path


@pytest.mark.parametrize("other", [dict(optimizer=zo.adam(0.1)), dict(estimator=zo.RGE(directions=3)),
                                   dict(params=np.zeros(4))])
def test_a_resume_with_other_settings_names_a_new_asktell(checkpoint, other):
    with pytest.raises(zo.CheckpointError) as info:
        _answered(checkpoint=checkpoint, resume=True, epochs=3, **other)
    msg = str(info.value)
    assert f"zo.AskTell(zo.load_checkpoint({str(checkpoint)!r})[0]['params'], ..., checkpoint='new.npz')" in msg
    assert "zo.train(oracle" not in msg


def test_train_still_names_train_for_a_new_run(checkpoint):
    with pytest.raises(zo.CheckpointError, match=r"zo\.train\(oracle, zo\.load_checkpoint"):
        zo.train(_quadratic, np.zeros(3), checkpoint=checkpoint, resume=True, epochs=3, optimizer=zo.adam(0.1),
                 progress=False)


def test_a_file_not_a_checkpoint_names_asktell_among_the_writers(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_text("junk")
    with pytest.raises(zo.CheckpointError, match=r"a checkpoint that zo\.train, zo\.AskTell or save_checkpoint wrote"):
        _answered(checkpoint=junk, resume=True)


def test_rounded_losses_told_are_warned_of_as_told(monkeypatch):
    monkeypatch.setattr(est_module, "_COARSE_WARNED", set())  # (warned once per oracle)
    rng = np.random.default_rng(0)
    A, y, x0 = rng.standard_normal((40, 8)), rng.standard_normal(40), rng.standard_normal(8)
    with pytest.warns(UserWarning, match=r"the losses told are multiples of 0\.001 .*; tell the loss unrounded") as got:
        _answered(lambda x: round(float(np.mean((A @ x - y) ** 2)), 3), params=x0)
    assert not any("oracle" in str(w.message) for w in got)


def test_losses_told_all_the_same_are_warned_of_as_told():
    with pytest.warns(UserWarning, match=r"queries at \+-mu = 0\.005 were told the same loss"):
        _answered(lambda x: 1.0)


def test_a_diverged_run_on_noisy_losses_speaks_of_losses_told():
    noise = iter(np.random.default_rng(1).standard_normal(10_000))
    with pytest.raises(zo.ArgumentError, match=r"training diverged") as info:
        _answered(lambda x: _quadratic(x) * (1 + 1e-2 * next(noise)), optimizer=zo.sgd(10.0), epochs=40)
    msg = str(info.value)
    assert "The loss is not deterministic: two losses told at the same params" in msg
    assert "oracle" not in msg and "two calls" not in msg


def test_zo_grasps_long_second_step_asks_to_tell_a_mean():
    with pytest.warns(RuntimeWarning, match=r"ZO-GraSP's second point .*; tell a mean rather than a sum"):
        _answered(lambda x: 1000 * _quadratic(x), params=np.ones(20), sparsity=0.5,
                  blocks=[slice(0, 10), slice(10, 20)])  # (a loss 1000 times a mean's: a long step)


def test_empty_batches_are_refused_without_an_oracle():
    with pytest.raises(zo.ArgumentError, match=r"leave `batches` out for points that need no data$"):
        _answered(batches=[])


def test_text_batches_are_refused_without_train():
    with pytest.raises(zo.ArgumentError, match=r"^`batches` is a str \('abc'\), which would be read as batches"):
        _answered(batches="abc")


def test_an_async_callback_is_refused_with_a_fix_for_asktells_thread():
    async def cb(event, record, params):
        return None

    with pytest.raises(zo.ArgumentError) as info:
        _answered(callbacks=[cb])
    msg = str(info.value)
    assert "the run calls it synchronously" in msg and "asyncio.run works there" in msg
    assert "zo.train" not in msg and "train calls" not in msg
