"""Fuzzing the public API with odd and invalid arguments (hypothesis, the suite's deterministic profile).

Every call either returns the documented type, or refuses with one of zoracle's errors (or a
TypeError / ValueError) whose message names the argument; a refusal of what the arguments alone
show comes before any oracle query (a counting oracle checks). Never an internal error
(AttributeError, IndexError, KeyError, ZeroDivisionError), nor NumPy's own message without the
argument's name. Each oracle is tiny (d <= 5) and each run a few steps.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import warnings
from collections import namedtuple

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import zoracle as zo
from zoracle import recipes

pytestmark = pytest.mark.timeout(300)  # a hang fails (the whole file runs in well under a minute)

# valid-but-odd and invalid values, tried for every argument
ODD = {
    "None": None, "True": True, "False": False, "np.True_": np.bool_(True),
    "0": 0, "1": 1, "2": 2, "-1": -1, "0.0": 0.0, "-0.0": -0.0, "0.5": 0.5, "1.5": 1.5, "2.0": 2.0,
    "1e-300": 1e-300, "1e300": 1e300, "nan": math.nan, "inf": math.inf, "-inf": -math.inf, "10**30": 10**30,
    "0-d 0.1": np.array(0.1), "0-d 2": np.array(2), "float32 0.1": np.float32(0.1), "int64 2": np.int64(2),
    "float64 2.0": np.float64(2.0), "complex": 1j, "'abc'": "abc", "'2'": "2", "''": "",
    "[2]": [2], "()": (), "[0.1, 'a', 0.1]": [0.1, "a", 0.1], "empty": np.array([]), "[1., 2.]": np.array([1.0, 2.0]),
    "bool array": np.array([True, True, True]), "text array": np.array(["0.1", "0.1", "0.1"]),
    "{}": {}, "object()": object(),
}
odd = st.sampled_from(sorted(ODD))
# values no numeric argument takes: refused from the arguments alone, so before any query
VISIBLE = {"nan", "inf", "-inf", "complex", "'abc'", "''", "object()", "{}", "[0.1, 'a', 0.1]", "text array"}
ALLOWED = (zo.ZoracleError, TypeError, ValueError)
# the profile's other settings kept (derandomized, no deadline); more examples than its 50, as each
# call takes milliseconds and the argument-value pairs number in the hundreds to thousands
wide = settings(max_examples=300)


@contextlib.contextmanager
def _inside(folder):
    """``contextlib.chdir`` (Python 3.11) for Python 3.10."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


class Counting:
    """A tiny sum-of-squares oracle that counts its queries."""

    def __init__(self):
        self.n = 0

    def __call__(self, params):
        self.n += 1
        return float(np.sum(np.asarray(params, dtype=np.float64) ** 2))


def _outcome(call, name: str, label: str, kind, oracle: Counting | None = None):
    """Run ``call``: its result must be a ``kind``; a refusal must be one of zoracle's errors or a
    TypeError / ValueError, naming ``name`` where it comes before any query of ``oracle``. What
    is raised after queries (an OracleError, a run that diverged) is the run's outcome; the tests
    check that refusals of values no argument takes (VISIBLE) never come that late."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a warning is an answer too; the property is about what is raised
        try:
            result = call()
        except zo.OracleError:
            return None
        except ALLOWED as exc:
            text = str(exc)
            if oracle is not None and oracle.n:  # refused after querying: a run's outcome (e.g. divergence)
                return exc
            assert name in text, f"{name}={label}: {type(exc).__name__} without the argument's name: {text}"
            return exc
        except Exception as exc:  # noqa: BLE001  (what the property forbids)
            pytest.fail(f"{name}={label}: bare {type(exc).__name__}: {exc}")
    assert isinstance(result, kind), f"{name}={label}: returned {type(result).__name__}, not {kind}"
    return result


# --- constructors of estimators, optimizers, schedules, retrying, Minibatches --------------------

CONSTRUCTORS = {
    "CGE": (zo.CGE, {}, ["mu", "scheme"], zo.CGE),
    "RGE": (zo.RGE, {}, ["mu", "directions", "distribution", "scheme", "shaping"], zo.RGE),
    "SNES": (zo.SNES, {}, ["mu", "population", "sigma_lr"], zo.SNES),
    "sgd": (zo.sgd, {}, ["lr", "momentum", "nesterov", "weight_decay"], zo.Optimizer),
    "adam": (zo.adam, {}, ["lr", "b1", "b2", "eps", "weight_decay"], zo.Optimizer),
    "sign_sgd": (zo.sign_sgd, {}, ["lr", "weight_decay"], zo.Optimizer),
    "constant_schedule": (zo.constant_schedule, {"value": 0.1}, ["value"], object),
    "cosine_schedule": (zo.cosine_schedule, {"init": 0.1, "total_steps": 10},
                        ["init", "total_steps", "warmup_steps", "final"], object),
    "step_schedule": (zo.step_schedule, {"init": 0.1, "step_size": 10}, ["init", "step_size", "gamma", "warmup_steps"],
                      object),
    "linear_warmup": (zo.linear_warmup, {"schedule": 0.1, "warmup_steps": 3}, ["schedule", "warmup_steps"], object),
    "retrying": (lambda **k: zo.retrying(Counting(), **k), {}, ["tries", "on", "backoff", "max_delay", "jitter"], object),
    "Minibatches": (zo.Minibatches, {"arrays": np.zeros((4, 2)), "batch_size": 2},
                    ["arrays", "batch_size", "shuffle", "drop_last", "seed"], zo.Minibatches),
}
COUNTS = {"directions", "population", "total_steps", "warmup_steps", "step_size", "tries", "batch_size"}
FLAGS = {"nesterov", "shuffle", "drop_last"}


@wide
@given(st.sampled_from(sorted((c, a) for c, spec in CONSTRUCTORS.items() for a in spec[2])), odd)
def test_constructors_take_odd_values_or_name_them(which, label):
    ctor_name, arg = which
    ctor, base, _, kind = CONSTRUCTORS[ctor_name]
    value = ODD[label]
    got = _outcome(lambda: ctor(**(base | {arg: value})), arg, label, kind)
    if arg in COUNTS and isinstance(value, (bool, np.bool_)):
        assert isinstance(got, Exception), f"{ctor_name}({arg}={label}) took a bool as a count"
    if arg in FLAGS and not isinstance(value, (bool, np.bool_)):  # (a number or text read as its truth value)
        assert isinstance(got, Exception), f"{ctor_name}({arg}={label}) took a non-bool as a flag"
    if isinstance(value, float) and not math.isfinite(value) and arg not in ("max_delay",):
        assert isinstance(got, Exception), f"{ctor_name}({arg}={label}) took a non-finite number"


EXECUTORS = {"SerialExecutor": (lambda **k: zo.executors.SerialExecutor(**k), ["timeout"]),
             "JoblibExecutor": (lambda **k: zo.executors.JoblibExecutor(**k), ["n_jobs", "backend", "timeout"]),
             "DeviceExecutor": (lambda **k: zo.executors.DeviceExecutor(**({"devices": ["cpu"]} | k)), ["devices", "timeout"])}


@wide
@given(st.sampled_from(sorted((e, a) for e, spec in EXECUTORS.items() for a in spec[1])), odd)
@example(("JoblibExecutor", "backend"), "[1., 2.]")
@example(("JoblibExecutor", "backend"), "empty")
def test_executor_constructors_take_odd_values_or_name_them(which, label):
    name, arg = which
    got = _outcome(lambda: EXECUTORS[name][0](**{arg: ODD[label]}), arg, label, zo.executors.Executor)
    if not isinstance(got, Exception):
        got.close()  # (no worker starts before the first run)
        if arg == "n_jobs":
            assert not isinstance(ODD[label], (bool, np.bool_)), f"{name}(n_jobs={label}) took a bool as a count"


@pytest.mark.parametrize("backend", [np.array(["loky"]), np.array([])], ids=["array", "empty"])
def test_joblib_backend_that_is_no_name_is_refused_by_name(backend):
    """Found by the fuzz above: ``JoblibExecutor(backend=np.array([]))`` raised NumPy's "The truth
    value of an empty array is ambiguous"."""
    with pytest.raises(zo.ArgumentError, match="`backend` must be one of 'loky', 'threading'"):
        zo.executors.JoblibExecutor(2, backend)


# --- estimate_gradient -----------------------------------------------------------------------------

ESTIMATORS = {"default": None, "CGE central": zo.CGE(scheme="central"), "RGE": zo.RGE(directions=2),
              "RGE sphere ranks": zo.RGE(directions=3, distribution="sphere", shaping="ranks"),
              "SNES": zo.SNES(population=4)}
P3 = np.array([0.5, -1.0, 2.0])


@wide
@given(st.sampled_from(["params", "estimator", "coordinates", "rng", "budget_bytes", "state"]), odd,
       st.sampled_from(sorted(ESTIMATORS)))
@example("state", "text array", "SNES")
@example("state", "bool array", "SNES")
@example("state", "[0.1, 'a', 0.1]", "SNES")
@example("state", "'abc'", "SNES")
@example("state", "object()", "SNES")
def test_estimate_gradient_odd_arguments(arg, label, est_name):
    oracle = Counting()
    kw = {"params": P3, "estimator": ESTIMATORS[est_name], "rng": 0} | {arg: ODD[label]}
    got = _outcome(lambda: zo.estimate_gradient(oracle, **kw), arg, label, zo.GradientEstimate, oracle)
    if isinstance(got, zo.GradientEstimate):
        assert got.grad.shape == np.shape(kw["params"]) and got.nfev == oracle.n
        if arg == "state" and ODD[label] is not None:  # SNES's widths: real numbers > 0, never text or truth values read as 1.0
            assert np.asarray(ODD[label]).dtype.kind in "fiu", f"state={label} accepted as SNES's sigma"
    elif not isinstance(got, zo.OracleError) and got is not None:
        assert oracle.n == 0, f"{arg}={label}: refused after {oracle.n} queries: {got}"


@pytest.mark.parametrize("state", [np.array([True, True, True]), np.array(["0.1", "0.1", "0.1"]), [0.1, "a", 0.1],
                                   np.array(["a", "b", "c"]), [{}, {}, {}]], ids=["bools", "texts", "mixed", "letters",
                                                                                  "dicts"])
def test_snes_state_that_is_no_widths_is_refused_by_name(state):
    """Found by the fuzz above: ``state=np.array([True] * 3)`` ran with widths 1.0 and text of
    numbers was parsed; ``[0.1, "a", 0.1]`` raised NumPy's "could not convert string to float"."""
    oracle = Counting()
    with pytest.raises(zo.ArgumentError, match="`state`") as info:
        zo.estimate_gradient(oracle, P3, zo.SNES(population=4), state=state, rng=0)
    assert oracle.n == 0
    assert "SNES(...).init(params)" in str(info.value)


# --- train -----------------------------------------------------------------------------------------

TRAIN_ARGS = ["params", "epochs", "steps_per_epoch", "estimator", "optimizer", "schedule", "mu", "sparsity", "ratios",
              "blocks", "score_kinds", "ranking", "fill_small_blocks", "grasp_directions", "grasp_batch",
              "mask_shuffle_interval", "eval_fn", "eval_every", "callbacks", "checkpoint_every", "rng", "progress",
              "max_queries", "batches", "executor", "resume"]
P4 = np.array([0.5, -1.0, 2.0, 1.0])


@wide
@given(st.sampled_from(TRAIN_ARGS), odd, st.booleans())
@example("ranking", "[1., 2.]", False)
@example("ranking", "empty", True)
@example("blocks", "0-d 2", True)
@example("blocks", "()", True)
def test_train_odd_arguments(arg, label, sparse):
    oracle = Counting()
    kw = {"params": P4, "epochs": 1, "steps_per_epoch": 2, "progress": False, "rng": 0}
    if sparse:
        kw |= {"sparsity": 0.5, "grasp_directions": 2}
    kw[arg] = ODD[label]
    with tempfile.TemporaryDirectory() as folder, _inside(folder):  # a text value may name a file
        got = _outcome(lambda: zo.train(oracle, **kw), arg, label, zo.TrainResult, oracle)
    if isinstance(got, zo.TrainResult):
        assert got.params.shape == np.shape(kw["params"]) and got.nfev == oracle.n
        if arg in ("epochs", "steps_per_epoch", "eval_every", "grasp_directions", "max_queries"):
            assert not isinstance(ODD[label], (bool, np.bool_)), f"train({arg}={label}) took a bool as a count"
    elif isinstance(got, Exception) and not isinstance(got, zo.OracleError) and label in VISIBLE:
        assert oracle.n == 0, f"train({arg}={label}): refused after {oracle.n} queries: {got}"


@pytest.mark.parametrize("ranking", [np.array([1.0, 2.0]), np.array([]), ["magnitude"]], ids=["array", "empty", "list"])
@pytest.mark.parametrize("sparse", [False, True])
def test_train_ranking_that_is_no_name_is_refused_by_name(ranking, sparse):
    """Found by the fuzz above: ``train(..., ranking=np.array([1.0, 2.0]))`` raised NumPy's "The
    truth value of an array with more than one element is ambiguous"."""
    oracle = Counting()
    kw = {"sparsity": 0.5, "grasp_directions": 2} if sparse else {}
    with pytest.raises(zo.ArgumentError, match="`ranking` must be one of 'magnitude', 'grasp'"):
        zo.train(oracle, P4, steps_per_epoch=2, progress=False, ranking=ranking, **kw)
    assert oracle.n == 0


@pytest.mark.parametrize("blocks", [np.array(2), np.array(0.1)], ids=["int", "float"])
def test_train_zero_d_blocks_are_refused_by_name(blocks):
    """Found by the fuzz above: ``train(..., sparsity=0.5, blocks=np.array(2))`` raised "iteration
    over a 0-d array" (a 0-d array has ``__iter__``)."""
    oracle = Counting()
    with pytest.raises(zo.ArgumentError, match="`blocks` must be a sequence"):
        zo.train(oracle, P4, steps_per_epoch=2, progress=False, sparsity=0.5, blocks=blocks)
    with pytest.raises(zo.ArgumentError, match="`blocks` must be a sequence"):
        recipes.short_budget(oracle, P4, 50, blocks=blocks)
    assert oracle.n == 0


@pytest.mark.parametrize("blocks", [(), [], np.array([])], ids=["tuple", "list", "array"])
def test_empty_blocks_are_named(blocks):
    """Found by the fuzz above: ``train(..., sparsity=0.5, blocks=())`` said "`sparsity` is set but
    no block has a kind in `score_kinds`", naming two arguments but not the empty one."""
    oracle = Counting()
    with pytest.raises(zo.ArgumentError, match="`blocks` is empty"):
        zo.train(oracle, P4, steps_per_epoch=2, progress=False, sparsity=0.5, blocks=blocks)
    with pytest.raises(zo.ArgumentError, match="`blocks` is empty"):
        recipes.short_budget(oracle, P4, 50, blocks=blocks)
    with pytest.raises(zo.ArgumentError, match="conv or linear block in `blocks`"):
        recipes.layer_scales(blocks, P4)
    assert oracle.n == 0


# --- pruning helpers, masks, ZO-GraSP ----------------------------------------------------------------

B2 = [slice(0, 2), slice(2, 4)]
HALF = np.array([0.5, 0.5])
PRUNING = {
    "uniform_ratios": (lambda o, **k: zo.uniform_ratios(**k), {"blocks": B2}, ["blocks", "sparsity"], np.ndarray),
    "random_ratios": (lambda o, **k: zo.random_ratios(**k), {"blocks": B2, "rng": 0}, ["blocks", "sparsity", "rng"],
                      np.ndarray),
    "smart_ratio": (lambda o, **k: zo.smart_ratio(**k), {"blocks": B2}, ["blocks", "sparsity", "kinds", "linear_keep"],
                    np.ndarray),
    "keep_counts": (lambda o, **k: zo.keep_counts(**k), {"blocks": B2, "ratios": HALF}, ["ratios"], np.ndarray),
    "random_masks": (lambda o, **k: zo.random_masks(**k), {"blocks": B2, "ratios": HALF, "rng": 0},
                     ["ratios", "rng", "dense"], np.ndarray),
    "layer_ratios": (lambda o, **k: zo.layer_ratios(**k), {"scores": P4, "blocks": B2},
                     ["scores", "blocks", "sparsity", "ranking", "fill_small"], np.ndarray),
    "split_blocks": (lambda o, **k: zo.split_blocks(**k), {"blocks": B2}, ["blocks", "score_kinds"], tuple),
    "DynamicMasks": (lambda o, **k: zo.DynamicMasks(**k), {"blocks": B2, "ratios": HALF, "seed": 0},
                     ["ratios", "seed", "interval", "dense"], zo.DynamicMasks),
    "zo_grasp": (lambda o, **k: zo.zo_grasp(o, **k), {"params": P4, "blocks": B2, "directions": 2, "rng": 0},
                 ["params", "blocks", "mu", "directions", "rng", "batch", "common_random_numbers", "executor"],
                 np.ndarray),
}


@wide
@given(st.sampled_from(sorted((f, a) for f, spec in PRUNING.items() for a in spec[2])), odd)
@example(("smart_ratio", "kinds"), "2")
@example(("smart_ratio", "kinds"), "0-d 0.1")
@example(("layer_ratios", "scores"), "'abc'")
@example(("layer_ratios", "scores"), "object()")
@example(("layer_ratios", "ranking"), "[1., 2.]")
def test_pruning_helpers_odd_arguments(which, label):
    fn_name, arg = which
    fn, base, _, kind = PRUNING[fn_name]
    oracle = Counting()
    got = _outcome(lambda: fn(oracle, **(base | {arg: ODD[label]})), arg, label, kind, oracle)
    if isinstance(got, Exception) and not isinstance(got, zo.OracleError) and label in VISIBLE:
        assert oracle.n == 0, f"{fn_name}({arg}={label}): refused after {oracle.n} queries: {got}"


@pytest.mark.parametrize("kinds", [2, 0.5, np.array(0.1), None.__class__, object()], ids=["int", "float", "0-d", "type",
                                                                                         "object"])
def test_smart_ratio_kinds_that_are_no_sequence_are_refused_by_name(kinds):
    """Found by the fuzz above: ``smart_ratio(blocks, kinds=2)`` raised "'int' object is not iterable"."""
    with pytest.raises(zo.ArgumentError, match="`kinds`"):
        zo.smart_ratio(B2, 0.5, kinds=kinds)


@pytest.mark.parametrize("scores", ["abc", [0.1, "a", 0.1, 0.2], {}, object(), np.array(["1", "2", "3", "4"])],
                         ids=["text", "mixed", "dict", "object", "text array"])
def test_layer_ratios_scores_that_are_no_numbers_are_refused_by_name(scores):
    """Found by the fuzz above: ``layer_ratios("abc", blocks)`` raised NumPy's "could not convert
    string to float", and text of numbers was parsed and ranked as numbers."""
    with pytest.raises(zo.ArgumentError, match="`scores`"):
        zo.layer_ratios(scores, B2, 0.5)


@pytest.mark.parametrize("ranking", [np.array([1.0, 2.0]), np.array([]), ["grasp"]], ids=["array", "empty", "list"])
def test_layer_ratios_ranking_that_is_no_name_is_refused_by_name(ranking):
    """Found by the fuzz above: ``layer_ratios(..., ranking=np.array([]))`` raised NumPy's "The
    truth value of an empty array is ambiguous"."""
    with pytest.raises(zo.ArgumentError, match="`ranking` must be one of"):
        zo.layer_ratios(P4, B2, 0.5, ranking=ranking)


# --- recipes ---------------------------------------------------------------------------------------

Info = namedtuple("Info", "name slice shape kind")
INFO = [Info("0.weight", slice(0, 2), (2,), "linear"), Info("1.weight", slice(2, 4), (2,), "linear")]
RECIPES = {
    "short_budget": (lambda o, **k: recipes.short_budget(o, **k), {"params": P4, "budget": 50, "grasp_directions": 2},
                     ["params", "budget", "batches", "steps_per_epoch", "lr", "coordinates", "b1", "mu",
                      "weight_decay", "grasp_directions", "blocks", "layer_steps", "fill_small_blocks"], dict),
    "layer_scales": (lambda o, **k: recipes.layer_scales(**k), {"blocks": INFO, "params": P4},
                     ["blocks", "params", "power", "ref", "layers"], np.ndarray),
    "default_lr": (lambda o, **k: recipes.default_lr(**k), {"budget": 100, "sampled": 5}, ["budget", "sampled"], float),
    "default_coordinates": (lambda o, **k: recipes.default_coordinates(**k), {"budget": 100, "sampled": 5},
                            ["budget", "sampled"], int),
}


@wide
@given(st.sampled_from(sorted((f, a) for f, spec in RECIPES.items() for a in spec[2])), odd)
@example(("layer_scales", "blocks"), "0-d 2")
@example(("layer_scales", "blocks"), "()")
@example(("short_budget", "blocks"), "empty")
@example(("layer_scales", "params"), "'abc'")
@example(("short_budget", "blocks"), "0-d 0.1")
@example(("layer_scales", "layers"), "[1., 2.]")
@example(("layer_scales", "ref"), "empty")
def test_recipes_odd_arguments(which, label):
    fn_name, arg = which
    fn, base, _, kind = RECIPES[fn_name]
    oracle = Counting()
    got = _outcome(lambda: fn(oracle, **(base | {arg: ODD[label]})), arg, label, kind, oracle)
    if isinstance(got, Exception) and not isinstance(got, zo.OracleError) and label in VISIBLE:
        assert oracle.n == 0, f"{fn_name}({arg}={label}): refused after {oracle.n} queries: {got}"


@pytest.mark.parametrize("params", ["abc", {}, object(), [0.1, "a", 0.1, 0.2]], ids=["text", "dict", "object", "mixed"])
def test_layer_scales_params_that_are_no_numbers_are_refused_by_name(params):
    """Found by the fuzz above: ``recipes.layer_scales(info, "abc")`` raised NumPy's "could not
    convert string to float"; ``layer_scales(np.array(2), params)``, "iteration over a 0-d array"."""
    with pytest.raises(zo.ArgumentError, match="`params`"):
        recipes.layer_scales(INFO, params)
    with pytest.raises(zo.ArgumentError, match="`blocks`"):
        recipes.layer_scales(np.array(2), P4)


@pytest.mark.parametrize("name", ["ref", "layers"])
@pytest.mark.parametrize("value", [np.array([1.0, 2.0]), np.array([])], ids=["array", "empty"])
def test_layer_scales_choices_that_are_no_names_are_refused_by_name(name, value):
    """Found by the fuzz above: ``recipes.layer_scales(info, params, layers=np.array([1.0, 2.0]))``
    raised NumPy's "The truth value of an array with more than one element is ambiguous"."""
    with pytest.raises(zo.ArgumentError, match=f"`{name}` must be"):
        recipes.layer_scales(INFO, P4, **{name: value})
