"""zoracle._malloc: the allocator policy zo.train and zo.estimate_gradient set (glibc only),
checked by its effect, page faults, in fresh processes (the policy is the process's)."""

import os
import platform
import subprocess
import sys

import pytest

from zoracle._malloc import plan
from peers_pages import open_peers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# three 4 MiB arrays written and freed, twenty times: minor page faults per round
CHURN = """
import resource, numpy as np
{setup}
def churn():
    a = [np.ones(1 << 19) for _ in range(3)]
    del a
churn()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20)
"""

SETUPS = {
    "nothing": "",
    "train": "import zoracle as zo\n"
             "zo.train(lambda x: float((x ** 2).sum()), np.ones(3), epochs=1, steps_per_epoch=1, progress=False)",
    "estimate": "import zoracle as zo\nzo.estimate_gradient(lambda x: float((x ** 2).sum()), np.ones(3))",
    # set after the process started, as Dask's nanny does in its own process for the workers it spawns
    "late": "import os, zoracle as zo\nos.environ['MALLOC_TRIM_THRESHOLD_'] = '65536'\n"
            "zo.estimate_gradient(lambda x: float((x ** 2).sum()), np.ones(3))",
}


def clean_env(**env) -> dict:
    """This process's environment without the allocator choices a library may have put there
    (Dask's nanny sets MALLOC_TRIM_THRESHOLD_), plus ``env``."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "ZORACLE_MALLOC"))}
    e.update(env)
    return e


def faults(setup: str, **env) -> float:
    e = clean_env(**env, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", CHURN.format(setup=SETUPS[setup])], env=e, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.split()[-1])


glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc's (mallopt)")


@glibc
@pytest.mark.slow
def test_train_and_estimate_keep_freed_memory_and_system_keeps_the_default():
    base = faults("nothing")
    assert base > 500  # glibc's default: the 12 MiB freed at the top go back to the kernel each round
    assert faults("train") < base / 20
    assert faults("estimate") < base / 20
    assert faults("train", ZORACLE_MALLOC="system") > base / 2  # the opt-out leaves glibc's policy
    assert faults("train", MALLOC_TRIM_THRESHOLD_="131072") > base / 2  # the process's own policy is kept
    # a variable set after the start (Dask's nanny does, for the workers it spawns) is not this process's policy
    assert faults("late") < base / 20


def _faults_in_this_process(x):
    """An oracle whose loss is the page faults of its second round of churn (the first maps the bytes)."""
    import resource

    import numpy as np

    for _ in range(2):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = [np.ones(1 << 19) for _ in range(3)]
        del a
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)


@glibc
@pytest.mark.parametrize("policy", ["zoracle", "system"])
def test_executor_workers_keep_freed_memory_as_the_driver_does(policy, monkeypatch):
    import numpy as np

    import zoracle as zo
    from zoracle.executors import JoblibExecutor

    if policy == "system":
        monkeypatch.setenv("ZORACLE_MALLOC", "system")  # inherited by the workers this executor starts
    else:
        monkeypatch.delenv("ZORACLE_MALLOC", raising=False)
    for k in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(k)
    with JoblibExecutor(1, backend="loky") as ex:
        est = zo.estimate_gradient(_faults_in_this_process, np.zeros(2), zo.CGE(), executor=ex)
    if policy == "zoracle":
        assert est.loss < 50
    else:
        assert est.loss > 500


@pytest.mark.parametrize("env, libc, apply, why", [
    ({}, "glibc", True, "glibc"),
    ({"ZORACLE_MALLOC": "system"}, "glibc", False, "ZORACLE_MALLOC=system"),
    ({}, "", False, "not glibc"),
    ({"MALLOC_MMAP_THRESHOLD_": "1"}, "glibc", False, "MALLOC_MMAP_THRESHOLD_"),
    ({"MALLOC_TOP_PAD_": "1"}, "glibc", False, "MALLOC_TOP_PAD_"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "glibc", False, "GLIBC_TUNABLES"),
    ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}, "glibc", True, "glibc"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "glibc", False, "jemalloc"),
    ({"ZORACLE_MALLOC": "Zoracle"}, "glibc", True, "glibc"),
    ({"ZORACLE_MALLOC": "sytem"}, "glibc", False, "neither 'system'"),
])
def test_plan_leaves_a_chosen_policy_alone(env, libc, apply, why):
    a, reason = plan(env, libc)
    assert a is apply and why in reason


@pytest.mark.slow  # benchmarks/allocator.py end to end: a torch child process a policy (or checkout) a round
@glibc
def test_allocator_benchmark_runs_both_policies_side_by_side(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path / "a.json"
    env = clean_env()
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "allocator.py"), "--budget", "3000",
                        "--rounds", "1", "--methods", "deepzero,zoracle-es", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr
    import json

    runs = json.loads(out.read_text())["runs"]
    assert sorted((r["policy"], r["method"]) for r in runs) == [
        ("system", "deepzero"), ("system", "zoracle-es"), ("zoracle", "deepzero"), ("zoracle", "zoracle-es")]
    assert {r["policy"]: r["reuse"] for r in runs} == {"system": False, "zoracle": True}
    assert all(r["queries"] >= 3000 and r["faults"] > 0 for r in runs)
    # the same runs: the policy changes where bytes come from, not what is computed
    acc = {(r["method"], r["policy"]): r["test_acc"] for r in runs}
    assert acc["deepzero", "system"] == acc["deepzero", "zoracle"]
    assert "| deepzero |" in p.stdout and "the demo recipe's" in p.stdout
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "allocator.py"), "--methods", "nope"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "--methods must name" in bad.stderr


def test_docs_tables_are_the_saved_runs_reports():
    import json

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

    import allocator

    with open(os.path.join(ROOT, "docs", "benchmarks.md"), encoding="utf-8") as f:
        page = f.read()
    for name in ("digits", "mnist1d", "mid_digits", "mid_mnist1d", "large_digits", "large_mnist1d"):
        with open(os.path.join(ROOT, "benchmarks", "peers_results", f"allocator_{name}.json")) as f:
            result = json.load(f)
        assert {r["reuse"] for r in result["runs"] if r["policy"] == "zoracle"} == {True}, name
        assert allocator.table(result) in page, name


def test_a_misspelt_choice_warns_and_keeps_glibcs_default():
    code = ("import warnings, zoracle._malloc as m\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    print(m.reuse_freed_memory(), m.reuse_freed_memory(), len(w), w[0].message if w else '')\n")
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(ZORACLE_MALLOC="sytem", PYTHONPATH=ROOT),
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False False 1 ZORACLE_MALLOC='sytem' is neither 'system'")


@pytest.mark.slow  # benchmarks/allocator.py end to end: a torch child process a policy (or checkout) a round
@glibc
def test_allocator_benchmark_times_one_policy_alone(tmp_path):
    """``--policies zoracle``: one child process a round under zoracle's policy, every method in it;
    the table gives each round's ratio to the demo recipe."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    import json

    out = tmp_path / "a.json"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "allocator.py"), "--budget", "3000",
                        "--rounds", "2", "--methods", "deepzero,zoracle-es", "--policies", "zoracle", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=clean_env())
    assert p.returncode == 0, p.stderr
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert result["policies"] == ["zoracle"]
    assert sorted((r["round"], r["method"]) for r in runs) == [
        (0, "deepzero"), (0, "zoracle-es"), (1, "deepzero"), (1, "zoracle-es")]
    assert {r["policy"] for r in runs} == {"zoracle"} and {r["reuse"] for r in runs} == {True}
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import allocator

    ratios = [a["seconds"] / b["seconds"] for a, b in zip(*([r for r in runs if r["method"] == m]
                                                           for m in ("zoracle-es", "deepzero")))]
    import statistics

    assert f"| zoracle-es | {statistics.median(ratios):.1f}x | {min(ratios):.1f}-{max(ratios):.1f}x |" in p.stdout
    assert "zoracle's policy alone" in p.stdout and allocator.table(result) in p.stdout
    for bad in ("zoracle,zoracle", "jemalloc", ""):
        q = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "allocator.py"), "--policies", bad],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert q.returncode == 2 and "--policies must name" in q.stderr, bad


@pytest.mark.slow  # benchmarks/allocator.py end to end: a torch child process a policy (or checkout) a round
def test_allocator_benchmark_times_checkouts_side_by_side(tmp_path):
    """``--roots A,.``: each round one child per checkout, each importing zoracle from its own;
    a copy of this checkout trains to the same accuracy, and the table gives each checkout's
    times and their ratio."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    import json
    import shutil

    copy = tmp_path / "copy"
    for sub in ("zoracle", "adapters", "apps"):
        shutil.copytree(os.path.join(ROOT, sub), copy / sub, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "a.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "allocator.py"), "--budget", "3000", "--rounds", "2",
           "--methods", "deepzero", "--roots", f"{copy},.", "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=clean_env())
    assert p.returncode == 0, p.stderr
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert result["roots"] == [str(copy), ROOT]
    assert sorted((r["round"], r["root"]) for r in runs) == sorted((i, root) for i in (0, 1) for root in (ROOT, str(copy)))
    assert all(r["zoracle"] == os.path.join(r["root"], "zoracle") for r in runs)  # each child its checkout's
    assert len({r["test_acc"] for r in runs}) == 1 and {r["reuse"] for r in runs} == {True}
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import allocator
    import statistics

    t = {root: [r["seconds"] for r in sorted(runs, key=lambda r: r["round"]) if r["root"] == root]
         for root in result["roots"]}
    q = [a / b for a, b in zip(t[str(copy)], t[ROOT])]
    assert f"{statistics.median(q):.2f}x ({min(q):.2f}-{max(q):.2f}x)" in p.stdout
    assert allocator.table(result) in p.stdout
    for bad, why in ((f"{copy}", "two or more"), (f"{copy},{copy}", "two or more"), (f"{tmp_path},.", "not a zoracle")):
        q = subprocess.run(cmd[:2] + ["--roots", bad], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert q.returncode == 2 and why in q.stderr, bad


def test_class_major_lead_tables_are_the_saved_runs_and_keep_the_accuracies():
    """docs/peers.md's class-major tables are ``allocator.py --report`` of the saved runs, and those
    runs end at the accuracies of the same methods' runs before the change (allocator_*.json)."""
    import json

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import allocator

    with open_peers() as f:
        page = f.read()
    for name in ("digits", "mnist1d", "final_digits", "final_mnist1d"):
        data = name.split("_")[-1]
        with open(os.path.join(ROOT, "benchmarks", "peers_results", f"lead_{name}.json")) as f:
            lead = json.load(f)
        with open(os.path.join(ROOT, "benchmarks", "peers_results", f"allocator_{data}.json")) as f:
            before = json.load(f)
        assert lead["policies"] == ["zoracle"] and lead["rounds"] == 3 and lead["data"] == data, name
        assert allocator.table(lead) in page, name
        assert f"lead_{name}.json" in page, name
        shared = set(lead["methods"]) & set(before["methods"])
        assert {"deepzero", "snes", "zoracle-es"} <= shared
        for m in shared:
            acc = {x["test_acc"] for x in lead["runs"] + before["runs"] if x["method"] == m}
            assert len(acc) == 1, (data, m, acc)


def test_one_call_for_every_block_tables_are_the_saved_runs():
    """docs/peers.md's whole-run tables for one call for every block are ``allocator.py --report``
    of the saved runs, with their commands; in the side-by-side runs each child imported its own
    checkout, both end at the same accuracies, and the leads the prose quotes are the tables'."""
    import json
    import statistics

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import allocator

    with open_peers() as f:
        page = f.read()
    leads = {}
    for data in ("digits", "mnist1d"):
        for name in (f"lead_fused_{data}", f"fused_ab_{data}"):
            with open(os.path.join(ROOT, "benchmarks", "peers_results", f"{name}.json")) as f:
                result = json.load(f)
            assert allocator.table(result) in page, name
            assert f"--report benchmarks/peers_results/{name}.json" in page, name
            assert result["rounds"] == 3 and result["data"] == data and result["budget"] == 150_000
        runs = result["runs"]  # the side-by-side run
        old, new = result["roots"]
        assert old == "/tmp/old" and all(r["zoracle"] == os.path.join(r["root"], "zoracle") for r in runs)
        for m in result["methods"]:
            assert len({r["test_acc"] for r in runs if r["method"] == m}) == 1, (data, m)

        def lead(root):
            t = {m: [r["seconds"] for r in sorted(runs, key=lambda r: r["round"]) if r["method"] == m and r["root"] == root]
                 for m in ("deepzero", "snes")}
            return statistics.median(a / b for a, b in zip(t["snes"], t["deepzero"]))

        leads[data] = (lead(old), lead(new))
    (d0, d1), (m0, m1) = leads["digits"], leads["mnist1d"]
    assert (f"the lead went from {d0:.1f}x to {d1:.1f}x on digits and from\n  {m0:.1f}x to {m1:.1f}x on MNIST-1D"
            in page)


@pytest.mark.parametrize("script, argv, match", [
    ("allocator.py", ["--report", "no_such_file.json"], "--report: no such results file"),
    ("parallel_speed.py", ["--skip", "rays", "--dim", "4", "--repeats", "1"], "--skip takes dask and/or ray"),
])
def test_benchmark_names_a_wrong_file_or_executor_in_one_line(script, argv, match, tmp_path):
    """allocator.py --report of a missing file ended in FileNotFoundError; parallel_speed.py --skip rays
    ran Ray anyway (an unknown name was ignored)."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *argv], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-500:]
    assert match in p.stderr.strip().splitlines()[-1]
