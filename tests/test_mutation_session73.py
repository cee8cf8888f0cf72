"""Tests that kill mutants of session 73's code which survived the feature's own tests (a hand-written
mutation run: each test fails on the one-line mutant it names and passes on the code as it is)."""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import pytest

import zoracle as zo

X0 = np.linspace(-1.0, 1.0, 6)
SETTINGS = dict(epochs=2, optimizer=zo.sgd(0.05), progress=False, rng=0)


def f(x):
    return float(((x - 3) ** 2).sum() + np.sin(3 * x).sum())


def asked():
    opt = zo.AskTell(X0, **SETTINGS)
    X = opt.ask()
    return opt, X, [f(x) for x in X]


def test_a_column_of_losses_given_first_is_read_as_swapped_arguments():
    """tell(L, X) with L a (n, 1) column: the same swap as with a (n,) vector (a column dropped from
    the swap's shapes said only that the shapes differ)."""
    opt, X, L = asked()
    with pytest.raises(zo.ArgumentError, match=r"as X \(shape \(7, 1\)\), .*the points come first, then their "
                                               r"losses: tell\(X, losses\)"):
        opt.tell(np.array(L)[:, None], X)
    opt.tell(L)
    opt.close()


def test_a_changed_row_names_its_first_coordinate_that_differs():
    opt, X, L = asked()
    changed = X.copy()
    changed[3, 1] += 1.0
    changed[3, 4] += 1.0
    with pytest.raises(zo.ArgumentError, match=r"row 3 of X is not row 3 .*\(coordinate 1 is "):
        opt.tell(changed, L)
    opt.tell(X, L)
    opt.close()


def test_boolean_points_are_no_array_of_numbers():
    opt, X, L = asked()
    with pytest.raises(zo.ArgumentError, match=r"as X \(no array of numbers\)"):
        opt.tell(X > 0, L)
    opt.tell(L)
    opt.close()


def test_a_max_points_beyond_any_array_allocates_only_the_estimates_rows():
    """max_points larger than an estimate: one ask of the estimate's rows (an array of max_points rows
    was allocated: too big for any machine here)."""
    opt = zo.AskTell(X0, max_points=2**62, **SETTINGS)
    while not opt.done:
        X = opt.ask()
        assert X.shape == (7, 6)
        opt.tell([f(x) for x in X])
    want = zo.train(f, X0, **SETTINGS)
    assert np.array_equal(opt.result.params, want.params)


NARROW = dict(n=37, total=100, elapsed=3.0, prefix="epoch 2/5: ", postfix="loss=0.42, lr=0.01")


def test_a_terminal_exactly_as_wide_as_tqdms_line_keeps_tqdms_line():
    """tqdm's own line (its graphic 10 cells, as where no width is known) that fits the terminal to the
    column is drawn as tqdm draws it; a column less, the graphic goes and the numbers stay, the
    description's colon written once."""
    import tqdm
    from tqdm.utils import disp_len

    from zoracle._bar import _fitted_bar

    fitted = _fitted_bar(tqdm.tqdm).format_meter
    width = disp_len(tqdm.tqdm.format_meter(**NARROW, ncols=None))
    assert fitted(**NARROW, ncols=width) == tqdm.tqdm.format_meter(**NARROW, ncols=width)
    assert fitted(**NARROW, ncols=width - 1).startswith("epoch 2/5: 37% 37/100, loss=0.42, lr=0.01 [")


def test_term_dumb_names_the_terminal_on_the_streams_descriptor(monkeypatch):
    """TERM=dumb describes the terminal: a stream that says it is a TTY but writes to a pipe is no
    dumb terminal (it redraws, as it says it does)."""
    from zoracle._bar import _redraws

    read, write = os.pipe()
    try:
        class SaysTTY:
            def isatty(self):
                return True

            def fileno(self):
                return write

        monkeypatch.setenv("TERM", "dumb")
        assert _redraws(SaysTTY())
    finally:
        os.close(read)
        os.close(write)


@pytest.mark.parametrize("total", [None, 0])
def test_a_bar_without_a_total_is_drawn_as_tqdm_draws_it(total):
    """No total (or 0): no step of steps to keep, the line is tqdm's own at any width."""
    import tqdm

    from zoracle._bar import _fitted_bar

    kw = dict(n=5, total=total, elapsed=1.0, prefix="train", ncols=20)
    assert _fitted_bar(tqdm.tqdm).format_meter(**kw) == tqdm.tqdm.format_meter(**kw)


@pytest.mark.skipif(os.name != "posix", reason="a holder of this machine is told by its pid on POSIX")
def test_a_lock_file_naming_this_process_after_its_own_save_is_removed_at_once(tmp_path, monkeypatch):
    """A save lets go of its lock file as held by none of this process's threads: a file naming this
    process found at a later save (an earlier process of this pid's, killed mid-save) is no saver's of
    this process, removed at once, not waited for."""
    from zoracle import _checkpoint

    monkeypatch.setattr(_checkpoint, "LOCK_WAIT_S", 0.5)
    path = tmp_path / "run.npz"
    lock = path.parent / (_checkpoint._tmp_prefix(str(path)) + "lock")
    with _checkpoint.writer_lock(str(path)) as held:
        assert held
    for _ in range(2):
        lock.write_text(f"{_checkpoint._host_tag()} {os.getpid()}\n")
        with _checkpoint.writer_lock(str(path)) as held:  # (a wait would end in a warning: an error here)
            assert held
        assert not lock.exists()


def test_central_cge_divides_by_the_representable_steps_of_both_signs():
    """float32 inputs: x + mu and x - mu round by different amounts; the difference quotient divides by
    the two steps as they were taken (a linear fn's gradient exactly 1), not by twice the + step."""
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import blackbox

    x = torch.tensor([[1.0], [3.0], [0.7], [100.1]], dtype=torch.float32, requires_grad=True)
    blackbox(lambda z: z.reshape(z.shape[0], -1).sum(1), zo.CGE(mu=1e-3, scheme="central"))(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_central_cge_runs_both_signs_in_one_call_where_that_makes_as_many_calls(monkeypatch):
    """Room for 2 copies of the batch: a sign at a time is 2 coordinates a pass, 2 calls a pass; both
    signs in a call, 1 coordinate a pass: as many calls, so both signs of a coordinate share each."""
    torch = pytest.importorskip("torch")
    from zoracle.adapters import _torch_blackbox as bb
    from zoracle.adapters.torch import blackbox

    calls = []
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    base = x.detach().reshape(2, -1)

    def fn(z):
        calls.append((z.reshape(z.shape[0], -1) != base.repeat(z.shape[0] // 2, 1)).nonzero()[:, 1].tolist())
        return (z.reshape(z.shape[0], -1) ** 3).sum(1)

    monkeypatch.setattr(bb, "COPY_BYTES", 2 * 2 * 192 * 8)
    blackbox(fn, zo.CGE(mu=1e-5, scheme="central"))(x).sum().backward()
    assert len(calls) == 1 + 192
    assert all(sorted(set(cols)) == [j] for j, cols in enumerate(calls[1:]))  # coordinate j at +mu and -mu


@pytest.mark.parametrize("distribution", ["gaussian", "sphere", "rademacher"])
def test_central_rge_on_a_linear_fn_is_the_forward_estimate(distribution):
    """On a linear fn both schemes' difference quotients are <a, u> for the same directions (one rng):
    the central one's +mu and -mu rows, run in one call, give the forward estimate (to rounding)."""
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import blackbox

    a = torch.linspace(-1.0, 2.0, 12, dtype=torch.float64)
    x0 = torch.rand(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = []
    for scheme in ("forward", "central"):
        x = x0.clone().requires_grad_()
        est = zo.RGE(mu=1e-4, directions=6, distribution=distribution, scheme=scheme)
        blackbox(lambda z: z @ a, est, rng=5)(x).sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().max() > 0.1
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-9)


def _shared_lock_file(path):
    from zoracle import _checkpoint

    return path.parent / (_checkpoint._tmp_prefix(str(path)) + "lock")


def _replaced(lock, text):
    """``lock`` now another saver's file: a new inode (made before the old one goes, so never its
    number again), whatever the file system's clock granularity."""
    new = lock.with_name(lock.name + ".new")
    new.write_text(text)
    new.replace(lock)


def test_a_lock_another_machine_takes_anew_is_waited_for_afresh(tmp_path, monkeypatch):
    """Another machine's saver lets go and a third takes the lock (another file): its wait starts
    then, a full LOCK_WAIT_S, not what was left of the first holder's. A clock of the test's own: the
    waiter's sleeps move it on."""
    from zoracle import _checkpoint

    monkeypatch.setattr(_checkpoint, "LOCK_WAIT_S", 10.0)
    path = tmp_path / "run.npz"
    lock = _shared_lock_file(path)
    lock.write_text("0badc0de 111\n")
    clock = [0.0]

    def sleep(s):
        clock[0] += s
        if clock[0] >= 7.0 and "111" in lock.read_text():  # the first holder lets go, another takes it
            _replaced(lock, "0badc0de 222\n")

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", sleep)
    with pytest.warns(UserWarning, match=r"a save by 0badc0de, pid 222\) stayed 10 s; taken"):
        with _checkpoint._shared_lock(str(path)) as held:
            taken_at = clock[0]
    assert held and taken_at >= 17.0
    assert not lock.exists()


def test_a_saver_whose_lock_was_taken_from_it_leaves_the_new_holders_file(tmp_path):
    """A save that outlived LOCK_WAIT_S had its lock taken as stale by another machine's saver: letting
    go, it removes only its own file, not the other saver's."""
    from zoracle import _checkpoint

    path = tmp_path / "run.npz"
    lock = _shared_lock_file(path)
    with _checkpoint._shared_lock(str(path)) as held:
        assert held
        _replaced(lock, "0badc0de 333\n")
    assert lock.read_text() == "0badc0de 333\n"


def test_an_ask_of_exactly_the_bound_is_not_warned_of(monkeypatch):
    """ASK_WARN_BYTES is the most an ask may take unwarned: one of exactly that many bytes is quiet
    (a warning here is an error), one byte less of bound warns."""
    from zoracle import _ask_tell_run as _ask_tell

    def run():
        opt = zo.AskTell(X0, **SETTINGS)
        while not opt.done:
            X = opt.ask()
            opt.tell([f(x) for x in X])

    monkeypatch.setattr(_ask_tell, "ASK_WARN_BYTES", 7 * 6 * 8)  # forward CGE at d = 6: 7 rows of 6 float64
    run()
    monkeypatch.setattr(_ask_tell, "ASK_WARN_BYTES", 7 * 6 * 8 - 1)
    with pytest.warns(UserWarning, match=r"asks its 7 points of d = 6 at once"):
        run()


def test_a_warning_of_a_closed_run_is_issued_in_its_thread_not_kept():
    """A run's warning is kept for the caller's next tell; once the AskTell is closed no tell comes,
    so a warning then (its close's save) is issued where it is made rather than kept unseen."""
    from zoracle._ask_tell_run import _Channel
    from zoracle._errors import HANDED_OVER, warn

    ch = _Channel()
    mark = HANDED_OVER.set(ch.hand)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warn("kept for the caller")  # (issued here, an error)
        assert ch.warnings == [("kept for the caller", UserWarning)]
        ch.close()
        with pytest.warns(UserWarning, match="after the close"):
            warn("after the close")
        assert len(ch.warnings) == 1
    finally:
        HANDED_OVER.reset(mark)
