"""An oracle behind a rate-limited HTTP API (loopback only): a service that takes at most ``C``
requests at a time and answers 429 with a ``Retry-After`` header past its limits. What
docs/executors.md ("Staying under a rate limit") says zoracle does there: an executor of ``n``
workers has at most ``n`` requests in flight, ``zo.retrying`` waits what the 429 says, and
``nfev`` and ``max_queries`` count the queries of answered requests only, none of a 429."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import zoracle as zo
from zoracle.executors import JoblibExecutor


class Limited:
    """A loss service on 127.0.0.1 answering at most ``concurrent`` requests at a time (each held
    ``latency`` seconds) and 429 with ``Retry-After: retry_after`` to one more, and to every
    ``refuse_every``-th request; it counts the requests it answered (billed) and their rows."""

    def __init__(self, concurrent, latency=0.01, retry_after="0.01", refuse_every=0):
        self.lock = threading.Lock()
        self.requests = self.answered = self.rows = self.refused = self.inflight = self.most = 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                rows = np.asarray(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["params"])
                with service.lock:
                    service.requests += 1
                    refuse = service.inflight >= concurrent or (
                        refuse_every and service.requests % refuse_every == 0)
                    if refuse:
                        service.refused += 1
                    else:
                        service.inflight += 1
                        service.most = max(service.most, service.inflight)
                if refuse:
                    self.send_response(429)
                    self.send_header("Retry-After", retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                time.sleep(latency)
                body = json.dumps({"loss": ((rows - 1.0) ** 2).sum(axis=-1).tolist()}).encode()
                with service.lock:  # (before the answer leaves: the client's next request comes after)
                    service.inflight -= 1
                    service.answered += 1
                    service.rows += 1 if rows.ndim == 1 else len(rows)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def limited():
    made = []

    def make(**kw):
        made.append(Limited(**kw))
        return made[-1]

    yield make
    for service in made:
        service.close()


class Remote:
    """The docs' oracle: one POST a call, up to 4 rows a ``batch`` POST."""

    max_queries_per_call = 4

    def __init__(self, url):
        self.url = url

    def post(self, rows):
        request = urllib.request.Request(self.url, data=json.dumps({"params": rows}).encode())
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return json.loads(answer.read())["loss"]
        except urllib.error.HTTPError as exc:
            exc.close()
            raise

    def __call__(self, x):
        return self.post(x.tolist())

    def batch(self, rows):
        return np.array(self.post(rows.tolist()))


def _limited(exc):
    return getattr(exc, "code", None) == 429


def test_n_thread_workers_never_have_more_than_n_requests_in_flight(limited):
    service = limited(concurrent=3, latency=0.02)
    oracle = zo.retrying(Remote(service.url), tries=3, on=_limited)
    with JoblibExecutor(3, backend="threading") as ex:
        result = zo.train(oracle, np.zeros(12), epochs=3, optimizer=zo.sgd(0.1), executor=ex, progress=False)
    assert service.refused == 0 and 1 <= service.most <= 3
    assert result.nfev == service.rows == 3 * 13 + 1


def test_a_429_waits_its_retry_after_and_counts_in_no_query_count(limited, caplog):
    service = limited(concurrent=8, retry_after="0.01", refuse_every=3)  # every 3rd request: 429
    oracle = zo.retrying(Remote(service.url), tries=6, on=_limited, backoff=5)  # (a backoff wait would show)
    with caplog.at_level(logging.INFO, logger="zoracle"), JoblibExecutor(2, backend="threading") as ex:
        result = zo.train(oracle, np.zeros(12), epochs=3, optimizer=zo.sgd(0.1), executor=ex, progress=False)
    waits = [r.getMessage() for r in caplog.records if "asking again" in r.getMessage()]
    assert service.refused > 0 and len(waits) == service.refused
    assert all("asking again in 0.01 s (its Retry-After: 0.01 s)" in w for w in waits)
    assert result.nfev == service.rows == 3 * 13 + 1  # the answered requests' queries, no 429's
    assert service.requests == service.answered + service.refused


def test_max_queries_counts_answered_queries_through_429s(limited):
    service = limited(concurrent=8, retry_after="0", refuse_every=3)
    oracle = zo.retrying(Remote(service.url), tries=6, on=_limited)
    with JoblibExecutor(2, backend="threading") as ex:
        result = zo.train(oracle, np.zeros(12), epochs=10, optimizer=zo.sgd(0.1), executor=ex, progress=False,
                          max_queries=50)
    assert service.refused > 0 and result.stopped
    assert result.nfev == service.rows == 4 * 13 + 1  # the first step at 50 answered queries or more, the final loss
