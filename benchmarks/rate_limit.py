"""An oracle behind a rate-limited service: its 429s, waits and stopped runs, with and without a pace.

The numbers of docs/executors.md, "Staying under a rate limit". A loopback service
(``ThreadingHTTPServer`` on 127.0.0.1, a port the system picks: nothing leaves the machine)
answers at most ``--rate`` requests in any one-second window (sliding) and ``--concurrency``
at a time, each after ``--latency`` seconds. Past either limit it answers 429 with a
``Retry-After`` header, and does not bill it: the wait in whole seconds (rounded up, as HTTP's
delta-seconds), or with ``--exact`` to the millisecond (the window's next free slot, or
``--latency`` for a request refused for concurrency). The oracle is the docs' ``Remote``
(urllib, ``batch``, ``max_queries_per_call = 4``) wrapped in
``zo.retrying(tries=--tries, on=429 or 503, backoff=0.05, jitter=--jitter)``; it trains
``sum((x - 1)^2)`` from zeros (``--d`` 60, ``--epochs`` 15, CGE: 916 queries in 241 POSTs)
through ``JoblibExecutor(--workers, backend="threading")``. With ``--pace RATE`` every
request, a retried one too, first waits for a pace the workers share (requests evenly spaced,
RATE a second), as the docs' ``Pace``.

Each of ``--runs`` runs prints one line: the POSTs the service answered (``billed``), the
queries in them (``rows``), ``nfev`` (``-`` where the run stopped), the 429s, the most
requests the service had in flight at once, the wall time, the steps finished and the error
that stopped the run (``none``). A summary line follows (ranges over the runs)::

    python benchmarks/rate_limit.py --workers 4 --runs 5            # 4 workers, the service's 4
    python benchmarks/rate_limit.py --workers 8 --runs 3            # twice the workers it takes
    python benchmarks/rate_limit.py --workers 4 --runs 5 --exact    # Retry-After: 0.005
    python benchmarks/rate_limit.py --workers 4 --pace 80 --runs 3  # paced under the limit

docs/executors.md gives the command beside each set of numbers it quotes.

``--quick`` (the test's run, a few seconds) runs a small service (20 a second, 2 at a time,
50 ms a request, exact waits) on a small problem (d 12, 6 epochs: 25 POSTs, more than the
service takes in a second), twice: 4 workers unpaced, then 2 workers paced at 10 a second
(with ``--workers`` or ``--pace``, once, as they say); other flags given with it replace its
settings.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

import zoracle as zo
from zoracle.executors import JoblibExecutor

QUICK = {"rate": 20, "concurrency": 2, "latency": 0.05, "exact": True, "d": 12, "epochs": 6, "tries": 10}
DEFAULTS = {"rate": 100, "concurrency": 4, "latency": 0.005, "exact": False, "d": 60, "epochs": 15, "tries": 3,
            "jitter": 0.0, "runs": 1}


class Service:
    """The limited service: counts what it answered (billed), refused (429) and had in flight."""

    def __init__(self, rate: int, concurrency: int, latency: float, exact: bool):
        self.rate, self.concurrency, self.latency, self.exact = rate, concurrency, latency, exact
        self.lock = threading.Lock()
        self.stamps: list[float] = []  # the answered requests' arrival times, the last second's
        self.billed = self.rows = self.refused = self.in_flight = self.max_in_flight = 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                rows = np.array(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["params"], float)
                wait = service.admit(1 if rows.ndim == 1 else len(rows))
                if wait is not None:
                    header = f"{wait:.3f}" if service.exact else str(max(1, math.ceil(wait)))
                    self.send_response(429)
                    self.send_header("Retry-After", header)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    time.sleep(service.latency)
                    body = json.dumps({"loss": ((rows - 1.0) ** 2).sum(axis=-1).tolist()}).encode()
                finally:
                    with service.lock:
                        service.in_flight -= 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def admit(self, rows: int) -> float | None:
        """None where the request is taken (billed), else the seconds its 429 asks to wait."""
        now = time.monotonic()
        with self.lock:
            self.stamps = [t for t in self.stamps if t > now - 1.0]
            if self.in_flight >= self.concurrency:
                wait = self.latency
            elif len(self.stamps) >= self.rate:
                wait = self.stamps[0] + 1.0 - now
            else:
                self.stamps.append(now)
                self.billed += 1
                self.rows += rows
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                return None
            self.refused += 1
            return wait

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class Pace:
    """wait() returns at most ``rate`` times a second, evenly spaced, across the threads sharing it."""

    def __init__(self, rate: float):
        self.gap, self.lock, self.next = 1.0 / rate, threading.Lock(), time.monotonic()

    def wait(self):
        with self.lock:
            at = max(time.monotonic(), self.next)
            self.next = at + self.gap
        time.sleep(max(0.0, at - time.monotonic()))


class Remote:
    """The docs' oracle: one POST a call, up to four queries in a ``batch`` POST."""

    max_queries_per_call = 4

    def __init__(self, url: str, pace: Pace | None):
        self.url, self.pace = url, pace

    def post(self, rows):
        if self.pace is not None:
            self.pace.wait()  # before every request, a retried one too
        request = urllib.request.Request(self.url, data=json.dumps({"params": rows}).encode())
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return json.loads(answer.read())["loss"]
        except urllib.error.HTTPError as exc:
            exc.close()  # an HTTPError holds the open response
            raise

    def __call__(self, x):
        return self.post(x.tolist())

    def batch(self, rows):
        return np.array(self.post(rows.tolist()))


def transient(exc) -> bool:
    return getattr(exc, "code", None) in (429, 503)


def error_name(exc: BaseException) -> str:
    """``OracleError(RetriesExhausted)``: the error and the zoracle error it carries, if any."""
    inner, seen = exc.__cause__, set()
    while inner is not None and id(inner) not in seen and not isinstance(inner, zo.RetriesExhausted):
        seen.add(id(inner))
        inner = inner.__cause__ or inner.__context__
    name = type(exc).__name__
    return f"{name}({type(inner).__name__})" if inner is not None and inner is not exc else name


def run_once(settings: dict, workers: int, pace: float | None) -> dict:
    service = Service(settings["rate"], settings["concurrency"], settings["latency"], settings["exact"])
    oracle = zo.retrying(Remote(service.url, Pace(pace) if pace else None), tries=settings["tries"],
                         on=transient, backoff=0.05, jitter=settings["jitter"])
    steps = []
    t = time.perf_counter()
    try:
        with JoblibExecutor(workers, backend="threading") as ex:
            result = zo.train(oracle, np.zeros(settings["d"]), epochs=settings["epochs"], optimizer=zo.sgd(0.02),
                              executor=ex, progress=False,
                              callbacks=[lambda event, record, params: steps.append(1) if event == "step" else None])
        nfev, error = result.nfev, None
    except zo.ZoracleError as exc:  # (OracleError carrying RetriesExhausted: a call's tries all 429)
        nfev, error = None, error_name(exc)
    finally:
        wall = time.perf_counter() - t
        service.close()
    return {"billed": service.billed, "rows": service.rows, "nfev": nfev, "refused": service.refused,
            "max_in_flight": service.max_in_flight, "wall": wall, "steps": len(steps), "error": error}


def span(values, fmt="{}") -> str:
    """``"2-8"``, the lowest and highest of ``values`` as ``fmt`` writes them (one where they read alike)."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def case(settings: dict, workers: int, pace: float | None, runs: int) -> list[dict]:
    header = "exact" if settings["exact"] else "whole seconds"
    print(f"service: {settings['rate']} requests/s, {settings['concurrency']} at a time, "
          f"{settings['latency'] * 1e3:g} ms each, Retry-After {header}; {workers} workers, "
          f"tries={settings['tries']}, jitter={settings['jitter']:g}, pace {f'{pace:g}' if pace else 'none'}; "
          f"d={settings['d']}, {settings['epochs']} epochs", flush=True)
    out = []
    for i in range(runs):
        r = run_once(settings, workers, pace)
        out.append(r)
        print(f"run {i + 1}: billed={r['billed']} rows={r['rows']} nfev={'-' if r['nfev'] is None else r['nfev']} "
              f"429s={r['refused']} max_in_flight={r['max_in_flight']} wall={r['wall']:.2f}s "
              f"steps={r['steps']}/{settings['epochs']} error={r['error'] or 'none'}", flush=True)
    done = [r for r in out if r["error"] is None]
    stopped = [r for r in out if r["error"] is not None]

    def over(key, some, fmt="{}"):
        return span([r[key] for r in some], fmt)

    line = (f"summary: {runs} runs, {len(done)} finished, {len(stopped)} stopped; 429s {over('refused', out)}; "
            f"max_in_flight {over('max_in_flight', out)}")
    if done:
        ideal = span([r["billed"] / settings["rate"] for r in done], "{:.2f}")
        line += (f"; finished: wall {over('wall', done, '{:.2f}')} s, billed {over('billed', done)} "
                 f"(billed/rate {ideal} s), nfev = rows in {sum(r['nfev'] == r['rows'] for r in done)} of {len(done)}")
    if stopped:
        line += (f"; stopped: {', '.join(sorted({r['error'] for r in stopped}))} after {over('steps', stopped)} "
                 f"of {settings['epochs']} steps, billed {over('billed', stopped)}")
    print(line, flush=True)
    return out


def positive(kind):
    """An argparse type: a finite ``kind`` > 0, else a usage error naming the value."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {'an int' if kind is int else 'a number'} > 0, got {text!r}")
        return value
    return parse


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=positive(int), help="the service's requests a second, R (default 100)")
    p.add_argument("--concurrency", type=positive(int), help="the service's requests at a time, C (default 4)")
    p.add_argument("--latency", type=positive(float), help="seconds the service takes a request (default 0.005)")
    p.add_argument("--exact", action="store_true", default=None,
                   help="Retry-After to the millisecond (default: whole seconds, rounded up)")
    p.add_argument("--workers", type=positive(int), help="JoblibExecutor threads (default: the service's C)")
    p.add_argument("--pace", type=positive(float), help="requests a second the oracle keeps to (default: no pace)")
    p.add_argument("--tries", type=positive(int), help="zo.retrying's tries (default 3)")
    p.add_argument("--jitter", type=float, help="zo.retrying's jitter, 0 to 1 (default 0)")
    p.add_argument("--d", type=positive(int), help="parameters (default 60)")
    p.add_argument("--epochs", type=positive(int), help="epochs, one step each (default 15)")
    p.add_argument("--runs", type=positive(int), help="runs of the same settings (default 1)")
    p.add_argument("--quick", action="store_true", help="the test's run: a small service and problem, a few seconds")
    args = p.parse_args(argv)
    if args.jitter is not None and not 0 <= args.jitter <= 1:
        p.error(f"argument --jitter: must be a number from 0 to 1, got {args.jitter!r}")
    given = {k: v for k, v in vars(args).items() if v is not None and k in DEFAULTS}
    settings = {**DEFAULTS, **(QUICK if args.quick else {}), **given}
    if args.quick and args.workers is None and args.pace is None:
        cases = [(2 * settings["concurrency"], None), (settings["concurrency"], settings["rate"] / 2)]
    else:
        cases = [(args.workers or settings["concurrency"], args.pace)]
    for workers, pace in cases:
        case(settings, workers, pace, settings["runs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
