"""zoracle as a batch job on a shared node (SLURM, PBS, LSF): worker counts that follow the CPUs the
job was given, a scheduler's chosen signal that saves the steps finished, two jobs given one
checkpoint path, and a read-only (or unset) HOME with a small TMPDIR."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "LOKY_MAX_CPU_COUNT")}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra)
    return env


def _on_one_cpu(code: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """``code`` run by a fresh interpreter allowed one CPU of this machine's (a SLURM job's cgroup
    cpuset, ``taskset -c 0``)."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))


needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
                                    reason="needs CPU affinity and two CPUs")


# ----------------------------------------------------------------------------- default worker counts
@needs_affinity
def test_a_local_dask_cluster_starts_one_worker_per_cpu_the_job_may_use(tmp_path):
    """DaskExecutor("local") started os.cpu_count() workers: a SLURM job given 4 CPUs of a 128-core
    node ran 128 worker processes on its 4 CPUs. It now starts one per CPU this process may use
    (its affinity mask and CPU quota, as JoblibExecutor(-1) counts them)."""
    pytest.importorskip("distributed", reason="dask[distributed] not installed (pip install -e '.[dask]')")
    out = _on_one_cpu(f"""
        import os
        from zoracle.executors import DaskExecutor
        with DaskExecutor("local", processes=False, local_directory={str(tmp_path)!r}) as ex:
            ex.start()
            print(len(os.sched_getaffinity(0)), os.cpu_count(), ex.n_workers, len(ex.client.scheduler_info()["workers"]))
        """, _env())
    assert out.returncode == 0, out.stderr[-3000:]
    cpus, machine, workers, started = map(int, out.stdout.split())
    assert (cpus, workers, started) == (1, 1, 1) and machine >= 2, out.stdout


@needs_affinity
def test_a_local_ray_session_is_sized_to_the_cpus_the_job_may_use(tmp_path):
    """RayExecutor("local", allow_network=True) passed num_cpus=os.cpu_count() to ray.init, so its
    session (and then its actors, one per CPU of the session) counted the whole node, not the job's
    CPUs. ray.init is replaced by one that notes its arguments: no session is started."""
    pytest.importorskip("ray")
    out = _on_one_cpu(f"""
        import ray
        from zoracle.executors import RayExecutor
        seen = {{}}
        def init(**kw):
            seen.update(kw)
            raise RuntimeError("noted")
        ray.init = init
        try:
            with RayExecutor("local", allow_network=True, _temp_dir={str(tmp_path / "r")!r}) as ex:
                ex.start()
        except RuntimeError as exc:
            assert "noted" in str(exc), exc
        print(seen["num_cpus"])
        """, _env(RAY_AUTH_TOKEN="0" * 64))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["1"], out.stdout



def _thread_vars(x):
    return float(os.environ["OMP_NUM_THREADS"]) + 1000.0 * float(os.environ["MKL_NUM_THREADS"])


def test_process_workers_keep_the_thread_count_the_job_sets(monkeypatch):
    """A job script's ``export OMP_NUM_THREADS=3`` reaches each process worker as it is (the user's
    count wins); a variable the job left unset gets the worker's share of the CPUs this process may
    use, so that n workers do not each start a BLAS pool as large as the allocation."""
    import numpy as np

    import zoracle as zo
    from zoracle.executors import JoblibExecutor, usable_cpus

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    with JoblibExecutor(2) as ex:
        got = zo.estimate_gradient(_thread_vars, np.ones(1), zo.CGE(), executor=ex).loss
    assert got == 3 + 1000 * max(1, usable_cpus() // 2)


# ----------------------------------------------------------------------------- a scheduler's chosen signal
def _usr1_job(tmp_path):
    """tests/test_preemption.py's job, its handler on SIGUSR1 (``sbatch --signal=USR1@60``) in place of SIGTERM."""
    from test_preemption import MODULE

    sigterm = "signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))"
    assert sigterm in MODULE
    (tmp_path / "prem.py").write_text(MODULE.replace(sigterm, sigterm.replace("SIGTERM", "SIGUSR1")))


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1") or not hasattr(os, "killpg"), reason="POSIX signals")
@pytest.mark.parametrize("to", ["driver", "group"])
@pytest.mark.slow
def test_sigusr1_turned_into_systemexit_saves_the_steps_finished(tmp_path, monkeypatch, to):
    """SLURM's ``--signal=USR1@60`` (a warning ahead of the time limit) handled as docs/training.md
    handles SIGTERM, ``signal.signal(signal.SIGUSR1, lambda s, f: sys.exit(128 + s))``: the run saves
    the 6 steps it finished, inside the blocked query of its 7th, on process workers, whether the
    signal reaches the driver alone (``B:USR1``, ``kill``) or every process of the job (the workers
    too, whose default for SIGUSR1 is to die), and the resumed run is the whole run, bit for bit."""
    import time

    import zoracle as zo

    _usr1_job(tmp_path)
    env = _env(PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, str(tmp_path / "prem.py"), str(tmp_path / "c.npz"), "processes"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # (a bound on a loaded machine, not a timing)
        while not (tmp_path / "blocked").exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None and (tmp_path / "blocked").exists(), p.communicate()[1].decode()[-2000:]
        if to == "group":
            os.killpg(p.pid, signal.SIGUSR1)
        else:
            p.send_signal(signal.SIGUSR1)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    err = err.decode()
    assert p.returncode == 128 + signal.SIGUSR1, err[-2000:]
    assert "stopped inside step 6 (SystemExit)" in err and "holds the 6 steps" in err, err[-2000:]
    _, meta = zo.load_checkpoint(tmp_path / "c.npz")
    assert (meta["step"], meta["nfev"]) == (6, 24), meta["step"]
    (tmp_path / "block").unlink()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "prem", raising=False)  # (another test's folder)
    import prem

    resumed, whole = prem.run(checkpoint=tmp_path / "c.npz", resume=True), prem.run()
    assert resumed.params.tobytes() == whole.params.tobytes() and resumed.nfev == whole.nfev


# ----------------------------------------------------------------------------- two jobs, one checkpoint path
TWO_WRITERS = textwrap.dedent(
    """
    import json, sys, time, warnings
    import numpy as np
    import zoracle as zo

    def loss(x):
        time.sleep(0.002)  # (a black box: the two runs' saves interleave)
        return float(np.sum((x - 1.0) ** 2))

    def run(seed, steps, **kw):
        return zo.train(loss, np.zeros(4), epochs=1, steps_per_epoch=steps, estimator=zo.RGE(directions=2),
                        optimizer=zo.sgd(0.01), rng=seed, progress=False, **kw)

    if __name__ == "__main__":
        path, seed = sys.argv[1], int(sys.argv[2])
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                run(seed, 40, checkpoint=path, checkpoint_every=1)
                outcome = "finished"
            except zo.CheckpointError as exc:
                outcome = "refused" if "another writer" in str(exc) else str(exc)
        told = [str(w.message) for w in seen if "another writer" in str(w.message) or "earlier run" in str(w.message)]
        print(json.dumps({"seed": seed, "outcome": outcome, "told": told}))
    """
)


@pytest.mark.parametrize("nodes", ["one node", "two nodes"])
def test_two_jobs_given_one_checkpoint_path_never_leave_a_mixed_file(tmp_path, monkeypatch, nodes):
    """Two array tasks given the same checkpoint path by mistake, on one node or on two (their own
    temporary folders: /tmp is a node's own, the checkpoint's folder shared). Each save is written
    whole under a name of its own and renamed into place, so the file is always one run's state at
    one of its steps, never a mix: the file resumes as that run's, bit for bit. And one of them is
    told (the run whose file was rewritten stops with CheckpointError, or the later one was warned
    at its start): across nodes, whose temporary folders hold locks the other node does not see,
    both runs of such a pair finished without a word in 2 of 16 tries, one's checkpoint silently gone (their saves'
    checks and renames interleaved); the lock file beside the checkpoint now serializes them."""
    import json

    import zoracle as zo

    (tmp_path / "two.py").write_text(TWO_WRITERS)
    ckpt = tmp_path / "shared" / "run.npz"
    ckpt.parent.mkdir()
    procs = []
    for seed in (1, 2):
        tmp = tmp_path / ("tmp" if nodes == "one node" else f"tmp{seed}")
        tmp.mkdir(exist_ok=True)
        procs.append(subprocess.Popen([sys.executable, str(tmp_path / "two.py"), str(ckpt), str(seed)],
                                      env=_env(TMPDIR=str(tmp)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert all(o["outcome"] in ("finished", "refused") for o in outs), outs
    assert any(o["outcome"] == "refused" or o["told"] for o in outs), outs
    arrays, meta = zo.load_checkpoint(ckpt)
    seed = meta["config"]["seed"]
    assert seed in (1, 2) and len(meta["history"]["steps"]) == meta["step"], (seed, meta["step"])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "two", raising=False)
    import two

    same = two.run(seed, meta["step"])  # that run, stopped after the steps the file holds
    assert arrays["params"].tobytes() == same.params.tobytes()


# ----------------------------------------------------------------------------- HOME and TMPDIR
HOME_JOB = textwrap.dedent(
    """
    import sys
    import numpy as np
    import zoracle as zo
    from zoracle.executors import JoblibExecutor

    def loss(x):
        return float(np.sum((x - 1.0) ** 2))

    if __name__ == "__main__":
        with JoblibExecutor(2) as ex:
            first = zo.train(loss, np.zeros(4), epochs=2, steps_per_epoch=3, estimator=zo.CGE(), optimizer=zo.sgd(0.1),
                             rng=0, progress=True, checkpoint=sys.argv[1], executor=ex)
            again = zo.train(loss, np.zeros(4), epochs=3, steps_per_epoch=3, estimator=zo.CGE(), optimizer=zo.sgd(0.1),
                             rng=0, progress=False, checkpoint=sys.argv[1], resume=True, executor=ex)
        print(first.nfev, again.nfev)
    """
)


@pytest.mark.parametrize("home", ["read-only", "unset"])
def test_a_job_with_a_read_only_or_no_home_writes_nothing_there_nor_in_the_temp_folder(tmp_path, home):
    """A batch job whose HOME is read-only (or not set at all) and whose TMPDIR is a small partition:
    a run on process workers that saves and resumes a checkpoint writes nothing in HOME, and leaves
    no file in the temporary folder (its saves are written beside the checkpoint, and the lock of a
    save is removed with it: an empty folder of locks stays)."""
    (tmp_path / "job.py").write_text(HOME_JOB)
    folder, tmp = tmp_path / "home", tmp_path / "tmp"
    folder.mkdir()
    tmp.mkdir()
    folder.chmod(0o555)
    env = _env(TMPDIR=str(tmp), HOME=str(folder))
    if home == "unset":
        del env["HOME"]
    try:
        out = subprocess.run([sys.executable, str(tmp_path / "job.py"), str(tmp_path / "run.npz")], env=env,
                             capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    finally:
        folder.chmod(0o755)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["30", "45"], out.stdout
    assert os.listdir(folder) == []
    left = [os.path.join(d, f) for d, _, files in os.walk(tmp) for f in files]
    assert left == [], left
    assert sorted(os.listdir(tmp_path)) == ["home", "job.py", "run.npz", "tmp"]


LOCKED_COUNT = """
import sys
from zoracle._checkpoint import writer_lock
path, counter, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for _ in range(n):
    with writer_lock(path):
        with open(counter) as f:
            value = int(f.read())
        with open(counter, "w") as f:
            f.write(str(value + 1))
"""


def test_savers_of_one_checkpoint_on_several_nodes_take_turns(tmp_path):
    """Three savers of one checkpoint, each with a temporary folder of its own (three nodes: /tmp is
    a node's own), each add 1 to a count 150 times under the checkpoint's lock: the lock in the
    temporary folder let them run side by side (additions lost); the lock file beside the checkpoint
    makes them take turns, and is removed after each turn."""
    counter = tmp_path / "count"
    counter.write_text("0")
    procs = []
    for i in range(3):
        (tmp_path / f"tmp{i}").mkdir()
        procs.append(subprocess.Popen([sys.executable, "-c", LOCKED_COUNT, str(tmp_path / "run.npz"), str(counter),
                                       "150"], env=_env(TMPDIR=str(tmp_path / f"tmp{i}"))))
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    assert counter.read_text() == "450"
    assert sorted(os.listdir(tmp_path)) == ["count", "tmp0", "tmp1", "tmp2"]


def test_a_lock_file_left_by_a_saver_killed_mid_save_does_not_hold_later_saves(tmp_path, monkeypatch):
    """A save killed by SIGKILL (the scheduler's end of the grace period) leaves its lock file beside
    the checkpoint: one of a process of this node that is gone is removed at once; one of another
    node (the job requeued elsewhere) is waited for LOCK_WAIT_S, then taken as stale. The save then
    goes on, and no lock file stays."""
    import numpy as np

    import zoracle as zo
    from zoracle import _checkpoint

    path = tmp_path / "run.npz"
    lock = tmp_path / (_checkpoint._tmp_prefix(str(path)) + "lock")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    monkeypatch.setattr(_checkpoint, "LOCK_WAIT_S", 0.5)
    for holder in (f"{_checkpoint._host_tag()} {dead.stdout.strip()}", "0badc0de 12345"):
        lock.write_text(holder + "\n")
        waited = holder.startswith("0badc0de")  # (another node's: waited for, then taken, with a warning)
        with pytest.warns(UserWarning, match=r"lock file .* \(a save by 0badc0de, pid 12345\) stayed 0 s; taken "
                          r"as left by a saver killed mid-save: if another job saves to this path, give each job "
                          r"a checkpoint of its own") if waited else contextlib.nullcontext():
            with _checkpoint.writer_lock(str(path)) as held:
                assert held and lock.read_text().split() == [_checkpoint._host_tag(), str(os.getpid())]
        assert not lock.exists()
    zo.train(lambda x: float(x @ x), np.ones(3), epochs=2, steps_per_epoch=2, optimizer=zo.sgd(0.1), rng=0,
             progress=False, checkpoint=path)
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]
