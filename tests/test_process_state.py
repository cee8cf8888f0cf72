"""zoracle in its user's process: what a run, a command or a figure leaves behind in the process's
global state (threads, multiprocessing's start method, warning filters, torch's random streams,
matplotlib's backend) is what the caller had before.

Each check runs in a fresh interpreter: the state in question is the process's own, and this
test process has had every other test's runs, bars and figures in it already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh(code: str, tmp_path, *args: str) -> dict:
    """The JSON object that ``code`` prints last, run by a fresh interpreter on this checkout
    (stderr a pipe: no terminal, as in a log or CI)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                       timeout=300, cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


TRAIN = """
    import atexit, json, multiprocessing, sys, threading
    import numpy as np
    import zoracle as zo

    def run(progress):
        zo.train(lambda p: float(np.sum((p - 1.0) ** 2)), np.zeros(4), epochs=1, steps_per_epoch=2,
                 estimator=zo.CGE(), optimizer=zo.sgd(0.1), progress=progress)

    def monitors():  # (by class: tqdm names the thread "tqdm_monitor" only from 4.68.1 on)
        from tqdm._monitor import TMonitor
        return sum(isinstance(t, TMonitor) for t in threading.enumerate())

    count = getattr(atexit, "_ncallbacks", lambda: 0)
    progress = sys.argv[1] == "bar"
    n = count()
    run(progress)
    first, n_first = monitors(), count() - n
    for _ in range(3):
        run(progress)
    print(json.dumps({"monitors": [first, monitors()], "atexit": [n_first, count() - n],
                      "start_method": multiprocessing.get_start_method(allow_none=True)}))
"""


@pytest.fixture(scope="module")
def train_state(tmp_path_factory):
    """Four runs without a bar, and four with one, each in a fresh process."""
    return {mode: _fresh(TRAIN, tmp_path_factory.mktemp(mode), mode) for mode in ("quiet", "bar")}


def test_a_run_without_a_bar_leaves_no_thread_and_no_start_method(train_state):
    """progress=False made a disabled tqdm bar all the same: its monitor thread ran on after the run
    (waking every 10 s, for the life of the process), with an atexit handler, and its lock fixed
    multiprocessing's start method (a later ``set_start_method("spawn")`` raised RuntimeError)."""
    assert train_state["quiet"] == {"monitors": [0, 0], "atexit": [0, 0], "start_method": None}


def test_runs_with_a_bar_share_one_monitor_thread(train_state):
    """On a stream that is no terminal each run made a tqdm class of its own, and tqdm keeps a
    monitor thread per class, never stopped: one more thread (and atexit handler) per run, so a
    sweep of a thousand runs logging to a file held a thousand threads."""
    bar = train_state["bar"]
    assert bar["monitors"] == [1, 1]  # tqdm's own: one for the process
    assert bar["atexit"][1] == bar["atexit"][0]


def test_a_run_with_a_bar_leaves_the_start_method_to_the_program(train_state):
    """tqdm's first bar makes its lock in multiprocessing's default context, which fixes the start
    method: after a first ``zo.train`` (progress on by default) a program's or notebook's
    ``multiprocessing.set_start_method("spawn")`` raised RuntimeError (context has already been set)."""
    assert train_state["bar"]["start_method"] is None


APPS = """
    import json, sys
    import numpy as np
    import matplotlib
    matplotlib.use("svg")  # the calling program's backend
    import torch
    from zoracle import cli

    out = {}
    torch.manual_seed(5)
    before = torch.get_rng_state()
    out["rc"] = cli.main(["demo", "--methods", "fo", "--epochs", "1", "--json", "--plot", "demo.png"])
    out["rng"] = bool(torch.equal(before, torch.get_rng_state()))
    out["demo"] = matplotlib.get_backend()
    out["pyplot"] = "matplotlib.pyplot" in sys.modules

    matplotlib.use("svg")
    from zoracle.apps import defense
    rows = {name: defense.RowResult(name, {}, 0.0, 0, 0.0, 0.0, 0, 0.0, radii=[0.1, 0.4], correct=[True, False])
            for name in ("none", "mse", "deepzero", "hybrid", "fo")}
    defense.plot(defense.DefenseReport(defense.DefenseConfig(), rows, 0.9, 0.8, 1.0), "defense.png")
    out["defense"] = matplotlib.get_backend()

    matplotlib.use("svg")
    from zoracle.apps import sol
    from zoracle.adapters import phiflow as pf
    flow = pf.WakeFlow(nx=8, ny=16)
    test = pf.Reference(np.zeros((1, 2, 9, 16)), np.zeros((1, 2, 8, 16)), np.array([300.0]))
    traj = (np.zeros((2, 1, 2, 9, 16)), np.zeros((2, 1, 2, 8, 16)))
    sol._plot(pf, flow, test, traj, ["SRC", "ZO-SOL"], "sol.png", sol.Config.quick())
    out["sol"] = matplotlib.get_backend()
    out["sizes"] = [__import__("os").path.getsize(f) for f in ("demo.png", "defense.png", "sol.png")]

    filters = list(__import__("warnings").filters)
    try:
        sol.run(sol.Config(fine_nx=16, factor=2, train_re=(0.001,)))
    except Exception as exc:
        out["sol_error"] = type(exc).__name__
    out["sol_filters"] = list(__import__("warnings").filters) == filters
    print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def apps_state(tmp_path_factory):
    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    pytest.importorskip("phi")
    return _fresh(APPS, tmp_path_factory.mktemp("apps"))


def test_a_command_run_through_the_python_api_keeps_the_callers_torch_random_stream(apps_state):
    """``cli.main(["demo", ...])`` inside a program reseeded its torch generator (the demo's
    ``torch.manual_seed(--seed)`` for its models): the program's next random draws changed."""
    assert apps_state["rc"] == 0
    assert apps_state["rng"] is True


@pytest.mark.parametrize("app", ["demo", "defense", "sol"])
def test_the_apps_figures_keep_the_callers_matplotlib_backend(apps_state, app):
    """The apps' figures called ``matplotlib.use("Agg")`` and drew through pyplot: a program (a
    notebook) that ran ``zoracle demo --plot`` through the Python API lost its own backend."""
    assert apps_state[app] == "svg"
    assert apps_state["pyplot"] is False  # (the demo's run: no pyplot figure left open either)
    assert min(apps_state["sizes"]) > 1000  # the figures are still written


def test_sol_run_keeps_the_callers_warning_filters(apps_state):
    """``sol.run`` added two "ignore" filters for PhiFlow's warnings to the process for good, also
    when the run failed at once (a Reynolds number the solver cannot step)."""
    assert apps_state["sol_error"] == "ArgumentError"
    assert apps_state["sol_filters"] is True


def test_a_local_dask_cluster_leaves_the_environment_as_it_found_it(tmp_path, monkeypatch):
    """The nannies of the local cluster set OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_,
    PYTHONHASHSEED, ... in the driver's os.environ for the workers they spawn, and left them there
    after close: a torch imported afterwards ran on one thread, every process the program started
    later inherited them. (A variable the program sets meanwhile is its own: kept.)"""
    pytest.importorskip("distributed")
    import numpy as np

    import zoracle as zo
    from zoracle.executors import DaskExecutor

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    before = dict(os.environ)
    with DaskExecutor("local:1", local_directory=str(tmp_path)) as ex:
        est = zo.estimate_gradient(np.linalg.norm, np.ones(3), zo.CGE(), executor=ex)
        started = dict(os.environ)
        os.environ["MKL_NUM_THREADS"] = "2"  # the program's own, while the cluster runs
    after = dict(os.environ)
    assert np.allclose(est.grad, 3 ** -0.5, atol=1e-2)
    assert started == before
    assert after == dict(before, MKL_NUM_THREADS="2")


RAY = """
    import faulthandler, json, os, signal, sys, tempfile
    import numpy as np
    import zoracle as zo
    from zoracle.executors import RayExecutor

    def mine(signum, frame):
        pass

    signal.signal(signal.SIGTERM, mine)
    os.environ.pop("PYTHONBREAKPOINT", None)
    with RayExecutor("local:1", allow_network=True, _temp_dir=tempfile.mkdtemp(prefix="s", dir=sys.argv[1])) as ex:
        est = zo.estimate_gradient(np.linalg.norm, np.ones(3), zo.CGE(), executor=ex)
    print(json.dumps({"sigterm": signal.getsignal(signal.SIGTERM) is mine, "faulthandler": faulthandler.is_enabled(),
                      "breakpoint": os.environ.get("PYTHONBREAKPOINT"), "grad": est.grad.tolist()}))
"""


@pytest.mark.slow  # (a cluster start: run in CI's slow suite, keeping the default run under 10 min loaded)
def test_a_local_ray_session_gives_back_the_programs_sigterm_handler_and_breakpoint(tmp_path):
    """ray.init puts its own SIGTERM handler (sys.exit) in place of the program's, points
    PYTHONBREAKPOINT at Ray's debugger and turns faulthandler on; ray.shutdown leaves all three. After
    a RayExecutor that started Ray had closed, a SIGTERM no longer reached the program's handler (a
    checkpoint-and-exit one), and a ``breakpoint()`` went to Ray's debugger."""
    import importlib.util

    import conftest

    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray not installed (pip install -e '.[ray]')")
    got = _fresh(RAY, tmp_path, conftest.RAY_DIR)
    assert got["grad"] == pytest.approx([3 ** -0.5] * 3, abs=1e-2)
    assert got["sigterm"] is True
    assert got["breakpoint"] is None
    assert got["faulthandler"] is False
