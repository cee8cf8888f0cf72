"""A warning issued inside a process worker prints on the worker's stderr and does not reach the
driver's warning machinery (filters, catch_warnings, logging.captureWarnings), unlike serial runs
and threads; docs/executors.md says so."""

import os
import re
import warnings

import numpy as np

import zoracle as zo
from zoracle.executors import JoblibExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WarnsOnCall:
    """A plain oracle that warns on every call (a library would, on a fallback)."""

    def __call__(self, x):
        warnings.warn("oracle-side warning", RuntimeWarning)
        return float(np.sum(x ** 2))


def _recorded(executor):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        zo.estimate_gradient(WarnsOnCall(), np.ones(4), zo.CGE(mu=1e-3), executor=executor)
    return sum("oracle-side warning" in str(w.message) for w in got)


def test_process_worker_warnings_do_not_reach_the_driver_and_the_docs_say_so():
    assert _recorded(None) > 0  # serially the driver records them
    with JoblibExecutor(2) as ex:
        assert _recorded(ex) == 0  # on process workers it does not
    with open(os.path.join(ROOT, "docs", "executors.md"), encoding="utf-8") as f:
        text = " ".join(f.read().split())
    assert re.search(r"warning issued inside a process worker.*worker's stderr.*does not pass through your "
                     r"process's warning filters", text), "docs/executors.md does not say where worker warnings go"


def test_pythonwarnings_reaches_process_workers_and_the_docs_say_so():
    # unlike `python -W`, PYTHONWARNINGS is in the environment the workers inherit: there the
    # oracle's warning is an exception, and the estimate fails
    import subprocess
    import sys

    code = ("import warnings, numpy as np, zoracle as zo\n"
            "from zoracle.executors import JoblibExecutor\n"
            "class W:\n"
            "    def __call__(self, x):\n"
            "        warnings.warn('oracle-side warning', RuntimeWarning)\n"
            "        return float(np.sum(x ** 2))\n"
            "with JoblibExecutor(2) as ex:\n"
            "    try:\n"
            "        zo.estimate_gradient(W(), np.ones(4), zo.CGE(mu=1e-3), executor=ex)\n"
            "        print('NO ERROR')\n"
            "    except zo.OracleError as e:\n"
            "        print('ORACLE ERROR', 'RuntimeWarning' in str(e))\n")
    env = dict(os.environ, PYTHONWARNINGS="error::RuntimeWarning", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ORACLE ERROR True" in out.stdout, (out.stdout, out.stderr[-2000:])
    with open(os.path.join(ROOT, "docs", "executors.md"), encoding="utf-8") as f:
        text = " ".join(f.read().split())
    assert "PYTHONWARNINGS" in text, "docs/executors.md says nothing of PYTHONWARNINGS reaching the workers"
