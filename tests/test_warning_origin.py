"""A warning zoracle issues points at the user's line (the call into zoracle), not at a line of
zoracle's own, however deep inside the library it is found: `warnings.filterwarnings(module=...)`,
`python -W`, logging.captureWarnings and the printed location all read that frame."""

import inspect
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import zoracle as zo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _origins(fn):
    """(filename, lineno) of every warning ``fn()`` issues, and the line ``fn`` (a one-line lambda) is on."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        fn()
    return [(os.path.abspath(w.filename), w.lineno, str(w.message)) for w in got], inspect.getsourcelines(fn)[1]


def _assert_here(fn, text):
    origins, line = _origins(fn)
    mine = [o for o in origins if text in o[2]]
    assert mine, origins
    assert [(f, n) for f, n, _ in mine] == [(os.path.abspath(__file__), line)] * len(mine)


class _Seeded:
    def __call__(self, x):
        return float(np.sum((x - 1.0) ** 2))

    def bind(self, b):
        return lambda x: float(np.sum((x - b) ** 2))


def test_short_epoch_warning_points_at_the_train_call():
    def batches(epoch):  # one batch fewer than steps_per_epoch from epoch 1 on
        return [1.0, 2.0] if epoch == 0 else [1.0]

    _assert_here(lambda: zo.train(_Seeded(), np.zeros(3), batches=batches, steps_per_epoch=2, epochs=2, estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.01), progress=False, rng=0),
                 "fewer than `steps_per_epoch`")


torch = pytest.importorskip("torch")


def _mlp(norm=False):
    from zoracle.adapters.torch import TorchOracle, cross_entropy
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4, 16)] + ([torch.nn.BatchNorm1d(16)] if norm else [torch.nn.ReLU()]) + [torch.nn.Linear(16, 3)]
    return TorchOracle(torch.nn.Sequential(*layers), cross_entropy)


XY = (torch.randn(12, 4, generator=torch.Generator().manual_seed(1)), torch.arange(12) % 3)


def test_smart_ratio_warning_points_at_the_train_call():
    oracle = _mlp()  # linear layers only: Smart Ratio's linear share exceeds the kept weights
    _assert_here(lambda: zo.train(oracle, oracle.initial_params(), batches=[XY], epochs=1, estimator=zo.CGE(mu=5e-3), optimizer=zo.sgd(0.01), sparsity=0.9, ratios="smart", progress=False, rng=0),
                 "smart_ratio:")


@pytest.mark.parametrize("how", ["call", "estimate", "train"])
def test_autocast_warning_points_at_the_users_line(how):
    oracle = _mlp()
    theta = oracle.initial_params()
    bound = oracle.bind(XY)  # bound outside autocast: the first query below is the one that warns
    calls = {
        "call": lambda: bound(theta),
        "estimate": lambda: zo.estimate_gradient(bound, theta, zo.CGE(mu=5e-3)),
        "train": lambda: zo.train(oracle, theta, batches=[XY], epochs=1, estimator=zo.CGE(mu=5e-3), optimizer=zo.sgd(0.01), progress=False, rng=0),
    }
    with torch.autocast("cpu"):
        _assert_here(calls[how], "torch.autocast")


@pytest.mark.slow
def test_worker_state_warning_points_at_the_users_line():
    oracle = _mlp(norm=True)  # BatchNorm in train mode: its statistics update on the worker
    with zo.executors.JoblibExecutor(2) as ex:
        _assert_here(lambda: zo.estimate_gradient(oracle.bind(XY), oracle.initial_params(), zo.CGE(mu=5e-3), executor=ex),
                     "updates the model's own state")


class _Branchy(torch.nn.Module):  # Python control flow on a value: torch.func.vmap cannot batch it
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 3)

    def forward(self, x):
        y = self.a(x)
        return y * 2 if float(y.sum()) > 1e9 else y


def test_vmap_fallback_warning_points_at_the_estimate_call():
    from zoracle.adapters.torch import TorchOracle, cross_entropy
    torch.manual_seed(0)
    oracle = TorchOracle(_Branchy(), cross_entropy, blocks="none")
    bound, theta = oracle.bind(XY), oracle.initial_params()
    _assert_here(lambda: zo.estimate_gradient(bound, theta, zo.CGE(mu=5e-3)), "torch.func.vmap failed")


def test_malloc_warning_points_at_a_direct_call():
    code = "import warnings\nwarnings.simplefilter('always')\nimport zoracle as zo\nzo.reuse_freed_memory()\n"
    env = dict(os.environ, ZORACLE_MALLOC="bogus", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "<string>:4: UserWarning: ZORACLE_MALLOC='bogus'" in out.stderr, out.stderr


def test_vmap_fallback_warning_on_a_worker_thread_names_zoracle_not_threading():
    # a worker thread's stack holds no user line: the warning is zoracle's own (module filters on
    # "zoracle" match it), not threading.py's
    from zoracle.adapters.torch import TorchOracle, cross_entropy
    torch.manual_seed(0)
    oracle = TorchOracle(_Branchy(), cross_entropy, blocks="none")
    bound, theta = oracle.bind(XY), oracle.initial_params()
    with zo.executors.JoblibExecutor(2, backend="threading") as ex:
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            zo.estimate_gradient(bound, theta, zo.CGE(mu=5e-3), executor=ex)
    mine = [w for w in got if "torch.func.vmap failed" in str(w.message)]
    assert mine, [str(w.message) for w in got]
    for w in mine:
        assert os.path.basename(w.filename) != "threading.py", (w.filename, w.lineno)
        assert os.path.abspath(w.filename).startswith(ROOT), (w.filename, w.lineno)


class _Noisy(torch.nn.Module):  # noise on the input: the loss is not a function of the parameters
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.a(x + 0.1 * torch.randn_like(x))


@pytest.mark.filterwarnings("ignore:TorchOracle. step:RuntimeWarning")  # (the traced draw mixes samples)
@pytest.mark.parametrize("blocks", [None, "none"])  # the split retired, or none to retire: two paths that warn
def test_not_repeatable_warning_points_at_the_bind_call(blocks):
    from zoracle.adapters.torch import TorchOracle, cross_entropy
    kw = {} if blocks is None else {"blocks": blocks}
    _assert_here(lambda: TorchOracle(_Noisy(), cross_entropy, **kw).bind(XY), "is not repeatable")


def _warnings_of(code, cwd):
    """The warnings ``python -c code`` prints, run in ``cwd`` (its folder first on sys.path)."""
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS="always")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stderr


@pytest.mark.slow
def test_adapters_imported_by_their_own_name_warn_at_the_users_line():
    """From the clone's root, `from adapters.torch import TorchOracle` runs the same files as
    zoracle.adapters.torch under the module names adapters.*: the walk to the user's line stopped
    at the first of them (the warning named adapters/torch.py)."""
    code = ("import torch\n"
            "from adapters.torch import TorchOracle, cross_entropy\n"
            "o = TorchOracle(torch.nn.Sequential(torch.nn.Linear(4, 3)), cross_entropy)\n"
            "b = o.bind((torch.randn(6, 4), torch.arange(6) % 3))\n"
            "with torch.autocast('cpu'):\n"
            "    b(o.initial_params())\n")
    err = _warnings_of(code, ROOT)
    assert "<string>:6: RuntimeWarning: TorchOracle: queried inside torch.autocast" in err, err


def test_a_users_own_package_named_adapters_is_the_users_line(tmp_path):
    """Only zoracle's own adapters are walked over: a package of the user's named `adapters` is theirs."""
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "__init__.py").write_text(
        "import numpy as np\nimport zoracle as zo\n\n\ndef run():\n"
        "    zo.train(lambda x: float(x @ x), np.ones(2), epochs=1, eval_every=2, progress=False)\n")
    err = _warnings_of("import adapters\nadapters.run()\n", tmp_path)
    assert f"{tmp_path / 'adapters' / '__init__.py'}:6: UserWarning: train: `eval_every`=2" in err, err
