"""An oracle's module reloaded in the driver (Jupyter's importlib.reload) while a process
executor's workers keep the version they imported first."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

import zoracle as zo
from zoracle.executors import JoblibExecutor

_SOURCE = ("import numpy as np\n\n\nclass Loss:\n    def __call__(self, x):\n"
           "        return float(np.sum(x ** 2) * {k})\n\n\ndef loss(x):\n    return float(np.sum(x ** 2) * {k})\n")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the user's own, importable by the driver and its workers (sys.path travels)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"zoracle_user_oracle_{tmp_path.name.replace('-', '_')}"
    path = tmp_path / f"{name}.py"
    path.write_text(_SOURCE.format(k="1.0"))
    module = importlib.import_module(name)

    def edit(k):  # (a size of its own: the import system cannot take it for the old file)
        path.write_text(_SOURCE.format(k=k))
        importlib.invalidate_caches()
        return importlib.reload(module)

    module.edit = edit
    yield module
    sys.modules.pop(name, None)


@pytest.mark.parametrize("kind", ["instance", "function"])
def test_a_reloaded_oracle_module_is_refused_not_run_as_the_old_code(user_module, kind):
    """After editing the module and importlib.reload, the workers kept the old module: the
    estimate was the old code's (gradient 2x instead of 20x), with no error."""
    make = (lambda m: m.Loss()) if kind == "instance" else (lambda m: m.loss)
    x = np.ones(3)
    with JoblibExecutor(2) as ex:
        first = zo.estimate_gradient(make(user_module), x, zo.CGE(), executor=ex)
        np.testing.assert_allclose(first.grad, zo.estimate_gradient(make(user_module), x, zo.CGE()).grad)
        edited = user_module.edit("10.0")
        new = make(edited)
        expected = zo.estimate_gradient(new, x, zo.CGE()).grad  # this process runs the new code
        assert not np.allclose(expected, first.grad)
        with pytest.raises(zo.ZoracleError, match=rf"module '{user_module.__name__}' of the oracle "
                                                  rf"{'Loss' if kind == 'instance' else 'loss'} was reloaded in this "
                                                  r"process \(importlib.reload\) after the executor's worker processes "
                                                  r"imported it; .* close the executor"):
            zo.estimate_gradient(new, x, zo.CGE(), executor=ex)
        ex.close()  # the fix the message names: workers start anew, with the new code
        np.testing.assert_allclose(zo.estimate_gradient(new, x, zo.CGE(), executor=ex).grad, expected)


def test_a_module_reloaded_before_its_first_oracle_was_sent_is_fine(user_module):
    x = np.ones(3)
    with JoblibExecutor(2) as ex:
        edited = user_module.edit("3.0")
        np.testing.assert_allclose(zo.estimate_gradient(edited.Loss(), x, zo.CGE(), executor=ex).grad,
                                   zo.estimate_gradient(edited.Loss(), x, zo.CGE()).grad)
        again = edited.Loss()  # another object of the same module version: nothing to refuse
        zo.estimate_gradient(again, x, zo.CGE(), executor=ex)


def test_threads_share_the_reloaded_module(user_module):
    """Threads run this process's modules: the reload reaches them, nothing is refused."""
    x = np.ones(3)
    with JoblibExecutor(2, backend="threading") as ex:
        zo.estimate_gradient(user_module.Loss(), x, zo.CGE(), executor=ex)
        edited = user_module.edit("10.0")
        np.testing.assert_allclose(zo.estimate_gradient(edited.Loss(), x, zo.CGE(), executor=ex).grad,
                                   zo.estimate_gradient(edited.Loss(), x, zo.CGE()).grad)


def test_forgetting_the_oracle_does_not_hide_the_reload(user_module):
    """forget() (the fix for an oracle changed in place) drops the oracle, not the module the
    workers imported: emptying the record when no oracle was held let the next run compute with
    the old code (gradient 2 instead of 20), without a word."""
    x = np.ones(3)
    with JoblibExecutor(2) as ex:
        old = user_module.Loss()
        zo.estimate_gradient(old, x, zo.CGE(), executor=ex)
        ex.forget(old)
        edited = user_module.edit("10.0")
        with pytest.raises(zo.ZoracleError, match=r"was reloaded in this process .* close the executor"):
            zo.estimate_gradient(edited.Loss(), x, zo.CGE(), executor=ex)
        ex.close()
        np.testing.assert_allclose(zo.estimate_gradient(edited.Loss(), x, zo.CGE(), executor=ex).grad,
                                   zo.estimate_gradient(edited.Loss(), x, zo.CGE()).grad)


def test_a_module_cloudpickle_sends_by_value_is_not_refused(user_module):
    """cloudpickle.register_pickle_by_value(module), cloudpickle's remedy for a module edited while
    workers run, sends its classes and functions by value: the workers run the reloaded code, and
    the refusal was false."""
    from zoracle._pickling import cloudpickle_module

    pickler = cloudpickle_module()
    pickler.register_pickle_by_value(user_module)
    try:
        x = np.ones(3)
        with JoblibExecutor(2) as ex:
            zo.estimate_gradient(user_module.Loss(), x, zo.CGE(), executor=ex)
            edited = user_module.edit("10.0")
            np.testing.assert_allclose(zo.estimate_gradient(edited.Loss(), x, zo.CGE(), executor=ex).grad,
                                       zo.estimate_gradient(edited.Loss(), x, zo.CGE()).grad)
    finally:
        pickler.unregister_pickle_by_value(user_module)


@pytest.mark.slow
def test_a_dask_executor_closed_and_reused_runs_the_reloaded_module(user_module, tmp_path):
    """close() is the fix the refusal names, on Dask too: its own cluster's workers start anew,
    and the record of the modules they imported goes with them (kept, the reloaded module was
    refused again on the new workers, which import it as it is now)."""
    pytest.importorskip("distributed", reason="dask[distributed] not installed (pip install -e '.[dask]')")
    from zoracle.executors import DaskExecutor

    x = np.ones(3)
    with DaskExecutor("local:1", local_directory=str(tmp_path / "dask")) as ex:
        zo.estimate_gradient(user_module.Loss(), x, zo.CGE(), executor=ex)
        edited = user_module.edit("10.0")
        with pytest.raises(zo.ZoracleError, match=r"was reloaded in this process .* close the executor"):
            zo.estimate_gradient(edited.Loss(), x, zo.CGE(), executor=ex)
        ex.close()
        np.testing.assert_allclose(zo.estimate_gradient(edited.Loss(), x, zo.CGE(), executor=ex).grad,
                                   zo.estimate_gradient(edited.Loss(), x, zo.CGE()).grad)
