"""Smoke runs of the CGE speed benchmark: its own gradient checks and its JSON keys (no timings)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zoracle.apps import bench  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"reference_s", "inplace_s", "batched_s", "reuse_s", "limit_s"}


def _args(argv):
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(argv)


@pytest.mark.slow
def test_quick_json_run_checks_itself():
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "cge_speed.py"), "--quick", "--json",
           "--model", "mlp", "--model", "cnn", "--naive-coords", "60", "--coords", "1500", "--repeat", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert set(res) == {"mlp", "cnn"}
    for name, r in res.items():
        assert KEYS <= set(r), name
        assert all(r[k] > 0 for k in KEYS)
        assert set(r["ratios"]) == {"reference", "inplace", "batched", "limit"}
        assert r["ratios"]["inplace"] == pytest.approx(r["inplace_s"] / r["reuse_s"])
        assert r["check"]["repeatable"] and r["check"]["ok"]
        assert r["check"]["max_abs_diff_vs_inplace"] <= r["check"]["tol"]
        assert r["coords"] == 1500 and r["timed_coords"]["inplace"] == 60


def test_in_process_run_is_deterministic_and_table_renders():
    args = _args(["--model", "mlp", "--quick", "--naive-coords", "40", "--coords", "800", "--repeat", "2",
                  "--dtype", "float64"])
    r1 = bench.run(args)["mlp"]
    r2 = bench.run(args)["mlp"]
    assert r1["grad_sha256"] == r2["grad_sha256"]  # two runs, identical gradients
    assert r1["check"]["ok"] and r1["check"]["tol"] < 1e-9  # float64: a tight agreement bound
    text = bench._table({"mlp": r1})
    assert "(d) reuse" in text and "OK" in text


@pytest.mark.slow
def test_torchvision_style_models_agree_with_the_textbook_loop():
    args = _args(["--model", "resnet18", "--model", "mobilenet_v3_small", "--quick", "--naive-coords", "30",
                  "--coords", "60", "--repeat", "1"])
    res = bench.run(args)
    for name in ("resnet18", "mobilenet_v3_small"):
        r = res[name]
        assert r["d"] > 100_000 and r["batch"] == 32 and r["coords"] == 60
        assert r["check"]["repeatable"] and r["check"]["ok"], r["check"]
        assert r["ratios"]["inplace"] > 0 and r["reuse_s"] > 0


@pytest.mark.slow
def test_deepzero_split_is_resnet20_and_its_gradient_matches_zoracle():
    args = _args(["--model", "deepzero", "--coords", "40", "--batch", "4", "--repeat", "1", "--dtype", "float64",
                  "--mu", "1e-6"])
    r = bench.run(args)["deepzero"]
    assert {"deepzero_s", "reuse_s", "ratios", "check", "flop_ratio"} <= set(r) and r["modules"] == 12
    assert r["flop_ratio"] is None or r["flop_ratio"] >= 1  # a finer split never runs more suffix FLOPs
    assert r["ratios"]["deepzero"] == pytest.approx(r["deepzero_s"] / r["reuse_s"])
    c = r["check"]
    assert c["split_equals_model"] and c["ok"] and c["loss_diff"] < 1e-12
    assert c["cosine"] > 1 - 1e-9  # float64, the same forward differences


def test_deepzero_module_ownership_covers_every_parameter():
    from zoracle.adapters.torch_models import ResNet20

    model = ResNet20()
    owners = [bench._deepzero_module_of(n) for n, _ in model.named_parameters()]
    assert owners == sorted(owners) and set(owners) == set(range(12))
    assert len(bench._deepzero_modules(model, torch.nn.functional)) == 12


def test_deepzero_cge_equals_a_plain_perturbed_forward():
    from zoracle.adapters.torch_models import ResNet20

    torch.manual_seed(0)
    model = ResNet20(width=4).double().train()
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.standard_normal((3, 3, 32, 32)))
    y = torch.as_tensor(rng.integers(0, 10, 3))
    d = sum(p.numel() for p in model.parameters())
    coords = np.array([0, 5, d // 2, d - 3])
    grad, base, _ = bench.deepzero_cge(model, x, y, coords, 1e-4, torch)
    flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    with torch.no_grad():
        assert base == pytest.approx(float(torch.nn.functional.cross_entropy(model(x), y)), abs=1e-12)
        for i, g in zip(coords, grad):
            v = flat.clone()
            v[i] += 1e-4
            torch.nn.utils.vector_to_parameters(v, model.parameters())
            want = (float(torch.nn.functional.cross_entropy(model(x), y)) - base) / 1e-4
            torch.nn.utils.vector_to_parameters(flat, model.parameters())
            assert g == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_fallback_comparison_reports_its_ratio():
    args = _args(["--model", "fallback", "--coords", "6", "--batch", "4", "--repeat", "1"])
    r = bench.run(args)["fallback"]
    assert r["d"] >= 1_000_000 and r["coords"] == 6
    assert r["ratios"]["inplace"] == pytest.approx(r["inplace_s"] / r["fallback_s"])
    assert r["check"]["ok"], r["check"]
    assert "fallback" in bench._table({"fallback": r})


def test_bad_flags_give_one_line_errors(capsys):
    with pytest.raises(SystemExit):
        _args(["--mu", "-1"])
    assert "must be a finite number > 0" in capsys.readouterr().err
    import zoracle as zo

    with pytest.raises(zo.ArgumentError, match="sparsity"):
        bench.run(_args(["--model", "mlp", "--sparsity", "1.5"]))


def test_the_script_refuses_a_bad_flag_value_as_zoracle_bench_does():
    """benchmarks/cge_speed.py --sparsity 1.5 ended in an ArgumentError traceback with exit code 1,
    the code the script keeps for a failed gradient check; `zoracle bench` prints one line, exit 2."""
    for cmd in ([os.path.join(ROOT, "benchmarks", "cge_speed.py")], ["-m", "zoracle", "bench"]):
        proc = subprocess.run([sys.executable, *cmd, "--model", "mlp", "--sparsity", "1.5"], capture_output=True,
                              text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == 2, (cmd, proc.returncode)
        assert "Traceback" not in proc.stderr and "`--sparsity` must be in [0, 1), got 1.5" in proc.stderr


@pytest.mark.parametrize("layer, naive", [(0, "60"), (2, "400")])
def test_the_check_fails_a_fast_path_that_zeroes_a_layer(monkeypatch, layer, naive):
    """The float32 check's tolerance (float32 rounding over mu, 1.75e-3 on the MLP) is above 98.9%
    of the MLP's partials: a fast path that zeroed the whole first layer (4,160 coordinates)
    passed it, even with every coordinate checked. The check now also compares (d) with (b) on a
    float64 copy, where both are exact to round-off, on coordinates drawn from every layer (the
    64 lowest indices were all in the first: a middle layer zeroed passed)."""
    import zoracle as zo

    real = zo.estimate_gradient

    def zeroes_a_layer(oracle, params, *a, **k):
        est = real(oracle, params, *a, **k)
        blocks = getattr(oracle, "blocks", None)
        if not blocks:
            return est
        grad = np.array(est.grad)
        grad[blocks[layer]] = 0.0
        return zo.GradientEstimate(grad, est.loss, est.nfev, est.state)

    monkeypatch.setattr(zo, "estimate_gradient", zeroes_a_layer)
    r = bench.run(_args(["--model", "mlp", "--quick", "--naive-coords", naive, "--repeat", "2"]))
    c = r["mlp"]["check"]
    assert c["max_abs_diff_vs_inplace"] <= c["tol"]  # the float32 comparison alone passes it
    assert c["max_abs_diff_vs_inplace_float64"] > 1e3 * c["tol_float64"] and not c["ok"]


@pytest.mark.slow
def test_the_strong_baselines_agree_with_zoracle(tmp_path):
    """benchmarks/strong_baselines.py, the hand-written baselines benchmarks.md compares with
    (a module cache with vmap among them), exits 0 only when every baseline gives zoracle's
    gradient up to the dtype's rounding: in float64, about 3e-12 (float32's bound, 1.75e-3,
    would pass a baseline that zeroed a layer)."""
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "strong_baselines.py"), "--model", "resnet18",
           "--coords", "32", "--dtype", "float64"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(tag in proc.stdout for tag in ("(b) textbook loop", "(v) user vmap", "(m) DeepZero-style", "(mv)"))
