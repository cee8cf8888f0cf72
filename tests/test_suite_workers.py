"""The suite's own set-up under pytest-xdist (pyproject's ``addopts`` runs one test process a
CPU): each worker's temporary directory lies beside the controller's, never inside it, so the
Unix socket paths Ray makes under it stay within the kernel's 107 bytes. A run killed before its
end leaves its directories behind; the next run removes those of this host's dead processes."""

from __future__ import annotations

import os
import subprocess
import sys

import conftest
import pytest


def test_the_session_directory_is_not_inside_another_session_directory():
    parent = os.environ["ZORACLE_TEST_TMP_PARENT"]
    assert os.path.dirname(conftest._SESSION_TMP) == parent
    assert not os.path.basename(parent).startswith("zt-"), parent  # a worker's inside the controller's
    assert os.environ["TMPDIR"] == conftest._SESSION_TMP


def test_ray_socket_paths_under_the_session_directory_fit_a_unix_socket():
    # the longest path Ray made in a test (tests/test_executors_cluster.py: a cluster's own
    # temporary folder under RAY_DIR, then Ray's session folder; its pid up to 7 digits)
    path = os.path.join(conftest.RAY_DIR, "sro4p7pbe", "r",
                        "session_2026-12-07_14-33-49_727930_3022000", "sockets", "plasma_store")
    assert len(path) <= 107, (len(path), path)


@pytest.mark.slow
def test_the_tests_own_dask_clusters_listen_on_loopback_only():
    """A ``distributed.LocalCluster`` a test starts itself (a user's cluster, handed to DaskExecutor)
    listened on every interface, its HTTP server on the fixed port 8787, without ``host=`` and with
    ``dashboard_address=None`` (in-process workers: without ``worker_dashboard_address``): off
    loopback, and taken by one test process while another wanted it."""
    import ast
    from pathlib import Path

    found = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "LocalCluster":
                kw = {k.arg: k.value for k in node.keywords}
                threads = isinstance(kw.get("processes"), ast.Constant) and kw["processes"].value is False
                # (workers in the test's process: its scheduler is inproc://, which host= breaks, and
                # each worker serves an HTTP server of its own)
                need = ("worker_dashboard_address", "127.0.0.1:") if threads else ("host", "127.0.0.1")
                ok = all(isinstance(kw.get(k), ast.Constant) and str(kw[k].value).startswith(v)
                         for k, v in (need, ("dashboard_address", "127.0.0.1:")))
                found.append((f"{path.name}:{node.lineno}", ok))
    assert len(found) >= 10, found
    assert [where for where, ok in found if not ok] == []


@pytest.mark.slow
def test_leakcheck_refuses_a_run_with_workers_and_reports_in_one_process():
    """``-p leakcheck`` under pyproject's ``-n logical`` ran in the workers, whose findings the controller
    never saw: it printed "leakcheck: 0 change(s) left behind" whatever the tests left. Refused, naming
    ``-n 0``; with ``-n 0`` it reports."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "tests")]))
    env.pop("PYTEST_XDIST_WORKER", None)
    test = "tests/test_suite_workers.py::test_ray_socket_paths_under_the_session_directory_fit_a_unix_socket"
    runs = {}
    for n in ("2", "0"):
        runs[n] = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", n,
                                  "-p", "leakcheck", test], cwd=root, env=env, capture_output=True, text=True,
                                 timeout=300)
    out = runs["2"].stdout + runs["2"].stderr
    assert runs["2"].returncode == 4 and "-p leakcheck compares each test" in out and "add -n 0" in out, out[-2000:]
    out = runs["0"].stdout + runs["0"].stderr
    assert runs["0"].returncode == 0 and "leakcheck: " in out and "1 passed" in out, out[-2000:]


def test_a_killed_runs_session_directories_are_removed_by_the_next_run(tmp_path):
    """Each session directory names its owner ("host pid-namespace pid"); a run removes those of dead
    processes on this host, and leaves a living process's, another host's, another pid namespace's (a
    container beside this one, sharing its host name and /tmp: its pids are none of this one's, and a
    live run's read as dead) and one without an owner file."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    host, ns = os.uname().nodename, conftest._pid_namespace()
    owners = {"zt-dead": conftest._owner_line(dead_pid), "zt-alive": conftest._owner_line(os.getpid()),
              "zt-elsewhere": f"another-{host} {ns} {dead_pid}", "zt-other-ns": f"{host} pid:[1{ns}] {dead_pid}",
              "zt-garbled": "no pid here", "zt-none": None, "other-dead": conftest._owner_line(dead_pid)}
    for name, owner in owners.items():
        (tmp_path / name / "sub").mkdir(parents=True)
        if owner is not None:
            (tmp_path / name / conftest._OWNER).write_text(owner + "\n")
    conftest._sweep_stale(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(owners) - {"zt-dead"})


def test_this_session_directory_names_its_owner():
    with open(os.path.join(conftest._SESSION_TMP, conftest._OWNER)) as f:
        assert f.read().split() == [os.uname().nodename, conftest._pid_namespace(), str(os.getpid())]


def test_a_process_that_imports_the_suites_conftest_without_pytest_leaves_no_directory(tmp_path):
    """A spawned worker unpickling a test's function imports its test module and this conftest, which
    makes a session directory; it never runs ``pytest_unconfigure`` (ci675 left six, each with its Ray
    directory). It removes its own at exit; a child it forks and that exits leaves the parent's."""
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); import conftest; "
            "assert os.path.isdir(conftest._SESSION_TMP); pid = os.fork()\n"
            "if pid == 0: sys.exit(0)\n"  # a forked child's exit runs the inherited handler: not its directory
            "os.waitpid(pid, 0); assert os.path.isdir(conftest._SESSION_TMP), 'the forked child removed it'")
    env = dict(os.environ, ZORACLE_TEST_TMP_PARENT=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code, os.path.dirname(conftest.__file__)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == []
