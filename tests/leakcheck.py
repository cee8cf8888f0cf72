"""A pytest plugin that names the tests which leave state behind for the tests after them.

Not loaded by default (it costs a few milliseconds a test and reports library import side
effects too); run it over some test files, in any order, with

    PYTHONPATH=$PWD:$PWD/tests python -m pytest -n 0 -p leakcheck tests/test_a.py tests/test_b.py

in one process (``-n 0``: pyproject's ``addopts`` runs pytest-xdist's workers, each its own tests in
its own order, whose findings the controller never saw, and whose files in /tmp are each other's);
a run with workers is refused.

After each test it compares: the threads and child processes alive, os.environ, the working
directory, warnings.filters, SIGINT/SIGTERM/SIGCHLD handlers, the files this process holds open
in the checkout, and the entries of the temporary directory (besides pytest's tmp_path root) and
of /tmp (which other programs share: check those by hand). At each file's end, files it left in
the checkout (git status, ignored ones too). Each change is reported once, at the first test
that made it, in the terminal summary and in $LEAKCHECK_OUT (a tab-separated file) if set.
A change made by a library at its first import (Ray's SIGTERM handler, loky's
KMP_INIT_AT_FORK) is reported like a test's: it is the first test importing it that made it."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import warnings

import psutil
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)
_found: list = []
_seen: set = set()
_state = {"file": None, "git": None}


def _report(kind: str, where: str, what) -> None:
    key = (kind, repr(what) if kind not in ("THREADS", "CHILDREN") else where)
    if key not in _seen:
        _seen.add(key)
        _found.append((kind, where, what))


def _entries(folder: str) -> set:
    try:
        return {os.path.join(folder, n) for n in os.listdir(folder) if not n.startswith("pytest-of-")}
    except OSError:
        return set()


def _open_in_checkout() -> set:
    out = set()
    for fd in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(_ROOT + os.sep) and os.sep + ".git" + os.sep not in target:
            out.add(target)
    return out


def _children() -> set:
    try:
        kids = psutil.Process().children(recursive=True)
        return {(p.pid, " ".join(p.cmdline())[:120]) for p in kids if p.status() != psutil.STATUS_ZOMBIE}
    except psutil.Error:
        return set()


def _git() -> set:
    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "-uall"], cwd=_ROOT,
                         capture_output=True, text=True)
    return set(out.stdout.splitlines()) if out.returncode == 0 else set()


def _snapshot() -> dict:
    return {"threads": {(t.name, t.ident) for t in threading.enumerate()}, "children": _children(),
            "environ": dict(os.environ), "cwd": os.getcwd(), "filters": list(warnings.filters),
            "signals": {s: signal.getsignal(s) for s in _SIGNALS}, "open": _open_in_checkout(),
            "tmp": _entries(tempfile.gettempdir()), "/tmp": _entries("/tmp")}


def _check_checkout(nodeid_file) -> None:
    now = _git()
    if _state["git"] is not None and now - _state["git"]:
        _report("CHECKOUT", _state["file"], sorted(now - _state["git"]))
    _state["git"], _state["file"] = now, nodeid_file


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if item.nodeid.split("::")[0] != _state["file"]:
        _check_checkout(item.nodeid.split("::")[0])
    b = _snapshot()
    yield
    a = _snapshot()
    where = item.nodeid
    if a["threads"] - b["threads"]:
        _report("THREADS", where, sorted(n for n, _ in a["threads"] - b["threads"]))
    if a["children"] - b["children"]:
        _report("CHILDREN", where, sorted(c for _, c in a["children"] - b["children"]))
    for k in sorted(set(a["environ"]) | set(b["environ"])):
        if a["environ"].get(k) != b["environ"].get(k):
            _report("ENVIRON", where, (k, b["environ"].get(k), a["environ"].get(k)))
    if a["cwd"] != b["cwd"]:
        _report("CWD", where, (b["cwd"], a["cwd"]))
    if a["filters"] != b["filters"]:
        _report("WARNINGS", where, [f[:3] for f in a["filters"] if f not in b["filters"]])
    for s in _SIGNALS:
        if a["signals"][s] != b["signals"][s]:
            _report("SIGNAL", where, (signal.Signals(s).name, repr(a["signals"][s])))
    for kind in ("open", "tmp", "/tmp"):
        for p in sorted(a[kind] - b[kind]):
            _report({"open": "OPEN", "tmp": "TMPDIR", "/tmp": "/TMP"}[kind], where, p)


def pytest_configure(config):
    # (pytest-xdist's controller: dist is "no" in one process and in each worker)
    if getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput"):
        raise pytest.UsageError("-p leakcheck compares each test with the one before it in one process, and "
                                "pytest-xdist's workers (pyproject's -n logical) report nothing to this one: "
                                "add -n 0")


def pytest_sessionfinish(session):
    _check_checkout(None)
    out = os.environ.get("LEAKCHECK_OUT")
    if out:
        with open(out, "w") as f:
            f.writelines(f"{k}\t{w}\t{what}\n" for k, w, what in _found)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.section(f"leakcheck: {len(_found)} change(s) left behind")
    for kind, where, what in _found:
        terminalreporter.write_line(f"{kind:9} {where}: {str(what)[:300]}")
