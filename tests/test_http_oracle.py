"""An oracle that is a model behind an HTTP API (loopback only): transient failures (503, 429, a
reset connection) are asked again by ``zo.retrying`` with the same query, deterministic ones are
not, and every fast path still reaches the service. Failures are injected by request number."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import zoracle as zo
from zoracle.executors import JoblibExecutor

TARGET = np.linspace(-1.0, 1.0, 6)


class Service:
    """A loss server on 127.0.0.1: POST {"params": row or rows} -> {"loss": value or values}.
    ``fail(n)`` gives the status (or "reset") for the n-th request (1-based), None to answer."""

    def __init__(self, fail=lambda n: None):
        self.fail, self.requests, self.rows, self.lock = fail, 0, [], threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with service.lock:
                    service.requests += 1
                    kind = service.fail(service.requests)
                    rows = np.asarray(body["params"], dtype=float)
                    service.rows.append(1 if rows.ndim == 1 else len(rows))
                if kind == "reset":  # no answer at all: the client sees the connection closed
                    self.close_connection = True
                    return
                if kind is not None:
                    self.send_response(kind)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                out = json.dumps({"loss": ((rows - TARGET) ** 2).sum(axis=-1).tolist()}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service():
    made = []

    def make(fail=lambda n: None):
        made.append(Service(fail))
        return made[-1]

    yield make
    for s in made:
        s.close()


def post(url, rows):
    req = urllib.request.Request(url, data=json.dumps({"params": rows}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())["loss"]
    except urllib.error.HTTPError as exc:
        exc.close()  # an HTTPError is the open response: close it as the `with` closes a good one
        raise


class Remote:
    """The user's oracle: one POST per plain call, one POST of all rows per ``batch``."""

    def __init__(self, url, max_queries_per_call=None):
        self.url = url
        if max_queries_per_call is not None:
            self.max_queries_per_call = max_queries_per_call

    def __call__(self, params):
        return post(self.url, np.asarray(params).tolist())


class RemoteBatch(Remote):
    def batch(self, params_batch):
        return np.asarray(post(self.url, np.asarray(params_batch).tolist()))


def transient(exc):
    """What a user passes as ``on`` for urllib: HTTP 429 / 503 and lost connections."""
    return (isinstance(exc, (ConnectionError, TimeoutError)) or getattr(exc, "code", None) in (429, 503)
            or isinstance(getattr(exc, "reason", None), (ConnectionError, TimeoutError)))


def every(k, kinds=(503, "reset", 429)):
    """Every k-th request fails, cycling through ``kinds``."""
    return lambda n: kinds[(n // k) % len(kinds)] if n % k == 0 else None


def test_without_retries_one_transient_failure_ends_a_serial_run_and_resume_continues(service, tmp_path):
    """What a user sees today: the OracleError names the query and its cause; the checkpoint
    keeps the steps finished before it, and a resume picks up from there."""
    s = service(lambda n: 503 if n == 20 else None)
    ck = tmp_path / "run.npz"
    with pytest.raises(zo.OracleError, match="HTTPError: HTTP Error 503") as err:
        zo.train(Remote(s.url), np.zeros(6), epochs=4, progress=False, checkpoint=str(ck), rng=0)
    assert "training step 2" in str(err.value) and ck.exists()
    done = zo.train(Remote(s.url), np.zeros(6), epochs=4, progress=False, checkpoint=str(ck), resume=True, rng=0)
    clean = zo.train(Remote(service().url), np.zeros(6), epochs=4, progress=False, rng=0)
    assert np.array_equal(done.params, clean.params)


def test_retrying_finishes_a_serial_run_through_503_429_and_resets_with_the_same_result(service):
    s = service(every(7))
    result = zo.train(zo.retrying(Remote(s.url), on=transient, backoff=0), np.zeros(6), epochs=4, progress=False,
                      rng=0)
    clean = zo.train(Remote(service().url), np.zeros(6), epochs=4, progress=False, rng=0)
    assert np.array_equal(result.params, clean.params)  # a retry asks the same query: the same losses
    assert result.nfev == clean.nfev == 28  # failed tries are not losses
    assert s.requests == 28 + 28 // 6  # every 7th request failed and was asked again


def test_retrying_keeps_the_batch_fast_path_and_its_attributes_on_threads(service):
    """One POST of many rows, cut at the oracle's max_queries_per_call, on two threads."""
    s = service(every(3))
    oracle = zo.retrying(RemoteBatch(s.url, max_queries_per_call=4), on=transient, backoff=0)
    assert zo.capabilities(oracle).batch and oracle.max_queries_per_call == 4
    assert not zo.capabilities(zo.retrying(Remote(s.url))).batch  # no batch inside, none outside
    with JoblibExecutor(2, backend="threading") as ex:
        est = zo.estimate_gradient(oracle, np.zeros(6), zo.CGE(), executor=ex)
        assert ex.last_run.retries == 0  # the wrapper retried the calls; no shard failed
    serial = zo.estimate_gradient(RemoteBatch(service().url, max_queries_per_call=4), np.zeros(6), zo.CGE())
    assert np.array_equal(est.grad, serial.grad) and est.nfev == 7
    assert max(s.rows) == 4 and sum(r > 1 for r in s.rows) >= 2  # batches of rows, not one row a request


def test_retrying_travels_to_process_workers(service):
    s = service(every(4))
    with JoblibExecutor(2) as ex:
        est = zo.estimate_gradient(zo.retrying(Remote(s.url), on=transient, backoff=0), np.zeros(6), zo.CGE(),
                                   executor=ex)
        assert ex.last_run.retries == 0
    assert np.allclose(est.grad, 2 * (0 - TARGET) + 5e-3, atol=1e-9)


def test_a_deterministic_error_is_raised_at_once_not_retried(service):
    s = service(lambda n: 400 if n == 3 else None)
    with pytest.raises(zo.OracleError, match=r"coordinate 1 .*HTTPError: HTTP Error 400") as err:
        zo.estimate_gradient(zo.retrying(Remote(s.url), on=transient, backoff=0), np.zeros(6), zo.CGE())
    assert isinstance(err.value.cause, urllib.error.HTTPError) and s.requests == 3


def test_the_final_error_says_how_many_tries_failed_and_why(service):
    s = service(lambda n: 503 if n >= 2 else None)
    with pytest.raises(zo.OracleError) as err:
        zo.estimate_gradient(zo.retrying(RemoteBatch(s.url), tries=3, on=transient, backoff=0), np.zeros(6),
                             zo.CGE())
    cause = err.value.cause
    assert isinstance(cause, zo.RetriesExhausted) and isinstance(cause.__cause__, urllib.error.HTTPError)
    assert "`batch` failed all 3 tries (try 1: HTTPError: HTTP Error 503" in str(err.value)
    assert cause.errors == ["HTTPError: HTTP Error 503: Service Unavailable"] * 3 and s.requests == 4


def test_bind_wraps_the_bound_oracle_and_unbind_names_the_same_parent():
    class Data:
        def bind(self, batch):
            return Bound(self, batch)

    class Bound:
        def __init__(self, parent, batch):
            self.parent, self.data, self.calls = parent, batch, 0

        def __call__(self, x):
            self.calls += 1
            if self.calls == 1:
                raise TimeoutError("read timed out")
            return float(np.sum((x - self.data) ** 2))

        def unbind(self):
            return self.parent, self.data

    wrapped = zo.retrying(Data(), backoff=0)
    one, two = wrapped.bind(np.ones(3)), wrapped.bind(np.zeros(3))
    assert one(np.zeros(3)) == 3.0 and one.unbind()[0] is wrapped and two.unbind()[0] is wrapped
    assert not hasattr(wrapped, "unbind") and not hasattr(wrapped, "batch")


@pytest.mark.parametrize("kw, msg", [
    (dict(tries=0), "`tries` must be an int >= 1"),
    (dict(on="ConnectionError"), "`on` must be exception classes or a callable"),
    (dict(on=(ConnectionError, 503)), "`on` must be exception classes or a callable"),
    (dict(backoff=-1), "`backoff` must be a number of seconds >= 0"),
])
def test_arguments_are_checked_before_any_query(kw, msg):
    with pytest.raises(zo.ArgumentError, match=msg):
        zo.retrying(lambda x: 0.0, **kw)


def test_a_reloaded_oracle_module_behind_retrying_is_refused(tmp_path, monkeypatch):
    """Process workers keep the module they imported: the executors' check for a reloaded oracle
    module looked at the wrapper's module (zoracle's), and ran the old code without an error."""
    import importlib
    import sys

    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"zoracle_http_user_{tmp_path.name.replace('-', '_')}"
    path = tmp_path / f"{name}.py"
    source = ("import numpy as np\n\n\nclass Loss:\n    def __call__(self, x):\n"
              "        return float(np.sum(x ** 2) * {k})\n")
    path.write_text(source.format(k="1.0"))
    module = importlib.import_module(name)
    try:
        with JoblibExecutor(2) as ex:
            zo.estimate_gradient(zo.retrying(module.Loss()), np.ones(3), zo.CGE(), executor=ex)
            path.write_text(source.format(k="10.0"))
            importlib.invalidate_caches()
            module = importlib.reload(module)
            with pytest.raises(zo.ZoracleError, match=rf"module '{name}' of the oracle Loss was reloaded"):
                zo.estimate_gradient(zo.retrying(module.Loss()), np.ones(3), zo.CGE(), executor=ex)
    finally:
        sys.modules.pop(name, None)
