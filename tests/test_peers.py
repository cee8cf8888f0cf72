"""The peers study's machinery on a tiny point: equal budgets, one black box, tuning on validation, resume."""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import io
import json
import os

import numpy as np
import pytest

from peers_pages import open_peers

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("evotorch")
pytest.importorskip("cma")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("peers", os.path.join(ROOT, "benchmarks", "peers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits(peers):
    return peers.load_data("digits", seed=0)


def test_validation_is_carved_from_train_stratified_and_test_is_untouched(peers, digits):
    from zoracle.apps._digits import load_digits_split

    ref = load_digits_split(seed=0)
    assert np.array_equal(digits["xt"], ref.x_test) and np.array_equal(digits["yt"], ref.y_test)
    assert len(digits["y"]) + len(digits["yv"]) == len(ref.y_train)
    for c in range(10):  # 20% of each class of the training set, rounded
        n = int((ref.y_train == c).sum())
        assert int((digits["yv"] == c).sum()) == round(0.2 * n)
    rows = {r.tobytes() for r in ref.x_train}
    assert all(r.tobytes() in rows for r in digits["xv"])


def test_widths_sweep_the_parameter_count(peers):
    sizes = [sum(p.numel() for p in peers.make_model("digits", w, 0).parameters()) for w in (0, 160, 1600)]
    assert sizes == [1898, 13258, 121258]  # width 0 is the demo CNN
    sizes = [sum(p.numel() for p in peers.make_model("mnist1d", w, 0).parameters()) for w in (16, 128, 1200)]
    assert sizes == [1914, 12106, 109658]


def test_black_box_counts_queries_and_walks_the_shared_minibatch_stream(peers, digits):
    import zoracle as zo

    bench = peers.Bench(digits, "digits", 1, 0, budget=500)
    bench.start()
    P = np.stack([bench.p0, bench.p0 + 0.01])
    first = bench.losses(P)
    assert bench.queries == 2
    want = bench.oracle.bind(zo.Minibatches((digits["x"], digits["y"]), 32, seed=0)(0)[0])(bench.p0)
    assert first[0] == pytest.approx(want, rel=1e-5)
    f = bench.plain()  # the next minibatch: a different loss at the same point
    assert f(bench.p0) != pytest.approx(first[0], rel=1e-6)
    assert bench.queries == 3


@pytest.mark.slow
def test_every_method_stops_at_the_same_budget_and_tunes_on_validation(peers, tmp_path):
    out = tmp_path / "runs.json"
    argv = ["--budget", "500", "--seeds", "0,1", "--grid", "2", "--out", str(out), "--json"]
    peers.main(argv)
    runs = json.loads(out.read_text())
    for method in peers.DEFAULT_METHODS:
        mine = [r for r in runs if r["method"] == method]
        tune = [r for r in mine if r["role"] == "tune"]
        assert [r["setting"] for r in tune] == peers.GRID[method][:2] and all(r["seed"] == 0 for r in tune)
        (again,) = [r for r in mine if r["role"] == "seed"]
        best = max(tune, key=lambda r: r["val_acc"])  # the seed run reuses the validation winner
        assert again["seed"] == 1 and again["setting"] == best["setting"]
        for r in mine:
            assert r["error"] is None, (method, r["error"])
            assert r["machine"] == peers.machine(), (method, r["machine"])
            if method == "fdsgd":  # whole forward-difference gradients only: none fits in 500 queries
                assert r["queries"] == 0 and r["curve"][-1][3] == pytest.approx(r["curve"][0][3])
            elif method == "deepzero-krs":  # zo.recipes.short_budget: whole steps within the budget
                assert 500 - 51 < r["queries"] <= 500, r["queries"]
            else:  # at most one step (one generation) past the budget
                assert 500 <= r["queries"] < 500 + 2 * r["d"], (method, r["queries"])
            qs = [c[0] for c in r["curve"]]
            assert qs == sorted(qs) and qs[-1] == r["queries"]
            assert all(0 <= c[2] <= 1 and 0 <= c[3] <= 1 and c[1] > 0 for c in r["curve"])
    n = len(runs)
    peers.main(argv)  # a rerun finds every run done
    assert len(json.loads(out.read_text())) == n
    rows = peers.summarize(runs)
    assert {r["method"] for r in rows} == set(peers.DEFAULT_METHODS)
    assert all(r["seeds"] == [0, 1] and r["min"] <= r["mean"] <= r["max"] for r in rows)
    assert "| deepzero |" in peers.table(rows)


@pytest.mark.slow
def test_runs_record_the_instruction_set_that_torch_kernels_use(peers):
    """The same seed trains a different model under another instruction set (docs/peers.md), so
    every run records the one it used: lowering it with ATEN_CPU_CAPABILITY shows in the record."""
    import subprocess
    import sys

    code = ("import importlib.util, json; s = importlib.util.spec_from_file_location('p', 'benchmarks/peers.py'); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print(json.dumps(m.machine()))")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    lowered = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                                        check=True).stdout)
    here = peers.machine()
    assert lowered["cpu_capability"] == "DEFAULT" and lowered["cpu"] == here["cpu"]
    assert here["torch"] == lowered["torch"] and here["numpy"] == np.__version__


def test_runs_of_different_instruction_sets_are_rerun_and_never_pooled(peers, tmp_path, monkeypatch):
    out = tmp_path / "isa.json"
    argv = ["--budget", "300", "--seeds", "0", "--grid", "1", "--methods", "deepzero", "--out", str(out), "--json"]
    real = peers.machine()
    peers.main(argv)
    assert [r["machine"] for r in json.loads(out.read_text())] == [real]
    peers.main(argv)  # the same instruction set: done
    assert len(json.loads(out.read_text())) == 1
    monkeypatch.setattr(peers, "machine", lambda: dict(real, cpu_capability="LOWERED"))
    peers.main(argv)  # another one: run again, kept beside the first
    runs = json.loads(out.read_text())
    assert [r["machine"]["cpu_capability"] for r in runs] == [real["cpu_capability"], "LOWERED"]
    runs[1]["test_acc"] = runs[0]["test_acc"] + 0.5  # tell the two apart in the summary
    rows = peers.summarize(runs)
    assert sorted(r["isa"] for r in rows) == sorted([real["cpu_capability"], "LOWERED"])
    assert all(len(r["test_acc"]) == 1 for r in rows)
    assert "| deepzero [LOWERED] |" in peers.table(rows)
    old = [{k: v for k, v in r.items() if k != "machine"} for r in runs[:1]]  # a file from before the record
    assert "isa" not in peers.summarize(old)[0] and "| deepzero |" in peers.table(peers.summarize(old))
    unrecorded = peers.summarize(old + runs[1:])
    assert sorted(str(r["isa"]) for r in unrecorded) == ["LOWERED", "None"]
    assert "| deepzero [not recorded] |" in peers.table(unrecorded)
    mixed = out.with_name("mixed.json")
    mixed.write_text(json.dumps(old))
    peers.main(argv[:-3] + ["--out", str(mixed), "--json"])  # an unrecorded run counts as this machine's: done
    assert len(json.loads(mixed.read_text())) == 1


def test_zoracle_snes_spends_the_budget_in_generations_like_evotorch_snes(peers, tmp_path):
    out = tmp_path / "snes.json"
    peers.main(["--budget", "300", "--seeds", "0", "--grid", "1", "--methods", "zoracle-snes,snes", "--out", str(out),
                "--json"])
    runs = {r["method"]: r for r in json.loads(out.read_text())}
    assert set(runs) == {"zoracle-snes", "snes"}
    for r in runs.values():  # three generations of 100, no base point
        assert r["error"] is None and r["queries"] == 300 and r["setting"] == {"stdev": 0.01}
        assert r["curve"][-1][0] == 300 and 0 <= r["curve"][-1][3] <= 1


@pytest.mark.slow
def test_speed_table_times_every_method_side_by_side(peers, tmp_path):
    out = tmp_path / "speed.json"
    peers.main(["--speed", "", "--budget", "2000", "--methods", "deepzero,snes,fdsgd", "--out", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["method"], r["eval"]) for r in rows] == [("deepzero", "batch"), ("snes", "batch"), ("snes", "plain"),
                                                       ("fdsgd", "batch")]
    dz = rows[0]
    assert dz["ratio"] == 1.0 and dz["queries"] >= 2000
    for r in rows[1:]:
        assert r["s_per_query"] == pytest.approx(r["seconds"] / r["queries"])
        assert r["ratio"] == pytest.approx(r["s_per_query"] / dz["s_per_query"])
    assert rows[1]["queries"] == rows[2]["queries"] == 2000  # plain calls spend the same queries as the batch
    assert "| snes | plain |" in peers.speed_table(rows)
    # multiply-adds: a full forward of the demo CNN per sample and query for the peers; DeepZero's replay
    # counts what it ran, ZO-GraSP's 386 forwards on 250 images included
    per = peers.forward_macs(peers.make_model("digits", 0, 0), np.zeros((1, 1, 8, 8)))
    assert rows[1]["macs"] == rows[1]["queries"] * 32 * per and rows[2]["macs"] == rows[1]["macs"]
    assert dz["mac_ratio"] == 1.0 and 386 * 250 * per < dz["macs"]  # (at 2,000 queries ZO-GraSP's share is most of it)
    per_query = (rows[1]["macs"] / rows[1]["queries"]) / (dz["macs"] / dz["queries"])  # the units of "ratio"
    assert rows[1]["mac_ratio"] == pytest.approx(per_query)
    assert "GMAC" in peers.speed_table(rows)


@pytest.mark.slow
def test_speed_takes_the_settings_tuned_at_another_budget(peers, tmp_path):
    """--settings-budget: a 150,000-query timing with the settings chosen at 30,000 queries."""
    tuned = tmp_path / "tuned.json"
    runs = [{"data": "digits", "width": 0, "method": "snes", "budget": 30000, "seed": 0, "role": "tune",
             "setting": s, "val_acc": acc} for s, acc in zip(peers.GRID["snes"], (0.5, 0.7, 0.9))]
    tuned.write_text(json.dumps(runs))
    for extra, want in (([], peers.GRID["snes"][len(peers.GRID["snes"]) // 2]),  # none tuned at 300: the middle one
                        (["--settings-budget", "30000"], peers.GRID["snes"][2])):  # the best at 30,000
        out = tmp_path / f"speed{len(extra)}.json"
        peers.main(["--speed", str(tuned), "--budget", "300", "--methods", "deepzero,snes", "--out", str(out)] + extra)
        rows = [r for r in json.loads(out.read_text()) if r["method"] == "snes"]
        assert [r["setting"] for r in rows] == [want, want] and all(r["queries"] == 300 for r in rows)


def test_multiply_adds_two_ways(peers, digits):
    import torch

    torch.manual_seed(0)
    model = peers.make_model("digits", 0, 0)
    # conv 1->8 (3x3, 8x8 out), conv 8->16 (3x3, stride 2: 4x4 out), linear 64->10
    assert peers.forward_macs(model, digits["x"]) == 8 * 9 * 64 + 16 * 72 * 16 + 64 * 10 == 23_680
    oracle = peers.Bench(digits, "digits", 0, 0, 1000).oracle.bind((digits["x"][:32], digits["y"][:32]))
    p = oracle.initial_params()
    # torch's own count of what ran agrees: a plain call, a vmapped batch of 3
    assert peers.executed_macs(lambda: oracle(p))[1] == 32 * 23_680
    # (the first batch checks its vectorized forward on two samples: finding two with a finite loss,
    # then every weight moved at once, vectorized and in place: three forwards of two samples)
    assert peers.executed_macs(lambda: oracle.batch(np.stack([p, p, p])))[1] == (3 * 32 + 3 * 2) * 23_680
    assert peers.executed_macs(lambda: oracle.batch(np.stack([p, p, p])))[1] == 3 * 32 * 23_680
    # a perturbation of the classifier runs no convolution: far less than a forward
    f = oracle.prefix(p, len(oracle.blocks) - 1)
    start = oracle.blocks[-1].start
    assert peers.executed_macs(lambda: oracle.suffix(f, p, len(oracle.blocks) - 1, np.arange(start, start + 5),
                                                     1e-3))[1] < 32 * 23_680


@pytest.mark.slow
def test_settings_from_runs_new_seeds_of_the_chosen_settings_without_tuning(peers, tmp_path):
    first, fresh = tmp_path / "a.json", tmp_path / "b.json"
    peers.main(["--budget", "500", "--seeds", "0", "--grid", "2", "--methods", "deepzero-krs,snes", "--out", str(first),
                "--json"])
    tuned = json.loads(first.read_text())
    peers.main(["--budget", "500", "--seeds", "3,4", "--methods", "deepzero-krs,snes", "--settings-from", str(first),
                "--out", str(fresh), "--json"])
    runs = json.loads(fresh.read_text())
    assert sorted((r["method"], r["seed"]) for r in runs) == [("deepzero-krs", 3), ("deepzero-krs", 4), ("snes", 3),
                                                             ("snes", 4)]
    for r in runs:
        best = max((t for t in tuned if t["method"] == r["method"]), key=lambda t: t["val_acc"])
        assert r["role"] == "fresh" and r["setting"] == best["setting"]
    rows = peers.summarize(runs)
    assert [(row["method"], row["seeds"]) for row in rows] == [("deepzero-krs", [3, 4]), ("snes", [3, 4])]
    with pytest.raises(SystemExit, match="no chosen setting for pgpe"):
        peers.main(["--budget", "500", "--seeds", "3", "--methods", "pgpe", "--settings-from", str(first),
                    "--out", str(fresh)])
    # the filled recipe, never tuned in that sweep, takes the setting the unfilled one chose
    krs = max((t for t in tuned if t["method"] == "deepzero-krs"), key=lambda t: t["val_acc"])["setting"]
    assert peers.settings_for(tuned, "digits", 0, "deepzero-krsf", 500) == krs
    assert peers.settings_for(tuned, "digits", 0, "pgpe", 500) is None
    # a longer run with the settings chosen at budget 500: --settings-budget names the budget they were chosen at
    longer = tmp_path / "c.json"
    with pytest.raises(SystemExit, match="budget 700"):
        peers.main(["--budget", "700", "--seeds", "5", "--methods", "snes", "--settings-from", str(first),
                    "--out", str(longer)])
    peers.main(["--budget", "700", "--seeds", "5", "--methods", "snes", "--settings-from", str(first),
                "--settings-budget", "500", "--out", str(longer)])
    (run,) = json.loads(longer.read_text())
    best = max((t for t in tuned if t["method"] == "snes"), key=lambda t: t["val_acc"])
    assert run["budget"] == 700 and run["queries"] == 700 and run["setting"] == best["setting"]


def test_start_keeps_one_seeds_weights_and_split_and_varies_the_runs_own_randomness(peers, tmp_path):
    first, fixed = tmp_path / "a.json", tmp_path / "b.json"
    peers.main(["--budget", "500", "--seeds", "0", "--grid", "1", "--methods", "snes", "--out", str(first), "--json"])
    with pytest.raises(SystemExit):  # a fixed start does not tune
        peers.main(["--budget", "500", "--seeds", "1", "--methods", "snes", "--start", "0", "--out", str(fixed)])
    peers.main(["--budget", "500", "--seeds", "0,1", "--methods", "snes", "--settings-from", str(first), "--start", "0",
                "--out", str(fixed), "--json"])
    runs = {r["seed"]: r for r in json.loads(fixed.read_text())}
    (tuned,) = json.loads(first.read_text())
    assert sorted(runs) == [0, 1] and all(r["start"] == 0 for r in runs.values())
    # seed 0 from seed 0's start is seed 0's run (curve rows: [queries, seconds, val, test])
    assert [c[:1] + c[2:] for c in runs[0]["curve"]] == [c[:1] + c[2:] for c in tuned["curve"]]
    assert [c[:1] + c[2:] for c in runs[1]["curve"]] != [c[:1] + c[2:] for c in runs[0]["curve"]]
    # the same start: the weights and the validation set are seed 0's at seed 1 too
    bench = peers.Bench(peers.load_data("digits", 0), "digits", 0, 1, 500, model_seed=0)
    assert np.array_equal(bench.p0, peers.Bench(peers.load_data("digits", 0), "digits", 0, 0, 500).p0)
    peers.main(["--budget", "500", "--seeds", "1", "--methods", "snes", "--settings-from", str(first), "--start", "0",
                "--out", str(fixed)])  # run again: the done run is skipped, not repeated
    assert len(json.loads(fixed.read_text())) == 2


def test_batch_order_and_rng_hold_one_part_of_a_seeds_randomness(peers, tmp_path):
    first, out = tmp_path / "a.json", tmp_path / "b.json"
    peers.main(["--budget", "500", "--seeds", "0,1", "--grid", "1", "--methods", "snes", "--out", str(first), "--json"])
    for flag in ("--batch-order", "--rng"):
        with pytest.raises(SystemExit):  # it does not tune
            peers.main(["--budget", "500", "--seeds", "1", "--methods", "snes", flag, "0", "--out", str(out)])
    own = {r["seed"]: [c[:1] + c[2:] for c in r["curve"]] for r in json.loads(first.read_text())}
    assert own[0] != own[1]

    def runs(*flags):
        path = tmp_path / f"{'_'.join(flags)}.json"
        peers.main(["--budget", "500", "--seeds", "0,1", "--methods", "snes", "--settings-from", str(first),
                    "--start", "0", *flags, "--out", str(path)])
        return {r["seed"]: r for r in json.loads(path.read_text())}

    samples, batches, both = runs("--batch-order", "0"), runs("--rng", "0"), runs("--batch-order", "0", "--rng", "0")
    curve = {k: {s: [c[:1] + c[2:] for c in r["curve"]] for s, r in v.items()}
             for k, v in (("samples", samples), ("batches", batches), ("both", both))}
    # seed 0 holds nothing back: each is seed 0's own run; both parts held, seed 1 repeats it
    assert curve["samples"][0] == curve["batches"][0] == curve["both"][0] == curve["both"][1] == own[0]
    # one part held, the other still follows the seed
    assert curve["samples"][1] != own[0] and curve["batches"][1] != own[0] and curve["samples"][1] != curve["batches"][1]
    assert samples[1]["batch_order"] == 0 and "rng" not in samples[1] and batches[1]["rng"] == 0
    assert peers._key(samples[1]) != peers._key(batches[1]) != peers._key(both[1])
    # the bench: minibatch order and the method's seed as asked
    bench = peers.Bench(peers.load_data("digits", 0), "digits", 0, 1, 500, batch_seed=0, rng_seed=0)
    assert (bench.seed, bench.rng_seed) == (1, 0)
    assert np.array_equal(bench.batches(0)[0][0], peers.Bench(peers.load_data("digits", 0), "digits", 0, 0, 500)
                          .batches(0)[0][0])


def test_a_timing_takes_the_settings_budget_then_its_own_budget_then_the_grid_middle(peers):
    """``--speed --settings-budget``: a method tuned at that budget takes its choice; one only run at
    the timing's budget (``deepzero-krsd`` at 150,000 queries) the setting it ran with there,
    not the grid's middle (a rate that can diverge, and a diverged run's time is not the method's)."""
    def run(method, budget, setting, role="given"):
        return {"data": "digits", "width": 0, "method": method, "budget": budget, "setting": setting, "seed": 0,
                "role": role, "val_acc": 0.5}
    runs = [run("snes", 30_000, {"stdev": 0.03}, "tune"), run("snes", 150_000, {"stdev": 0.1}),
            run("deepzero-krsd", 150_000, {"lr": 0.03})]
    assert peers.timing_setting(runs, "digits", 0, "snes", 30_000, 150_000) == {"stdev": 0.03}
    assert peers.timing_setting(runs, "digits", 0, "deepzero-krsd", 30_000, 150_000) == {"lr": 0.03}
    middle = peers.GRID["deepzero-krsd"][len(peers.GRID["deepzero-krsd"]) // 2]
    assert middle != {"lr": 0.03}
    assert peers.timing_setting(runs, "digits", 0, "deepzero-krsd", 30_000) == middle  # no timing budget given
    assert peers.timing_setting(runs, "digits", 0, "deepzero-krsd", 30_000, 60_000) == middle  # not run there


def test_tuning_at_a_new_budget_counts_the_run_brought_there_by_settings_from(peers, tmp_path):
    """Grid runs added beside a --settings-from run compete with it at the tuning seed, not at other seeds."""
    def run(setting, seed, role, val):
        return {"data": "digits", "width": 0, "method": "snes", "budget": 900, "setting": setting, "seed": seed,
                "role": role, "val_acc": val}
    a, b, c = {"stdev": 0.01}, {"stdev": 0.03}, {"stdev": 0.1}
    runs = [run(a, 0, "fresh", 0.7), run(a, 1, "fresh", 0.95), run(b, 0, "tune", 0.5), run(c, 0, "tune", 0.6)]
    assert peers.best_setting(runs, "digits", 0, "snes", 900) == a  # the fresh run wins at seed 0
    runs[0]["val_acc"] = 0.4  # seed 1's 0.95 is not a grid point
    assert peers.best_setting(runs, "digits", 0, "snes", 900) == c
    assert peers.best_setting(runs[:2], "digits", 0, "snes", 900) == a  # no grid yet: the brought setting
    # end to end: tuning at a budget that already has a --settings-from run skips that setting at the tuning seed
    first, longer = tmp_path / "a.json", tmp_path / "b.json"
    peers.main(["--budget", "500", "--seeds", "0", "--grid", "2", "--methods", "snes", "--out", str(first)])
    peers.main(["--budget", "600", "--seeds", "0", "--methods", "snes", "--settings-from", str(first),
                "--settings-budget", "500", "--out", str(longer)])
    (brought,) = json.loads(longer.read_text())
    tuned = tmp_path / "c.json"  # --reuse copies the brought run into a new file, where it counts as done
    peers.main(["--budget", "600", "--seeds", "0,1", "--grid", "2", "--methods", "snes,pgpe", "--reuse", str(longer),
                "--out", str(tuned)])
    runs = [r for r in json.loads(tuned.read_text()) if r["method"] == "snes"]
    at0 = [r for r in runs if r["seed"] == 0]
    assert sorted(json.dumps(r["setting"]) for r in at0) == sorted(json.dumps(s) for s in peers.GRID["snes"][:2])
    assert [r["role"] for r in at0].count("fresh") == 1 and runs[0] == brought
    (again,) = [r for r in runs if r["seed"] == 1]
    assert again["role"] == "seed" and again["setting"] == max(at0, key=lambda r: r["val_acc"])["setting"]


def _runs(method, accs, d=1000, width=10, budget=500):
    """One tuning run per seed of ``method`` with these test accuracies (validation alike)."""
    return [{"data": "digits", "d": d, "width": width, "budget": budget, "method": method, "setting": {"lr": 1.0},
             "seed": seed, "test_acc": a, "val_acc": a, "seconds": 1.0, "queries": budget,
             "role": "tune" if seed == 0 else "seed"} for seed, a in enumerate(accs)]


def test_leads_judge_every_peer_at_the_largest_size_by_the_seed_spread(peers):
    def lead(*peer_runs, recipe=(0.90, 0.91, 0.92)):
        small = _runs("deepzero-krs", [0.1, 0.1, 0.1], d=10, width=1) + _runs("snes", [0.9] * 3, d=10, width=1)
        rows = peers.leads([small + _runs("deepzero-krs", recipe) + [r for runs in peer_runs for r in runs]])
        assert [(r["d"], r["recipe"]["method"]) for r in rows] == [(1000, "deepzero-krs")]  # the largest size only
        return rows[0]

    ahead = lead(_runs("snes", [0.80, 0.85, 0.89]), _runs("pgpe", [0.5, 0.6, 0.7]))
    assert ahead["best"]["method"] == "snes" and ahead["lead"] == pytest.approx(91.0 - 84.667, abs=1e-3)
    assert ahead["verdict"] == "ahead of every peer by more than the spread"
    # a peer with a lower mean but one seed above the recipe's worst: no longer ahead of every peer
    level = lead(_runs("snes", [0.80, 0.85, 0.89]), _runs("pgpe", [0.5, 0.6, 0.905]))
    assert level["best"]["method"] == "snes" and level["verdict"] == "level: ranges overlap"
    behind = lead(_runs("snes", [0.93, 0.95, 0.97]), _runs("pgpe", [0.95, 0.96, 0.97]))
    assert behind["best"]["method"] == "pgpe" and behind["lead"] < 0
    assert behind["verdict"] == "behind snes, pgpe by more than the spread"
    assert "| deepzero-krs | 91.0 (90.0-92.0, 3 seeds) | snes |" in peers.leads_table([ahead])
    # the rank test: 3 seeds all above 3 others is the most uneven ranking, 2 of the 20 orderings
    assert ahead["p"] == pytest.approx(0.1) and behind["p"] == pytest.approx(0.1)
    # recipe ranks 1, 2, 4 of 6: U = 1, reached or passed by 2 of 20 orderings each way
    mixed = lead(_runs("snes", [0.915, 0.93, 0.95]))
    assert mixed["p"] == pytest.approx(0.2) and "| -2.2 | 0.2 | level" in peers.leads_table([mixed])
    assert lead(_runs("snes", [0.90, 0.91, 0.92]))["p"] == pytest.approx(1.0)  # the same seeds: no difference


@pytest.mark.slow
def test_fill_small_blocks_recipe_spends_the_budget_and_is_judged_as_a_recipe(peers, digits):
    import zoracle as zo
    from zoracle._pruning import fill_small_blocks

    # a point where the fill moves something, so the two runs differ: the ZO-GraSP split, and
    # so whether a small block ends empty, depends on the seed and on the CPU's rounding
    for seed in range(8):
        bench = peers.Bench(digits, "digits", 0, seed, 3000)
        kw = zo.recipes.short_budget(bench.oracle, bench.p0, 3000, batches=bench.batches, coordinates=peers.KEEP_FRESH,
                                     fill_small_blocks=False)
        assert "fill_small_blocks" not in kw  # deepzero-krs: the split as ZO-GraSP ranks it
        res = zo.train(bench.oracle, bench.p0, batches=bench.batches, rng=bench.rng_seed, progress=False,
                       grasp_batch=zo.apps._digits.per_class(digits["x"], digits["y"], 25, seed=seed), **kw)
        sizes = np.array([i.slice.stop - i.slice.start for i in bench.oracle.param_info])
        counts = np.rint(res.ratios * sizes).astype(int)
        if (fill_small_blocks(counts, sizes) != counts).any():
            break
    else:
        pytest.fail("no seed in 0-7 leaves a small block empty at 3,000 queries")
    runs = {}
    for method in ("deepzero-krs", "deepzero-krsf"):
        bench = peers.Bench(digits, "digits", 0, seed, 3000)
        runs[method] = peers.run_one(bench, method, {"lr": 0.1})
        assert runs[method]["error"] is None and runs[method]["queries"] <= 3000
    assert runs["deepzero-krs"]["queries"] == runs["deepzero-krsf"]["queries"]  # the same steps, other coordinates
    assert runs["deepzero-krs"]["curve"][-1][2:] != runs["deepzero-krsf"]["curve"][-1][2:]
    rows = peers.leads([_runs("deepzero-krsf", [0.9, 0.91, 0.92]) + _runs("deepzero-krs", [0.8, 0.85, 0.9])
                        + _runs("snes", [0.8, 0.85, 0.89])])
    assert [(r["recipe"]["method"], r["verdict"]) for r in rows] == [
        ("deepzero-krs", "level: ranges overlap"), ("deepzero-krsf", "ahead of every peer by more than the spread")]


def test_leads_mark_the_run_short_budget_makes_by_default(peers):
    import zoracle as zo
    from zoracle.recipes import FILL_FROM_STEPS

    P = collections.namedtuple("P", "name slice shape kind")
    line = 386 + FILL_FROM_STEPS * (peers.KEEP_FRESH + 1)  # ZO-GraSP's queries, then the line's steps
    for d, budget in ((1_898, 30_000), (121_258, 30_000), (121_258, line - 1), (121_258, line), (1_898, 150_000),
                      (121_258, 150_000)):
        blocks = [P("0.weight", slice(0, d - 10), (d - 10,), "linear"), P("0.bias", slice(d - 10, d), (10,), "bias")]
        kw = zo.recipes.short_budget(None, np.zeros(d), budget, steps_per_epoch=5, blocks=blocks,
                                     coordinates=peers.KEEP_FRESH)
        default = "deepzero-krsf" if kw.get("fill_small_blocks") else "deepzero-krs"
        assert default == ("deepzero-krsf" if budget >= line else "deepzero-krs"), (d, budget)
        for method in ("deepzero-krs", "deepzero-krsf"):
            assert peers.short_budget_default(method, budget) is (method == default), (d, budget, method)
        # and at the default learning rate, which the run's setting names
        lr = float(kw["optimizer"].config.split("init=")[1].split(",")[0])
        assert lr == zo.recipes.default_lr(budget, d)
        # 50 coordinates a step below 40 queries per weight; from there short_budget takes 100 (deepzero-krsd's runs)
        wide = zo.recipes.default_coordinates(budget, d) != peers.KEEP_FRESH
        assert wide is (budget / d >= 40), (d, budget)
        assert peers.short_budget_default(default, budget, {"lr": lr}, d) is not wide
        assert peers.short_budget_default(default, budget, {"lr": lr * 1.5}, d) is False
        assert peers.short_budget_default("deepzero-krsd", budget, {"lr": lr}, d) is True
    assert peers.short_budget_default("deepzero", 150_000) is None
    rows = peers.leads([_runs("deepzero-krsf", [0.9, 0.91, 0.92]) + _runs("deepzero-krs", [0.8, 0.85, 0.9])
                        + _runs("deepzero", [0.1] * 3) + _runs("snes", [0.8, 0.85, 0.89])])  # budget 500: unfilled
    assert [(r["recipe"]["method"], r["default"]) for r in rows] == [
        ("deepzero", None), ("deepzero-krs", False), ("deepzero-krsf", False)]  # lr 1.0 is not the default's 0.1
    at_default = [dict(r, setting={"lr": zo.recipes.default_lr(500, 1000)}) for r in _runs("deepzero-krs", [0.8, 0.85, 0.9])]
    rows = peers.leads([_runs("deepzero-krsf", [0.9, 0.91, 0.92]) + at_default + _runs("deepzero", [0.1] * 3)
                        + _runs("snes", [0.8, 0.85, 0.89])])
    assert [(r["recipe"]["method"], r["default"]) for r in rows] == [
        ("deepzero", None), ("deepzero-krs", True), ("deepzero-krsf", False)]
    assert [line.rsplit("|", 2)[1].strip() for line in peers.leads_table(rows).splitlines()[2:]] == ["-", "yes", "no"]


def test_setting_runs_every_seed_with_the_setting_given(peers, tmp_path):
    out = tmp_path / "a.json"
    peers.main(["--budget", "500", "--seeds", "0,1", "--methods", "deepzero-krs", "--setting", '{"lr": 0.05}',
                "--out", str(out), "--json"])
    runs = json.loads(out.read_text())
    assert [(r["seed"], r["role"], r["setting"]) for r in runs] == [(0, "given", {"lr": 0.05}), (1, "given", {"lr": 0.05})]
    (row,) = peers.summarize(runs)
    assert row["seeds"] == [0, 1] and row["setting"] == {"lr": 0.05}
    for bad in ("0.05", "{lr: 0.05}"):
        with pytest.raises(SystemExit):
            peers.main(["--budget", "500", "--seeds", "0", "--methods", "deepzero-krs", "--setting", bad])


@pytest.mark.slow
def test_every_setting_reports_a_row_per_setting_in_the_order_run(peers, tmp_path):
    out = tmp_path / "a.json"
    for setting in ('{"lr": 0.3, "sparsity": 0.5}', '{"lr": 0.3}'):
        peers.main(["--budget", "2000", "--seeds", "0,1", "--methods", "deepzero", "--setting", setting,
                    "--out", str(out), "--json"])
    runs = json.loads(out.read_text())
    rows = peers.summarize(runs, every_setting=True)
    assert [(r["setting"], r["seeds"]) for r in rows] == [({"lr": 0.3, "sparsity": 0.5}, [0, 1]), ({"lr": 0.3}, [0, 1])]
    for row in rows:  # each row holds only its own setting's runs
        mine = [r for r in runs if r["setting"] == row["setting"]]
        assert row["test_acc"] == [100 * r["test_acc"] for r in sorted(mine, key=lambda r: r["seed"])]
        assert row["queries"] == int(np.mean([r["queries"] for r in mine]))
    assert len(peers.summarize(runs)) == 1  # without it, one row: the setting run first
    again = runs + [dict(runs[0], seed=2)]  # a later run of the first setting keeps its place
    assert [r["setting"] for r in peers.summarize(again, every_setting=True)] == [rows[0]["setting"], rows[1]["setting"]]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        peers.main(["--report", str(out), "--every-setting"])
    assert printed.getvalue().strip() == peers.table(rows)


def test_leads_and_ratios_name_a_missing_results_file(peers, tmp_path, capsys):
    for flag in ("--leads", "--ratios"):
        with pytest.raises(SystemExit):
            peers.main([flag, str(tmp_path / "nope.json")])
        assert f"{flag}: no such results file: " in capsys.readouterr().err
        with pytest.raises(SystemExit):
            peers.main([flag, ""])
        assert f"{flag}: name the results files" in capsys.readouterr().err


def test_ratios_name_the_closest_peer_and_whether_every_peer_is_10x_behind(peers):
    def row(method, ratio, ev="batch", d=1000, budget=500):
        return {"data": "digits", "d": d, "budget": budget, "method": method, "eval": ev, "s_per_query": 1e-5 * ratio,
                "ratio": ratio, "mac_ratio": 7.0}
    rows = [row("deepzero", 1.0), row("deepzero-krs", 3.0), row("snes", 12.0), row("snes", 30.0, "plain"),
            row("fdsgd", float("nan")), row("deepzero", 1.0, d=50), row("pgpe", 8.0, d=50)]
    out = peers.ratios(rows)
    assert [(r["d"], r["peer"]["method"], r["ratio"], r["met"], r["peers"]) for r in out] == [
        (50, "pgpe", 8.0, False, 1), (1000, "snes", 12.0, True, 2)]  # DeepZero variants and NaN ratios are not peers
    assert out[1]["us"] == pytest.approx(10.0)
    table = peers.ratios_table(out)
    assert "| digits | 50 | 500 | 10.0 | pgpe (batch) | 8.0 | 7.0 | no (1 peers) | - |" in table
    # the short-budget recipe's column: the same closest peer over deepzero-krs's time (12 / 3), "-" where untimed
    assert out[1]["recipe_ratio"] == pytest.approx(4.0) and out[0]["recipe_ratio"] != out[0]["recipe_ratio"]
    assert "| snes (batch) | 12.0 | 7.0 | yes (2 peers) | 4.0 |" in table
    assert "deepzero-krsd" not in table  # no point timed the recipe's defaults: no column for them
    # timed at one point: a column for them, the same closest peer over its time (12 / 2), "-" elsewhere
    out = peers.ratios(rows + [row("deepzero-krsd", 2.0)])
    assert out[1]["default_ratio"] == pytest.approx(6.0) and out[0]["default_ratio"] != out[0]["default_ratio"]
    table = peers.ratios_table(out)
    assert "| closest peer x deepzero-krs's time | closest peer x deepzero-krsd's time |" in table
    assert "| snes (batch) | 12.0 | 7.0 | yes (2 peers) | 4.0 | 6.0 |" in table
    assert "| pgpe (batch) | 8.0 | 7.0 | no (1 peers) | - | - |" in table


def test_wins_say_who_wins_at_every_size_per_query_and_per_second(peers, tmp_path):
    def isa(runs, name):
        return [r | {"machine": {"cpu_capability": name}} for r in runs]

    def speed(method, ratio, d):
        return {"data": "digits", "d": d, "budget": 500, "method": method, "eval": "batch",
                "s_per_query": 1e-5 * ratio, "ratio": ratio}

    small = (_runs("deepzero-krs", [0.80, 0.81, 0.82], d=10, width=1) + _runs("deepzero", [0.1] * 3, d=10, width=1)
             + _runs("snes", [0.90, 0.91, 0.92], d=10, width=1) + _runs("pgpe", [0.95] * 3, d=10, width=1))
    middle = _runs("deepzero-krs", [0.80, 0.85, 0.90], d=100, width=5) + _runs("snes", [0.82, 0.86, 0.88], d=100, width=5)
    large = _runs("deepzero-krsf", [0.90, 0.91, 0.92]) + _runs("snes", [0.80, 0.85, 0.89])
    one = _runs("deepzero-krs", [0.7], budget=900) + _runs("zoracle-es", [0.6], budget=900)
    timed = [speed("deepzero", 1.0, 10), speed("snes", 4.0, 10), speed("deepzero", 1.0, 1000), speed("fdsgd", 30.0, 1000),
             speed("deepzero", 1.0, 5000), speed("snes", 12.0, 5000)]
    rows = peers.wins([("sweep", small + middle + large + one)], timed)
    assert [(r["d"], r["budget"]) for r in rows] == [(10, 500), (100, 500), (1000, 500), (1000, 900), (5000, 500)]
    by = {(r["d"], r["budget"]): r for r in rows}
    # the best recipe and the best peer by mean, every size; the best peer alone decides the words
    assert (by[10, 500]["recipe"]["method"], by[10, 500]["best"]["method"]) == ("deepzero-krs", "pgpe")
    assert by[10, 500]["words"] == "pgpe, by more than the spread" and by[10, 500]["lead"] == pytest.approx(-14.0)
    assert by[100, 500]["words"] == "level" and by[1000, 500]["words"] == "DeepZero, by more than the spread"
    assert by[1000, 900]["words"] == "DeepZero on one seed (no spread)"
    assert by[10, 500]["speed"]["ratio"] == 4.0 and by[100, 500]["speed"] is None and "recipe" not in by[5000, 500]
    table = peers.wins_table(rows)
    assert "| deepzero-krs 80.0 (80.0-82.0, 3 seeds) |" not in table  # the mean, not the worst seed
    assert "| digits | 10 | 500 | sweep | deepzero-krs 81.0 (80.0-82.0, 3 seeds) | pgpe 95.0 (95.0-95.0, 3 seeds) |" in table
    assert "| 4.0x faster than snes (batch), under 10x |" in table and "| 30.0x faster than fdsgd |" in table
    assert "| digits | 5,000 | 500 | - | - | - | - | - | - | 12.0x faster than snes (batch) |" in table
    assert "| deepzero-krs 70.0 (70.0-70.0, 1 seed) |" in table
    # ranges that overlap but a rank test below 0.05 (8 seeds each, all but one above: p = 0.01)
    ranked = peers.wins([("s", _runs("deepzero-krs", [0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.80])
                          + _runs("snes", [0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87, 0.88]))], [])
    assert ranked[0]["p"] < 0.05 and ranked[0]["words"] == "DeepZero in the mean (p < 0.05); ranges overlap"
    # a study under two instruction sets: only the set with the most seeds is compared
    mixed = peers.wins([("isa", isa(_runs("deepzero-krs", [0.99] * 2), "AVX2") + isa(_runs("snes", [0.5] * 2), "AVX2")
                         + isa(_runs("deepzero-krs", [0.7] * 3), "AVX512") + isa(_runs("snes", [0.8] * 3), "AVX512"))], [])
    assert [(r["recipe"]["isa"], r["best"]["isa"], r["words"]) for r in mixed] == [
        ("AVX512", "AVX512", "snes [AVX512], by more than the spread")]
    # ... unless that set has no peer (recipes rerun on another machine against a peer's earlier runs): across sets
    rerun = peers.wins([("dec03", isa(_runs("deepzero-krs", [0.7] * 4), "AVX2") + isa(_runs("deepzero-krsf", [0.9] * 4), "AVX2")
                         + isa(_runs("snes", [0.8] * 3), "AVX512"))], [])
    assert [(r["recipe"]["method"], r["recipe"]["isa"], r["best"]["isa"], r["words"]) for r in rerun] == [
        ("deepzero-krsf", "AVX2", "AVX512", "DeepZero, by more than the spread")]
    png = tmp_path / "wins.png"  # every seed of each row's two methods, one panel per data set
    peers.wins_plot(rows, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert peers._study(["/x/long_tuned_digits.json", "/x/long_snes_digits.json"]) == "long_tuned"
    assert peers._study(["/x/mnist1d.json"]) == "sweep"


def test_wins_names_a_missing_results_file(peers, tmp_path, capsys):
    with pytest.raises(SystemExit):
        peers.main(["--wins", str(tmp_path / "nope.json"), "--ratios", str(tmp_path / "nope.json")])
    assert "--wins: no such results file: " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        peers.main(["--wins", os.path.join(ROOT, "benchmarks", "peers_results", "fill_digits.json")])
    assert "--ratios: name the results files (--wins needs --ratios" in capsys.readouterr().err


def test_the_docs_tables_are_the_reports_of_the_saved_results(peers):
    """docs/peers.md shows every committed results file's table exactly as `--report` prints it."""
    with open_peers() as f:
        docs = f.read()
    names = ["digits", "mnist1d", "fresh_digits", "fresh_mnist1d", "long_digits", "long_mnist1d", "long_tuned_digits",
             "long_tuned_mnist1d", "long_snes_digits", "long_snes_mnist1d", "isa_digits", "isa_mnist1d", "seeds12_digits",
             "seeds12_mnist1d", "fill_digits", "fill_mnist1d", "spread_snes_digits", "spread_snes_samples_digits",
             "spread_snes_batches_digits", "dec03_digits", "dec03_mnist1d", "long_small_digits", "long_small_mnist1d",
             "long_small_tuned_digits", "tune_mid_digits", "tune_mid_mnist1d", "tune_mid150_digits", "tune_mid150_mnist1d",
             "rule_digits", "rule_mnist1d", "rule_mid_digits", "rule_mid_mnist1d",
             "rule_small_digits", "rule_small_mnist1d", "rule_mid150_digits", "rule_mid150_mnist1d",
             "f64_digits", "f64_mnist1d", "f32_here_digits", "f32_here_mnist1d"]
    for name in names:
        runs = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"{name}.json"))
        assert runs, name
        assert peers.table(peers.summarize(runs)) in docs, name
    for data in ("digits", "mnist1d"):  # the smaller sizes at 150,000 queries, each method with its 30,000-query setting
        runs = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"long_small_{data}.json"))
        swept = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"{data}.json"))
        assert {(r["budget"], peers._isa(r)) for r in runs} == {(150_000, "AVX2")}
        assert len({r["d"] for r in runs}) == 2 and max(r["d"] for r in runs) < 15_000
        for r in runs:
            assert r["seed"] in (0, 1, 2) and r["role"] == "fresh"
            assert r["setting"] == peers.settings_for(swept, data, r["width"], r["method"], 30_000), (data, r["method"])
        assert len(runs) == 2 * 3 * 9 and {r["setting"]["lr"] for r in runs if r["method"] == "deepzero-krsf"} == {0.03}
    long_smalls = {}
    for data in ("digits", "mnist1d"):  # the default recipe's twelve seeds against the best peers', d = 2k and 12-13k
        swept = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"{data}.json"))
        for name, points in (("rule_mid", {30_000}), ("rule_small", {30_000, 150_000}), ("rule_mid150", {150_000})):
            runs = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"{name}_{data}.json"))
            assert {r["budget"] for r in runs} == points and {peers._isa(r) for r in runs} == {"AVX2"}, name
            assert len({r["d"] for r in runs}) == 1, name
            for budget in points:
                here = [r for r in runs if r["budget"] == budget]
                methods = {r["method"] for r in here}
                assert all(sorted(r["seed"] for r in here if r["method"] == m) == list(range(12)) for m in methods)
                (recipe,) = [m for m in methods if m in peers.RECIPES]
                for r in here:
                    if r["method"] == recipe:  # what short_budget ran by default there, its rate included: since
                        # 2026-12-04 it takes 100 coordinates a step from 40 queries per weight on (wide_small)
                        wide = name == "rule_small" and budget == 150_000
                        assert peers.short_budget_default(recipe, r["budget"], r["setting"], r["d"]) is not wide
                        assert r["role"] == "given" and peers.short_budget_default(
                            "deepzero-krsd", r["budget"], r["setting"], r["d"]) is True
                    else:  # each peer with the setting the sweep chose at 30,000 queries
                        assert r["setting"] == peers.settings_for(swept, data, r["width"], r["method"], 30_000), r["method"]
        long_small = long_smalls[data] = peers._load(
            os.path.join(ROOT, "benchmarks", "peers_results", f"long_small_{data}.json"))
        first = {(r["method"], r["d"], r["seed"]): r for r in long_small}
        for name in ("rule_small", "rule_mid150"):  # every 150,000-query run of seeds 0-2 repeats long_small's
            again = [r for r in peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"{name}_{data}.json"))
                     if r["budget"] == 150_000 and r["seed"] < 3]
            peer_runs = [r for r in again if r["method"] not in peers.RECIPES]
            assert len(peer_runs) == 3 * (4 if name == "rule_small" else 2), (name, data)
            assert all(r["test_acc"] == first[(r["method"], r["d"], r["seed"])]["test_acc"] for r in peer_runs), name
            for r in again:  # the recipe's runs at d of about 2k, curve and all, bit for bit on the same host
                if name == "rule_small" and r["method"] == "deepzero-krsf":
                    assert ([c[:1] + c[2:] for c in r["curve"]]
                            == [c[:1] + c[2:] for c in first[(r["method"], r["d"], r["seed"])]["curve"]])
    # the demo recipe's sparsity at d of about 2k: one table of every setting, and its 0.9 and SNES repeat long_small
    sparsity = [peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"sparsity_{data}.json"))
                for data in ("digits", "mnist1d")]
    assert peers.table(peers.summarize(sparsity[0] + sparsity[1], every_setting=True)) in docs
    for data, runs in zip(("digits", "mnist1d"), sparsity):
        first = {(r["method"], r["seed"]): r for r in long_smalls[data] if r["d"] < 3000}
        assert {(r["method"], r["budget"], peers._isa(r)) for r in runs} == {("deepzero", 150_000, "AVX2"),
                                                                             ("snes", 150_000, "AVX2")}
        assert sorted(r["setting"].get("sparsity", 0.9) for r in runs if r["method"] == "deepzero") == sorted(
            [0.0, 0.5, 0.7, 0.9] * 12)
        again = [r for r in runs if r["seed"] < 3 and r["setting"] in ({"lr": 0.3}, {"stdev": 0.1})]
        assert len(again) == 6 and all(
            [c[:1] + c[2:] for c in r["curve"]] == [c[:1] + c[2:] for c in first[(r["method"], r["seed"])]["curve"]]
            and r["setting"] == first[(r["method"], r["seed"])]["setting"] for r in again), data
    # the demo recipe without ZO-GraSP, next to it: its 150,000-query runs repeat the sparsity study's
    uniform = [peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"uniform_{data}.json"))
               for data in ("digits", "mnist1d")]
    assert peers.table(peers.summarize(uniform[0] + uniform[1], every_setting=True)) in docs
    for runs, before in zip(uniform, sparsity):
        assert collections.Counter((r["budget"], json.dumps(r["setting"])) for r in runs) == {
            (b, s): 12 for b in (30_000, 150_000) for s in ('{"lr": 0.3, "ratios": "uniform"}', '{"lr": 0.3}')}
        same = {r["seed"]: r["test_acc"] for r in before if r["setting"] == {"lr": 0.3}}
        assert {r["seed"]: r["test_acc"] for r in runs if r["setting"] == {"lr": 0.3} and r["budget"] == 150_000} == same
    tuned = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", "long_small_tuned_digits.json"))
    assert {r["role"] for r in tuned if r["seed"] == 0} >= {"tune", "fresh"} and {r["d"] for r in tuned} == {1898}
    for data in ("digits", "mnist1d"):  # the recipe under three instruction sets, SNES under this machine's
        runs = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"isa_{data}.json"))
        isas = {(r["method"], peers._isa(r)) for r in runs}
        assert isas == {("deepzero-krs", "AVX512"), ("deepzero-krs", "AVX2"), ("deepzero-krs", "DEFAULT"),
                        ("snes", "AVX512")}, isas
        assert all(len([r for r in runs if (r["method"], peers._isa(r)) == k]) == 6 for k in isas), data
        more = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"seeds12_{data}.json"))  # seeds 6-11
        assert {(r["method"], peers._isa(r), r["seed"]) for r in more} == {
            (m, "AVX512", s) for m in ("deepzero-krs", "snes") for s in range(6, 12)}, data
        scouted = {r["seed"]: r["curve"] for r in peers._load(os.path.join(
            ROOT, "benchmarks", "peers_results", f"scout150_sched_fresh_{data}.json")) if r["variant"] == "recipe"}
        for r in (r for r in more if r["method"] == "deepzero-krs"):  # the scouting round's recipe, run for run
            assert [c[:1] + c[2:] for c in r["curve"]] == [c[:1] + c[2:] for c in scouted[r["seed"]]], (data, r["seed"])
        # short_budget(fill_small_blocks=True): tuned at seed 0 like every method, then seeds 1-11, under AVX-512
        fill = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"fill_{data}.json"))
        assert {(r["method"], peers._isa(r), r["budget"]) for r in fill} == {("deepzero-krsf", "AVX512", 150_000)}
        assert sorted(r["seed"] for r in fill if r.get("role") != "tune") == list(range(1, 12))
        assert sorted(r["setting"]["lr"] for r in fill if r.get("role") == "tune") == [0.03, 0.1, 0.3]
        # the recipe with and without the fill, rerun with the 2026-12-03 code on the AVX2 host, twelve seeds each
        again = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"dec03_{data}.json"))
        assert {(r["method"], peers._isa(r), r["budget"], r["setting"]["lr"]) for r in again} == {
            (m, "AVX2", 150_000, 0.1) for m in ("deepzero-krs", "deepzero-krsf")}
        for m in ("deepzero-krs", "deepzero-krsf"):
            assert sorted(r["seed"] for r in again if r["method"] == m) == list(range(12)), (data, m)
    # what the fill section says of the rerun: MNIST-1D's unfilled seeds below SNES's best, every filled one above
    section = docs.split("### The fill on a second machine, and at 12-13k")[1].split("### ")[0]
    again = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", "dec03_mnist1d.json"))
    snes = [r["test_acc"] for name in ("isa_mnist1d", "seeds12_mnist1d")
            for r in peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"{name}.json")) if r["method"] == "snes"]
    low = sorted((r["test_acc"], r["seed"]) for r in again if r["method"] == "deepzero-krs" and r["test_acc"] < max(snes))
    filled = [r["test_acc"] for r in again if r["method"] == "deepzero-krsf"]
    assert min(filled) > max(snes) and f"(seeds {low[0][1]}, {low[1][1]} and {low[2][1]})" in section and len(low) == 3
    assert f"at {100 * low[0][0]:.1f}%, {100 * low[1][0]:.1f}% and {100 * low[2][0]:.1f}%" in section
    assert f"the worst\n  is {100 * min(filled):.1f}% and the mean {100 * np.mean(filled):.1f}%" in section
    # SNES from seed 0's start (--start 0): seeds 0-5 under AVX-512, seed 0 the study's own seed-0 run
    fixed = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", "spread_snes_digits.json"))
    assert sorted(r["seed"] for r in fixed) == list(range(6)) and {r["start"] for r in fixed} == {0}
    assert {(r["method"], peers._isa(r), r["budget"]) for r in fixed} == {("snes", "AVX512", 150_000)}
    (own,) = [r for r in peers._load(os.path.join(ROOT, "benchmarks", "peers_results", "isa_digits.json"))
              if r["method"] == "snes" and r["seed"] == 0]
    (zero,) = [r for r in fixed if r["seed"] == 0]
    assert [c[:1] + c[2:] for c in zero["curve"]] == [c[:1] + c[2:] for c in own["curve"]]
    # the same, with seed 0's minibatch order (only SNES's samples vary) or its samples (only the order varies)
    for name, key in (("spread_snes_samples_digits", "batch_order"), ("spread_snes_batches_digits", "rng")):
        part = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"{name}.json"))
        assert sorted(r["seed"] for r in part) == list(range(6)), name
        assert {(r["method"], peers._isa(r), r["budget"], r["start"], r[key]) for r in part} == {
            ("snes", "AVX512", 150_000, 0, 0)}, name
        (zero,) = [r for r in part if r["seed"] == 0]  # seed 0 holds nothing back
        assert [c[:1] + c[2:] for c in zero["curve"]] == [c[:1] + c[2:] for c in own["curve"]], name
        section = docs.split("#### SNES's spread, split the same way\n")[1].split("#### A step in proportion")[0]
        sd = np.std([100 * r["test_acc"] for r in part], ddof=1)  # the standard deviation the docs quote
        assert f"standard deviation {sd:.1f}" in section, name
    # SNES ranks its losses, so a last-bit change rarely moves it: seed 0 under AVX2 repeats AVX-512's curve
    again = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", "isa_snes_avx2.json"))
    assert {(r["data"], r["method"], r["seed"], peers._isa(r)) for r in again} == {
        ("digits", "snes", 0, "AVX2"), ("mnist1d", "snes", 0, "AVX2")}
    for r in again:
        (first,) = [x for x in peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"isa_{r['data']}.json"))
                    if x["method"] == "snes" and x["seed"] == 0]
        assert [c[2:] for c in r["curve"]] == [c[2:] for c in first["curve"]] and peers._isa(first) == "AVX512"
    for name in ("speed_snes_digits", "speed_snes_mnist1d"):  # the per-second tables, as --macs prints them
        rows = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"{name}.json"))
        assert rows and {r["method"] for r in rows} == {"deepzero", "zoracle-snes", "snes"}, name
        assert peers.speed_table(rows) in docs, name
    # issue 13's acceptance at a glance: the two tables as the docs' commands print them
    results = os.path.join(ROOT, "benchmarks", "peers_results")
    def study(f, data):  # "isa@snes": only SNES's runs of isa_<data>.json
        name, at, only = f.partition("@")
        return os.path.join(results, f"{name}_{data}.json" if name else f"{data}.json") + at + only

    # then the recipe with and without fill_small_blocks at 150,000 queries, both rerun on the AVX2 host with the
    # current code (2026-12-03), and last the recipe at its default learning rate (default_lr), each against SNES's
    # twelve seeds
    leads = ",".join("+".join(study(f, data) for f in group) for data in ("digits", "mnist1d")
                     for group in (("", "fresh"), ("long",), ("long_tuned", "long_snes"), ("isa", "seeds12", "fill"),
                                   ("dec03", "isa@snes", "seeds12@snes"), ("rule", "isa@snes", "seeds12@snes")))
    # per second: the current code's timings (2026-12-03) at 30,000 queries, and at 150,000 at the two smaller
    # sizes; the largest size at 150,000 timed again the night after (2026-12-04)
    speed = ",".join(os.path.join(results, f"{f}_{data}.json")
                     for f in ("speed_dec03", "speed150_dec03", "speed150_large_dec04") for data in ("digits", "mnist1d"))
    leads_cmd = "python benchmarks/peers.py --leads " + leads.replace(results, "$R")
    ratios_cmd = "python benchmarks/peers.py --ratios " + speed.replace(results, "$R")
    assert leads_cmd in docs and ratios_cmd in docs
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert peers.main(["--leads", leads]) == 0
        assert peers.main(["--ratios", speed]) == 0
    tables = out.getvalue().split("| data | d | queries | DeepZero")
    # where each method wins, at every size: the summary at the top of the page, as its command prints it
    # the summary adds the smaller sizes at 150,000 queries ("The budget at the smaller sizes"), a study of its
    # own: --leads weighs each study's largest size only
    # and the middle size at 30,000 queries at the recipe's default rate (default_lr), twelve seeds of it and of
    # the three best peers ("rule_mid", "The rate against the queries per weight"), the same at d of about 2k at
    # both budgets ("rule_small") and at the middle size at 150,000 queries against SNES ("rule_mid150")
    groups = leads
    for data in ("digits", "mnist1d"):
        long = study("long", data)
        groups = groups.replace(long + ",", long + "," + study("long_small", data) + ",")
        sweep = study("", data) + "+" + study("fresh", data)
        # and short_budget's default since 2026-12-04 at d of about 2k and 150,000 queries (100 coordinates a step:
        # "wide_small", "More coordinates a step at 79 queries per weight") against rule_small's peers
        wide = study("wide_small", data) + "+" + study("rule_small@snes/pgpe/zoracle-es/sepcma", data)
        groups = groups.replace(sweep + ",", sweep + "," + ",".join(study(f, data) for f in ("rule_mid", "rule_small"))
                                + "," + wide + "," + study("rule_mid150", data) + ",")
    assert groups.count("long_small") == 2 and all(groups.count(f"{f}_") == 2 for f in ("rule_mid", "rule_mid150"))
    assert groups.count("rule_small_") == 4 and groups.count("wide_small_") == 2
    wins_cmd = "python benchmarks/peers.py --wins " + groups.replace(results, "$R") + " --ratios " + speed.replace(results, "$R")
    assert wins_cmd in docs
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        assert peers.main(["--wins", groups, "--ratios", speed]) == 0
    assert summary.getvalue().strip() in docs and docs.index(summary.getvalue().strip()) < docs.index("## Issue 13's")
    assert len(tables) == 2 and tables[0].strip() in docs
    assert ("| data | d | queries | DeepZero" + tables[1]).strip() in docs
    for data in ("digits", "mnist1d"):  # timed again with the current code on the AVX2 host (2026-12-03 and -04)
        for name, budget, sizes in ((f"speed_dec03_{data}", 30_000, 3), (f"speed150_dec03_{data}", 150_000, 2),
                                    (f"speed150_large_dec04_{data}", 150_000, 1)):
            rows = peers._load(os.path.join(results, f"{name}.json"))
            assert {r["budget"] for r in rows} == {budget} and len({r["d"] for r in rows}) == sizes, name
            assert {r["machine"]["cpu_capability"] for r in rows} == {"AVX2"}, name
            assert {r["reuse_freed_memory"] for r in rows} == {True} and all("mac_ratio" in r for r in rows), name
            assert peers.speed_table(rows) in docs, name
            assert f"--out benchmarks/peers_results/{name}.json" in docs, name
    for name in ("speed150_digits", "speed150_mnist1d"):  # the per-second tables at the budget
        rows = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"{name}.json"))
        assert rows and {r["budget"] for r in rows} == {150_000} and len({r["d"] for r in rows}) == 2, name
        assert peers.speed_table(rows) in docs, name
    for name in ("speed150_large_digits", "speed150_large_mnist1d"):  # the largest size at the budget
        rows = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"{name}.json"))
        assert rows and {r["budget"] for r in rows} == {150_000} and len({r["d"] for r in rows}) == 1, name
        assert peers.speed_table(rows) in docs, name
    quiet = [os.path.join(results, f"speed150q_{data}.json") for data in ("digits", "mnist1d")]  # d = 2k, alone
    for path in quiet:
        rows = peers._load(path)
        assert rows and {r["budget"] for r in rows} == {150_000} and len({r["d"] for r in rows}) == 1, path
        assert peers.speed_table(rows) in docs, path
    assert "python benchmarks/peers.py --ratios " + ",".join(quiet).replace(ROOT + os.sep, "") in docs
    assert peers.ratios_table(peers.ratios([r for path in quiet for r in peers._load(path)])) in docs
    for tag, commit in (("avx2_before", "ca9dc8c"), ("avx2", "b7339f4")):  # d = 2k on an AVX2 machine, two libraries
        paths = [os.path.join(results, f"speed150{tag}_{data}.json") for data in ("digits", "mnist1d")]
        for path in paths:
            rows = peers._load(path)
            assert rows and {r["budget"] for r in rows} == {150_000} and len({r["d"] for r in rows}) == 1, path
            assert {r["machine"]["cpu_capability"] for r in rows} == {"AVX2"}, path
            assert peers.speed_table(rows) in docs, path
        assert "python benchmarks/peers.py --ratios " + ",".join(paths).replace(ROOT + os.sep, "") in docs
        assert peers.ratios_table(peers.ratios([r for path in paths for r in peers._load(path)])) in docs
        assert f"library code of {commit}" in docs
    # d = 2k at 150,000 queries with short_budget's own defaults (deepzero-krsd: 100 a step, at the rate it ran
    # with in wide_small_*.json), the 50-a-step recipe, the demo recipe and every peer, in one run per data set
    paths = [os.path.join(results, f"speed150_krsd_{data}.json") for data in ("digits", "mnist1d")]
    for path in paths:
        rows = peers._load(path)
        assert {r["budget"] for r in rows} == {150_000} and len({r["d"] for r in rows}) == 1, path
        krsd = [r for r in rows if r["method"] == "deepzero-krsd"]
        assert len(krsd) == 1 and krsd[0]["setting"] == {"lr": 0.03}, path
        assert peers.speed_table(rows) in docs, path
        assert f"--out $R/{os.path.basename(path)}" in docs, path
    assert "python benchmarks/peers.py --ratios $R/speed150_krsd_digits.json,$R/speed150_krsd_mnist1d.json" in docs
    table = peers.ratios_table(peers.ratios([r for path in paths for r in peers._load(path)]))
    assert "closest peer x deepzero-krsd's time" in table and table in docs
    # d = 2k under zoracle's allocator policy (zo.reuse_freed_memory), set for every method of the table
    paths = [os.path.join(results, f"speed150malloc_{data}.json") for data in ("digits", "mnist1d")]
    for path in paths:
        rows = peers._load(path)
        assert rows and {r["budget"] for r in rows} == {150_000} and len({r["d"] for r in rows}) == 1, path
        assert {r["reuse_freed_memory"] for r in rows} == {True}, path
        assert peers.speed_table(rows) in docs, path
    assert "python benchmarks/peers.py --ratios " + ",".join(paths).replace(ROOT + os.sep, "") in docs
    assert peers.ratios_table(peers.ratios([r for path in paths for r in peers._load(path)])) in docs


def test_the_plain_call_check_in_the_docs_runs_as_written(monkeypatch):
    """The timeit check of FD-SGD's plain call ("The largest size at 150,000 queries, timed again") runs as
    written: its set-up builds the largest digits model and its statement is one counted plain call."""
    import re
    import shlex
    import sys

    import torch

    with open_peers() as f:
        lines = [line.strip() for line in f if "python -m timeit" in line and "b.plain()" in line]
    assert len(lines) == 1
    args = shlex.split(lines[0])
    assert args[:4] == ["python", "-m", "timeit", "-s"] and args[5] == "f(p)"
    assert re.search(r"peers\.Bench\(peers\.load_data\('digits'\), 'digits', 1600, 0, 150000\)", args[4])
    monkeypatch.chdir(ROOT)  # the set-up imports benchmarks/peers.py from the repository root, as a user runs it
    monkeypatch.setattr(sys, "path", list(sys.path))
    threads, scope = torch.get_num_threads(), {}
    try:  # the set-up pins torch to one thread, as the timings do; the other tests keep theirs
        exec(args[4], scope)
        assert scope["b"].d == 121_258 and scope["p"].dtype == np.float64
        loss = eval(args[5], scope)
    finally:
        torch.set_num_threads(threads)
    assert np.isfinite(loss) and loss > 0 and scope["b"].queries == 1


def test_a_study_takes_some_methods_from_another_file(peers, tmp_path):
    a, b = tmp_path / "new_digits.json", tmp_path / "old_digits.json"
    a.write_text(json.dumps(_runs("deepzero-krsf", [0.9, 0.91, 0.92])))
    b.write_text(json.dumps(_runs("deepzero-krs", [0.5, 0.6, 0.7]) + _runs("snes", [0.8, 0.85, 0.89])
                            + _runs("pgpe", [0.95] * 3)))
    assert {r["method"] for r in peers._load(f"{b}@snes/pgpe")} == {"snes", "pgpe"}
    assert peers._load(f"{b}@snes") == [r for r in peers._load(str(b)) if r["method"] == "snes"]
    rows = peers.leads([peers._merged([str(a), f"{b}@snes"])])
    assert [(r["recipe"]["method"], r["best"]["method"], r["verdict"]) for r in rows] == [
        ("deepzero-krsf", "snes", "ahead of every peer by more than the spread")]  # no krs, no pgpe
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert peers.main(["--leads", f"{a}+{b}@snes"]) == 0
    assert "| deepzero-krsf | 91.0 (90.0-92.0, 3 seeds) | snes |" in out.getvalue() and "pgpe" not in out.getvalue()
    with pytest.raises(SystemExit):  # the file part must exist
        peers.main(["--leads", f"{tmp_path / 'nothing.json'}@snes"])


def test_the_wide_study_runs_the_recipes_default_at_d_of_about_2k(peers):
    """wide_small_<data>.json: twelve seeds of what short_budget runs by default at 150,000 queries and
    d of about 2k (79 queries per weight: 100 coordinates a step, filled, lr 0.03), the scout's
    `floor-small-100` runs seed for seed."""
    from zoracle.recipes import default_coordinates, default_lr

    for data in ("digits", "mnist1d"):
        runs = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"wide_small_{data}.json"))
        assert sorted(r["seed"] for r in runs) == list(range(12)), data
        scout = {r["seed"]: r for r in peers._load(os.path.join(ROOT, "benchmarks", "peers_results",
                                                                f"scout150_2k_coords_{data}.json"))
                 if r["variant"] == "floor-small-100"}
        for r in runs:
            assert (r["method"], r["budget"], r["role"], peers._isa(r)) == ("deepzero-krsd", 150_000, "given", "AVX2")
            assert r["d"] < 2_000 and r["setting"] == {"lr": default_lr(150_000, r["d"])} == {"lr": 0.03}
            assert default_coordinates(150_000, r["d"]) == 100
            assert r["queries"] == 386 + (150_000 - 386) // 101 * 101  # ZO-GraSP, then whole steps of 100 and the base
            assert peers.short_budget_default(r["method"], r["budget"], r["setting"], r["d"]) is True
            assert r["test_acc"] == scout[r["seed"]]["test_acc"] and r["val_acc"] == scout[r["seed"]]["val_acc"]


def test_the_rule_study_runs_the_recipes_default_at_the_largest_size(peers):
    """rule_<data>.json: twelve seeds of what short_budget runs by default at 150,000 queries, rate included."""
    from zoracle.recipes import default_lr

    for data in ("digits", "mnist1d"):
        runs = peers._load(os.path.join(ROOT, "benchmarks", "peers_results", f"rule_{data}.json"))
        assert sorted(r["seed"] for r in runs) == list(range(12)), data
        for r in runs:
            assert (r["method"], r["budget"], r["role"], peers._isa(r)) == ("deepzero-krsf", 150_000, "given", "AVX2")
            assert r["setting"] == {"lr": default_lr(150_000, r["d"])} and r["d"] > 100_000
            assert peers.short_budget_default(r["method"], r["budget"], r["setting"], r["d"]) is True


def test_a_float64_black_box_starts_where_the_float32_one_does(peers, digits):
    """``--dtype float64``: the same start and data, computed in float64; its runs are keyed apart."""
    b32 = peers.Bench(digits, "digits", 0, 0, 1000)
    b64 = peers.Bench(digits, "digits", 0, 0, 1000, dtype="float64")
    assert b32.p0.dtype == np.float32 and b64.p0.dtype == np.float64
    np.testing.assert_array_equal(b64.p0, b32.p0.astype(np.float64))
    P = b64.p0 + 0.01 * np.random.default_rng(0).standard_normal((3, b64.d))
    l32, l64 = b32.losses(P), b64.losses(P)
    np.testing.assert_allclose(l64, l32, rtol=1e-5)
    assert not np.array_equal(l64, l32)  # computed in float64, not rounded through float32
    run = {"data": "digits", "width": 0, "method": "snes", "setting": {}, "seed": 0, "budget": 1000}
    assert peers._key(run) == peers._key(dict(run, dtype="float32")) != peers._key(dict(run, dtype="float64"))


def test_float64_runs_neither_tune_nor_report_with_float32_runs(peers, tmp_path, capsys):
    """A float64 sweep tuning from a file of float32 runs, or a report pooling both, would average
    the two black boxes' runs into one row."""
    with pytest.raises(SystemExit):
        peers.main(["--dtype", "float64", "--data", "digits", "--widths", "0", "--budget", "500", "--methods", "snes"])
    assert "--dtype float64 needs --settings-from or --setting" in capsys.readouterr().err
    run = {"data": "digits", "width": 0, "d": 1898, "method": "snes", "setting": {}, "seed": 0, "budget": 500,
           "queries": 500, "seconds": 1.0, "val_acc": 0.5, "test_acc": 0.5}
    (tmp_path / "a.json").write_text(json.dumps([run]))
    (tmp_path / "b.json").write_text(json.dumps([dict(run, dtype="float64")]))
    with pytest.raises(SystemExit):
        peers.main(["--report", f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}"])
    assert "float32 and float64" in capsys.readouterr().err
    # --leads and --wins pooled them without a word (a row of float64 seeds, unlabelled)
    for argv in (["--leads", f"{tmp_path / 'a.json'}+{tmp_path / 'b.json'}"],
                 ["--wins", f"{tmp_path / 'a.json'}+{tmp_path / 'b.json'}", "--ratios", str(tmp_path / "a.json")]):
        with pytest.raises(SystemExit):
            peers.main(argv)
        assert "float32 and float64 black boxes in one study" in capsys.readouterr().err


def test_report_files_that_hold_no_runs_are_named(peers, tmp_path, capsys):
    """--report of a missing file or of a method filter matching nothing printed a table header
    and exited 0; of a --speed file it ended in KeyError: 'seed'; --quick with no --out crashed
    in _load(None) before its first run."""
    speed = [{"data": "digits", "width": 0, "method": "snes", "budget": 500, "seconds": 1.0}]
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    run = {"data": "digits", "width": 0, "d": 1898, "method": "snes", "setting": {}, "seed": 0, "budget": 500,
           "queries": 500, "seconds": 1.0, "val_acc": 0.5, "test_acc": 0.5}
    (tmp_path / "a.json").write_text(json.dumps([run]))
    for arg, match in ((str(tmp_path / "nope.json"), "no such results file"),
                       (f"{tmp_path / 'a.json'}@pgpe", "holds no accuracy runs"),
                       (str(tmp_path / "speed.json"), "holds no accuracy runs")):
        with pytest.raises(SystemExit):
            peers.main(["--report", arg])
        assert match in capsys.readouterr().err
    assert peers._load(None) == [] and peers._load("") == []


def test_summary_rows_pair_each_seed_with_its_own_accuracy(peers):
    """``--report --json`` rows give ``seeds`` and ``test_acc`` side by side: the i-th accuracy is the
    i-th seed's, whatever order the runs were written in (files merged in another order, --seeds 2,0,1)."""
    runs = _runs("snes", [0.70, 0.80, 0.90])
    runs = [runs[2], runs[0], runs[1]]  # seeds 2, 0, 1 in the file
    (row,) = peers.summarize(runs)
    truth = {r["seed"]: 100 * r["test_acc"] for r in runs}
    assert row["seeds"] == [0, 1, 2]
    assert row["test_acc"] == pytest.approx([truth[s] for s in row["seeds"]])


def test_a_seed_without_an_accuracy_is_named_not_averaged_in_silence(peers):
    """A run that diverges before its first evaluation records a NaN accuracy (rge at c = 1e30): the
    row averaged the other seeds and still counted it, "95.5 (95.0-96.0, 4 seeds)" for two results."""
    nan = float("nan")
    study = _runs("deepzero-krs", [0.90, 0.91, 0.92, 0.93]) + _runs("snes", [0.95, nan, nan, 0.96])
    (row,) = [r for r in peers.summarize(study) if r["method"] == "snes"]
    assert row["seeds"] == [0, 3] and row["failed"] == [1, 2]
    assert row["test_acc"] == pytest.approx([95.0, 96.0]) and row["mean"] == pytest.approx(95.5)
    text = peers.wins_table(peers.wins([("demo", study)], []))
    assert "snes 95.5 (95.0-96.0, 2 seeds, 2 failed (seeds 1, 2))" in text
    assert "deepzero-krs 91.5 (90.0-93.0, 4 seeds) |" in text


def test_the_rank_test_counts_the_splits_of_tied_seeds_exactly(peers):
    """With a tied accuracy (one test digit is 0.28 points) scipy's default turned to its normal
    approximation: three seeds all below three others got p = 0.077, under the 0.1 that 2 of the
    20 splits give (the docs' long_small row at d = 1,898)."""
    import itertools

    from scipy.stats import rankdata

    def splits(a, b):  # every split of the pooled seeds, as uneven in rank sums or more: the reference
        x = np.concatenate([a, b])
        r, n = rankdata(x), len(a)
        c = n * (len(x) + 1) / 2
        obs = abs(r[:n].sum() - c)
        s = [abs(r[list(i)].sum() - c) >= obs - 1e-9 for i in itertools.combinations(range(len(x)), n)]
        return sum(s) / len(s)

    recipe, snes = [93.87, 93.87, 94.71], [95.26, 95.82, 96.38]
    rows = peers.wins([("s", _runs("deepzero-krs", np.array(recipe) / 100) + _runs("snes", np.array(snes) / 100))], [])
    assert rows[0]["p"] == pytest.approx(splits(np.array(recipe), np.array(snes))) == pytest.approx(0.1)
    assert peers.rank_test(recipe, snes) == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    for n, m in ((3, 3), (6, 6), (6, 3), (4, 7)):
        a, b = rng.integers(0, 6, n) * 0.28 + 90, rng.integers(0, 6, m) * 0.28 + 90.5
        assert peers.rank_test(a, b) == pytest.approx(splits(a, b)), (a, b)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # (its report printed NumPy's "Mean of empty slice" warnings)
def test_a_method_whose_every_seed_failed_gets_no_rank_test_p(peers):
    """Every seed of the recipe diverged before its first evaluation (NaN accuracies, kept since no
    seed is left): the rank test ranked the NaNs and gave p = 0, and the wins table read "snes in
    the mean (p < 0.05)" with p 0; scipy's Mann-Whitney U (the reference) gives nan on NaN input."""
    from scipy.stats import mannwhitneyu

    nan = float("nan")
    study = _runs("deepzero-krs", [nan, nan, nan]) + _runs("snes", [0.90, 0.91, 0.92])
    assert np.isnan(mannwhitneyu([nan] * 3, [90.0, 91.0, 92.0], alternative="two-sided").pvalue)
    assert np.isnan(peers.rank_test([nan] * 3, [90.0, 91.0, 92.0]))
    (row,) = peers.wins([("demo", study)], [])
    assert np.isnan(row["p"]) and "p < 0.05" not in row["words"]


def test_a_p_value_below_005_never_reads_005(peers):
    """p_text prints a p-value beside the verdict "p < 0.05": one below 0.05 must not read 0.05
    (three digits rounded 0.04996 up to it as two did 0.0498)."""
    for p in (0.0498, 0.04996, 0.049951, 0.0499999, 0.04):
        assert float(peers.p_text(p)) < 0.05, (p, peers.p_text(p))
    assert peers.p_text(0.0498) == "0.0498" and peers.p_text(0.056) == "0.056" and peers.p_text(0.05) == "0.05"


@pytest.mark.parametrize("p", [0.0498, 0.04951, 0.0496, 0.05, 0.0504, 0.077, 0.1, 0.00123])
def test_a_printed_p_value_falls_on_the_same_side_of_005_as_the_p_value(peers, p):
    """The tables print p beside a verdict at p < 0.05: a p under 0.05 must not read 0.05 (2
    significant digits round 0.0498 up to it, beside a 'p < 0.05' verdict), and one at or above
    0.05 must not read below it; the text is the p-value to two significant digits or more."""
    text = peers.p_text(p)
    assert (float(text) < 0.05) == (p < 0.05)  # the reference: the comparison of the p-value itself
    half = 0.5 * 10.0 ** (np.floor(np.log10(p)) - 1)  # half a unit of the second significant digit
    assert abs(float(text) - p) <= half * (1 + 1e-9)  # rounded to 2 significant digits or more
