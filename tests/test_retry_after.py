"""``zo.retrying`` waits what a transient error's ``Retry-After`` says (an attribute, urllib's
``HTTPError.headers``, a requests-style ``exc.response.headers``), cut to ``max_delay``, which
also stops the doubled ``backoff``; ``jitter`` (off by default) spreads the backoff waits, and a Retry-After wait upwards only.
Waits are recorded through a patched ``time.sleep``: no test waits."""

from __future__ import annotations

import datetime
import email.message
import email.utils
import logging
import pickle
import random
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import zoracle as zo
import zoracle._retrying as _retrying


@pytest.fixture
def waits(monkeypatch):
    got = []
    monkeypatch.setattr(_retrying.time, "sleep", got.append)
    return got


def _failing(*errors):
    """An oracle raising ``errors`` in turn, then answering 1.0."""
    left = list(errors)

    def oracle(x):
        if left:
            raise left.pop(0)
        return 1.0

    return oracle


def _http_error(code=429, **headers):
    message = email.message.Message()
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    return urllib.error.HTTPError("http://127.0.0.1/", code, "Too Many Requests", message, None)


def _is_http(exc):
    return isinstance(exc, urllib.error.HTTPError) or isinstance(exc, ConnectionError)


class _Busy(BaseHTTPRequestHandler):
    """127.0.0.1: the first request answers 429 with Retry-After: 3, every later one the loss."""

    count = 0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).count += 1
        body = b"" if type(self).count == 1 else b"2.5"
        self.send_response(429 if type(self).count == 1 else 200)
        if type(self).count == 1:
            self.send_header("Retry-After", "3")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_429_from_an_http_service_waits_its_retry_after_not_the_backoff(waits, caplog):
    _Busy.count = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"

    def remote(x):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=30) as answer:
                return float(answer.read())
        except urllib.error.HTTPError as exc:
            exc.close()
            raise

    try:
        with caplog.at_level(logging.INFO, logger="zoracle"):
            assert zo.retrying(remote, on=_is_http)(np.zeros(2)) == 2.5
    finally:
        server.shutdown()
        server.server_close()
    assert waits == [3.0] and _Busy.count == 2
    assert "asking again in 3 s (its Retry-After: 3 s)" in caplog.text


@pytest.mark.parametrize("error, wait", [
    (_http_error(Retry_After="7"), 7.0),                 # urllib's HTTPError: seconds
    (_http_error(Retry_After=" 0 "), 0.0),               # "come back now"
    (_http_error(Retry_After="600"), 60.0),              # cut to the default max_delay
    (_http_error(Retry_After="soon"), 0.5),              # not a time: the backoff
    (_http_error(Retry_After="-5"), 0.5),
    (_http_error(Retry_After=email.utils.format_datetime(
        datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc), usegmt=True)), 0.0),  # a date passed
    (_http_error(Retry_After=email.utils.format_datetime(
        datetime.datetime(2999, 1, 1, tzinfo=datetime.timezone.utc), usegmt=True)), 60.0),  # far ahead: cut
    (_http_error(), 0.5),                                # no hint
])
def test_the_wait_after_an_http_error(waits, error, wait):
    zo.retrying(_failing(error), on=_is_http)(np.zeros(2))
    assert waits == ([wait] if wait else [])  # (no sleep for none)


class _ServiceBusy(ConnectionError):
    def __init__(self, retry_after):
        super().__init__("busy")
        self.retry_after = retry_after


class _Response:
    def __init__(self, headers):
        self.headers = headers


class _ClientError(ConnectionError):
    """As requests' and httpx's errors: the response (and its headers) on ``exc.response``."""

    def __init__(self, headers):
        super().__init__("429 Too Many Requests")
        self.response = _Response(headers)


@pytest.mark.parametrize("error, wait", [
    (_ServiceBusy(2.5), 2.5),
    (_ServiceBusy(np.int64(2)), 2.0),
    (_ServiceBusy(datetime.timedelta(seconds=4)), 4.0),
    (_ServiceBusy(float("nan")), 0.5),
    (_ServiceBusy(True), 0.5),
    (_ServiceBusy(1e9), 60.0),
    (_ClientError({"retry-after": "9"}), 9.0),
    (_ClientError({"Retry-After": b"11"}), 11.0),
    (_ClientError({}), 0.5),
])
def test_the_wait_after_an_error_carrying_its_own_hint(waits, error, wait):
    zo.retrying(_failing(error))(np.zeros(2))
    assert waits == [wait]


def test_max_delay_caps_the_doubling_backoff_and_the_hints(waits, caplog):
    with caplog.at_level(logging.INFO, logger="zoracle"):
        zo.retrying(_failing(*_timeouts(5), _ServiceBusy(30)), tries=7, backoff=1, max_delay=5)(
            np.zeros(2))
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert "(its Retry-After: 30 s, cut to max_delay)" in caplog.records[-1].getMessage()


def test_a_long_run_of_tries_waits_max_delay_without_overflow(waits):
    zo.retrying(_failing(*_timeouts(1100)), tries=1101, backoff=1, max_delay=2)(np.zeros(2))
    assert len(waits) == 1100 and waits[-1] == 2.0


def test_jitter_is_off_by_default_and_spreads_retry_after_waits_upwards_only(waits, monkeypatch):
    zo.retrying(_failing(TimeoutError(), TimeoutError()), backoff=1)(np.zeros(2))
    zo.retrying(_failing(TimeoutError(), TimeoutError()), backoff=1)(np.zeros(2))
    assert waits == [1.0, 2.0] * 2  # the same waits each time
    waits.clear()
    monkeypatch.setattr(_retrying, "random", random.Random(0))  # (seeded: the draws below are fixed)
    zo.retrying(_failing(*[TimeoutError()] * 8), tries=9, backoff=1, max_delay=8, jitter=0.5)(np.zeros(2))
    plain = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert all(w / 2 <= got <= w for got, w in zip(waits, plain)) and waits != plain
    waits.clear()
    zo.retrying(_failing(*[_ServiceBusy(3)] * 6), tries=7, jitter=1)(np.zeros(2))
    # the service's own time spread upwards only: never sooner than asked, not all at the same instant
    assert all(3.0 <= w <= 6.0 for w in waits) and len(set(waits)) > 1, waits
    waits.clear()
    zo.retrying(_failing(*[_ServiceBusy(3)] * 6), tries=7, jitter=1, max_delay=4)(np.zeros(2))
    assert all(3.0 <= w <= 4.0 for w in waits), waits  # cut to max_delay, which is past what it asked
    waits.clear()
    zo.retrying(_failing(_ServiceBusy(3)))(np.zeros(2))
    assert waits == [3.0]  # no jitter: exactly the service's time


def test_the_settings_travel_with_pickles_bind_and_repr():
    class Data:
        def __call__(self, x):
            return 0.0

        def bind(self, batch):
            return lambda x: float(batch)

    wrapped = zo.retrying(Data(), backoff=0, max_delay=3, jitter=0.25)
    bound = wrapped.bind(1.0)
    assert (bound.max_delay, bound.jitter) == (3.0, 0.25)
    back = pickle.loads(pickle.dumps(zo.retrying(np.sum, max_delay=3, jitter=0.25)))
    assert (back.max_delay, back.jitter) == (3.0, 0.25)
    assert repr(back).endswith("backoff=0.5, max_delay=3, jitter=0.25)")


@pytest.mark.parametrize("kw, msg", [
    (dict(max_delay=-1), "`max_delay` must be a number of seconds >= 0"),
    (dict(max_delay=float("nan")), "`max_delay` must be a number of seconds >= 0"),
    (dict(max_delay="60"), "`max_delay` must be a number of seconds >= 0"),
    (dict(jitter=1.5), "`jitter` must be a number from 0"),
    (dict(jitter=True), "`jitter` must be a number from 0"),
])
def test_the_new_arguments_are_checked(kw, msg):
    with pytest.raises(zo.ArgumentError, match=msg):
        zo.retrying(lambda x: 0.0, **kw)


# the session review (h351): what the change did where it should not have

def _timeouts(n):
    return [TimeoutError("slow")] * n


class _Hinted(Exception):
    def __init__(self, seconds):
        super().__init__(f"busy, retry after {seconds} s")
        self.retry_after = seconds


def test_a_backoff_longer_than_the_default_max_delay_is_still_waited(waits):
    """retrying(f, backoff=120) waited 120 s, then 240 s, before max_delay existed; its default of
    60 s silently cut the wait the call names to half. The default bounds the doubling only."""
    wrapped = zo.retrying(_failing(*_timeouts(2)), backoff=120)
    wrapped(np.zeros(2))
    assert waits == [120.0, 120.0]
    assert wrapped.max_delay == 120.0
    waits.clear()
    zo.retrying(_failing(*_timeouts(4)), tries=5, backoff=20)(np.zeros(2))  # the default 60 s cap as before
    assert waits == [20.0, 40.0, 60.0, 60.0]
    waits.clear()
    zo.retrying(_failing(*_timeouts(2)), backoff=120, max_delay=30)(np.zeros(2))  # an explicit cap is the caller's
    assert waits == [30.0, 30.0]


def test_the_exhausted_advice_names_what_would_have_waited_longer(waits):
    """Every try failed: "raise `tries` or `backoff`" was the advice even where the waits were a
    Retry-After's cut to max_delay, which no backoff lengthens (the service asked for 120 s and got
    60 s twice): raising backoff changed nothing."""
    on = (_Hinted, TimeoutError)
    with pytest.raises(zo.RetriesExhausted) as info:
        zo.retrying(_failing(*[_Hinted(120)] * 3), on=on, backoff=5)(np.zeros(2))
    assert waits == [60.0, 60.0]
    assert str(info.value).endswith("raise `tries` or `max_delay` if the service recovers more slowly")
    # the advice works: a max_delay that holds the service's wait lets the call through
    waits.clear()
    assert zo.retrying(_failing(_Hinted(120)), on=on, tries=2, max_delay=120)(np.zeros(2)) == 1.0
    assert waits == [120.0]
    # backoff waits (uncut): backoff is the knob, as before
    with pytest.raises(zo.RetriesExhausted, match=r"raise `tries` or `backoff` if the service"):
        zo.retrying(_failing(*[TimeoutError()] * 3), backoff=1)(np.zeros(2))
    # backoff waits cut to max_delay: raising backoff alone does not lengthen them
    with pytest.raises(zo.RetriesExhausted, match=r"raise `tries`, `backoff` or `max_delay` if"):
        zo.retrying(_failing(*[TimeoutError()] * 4), tries=4, backoff=1, max_delay=1.5)(np.zeros(2))


def test_an_infinite_backoff_is_refused_when_wrapping_not_at_the_first_failure(waits):
    """backoff=math.inf passed the check and failed at the first transient error, mid-run, with
    OverflowError from time.sleep (the 60 s default cap hid it; a cap that follows backoff does not)."""
    import math

    with pytest.raises(zo.ArgumentError, match=r"`backoff` must be a number of seconds >= 0 \(finite"):
        zo.retrying(_failing(*_timeouts(1)), backoff=math.inf)
    assert zo.retrying(_failing(*_timeouts(1)), backoff=1, max_delay=math.inf)(np.zeros(2)) == 1.0  # an uncapped wait
    assert waits == [1.0]


def test_a_single_try_is_told_to_raise_tries_alone(waits):
    with pytest.raises(zo.RetriesExhausted, match=r"raise `tries` if the service recovers more slowly"):
        zo.retrying(_failing(*_timeouts(1)), tries=1)(np.zeros(2))
    assert waits == []


# a Retry-After past max_delay (h469): cut to max_delay, the jitter's spread was gone

def _came_back(waits, hint, workers, **kw):
    """The wait of each of ``workers`` wrappers turned away together by one Retry-After of ``hint`` s
    (``waits``: the fake sleep's record; each worker's clock starts at the refusal)."""
    start = len(waits)
    for _ in range(workers):
        zo.retrying(_failing(_ServiceBusy(hint)), **kw)(np.zeros(2))
    return waits[start:]


def test_workers_a_retry_after_past_max_delay_turned_away_do_not_come_back_together(waits, monkeypatch):
    """Retry-After: 120 with max_delay=60 and jitter=0.5 sent every worker back at 60 s exactly (the
    upward spread, then the cut), where the service turned them away together again. The service's
    time cannot be kept under the cap; the waits are spread below it, as backoff waits are."""
    monkeypatch.setattr(_retrying, "random", random.Random(0))
    back = _came_back(waits, 120, 8, max_delay=60, jitter=0.5)
    assert len(back) == 8 and all(30.0 <= w <= 60.0 for w in back), back
    assert len(set(back)) == 8 and max(back) - min(back) > 10, back  # not in lock step
    # a Retry-After just under the cap: spread over what fits, [hint, max_delay], uniformly, not mostly at the cap
    back = _came_back(waits, 3, 200, max_delay=4, jitter=1)
    assert all(3.0 <= w <= 4.0 for w in back) and back.count(4.0) == 0
    assert 0.4 < np.mean(np.array(back) < 3.5) < 0.6  # (seeded: 200 uniform draws; was 0 with 2/3 at 4.0)
    # no jitter: the cut as documented, each run the same
    assert _came_back(waits, 120, 3, max_delay=60) == [60.0] * 3


def test_a_spread_wait_under_the_cap_is_logged_as_cut(waits, monkeypatch, caplog):
    monkeypatch.setattr(_retrying, "random", random.Random(1))
    with caplog.at_level(logging.INFO, logger="zoracle"):
        zo.retrying(_failing(_ServiceBusy(90)), max_delay=60, jitter=0.5)(np.zeros(2))
    assert len(waits) == 1 and 30.0 <= waits[0] < 60.0  # (seeded; the old cut: 60 exactly)
    assert f"asking again in {waits[0]:g} s (its Retry-After: 90 s, cut to max_delay)" in caplog.text


@pytest.mark.parametrize("on", [(Exception,), lambda exc: True])
def test_a_write_into_a_read_only_view_is_not_retried_but_gets_its_copy(on):
    """coordinate_losses gets a read-only view of the parameters, and one that writes into it is called
    again with its own copy. Under ``on=Exception`` (or an ``on`` that takes every error) the refusal
    was retried as transient, each try refused alike, and the RetriesExhausted stopped an oracle that
    the copy makes work (it got a copy per call before views)."""
    tries = []

    class InPlace:
        def __call__(self, x):
            return float(0.5 * np.sum(np.asarray(x) ** 2))

        def coordinate_losses(self, x, coords, step):
            tries.append(x.flags.writeable)
            out = []
            for i in coords.tolist():
                old = x[i]
                x[i] = old + x.dtype.type(step)
                out.append(self(x))
                x[i] = old
            return np.array(out)

    x = np.linspace(-1.0, 1.0, 20)
    got = zo.estimate_gradient(zo.retrying(InPlace(), on=on, backoff=0), x, zo.CGE(mu=1e-3))
    want = zo.estimate_gradient(InPlace().__call__, x, zo.CGE(mu=1e-3))
    np.testing.assert_array_equal(got.grad, want.grad)
    assert tries == [False, True]
