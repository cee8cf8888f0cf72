"""What differs between the Python versions pyproject admits (requires-python >= 3.10): the
library and its test suite on 3.10, where some of 3.11's unifications are missing, and in an
environment with the core and test extras alone (as on a Python without a torch wheel)."""

import ast
import asyncio
import pathlib

import pytest

TESTS = pathlib.Path(__file__).resolve().parent

#: top-level packages of the optional extras (torch, onnx, phiflow, dask, ray, apps, bench)
OPTIONAL = {"torch", "onnx", "onnxruntime", "phi", "phiml", "distributed", "dask", "ray", "matplotlib",
            "sklearn", "evotorch", "cma", "mnist1d", "skl2onnx", "cupy"}


def _unguarded_imports(path: pathlib.Path) -> list:
    """The module-level imports of an optional extra in ``path`` not preceded by a
    ``pytest.importorskip`` of the same package."""
    skipped, found = set(), []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        for call in ast.walk(node):
            if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "importorskip" \
                    and call.args and isinstance(call.args[0], ast.Constant):
                skipped.add(str(call.args[0].value).split(".")[0])
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in OPTIONAL - skipped]
    return found


@pytest.mark.slow
def test_test_modules_skip_rather_than_error_without_an_optional_extra():
    """tests/test_step_overhead.py imported torch at module level: in an environment without torch
    (Python 3.10, 3.12 or 3.13 with the core and test extras) collection errored, and pytest ran
    nothing at all ("Interrupted: 1 error during collection")."""
    found = [hit for path in sorted(TESTS.glob("*.py")) for hit in _unguarded_imports(path)]
    assert not found, f"import these after pytest.importorskip(...): {found}"


def test_a_dask_wait_that_times_out_returns_no_answer_rather_than_raising():
    """distributed's wait raises asyncio's TimeoutError, a class of its own on Python 3.10 (the
    builtin one from 3.11): there a DaskExecutor(timeout=...) raised a bare asyncio TimeoutError out
    of the run, not the ShardTimeout naming the shard and the worker."""
    pytest.importorskip("distributed", reason="dask[distributed] not installed")
    from zoracle._executors_cluster import _DaskBackend

    class Client:
        def sync(self, *args, **kwargs):
            raise asyncio.TimeoutError()

    class Executor:
        client, _closing = Client(), False

    class Running:
        def done(self):
            return False

    backend = _DaskBackend(Executor(), None, {})
    backend.busy[("tcp://127.0.0.1:1", 0)] = (0, Running())
    assert backend.wait(0.01) == []
    assert list(backend.busy) == [("tcp://127.0.0.1:1", 0)]  # still running: the caller's timeout decides
