"""A run under the interpreter's and the user's settings: warnings made errors (``python -W error``,
``PYTHONWARNINGS=error``, ``warnings.simplefilter("error")``), a logging handler that raises, a
closed ``sys.stderr``. Each is the user's choice or the user's machine; none may lose the steps a
run has finished, and a log line must not fail the run it reports on."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import zoracle as zo


def _quad(x):
    return float(((x - 1.0) ** 2).sum())


def _eval_named_loss(params):  # "loss" is a field of the epoch record: warned, stored as "eval_loss"
    return {"loss": float(params @ params)}


def _run(path, **kw):
    return zo.train(_quad, np.zeros(3), epochs=3, steps_per_epoch=4, optimizer=zo.sgd(0.1), checkpoint=path,
                    checkpoint_every=100, eval_fn=_eval_named_loss, progress=False, rng=0, **kw)


def test_a_warning_made_an_error_at_an_epochs_end_keeps_the_epochs_steps(tmp_path):
    """Under warnings-as-errors, a warning of zoracle's at epoch 0's end (here eval_fn's metric named
    "loss") raised with no checkpoint written: the epoch's 4 steps were lost (checkpoint_every=100 was
    not due). They are saved first, and a resume with the warning let through ends as the run would."""
    path = tmp_path / "run.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="named 'loss'"):
            _run(path)
    assert zo.load_checkpoint(path)[1]["step"] == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        resumed = _run(path, resume=True)
        whole = _run(tmp_path / "whole.npz")
    assert resumed.params.tobytes() == whole.params.tobytes()
    assert resumed.history.column("loss").tolist() == whole.history.column("loss").tolist()
    assert len(resumed.history.epochs) == 3


def test_the_flat_epoch_warning_made_an_error_keeps_the_epoch(tmp_path, caplog):
    """The "every gradient estimate of epoch 0 was 0 to within the loss's rounding" warning came before
    the epoch's save: with checkpoint_every="epoch", `python -W error` lost epoch 0. What is kept is
    logged."""
    path = tmp_path / "run.npz"
    flat = lambda x: float(np.floor(x.sum()))  # noqa: E731  (piecewise constant: each estimate is 0)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="zoracle"):
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="was 0 to within the loss's rounding"):
            zo.train(flat, np.full(4, 0.5), epochs=3, steps_per_epoch=4, checkpoint=path, progress=False, rng=0)
    assert zo.load_checkpoint(path)[1]["step"] == 4
    assert "stopped after 4 steps (UserWarning)" in caplog.text, caplog.text


class _Raises(logging.Handler):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def emit(self, record):  # a log shipper whose emit lets its error through (not handleError)
        self.calls += 1
        raise ConnectionError("log shipper down")


def test_a_logging_handler_that_raises_does_not_fail_the_run(tmp_path, capsys):
    """A handler raising on zoracle's records (each step's at DEBUG, each save's and epoch's at INFO)
    failed the run at its first record; the run goes on and returns what a run without it returns,
    the handler's traceback written to stderr as logging's own handlers do."""
    handler = _Raises()
    log = logging.getLogger("zoracle")
    old = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        got = zo.train(_quad, np.zeros(3), epochs=2, steps_per_epoch=3, checkpoint=tmp_path / "a.npz",
                       checkpoint_every=2, progress=False, rng=0)
    finally:
        log.removeHandler(handler)
        log.setLevel(old)
    want = zo.train(_quad, np.zeros(3), epochs=2, steps_per_epoch=3, checkpoint=tmp_path / "b.npz",
                    checkpoint_every=2, progress=False, rng=0)
    assert got.params.tobytes() == want.params.tobytes() and got.nfev == want.nfev
    assert handler.calls >= 6 + 2  # every step's record and every epoch's reached it
    assert zo.load_checkpoint(tmp_path / "a.npz")[1]["step"] == 6
    err = capsys.readouterr().err
    assert "ConnectionError: log shipper down" in err and "the run goes on" in err, err[-2000:]


def test_a_run_with_stderr_closed_and_a_progress_bar_returns_its_result(tmp_path):
    """``sys.stderr.close()`` (a daemon): the bar cannot draw, and its "the progress bar is off" log
    record went to logging's last resort, which wrote to the closed stderr and raised ValueError."""
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import zoracle as zo
        sys.stderr.close()
        res = zo.train(lambda x: float(((x - 1.0) ** 2).sum()), np.zeros(3), epochs=2, steps_per_epoch=3,
                       progress=True, rng=0, checkpoint={str(tmp_path / "c.npz")!r})
        print(res.nfev, zo.load_checkpoint({str(tmp_path / "c.npz")!r})[1]["step"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["24", "6"]


@pytest.mark.slow  # (a whole demo run: about 13 s)
def test_demo_json_with_no_stderr_prints_only_the_json():
    """Without a stderr (pythonw, ``2>&-``: ``sys.stderr`` is None) ``print(..., file=sys.stderr)``
    writes to stdout: ``zoracle demo --json``'s smoke-test note followed its JSON there, and a parser
    read "Extra data". Notes and progress lines have nowhere to go; stdout keeps the JSON alone."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    code = ("import sys\nsys.stderr = None\nfrom zoracle.cli import main\n"
            "main(['demo', '--quick', '--epochs', '1', '--methods', 'fo', '--json', '--seed', '0'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert list(got) == ["fo"] and got["fo"]["queries"] > 0


def test_process_workers_of_a_driver_with_stdout_and_stderr_closed_answer(tmp_path):
    """``python run.py >&- 2>&-`` (a daemon, a cron line): the driver's descriptors 1 and 2 are free,
    the socket pair to a worker took them, and the worker (which inherits 0-2) had its socket or the
    driver's end as its stdout and stderr: the oracle's print and warning went into the messages and
    the run hung. The run returns what it returns with the streams open."""
    code = textwrap.dedent(f"""
        import warnings
        import numpy as np
        import zoracle as zo
        from zoracle.executors import JoblibExecutor

        def loss(x):
            print("oracle: a line on stdout")
            warnings.warn("oracle: a warning on stderr", RuntimeWarning)
            return float(((x - 1.0) ** 2).sum())

        with JoblibExecutor(2) as ex:
            res = zo.train(loss, np.zeros(6), epochs=2, steps_per_epoch=2, progress=True, rng=0, executor=ex)
        with open({str(tmp_path / "out.txt")!r}, "w") as f:
            f.write(f"{{res.nfev}} {{res.params.tobytes().hex()}}")
    """)
    subprocess.run(["sh", "-c", 'exec "$0" "$@" >&- 2>&-', sys.executable, "-c", code], timeout=120, check=True)
    nfev, got = (tmp_path / "out.txt").read_text().split()
    want = zo.train(_quad, np.zeros(6), epochs=2, steps_per_epoch=2, progress=False, rng=0)
    assert int(nfev) == want.nfev and got == want.params.tobytes().hex()
