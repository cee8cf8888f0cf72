"""Hardening of the core (issue 11): one test per class of probe finding.

Silent wrong results become correct results or typed errors; no work is lost to a late
error; every error names its source. Each test failed on the code before the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import zoracle as zo
from zoracle import smoothing
from zoracle.testing import QuadraticOracle

D = 5


def _quad():
    r = np.random.default_rng(0)
    M = r.standard_normal((D, D))
    return QuadraticOracle(M @ M.T + np.eye(D), b=r.standard_normal(D), blocks=[slice(0, 2), slice(2, D)])


class _Mutating:
    """Exposes only the capabilities in ``caps``; every method corrupts the array it is given."""

    def __init__(self, caps, mutate=True):
        self.q = _quad()
        self.d = 1.0 if mutate else 0.0
        self.max_queries_per_call = 2  # several calls per estimate, so a corruption would carry over
        for name in caps:
            setattr(self, name, getattr(self, "_" + name))
        self.blocks = self.q.blocks if "suffix" in caps else []

    def __call__(self, x):
        v = self.q(x)
        x += self.d
        return v

    def _batch(self, X):
        v = self.q.batch(X)
        X += self.d
        return v

    def _coordinate_losses(self, x, coords, step):
        v = self.q.coordinate_losses(x, coords, step)
        x += self.d
        return v

    def _prefix(self, x, block):
        v = self.q.prefix(x, block)
        x += self.d
        return v

    def _suffix(self, feats, x, block, coords, step):
        v = self.q.suffix(feats, x, block, coords, step)
        x += self.d
        return v


# ---------------------------------------------------------------- silent wrong results
@pytest.mark.parametrize("caps,estimator", [
    ((), zo.CGE()),
    (("batch",), zo.CGE()),
    (("coordinate_losses",), zo.CGE(scheme="central")),
    (("prefix", "suffix"), zo.CGE()),
    ((), zo.RGE(directions=4)),
    (("batch",), zo.RGE(directions=4, scheme="central")),
])
def test_an_oracle_that_modifies_its_input_cannot_corrupt_other_queries(caps, estimator):
    x0 = np.linspace(-1, 1, D)
    clean = zo.estimate_gradient(_Mutating(caps, mutate=False), x0.copy(), estimator, rng=3) if caps else \
        zo.estimate_gradient(_quad(), x0, estimator, rng=3)
    try:
        got = zo.estimate_gradient(_Mutating(caps), x0, estimator, rng=3)
    except zo.OracleError as exc:  # a single query is a read-only view: the write itself fails, and says so
        assert "read-only" in str(exc) and "copy" in str(exc)
        assert caps == ()  # capability calls get private copies and give the clean result
        return
    np.testing.assert_array_equal(got.grad, clean.grad)
    assert got.loss == clean.loss


def test_certify_rejects_non_finite_scores_and_misshaped_labels():
    x = np.array([1.0])
    kw = dict(sigma=0.5, n0=10, n=50, num_classes=3, rng=0)
    with pytest.raises(zo.OracleError, match="noise sample 0 of point 0"):
        smoothing.certify(lambda z: np.full((len(z), 3), np.nan), x, **kw)

    def half_nan(z):
        s = np.zeros((len(z), 3))
        s[1::2] = np.nan
        return s

    with pytest.raises(zo.OracleError, match="noise sample 1 of point 0.*must not be NaN"):
        smoothing.certify(half_nan, x, **kw)
    argmax_axis0 = lambda z: np.ones((len(z), 3)).argmax(axis=0)[None]  # noqa: E731 (ONNX ArgMax(axis=0))
    with pytest.raises(zo.OracleError, match="wrong length"):
        smoothing.certify(argmax_axis0, x, **dict(kw, batch_size=1))
    with pytest.raises(zo.OracleError, match="one column per class"):
        smoothing.certify(lambda z: np.ones((len(z), 5)), x, **kw)


@pytest.mark.parametrize("estimator,params,scale", [
    (zo.CGE(mu=1e-20), np.ones(3), "= 1"),
    (zo.CGE(mu=1e39), np.ones(3, np.float32), "overflows float32"),
    (zo.RGE(mu=1e-20), np.full(3, 1e6), "= 1e\\+06"),
    (zo.CGE(mu=1e-9, scheme="central"), np.full(3, 1e8), "= 1e\\+08"),
])
def test_a_step_that_is_not_representable_is_rejected_before_any_query(estimator, params, scale):
    calls = []
    with pytest.raises(zo.ArgumentError, match=f"mu=.*scale max\\|params\\| {scale}|mu=.*{scale}"):
        zo.estimate_gradient(lambda x: calls.append(1) or float(x @ x), params, estimator)
    with pytest.raises(zo.ArgumentError, match=f"mu=.*{scale}"):  # also a mu schedule, at its later steps
        zo.train(lambda x: calls.append(1) or float(x @ x), params, estimator=estimator, epochs=3, progress=False,
                 mu=lambda t: 1e-3 if t < 2 else estimator.mu)
    assert calls == []


class _Float32Oracle:
    """Evaluates in float32 and says so (``compute_dtype``), as TorchOracle on a float32 model."""

    compute_dtype = np.float32

    def __init__(self, calls):
        self.calls = calls

    def __call__(self, x):
        self.calls.append(1)
        x = np.asarray(x, np.float32)
        return float(((x - 1) ** 2).sum())


@pytest.mark.parametrize("kw, named", [
    (dict(mu=lambda t: 1e-3 if t < 20 else 1.5e-8), "the `mu` schedule's value at step 20"),
    (dict(estimator=zo.CGE(mu=1.5e-8), mu=1e-3, sparsity=0.5, blocks=[slice(0, 25), slice(25, 50)]),
     "ZO-GraSP scores with the estimator.s mu"),
])
def test_a_step_below_the_oracles_float32_is_rejected_before_any_query(kw, named):
    # float64 params, a float32 oracle: 1.5e-8 is a step in float64 but none at |x| ~ 1 in float32 (the
    # oracle's steps). The checks before the first query ran in float64: the schedule failed at step 20,
    # after 1,020 queries, naming CGE(mu=1.5e-08) and not `mu`; ZO-GraSP's named an RGE the user never made
    calls = []
    p0 = np.random.default_rng(0).normal(size=50) + 1.0
    with pytest.raises(zo.ArgumentError, match=f"rounds to a zero step in float32.*{named}"):
        zo.train(_Float32Oracle(calls), p0, epochs=30, progress=False, rng=0, **kw)
    assert calls == []
    assert np.float32(1.0) + np.float32(1.5e-8) == np.float32(1.0) and 1.0 + 1.5e-8 != 1.0  # the premise


@pytest.mark.parametrize("schedule", [lambda t: -0.1, lambda t: float("nan"), lambda t: 0.1 if t < 2 else np.inf])
def test_a_schedule_with_a_negative_or_non_finite_value_fails_before_any_query(schedule):
    calls = []
    with pytest.raises(zo.ArgumentError, match="`schedule` schedule <lambda> at step"):
        zo.train(lambda x: calls.append(1) or float(x @ x), np.ones(3), epochs=4, schedule=schedule, progress=False)
    assert calls == []
    with pytest.raises(zo.ArgumentError, match="`mu` schedule"):
        zo.train(lambda x: float(x @ x), np.ones(3), epochs=4, mu=lambda t: 0.0, progress=False)


def _run(path, epochs=2, schedule=lambda t: 0.1 / (1 + t), resume=None, d=4, **kw):
    return zo.train(lambda x: float(((x - 1) ** 2).sum()), np.zeros(d), epochs=epochs, steps_per_epoch=3,
                    schedule=schedule, optimizer=zo.sgd(0.1, momentum=0.9), checkpoint=path, resume=resume,
                    rng=0, progress=False, **kw)


def _tamper(path, out, meta_edit=None, arrays_edit=None):
    arrays, meta = zo.load_checkpoint(path)
    if meta_edit:
        meta_edit(meta)
    if arrays_edit:
        arrays_edit(arrays)
    for k in ("format", "version"):
        meta.pop(k)
    zo.save_checkpoint(out, arrays, meta)
    return out


def test_resume_validates_the_schedule_every_header_field_and_every_array(tmp_path):
    ckpt = tmp_path / "c.npz"
    _run(ckpt)
    with pytest.raises(zo.CheckpointError, match="another `lr` schedule: at step 1"):
        _run(tmp_path / "d.npz", resume=ckpt, schedule=lambda t: 0.1 / (1 + 2 * t))
    assert _run(tmp_path / "e.npz", resume=ckpt, epochs=3).steps == 9  # same schedule, longer run: fine

    def setter(key, value):
        return lambda m: m.__setitem__(key, value)

    cases = [
        (setter("epoch", 10**30), "'epoch'"),
        (setter("pos", -1), "'pos'"),
        (setter("step", -5), "'step'"),
        (setter("nfev", 1e300), "'nfev'"),
        (setter("nfev", 3), "'nfev'"),
        (setter("opt_count", "7"), "'opt_count'"),
        (setter("root", None), "'root'"),
        (setter("history", []), "'history'"),
        (lambda m: m.pop("step"), "'step'"),
        (lambda m: m.pop("config"), "'config'"),
        (lambda m: m["history"]["steps"][2].__setitem__("nfev", "many"), "history.steps\\[2\\].nfev"),
        (lambda m: m["history"]["steps"][1].__setitem__("total_nfev", -3), "history.steps\\[1\\].total_nfev"),
        (lambda m: m["fingerprints"]["lr"]["values"].__setitem__(1, 9.0), "another `lr` schedule"),
        # counters that must agree with each other: one optimizer update a step, the header's
        # queries the last step's running total, each total the one before plus the step's, and the
        # root the one train derives from the run's seed (each changed the resumed run, silently)
        (setter("opt_count", 0), "'opt_count' is 0"),
        (lambda m: m.__setitem__("nfev", m["nfev"] + 1000), "'nfev'.*last step's total_nfev"),
        (lambda m: m["history"]["steps"][3].__setitem__("total_nfev", m["history"]["steps"][3]["total_nfev"] + 1),
         "history.steps\\[3\\].total_nfev"),
        (lambda m: m["history"]["steps"][0].__setitem__("total_nfev", 0), "history.steps\\[0\\].total_nfev"),
        (lambda m: m.__setitem__("root", str(int(m["root"]) + 1)), "'root'.*derives from the run's seed 0"),
    ]
    for i, (edit, field) in enumerate(cases):
        bad = _tamper(ckpt, tmp_path / f"bad{i}.npz", meta_edit=edit)
        with pytest.raises(zo.CheckpointError, match=field):
            _run(tmp_path / "out.npz", resume=bad)
    array_cases = [
        (lambda a: a.__setitem__("params", np.zeros(3)), "'params' has shape \\(3,\\)"),
        (lambda a: a.__setitem__("params", np.zeros(4, np.int64)), "'params' has shape \\(4,\\) dtype int64"),
        (lambda a: a.__setitem__("params", np.full(4, np.nan)), "'params' holds NaN"),
        (lambda a: a.__setitem__("opt/momentum", np.zeros(7)), "'opt/momentum'"),
        (lambda a: a.pop("opt/momentum"), "lacks the arrays \\['opt/momentum'\\]"),
    ]
    for i, (edit, field) in enumerate(array_cases):
        bad = _tamper(ckpt, tmp_path / f"arr{i}.npz", arrays_edit=edit)
        with pytest.raises(zo.CheckpointError, match=field):
            _run(tmp_path / "out.npz", resume=bad)


# ---------------------------------------------------------------- lost work and late errors
def test_no_work_is_lost_to_a_failing_eval_or_an_unwritable_checkpoint(tmp_path):
    ckpt = tmp_path / "c.npz"

    def bad_eval(params):
        raise RuntimeError("eval crashed")

    with pytest.raises(RuntimeError, match="eval crashed"):
        _run(ckpt, eval_fn=bad_eval)
    _, meta = zo.load_checkpoint(ckpt)
    assert meta["step"] == 3 and meta["pos"] == 3  # the epoch's steps were saved before eval_fn ran
    resumed = _run(ckpt, resume=ckpt)
    assert resumed.params.tobytes() == _run(tmp_path / "ref.npz").params.tobytes()

    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    calls = []
    for where in (blocker / "run.npz", tmp_path):
        with pytest.raises(zo.ArgumentError, match="`checkpoint`"):
            zo.train(lambda x: calls.append(1) or float(x @ x), np.ones(3), checkpoint=where, progress=False)
    assert calls == []


def test_concurrent_writers_do_not_collide_and_stale_temp_files_are_removed(tmp_path):
    path = tmp_path / "run.npz"
    errors = []

    def writer(k):
        try:
            for i in range(15):
                zo.save_checkpoint(path, {"a": np.full(20_000, float(k))}, {"i": i, "k": k})
        except Exception as exc:  # pragma: no cover - the failure being tested
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    arrays, meta = zo.load_checkpoint(path)
    assert (arrays["a"] == meta["k"]).all()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        from zoracle._checkpoint import _host_tag

        stale = [f".run.npz.tmp-{dead.pid}", f".run.npz.tmp-{_host_tag()}-{dead.pid}-0123456789ab"]
        kept = [f".run.npz.tmp-{_host_tag()}-{live.pid}-0123456789ab", ".other.npz.tmp-1"]
        for name in stale + kept:
            (tmp_path / name).write_bytes(b"partial")
        zo.save_checkpoint(path, {"a": np.zeros(2)}, {})
        assert sorted(os.listdir(tmp_path)) == sorted(kept + ["run.npz"])
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow
def test_a_huge_extra_member_is_never_read_and_declared_sizes_are_checked(tmp_path):
    ckpt = tmp_path / "c.npz"
    _run(ckpt)
    with zipfile.ZipFile(ckpt, "a", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("extra.npy", "w", force_zip64=True) as f:
            f.write(np.lib.format.magic(1, 0))
            block = bytes(2**22)
            for _ in range(64):  # 256 MiB of zeros, about 250 KiB on disk
                f.write(block)
    assert ckpt.stat().st_size < 2**20
    tracemalloc.start()
    try:
        res = _run(tmp_path / "out.npz", resume=ckpt, epochs=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.steps == 9 and peak < 16 * 2**20
    with pytest.raises(zo.CheckpointError, match="'extra' declares 268435"):
        zo.load_checkpoint(ckpt)  # without a list of expected members, the declared size is refused

    with zipfile.ZipFile(tmp_path / "lying.npz", "w") as z:  # a header that promises more than the member holds
        with z.open("__meta__.npy", "w") as f:
            blob = json.dumps({"format": "zoracle-checkpoint", "version": 1}).encode()
            np.lib.format.write_array(f, np.frombuffer(blob, np.uint8))
        with z.open("params.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    with pytest.raises(zo.CheckpointError, match="corrupt or truncated"):
        zo.load_checkpoint(tmp_path / "lying.npz")


# ---------------------------------------------------------------- unclear errors
def test_errors_name_the_real_problem(tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(zo.ArgumentError, match="`params` is a torch.Tensor; zoracle works on NumPy"):
        zo.estimate_gradient(lambda x: 1.0, torch.ones(3))
    with pytest.raises(zo.ArgumentError, match="all False"):
        zo.estimate_gradient(lambda x: 1.0, np.ones(3), coordinates=np.zeros(3, bool))
    with pytest.warns(UserWarning, match="`eval_fn` returned at epoch 0 for 'acc' is 'high'.*stops here and returns"):
        assert _run(None, eval_fn=lambda p: {"acc": "high"}).stopped
    with pytest.raises(zo.ArgumentError, match="`schedule` schedule <lambda> at step 0 is 'fast'"):
        _run(None, schedule=lambda t: "fast")
    np.save(tmp_path / "params.npy", np.zeros(4))
    with pytest.raises(zo.CheckpointError, match="single .npy array"):
        _run(None, resume=tmp_path / "params.npy")
    ckpt = tmp_path / "c.npz"
    _run(ckpt)
    with zipfile.ZipFile(ckpt) as z:
        header = json.loads(np.lib.format.read_array(z.open("__meta__.npy")).tobytes())
    for key in ("step", "epoch", "pos", "nfev", "opt_count", "root", "history"):
        bad = _tamper(ckpt, tmp_path / f"no_{key}.npz", meta_edit=lambda m, key=key: m.pop(key))
        with pytest.raises(zo.CheckpointError, match=f"'{key}'"):
            _run(None, resume=bad)
    assert set(header) >= {"step", "epoch", "pos", "nfev", "opt_count", "root", "history", "fingerprints"}


# any single tampered header field: a CheckpointError or a normal resume, never a raw exception
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=5), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                                              st.integers(), max_size=2))
_FIELDS = ["step", "epoch", "pos", "nfev", "opt_count", "root", "config", "history", "fingerprints",
           ("config", "d"), ("history", "steps"), ("history", "epochs"), ("fingerprints", "lr"),
           ("history", "steps", 1, "epoch"), ("history", "steps", 0, "loss"), ("history", "steps", 4, "step"),
           ("fingerprints", "lr", "steps")]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "c.npz"
    _run(path)
    return path


@given(field=st.sampled_from(_FIELDS), value=_VALUES)
def test_any_tampered_header_field_gives_a_checkpoint_error_or_a_clean_resume(saved, tmp_path_factory, field, value):
    def edit(meta):
        keys = field if isinstance(field, tuple) else (field,)
        node = meta
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    folder = tmp_path_factory.mktemp("t")
    bad = _tamper(saved, folder / "bad.npz", meta_edit=edit)
    try:
        res = _run(folder / "out.npz", resume=bad, epochs=3)
    except zo.CheckpointError:
        return
    assert res.steps == 9 and np.isfinite(res.params).all()


def test_a_checkpoint_path_of_the_wrong_type_is_an_argument_error_naming_it(tmp_path):
    # a bare os.fspath TypeError named neither the argument nor the fix
    loss = lambda x: float(x @ x)  # noqa: E731
    with pytest.raises(zo.ArgumentError, match="`checkpoint` must be a file path such as 'run.npz', got int"):
        zo.train(loss, np.ones(3), checkpoint=3, progress=False)
    with pytest.raises(zo.ArgumentError, match="`path` must be a file path"):
        zo.History.from_checkpoint(3)
    with pytest.raises(zo.ArgumentError, match="`path` must be a file path"):
        zo.load_checkpoint(None)
    with pytest.raises(zo.ArgumentError, match="`path` must be a file path"):
        zo.save_checkpoint(3, {"params": np.zeros(2)}, {})
    zo.save_checkpoint(str(tmp_path / "ok.npz").encode(), {"params": np.zeros(2)}, {})  # bytes paths still work
    assert zo.load_checkpoint(tmp_path / "ok.npz")[0]["params"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("kw, match", [
    (dict(ranking="foo"), "`ranking` must be one of"),
    (dict(mask_shuffle_interval=0), "`mask_shuffle_interval` must be an integer >= 1"),
    (dict(grasp_directions=0), "`grasp_directions`"),
    (dict(score_kinds="conv"), "`score_kinds` must be a collection"),
    (dict(ratios="best"), "`ratios` must be one of"),
])
def test_the_sparse_settings_are_checked_without_sparsity_too(kw, match):
    # they were checked only once `sparsity` was set: a typo passed unseen until then
    with pytest.raises(zo.ArgumentError, match=match):
        zo.train(lambda x: float(x @ x), np.ones(3), progress=False, **kw)


def test_history_column_of_a_name_no_record_has_warns_naming_those_there_are():
    # a typo ("test_accuracy" for "test_acc") gave an all-NaN column, silently
    res = zo.train(lambda x: float(x @ x), np.ones(3), epochs=2, eval_fn=lambda p: {"test_acc": 0.5}, progress=False)
    assert res.history.column("test_acc", "epoch").tolist() == [0.5, 0.5]
    with pytest.warns(UserWarning, match="no epoch record has the field 'test_accuracy'.*'test_acc'"):
        assert np.isnan(res.history.column("test_accuracy", "epoch")).all()  # NaN where missing, as documented
    with pytest.warns(UserWarning, match="level='epoch'"):
        res.history.column("test_acc")
    assert zo.History((), ()).column("anything").size == 0
    # a metric a short run never evaluated (eval_every, stopped by its budget): NaN, with the warning
    short = zo.train(lambda x: float(x @ x), np.ones(3), epochs=10, eval_every=5, max_queries=12,
                     eval_fn=lambda p: {"test_acc": 0.5}, progress=False)
    with pytest.warns(UserWarning):
        assert np.isnan(short.history.column("test_acc", "epoch")).all()


def test_smoothing_refuses_a_classifier_that_is_not_callable():
    from zoracle import smoothing

    for call in (lambda: smoothing.certify(None, np.zeros(3), sigma=0.25, num_classes=3),
                 lambda: smoothing.predict(None, np.zeros(3), sigma=0.25, num_classes=3),
                 lambda: smoothing.sample_counts(None, np.zeros((1, 3)), 10, 0.25, num_classes=3)):
        with pytest.raises(zo.ArgumentError, match="`classifier` must be callable"):
            call()


def test_a_history_plot_to_a_bad_path_names_its_path_argument():
    pytest.importorskip("matplotlib")
    res = zo.train(lambda x: float(x @ x), np.ones(3), epochs=1, progress=False)
    with pytest.raises(zo.ArgumentError, match="`path` must be a file path"):
        res.history.plot(3)


def test_minibatches_refuse_what_they_would_misread():
    # a list of rows was read as one field per row (six rows of two became two samples), a list of
    # (x, y) samples failed later with a TypeError, string flags counted as True, and drop_last with
    # a batch larger than the data gave empty epochs, refused only inside train without naming them
    rows = [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0], [8.0, 9.0], [10.0, 11.0]]
    with pytest.raises(zo.ArgumentError, match="list of Python lists, tuples or strings"):
        zo.Minibatches(rows, batch_size=2)
    with pytest.raises(zo.ArgumentError, match="list of Python lists, tuples or strings"):
        zo.Minibatches([(np.ones(3) * i, i) for i in range(6)], batch_size=2)
    assert zo.Minibatches(np.asarray(rows), batch_size=2).n == 6
    assert zo.Minibatches([np.zeros((6, 2)), np.arange(6)], batch_size=4).n == 6  # a list of arrays: fields
    assert zo.Minibatches([1.0, 2.0, 3.0], batch_size=2).n == 3  # a list of numbers: one array
    assert zo.Minibatches([np.zeros((6, 2)), [0, 1, 2, 0, 1, 2]], batch_size=4).n == 6  # an array among them: fields
    # a list of row arrays (list(X), [ds[i] for i in ...]) was read as six fields of two samples
    for listed in (list(np.asarray(rows)), list(np.zeros((20, 30)))):
        with pytest.raises(zo.ArgumentError, match=r"list of \d+ arrays of one shape .*rows of one array, not fields"):
            zo.Minibatches(listed, batch_size=2)
    assert zo.Minibatches([np.zeros((6, 2)), np.ones((6, 2))], batch_size=4).n == 6  # two fields of one shape
    with pytest.raises(zo.ArgumentError, match="hold no samples"):
        zo.Minibatches((np.zeros((0, 2)), np.zeros(0)), batch_size=4)
    mb = zo.Minibatches(np.arange(5), 2)  # compared and hashed by identity (field-wise == raised NumPy's error)
    assert mb == mb and mb != zo.Minibatches(np.arange(5), 2) and len({mb}) == 1
    for flag in ("shuffle", "drop_last"):
        with pytest.raises(zo.ArgumentError, match=f"`{flag}` must be True or False, got 'False'"):
            zo.Minibatches(np.arange(5), 2, **{flag: "False"})
    with pytest.raises(zo.ArgumentError, match="`batch_size` 10 is more than the 5 samples, and drop_last=True"):
        zo.Minibatches(np.arange(5.0), batch_size=10, drop_last=True)
    assert len(zo.Minibatches(np.arange(5.0), batch_size=10)) == 1


def test_a_run_on_the_oracles_own_data_and_one_on_a_callable_do_not_resume_each_other(tmp_path):
    """As with Minibatches, a callable `epoch -> batches` and the oracle's own data are other runs:
    both were written as None, the comparison was skipped, and each continued the other silently
    (its parameters then differ from either uninterrupted run). A callable resumed by a callable,
    or against a Minibatches, still resumes (its batches are not compared)."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 3)), rng.standard_normal(40)

    def Data():
        return _LinRegData((X, y))

    def by_epoch(epoch):
        idx = np.random.default_rng([1, epoch]).permutation(40)
        return [(X[idx[i:i + 10]], y[idx[i:i + 10]]) for i in range(0, 40, 10)]

    kw = dict(epochs=4, steps_per_epoch=4, rng=0, progress=False, optimizer=zo.sgd(0.05))
    stop = [lambda event, record, params: event == "epoch" and record["epoch"] == 1]
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    zo.train(Data(), np.zeros(3), batches=by_epoch, checkpoint=a, callbacks=stop, **kw)
    with pytest.raises(zo.CheckpointError, match="batches: checkpoint has .*callable.*this run has \"none"):
        zo.train(Data(), np.zeros(3), checkpoint=a, resume=True, **kw)
    zo.train(Data(), np.zeros(3), checkpoint=b, callbacks=stop, **kw)
    with pytest.raises(zo.CheckpointError, match="batches: checkpoint has \"none \\(the oracle's own data\\)\""):
        zo.train(Data(), np.zeros(3), batches=by_epoch, checkpoint=b, resume=True, **kw)
    whole = zo.train(Data(), np.zeros(3), batches=by_epoch, **kw)
    resumed = zo.train(Data(), np.zeros(3), batches=by_epoch, checkpoint=a, resume=True, **kw)
    np.testing.assert_array_equal(resumed.params, whole.params)
    mb = zo.Minibatches((X, y), 10, seed=0)  # a callable against a Minibatches: not compared, as documented
    zo.train(Data(), np.zeros(3), batches=mb, checkpoint=str(tmp_path / "c.npz"), callbacks=stop, **kw)
    zo.train(Data(), np.zeros(3), batches=lambda e: mb(e), checkpoint=str(tmp_path / "c.npz"), resume=True, **kw)


def test_a_checkpoint_whose_schedule_wrote_an_integer_field_resumes(tmp_path):
    """Schedules store their fields as Python floats since 35083a0 (final=0 is final=0.0): a
    checkpoint written before, whose description holds final=0, was refused as another
    setting. Texts that differ only in how their numbers are written are the same settings
    (the values are compared by the fingerprints and the history); another value is refused."""
    sched = zo.cosine_schedule(0.1, total_steps=9, final=0)
    ckpt = tmp_path / "c.npz"
    _run(ckpt, schedule=sched)
    old = _tamper(ckpt, tmp_path / "old.npz",
                  meta_edit=lambda m: m["config"].__setitem__("schedule", m["config"]["schedule"].replace("final=0.0",
                                                                                                        "final=0")))
    assert "final=0)" in zo.load_checkpoint(old)[1]["config"]["schedule"]
    assert _run(tmp_path / "r.npz", resume=old, schedule=sched, epochs=3).steps == 9
    # and a NumPy scalar, as the dataclass's repr wrote it (init=np.float64(0.1))
    numpy_scalar = _tamper(ckpt, tmp_path / "np.npz", meta_edit=lambda m: m["config"].__setitem__(
        "schedule", m["config"]["schedule"].replace("init=0.1", "init=np.float64(0.1)")))
    assert "np.float64(0.1)" in zo.load_checkpoint(numpy_scalar)[1]["config"]["schedule"]
    assert _run(tmp_path / "r2.npz", resume=numpy_scalar, schedule=sched, epochs=3).steps == 9
    # the optimizer's and mu's texts alike
    kw = dict(epochs=3, optimizer=zo.sgd(0.1, momentum=0.5), mu=0.001, progress=False, rng=0,
              estimator=zo.RGE(directions=2))
    ck = str(tmp_path / "rge.npz")
    zo.train(lambda x: float(x @ x), np.ones(3), checkpoint=ck, callbacks=[lambda e, r, p: r["epoch"] == 0], **kw)
    for key, was, now in (("optimizer", "weight_decay=0.0", "weight_decay=0"), ("mu", "0.001", "np.float64(0.001)")):
        edited = _tamper(ck, tmp_path / f"{key}.npz", meta_edit=lambda m: m["config"].__setitem__(
            key, m["config"][key].replace(was, now)))
        assert zo.train(lambda x: float(x @ x), np.ones(3), resume=str(edited), **kw).steps == 3
    other = _tamper(ckpt, tmp_path / "other.npz",
                    meta_edit=lambda m: m["config"].__setitem__("schedule", m["config"]["schedule"].replace(
                        "final=0.0", "final=0.01")))
    with pytest.raises(zo.CheckpointError, match="schedule: checkpoint has"):
        _run(tmp_path / "s.npz", resume=other, schedule=sched, epochs=3)


@pytest.mark.parametrize("value, now, same, other", [
    (np.float32(0.1), "0.10000000149011612", "np.float32(0.1)", "np.float32(0.2)"),
    (np.longdouble(0.1), "0.1", repr(np.longdouble(0.1)), repr(np.longdouble(0.2)))], ids=["float32", "longdouble"])
def test_a_checkpoint_whose_schedule_wrote_a_numpy_scalar_field_resumes(tmp_path, value, now, same, other):
    """Before schedules stored their fields as Python floats, constant_schedule(np.float32(0.1))
    wrote value=np.float32(0.1) in its checkpoint (commit 201517d), and np.longdouble(0.1)
    value=np.longdouble('0.10000000000000000555'); they are value=0.10000000149011612 and 0.1
    now, the same numbers. Read as float64's 0.1 (the float32), or not read (the longdouble), a
    resume after an upgrade was refused as another setting; it resumes bit for bit, and a field of
    another value is still refused."""
    sched = zo.constant_schedule(value)
    assert f"value={now})" in zo.sgd(sched).config
    ckpt = tmp_path / "c.npz"
    _run(ckpt, schedule=sched, epochs=1)
    for text, accepted in ((same, True), (other, False)):
        old = _tamper(ckpt, tmp_path / f"old-{accepted}.npz", meta_edit=lambda m: m["config"].__setitem__(
            "schedule", m["config"]["schedule"].replace(f"value={now})", f"value={text})")))
        assert text in zo.load_checkpoint(old)[1]["config"]["schedule"]
        if accepted:
            resumed = _run(tmp_path / "r.npz", resume=old, schedule=sched, epochs=3)
            whole = _run(tmp_path / "w.npz", schedule=sched, epochs=3)
            assert resumed.steps == 9
            np.testing.assert_array_equal(resumed.params, whole.params)
        else:
            with pytest.raises(zo.CheckpointError, match="schedule: checkpoint has"):
                _run(tmp_path / "s.npz", resume=old, schedule=sched, epochs=3)


class _LinRegData:
    """A data oracle, least squares on its batch; made with the whole data set, it trains on it
    when train gets no `batches`."""

    def __init__(self, batch):
        self.batch = batch

    def bind(self, batch):
        return _LinRegData(batch)

    def __call__(self, w):
        return float(np.mean((self.batch[0] @ w - self.batch[1]) ** 2))


def test_a_run_on_the_oracles_own_data_and_one_on_batches_do_not_resume_each_other(tmp_path):
    """batches=None and a callable's batches both recorded None, which a resume compares with
    nothing: a run on Minibatches resumed without `batches` ran one full-batch step an epoch
    (steps per epoch 4, 4, 1, 1), and the reverse was accepted too."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 3)), rng.standard_normal(40)

    def Data():
        return _LinRegData((X, y))

    kw = dict(epochs=4, rng=0, progress=False, optimizer=zo.sgd(0.05))
    stop = [lambda event, record, params: event == "epoch" and record["epoch"] == 1]
    batches = zo.Minibatches((X, y), 10, seed=0)
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    zo.train(Data(), np.zeros(3), batches=batches, checkpoint=a, callbacks=stop, **kw)
    with pytest.raises(zo.CheckpointError, match="batches: checkpoint has .*minibatches.*this run has \"none"):
        zo.train(Data(), np.zeros(3), checkpoint=a, resume=True, **kw)
    zo.train(Data(), np.zeros(3), checkpoint=b, callbacks=stop, **kw)
    with pytest.raises(zo.CheckpointError, match="batches: checkpoint has \"none \\(the oracle's own data\\)\""):
        zo.train(Data(), np.zeros(3), batches=batches, checkpoint=b, resume=True, **kw)
    whole = zo.train(Data(), np.zeros(3), batches=batches, **kw)
    resumed = zo.train(Data(), np.zeros(3), batches=batches, checkpoint=a, resume=True, **kw)
    np.testing.assert_array_equal(resumed.params, whole.params)


def test_a_mu_schedule_at_zero_is_named_as_a_bad_value_not_an_unrepresentable_step():
    """mu must be > 0: a mu schedule that returns 0 is a bad value of the schedule, and the
    message says so; it used to pass the value check and fail later as 'not a representable step'."""
    from zoracle._schedules import schedule_value

    with pytest.raises(zo.ArgumentError, match=r"`mu` schedule <lambda> at step 0 is 0.0; it must be a finite number > 0"):
        zo.train(lambda x: float(x @ x), np.ones(3), epochs=4, mu=lambda t: 0.0, progress=False)
    with pytest.raises(zo.ArgumentError, match="must be a finite number > 0"):
        schedule_value(lambda t: 0.0, 3, "mu", positive=True)
    assert schedule_value(lambda t: 0.0, 3, "lr") == 0.0  # a learning rate may be 0
