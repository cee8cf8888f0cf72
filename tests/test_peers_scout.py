"""benchmarks/peers_scout.py on a tiny point: each variant changes what it says and nothing else."""

from __future__ import annotations

import importlib.util
import os
import types

import numpy as np
import pytest

from peers_pages import open_peers

pytest.importorskip("torch")
pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET = 3000


@pytest.fixture(scope="module")
def scout():
    spec = importlib.util.spec_from_file_location("peers_scout", os.path.join(ROOT, "benchmarks", "peers_scout.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.peers.RUNNERS["scout"] = module.run_variant
    return module


@pytest.fixture(scope="module")
def digits(scout):
    return scout.peers.load_data("digits", seed=0)


def _bench(scout, digits):
    return scout.peers.Bench(digits, "digits", 0, 0, BUDGET)


@pytest.mark.slow
def test_the_recipe_variant_is_the_studys_deepzero_krs(scout, digits):
    a = scout.peers.run_one(_bench(scout, digits), "deepzero-krs", {"lr": 0.1})
    b = scout.peers.run_one(_bench(scout, digits), "scout", scout.VARIANTS["recipe"][1])
    # curve rows are [queries, seconds, val, test]: all but the seconds are equal
    assert [r[:1] + r[2:] for r in a["curve"]] == [r[:1] + r[2:] for r in b["curve"]]
    assert a["queries"] <= BUDGET and a["val_acc"] > 0.15  # it learned something in 3,000 queries


def test_fixed_counts_move_only_the_named_blocks_and_spend_the_budget(scout, digits):
    bench = _bench(scout, digits)
    bench.start()
    # width 0: block 6 is the classifier; no weight decay, which would touch every weight
    params = scout.run_variant(bench, counts={"6.weight": 45, "6.bias": 5}, weight_decay=0.0)
    moved = params != bench.p0
    for info in bench.oracle.param_info:
        assert moved[info.slice].any() == info.name.startswith("6."), info.name
    with pytest.raises(ValueError, match="8.weight"):
        scout.run_variant(bench, counts={"8.weight": 50})
    assert bench.queries == (BUDGET // 51) * 51  # no ZO-GraSP: every query goes to steps of 50 + the base


@pytest.mark.slow
def test_the_spread_variants_hold_fixed_what_they_say(scout, digits):
    """split-0-start-0 / -coords / -batches keep seed 0's start, minibatches or draws at another seed."""
    counts = scout.VARIANTS["split-0"][1]["counts"]

    def trained(seed, **fixed):
        bench = scout.peers.Bench(digits, "digits", 0, seed, BUDGET, model_seed=fixed.pop("start", None),
                                  batch_seed=fixed.pop("batch_seed", None), rng_seed=fixed.pop("rng", None))
        bench.start()
        return bench, scout.run_variant(bench, counts=counts, **fixed)
    b0, p0 = trained(0)
    b1, p1 = trained(1, start=0, batch_seed=0, rng=0)  # everything of seed 0's: the same run
    assert np.array_equal(b1.p0, b0.p0) and np.array_equal(p1, p0)
    assert not np.array_equal(scout.peers.Bench(digits, "digits", 0, 1, BUDGET).p0, b0.p0)  # seed 1's own start
    runs = {"start": trained(1, start=0)[1], "coords": trained(1, start=0, batch_seed=0)[1],
            "batches": trained(1, start=0, rng=0)[1]}
    for name, params in runs.items():  # each changes the run
        assert not np.array_equal(params, p0), name
    assert not np.array_equal(runs["coords"], runs["batches"])
    for name in ("split-0-start-0", "split-0-coords", "split-0-batches"):
        assert scout.VARIANTS[name][1]["counts"] == counts and scout.VARIANTS[name][1]["start"] == 0


def test_layer_normalized_moves_in_proportion_to_the_partial_over_its_blocks_rms(scout):
    opt = scout._layer_normalized(0.5, [slice(0, 4), slice(4, 6)], weight_decay=0.0)
    params = np.ones(6, dtype=np.float32)
    grad = np.array([3.0, 0.0, -1.0, 0.0, 0.0, 0.0], dtype=np.float32)  # block 2 not measured
    new, state = opt.update(grad, opt.init(params), params)
    rms = np.sqrt(np.mean([9.0, 1.0]))  # over the measured (nonzero) partials only
    np.testing.assert_allclose(new, [1 - 0.5 * 3 / rms, 1, 1 + 0.5 / rms, 1, 1, 1], rtol=1e-6)
    # the second step: the block's second moment is an average over both steps (bias-corrected)
    new2, _ = opt.update(np.array([0, 2.0, 0, 0, 4.0, 0], dtype=np.float32), state, new)
    v1 = (0.999 * 0.001 * 5.0 + 0.001 * 4.0) / (1 - 0.999 ** 2)
    v2 = 0.001 * 16.0 / (1 - 0.999 ** 2)  # first measured at step 2: Adam's correction for step 2, as per weight
    np.testing.assert_allclose(new2 - new, [0, -0.5 * 2 / np.sqrt(v1), 0, 0, -0.5 * 4 / np.sqrt(v2), 0], rtol=1e-5)
    decayed, _ = scout._layer_normalized(0.5, [slice(0, 6)], weight_decay=0.1).update(np.zeros(6), opt.init(params), params)
    np.testing.assert_allclose(decayed, 1 - 0.5 * 0.1)  # nothing measured: only the decay


def test_coords_variants_measure_more_coordinates_a_step_within_the_budget(scout, digits):
    from zoracle._pruning import grasp_queries

    assert scout.VARIANTS["coords-100"][1] == {"coordinates": 100}
    for k in (50, 100):
        bench = _bench(scout, digits)
        bench.start()
        scout.run_variant(bench, coordinates=k if k != 50 else None)
        steps, rest = divmod(bench.queries - grasp_queries(192), k + 1)  # k weights and the base point a step
        assert rest == 0 and steps == (BUDGET - grasp_queries(192)) // (k + 1), (k, bench.queries)


def test_pooled_masks_draw_from_a_fixed_pool_and_are_undone(scout):
    import zoracle as zo

    blocks, ratios = [slice(0, 100), slice(100, 1100)], [0.02, 0.003]  # 2 and 3 coordinates a step
    original = zo.DynamicMasks.coordinates
    with scout._pooled_masks(4, seed=0):
        m = zo.DynamicMasks(blocks, ratios, seed=0, interval="step")
        drawn = [m.coordinates(0, step=s) for s in range(200)]
    assert all(len(c) == 5 for c in drawn)
    seen = np.unique(np.concatenate(drawn))
    assert (seen < 100).sum() == 8 and (seen >= 100).sum() == 12  # the whole pool (4 x the counts), no more
    assert zo.DynamicMasks.coordinates is original
    fresh = zo.DynamicMasks(blocks, ratios, seed=0, interval="step")
    assert len(np.unique(np.concatenate([fresh.coordinates(0, step=s) for s in range(200)]))) > 20


def test_importance_draws_favour_rows_and_columns_with_large_partials(scout):
    from zoracle.adapters.torch import ParamInfo

    info = [ParamInfo("w", slice(0, 12), (4, 3), "linear"), ParamInfo("b", slice(12, 16), (4,), "bias")]
    imp = scout._Importance(info, [slice(0, 12), slice(12, 16)], eps=0.2, power=1.0, prior=1.0)
    assert imp.probs(0) is None and imp.probs(1) is None  # nothing measured: uniform
    grad = np.zeros(16)
    grad[:12] = np.outer([0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 4.0]).ravel()  # row 0 dead, column 2 steep
    imp.observe(np.arange(16), grad)  # the bias block's partials are all 0: still uniform
    p = imp.probs(0).reshape(4, 3)
    assert np.isclose(p.sum(), 1.0) and p.min() >= 0.2 / 12  # the uniform share is a floor
    assert (p[0] < p[1]).all() and (p[:, 2] > p[:, 0]).all()
    assert np.allclose(p[1], p[2]) and np.allclose(p[1], p[3])
    assert imp.probs(1) is None
    # from scratch, by the formula: row means shrunk by one pseudo-measurement of the block mean (1.5)
    m = grad[:12].mean()
    rows = (np.array([0.0, 6.0, 6.0, 6.0]) + m) / 4
    cols = (np.array([3.0, 3.0, 12.0]) + m) / 5
    q = np.outer(rows, cols).ravel()
    assert np.allclose(p.ravel(), 0.8 * q / q.sum() + 0.2 / 12)


@pytest.mark.slow
def test_importance_masks_keep_the_counts_learn_from_the_steps_and_are_undone(scout, digits):
    import zoracle as zo

    original = zo.DynamicMasks.coordinates
    bench = _bench(scout, digits)
    with scout._importance_masks(bench, eps=0.2) as observe:
        m = zo.DynamicMasks([slice(0, 72), slice(80, 1232)], [0.1, 0.02], seed=0, interval="step", dense=[slice(1890, 1898)])
        first = m.coordinates(0, step=0)
        counts = [((first >= 0) & (first < 72)).sum(), ((first >= 80) & (first < 1232)).sum(), (first >= 1890).sum()]
        assert counts == [7, 23, 8] and len(first) == 38
        conv2 = first[(first >= 80) & (first < 1232)]
        rows = (conv2 - 80) // 72  # conv2 is 16 x (8 * 3 * 3)
        grad = np.zeros(bench.d)
        grad[conv2[rows < 8]] = 1.0  # measured: |partial| 1 in rows 0-7, 0 in rows 8-15
        observe(grad)
        later = np.concatenate([m.coordinates(0, step=s) for s in range(1, 400)])
    assert zo.DynamicMasks.coordinates is original
    fresh = zo.DynamicMasks([slice(0, 72), slice(80, 1232)], [0.1, 0.02], seed=0, interval="step", dense=[slice(1890, 1898)])
    uniform = np.concatenate([fresh.coordinates(0, step=s) for s in range(1, 400)])

    def share(c, rs):  # of the conv2 draws, the share in rows rs
        r = (c[(c >= 80) & (c < 1232)] - 80) // 72
        return np.isin(r, rs).mean()
    live, dead = np.unique(rows[rows < 8]), np.unique(rows[rows >= 8])
    assert share(later, live) > 1.25 * share(uniform, live) and share(later, dead) < 0.8 * share(uniform, dead)
    # end to end: the same budget as the recipe, spent on other coordinates
    a = scout.peers.run_one(_bench(scout, digits), "scout", scout.VARIANTS["recipe"][1])
    b = scout.peers.run_one(_bench(scout, digits), "scout", scout.VARIANTS["importance"][1])
    assert a["queries"] == b["queries"] and a["curve"][-1][2:] != b["curve"][-1][2:]


def test_sign_sgd_with_decay_warns_and_the_hybrid_moves_every_layer(scout, digits):
    bench = _bench(scout, digits)
    bench.start()
    with pytest.warns(UserWarning, match="sign_sgd"):
        scout.run_variant(bench, **scout.VARIANTS["sign-1-wd"][1])
    bench = _bench(scout, digits)
    bench.start()
    params = scout._hybrid(bench)
    assert bench.queries == (BUDGET // 151) * 151
    for info in bench.oracle.param_info:
        assert (params[info.slice] != bench.p0[info.slice]).any(), info.name


def test_main_appends_resumes_and_reports(scout, tmp_path, capsys):
    out = str(tmp_path / "s.json")
    argv = ["--data", "digits", "--width", "0", "--seeds", "0", "--budget", str(BUDGET), "--variants",
            "recipe,mu-0.05", "--out", out]
    scout.main(argv)
    runs = scout.peers._load(out)
    assert [r["variant"] for r in runs] == ["recipe", "mu-0.05"]
    scout.main(argv)  # everything done: nothing is rerun
    assert len(scout.peers._load(out)) == 2
    capsys.readouterr()
    scout.main(["--report", out])
    table = capsys.readouterr().out
    assert "| `recipe` |" in table and "| `mu-0.05` |" in table and "d = 1,898 (digits)" in table
    with pytest.raises(SystemExit):
        scout.main(["--variants", "nope"])


@pytest.mark.slow
def test_lr_applies_to_every_run_and_the_report_can_keep_some_variants(scout, tmp_path, capsys):
    out = str(tmp_path / "s.json")
    base = ["--data", "digits", "--width", "0", "--seeds", "0", "--budget", str(BUDGET), "--out", out]
    scout.main(base + ["--variants", "recipe,layer-steps", "--lr", "0.03"])
    runs = scout.peers._load(out)
    assert [(r["variant"], r["setting"]["lr"]) for r in runs] == [("recipe", 0.03), ("layer-steps", 0.03)]
    capsys.readouterr()
    scout.main(["--report", out, "--variants", "layer-steps"])
    table = capsys.readouterr().out
    assert "| `layer-steps` |" in table and "| `recipe` |" not in table and "Every variant at lr 0.03" in table
    with pytest.raises(SystemExit, match="--lr"):  # sign-1 sets its own lr
        scout.main(base + ["--variants", "sign-1", "--lr", "0.03"])
    # another rate is another run, in the same file; the same rate again is done
    scout.main(base + ["--variants", "recipe", "--lr", "0.1"])
    scout.main(base + ["--variants", "recipe", "--lr", "0.03"])
    runs = scout.peers._load(out)
    assert [(r["variant"], r["setting"]["lr"]) for r in runs] == [("recipe", 0.03), ("layer-steps", 0.03), ("recipe", 0.1)]


def test_the_docs_table_is_the_report_of_the_saved_results(scout):
    """docs/peers.md shows the scouting table exactly as `--report` prints it from the committed results."""
    paths = [os.path.join(ROOT, "benchmarks", "peers_results", f"scout_{d}.json") for d in ("digits", "mnist1d")]
    runs = [r for p in paths for r in scout.peers._load(p)]
    at_150k_only = {"average-0.03", "average-0.1", "linear", "sqrt-decay", "quadratic-decay", "wsd-0.2",  # added for
                    "floor-small", "grasp-768", "floor-small-768", "layer-steps-fill", "split-9", "split-9+bias", "split-10", "split-10-bias",
                    "split-0", "split-0-start-0", "split-0-coords", "split-0-batches",
                    "layer-norm-0.3", "layer-norm-0.1", "layer-norm-0.03", "layer-norm-1", "start-0",
                    "regrasp-4", "regrasp-10", "floor-hidden",  # rounds at 150,000 (and floor-hidden, later)
                    "coords-25", "coords-12",  # and at 12-13k at the default rate (scout_coords_*.json)
                    "floor-small-b1", "uniform-b1",  # and at d of about 2k (scout150_2k_*.json)
                    "floor-small-100", "floor-small-200", "floor-small-400"}  # and the coordinates there (*_coords_*)
    assert len(runs) == 2 * 3 * len(set(scout.VARIANTS) - at_150k_only)  # every other variant, 3 seeds, both data sets
    assert {r["variant"] for r in runs} == set(scout.VARIANTS) - at_150k_only
    with open_peers() as f:
        docs = f.read()
    assert scout.report(runs) in docs
    # the rounds at 150,000 queries: seeds 0-2 of every variant run there, and seeds 3-5 of three
    results = os.path.join(ROOT, "benchmarks", "peers_results")
    for files, seeds in ((("scout150_digits.json", "scout150_mnist1d.json"), {0, 1, 2}),
                         (("scout150_digits_seeds.json", "scout150_mnist1d_seeds.json"), {3, 4, 5})):
        longer = [r for f in files for r in scout.peers._load(os.path.join(results, f))]
        assert {r["budget"] for r in longer} == {150_000} and {r["seed"] for r in longer} == seeds
        for data in ("digits", "mnist1d"):
            here = [r for r in longer if r["data"] == data]
            assert len(here) == 3 * len({r["variant"] for r in here}) and any(r["variant"] == "recipe" for r in here)
        assert scout.report(longer) in docs
        if seeds == {3, 4, 5}:  # and all six seeds of the variants run on both
            six = [r for f in ("scout150_digits.json", "scout150_mnist1d.json") + files
                   for r in scout.peers._load(os.path.join(results, f)) if r["variant"] in {v["variant"] for v in longer}]
            assert {r["seed"] for r in six} == set(range(6)) and scout.report(six) in docs
    # drawing without replacement: six seeds at 150,000 queries
    cycled = [r for d in ("digits", "mnist1d") for r in scout.peers._load(os.path.join(results, f"scout150_cycle_{d}.json"))]
    assert {r["variant"] for r in cycled} == {"cycle", "cycle-layer-steps", "cycle-layer-steps-b1"}
    assert len(cycled) == 2 * 3 * 6 and {r["seed"] for r in cycled} == set(range(6)) and scout.report(cycled) in docs
    split = [r for d in ("digits", "mnist1d") for r in scout.peers._load(os.path.join(results, f"scout150_split_{d}.json"))]
    assert len(split) == 2 * 3 * 4 and scout.report(split) in docs
    recipe150 = {(r["data"], r["seed"]): r["test_acc"] for f in ("scout150_digits.json", "scout150_mnist1d.json")
                 for r in scout.peers._load(os.path.join(results, f)) if r["variant"] == "recipe"}
    assert {(r["data"], r["seed"]): r["test_acc"] for r in split if r["variant"] == "recipe"} == recipe150
    # averaging and the schedule's shape: six seeds, the chosen one on six new seeds, its lr at seed 0;
    # run on one machine, where `recipe` is the AVX-512 recipe runs of isa_*.json seed for seed
    for files, seeds, count in ((("scout150_sched_digits.json", "scout150_sched_mnist1d.json"), range(6), 7),
                                (("scout150_sched_fresh_digits.json", "scout150_sched_fresh_mnist1d.json"), range(6, 12), 2)):
        sched = [r for f in files for r in scout.peers._load(os.path.join(results, f))]
        assert len(sched) == 2 * 6 * count and {r["seed"] for r in sched} == set(seeds) and scout.report(sched) in docs
        assert {r["machine"]["cpu_capability"] for r in sched} == {"AVX512"}
    for data in ("digits", "mnist1d"):
        isa = {r["seed"]: r["curve"] for r in scout.peers._load(os.path.join(results, f"isa_{data}.json"))
               if r["method"] == "deepzero-krs" and r["machine"]["cpu_capability"] == "AVX512"}
        ours = {r["seed"]: r["curve"] for r in scout.peers._load(os.path.join(results, f"scout150_sched_{data}.json"))
                if r["variant"] == "recipe"}
        assert set(isa) == set(ours) == set(range(6))
        for seed in ours:  # curve rows are [queries, seconds, val, test]: all but the seconds equal
            assert [r[:1] + r[2:] for r in ours[seed]] == [r[:1] + r[2:] for r in isa[seed]], (data, seed)
    # layer-steps' learning rate checked at seed 0, and the smaller sizes at 30,000 queries
    for pair in (("scout150_lr0.03_digits.json", "scout150_lr0.03_mnist1d.json"),
                 ("scout150_lr0.3_digits.json", "scout150_lr0.3_mnist1d.json"),
                 ("scout150_sched_lr0.03_digits.json", "scout150_sched_lr0.03_mnist1d.json"),
                 ("scout150_sched_lr0.3_digits.json", "scout150_sched_lr0.3_mnist1d.json"),
                 ("scout_2k_digits.json", "scout_2k_mnist1d.json"), ("scout_13k_digits.json", "scout_13k_mnist1d.json")):
        runs = [r for f in pair for r in scout.peers._load(os.path.join(results, f))]
        assert len({r["data"] for r in runs}) == 2 and scout.report(runs) in docs


@pytest.mark.slow
def test_cycled_masks_draw_every_weight_once_a_cycle_and_are_undone(scout, digits):
    import zoracle as zo

    blocks, ratios = [slice(0, 100), slice(100, 1100)], [0.03, 0.007]  # 3 and 7 coordinates a step
    original = zo.DynamicMasks.coordinates
    with scout._cycled_masks(seed=0):
        m = zo.DynamicMasks(blocks, ratios, seed=0, interval="step")
        drawn = [m.coordinates(0, step=s) for s in range(400)]
        assert m.coordinates(0, step=399) is drawn[-1]  # asked twice for a step: the same draw
    assert zo.DynamicMasks.coordinates is original
    counts = np.zeros(1100, int)
    for s, c in enumerate(drawn):
        assert len(np.unique(c)) == 10 and ((c < 100).sum(), (c >= 100).sum()) == (3, 7)
        np.add.at(counts, c, 1)
        for b in blocks:  # at every step a block's draw counts differ by at most one
            assert counts[b].max() - counts[b].min() <= 1, (s, b)
    assert counts[:100].sum() == 1200 and set(counts[:100]) == {12}  # 400 x 3 = 12 cycles of 100
    # a fresh draw each step, for contrast, leaves weights unmeasured after one draw a weight
    fresh = zo.DynamicMasks(blocks, ratios, seed=0, interval="step")
    seen = np.unique(np.concatenate([fresh.coordinates(0, step=s) for s in range(143)]))  # 1001 draws of 1000
    assert ((seen >= 100) & (seen < 1100)).sum() < 800
    # end to end: the recipe's budget, spent on other coordinates
    a = scout.peers.run_one(_bench(scout, digits), "scout", scout.VARIANTS["recipe"][1])
    b = scout.peers.run_one(_bench(scout, digits), "scout", scout.VARIANTS["cycle"][1])
    assert a["queries"] == b["queries"] and a["curve"][-1][2:] != b["curve"][-1][2:]


def test_hold_decay_warms_up_holds_then_falls_linearly_to_zero(scout):
    wsd = scout._HoldDecay(0.1, total_steps=100, warmup_steps=10, hold=0.8)
    assert [round(wsd(s), 6) for s in (0, 9, 10, 50, 80, 90, 99, 150)] == [0.01, 0.1, 0.1, 0.1, 0.1, 0.05, 0.005, 0.0]
    linear = scout._HoldDecay(0.1, total_steps=100, warmup_steps=10, hold=0.0)  # decay starts after the warm-up
    assert [round(linear(s), 6) for s in (9, 10, 55, 99)] == [0.1, 0.1, 0.05, 0.001111]
    assert scout.VARIANTS["wsd-0.2"][1] == {"schedule": ("linear", 0.8)}


def test_averaging_recorder_records_the_bias_corrected_moving_average(scout):
    rng = np.random.default_rng(0)
    recorded = []
    bench = types.SimpleNamespace(budget=1000, record=lambda p, q: recorded.append((p.copy(), q)), done=lambda: False)
    cb, average = scout._averaging_recorder(bench, spent=7, window=0.05)  # time constant 50 queries
    params, nfev = rng.normal(size=(6, 4)), [11, 11, 30, 11, 80, 11]
    for p, n in zip(params, nfev):
        assert cb("step", {"nfev": n}, p) is False
        assert cb("epoch", {}, p) is None  # only steps count
    # the textbook weights: step i keeps (1 - a_i) times the a_j of every later step j
    a = np.exp(-np.array(nfev) / 50.0)
    w = np.array([(1 - a[i]) * np.prod(a[i + 1:]) for i in range(6)])
    np.testing.assert_allclose(average(), (w[:, None] * params).sum(0) / w.sum(), rtol=1e-6)
    assert [q for _, q in recorded] == list(7 + np.cumsum(nfev))
    np.testing.assert_array_equal(recorded[-1][0], average())
    np.testing.assert_allclose(recorded[0][0], params[0], rtol=1e-6)  # bias-corrected: the first step is itself
    # a time constant far below a step is the last weights; far above it, their plain mean
    for window, expect in ((1e-6, params[-1]), (1e6, None)):
        cb, average = scout._averaging_recorder(bench, spent=0, window=window)
        for p in params:
            cb("step", {"nfev": 10}, p)
        np.testing.assert_allclose(average(), params.mean(0) if expect is None else expect, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_average_and_schedule_variants_spend_the_recipes_budget(scout, digits):
    a = scout.peers.run_one(_bench(scout, digits), "scout", scout.VARIANTS["recipe"][1])
    for name in ("average-0.1", "wsd-0.2"):
        b = scout.peers.run_one(_bench(scout, digits), "scout", scout.VARIANTS[name][1])
        assert b["queries"] == a["queries"] and b["error"] is None
        assert [r[0] for r in b["curve"]] == [r[0] for r in a["curve"]]  # recorded at the same marks
        assert b["curve"][-1][2:] != a["curve"][-1][2:], name  # other weights evaluated


def test_splits_print_zo_grasps_split_and_what_filling_moves(scout):
    from zoracle._pruning import fill_small_blocks

    table = scout.splits("digits", 0, [0], budget=BUDGET).splitlines()
    head, row = table[0], table[2]
    names = [c.split(" (")[0] for c in head.strip("|").split(" | ")[1:-1]]
    sizes = np.array([int(c.split(" (")[1].rstrip(")").replace(",", "")) for c in head.strip("|").split(" | ")[1:-1]])
    cells = [c.strip() for c in row.strip("|").split("|")]
    counts = np.array([int(c) for c in cells[1:-1]])
    assert cells[0] == "0" and counts.sum() == scout.peers.KEEP_FRESH
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]  # width 0: 6 is the classifier
    filled = fill_small_blocks(counts, sizes)
    moved = ", ".join(f"{n} {b - a:+d}" for n, a, b in zip(names, counts, filled) if b != a)
    assert cells[-1] == (moved or "-")


def test_the_fill_small_blocks_rounds_are_the_docs_tables_and_peers_runs(scout):
    results = os.path.join(ROOT, "benchmarks", "peers_results")

    def load(name):
        return scout.peers._load(os.path.join(results, name))
    with open_peers() as f:
        docs = f.read()
    # twelve seeds at 150,000 queries, next to the recipe's twelve (the scheduling rounds' `recipe` runs)
    fill = [r for d in ("digits", "mnist1d") for r in load(f"scout150_fill_{d}.json")]
    assert {r["variant"] for r in fill} == {"floor-small", "grasp-768", "floor-small-768"} and len(fill) == 2 * 3 * 12
    assert {r["seed"] for r in fill} == set(range(12)) and {r["machine"]["cpu_capability"] for r in fill} == {"AVX512"}
    recipe = [r for d in ("digits", "mnist1d") for f in (f"scout150_sched_{d}.json", f"scout150_sched_fresh_{d}.json")
              for r in load(f) if r["variant"] == "recipe"]
    assert len(recipe) == 2 * 12 and scout.report(recipe + fill) in docs
    # layer_steps alone and with the fill, twelve seeds here, next to the recipe and the fill
    both = [r for d in ("digits", "mnist1d") for r in load(f"scout150_lsfill_{d}.json")]
    assert {r["variant"] for r in both} == {"layer-steps", "layer-steps-fill"} and len(both) == 2 * 2 * 12
    assert {r["seed"] for r in both} == set(range(12)) and {r["machine"]["cpu_capability"] for r in both} == {"AVX512"}
    assert scout.report(recipe + [r for r in fill if r["variant"] == "floor-small"] + both) in docs
    # fixed splits on six seeds: the split, not the rest of the seed, decides
    split = load("scout150_split9_mnist1d.json")
    assert {r["variant"] for r in split} == {"split-9", "split-9+bias", "split-10", "split-10-bias"}
    assert len(split) == 4 * 6 and {r["seed"] for r in split} == {0, 1, 2, 3, 9, 10} and scout.report(split) in docs
    # 30,000 queries at every size, six seeds
    for size in ("2k", "13k", None):
        runs = [r for d in ("digits", "mnist1d") for r in load(f"scout_fill_{size + '_' if size else ''}{d}.json")]
        assert {r["variant"] for r in runs} == {"recipe", "floor-small"} and len(runs) == 2 * 2 * 6, size
        assert {r["budget"] for r in runs} == {30_000} and scout.report(runs) in docs
    # `floor-small` is peers.py's `deepzero-krsf` (short_budget(fill_small_blocks=True)) at lr 0.1, run for run
    for data in ("digits", "mnist1d"):
        ours = {r["seed"]: r["curve"] for r in fill if r["data"] == data and r["variant"] == "floor-small"}
        theirs = {r["seed"]: r["curve"] for r in load(f"fill_{data}.json") if r["setting"] == {"lr": 0.1}}
        assert set(theirs) == set(ours), data
        for seed in ours:  # curve rows are [queries, seconds, val, test]: all but the seconds equal
            assert [c[:1] + c[2:] for c in ours[seed]] == [c[:1] + c[2:] for c in theirs[seed]], (data, seed)


@pytest.mark.slow
def test_the_docs_split_rows_are_zo_grasps_on_the_machine_that_made_them(scout):
    """ZO-GraSP's split of MNIST-1D seeds 9 and 10, as the docs print it. Its scores are sums of
    forward passes, whose rounding follows the CPU's instruction set (docs/peers.md), so the rows
    are checked where they were made."""
    made = scout.peers.machine()
    if made["cpu_capability"] != "AVX512" or "AMD EPYC" not in made["cpu"]:
        pytest.skip(f"the split table was made on an AMD EPYC under AVX-512; this is {made['cpu']} ({made['cpu_capability']})")
    with open_peers() as f:
        docs = f.read()
    for row in scout.splits("mnist1d", 1200, [9, 10]).splitlines():
        assert row in docs


def test_the_spread_round_is_the_docs_table(scout):
    """Where the digits spread comes from: twelve seeds of the five variants; at seed 0 (where each
    holds everything at seed 0's) the four split variants are one run, and start-0 is the recipe's."""
    results = os.path.join(ROOT, "benchmarks", "peers_results")
    runs = scout.peers._load(os.path.join(results, "scout150_spread_digits.json"))
    names = {"start-0", "split-0", "split-0-start-0", "split-0-coords", "split-0-batches"}
    assert {r["variant"] for r in runs} == names and len(runs) == 5 * 12 and {r["seed"] for r in runs} == set(range(12))
    (recipe,) = [r for r in scout.peers._load(os.path.join(results, "scout150_sched_digits.json"))
                 if r["variant"] == "recipe" and r["seed"] == 0]
    (start,) = [r for r in runs if r["variant"] == "start-0" and r["seed"] == 0]
    assert [row[:1] + row[2:] for row in start["curve"]] == [row[:1] + row[2:] for row in recipe["curve"]]
    assert {r["budget"] for r in runs} == {150_000} and {r["machine"]["cpu_capability"] for r in runs} == {"AVX512"}
    with open_peers() as f:
        docs = f.read()
    assert scout.report(runs) in docs
    first = [[row[:1] + row[2:] for row in r["curve"]] for r in runs if r["seed"] == 0 and r["variant"] != "start-0"]
    assert len(first) == 4 and all(c == first[0] for c in first)
    for name in names:  # the standard deviations the docs quote
        sd = np.std([100 * r["test_acc"] for r in runs if r["variant"] == name], ddof=1)
        assert f"{sd:.1f}" in docs.split("### Where the digits spread comes from")[1].split("## Per second")[0], name


def test_the_layer_normalized_round_is_the_docs_table(scout):
    results = os.path.join(ROOT, "benchmarks", "peers_results")
    runs = [r for d in ("digits", "mnist1d") for r in scout.peers._load(os.path.join(results, f"scout150_lnorm_{d}.json"))]
    assert {r["variant"] for r in runs} == {"layer-norm-0.3", "layer-norm-1", "layer-norm-0.1", "layer-norm-0.03"}
    assert len(runs) == 2 * 4 * 3 and {r["seed"] for r in runs} == {0, 1, 2} and {r["budget"] for r in runs} == {150_000}
    with open_peers() as f:
        assert scout.report(runs) in f.read()


def test_regrasp_scores_again_at_the_weights_reached_and_the_masks_follow(scout, digits, monkeypatch):
    """regrasp-4: ZO-GraSP again after a quarter, half and three quarters of the steps, at the
    weights reached; the per-step masks draw from the new split; every query is counted."""
    import zoracle
    import zoracle._masks as masks_module
    from zoracle._pruning import grasp_queries

    assert scout.VARIANTS["regrasp-4"][1] == {"regrasp": 4}
    bench = _bench(scout, digits)
    bench.start()
    classifier = next(i.slice for i in bench.oracle.param_info if i.name == "6.weight")
    calls, drawn = [], []
    real_draw = masks_module.random_masks

    def fake_grasp(oracle, params, blocks, **kw):
        calls.append(np.array(params))
        s = np.zeros(params.shape[0])
        s[classifier] = 1.0  # every kept weight on the classifier: the split moves there
        return s

    def draw(blocks, ratios, rng, dense=()):
        coords = real_draw(blocks, ratios, rng, dense=dense)
        drawn.append(coords)
        return coords

    monkeypatch.setattr(zoracle, "zo_grasp", fake_grasp)
    monkeypatch.setattr(masks_module, "random_masks", draw)
    scout.run_variant(bench, regrasp=4)
    g = grasp_queries(192)
    steps = (BUDGET - 4 * g) // 51
    assert bench.queries == 4 * g + steps * 51 <= BUDGET  # train's ZO-GraSP, three more, and the steps
    assert len(calls) == 3 and all(not np.array_equal(p, bench.p0) for p in calls)
    assert not np.array_equal(calls[0], calls[1])  # scored at the weights reached, not at the start
    first = round(steps / 4)
    sampled = [set(c.tolist()) for c in drawn]  # the recipe scores biases too: no dense block is added
    assert len(drawn) == steps
    before = set().union(*sampled[:first])
    after = set().union(*sampled[first:])
    assert not before <= set(range(classifier.start, classifier.stop))  # train's own split: not only the classifier
    assert after and after <= set(range(classifier.start, classifier.stop))


def test_the_regrasp_round_is_the_docs_table(scout):
    results = os.path.join(ROOT, "benchmarks", "peers_results")
    files = [os.path.join(results, f"scout150_{part}_{d}.json")
             for d in ("digits", "mnist1d") for part in ("sched", "sched_fresh", "regrasp")]
    new = [r for d in ("digits", "mnist1d") for r in scout.peers._load(os.path.join(results, f"scout150_regrasp_{d}.json"))]
    assert {r["variant"] for r in new} == {"regrasp-4", "regrasp-10"}
    assert len(new) == 2 * 2 * 12 and {r["seed"] for r in new} == set(range(12)) and {r["budget"] for r in new} == {150_000}
    assert all(r["queries"] <= 150_000 for r in new)
    runs = [r for path in files for r in scout.peers._load(path) if r["variant"] in ("recipe", "regrasp-4", "regrasp-10")]
    with open_peers() as f:
        assert scout.report(runs) in f.read()


@pytest.mark.parametrize("size, study, others, twelve", [
    ("2k", "rule_small", ["floor-small-b1", "uniform-ratios", "uniform-b1"], {("digits", 0.03, "floor-small"), ("mnist1d", 0.03, "floor-small"), ("digits", 0.03, "floor-small-b1"),
                          ("mnist1d", 0.03, "floor-small-b1"), ("digits", 0.01, "floor-small-b1")}),
    ("13k", "rule_mid150", ["floor-small-b1"], {(d, 0.03, v) for d in ("digits", "mnist1d") for v in ("floor-small", "floor-small-b1")})])
def test_the_momentum_rounds_are_the_docs_tables(scout, size, study, others, twelve):
    """scout150_{2k,13k}_lr*_*.json: the recipe's default there (`floor-small`, lr 0.03) reproduces the study's
    `deepzero-krsf` runs (`rule_small`, `rule_mid150`) bit for bit; the docs' tables are `--report` and `--versus` of
    the files."""
    results = os.path.join(ROOT, "benchmarks", "peers_results")

    def load(name):
        return scout.peers._load(os.path.join(results, name))
    with open_peers() as f:
        docs = f.read()
    every = []
    for lr in ("0.03", "0.01", "0.1"):
        runs = [r for d in ("digits", "mnist1d") for r in load(f"scout150_{size}_lr{lr}_{d}.json")]
        assert {r["budget"] for r in runs} == {150_000} and len({r["d"] for r in runs}) == 2
        assert {r["setting"]["lr"] for r in runs} == {float(lr)} and all(r["queries"] <= 150_000 for r in runs)
        assert scout.report(runs) in docs
        every += runs
    assert {(r["data"], r["setting"]["lr"], r["variant"]) for r in every if r["seed"] == 11} == twelve
    want = {(r["data"], r["seed"]): r["test_acc"] for d in ("digits", "mnist1d") for r in load(f"{study}_{d}.json")
            if r["method"] == "deepzero-krsf" and r["budget"] == 150_000}
    mine = {(r["data"], r["seed"]): r["test_acc"] for r in every if r["variant"] == "floor-small"}
    assert len(mine) == 24 and mine == want
    assert {r["variant"] for r in every} == {"floor-small", *others}
    table = scout.versus(every, "floor-small", others)
    assert table in docs and "`floor-small-b1@0.03` | 12 |" in table


def test_the_coordinates_rounds_are_the_docs_tables(scout):
    """scout{150,30}_{2k,13k}_coords_*.json ("More coordinates a step at 79 queries per weight"): every table in the
    docs is `--report` or `--versus` of the files, as the docs' commands name them."""
    results = os.path.join(ROOT, "benchmarks", "peers_results")

    def load(*names):
        return [r for n in names for d in ("digits", "mnist1d") for r in scout.peers._load(os.path.join(results, f"{n}_{d}.json"))]
    with open_peers() as f:
        docs = f.read()
    wide = ["floor-small", "floor-small-100", "floor-small-200", "floor-small-400"]
    narrow = ["recipe", "coords-100", "coords-200"]
    for names, variants, seeds in ((("scout150_2k_lr0.03", "scout150_2k_coords"), wide, 12),
                                   (("scout30_2k_coords",), narrow, 12),
                                   (("scout150_13k_lr0.03", "scout150_13k_coords"), wide[:3], 12),
                                   (("scout30_13k_coords",), narrow, 3),
                                   (("scout60_2k_coords",), narrow[:2], 12),
                                   (("scout100_2k_coords",), ["floor-small", "coords-100"], 12)):
        runs = [r for r in load(*names) if r["variant"] in variants]
        assert {len({r["seed"] for r in runs if r["variant"] == v and r["data"] == d})
                for v in variants[1:3] for d in ("digits", "mnist1d")} == {seeds}, names
        assert scout.report(runs) in docs, names
        assert scout.versus(runs, variants[0], variants[1:]) in docs, names
    # the new default's line: every point measured on the far side of 40 queries per weight, and one on the near side
    from zoracle.recipes import default_coordinates
    points = ((150_000, 1_898), (150_000, 1_914), (100_000, 1_898), (60_000, 1_898), (30_000, 1_898), (150_000, 12_106))
    assert [default_coordinates(b, d) for b, d in points] == [100, 100, 100, 50, 50, 50]


def test_floor_hidden_fills_every_small_empty_block_but_the_last(scout, digits):
    import zoracle._pruning as pruning

    counts, sizes = [3, 0, 12, 1, 34, 0, 0, 0], [40, 8, 384, 16, 96000, 1200, 12000, 10]
    original = pruning.fill_small_blocks
    assert original(counts, sizes).tolist() == [3, 1, 12, 1, 32, 0, 0, 1]  # floor-small: the classifier's bias too
    with scout._fill_all_but_last():
        assert pruning.fill_small_blocks(counts, sizes).tolist() == [3, 1, 12, 1, 33, 0, 0, 0]
        scores = np.r_[np.full(30, 5.0), np.zeros(3)]  # all survivors in the first block; the last (3) left empty
        assert pruning.layer_ratios(scores, [slice(0, 30), slice(30, 33)], 0.9, fill_small=True).tolist() == [0.1, 0.0]
    assert pruning.fill_small_blocks is original
    assert scout.VARIANTS["floor-hidden"][1] == {"fill_small_blocks": "hidden"}  # run_variant enters the context


def test_versus_compares_two_variants_on_the_seeds_both_ran(scout, tmp_path, capsys):
    from scipy.stats import mannwhitneyu

    def run(variant, seed, acc, data="digits", d=1898):
        return {"data": data, "d": d, "variant": variant, "seed": seed, "test_acc": acc, "val_acc": acc,
                "setting": {"lr": 0.1}, "budget": BUDGET, "width": 0 if d == 1898 else 160}
    runs = ([run("recipe", s, a) for s, a in enumerate([0.80, 0.82, 0.84, 0.86])]
            + [run("floor-small", s, a) for s, a in enumerate([0.70, 0.72, 0.74])]  # seed 3 not run
            + [run("floor-small", 0, 0.5, "mnist1d")]  # no recipe there: no row
            + [run("recipe", s, 0.9, d=13258) for s in range(2)]  # a second size in the same file: its own row
            + [run("floor-small", s, a, d=13258) for s, a in enumerate([0.95, 0.97])])
    table = scout.versus(runs, "recipe", ["floor-small", "cycle"])
    p = mannwhitneyu([70, 72, 74], [80, 82, 84]).pvalue
    p13 = 2 / 6  # 2 of the 6 splits of the four seeds are as uneven (scipy's default, with the tie: 0.22)
    assert table.splitlines()[2:] == [
        f"| digits | 1,898 | {BUDGET:,} | `floor-small` | 3 | 72.0 (70.0-74.0) | 82.0 (80.0-84.0) | -10.0 | {p:.2g} |",
        f"| digits | 13,258 | {BUDGET:,} | `floor-small` | 2 | 96.0 (95.0-97.0) | 90.0 (90.0-90.0) | +6.0 | {p13:.2g} |"]
    path = tmp_path / "r.json"
    path.write_text(__import__("json").dumps(runs))
    scout.main(["--report", str(path), "--variants", "recipe,floor-small", "--versus", "recipe"])
    assert capsys.readouterr().out.strip() == table
    with pytest.raises(SystemExit):
        scout.main(["--versus", "recipe"])  # needs --report


def test_versus_gives_each_learning_rate_of_a_variant_its_own_row(scout):
    from scipy.stats import mannwhitneyu

    def run(variant, seed, acc, lr):
        return {"data": "digits", "d": 1898, "variant": variant, "seed": seed, "test_acc": acc, "val_acc": acc,
                "setting": {"lr": lr}, "budget": BUDGET, "width": 0}
    base = [run("floor-small", s, a, 0.03) for s, a in enumerate([0.90, 0.92, 0.94])]
    b1 = ([run("floor-small-b1", s, a, 0.1) for s, a in enumerate([0.50, 0.60])]
          + [run("floor-small-b1", s, a, 0.01) for s, a in enumerate([0.95, 0.96, 0.97])])
    lines = scout.versus(base + b1, "floor-small", ["floor-small-b1"]).splitlines()[2:]
    p1, p2 = mannwhitneyu([95, 96, 97], [90, 92, 94]).pvalue, mannwhitneyu([50, 60], [90, 92]).pvalue
    assert lines == [  # one row a rate, in the order of the rates; each on the seeds it shares with the base
        f"| digits | 1,898 | {BUDGET:,} | `floor-small-b1@0.01` | 3 | 96.0 (95.0-97.0) | 92.0 (90.0-94.0) | +4.0 | {p1:.2g} |",
        f"| digits | 1,898 | {BUDGET:,} | `floor-small-b1@0.1` | 2 | 55.0 (50.0-60.0) | 91.0 (90.0-92.0) | -36.0 | {p2:.2g} |"]
    one = scout.versus(base + b1[2:], "floor-small", ["floor-small-b1"]).splitlines()[2:]
    assert [line.split(" | ")[3] for line in one] == ["`floor-small-b1`"]  # one rate: the plain name
    with pytest.raises(ValueError, match="learning rates"):
        scout.versus(base + [run("floor-small", 0, 0.5, 0.1)], "floor-small", ["floor-small-b1"])


def test_report_gives_each_size_and_budget_of_a_data_set_its_own_columns(scout):
    def run(variant, seed, acc, data="digits", d=1898, budget=BUDGET):
        return {"data": data, "d": d, "variant": variant, "seed": seed, "test_acc": acc, "val_acc": acc - 0.01,
                "setting": {}, "budget": budget, "width": 0}
    one = [run("recipe", s, a, "mnist1d", 1914) for s, a in enumerate([0.40, 0.50])]
    runs = ([run("recipe", s, a) for s, a in enumerate([0.80, 0.90])]
            + [run("recipe", s, a, d=13258) for s, a in enumerate([0.60, 0.70])]  # a second size in the file
            + [run("recipe", 0, 0.30, budget=10 * BUDGET)] + one)  # and a second budget
    lines = scout.report(runs).splitlines()
    heads = [f"digits, d = {d}, {b:,} queries" for d, b in (("1,898", BUDGET), ("1,898", 10 * BUDGET), ("13,258", BUDGET))]
    assert lines[0] == ("| variant | what changes | " + " | ".join(f"{h}: {k} %" for h in heads for k in ("val", "test"))
                        + " | mnist1d: val % | mnist1d: test % |")
    assert lines[2].split(" | ")[2:] == ["84.0 (79-89)", "85.0 (80-90)", "29.0 (29-29)", "30.0 (30-30)",
                                         "64.0 (59-69)", "65.0 (60-70)", "44.0 (39-49)", "45.0 (40-50) |"]
    assert lines[-1].startswith("Seeds 0, 1; d = 1,898 / 13,258 (digits), 1,914 (mnist1d).")
    # one point a data set: headed by the data set alone, as every table in the docs
    assert scout.report(one).splitlines()[0] == "| variant | what changes | mnist1d: val % | mnist1d: test % |"


def test_the_fill_section_shows_its_tables_as_the_reports_print_them(scout, capsys):
    """docs/peers.md, "The fill on a second machine, and at 12-13k": every table its commands print."""
    with open_peers() as f:
        section = f.read().split("### The fill on a second machine, and at 12-13k")[1].split("\n### ")[0]
    results = os.path.join(ROOT, "benchmarks", "peers_results")

    def files(stem):
        return ",".join(os.path.join(results, f"{stem}_{d}.json") for d in ("digits", "mnist1d"))
    others = "recipe,pool-80,mu-0.05,importance-mild,coords-100,coords-200,layer-steps,layer-steps-wide,cycle,linear"
    for argv in (["--report", files("scout13"), "--variants", "recipe,floor-small,floor-hidden"],
                 ["--report", files("scout13"), "--variants", "recipe,floor-small,floor-hidden", "--versus", "recipe"],
                 ["--report", files("scout2k_fill"), "--variants", "recipe,floor-small", "--versus", "recipe"],
                 ["--report", files("scout30_hidden"), "--variants", "recipe,floor-small,floor-hidden", "--versus", "recipe"],
                 ["--report", files("scout150_hidden"), "--variants", "floor-hidden"],
                 ["--report", files("scout13"), "--variants", others, "--versus", "recipe"]):
        capsys.readouterr()
        assert scout.main(argv) == 0
        assert capsys.readouterr().out.strip() in section, argv
    # the runs behind them: 18 seeds of the fill variants at 12-13k and 2k, 12 of floor-hidden at 150,000
    for stem, variants, seeds in (("scout13", ("recipe", "floor-small", "floor-hidden"), range(18)),
                                  ("scout2k_fill", ("recipe", "floor-small"), range(18)),
                                  ("scout150_hidden", ("floor-hidden",), range(12))):
        for d in ("digits", "mnist1d"):
            runs = scout.peers._load(os.path.join(results, f"{stem}_{d}.json"))
            for v in variants:
                assert sorted(r["seed"] for r in runs if r["variant"] == v) == list(seeds), (stem, d, v)


def test_the_fill_default_section_shows_what_its_runs_give(scout, capsys):
    """docs/peers.md, "The fill as the default from 1,400 steps": the --versus table as its command prints
    it, twelve seeds of each variant at each point, and every cell of its summary by steps computed
    from the saved runs."""
    import re

    from scipy.stats import mannwhitneyu
    from zoracle.recipes import FILL_FROM_STEPS

    with open_peers() as f:
        docs = f.read()
    section = docs.split("### The fill as the default from 1,400 steps")[1].split("\n### ")[0]
    assert f"{FILL_FROM_STEPS:,} steps" in section
    results = os.path.join(ROOT, "benchmarks", "peers_results")
    new = [os.path.join(results, f"{stem}_{d}.json") for stem in ("scout75_fill", "scout150_small_fill")
           for d in ("digits", "mnist1d")]
    at_1000 = os.path.join(results, "scout51_fill_digits.json")  # digits only: where the fill costs
    for files in (new, [at_1000]):
        capsys.readouterr()
        assert scout.main(["--report", ",".join(files), "--variants", "recipe,floor-small", "--versus", "recipe"]) == 0
        assert capsys.readouterr().out.strip() in section
    runs = [r for path in new + [at_1000] for r in scout.peers._load(path)]
    for key in {(r["data"], r["d"], r["budget"], r["variant"]) for r in runs}:
        assert sorted(r["seed"] for r in runs if (r["data"], r["d"], r["budget"], r["variant"]) == key) == list(range(12))

    def cell(fill, plain):  # the fill's mean less the recipe's, points, and the rank test
        a, b = 100 * np.array(fill), 100 * np.array(plain)
        return f"{a.mean() - b.mean():+.1f}", float(mannwhitneyu(a, b).pvalue)

    def scouted(stem, data, d, budget):
        got = [r for x in ("digits", "mnist1d") for r in scout.peers._load(os.path.join(results, f"{stem}_{x}.json"))
               if (r["data"], r["d"], r["budget"]) == (data, d, budget)]
        by = {v: {r["seed"]: r["test_acc"] for r in got if r["variant"] == v} for v in ("recipe", "floor-small")}
        seeds = sorted(set(by["recipe"]) & set(by["floor-small"]))
        return cell([by["floor-small"][s] for s in seeds], [by["recipe"][s] for s in seeds])

    def studied(files, data, isa):  # the largest size at 150,000 queries, the study's chosen lr 0.1
        got = [r for p in files for r in scout.peers._load(os.path.join(results, p.format(data)))
               if r["budget"] == 150_000 and r["setting"].get("lr") == 0.1
               and (r.get("machine") or {}).get("cpu_capability") == isa]
        d = max(r["d"] for r in got)
        by = {m: [r["test_acc"] for r in got if r["method"] == m and r["d"] == d] for m in ("deepzero-krsf", "deepzero-krs")}
        assert [len(v) for v in by.values()] == [12, 12]
        return cell(by["deepzero-krsf"], by["deepzero-krs"])
    sizes = {"digits": {"2k": 1898, "13k": 13258, "121k": 121258}, "mnist1d": {"2k": 1914, "12k": 12106, "110k": 109658}}
    stems = {30_000: {"2k": "scout2k_fill", "13k": "scout13", "12k": "scout13", "121k": "scout30_hidden",
                      "110k": "scout30_hidden"}, 51_400: "scout51_fill", 75_000: "scout75_fill",
             150_000: "scout150_small_fill"}
    rows = re.findall(r"^\| ([0-9,]+) \(([0-9,]+)\) \| (.+) \| (.+) \|$", section, re.M)
    assert [r[:2] for r in rows] == [("580", "30,000"), ("1,000", "51,400"), ("1,463", "75,000"), ("2,933", "150,000")]
    checked = 0
    for steps, budget, *cells in rows:
        budget = int(budget.replace(",", ""))
        assert (budget - 386) // 51 == int(steps.replace(",", ""))
        for data, text in zip(("digits", "mnist1d"), cells):
            for size, diffs in re.findall(r"(\w+): ([^;]+)", text):
                found = re.findall(r"([+-][0-9.]+) \(([0-9.e-]+)\)", diffs)
                if budget == 150_000 and size in ("121k", "110k"):
                    want = [studied(["dec03_{}.json"], data, "AVX2"),
                            studied(["isa_{}.json", "seeds12_{}.json", "fill_{}.json"], data, "AVX512")]
                else:
                    stem = stems[budget][size] if isinstance(stems[budget], dict) else stems[budget]
                    want = [scouted(stem, data, sizes[data][size], budget)]
                assert len(found) == len(want), (budget, data, size)
                for (diff, p), (wdiff, wp) in zip(found, want):
                    assert diff == wdiff and p == f"{wp:.2g}", (budget, data, size, diff, p, wdiff, wp)
                    checked += 1
    assert checked == 20


def test_the_fill_default_section_times_the_two_recipes_side_by_side(scout):
    with open_peers() as f:
        section = f.read().split("### The fill as the default from 1,400 steps")[1].split("\n### ")[0]
    results = os.path.join(ROOT, "benchmarks", "peers_results")
    seconds = {}
    for name in ("speed150_fill", "speed150_fill2"):
        rows = [r for d in ("digits", "mnist1d") for r in scout.peers._load(os.path.join(results, f"{name}_{d}.json"))]
        assert {(r["data"], r["method"]) for r in rows} == {
            (d, m) for d in ("digits", "mnist1d") for m in ("deepzero", "deepzero-krs", "deepzero-krsf")}, name
        assert scout.peers.speed_table(rows) in section, name
        for r in rows:
            seconds[name, r["data"], r["method"]] = r["seconds"]
    # the quoted shares: the filled recipe's extra time over the unfilled one's, per data set
    extra = {d: sorted(100 * (seconds[n, d, "deepzero-krsf"] / seconds[n, d, "deepzero-krs"] - 1)
                       for n in ("speed150_fill", "speed150_fill2")) for d in ("digits", "mnist1d")}
    assert f"{extra['digits'][0]:.0f}-{extra['digits'][1]:.0f}% more time" in section
    assert f"{extra['mnist1d'][0]:.0f}-{extra['mnist1d'][1]:.0f}% more on MNIST-1D" in section
    macs = {(r["data"], r["method"]): r["macs"] / 1e9 for r in scout.peers._load(os.path.join(results, "speed150_fill_digits.json"))
            + scout.peers._load(os.path.join(results, "speed150_fill_mnist1d.json"))}
    assert f"({macs['digits', 'deepzero-krsf']:.0f} against {macs['digits', 'deepzero-krs']:.0f} GMAC)" in section
    share = 100 * (macs["mnist1d", "deepzero-krsf"] / macs["mnist1d", "deepzero-krs"] - 1)
    assert (f"{share:.0f}% more multiply-adds ({macs['mnist1d', 'deepzero-krsf']:.0f} against "
            f"{macs['mnist1d', 'deepzero-krs']:.0f} GMAC") in section


def test_lr_table_puts_each_rate_in_its_column_and_the_rules_apart(scout):
    from zoracle.recipes import default_lr

    def run(lr, seed, acc, variant="recipe", d=1000, budget=2000, method="deepzero-krs-variant"):
        setting = {"lr": lr} | ({"fill_small_blocks": True} if variant == "floor-small" else {})
        return {"data": "digits", "d": d, "budget": budget, "variant": variant, "method": method, "seed": seed,
                "setting": setting, "val_acc": acc, "test_acc": acc - 0.01}
    rule = default_lr(2000, 1000)  # 2 queries a weight: 0.0601
    runs = ([run(0.1, s, a) for s, a in enumerate([0.70, 0.72])] + [run(0.03, s, a) for s, a in enumerate([0.60, 0.62])]
            + [run(rule, s, a) for s, a in enumerate([0.80, 0.82])]
            + [run(0.1, 0, 0.9, "mu-0.05")]  # another variant: left out
            + [run(0.3, 0, 0.99)]  # one seed (a tuning grid's): left out
            # peers.py's filled recipe counts as floor-small; its other keys would make it another run
            + [dict(run(0.1, s, 0.5, "floor-small", budget=150_000), variant=None, method="deepzero-krsf") for s in (0, 1)]
            + [dict(run(0.1, 0, 0.5, budget=150_000), variant=None, method="deepzero-krs", setting={"lr": 0.1, "mu": 1})])
    table = scout.lr_table(runs).splitlines()
    assert table[0] == ("| data | d | queries | queries a weight | small blocks | lr 0.1 | lr 0.03 | the rule's lr | "
                        "the rule | best by validation |")
    assert table[2] == "| digits | 1,000 | 2,000 | 2.00 | as ranked | 71.0 / 70.0 (2) | 61.0 / 60.0 (2) | 0.0601 | 81.0 / 80.0 (2) | 0.0601 |"
    assert table[3] == "| digits | 1,000 | 150,000 | 150.00 | filled | 50.0 / 49.0 (2) | (the rule) | 0.03 | - | 0.1 |"
    assert len(table) == 6  # the two rows, then the note


def test_the_lr_section_shows_the_rates_table_of_the_saved_results(scout, capsys):
    with open_peers() as f:
        docs = f.read()
    R = os.path.join(ROOT, "benchmarks", "peers_results")
    # the study's sweeps first (lr 0.1 at the largest size and 30,000 queries), then this round's runs, which
    # take a seed's place where a file repeats it (a later file's run of a seed wins)
    files = [os.path.join(R, f"{name}{data}.json") for data in ("digits", "mnist1d") for name in ("", "fresh_")]
    files += [os.path.join(R, f"{name}_{data}.json") for name in ("lr", "rule", "dec03", "long_small")
              for data in ("digits", "mnist1d")]
    runs = [r for path in files for r in scout.peers._load(path)]
    assert scout.lr_table(runs) in docs
    # the command in the docs prints it
    command = docs[docs.index("python benchmarks/peers_scout.py --by-lr"):].splitlines()[0]
    paths = command.split("--report ")[1].split()[0].replace("$R/", R + "/").split(",")
    assert paths == files
    scout.main(["--by-lr", "--report", ",".join(paths)])
    assert scout.lr_table(runs) in capsys.readouterr().out


def test_the_fewer_coordinates_round_is_the_docs_table_and_the_rule_mid_runs(scout):
    """25 and 12 coordinates a step at d = 12-13k and 30,000 queries, twelve seeds at the default rate: the docs
    tables are the reports of the saved runs, and their `recipe` runs are peers.py's `rule_mid` runs seed for seed
    (the scout's recipe is short_budget as peers.py runs it)."""
    from zoracle.recipes import default_lr

    assert scout.VARIANTS["coords-25"][1] == {"coordinates": 25} and scout.VARIANTS["coords-12"][1] == {"coordinates": 12}
    results = os.path.join(ROOT, "benchmarks", "peers_results")
    runs = [r for d in ("digits", "mnist1d") for r in scout.peers._load(os.path.join(results, f"scout_coords_{d}.json"))]
    assert len(runs) == 2 * 3 * 12 and {r["budget"] for r in runs} == {30_000}
    for r in runs:  # the rule's rate, every weight of these models sampled
        assert r["setting"]["lr"] == default_lr(30_000, r["d"]), r["data"]
    with open_peers() as f:
        docs = f.read()
    assert scout.report(runs) in docs and scout.versus(runs, "recipe", ["coords-25", "coords-12"]) in docs
    for data in ("digits", "mnist1d"):
        mid = {r["seed"]: r for r in scout.peers._load(os.path.join(results, f"rule_mid_{data}.json"))
               if r["method"] == "deepzero-krs"}
        ours = {r["seed"]: r for r in runs if r["data"] == data and r["variant"] == "recipe"}
        assert set(mid) == set(ours) == set(range(12))
        for seed, r in ours.items():  # curve rows are [queries, seconds, val, test]: all but the seconds equal
            assert r["test_acc"] == mid[seed]["test_acc"], (data, seed)
            assert [c[:1] + c[2:] for c in r["curve"]] == [c[:1] + c[2:] for c in mid[seed]["curve"]], (data, seed)
