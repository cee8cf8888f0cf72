"""Values as config files and command lines give them (JSON, YAML, argparse): strings for
numbers and booleans, floats for counts, NumPy scalars, None for a default. ``zo.train`` and
the recipes take each with its meaning or refuse it before the first query, naming the
argument and the fix: nothing is read silently as something else (a string iterated, a float
truncated)."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo


class Counting:
    def __init__(self):
        self.n = 0

    def __call__(self, x):
        self.n += 1
        return float(((np.asarray(x) - 1.0) ** 2).sum())


X0 = np.full(6, 0.3)


def _refused(match, **kw):
    oracle = Counting()
    with pytest.raises(zo.ArgumentError, match=match):
        zo.train(oracle, X0, **{"progress": False, "rng": 0, **kw})
    assert oracle.n == 0


@pytest.mark.parametrize("blocks", ["true", "0:3", b"ab", 3.0, 3, np.int64(2), np.float32(1.0),
                                    {"w": slice(0, 3), "b": slice(3, 6)}])
def test_blocks_that_are_no_sequence_of_blocks_are_refused_by_name(blocks):
    # a string was iterated into characters ("`blocks[0]` ... got 't'"), a dict into its keys,
    # and a number raised a bare TypeError ('float' object is not iterable)
    _refused(r"`blocks` must be a sequence of parameter blocks .*got " + type(blocks).__name__,
             sparsity=0.5, blocks=blocks)
    with pytest.raises(zo.ArgumentError, match=r"`blocks` must be a sequence of parameter blocks"):
        zo.recipes.short_budget(None, np.zeros(1000), budget=5_000, steps_per_epoch=10, blocks=blocks)


def test_a_dict_of_blocks_is_told_to_pass_its_values():
    _refused(r"list\(d.values\(\)\)", sparsity=0.5, blocks={"w": slice(0, 3), "b": slice(3, 6)})


def test_blocks_as_a_list_or_tuple_or_generator_still_train():
    for blocks in ([slice(0, 3), slice(3, 6)], (slice(0, 3), slice(3, 6)), (s for s in [slice(0, 3), slice(3, 6)])):
        r = zo.train(Counting(), X0, progress=False, rng=0, sparsity=0.5, ratios="uniform", blocks=blocks)
        assert r.nfev == 4  # 3 of the 6 weights and the base point


def test_ratios_none_with_sparsity_is_refused_as_none():
    # was "must lie in [0, 1], got [nan]" (one block) or "got shape (1,)" (two): None read as an array
    _refused(r"`ratios` is None; pass one of 'zo_grasp'.*leave it out", sparsity=0.5, ratios=None)
    _refused(r"`ratios` is None", sparsity=0.5, ratios=None, blocks=[slice(0, 3), slice(3, 6)])


def _sb(**kw):
    return zo.recipes.short_budget(None, np.zeros(1000), **{"budget": 5_000, "steps_per_epoch": 10, **kw})


# (what is called, the value a config gives, the fix the refusal must say); each was refused
# before with no fix ("`epochs` must be an integer >= 0 ..., got 3.0")
HINTS = [
    (lambda v: _refused(r"got 3\.0; a float is not taken as a count: pass epochs=3", epochs=v), 3.0, None),
    (lambda v: _refused(r"got '3'; that is text .*: pass epochs=3$", epochs=v), "3", None),
    (lambda v: _refused(r"pass steps_per_epoch=2$", steps_per_epoch=v), np.float32(2.0), None),
    (lambda v: _refused(r"pass max_queries=100$", max_queries=v), "1e2", None),
    (lambda v: _refused(r"pass eval_every=2$", eval_every=v, eval_fn=lambda p: 0.0), 2.0, None),
    (lambda v: _refused(r"pass checkpoint_every=5$", checkpoint_every=v), "5", None),
    (lambda v: _refused(r"pass schedule=0\.001$", schedule=v), "1e-3", None),
    (lambda v: _refused(r"pass mu=0\.001$", mu=v), " 1e-3 ", None),
    (lambda v: _refused(r"pass sparsity=0\.9$", sparsity=v), "0.9", None),
    (lambda v: _refused(r"that is text, not a bool: pass progress=True$", progress=v), "true", None),
    (lambda v: _refused(r"pass progress=False$", progress=v), "False", None),
    (lambda v: _refused(r"pass fill_small_blocks=True$", fill_small_blocks=v, sparsity=0.5), "yes", None),
    (lambda v: zo.sgd(v), "1e-3", r"`lr` .*pass lr=0\.001$"),
    (lambda v: zo.adam(1e-3, b2=v), "0.999", r"pass b2=0\.999$"),
    (lambda v: zo.sgd(0.1, nesterov=v), "false", r"pass nesterov=False$"),
    (lambda v: zo.CGE(mu=v), "5e-3", r"pass mu=0\.005$"),
    (lambda v: zo.cosine_schedule(0.1, total_steps=v), 100.0, r"pass total_steps=100$"),
    (lambda v: zo.Minibatches((np.arange(8),), batch_size=v), 4.0, r"pass batch_size=4$"),
    (lambda v: zo.Minibatches((np.arange(8),), batch_size=2, shuffle=v), "true", r"pass shuffle=True$"),
    (lambda v: _sb(budget=v), 5000.0, r"pass budget=5000$"),
    (lambda v: _sb(lr=v), "0.05", r"pass lr=0\.05$"),
    (lambda v: _sb(coordinates=v), "50", r"pass coordinates=50$"),
    (lambda v: _sb(b1=v), "0.9", r"pass b1=0\.9$"),
    (lambda v: _sb(fill_small_blocks=v), "false", r"pass fill_small_blocks=False$"),
    (lambda v: zo.recipes.default_lr(v, 1000), "5000", r"pass budget=5000$"),
]


@pytest.mark.parametrize("call, value, match", HINTS)
def test_a_config_files_text_or_float_is_refused_with_the_value_to_pass(tmp_path, monkeypatch, call, value, match):
    monkeypatch.chdir(tmp_path)
    if match is None:
        call(value)
    else:
        with pytest.raises(zo.ArgumentError, match=match):
            call(value)


@pytest.mark.parametrize("kw", [dict(epochs=2.5), dict(epochs="2.5"), dict(epochs="three"), dict(mu="nan"),
                                dict(progress="maybe"), dict(epochs=float("inf")), dict(epochs=-1.0),
                                dict(epochs=1e300), dict(max_queries="1e30")])
def test_a_value_with_no_exact_meaning_gets_no_suggestion(kw):
    # 2.5 epochs is no count: nothing is suggested (a truncated 2 would be a silent misreading)
    oracle = Counting()
    with pytest.raises(zo.ArgumentError) as info:
        zo.train(oracle, X0, progress=kw.pop("progress", False), **kw)
    assert "pass " not in str(info.value).split("got ")[-1] and oracle.n == 0


def test_numpy_scalars_and_whole_numbers_from_a_config_keep_their_meaning():
    # what a config's numbers become (NumPy scalars, ints for floats): taken as given
    base = dict(progress=False, estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.05))
    a = zo.train(Counting(), X0, epochs=3, steps_per_epoch=2, rng=7, mu=float(np.float32(1e-3)), schedule=0.05, **base)
    b = zo.train(Counting(), X0, epochs=np.int64(3), steps_per_epoch=np.int32(2), rng=np.int64(7),
                 mu=np.float32(1e-3), schedule=np.float64(0.05), **base)
    assert np.array_equal(a.params, b.params) and a.nfev == b.nfev
    assert [r["mu"] for r in b.history.steps] == [float(np.float32(1e-3))] * 6
    sparse = zo.train(Counting(), X0, sparsity=0, ratios="uniform", blocks=[slice(0, 6)], progress=False)
    assert sparse.nfev == 7  # int 0: nothing left out, every weight estimated


@pytest.mark.parametrize("name", ["checkpoint", "plot", "resume"])
@pytest.mark.parametrize("text", ["None", "null", "true", "False", " none "])
def test_a_null_or_boolean_written_as_text_is_no_file_name(tmp_path, monkeypatch, name, text):
    # checkpoint="None" wrote a checkpoint file named None, plot="false" a PNG named false, and
    # resume="false" looked for a checkpoint file named false
    monkeypatch.chdir(tmp_path)
    word = text.strip().lower()
    fix = {"resume": f"pass resume={ {'none': None, 'null': None, 'true': True, 'false': False}[word]}",
           "checkpoint": "pass a file path such as 'run.npz'" if word == "true" else "leave `checkpoint` out",
           "plot": "pass a file path such as 'run.png'" if word == "true" else "leave `plot` out"}[name]
    _refused(rf"`{name}` is the text '{text}', a null or a boolean written out .*not a file name: {fix}",
             **{name: text})
    assert list(tmp_path.iterdir()) == []


def test_a_file_named_like_a_null_is_still_reached_through_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = zo.train(Counting(), X0, epochs=1, progress=False, rng=0, checkpoint="./None")
    again = zo.train(Counting(), X0, epochs=2, progress=False, rng=0, checkpoint="./None", resume="./None")
    assert (tmp_path / "None").is_file() and again.steps == first.steps + 1
    with pytest.raises(zo.ArgumentError, match=r"`path` is the text 'None'.*pass a file path"):
        zo.load_checkpoint("None")
