"""Review of the long-run, file-system and thread changes (h331): findings pinned by tests."""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import zoracle as zo


def _quadratic(x):
    return float(((x - 1.0) ** 2).sum())


def test_the_rewrite_warning_counts_a_budgets_steps_not_its_queries(tmp_path, monkeypatch):
    """``epochs=10**6, max_queries=N`` (docs/training.md's way to run to a budget) with a checkpoint:
    a 100-parameter CGE step takes 101 queries, so 200,000 queries are 1,981 steps whose saves write
    0.55 GB, and the warning said 6,000 GB (it took each query for a step). Here at a lowered limit:
    2,000 queries are 19 steps (about 60 kB of saves), not 2,000 (600 MB)."""
    from zoracle import _cadence

    monkeypatch.setattr(_cadence, "REWRITE_WARN_BYTES", 1e6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = zo.train(_quadratic, np.zeros(100), epochs=10**6, max_queries=2_000, estimator=zo.CGE(mu=1e-3),
                       optimizer=zo.sgd(0.01), rng=0, progress=False, checkpoint=tmp_path / "run.npz")
    assert 0 < len(res.history.steps) <= 2_000 // 100
    with pytest.raises(UserWarning, match="rewrites the whole history"):  # still warned where the steps are many
        zo.train(_quadratic, np.zeros(3), epochs=10**6, max_queries=40_000, rng=0, progress=False,
                 checkpoint=tmp_path / "b.npz")


@pytest.mark.parametrize("estimator, sparsity", [(zo.CGE(), None), (zo.CGE(scheme="central"), None),
                                                 (zo.CGE(), 0.5), (zo.RGE(directions=4), None),
                                                 (zo.RGE(directions=3, scheme="central"), None), (zo.SNES(), None)])
def test_the_queries_counted_for_a_step_are_at_most_what_it_takes(estimator, sparsity):
    """The bound on a budget's steps stays a bound: a step never takes fewer queries than counted."""
    from zoracle._cadence import least_step_queries

    res = zo.train(_quadratic, np.zeros(12), epochs=3, estimator=estimator, sparsity=sparsity, rng=0,
                   progress=False, optimizer=zo.sgd(0.01))
    least = least_step_queries(estimator, 12, sparsity is not None)
    assert least >= 1 and all(rec["nfev"] >= least for rec in res.history.steps)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_line_beside_another_runs_bar_runs_its_handlers_outside_tqdms_lock(monkeypatch):
    """Two runs in threads on one terminal, logging through a handler that writes with tqdm.write
    (tqdm.contrib.logging's way): run 0's epoch line held tqdm's lock while its handler waited for
    the handler's lock, which run 1's eval_fn held, logging, while it waited for tqdm's: both hung
    for good. The events below force that order; each run ends now."""
    from tqdm import tqdm

    term = _Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    user_in_emit, zoracle_logging = threading.Event(), threading.Event()

    class TqdmWrite(logging.Handler):
        def filter(self, record):  # (called before the handler's lock is taken)
            if record.name.startswith("zoracle") and threading.current_thread().name == "run0":
                user_in_emit.wait(timeout=30)
                zoracle_logging.set()
            return True

        def emit(self, record):
            if record.name == "user":
                user_in_emit.set()
                zoracle_logging.wait(timeout=30)
            tqdm.write(self.format(record), file=term)

    handler, zlog = TqdmWrite(), logging.getLogger("zoracle")
    together = threading.Barrier(2)
    level = zlog.level
    zlog.setLevel(logging.INFO)  # (setLevel: it clears the logger's cache of isEnabledFor)
    zlog.addHandler(handler)
    logging.getLogger("user").addHandler(handler)
    try:
        def run(k):
            def eval_fn(params):
                together.wait(timeout=30)  # both bars drawn
                if k == 1:
                    logging.getLogger("user").warning("eval of run 1")
                return 0.0

            zo.train(_quadratic, np.ones(3), epochs=1, eval_fn=eval_fn, progress=True)

        threads = [threading.Thread(target=run, args=(k,), name=f"run{k}", daemon=True) for k in (0, 1)]
        for t in threads:
            t.start()
        end = time.monotonic() + 120  # (a bound for a hang, not a timing)
        for t in threads:
            t.join(timeout=max(0.0, end - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "the runs hung"
    finally:
        zlog.setLevel(level)
        zlog.removeHandler(handler)
        logging.getLogger("user").removeHandler(handler)
    assert zoracle_logging.is_set() and "eval of run 1" in term.getvalue()  # (the order forced was taken)


def test_a_held_line_whose_write_fails_leaves_no_wrapped_stream_in_sys(monkeypatch):
    """Two runs in threads: run 1's eval_fn prints a line without its newline (held, the other bar
    being drawn), and its write at the block's end fails (a closed pipe). The error went up, and
    the wrapped streams stayed in sys.stdout for good (with a stale count of blocks for the thread)."""
    from zoracle._bar import _IN_BLOCK

    class Pipe(_Terminal):
        def write(self, s):
            if "partial" in s:
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(s)

    out, term = Pipe(), _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", term)
    drawn, printed, run0_done, errors = threading.Barrier(2), threading.Barrier(2), threading.Event(), {}

    def run(k):
        def eval_fn(params):
            drawn.wait(timeout=30)  # both bars drawn
            if k == 1:
                print("partial", end="")
            printed.wait(timeout=30)
            if k == 1:
                assert run0_done.wait(timeout=60)  # run 1's block ends last
            return 0.0

        try:
            zo.train(_quadratic, np.ones(3), epochs=1, eval_fn=eval_fn, progress=True)
        except BaseException as exc:
            errors[k] = exc
        finally:
            if k == 0:
                run0_done.set()

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sys.stdout is out and sys.stderr is term, (sys.stdout, sys.stderr)
    assert not _IN_BLOCK
    assert list(errors) == [1] and isinstance(errors[1], BrokenPipeError)


def test_a_runs_checkpoints_are_the_archive_np_savez_writes(tmp_path, monkeypatch):
    """The save writes its archive itself now (the history from its buffer, h326): each file of a
    run, resumed, with eval metrics (NaN among them) and a non-ASCII name, is byte for byte the one
    ``np.savez`` writes of the same arrays and header, the header ``json.dumps``'s text of itself."""
    import json
    import time as time_module
    import zipfile

    from zoracle import _checkpoint

    monkeypatch.setattr(time_module, "time", lambda: 1.7e9)  # (the members' dates: one time for both)
    files = []
    real = _checkpoint._write_npz

    def kept(f, arrays, header):
        real(f, arrays, header)
        f.flush()
        with open(f.name, "rb") as g:
            files.append((g.read(), {k: np.array(v) for k, v in arrays.items()}))

    monkeypatch.setattr(_checkpoint, "_write_npz", kept)
    path = tmp_path / "r\u00e9sum\u00e9.npz"
    kw = dict(estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.05), rng=0, progress=False, checkpoint=path,
              eval_fn=lambda p: {"acc\u00e9": float(p[0]), "nan": float("nan")}, steps_per_epoch=3)
    zo.train(_quadratic, np.zeros(4), epochs=2, checkpoint_every=1, **kw)
    zo.train(_quadratic, np.zeros(4), epochs=4, checkpoint_every=2, resume=path, **kw)
    assert len(files) >= 8
    for data, arrays in files:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            meta = zf.read("__meta__.npy")
        text = bytes(np.load(io.BytesIO(meta)))
        header = json.loads(text)
        assert text == json.dumps(header, sort_keys=True).encode("utf-8")
        want = io.BytesIO()
        np.savez(want, **arrays, __meta__=np.frombuffer(text, dtype=np.uint8))
        assert data == want.getvalue()
    assert len(header["history"]["epochs"]) == 4 and "acc\u00e9" in header["history"]["epochs"][-1]
