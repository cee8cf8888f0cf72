"""Dask LocalCluster and local Ray: same estimates as serial, loopback only, clean shutdown.

One cluster of each kind per module (Ray takes seconds to start). Ray's session files
and its auth token go to a short temporary directory, never to the home directory.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil
import pytest

import zoracle as zo
from zoracle.executors import DaskExecutor, RayExecutor

sys.path.insert(0, os.path.dirname(__file__))
import test_executors as te  # noqa: E402  (shared oracles)

D = te.D

# Ray reads its auth settings once, when it is first imported: set them before anything
# imports ray. The token lives in a short temporary directory, never in ~/.ray.
_RAY_TMP = tempfile.mkdtemp(prefix="zr", dir="/tmp")  # Ray's socket paths must stay < 108 chars
atexit.register(shutil.rmtree, _RAY_TMP, ignore_errors=True)  # also when no test here ran
(Path(_RAY_TMP) / "auth_token").write_text(secrets.token_hex(32))
_RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(Path(_RAY_TMP) / "auth_token"),
            "RAY_USAGE_STATS_ENABLED": "0"}
_SAVED_ENV = {k: os.environ.get(k) for k in _RAY_ENV}
os.environ.update(_RAY_ENV)


@pytest.fixture(scope="module", autouse=True)
def _restore_env():
    yield
    for k, v in _SAVED_ENV.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    shutil.rmtree(_RAY_TMP, ignore_errors=True)


def _by_value(*modules, ray=False):
    """Cluster workers cannot import test modules: ship their classes by value."""
    if ray:
        import ray.cloudpickle as cloudpickle
    else:
        import cloudpickle
    for m in modules:
        cloudpickle.register_pickle_by_value(m)


def _children() -> set:
    """Child processes, without multiprocessing's resource tracker (it lives until exit, by design)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(p.cmdline()):
                out.add(p.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return out


def _gone(pids, timeout=20.0) -> bool:
    return te.no_children(pids, timeout)


def _loss(x):
    return float(np.sum(np.sin(x) ** 2) + 0.1 * np.sum(x[:-1] * x[1:]))


class KillOnce:
    """SIGKILLs the first cluster worker process that evaluates a query."""

    def __init__(self, flag):
        self.flag = flag
        self.driver = os.getpid()

    def __call__(self, x):
        if os.getpid() != self.driver:
            try:
                fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return _loss(x)


class RaiseAt:
    def __init__(self, base, i):
        self.base, self.i = base.copy(), i

    def __call__(self, x):
        if x[self.i] != self.base[self.i]:
            raise KeyError("no such mesh")
        return _loss(x)


# ----------------------------------------------------------------------------- clusters
def _dask():
    pytest.importorskip("distributed", reason="dask[distributed] not installed (pip install 'zoracle[dask]')")
    _by_value(te, sys.modules[__name__])
    before = _children()
    with DaskExecutor("local:2") as ex:
        yield ex
    assert _gone(_children() - before), "Dask workers left behind"


def _ray():
    pytest.importorskip("ray", reason="ray not installed (pip install 'zoracle[ray]')")
    _by_value(te, sys.modules[__name__], ray=True)
    tmp = tempfile.mkdtemp(prefix="s", dir=_RAY_TMP)
    home_ray = Path.home() / ".ray"
    home_had = home_ray.exists()
    before = _children()
    with RayExecutor("local:2", _temp_dir=tmp) as ex:
        ex.tmp = tmp
        yield ex
    left = _children() - before
    assert _gone(left), f"Ray processes left behind: {_describe(left)}"
    assert home_had or not home_ray.exists(), "Ray wrote into ~/.ray"


def _describe(pids):
    out = []
    for pid in pids:
        try:
            out.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:120]}")
        except psutil.Error:
            pass
    return out


class ClusterContract:
    """The same checks for every cluster executor; subclasses provide the ``cluster`` fixture.

    Classes keep one cluster alive at a time (class-scoped fixtures): Dask is stopped
    before Ray starts.
    """

    @pytest.mark.parametrize("kind", ["callable", "batch", "split"])
    @pytest.mark.parametrize("est_name", ["cge", "sparse", "rge-sphere-central"])
    def test_equals_serial(self, cluster, kind, est_name):
        oracle = te.oracles()[kind]
        est, coords = te.ESTIMATORS[est_name]
        x = te.params()
        ref = zo.estimate_gradient(oracle, x, est, coordinates=coords, rng=5)
        for _ in range(2):
            got = zo.estimate_gradient(oracle, x, est, coordinates=coords, rng=5, executor=cluster)
            te.assert_same(got, ref)
        assert cluster.n_workers == 2 and cluster.last_run.shards >= 2

    def test_bound_data_oracle(self, cluster):
        parent = te.CountingData(os.devnull)
        rng = np.random.default_rng(1)
        x = te.params()
        for _ in range(3):
            bound = parent.bind(rng.standard_normal(D))  # whole bound copies refuse to pickle
            te.assert_same(zo.estimate_gradient(bound, x, zo.CGE(), executor=cluster),
                           zo.estimate_gradient(bound, x, zo.CGE()))

    def test_torch_oracle_feature_reuse(self, cluster):
        torch = pytest.importorskip("torch")
        tz = pytest.importorskip("zoracle.adapters.torch")
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
        base = tz.TorchOracle(net, torch.nn.CrossEntropyLoss(reduction="none"))
        theta = base.initial_params()
        rng = np.random.default_rng(2)
        oracle = base.bind((rng.standard_normal((10, 4)), rng.integers(0, 3, 10)))
        assert zo.capabilities(oracle).split
        for est in (zo.CGE(mu=1e-4), zo.RGE(mu=1e-3, directions=6)):
            ref = zo.estimate_gradient(oracle, theta, est, rng=4)
            te.assert_same(zo.estimate_gradient(oracle, theta, est, rng=4, executor=cluster), ref)

    def test_oracle_error_names_shard_and_cause(self, cluster):
        x = te.params()
        with pytest.raises(zo.OracleError) as info:
            zo.estimate_gradient(RaiseAt(x, 5), x, zo.CGE(), executor=cluster)
        assert info.value.query.startswith("coordinate 5")
        assert "KeyError" in str(info.value) and "shard" in str(info.value)

    def test_survives_a_killed_worker(self, cluster, tmp_path):
        x = te.params()
        ref = zo.estimate_gradient(_loss, x, zo.CGE())
        got = zo.estimate_gradient(KillOnce(str(tmp_path / "flag")), x, zo.CGE(), executor=cluster)
        assert (tmp_path / "flag").exists()  # a worker really died
        te.assert_same(got, ref)
        again = zo.estimate_gradient(_loss, x, zo.CGE(), executor=cluster)  # still usable
        te.assert_same(again, ref)


class TestDask(ClusterContract):
    @pytest.fixture(scope="class")
    def cluster(self):
        yield from _dask()

    def test_local_cluster_is_loopback_only(self, cluster):
        info = cluster.client.scheduler_info()
        assert info["address"].startswith("tcp://127.0.0.1:")
        assert info["workers"] and all(a.startswith("tcp://127.0.0.1:") for a in info["workers"])
        assert all(w["nanny"].startswith("tcp://127.0.0.1:") for w in info["workers"].values())
        for pid in cluster.client.run(os.getpid).values():  # the worker processes
            for c in psutil.Process(pid).net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    assert c.laddr.ip in ("127.0.0.1", "::1"), f"worker pid {pid} listens on {c.laddr}"


class TestRay(ClusterContract):
    @pytest.fixture(scope="class")
    def cluster(self):
        yield from _ray()

    def test_session_lives_in_the_temp_dir(self, cluster):
        """Ray cannot bind its core to loopback (it rewrites 127.0.0.1 to the node's address):
        the local session runs without dashboard, with token auth, its files in the temp dir."""
        import ray

        assert ray.is_initialized() and ray.get_runtime_context().get_node_id()
        session = Path(cluster.tmp) / "session_latest"
        assert session.exists() and (session / "logs").is_dir()
        assert os.environ["RAY_AUTH_TOKEN_PATH"].startswith(_RAY_TMP)
        assert len(cluster.pids) == 2 and all(psutil.pid_exists(p) for p in cluster.pids)
        assert [n["Alive"] for n in ray.nodes()] == [True]
