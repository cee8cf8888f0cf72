"""``zoracle defense``: the smoke run (fixed seeds), the gradient paths, the black-box discipline."""

from __future__ import annotations

import argparse

import json
import os

import numpy as np
import pytest

import zoracle as zo

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")
from zoracle.adapters.onnx import OnnxClassifier, QueryBudgetExceeded  # noqa: E402
from zoracle.adapters.torch import TorchOracle  # noqa: E402
from zoracle.apps import _defense_train as T  # noqa: E402
from zoracle.apps import defense  # noqa: E402
from zoracle.cli import main as cli  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``zoracle defense --quick --json --out DIR`` once for the module (about 20 s quiet, 33 s
    of a loaded default run): its two tests are marked slow, the CI script's slow run keeps them.
    The pieces the run chains stay in the default run: the gradient paths
    (test_deepzero_estimate_matches_white_box_gradient, test_hybrid_chain_matches_white_box_gradient),
    the black-box discipline (test_deepzero_training_only_queries_the_black_box) and the report
    (test_the_numbers_are_written_before_the_figure, test_the_report_names_what_ran_...)."""
    out = tmp_path_factory.mktemp("defense")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli(["defense", "--quick", "--json", "--out", str(out)])
    return rc, buf.getvalue(), out


@pytest.mark.slow  # shares quick_run, see there
def test_quick_json_deepzero_beats_no_denoiser(quick_run):
    rc, stdout, _ = quick_run
    assert rc == 0
    result = json.loads(stdout)
    assert set(result) == {"none", "deepzero", "hybrid", "fo"}
    for row in result.values():
        assert list(row) == ["0", "0.25", "0.5", "0.75"]
        acc = np.array(list(row.values()))
        assert ((acc >= 0) & (acc <= 1)).all()
        assert (np.diff(acc) <= 0).all()  # certified accuracy never grows with the radius
    # the acceptance check (sigma = 0.25, fixed seeds): DeepZero beats no denoiser at r = 0
    assert result["deepzero"]["0"] > result["none"]["0"]
    # and, with a wide margin at this size, at r = 0.25 (so do the other denoisers)
    for name in ("deepzero", "hybrid", "fo"):
        assert result[name]["0.25"] > result["none"]["0.25"] + 0.03


@pytest.mark.slow  # shares quick_run, see there
def test_quick_writes_report(quick_run):
    _, stdout, out = quick_run
    md = (out / "defense.md").read_text()
    for name in ("none", "mse", "deepzero", "hybrid", "fo"):
        assert defense.LABELS[name] in md
    assert "86.02" in md and "63.60" in md  # the paper's table sits next to ours
    assert "zoracle defense --quick" in md
    assert (out / "defense.png").stat().st_size > 1000
    data = json.loads((out / "defense.json").read_text())
    assert data["certified"]["deepzero"] == json.loads(stdout)["deepzero"]
    # both ZO rows spent the same loss evaluations per estimate; FO none through the black box
    rows = data["rows"]
    assert rows["deepzero"]["queries_per_estimate"] == rows["hybrid"]["queries_per_estimate"] == 65
    assert rows["fo"]["train_queries"] == 0 and rows["deepzero"]["train_queries"] > 0
    assert rows["none"]["certify_queries"] == 360 * (16 + 300)
    assert os.path.exists(out / "classifier.onnx")


@pytest.mark.parametrize("argv,message", [
    (["--sigma", "-1"], "--sigma"),
    (["--n", "abc"], "--n"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli(["defense", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv,message", [
    (["--alpha", "2"], "alpha"), (["--test-points", "1000"], "test-points"), (["--queries", "5"], "queries"),
    (["--queries", "1000"], "at most 738"),  # it clipped DeepZero to 738 while the hybrid row spent 1000
    (["--n", "9"], "--n >= 10"), (["--n", "4", "--alpha", "0.05"], "--n >= 5"),  # every point abstained, after training
])
def test_bad_values_are_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:  # refused before any work: exit 2, as --sigma -1 above
        cli(["defense", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------
# the pieces, on a tiny black box
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    Xtr, ytr, _, _ = T.load_digits_split(0)
    clf = T.train_classifier(Xtr[:300], ytr[:300], epochs=2, seed=0)
    path = tmp_path_factory.mktemp("bb") / "f.onnx"
    T.export_onnx(clf, path)
    torch.manual_seed(1)
    den = T.Denoiser()
    T.pretrain_mse(den, Xtr, sigma=0.25, steps=20, batch=32, seed=0)
    return clf, path, den, Xtr[:300], ytr[:300]


def test_the_exported_classifier_loads_in_the_oldest_onnxruntime_the_extra_allows(tiny):
    """The apps extra allows onnxruntime 1.16, which runs models of opsets up to 19; torch 2.13's
    exporter stamps opset 20 by default, so ``zoracle defense`` with onnxruntime 1.16 refused the
    classifier it had just exported ("is not a loadable ONNX model (truncated, corrupted or not
    ONNX?)"). The export names its opset."""
    onnx = pytest.importorskip("onnx")
    _, path, *_ = tiny
    opsets = {o.domain or "ai.onnx": o.version for o in onnx.load(str(path)).opset_import}
    assert opsets.get("ai.onnx", 0) <= 19, opsets


def test_export_onnx_with_torch_before_2_5_which_has_no_dynamo_keyword(tiny, tmp_path, monkeypatch):
    """pyproject's apps extra declares torch>=2.1, but ``torch.onnx.export(..., dynamo=...)`` came in
    torch 2.5: with torch 2.1-2.4's export, ``zoracle defense`` crashed exporting its classifier
    (TypeError: unexpected keyword argument 'dynamo'). Reference: the torch model's own logits."""
    ort = pytest.importorskip("onnxruntime")
    clf, _, _, X, _ = tiny
    native = torch.onnx.export

    def export_2_4(model, args, f, export_params=True, verbose=False, training=None, input_names=None,
                   output_names=None, operator_export_type=None, opset_version=None, do_constant_folding=True,
                   dynamic_axes=None, keep_initializers_as_inputs=None, custom_opsets=None,
                   export_modules_as_functions=False, autograd_inlining=True):  # torch 2.4's keywords
        return native(model, args, f, input_names=input_names, output_names=output_names,
                      opset_version=opset_version, dynamic_axes=dynamic_axes, dynamo=False)

    monkeypatch.setattr(torch.onnx, "export", export_2_4)
    path = tmp_path / "old.onnx"
    T.export_onnx(clf, path)
    x = np.ascontiguousarray(X[:5], dtype=np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.no_grad():
        want = clf(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _fo_grad(den, clf, noisy, t):
    den.zero_grad()
    torch.nn.functional.cross_entropy(clf(den(torch.from_numpy(noisy))), torch.from_numpy(t)).backward()
    return torch.cat([p.grad.reshape(-1) for p in den.parameters()]).numpy().astype(np.float64)


def test_deepzero_estimate_matches_white_box_gradient(tiny):
    clf, path, den, X, y = tiny
    bb = OnnxClassifier(path)
    noisy, t = T.NoisyBatches(X, y, sigma=0.25, batch=32, steps_per_epoch=1, seed=0)(0)[0]
    oracle = TorchOracle(den, T.BlackBoxLoss(bb)).bind((noisy, t))
    theta = oracle.initial_params()
    coords = np.sort(np.random.default_rng(0).choice(theta.size, 60, replace=False))
    est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-2, scheme="central"), coordinates=coords)
    want = _fo_grad(den, clf, noisy, t)[coords]
    got = est.grad[coords]
    assert np.dot(got, want) / np.linalg.norm(got) / np.linalg.norm(want) > 0.98
    assert est.nfev == 2 * 60 + 1
    # every loss value came from the ONNX file: B samples per loss value at most (the adapter
    # may skip samples a perturbation provably leaves unchanged), plus the base losses per
    # sample that TorchOracle's prefix computes once per block, plus the first bind's check that
    # the loss treats samples independently (each half of the batch once: B samples)
    assert len(oracle.blocks) == 3
    assert 0 < bb.queries <= 32 * (2 * 60 + 1 + 3) + 32


def test_hybrid_chain_matches_white_box_gradient(tiny):
    from zoracle.adapters.torch import blackbox

    clf, path, den, X, y = tiny
    bb = OnnxClassifier(path)
    noisy, t = T.NoisyBatches(X, y, sigma=0.25, batch=32, steps_per_epoch=1, seed=3)(0)[0]
    op = blackbox(T.BlackBoxLoss(bb), zo.CGE(mu=1e-2, scheme="central"))
    den.zero_grad()
    op(den(torch.from_numpy(noisy)), torch.from_numpy(t)).mean().backward()
    got = torch.cat([p.grad.reshape(-1) for p in den.parameters()]).numpy().astype(np.float64)
    want = _fo_grad(den, clf, noisy, t)
    assert np.dot(got, want) / np.linalg.norm(got) / np.linalg.norm(want) > 0.98


def test_deepzero_training_only_queries_the_black_box(tiny):
    _, path, den, X, y = tiny
    targets = OnnxClassifier(path).predict(X)
    d = T.Denoiser()
    d.load_state_dict(den.state_dict())
    before = [p.detach().clone() for p in d.parameters()]
    bb = OnnxClassifier(path)
    log = T.train_deepzero(d, bb, X, targets, sigma=0.25, steps=4, batch=16, queries=40, lr=1e-3, seed=0,
                           ratios="uniform", steps_per_mask=2)
    assert log.steps == 4 and log.queries_per_estimate == 40
    # the other rows' number of steps when it is not a whole number of masks (it trained 6: 3 masks of 2)
    assert T.train_deepzero(d, OnnxClassifier(path), X, targets, sigma=0.25, steps=5, batch=16, queries=40,
                            lr=1e-3, seed=0, ratios="uniform", steps_per_mask=2).steps == 5
    assert log.queries == bb.queries and 0 < bb.queries <= 4 * 16 * (40 + 3)  # + per-block base rows
    assert any(not torch.equal(a, b) for a, b in zip(before, d.parameters()))
    # a black box with a small budget stops the training: the loss is only reachable by queries
    with pytest.raises(zo.OracleError, match="query budget exceeded") as exc:
        T.train_deepzero(d, OnnxClassifier(path, budget=1000), X, targets, sigma=0.25, steps=4, batch=16,
                         queries=40, lr=1e-3, seed=0, ratios="uniform")
    assert isinstance(exc.value.cause, QueryBudgetExceeded)


def test_sparsity_for_query_budget(tiny):
    den = tiny[2]
    oracle = TorchOracle(den, T.BlackBoxLoss(None))
    n_bias = sum(p.numel() for n, p in den.named_parameters() if n.endswith("bias"))
    s = T.deepzero_sparsity(oracle, 65)
    assert round((1 - s) * (oracle.size - n_bias)) + n_bias + 1 == 65
    with pytest.raises(zo.ArgumentError, match="queries"):
        T.deepzero_sparsity(oracle, n_bias + 1)
    with pytest.raises(zo.ArgumentError, match="at most"):  # it returned sparsity 0: fewer than asked
        T.deepzero_sparsity(oracle, oracle.size + 2)


def test_noisy_batches_replay():
    X = np.random.default_rng(0).random((50, 1, 8, 8), dtype=np.float32)
    b = T.NoisyBatches(X, np.arange(50), sigma=0.5, batch=8, steps_per_epoch=3, seed=4)
    a1, a2 = b(2), b(2)
    assert len(a1) == 3 and all(np.array_equal(u[0], v[0]) for u, v in zip(a1, a2))
    assert not np.array_equal(b(1)[0][0], a1[0][0])
    assert len(list(b.steps(7))) == 7
    noisy, t = a1[0]
    assert (noisy - X[t]).std() == pytest.approx(0.5, rel=0.2)


def test_denoiser_split_matches_forward():
    torch.manual_seed(0)
    den = T.Denoiser()
    torch.nn.init.normal_(den.conv3.weight)
    x = torch.rand(4, 1, 8, 8)
    state = (x,)
    for st in den.zoracle_steps():
        state = st(state) if isinstance(st, T.Step) else (st(state[0]),) + tuple(state[1:])
    torch.testing.assert_close(state[0], den(x))


@pytest.mark.parametrize("queries", [65, 21])
def test_hybrid_spends_the_same_budget(tiny, queries):
    _, path, den, X, y = tiny
    bb = OnnxClassifier(path)
    d = T.Denoiser()
    d.load_state_dict(den.state_dict())
    log = T.train_hybrid(d, bb, X, OnnxClassifier(path).predict(X), sigma=0.25, steps=3, batch=16, lr=1e-3, seed=0,
                         queries=queries)
    # CGE over the 64 pixels (65) or RGE with queries - 1 directions: `queries` loss evaluations per estimate
    assert log.queries_per_estimate == queries and log.queries == bb.queries == 3 * 16 * queries
    # a batch larger than the data is the data: per estimate, still `queries` (it divided by 5000)
    big = T.train_hybrid(d, OnnxClassifier(path), X[:40], OnnxClassifier(path).predict(X[:40]), sigma=0.25, steps=1,
                         batch=5000, lr=1e-3, seed=0, queries=queries)
    assert big.queries_per_estimate == queries


def test_the_regenerate_line_names_the_output_folder_given():
    """It said ``--out results/defense`` whatever ``--out`` was (and for none)."""
    from zoracle.apps.defense import FULL, QUICK, command_line

    assert command_line(QUICK, "my runs/d") == "zoracle defense --quick --out 'my runs/d'"
    assert command_line(QUICK, None) == "zoracle defense --quick"
    assert command_line(FULL) == "zoracle defense --out results/defense"


def test_the_report_names_what_ran_and_a_sigma_that_overflows_is_refused_first():
    """With --queries other than 65 the hybrid runs RGE, but its row said "CGE on the black-box
    input"; a config with mu or cert_batch changed gave a command with flags that do not exist;
    --sigma 1e39 trained the classifier, then failed on NaN noise naming `x`."""
    from dataclasses import replace

    from zoracle.apps.defense import FULL, QUICK, _label, command_line, config_from_args

    assert "CGE on the black-box input" in _label("hybrid", FULL)
    assert _label("hybrid", replace(FULL, queries=30)) == \
        "ZO-AE-DS-style hybrid (RGE on the black-box input, 29 directions)"
    line = command_line(replace(FULL, mu=1e-2, cert_batch=5000, steps=7))
    assert line.startswith("zoracle defense --steps 7 --out results/defense") and "--mu" not in line
    assert "DefenseConfig(mu=0.01, cert_batch=5000)" in line
    parser = argparse.ArgumentParser()
    defense.add_arguments(parser)
    with pytest.raises(zo.ArgumentError, match=r"`--sigma` 1e\+39 makes float32 noise overflow"):
        config_from_args(parser.parse_args(["--quick", "--sigma", "1e39"]))


def test_the_numbers_are_written_before_the_figure(tmp_path, monkeypatch):
    """defense.json came after the figure: a plot that failed (matplotlib missing, a backend
    error) lost the run's numbers after all its work."""
    row = defense.RowResult("none", {"0": 0.9}, 0.0, 0, 0.0, 0.0, 10, 0.1)
    report = defense.DefenseReport(defense.QUICK, {"none": row}, 0.9, 0.8, 1.0)

    def broken(report, path):
        raise RuntimeError("figure backend failed")

    monkeypatch.setattr(defense, "plot", broken)
    monkeypatch.setattr(defense, "markdown", lambda report, out: "")
    with pytest.raises(RuntimeError, match="figure backend failed"):
        defense.write(report, str(tmp_path))
    assert json.loads((tmp_path / "defense.json").read_text())["clean_accuracy"] == 0.9


def test_an_integer_flag_says_integer(capsys):
    with pytest.raises(SystemExit):
        cli(["defense", "--n", "1.5"])
    assert "--n: expected an integer, got '1.5'" in capsys.readouterr().err
