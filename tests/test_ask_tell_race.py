"""zoracle.AskTell told the same points from two threads: the check that refuses the second tell and
the hand-over of the first's losses are one step, so no tell slips in between."""

from __future__ import annotations

import sys
import threading

import numpy as np

import zoracle as zo
import zoracle._ask_tell as ask_tell

X0 = np.linspace(-1.0, 1.0, 12)


def f(x):
    return float(((x - 3) ** 2).sum() + np.sin(3 * x).sum())


def test_a_tell_held_between_its_check_and_its_hand_over_does_not_answer_the_next_points(monkeypatch):
    held, go_on = threading.Event(), threading.Event()
    plain = threading.Condition

    class Pausing(plain):
        """Holds the thread named "late" after it first lets go of the channel's lock in ``turn``."""

        def __exit__(self, *exc):
            out = super().__exit__(*exc)
            if (threading.current_thread().name == "late" and not held.is_set()
                    and sys._getframe(1).f_code.co_name == "turn"):
                held.set()
                go_on.wait(60)
            return out

    made = ask_tell._Channel.__init__

    def init(channel, *args, **kwargs):
        made(channel, *args, **kwargs)
        channel.cond = Pausing()

    monkeypatch.setattr(ask_tell._Channel, "__init__", init)
    opt = zo.AskTell(X0, epochs=3, progress=False, rng=0)
    assert isinstance(opt._channel.cond, Pausing)
    losses = [f(x) for x in opt.ask()]
    errors = []

    def tell():
        try:
            opt.tell(losses)
        except zo.ZoracleError as exc:
            errors.append(exc)

    late = threading.Thread(target=tell, name="late")
    late.start()
    assert held.wait(60)
    tell()  # the same points' losses from this thread, while the other is held
    go_on.set()
    late.join(60)
    assert not late.is_alive()
    # one of the two is refused; the other answered the asked points, and no more
    assert len(errors) == 1, "both tells of the same points were taken"
    while not opt.done:
        opt.tell([f(x) for x in opt.ask()])
    assert np.array_equal(opt.result.params, zo.train(f, X0, epochs=3, progress=False, rng=0).params)
