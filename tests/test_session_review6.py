"""Review of the session's changes (h351): what they changed where they should not have."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo
import zoracle._retrying as _retrying


@pytest.fixture
def waits(monkeypatch):
    got = []
    monkeypatch.setattr(_retrying.time, "sleep", got.append)
    return got


def _failing(n):
    left = [TimeoutError("slow")] * n

    def oracle(x):
        if left:
            raise left.pop(0)
        return 1.0

    return oracle


def test_a_backoff_longer_than_the_default_max_delay_is_still_waited(waits):
    """retrying(f, backoff=120) waited 120 s, then 240 s, before max_delay existed; its default of
    60 s silently cut the wait the call names to half. The default bounds the doubling only."""
    wrapped = zo.retrying(_failing(2), backoff=120)
    wrapped(np.zeros(2))
    assert waits == [120.0, 120.0]
    assert wrapped.max_delay == 120.0
    waits.clear()
    zo.retrying(_failing(4), tries=5, backoff=20)(np.zeros(2))  # the default 60 s cap as before
    assert waits == [20.0, 40.0, 60.0, 60.0]
    waits.clear()
    zo.retrying(_failing(2), backoff=120, max_delay=30)(np.zeros(2))  # an explicit cap is the caller's
    assert waits == [30.0, 30.0]


class _Busy(Exception):
    def __init__(self, seconds):
        super().__init__(f"busy, retry after {seconds} s")
        self.retry_after = seconds


def _raising(*errors):
    left = list(errors)

    def oracle(x):
        if left:
            raise left.pop(0)
        return 1.0

    return oracle


def test_the_exhausted_advice_names_what_would_have_waited_longer(waits):
    """Every try failed: "raise `tries` or `backoff`" was the advice even where the waits were a
    Retry-After's cut to max_delay, which no backoff lengthens (the service asked for 120 s and got
    60 s twice): raising backoff changed nothing."""
    on = (_Busy, TimeoutError)
    with pytest.raises(zo.RetriesExhausted) as info:
        zo.retrying(_raising(*[_Busy(120)] * 3), on=on, backoff=5)(np.zeros(2))
    assert waits == [60.0, 60.0]
    assert str(info.value).endswith("raise `tries` or `max_delay` if the service recovers more slowly")
    # the advice works: a max_delay that holds the service's wait lets the call through
    waits.clear()
    assert zo.retrying(_raising(_Busy(120)), on=on, tries=2, max_delay=120)(np.zeros(2)) == 1.0
    assert waits == [120.0]
    # backoff waits (uncut): backoff is the knob, as before
    with pytest.raises(zo.RetriesExhausted, match=r"raise `tries` or `backoff` if the service"):
        zo.retrying(_raising(*[TimeoutError()] * 3), backoff=1)(np.zeros(2))
    # backoff waits cut to max_delay: raising backoff alone does not lengthen them
    with pytest.raises(zo.RetriesExhausted, match=r"raise `tries`, `backoff` or `max_delay` if"):
        zo.retrying(_raising(*[TimeoutError()] * 4), tries=4, backoff=1, max_delay=1.5)(np.zeros(2))


def test_an_infinite_backoff_is_refused_when_wrapping_not_at_the_first_failure(waits):
    """backoff=math.inf passed the check and failed at the first transient error, mid-run, with
    OverflowError from time.sleep (the 60 s default cap hid it; a cap that follows backoff does not)."""
    import math

    with pytest.raises(zo.ArgumentError, match=r"`backoff` must be a number of seconds >= 0 \(finite"):
        zo.retrying(_failing(1), backoff=math.inf)
    assert zo.retrying(_failing(1), backoff=1, max_delay=math.inf)(np.zeros(2)) == 1.0  # an uncapped wait
    assert waits == [1.0]


def test_a_single_try_is_told_to_raise_tries_alone(waits):
    with pytest.raises(zo.RetriesExhausted, match=r"raise `tries` if the service recovers more slowly"):
        zo.retrying(_failing(1), tries=1)(np.zeros(2))
    assert waits == []
