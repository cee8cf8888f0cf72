"""zoracle.AskTell behind a web service, as a team deploys it: an HTTP server (ThreadingHTTPServer on
127.0.0.1) keeps one AskTell a client session in a dict between requests; GET /ask returns its points
as JSON, POST /tell sends their losses; each request comes on a server thread of its own (one at a
time a session). What such a service meets: many idle sessions (a thread each), sessions dropped
without close(), a restart that resumes each session from its checkpoint, a client that retries a
POST /tell (the same losses told twice), and losses from JavaScript (ints, text, null)."""

from __future__ import annotations

import gc
import json
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

import zoracle as zo

D = 4
SETTINGS = dict(epochs=6, optimizer=zo.sgd(0.05), progress=False)


def f(x) -> float:
    return float(((np.asarray(x) - 3) ** 2).sum() + np.sin(x).sum())


class Service:
    """The sessions' AskTells, each with a lock (one request a session at a time) and the points its
    last GET /ask handed out (a GET sent again gets them again: ask() is once a tell)."""

    def __init__(self, root: Path):
        self.root, self.sessions, self.guard = root, {}, threading.Lock()

    def session(self, sid: str):
        with self.guard:
            if sid not in self.sessions:
                opt = zo.AskTell(np.zeros(D), checkpoint=str(self.root / f"{sid}.npz"), resume=True, **SETTINGS)
                self.sessions[sid] = {"opt": opt, "lock": threading.Lock(), "asked": None}
            return self.sessions[sid]

    def ask(self, sid: str) -> dict:
        s = self.session(sid)
        with s["lock"]:
            if s["opt"].done:
                return {"done": True, "params": s["opt"].result.params.tolist()}
            if s["asked"] is None:
                s["asked"] = s["opt"].ask()
            return {"points": s["asked"].tolist()}  # (float repr round-trips through JSON exactly)

    def tell(self, sid: str, body: dict) -> dict:
        s = self.session(sid)
        with s["lock"]:
            if "points" in body:
                s["opt"].tell(body["points"], body["losses"])
            else:
                s["opt"].tell(body["losses"])
            s["asked"] = None
            return {"done": s["opt"].done}

    def close(self) -> None:
        for s in self.sessions.values():
            s["opt"].close()


class Handler(BaseHTTPRequestHandler):
    def _answer(self, call) -> None:
        try:
            code, out = 200, call()
        except zo.ZoracleError as exc:
            code, out = 400, {"error": str(exc)}
        data = json.dumps(out).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        sid = parse_qs(urlparse(self.path).query)["session"][0]
        self._answer(lambda: self.server.service.ask(sid))

    def do_POST(self) -> None:
        sid = parse_qs(urlparse(self.path).query)["session"][0]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._answer(lambda: self.server.service.tell(sid, body))

    def log_message(self, *args) -> None:
        pass


class Server:
    def __init__(self, root: Path):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.service = self.service = Service(root)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)  # (shutdown() waits up to one poll)
        self.thread.start()

    def get(self, sid: str) -> dict:
        with urllib.request.urlopen(f"{self.url}/ask?session={sid}", timeout=60) as r:
            return json.loads(r.read())

    def post(self, sid: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(f"{self.url}/tell?session={sid}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self, close: bool = True) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if close:
            self.service.close()


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    yield s
    s.stop()


def expected():
    return zo.train(f, np.zeros(D), **SETTINGS).params


def run_client(server: Server, sid: str, retry: bool = False) -> list[float]:
    """A client: the points as JSON lists, the losses as JSON numbers; ``retry``: each POST sent twice."""
    while "points" in (answer := server.get(sid)):
        X = answer["points"]
        body = {"points": X, "losses": [f(x) for x in X]}
        for _ in range(2 if retry else 1):
            code, out = server.post(sid, body)
            assert code == 200, out
    return answer["params"]


def test_sessions_over_http_train_as_zo_train_bit_for_bit(server):
    """Points as JSON lists of floats (repr round-trips exactly), told back as tell(X, losses): X is
    the asked points, exactly; two sessions, one thread each, train zo.train's run."""
    got = {}
    clients = [threading.Thread(target=lambda s=s: got.__setitem__(s, run_client(server, s))) for s in ("a", "b")]
    for c in clients:
        c.start()
    for c in clients:
        c.join(120)
    assert np.array_equal(got["a"], expected()) and np.array_equal(got["b"], expected())


def test_a_retried_post_tell_is_taken_as_told_once(server):
    """A network retry sends each POST /tell twice, the same points and losses: the second is taken as
    the first (200, nothing told again) and the run is zo.train's. It was refused: "tell() without
    ask()"."""
    assert np.array_equal(run_client(server, "r", retry=True), expected())


def test_a_retry_with_other_losses_is_refused_naming_the_row(server):
    X = server.get("s")["points"]
    losses = [f(x) for x in X]
    assert server.post("s", {"points": X, "losses": losses})[0] == 200
    other = list(losses)
    other[2] += 1.0
    code, out = server.post("s", {"points": X, "losses": other})
    assert code == 400
    assert "told already, with other losses (row 2 was told" in out["error"], out
    assert "a tell is taken once" in out["error"], out


def test_a_retry_of_the_losses_alone_is_refused_saying_how_to_retry(server):
    """tell(losses) has nothing that names its ask: sent again, it is refused, saying that the points
    were told already and that tell(X, losses) takes a retry."""
    X = server.get("t")["points"]
    losses = [f(x) for x in X]
    assert server.post("t", {"losses": losses})[0] == 200
    code, out = server.post("t", {"losses": losses})
    assert code == 400
    assert "network retry?" in out["error"] and "tell(X, losses) with the asked points" in out["error"], out


def test_a_late_retry_after_the_next_ask_changes_nothing():
    """The retry comes after the next ask(): taken as told (the points of the tell before, not those
    asked now), the asked points stay asked, and the run is zo.train's."""
    opt = zo.AskTell(np.zeros(D), **SETTINGS)
    with opt:
        X = opt.ask()
        opt.tell(X, [f(x) for x in X])
        Y = opt.ask()
        opt.tell(X.tolist(), [f(x) for x in X])  # (the late retry: JSON's lists)
        assert "asked" in repr(opt), repr(opt)
        opt.tell(Y, [f(y) for y in Y])
        while not opt.done:
            Z = opt.ask()
            opt.tell(Z, [f(z) for z in Z])
        assert np.array_equal(opt.result.params, expected())


def test_a_retry_of_the_tell_that_ended_the_run_is_taken_as_told():
    opt = zo.AskTell(np.zeros(D), **{**SETTINGS, "epochs": 1})
    X = opt.ask()
    opt.tell(X, [f(x) for x in X])
    assert opt.done
    opt.tell(X, [f(x) for x in X])  # was "tell() after the run has ended"
    assert np.array_equal(opt.result.params, zo.train(f, np.zeros(D), **{**SETTINGS, "epochs": 1}).params)


def test_a_retry_sent_while_the_first_tell_still_waits_waits_for_it():
    """The client gave up on a slow POST /tell (the run computing, saving) and sent it again: the
    retry, on another server thread, waits for the first tell's turn and returns after it, with
    nothing told again. It was refused: "tell() without ask()"."""
    entered, go_on = threading.Event(), threading.Event()

    def slow(event, record, params):  # (the run's thread, inside the first tell's turn)
        if event == "step" and not entered.is_set():
            entered.set()
            go_on.wait(60)

    opt = zo.AskTell(np.zeros(D), callbacks=[slow], **SETTINGS)
    with opt:
        X = opt.ask()
        losses = [f(x) for x in X]
        first = threading.Thread(target=opt.tell, args=(X, losses))
        first.start()
        assert entered.wait(60)
        out = []
        retry = threading.Thread(target=lambda: out.append(opt.tell(X.tolist(), losses)))
        retry.start()
        retry.join(0.5)
        assert retry.is_alive(), "the retry returned while the first tell still waited"
        go_on.set()
        first.join(60)
        retry.join(60)
        assert out == [None]
        while not opt.done:
            Y = opt.ask()
            opt.tell(Y, [f(y) for y in Y])
        assert np.array_equal(opt.result.params, zo.train(f, np.zeros(D), callbacks=[slow], **SETTINGS).params)


def test_a_retry_whose_points_lost_their_negative_zeros_is_still_a_retry():
    """JavaScript's JSON writes -0 as 0: the retried points equal the asked ones (0.0 == -0.0)."""
    x0 = np.array([-0.0, 1.0, -0.0, 2.0])
    opt = zo.AskTell(x0, **SETTINGS)
    with opt:
        X = opt.ask()
        assert np.signbit(X[0, 0])
        opt.tell(X, [f(x) for x in X])
        opt.tell((X + 0.0).tolist(), [f(x) for x in X])  # was: "tell() without ask()"
        while not opt.done:
            Y = opt.ask()
            opt.tell(Y, [f(y) for y in Y])
        assert np.array_equal(opt.result.params, zo.train(f, x0, **SETTINGS).params)


def test_losses_from_javascript(server):
    """ints are numbers; text and null (JSON.stringify's NaN and Infinity) are refused naming the row."""
    X = server.get("j")["points"]
    losses = [f(x) for x in X]
    code, out = server.post("j", {"points": X, "losses": losses[:3] + [None] + losses[4:]})
    assert code == 400 and "query 3 of the last ask()" in out["error"] and "JSON's null" in out["error"], out
    code, out = server.post("j", {"points": X, "losses": [str(v) for v in losses]})
    assert code == 400 and "query 0 of the last ask()" in out["error"] and "float(text)" in out["error"], out
    assert server.post("j", {"points": X, "losses": list(range(7, 7 + len(X)))})[0] == 200  # (JSON ints)


def test_a_restart_resumes_every_session_from_its_checkpoint(tmp_path):
    """The server stops (its sessions closed, or the process gone: the AskTells just dropped) and a new
    one resumes each session from its checkpoint: a session stopped between a GET /ask and its POST
    /tell is asked the same points again, and every run ends as zo.train's."""
    first = Server(tmp_path)
    for sid in ("told", "asked"):
        for _ in range(2):
            X = first.get(sid)["points"]
            assert first.post(sid, {"points": X, "losses": [f(x) for x in X]})[0] == 200
    pending = first.get("asked")["points"]
    first.stop(close=False)  # (the sessions dropped, not closed, as a killed process leaves them)
    first.service.sessions.clear()
    gc.collect()
    second = Server(tmp_path)
    try:
        assert second.get("asked")["points"] == pending
        for sid in ("told", "asked"):
            assert np.array_equal(run_client(second, sid), expected())
    finally:
        second.stop()


def _ask_tell_threads() -> int:
    return sum(t.name == "zoracle.AskTell" and t.is_alive() for t in threading.enumerate())


@pytest.mark.slow
def test_many_idle_sessions_a_thread_each_freed_when_dropped():
    """200 sessions at d = 100, each asked and waiting for its losses: one thread each and a few
    hundred KB (its points, 80 KB, twice); dropped from the dict without close(), each one's thread
    ends (collected: its finalizer closes the run)."""
    gc.collect()
    before = _ask_tell_threads()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        sessions = {i: zo.AskTell(np.zeros(100), epochs=5, optimizer=zo.sgd(0.01), progress=False)
                    for i in range(200)}
        asked = {i: opt.ask() for i, opt in sessions.items()}
        held = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert _ask_tell_threads() == before + 200
    assert held / 200 < 2**20, held / 200  # (about 0.2 MB: the ask and its copy, 160 KB; the thread's frames)
    sessions.clear()
    asked.clear()
    gc.collect()
    deadline = time.monotonic() + 60
    while _ask_tell_threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _ask_tell_threads() == before


def test_a_retry_racing_its_first_send_past_the_checks_waits_for_it(monkeypatch):
    """Both sends checked against the asked points before either hands its losses over: the one that
    comes second finds them told, by the same points and losses, and waits as a retry (it was refused:
    "told already (by another thread's tell()?)")."""
    import zoracle._ask_tell as ask_tell

    checked, go_on = threading.Event(), threading.Event()
    plain = ask_tell._told_points

    def held(*args):
        out = plain(*args)
        if threading.current_thread().name == "retry":
            checked.set()
            go_on.wait(60)
        return out

    monkeypatch.setattr(ask_tell, "_told_points", held)
    opt = zo.AskTell(np.zeros(D), **SETTINGS)
    with opt:
        X = opt.ask()
        losses = [f(x) for x in X]
        out, errors = [], []

        def retry():
            try:
                out.append(opt.tell(X.tolist(), losses))
            except Exception as exc:
                errors.append(exc)

        late = threading.Thread(target=retry, name="retry")
        late.start()
        assert checked.wait(60)
        opt.tell(X, losses)
        go_on.set()
        late.join(60)
        assert not errors and out == [None], errors
        while not opt.done:
            Y = opt.ask()
            opt.tell(Y, [f(y) for y in Y])
        assert np.array_equal(opt.result.params, expected())


def test_a_retry_that_reaches_a_restarted_service_is_refused_saying_to_ask(tmp_path):
    """The tell it repeats was saved: the resumed run holds no record of it, and the retry is refused
    ("tell() without ask()"), its message naming the fix; the next ask() goes on from the saved step."""
    path = str(tmp_path / "run.npz")
    opt = zo.AskTell(np.zeros(D), checkpoint=path, **SETTINGS)
    X = opt.ask()
    opt.tell(X, [f(x) for x in X])
    opt.close()
    again = zo.AskTell(np.zeros(D), checkpoint=path, resume=True, **SETTINGS)
    with again:
        with pytest.raises(zo.ZoracleError, match=r"tell\(\) without ask\(\): no points were asked; call ask\(\)"):
            again.tell(X, [f(x) for x in X])
        assert len(again.history.steps) == 1
        while not again.done:
            Y = again.ask()
            again.tell(Y, [f(y) for y in Y])
        assert np.array_equal(again.result.params, expected())


def test_a_retried_tell_of_one_point_and_its_loss_is_taken_as_told():
    """nevergrad's tell(x, loss), one point asked: sent again, taken as told."""
    opt = zo.AskTell(np.zeros(D), estimator=zo.RGE(directions=1), rng=0, max_points=1, **SETTINGS)
    with opt:
        x = opt.ask()[0]
        opt.tell(x, f(x))
        opt.tell(x.tolist(), f(x))
        y = opt.ask()[0]
        opt.tell(y, f(y))
        assert len(opt.history.steps) == 1
