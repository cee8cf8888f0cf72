"""zoracle's process executors under multiprocessing's "spawn" and "forkserver" start methods (the
default on macOS and Windows; "forkserver" on Linux from Python 3.14): a program that trains inside
a process they started, e.g. a ``ProcessPoolExecutor`` running one training per setting."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import functools, multiprocessing, sys
    from concurrent.futures import ProcessPoolExecutor
    import numpy as np
    import zoracle as zo
    from zoracle.executors import JoblibExecutor

    class Quad:
        def __call__(self, x):
            return float(x @ x + np.sin(x).sum())

        def loss(self, x):
            return self(x) * 2.0

    def scaled(x, c):
        return float(c * (x @ x) + np.cos(x).sum())

    def job(_):
        x = np.linspace(-1.0, 1.0, 5)
        out = []
        with JoblibExecutor(2) as ex:
            for oracle in (Quad(), functools.partial(scaled, c=0.7), Quad().loss):
                try:
                    grad = zo.estimate_gradient(oracle, x, zo.CGE(), executor=ex).grad
                    same = np.array_equal(grad, zo.estimate_gradient(oracle, x, zo.CGE()).grad)
                    out.append("same" if same else "differs")
                except Exception as exc:
                    out.append(type(exc).__name__ + ": " + str(exc).splitlines()[0])
        from zoracle._pickling import cloudpickle_module
        by_value = getattr(cloudpickle_module(), "cloudpickle", None)
        out.append("left registered" if "__mp_main__" in getattr(by_value, "_PICKLE_BY_VALUE_MODULES", ())
                   else "unregistered")
        return out

    if __name__ == "__main__":
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(sys.argv[1])) as pool:
            print("\\n".join(pool.submit(job, 0).result(timeout=240)))
""")


@pytest.mark.parametrize("method", [m for m in ("spawn", "forkserver") if m in multiprocessing.get_all_start_methods()])
def test_oracles_of_a_script_run_in_a_spawned_process_reach_the_workers(tmp_path, method):
    """In a process started by "spawn" or "forkserver" the script runs again as ``__mp_main__``;
    cloudpickle sent its classes and functions by reference, which a zoracle worker (which never
    runs the script) could not load: a class, a partial of a function and a bound method of the
    script each failed twice (ShardFailed: "Can't get attribute 'Quad' on <module '__main__'>").
    They travel by value now, and give the serial gradient bit for bit; cloudpickle is left as it
    was for the process's other users."""
    script = tmp_path / "train_many.py"
    script.write_text(_SCRIPT)
    run = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["same", "same", "same", "unregistered"], run.stdout + run.stderr
