"""Shared test configuration: a deterministic hypothesis profile, backend parametrization,
and one temporary directory per test session that is removed when the session ends."""

from __future__ import annotations

import atexit
import functools
import os
import signal
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# OpenMP threads (torch's intra-op pool) that finish a parallel region sleep instead of spinning
# for the next one. On a loaded machine the spinning threads take the cores the others need: a
# docs block with ResNet20 ran 64 s on 2 threads at load 6, 7 s passive, the same numbers. Set
# before torch is imported (here, before any test module); inherited by every subprocess.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Everything the suite and the processes it starts put in the temporary directory (Dask's
# dask-scratch-space, worker files, tmp_path) lands in this session directory, removed at the
# end: TMPDIR is inherited by every subprocess and worker. Short, for Unix socket paths.
# pytest-xdist's workers inherit the controller's TMPDIR: each puts its own directory beside the
# controller's, not inside it (Ray's socket paths under a nested one passed 107 bytes).
_PREVIOUS_PARENT = os.environ.get("ZORACLE_TEST_TMP_PARENT")
_PARENT = _PREVIOUS_PARENT or tempfile.gettempdir()
os.environ["ZORACLE_TEST_TMP_PARENT"] = _PARENT
_OWNER = ".owner"  # "host pid-namespace pid" of the process whose session directory it is


def _pid_namespace() -> str:
    """The PID namespace this process's pids are numbered in (Linux: ``pid:[4026531836]``), ``-`` where
    there is none to read. Two containers may share a host name and /tmp (a Kubernetes pod's, an emptyDir)
    with pid namespaces of their own: a pid of the other one's is no process here, alive or dead."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "-"


def _owner_line(pid: int) -> str:
    return f"{os.uname().nodename} {_pid_namespace()} {pid}"


def _sweep_stale(parent: str) -> None:
    """Remove the session directories of this host's test processes that have died (a run killed
    by a signal or a timeout never reaches ``pytest_unconfigure``): each names its owner in
    ``.owner``. A directory without one, another host's or pid namespace's (a container sharing /tmp),
    another user's or a living process's is left alone."""
    host, ns = os.uname().nodename, _pid_namespace()
    try:
        names = [n for n in os.listdir(parent) if n.startswith("zt-")]
    except OSError:
        return
    for name in names:
        path = os.path.join(parent, name)
        try:
            with open(os.path.join(path, _OWNER)) as f:
                owner_host, owner_ns, pid = f.read().split()
            if owner_host != host or owner_ns != ns or os.stat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):  # no owner file, not ours to signal, unreadable
            continue


if _PREVIOUS_PARENT is None:  # the controller (or a run without workers): once a run
    _sweep_stale(_PARENT)
_SESSION_TMP = tempfile.mkdtemp(prefix="zt-", dir=_PARENT)
with open(os.path.join(_SESSION_TMP, _OWNER), "w") as _f:
    _f.write(_owner_line(os.getpid()) + "\n")


def _remove_at_exit(pid: int = os.getpid()) -> None:
    """A process that imports this module without running pytest (a spawned multiprocessing or Dask
    worker unpickling a test's function imports its test module, and so this one) never reaches
    ``pytest_unconfigure``: its directory goes when it exits. Only in the process that made it: a
    forked child inherits this handler and the directory of a parent that is still running."""
    if os.getpid() == pid:
        shutil.rmtree(_SESSION_TMP, ignore_errors=True)


atexit.register(_remove_at_exit)
_PREVIOUS_TMPDIR = os.environ.get("TMPDIR")
os.environ["TMPDIR"] = _SESSION_TMP
tempfile.tempdir = None  # recomputed from TMPDIR on next use

# Ray's session files and auth token live in a private directory of the session directory,
# never in ~/.ray or /tmp/ray. Ray reads these variables when it is first imported, and a
# test module may import it while being collected (EvoTorch, in the ``bench`` extra, imports
# Ray): so they are set here, before any test module is imported.
RAY_DIR = tempfile.mkdtemp(prefix="r", dir=_SESSION_TMP)  # mode 0700; short: socket paths < 108 bytes
_RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": os.path.join(RAY_DIR, "auth_token"),
            "RAY_USAGE_STATS_ENABLED": "0"}
_PREVIOUS_RAY_ENV = {k: os.environ.get(k) for k in _RAY_ENV}
os.environ.update(_RAY_ENV)


def pytest_unconfigure(config):
    for k, v in _PREVIOUS_RAY_ENV.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if _PREVIOUS_PARENT is None:
        os.environ.pop("ZORACLE_TEST_TMP_PARENT", None)
    if _PREVIOUS_TMPDIR is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = _PREVIOUS_TMPDIR
    tempfile.tempdir = None
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=50, print_blob=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@functools.lru_cache(maxsize=None)
def _cupy_or_reason():
    """CuPy when it is installed *and* a CUDA device answers; otherwise the skip reason."""
    try:
        import cupy
    except ImportError:
        return None, 'cupy is not installed (pip install -e ".[gpu]")'
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "no CUDA device"
        cupy.zeros(1).sum()  # a real device call: raises without a driver
    except Exception as exc:  # no driver / no device: skip, never fail
        return None, f"CuPy present but no usable GPU ({type(exc).__name__})"
    return cupy, ""


# The variants of parametrized tests (and a hypothesis state machine's TestCase) that take 1.5 s or more on
# the slowest CPU CI ran on (an AVX2 AMD EPYC, 2 cores), marked slow here where their siblings stay in the
# default run; a whole test of 1.5 s or more carries ``@pytest.mark.slow`` itself (CONTRIBUTING.md).
SLOW_VARIANTS = frozenset({
    "tests/test_adapter_torch.py::test_serial_cge_is_one_coordinate_call_equal_to_the_split_calls[65536-_tv_resnet-eval]",
    "tests/test_adapter_torch.py::test_serial_cge_is_one_coordinate_call_equal_to_the_split_calls[65536-_tv_resnet-train]",
    "tests/test_ask_tell_stateful.py::TestAskTellAgainstTrain::runTest",
    "tests/test_concurrent_callers.py::test_a_process_forked_while_another_thread_runs_on_the_executor[loky]",
    "tests/test_contributing.py::test_a_slow_test_named_by_its_id_says_how_to_run_it[collect]",
    "tests/test_contributing.py::test_a_slow_test_named_by_its_id_says_how_to_run_it[workers]",
    "tests/test_demo.py::test_out_of_range_flags_exit_2_as_argparse_errors[argv9---train-re]",
    "tests/test_dropout_mode_later_functions.py::test_a_torch_function_without_dropout_keeps_the_fast_path[compile]",
    "tests/test_errors.py::test_a_none_loss_is_shown_as_none_and_a_text_loss_quoted_once[loky]",
    "tests/test_executors.py::test_a_started_executor_used_in_forked_processes[loky]",
    "tests/test_executors.py::test_closing_an_executor_during_a_run_stops_the_run_with_a_clear_error[<lambda>1]",
    "tests/test_executors_cluster.py::test_dask_a_users_default_client_stays_theirs[address]",
    "tests/test_hardening_executors.py::test_timeout_names_the_shard_and_the_worker[loky]",
    "tests/test_missing_extras.py::test_an_example_without_its_extra_names_it_in_one_line[train_torch.py-matplotlib]",
    "tests/test_missing_extras.py::test_an_example_without_its_extra_names_it_in_one_line[train_torch.py-sklearn]",
    "tests/test_mutation_session76.py::test_the_suite_leaves_the_tmp_parent_variable_as_it_found_it[unset]",
    "tests/test_preemption.py::test_sigterm_in_a_slow_query_keeps_every_step_finished[processes]",
    "tests/test_preemption.py::test_sigterm_saves_the_steps_finished_before_the_workers_grace[processes]",
    "tests/test_reuse_after_failure.py::test_an_error_from_a_process_worker_shows_the_line_that_raised_it[plain-0]",
    "tests/test_reuse_after_failure.py::test_an_error_from_a_process_worker_shows_the_line_that_raised_it[plain-20]",
    "tests/test_torch_exact.py::test_batch_equals_the_plain_model_on_every_zoo_model[mobilenet_v3_small]",
    "tests/test_torch_exact.py::test_batch_equals_the_plain_model_on_every_zoo_model[resnet18]",
    "tests/test_torch_exact.py::test_the_zoo_keeps_its_split_under_the_sample_mixing_check[mobilenet_v3_small]",
    "tests/test_torch_families.py::test_family_keeps_its_split_and_cge_rge_equal_the_textbook_loop[densenet-eval]",
    "tests/test_torch_families.py::test_family_keeps_its_split_and_cge_rge_equal_the_textbook_loop[densenet-train]",
    "tests/test_torch_families.py::test_family_keeps_its_split_and_cge_rge_equal_the_textbook_loop[unet-eval]",
    *(f"tests/test_torch_families.py::test_family_keeps_its_split_and_cge_rge_equal_the_textbook_loop[{f}-train]"
      for f in ("inception", "resnext_regnet", "shufflenet_v2", "unet")),
})


def unmatched_slow_variants(nodeids, named_by_id=()) -> list:
    """The ids in ``SLOW_VARIANTS`` whose file was collected (``nodeids``) but which name none of its tests:
    a variant renamed, or its test, would otherwise go back to the default run unseen. A file that the
    command line names by test id (``named_by_id``: collected in part) is not judged."""
    ids = set(nodeids)
    files = {i.split("::")[0] for i in ids} - set(named_by_id)
    return sorted(v for v in SLOW_VARIANTS if v.split("::")[0] in files and v not in ids)


COLLECTED = pytest.StashKey[tuple]()  # (every collected test id, before -m deselects; the files named by id)


def pytest_collection_modifyitems(config, items):
    """The CuPy half of every ``xp`` test carries the declared ``gpu`` marker: ``pytest -m gpu``
    runs the GPU tests, ``-m "not gpu"`` leaves them out. The ids in ``SLOW_VARIANTS`` carry ``slow``
    (tests/test_slow_variants.py checks that each names a collected test)."""
    config.stash[COLLECTED] = ([item.nodeid for item in items],
                               {_naming_file(config, a) for a in config.args if "::" in a})
    for item in items:
        if getattr(getattr(item, "callspec", None), "params", {}).get("xp") == "cupy":
            item.add_marker(pytest.mark.gpu)
        if item.nodeid in SLOW_VARIANTS:
            item.add_marker(pytest.mark.slow)


_DESELECTED_SLOW: list = []


def pytest_deselected(items):
    _DESELECTED_SLOW.extend(item for item in items if item.get_closest_marker("slow") is not None)


def _naming_file(config, arg: str) -> str:
    """The test file of a command-line argument (as typed, relative to where pytest started), relative to
    the root dir, as node ids spell it."""
    path = arg.partition("::")[0]
    try:
        rel = os.path.relpath(os.path.join(str(config.invocation_params.dir), path), str(config.rootpath))
    except ValueError:  # (another drive)
        return path
    return rel.replace(os.sep, "/")


def _naming_arg(config, nodeid: str):
    """The command line's test id (``tests/x.py::test_y``, as typed) that names ``nodeid``, or None."""
    for arg in config.args:
        _, sep, rest = arg.partition("::")
        named = _naming_file(config, arg) + sep + rest
        if sep and (nodeid == named or nodeid.startswith((named + "[", named + "::"))):
            return arg
    return None


def _slow_args(config) -> list:
    """The command line's test ids that named a slow test this process deselected."""
    return list(dict.fromkeys(a for a in (_naming_arg(config, item.nodeid) for item in _DESELECTED_SLOW) if a))


_SLOW_ARGS_OF_WORKERS: list = []


def pytest_sessionfinish(session):
    """In a pytest-xdist worker (which collects, and so deselects, where the controller does not):
    hand the controller the ids for its summary."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["zoracle_slow_args"] = _slow_args(session.config)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    _SLOW_ARGS_OF_WORKERS.extend(getattr(node, "workeroutput", {}).get("zoracle_slow_args", ()))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """A slow test named by its id (``pytest tests/x.py::test_y``) was deselected by pyproject's
    ``-m 'not slow'`` with only "1 deselected" to show for it: say how to run it."""
    args = dict.fromkeys(_slow_args(config) + _SLOW_ARGS_OF_WORKERS)
    if args and config.option.markexpr == "not slow":
        terminalreporter.write_line(
            f"{', '.join(args)}: marked slow, which the default run leaves out (pyproject's addopts "
            f"-m 'not slow'); run it with: python -m pytest -m slow {' '.join(args)}")


@pytest.fixture(params=["numpy", "cupy"])
def xp(request):
    """The same test body on NumPy and, where a GPU exists, on CuPy."""
    if request.param == "numpy":
        return np
    cupy, reason = _cupy_or_reason()
    if cupy is None:
        pytest.skip(reason)
    return cupy


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (timings and float summation order), restored after."""
    torch = pytest.importorskip("torch")

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def ctrl_c():
    """SIGINT raising KeyboardInterrupt in this process, as in a terminal: a background job (nohup,
    `cmd &`, CI) starts with SIGINT ignored, and a test sending itself SIGINT then waited in vain."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


class Clock:
    """A monotonic clock that only a test moves on (tests/test_checkpoint_time.py's oracles add
    one second a query)."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    """A :class:`Clock` in place of the one ``checkpoint_every`` as a time reads."""
    c = Clock()
    monkeypatch.setattr("zoracle._cadence.monotonic", c)  # (train reads the clock there)
    return c


def edit_checkpoint_header(path, edit) -> None:
    """Rewrite a checkpoint's JSON header with ``edit(header)`` applied, as a later release would
    write it (save_checkpoint would stamp this release's format and version)."""
    import json

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["__meta__"].tobytes())
    edit(header)
    arrays["__meta__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def split_calls(oracle, theta, coords, step):
    """The losses of a prefix and suffix call per block (in max_queries_per_call chunks)."""
    call = oracle.max_queries_per_call
    starts = np.array([b.start for b in oracle.blocks])
    owner = np.searchsorted(starts, coords, side="right") - 1
    return np.concatenate([oracle.suffix(oracle.prefix(theta, b), theta, b, cb[lo:lo + call], step)
                           for b in np.unique(owner) for cb in [coords[owner == b]]
                           for lo in range(0, cb.size, call)])


def onnx_map_type(key_type, value_type):
    """An ONNX map type proto (``key_type`` a TensorProto element type, ``value_type`` a type proto),
    built by hand: ``onnx.helper.make_map_type_proto`` came in onnx 1.15 and the [onnx] extra admits 1.14."""
    import onnx

    out = onnx.TypeProto()
    out.map_type.key_type = key_type
    out.map_type.value_type.CopyFrom(value_type)
    return out
