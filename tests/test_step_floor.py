"""benchmarks/step_floor.py: the hand-written CGE step is zoracle's estimate, and the timer runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from peers_pages import open_peers

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


@pytest.mark.parametrize("fraction", [0.1, 1.0])
def test_hand_step_is_zoracles_estimate_for_every_coordinate(fraction):
    import step_floor
    import step_time

    import zoracle as zo

    oracle, params, mask, batches, _ = step_time.demo_step(zo, "digits", fraction)
    hand = step_floor.HandStep(oracle, params, mask, torch.nn.CrossEntropyLoss(reduction="none"))
    for batch in batches[:2]:
        ref = zo.estimate_gradient(oracle.bind(batch), params, zo.CGE(mu=step_floor.MU), coordinates=mask)
        got = hand.grad(torch.as_tensor(batch[0], dtype=torch.float32), torch.as_tensor(batch[1]))
        assert got.shape == (mask.sum(),) and np.abs(ref.grad[mask]).max() > 0.05
        # a loss difference over mu: two float32 losses of about 2.3 agree to a few units in the last place
        assert np.abs(got - ref.grad[mask]).max() <= 8 * np.finfo(np.float32).eps * 2.5 / step_floor.MU
    with pytest.raises(ValueError, match="digits demo CNN"):
        step_floor.HandStep(type("O", (), {"param_info": oracle.param_info[:2]})(), params, mask, None)


def test_torch_calls_counts_operators_not_attribute_reads():
    import step_floor

    a = torch.ones(3)

    def two():
        b = torch.add(a, 1)  # a torch function
        _ = b.shape, b.dtype  # attribute reads: no dispatch
        return b.mul(2)  # a tensor method

    assert step_floor.torch_calls(two) == 2
    assert step_floor.torch_calls(lambda: None) == 0


@pytest.mark.slow  # benchmarks/step_floor.py end to end, every timed path of its table
def test_step_floor_prints_ratios_side_by_side():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "step_floor.py"), "--rounds", "1",
                          "--steps", "3", "--root", ROOT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["zoracle"] == os.path.join(ROOT, "zoracle")  # --root: this checkout, imported by path
    assert r["d"] == 1898 and r["coordinates"] == 220 and r["check_max_abs_diff"] <= r["check_allowed"]
    fixed = "zoracle, one coordinate a block"
    assert set(r["ms_per_step"]) == {"zoracle", fixed, "by hand", "zoracle-es", "loss alone", "loss alone, rows",
                                     "hand set-up"}
    # torch calls a step, counted: zoracle's step makes most of its calls whatever its coordinates,
    # and several times the hand-written step's
    calls = r["torch_calls"]
    assert set(calls) == {"zoracle", fixed, "by hand"}
    assert 0 < calls["by hand"] < calls[fixed] < calls["zoracle"] and calls["zoracle"] > 2 * calls["by hand"]
    # by part: the plain call, coordinate_losses' own calls, each block's; together nearly the fixed step
    parts = r["torch_calls_by_part"]
    assert list(parts) == ["plain call", "no coordinate", "block 0", "block 1", "block 2"]
    own = parts["no coordinate"]
    blocks = [parts[f"block {i}"] - own for i in range(3)]
    assert own > 0 and all(b > 0 for b in blocks)
    assert abs(parts["plain call"] + own + sum(blocks) - calls[fixed]) <= 20
    assert r["mask"] == "layers" and r["coordinates_per_block"] == [15, 131, 74] and r["steps_per_mask"] == 36
    assert all(v > 0 for v in r["ms_per_step"].values()) and r["zo_grasp_s"] > 0
    us = r["us_per_query"]
    assert r["es_over_zoracle"] == pytest.approx(us["zoracle-es"] / us["zoracle"])
    proj = r["projected_150k"]
    assert proj["steps"] == (150_000 - 386) // 221 and proj["zoracle-es_s"] == pytest.approx(0.15 * us["zoracle-es"])
    ms = r["ms_per_step"]
    hand = ms["by hand"] + ms["hand set-up"] / r["steps_per_mask"]  # a mask an epoch: the set-up that often
    assert us["by hand"] == pytest.approx(hand / 221 * 1e3)
    for step_ms, key in ((ms["zoracle"], "es_over_zoracle"), (hand, "es_over_hand")):  # steps plus ZO-GraSP's one-off
        run = proj["steps"] * step_ms / 1e3 + r["zo_grasp_s"]
        assert proj[key] == pytest.approx(proj["zoracle-es_s"] / run)


def test_study_mask_is_the_runs_first_mask():
    """``--mask study``: the coordinates the study's demo-recipe run estimates first: ZO-GraSP's
    layer ratios at sparsity 0.9 of the scored weights, biases dense, drawn by ``zo.train``."""
    import peers
    import step_floor

    import zoracle as zo

    mask = step_floor.study_mask(zo)
    bench = peers.Bench(peers.load_data("digits", 0), "digits", 0, 0, 30_000)
    info = bench.oracle.param_info
    assert mask.shape == (bench.d,) and mask.dtype == bool
    assert all(mask[i.slice].all() for i in info if i.kind == "bias")  # biases dense
    assert int(mask.sum()) == 186 + 34  # 10% of the 1,864 scored weights, and the 34 biases
    # the recipe's own ratios put more in the first convolution than 10% of every layer does
    first = info[0].slice
    assert mask[first].sum() > 15
    assert np.array_equal(mask, step_floor.study_mask(zo))  # the run is seeded: the same mask again


def _saved_run_in_docs(name: str):
    """``(result, docs)``: the committed step_floor result ``name``, checked to appear in
    docs/peers.md as ``--report`` prints it (indented in a list item), with its command."""
    import step_floor

    with open(os.path.join(ROOT, "benchmarks", "peers_results", name)) as f:
        r = json.load(f)
    with open_peers() as f:
        docs = f.read()
    assert "\n".join("  " + line if line else "" for line in step_floor.table(r).split("\n")) in docs
    assert f"python benchmarks/step_floor.py --report benchmarks/peers_results/{name}" in docs
    return r, docs


def test_docs_show_the_saved_run_as_report_prints_it():
    r, docs = _saved_run_in_docs("step_floor_digits.json")
    ms = r["ms_per_step"]
    # the ratios the prose quotes
    assert f"{ms['zoracle'] / ms['by hand']:.1f}x less time" in docs
    assert f"({ms['by hand']:.2f} against {ms['zoracle']:.2f} ms a step" in docs
    assert f"{r['projected_150k']['es_over_hand']:.1f}x ahead of" in docs
    assert f"`zoracle-es` in that run (zoracle's step: {r['projected_150k']['es_over_zoracle']:.1f}x)" in docs


def test_docs_show_the_quiet_run_as_report_prints_it():
    r, docs = _saved_run_in_docs("step_floor_digits_quiet.json")
    p = r["projected_150k"]
    assert f"is {p['es_over_zoracle']:.1f}x for zoracle's step and {p['es_over_hand']:.1f}x for" in docs
    assert p["es_over_hand"] < 10 and f"ZO-GraSP's\n  {r['zo_grasp_s']:.2f} s" in docs
    es30k = r["us_per_query"]["zoracle-es"] * 30_000 / 1e6  # seconds of a 30,000-query zoracle-es run
    assert f"`zoracle-es` spends {es30k:.2f} s on 30,000 queries at this rate,\n  {es30k / r['zo_grasp_s']:.1f}x ZO-GraSP's" in docs
    assert es30k / r["zo_grasp_s"] < 10
    # the acceptance prose quotes the same run
    assert (f"it would be {p['es_over_hand']:.1f}x (zoracle's step: {p['es_over_zoracle']:.1f}x), still\nshort of 10x"
            in docs)
    assert f"ZO-GraSP alone caps the lead at {es30k / r['zo_grasp_s']:.1f}x" in docs


def test_docs_show_the_class_major_run_as_report_prints_it():
    r, docs = _saved_run_in_docs("step_floor_digits_cm.json")
    ms, p = r["ms_per_step"], r["projected_150k"]
    assert ms["loss alone"] < ms["loss alone, rows"] / 2  # the class-major layout the step now runs
    assert "projects to 14-21x, zoracle's to 5.5-6.1x" in " ".join(docs.split())
    assert round(p["es_over_zoracle"], 1) == 5.5 and round(p["es_over_hand"], 0) == 14


def test_docs_show_the_runs_own_mask_and_the_side_by_side_pairs():
    """docs/peers.md's tables for the run's own mask and for 10% of every layer, before and after
    one call for every block, are ``--report`` of the saved runs, with their commands; the
    ranges the prose quotes come from the saved side-by-side pairs."""
    import step_floor

    with open_peers() as f:
        docs = f.read()
    runs = {}
    for name in ("study_before", "layers_before", "study", "layers"):
        with open(os.path.join(ROOT, "benchmarks", "peers_results", f"step_floor_digits_{name}.json")) as f:
            runs[name] = r = json.load(f)
        assert step_floor.table(r) in docs, name
        assert f"--report benchmarks/peers_results/step_floor_digits_{name}.json" in docs, name
        assert r["mask"] == name.split("_")[0] and r["check_max_abs_diff"] <= r["check_allowed"]
    assert runs["study"]["coordinates_per_block"] == [37, 117, 66]
    pairs = {}
    for when in ("before", "after"):
        rs = []
        for i in (1, 2, 3):
            with open(os.path.join(ROOT, "benchmarks", "peers_results", "step_floor_ab", f"{when}_{i}.json")) as f:
                rs.append(json.load(f))
        assert all(r["mask"] == "study" for r in rs)
        assert all(r["zoracle"].startswith("/tmp/old") == (when == "before") for r in rs)  # --root for before
        pairs[when] = ([r["ms_per_step"]["zoracle"] / r["ms_per_step"]["by hand"] for r in rs],
                       [r["projected_150k"]["es_over_zoracle"] for r in rs])
    (rb, pb), (ra, pa) = pairs["before"], pairs["after"]
    assert max(ra) < min(rb)  # every pair: zoracle's step nearer the hand-written one after
    assert (f"{min(rb):.2f}-{max(rb):.2f}x the hand-written one's time before, and\n  "
            f"{min(ra):.2f}-{max(ra):.2f}x after") in docs
    assert f"went from {min(pb):.1f}-{max(pb):.1f}x to {min(pa):.1f}-{max(pa):.1f}x" in docs


def test_docs_say_where_the_step_time_goes_from_the_saved_run():
    """The fixed cost, the torch calls and what 10x would take, as docs/peers.md quotes them (its
    summary, the acceptance prose and its own section), all from the saved run."""
    import step_floor

    with open(os.path.join(ROOT, "benchmarks", "peers_results", "step_floor_digits_calls.json")) as f:
        r = json.load(f)
    with open_peers() as f:
        docs = f.read()
    assert step_floor.table(r) in docs
    assert "python benchmarks/step_floor.py --report benchmarks/peers_results/step_floor_digits_calls.json" in docs
    text = " ".join(docs.split())
    ms, calls, p = r["ms_per_step"], r["torch_calls"], r["projected_150k"]
    fixed = "zoracle, one coordinate a block"
    hand = ms["by hand"] + ms["hand set-up"] / r["steps_per_mask"]
    assert r["mask"] == "study" and r["coordinates_per_block"] == [37, 117, 66]
    assert ms[fixed] > ms["zoracle"] / 2  # most of the step is paid whatever its coordinates
    for quoted in ("makes 107 in all", f"takes {ms[fixed]:.2f} ms of the {ms['zoracle']:.2f} ms",
                   f"The other 217 coordinates add {ms['zoracle'] - ms[fixed]:.2f} ms",
                   f"makes {calls['zoracle']} torch calls, {calls[fixed]} of them",
                   f"makes {calls['by hand']} calls in all and takes {hand:.2f} ms with its set-up, "
                   f"{ms['zoracle'] / hand:.1f}x less"):
        assert quoted in text, quoted
    assert calls[fixed] == 309 and calls["by hand"] == 107
    per_call = ms[fixed] / calls[fixed] * 1e3
    assert f"about {per_call:.0f} us" in text
    # 10x over a projected 150,000-query run: ZO-GraSP plus 676 steps within a tenth of zoracle-es's time
    need = (p["zoracle-es_s"] / 10 - r["zo_grasp_s"]) / p["steps"] * 1e3
    assert f"gives `zoracle-es` {p['zoracle-es_s']:.1f} s" in text
    assert f"0.30 s of ZO-GraSP and {p['steps']} steps of at most {need:.2f} ms" in text
    assert f"{r['zo_grasp_s']:.2f}" == "0.30"
    assert f"would then be {p['es_over_hand']:.1f}x ahead of `zoracle-es`, where zoracle's step gives " \
           f"{p['es_over_zoracle']:.1f}x" in text
    calls_needed = (need - (ms["zoracle"] - ms[fixed])) / per_call * 1e3
    assert 80 <= calls_needed < 95 and "to about 90 at this rate" in text
    assert f"10x needs a step of at most {need:.2f} ms" in text
    # the runs counted again with the later code: 2026-12-05's, kept as history in peers-study.md, and
    # 2026-12-07's (after the sparse step's index work was kept per mask), which the summary and the
    # README's per-second sentence quote
    for name in ("step_floor_digits_calls_dec05.json", "step_floor_digits_calls_dec07.json"):
        with open(os.path.join(ROOT, "benchmarks", "peers_results", name)) as f:
            n = json.load(f)
        nms, ncalls, np_ = n["ms_per_step"], n["torch_calls"], n["projected_150k"]
        nhand = nms["by hand"] + nms["hand set-up"] / n["steps_per_mask"]
        assert n["mask"] == "study" and n["coordinates_per_block"] == [37, 117, 66] and ncalls["by hand"] == 107
        for quoted in (f"gives zoracle's step {nms['zoracle']:.2f} ms, {nms[fixed]:.2f} ms on one coordinate a block",
                       f"{ncalls['zoracle']} torch calls a step, {ncalls[fixed]} of them whatever its coordinates",
                       f"projects to {np_['es_over_zoracle']:.1f}x `zoracle-es`'s time with zoracle's step and "
                       f"{np_['es_over_hand']:.1f}x with the hand-written one"):
            assert quoted in text, (name, quoted)
    for quoted in (f"{nms[fixed]:.2f} ms of its {nms['zoracle']:.2f} ms", f"{ncalls[fixed]} a step",
                   f"takes {nms['zoracle'] / nhand:.1f}x less time"):
        assert quoted in text, quoted
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = " ".join(f.read().split())
    assert (f"{ncalls[fixed]} of the {ncalls['zoracle']} torch calls of a step there are paid whatever its "
            f"coordinates, and the same step written by hand makes {ncalls['by hand']} and takes "
            f"{nms['zoracle'] / nhand:.1f}x less time") in readme


def test_docs_quote_the_compiled_run_from_its_saved_file():
    """The torch.compile comparison in peers.md is the saved run's, and the report prints its row."""
    import step_floor

    with open(os.path.join(ROOT, "benchmarks", "peers_results", "step_floor_compiled_dec05.json")) as f:
        r = json.load(f)
    ms, c = r["ms_per_step"], r["compiled"]
    nhand = ms["by hand"]
    with open_peers() as f:
        text = " ".join(f.read().split())
    assert (f"gives the hand-written step {ms[step_floor.COMPILED]:.2f} ms compiled against {nhand:.2f} ms as "
            f"written (compiled once in {c['compile_s']:.1f} s, its estimate {c['max_abs_diff_vs_eager']:.1e} off") \
        .replace("e-04", "e-4") in text
    assert f"with zoracle's step at {ms['zoracle']:.2f} ms in the same run" in text
    assert ms[step_floor.COMPILED] > nhand  # slower compiled: what the docs say
    assert "through `torch.compile`" in step_floor.table(r)
