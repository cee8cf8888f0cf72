"""The streams ``train`` puts in ``sys.stdout`` / ``sys.stderr`` beside a drawn progress bar, for
runs in threads: since each step runs beside the bar (what a loss prints starts a line of its own),
a block that ended under another run's, entered after it, stayed in the chain of streams."""

import io
import sys
import threading
import time

import numpy as np
import tqdm

import zoracle as zo
from zoracle._bar import _Beside, _beside


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _depth(stream) -> int:
    n = 0
    while isinstance(stream, _Beside):
        n, stream = n + 1, stream._stream
    return n


def test_blocks_of_two_bars_that_end_in_turn_leave_no_chain_of_streams(monkeypatch):
    """Two runs' steps, each a block beside its bar, each ending while the other's (entered after it)
    is open: every step left a wrapper behind, so after 600 steps a print went through 1,200 of them
    (RecursionError: a loss that printed ended both runs) and each write paid for all of them."""
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    bars = [tqdm.tqdm(total=10, file=term, leave=False) for _ in range(2)]
    try:
        a = _beside(bars[0], True)
        a.__enter__()
        deepest = 0
        for _ in range(600):
            b = _beside(bars[1], True)
            b.__enter__()
            a.__exit__(None, None, None)
            a = _beside(bars[0], True)
            a.__enter__()
            b.__exit__(None, None, None)
            deepest = max(deepest, _depth(sys.stdout))
        print("LOSS-SAYS")  # (inside a's block)
    finally:
        a.__exit__(None, None, None)
        for bar in bars:
            bar.close()
    assert deepest <= 2  # the blocks open at once, no more
    assert sys.stdout is term and sys.stderr is term
    assert "LOSS-SAYS\n" in term.getvalue()


def test_two_runs_in_threads_with_bars_and_a_loss_that_prints(monkeypatch):
    """Two ``train`` runs in threads of one process, their bars on one terminal, a loss that prints
    late in the run: it went through a wrapper a step (RecursionError, both runs ended)."""
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    deepest, errors = [0], []

    def loss(x):
        deepest[0] = max(deepest[0], _depth(sys.stdout))
        time.sleep(0.0002)  # (the other run's step starts meanwhile)
        if deepest[0] > 8:
            print("deep")
        return float(x @ x)

    def run():
        try:
            zo.train(loss, np.ones(3), epochs=1, steps_per_epoch=250, estimator=zo.CGE(), optimizer=zo.sgd(0.01),
                     rng=0)
        except BaseException as exc:  # pragma: no cover (what the test reports)
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert deepest[0] <= 4, deepest[0]  # each run's step block (and a callback's inside it), no more
    assert sys.stdout is term and sys.stderr is term
