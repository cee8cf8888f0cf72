"""Property tests (hypothesis, derandomized) of session 69's changes, each against a reference
written here: the checkpoint's own zip writer and history buffer against ``np.savez`` and
``json.dumps``; the estimate of a run's saved bytes against what its saves write; a retried
oracle's runs against the same runs without failures; the in-place arithmetic of CGE, the RGE
row sums and ``layer_ratios`` against the textbook formulas."""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
import types
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import zoracle as zo
from zoracle import _checkpoint
from zoracle._cadence import rewrite_bytes, save_cadence
from zoracle._checkpoint import FORMAT, VERSION, WRITER, Records, _write_npz, release
from zoracle._estimators import _row_sums, _squared_less_one
from zoracle._plan import release_rows
from zoracle._pruning import fill_small_blocks, layer_ratios

FAST = settings(derandomize=True, database=None, max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(FAST, max_examples=12)


# ------------------------------------------------------------------ (a) _write_npz and Records
@st.composite
def _arrays(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.int8, np.uint16]))
    shape = draw(st.one_of(st.just(()), hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)))
    a = draw(hnp.arrays(dtype, shape))
    if a.ndim >= 2 and draw(st.booleans()):
        a = np.asfortranarray(a)  # (np.savez writes a Fortran-ordered array as such)
    elif a.ndim >= 1 and draw(st.booleans()):
        a = a[::-2]  # (a strided view, as np.asarray may leave one)
    return a


_NAMES = st.text(st.characters(codec="ascii", min_codepoint=ord("a"), max_codepoint=ord("z")), min_size=1, max_size=8)
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=10)


class _FixedClock:
    """zipfile's clock for the members' dates: two archives written a second apart differ there."""

    def __enter__(self):
        self.mp = pytest.MonkeyPatch()
        self.mp.setattr(zipfile, "time", types.SimpleNamespace(time=lambda: 1.7e9, localtime=time.localtime))
        return self

    def __exit__(self, *exc):
        self.mp.undo()


@FAST
@given(arrays=st.dictionaries(_NAMES, _arrays(), max_size=5),
       header=st.lists(_JSON.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8")), max_size=5),
       buffers=st.lists(st.booleans(), max_size=5))
def test_write_npz_writes_the_bytes_np_savez_writes(arrays, header, buffers):
    pieces = [bytearray(p) if b else p for p, b in zip(header, buffers + [False] * len(header))]
    mine, theirs = io.BytesIO(), io.BytesIO()
    with _FixedClock():
        _write_npz(mine, arrays, pieces)
        np.savez(theirs, **arrays, __meta__=np.frombuffer(b"".join(header), dtype=np.uint8))
    assert mine.getvalue() == theirs.getvalue()
    mine.seek(0)
    with np.load(mine, allow_pickle=False) as got:
        assert list(got.files) == list(arrays) + ["__meta__"]
        for k, a in arrays.items():
            b = got[k]
            assert b.dtype == a.dtype and b.shape == a.shape and b.tobytes("A") == a.tobytes("A")
        assert got["__meta__"].tobytes() == b"".join(header)


_RECORD = st.dictionaries(st.sampled_from(["step", "loss", "nfev", "name", "é", "lr", "值"]),
                          st.integers() | st.floats() | st.text(max_size=8) | st.none()
                          | st.builds(np.float32, st.floats(width=32))
                          | st.builds(np.int64, st.integers(-2**63, 2**63 - 1)),
                          max_size=5)


def _plain(v):  # the header's own `default`: NumPy scalars as Python numbers
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(type(v).__name__)


@FAST
@given(batches=st.lists(st.lists(_RECORD, max_size=4), min_size=1, max_size=6))
def test_records_encode_the_text_json_gives_the_list_after_each_growth(batches):
    records: list = []
    r = Records(records)
    for batch in batches:
        records.extend(batch)
        want = json.dumps(records, sort_keys=True, allow_nan=True, default=_plain)
        assert r.text(_plain) == want
        assert bytes(r.body(_plain)) == want[1:-1].encode("utf-8")


@SLOW
@given(steps=st.lists(st.lists(_RECORD, max_size=30), min_size=1, max_size=4), epochs=st.lists(_RECORD, max_size=3),
       meta=st.dictionaries(st.text(max_size=6), _JSON, max_size=4), params=_arrays(), token=st.booleans())
def test_a_saved_checkpoints_header_is_json_of_the_records_lists(steps, epochs, meta, params, token):
    """save_checkpoint with Records in its header, saved as they grow: the file's header is the
    text json.dumps gives the header with plain lists, byte for byte, and the arrays come back
    (also where a value of the header is the records' placeholder text, which encodes the lists)."""
    if token:
        meta = dict(meta, spoof="\x00zoracle-records-0\x00")
    run: list = []
    history = {"steps": Records(run), "epochs": Records(list(epochs)), "note": "ü ✓"}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "run.npz")
        for batch in steps:
            run.extend(batch)
            _checkpoint.save_checkpoint(path, {"params": params}, dict(meta, history=history))
            plain = dict(meta, history={"steps": run, "epochs": epochs, "note": "ü ✓"})
            want = json.dumps(dict(plain, format=FORMAT, version=VERSION, **{WRITER: release()}),
                              sort_keys=True, allow_nan=True, default=_plain)
            with np.load(path, allow_pickle=False) as got:
                assert got["__meta__"].tobytes() == want.encode("utf-8")
                assert got["params"].tobytes("A") == params.tobytes("A") and got["params"].dtype == params.dtype
                assert got["params"].shape == params.shape


# ------------------------------------------------------------------ (b) the estimate of saved bytes
def _quadratic(x):
    return float(((x - 1.0) ** 2).sum())


@SLOW
@given(epochs=st.integers(8, 40), per_epoch=st.sampled_from([1, 2, 3]), every=st.sampled_from(["epoch", 1, 2, 5]),
       with_eval=st.booleans())
def test_the_estimate_of_saved_bytes_is_within_a_quarter_of_what_the_saves_write(epochs, per_epoch, every, with_eval):
    """rewrite_bytes against the history's bytes each save of a real run writes (the estimate's
    own scope: RECORD_BYTES a step and an epoch), within the 25% tests/test_long_runs.py holds it to.
    Runs of 8 cadence saves or more: the estimate leaves out the one or two saves at a run's end
    (O(steps) bytes against the saves' O(steps^2); 1 save of 3 in an 8-step run saving every 5)."""
    assume(epochs * per_epoch // (per_epoch if every == "epoch" else every) >= 8)
    written = []
    real = _checkpoint._write_npz

    def counting(f, arrays, header):
        h = json.loads(b"".join(header))["history"]
        written.append(len(json.dumps(h["steps"])) + len(json.dumps(h["epochs"])))
        return real(f, arrays, header)

    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as mp:
        mp.setattr(_checkpoint, "_write_npz", counting)
        path = os.path.join(folder, "run.npz")
        zo.train(_quadratic, np.zeros(3), epochs=epochs, steps_per_epoch=per_epoch, checkpoint=path,
                 checkpoint_every=every, progress=False, rng=0,
                 eval_fn=(lambda p: {"acc": float(p.sum())}) if with_eval else None)
    estimate = rewrite_bytes(save_cadence(every, path), epochs * per_epoch, per_epoch)
    assert 0.75 * sum(written) <= estimate <= 1.25 * sum(written), (estimate, sum(written), len(written))


# ------------------------------------------------------------------ (c) zo.retrying
class _Flaky:
    """An oracle that fails ``pattern[j]`` times (``error``) before its j-th answer (the pattern
    repeating), over all its calls (plain, batch, coordinate_losses) alike; with ``pattern`` None
    it never fails. ``attempts`` counts every call."""

    def __init__(self, pattern=None, error=ConnectionResetError):
        self.pattern, self.error = pattern, error
        self.j, self.left, self.attempts = 0, (pattern[0] if pattern else 0), 0

    def _maybe_fail(self):
        self.attempts += 1
        if self.left:
            self.left -= 1
            raise self.error(f"failure at attempt {self.attempts}")
        self.j += 1
        self.left = self.pattern[self.j % len(self.pattern)] if self.pattern else 0

    def __call__(self, x):
        self._maybe_fail()
        x = np.asarray(x, dtype=np.float64)
        return float(np.sum(np.sin(x * 1.7) + 0.1 * x ** 2))


class _FlakyBatch(_Flaky):
    def batch(self, X):
        self._maybe_fail()
        X = np.asarray(X, dtype=np.float64)
        return np.array([float(np.sum(np.sin(x * 1.7) + 0.1 * x ** 2)) for x in X])


class _FlakyCoords(_FlakyBatch):
    def coordinate_losses(self, x, coords, step):
        self._maybe_fail()
        out = []
        for c in np.asarray(coords):
            p = np.array(x, copy=True)
            p[c] = x[c] + x.dtype.type(step)
            p = p.astype(np.float64)
            out.append(float(np.sum(np.sin(p * 1.7) + 0.1 * p ** 2)))
        return np.array(out)


_KINDS = st.sampled_from([_Flaky, _FlakyBatch, _FlakyCoords])
_ESTIMATORS = st.sampled_from([("cge", "forward"), ("cge", "central"), ("rge", "forward"), ("rge", "central")])


def _estimator(kind):
    name, scheme = kind
    return zo.CGE(mu=1e-3, scheme=scheme) if name == "cge" else zo.RGE(directions=5, mu=1e-3, scheme=scheme)


@FAST
@given(tries=st.integers(1, 4), data=st.data(), kind=_ESTIMATORS, cls=_KINDS,
       x=hnp.arrays(np.float64, st.integers(1, 6), elements=st.floats(-3, 3)))
def test_a_retried_estimate_is_the_clean_estimate_bit_for_bit(tries, data, kind, cls, x):
    # (the first answer failing at least once where a retry is allowed)
    pattern = [data.draw(st.integers(min(1, tries - 1), tries - 1))] + \
        data.draw(st.lists(st.integers(0, tries - 1), max_size=7))
    clean = zo.estimate_gradient(cls(), x, _estimator(kind), rng=3)
    flaky = cls(pattern)
    got = zo.estimate_gradient(zo.retrying(flaky, tries=tries, backoff=0), x, _estimator(kind), rng=3)
    event(f"failed tries: {min(flaky.attempts - flaky.j, 3)}+")
    assert got.grad.tobytes() == clean.grad.tobytes()
    assert (got.loss, got.nfev) == (clean.loss, clean.nfev)


@SLOW
@given(tries=st.integers(1, 3), data=st.data(), kind=_ESTIMATORS, cls=_KINDS)
def test_a_retried_training_run_is_the_clean_run_bit_for_bit(tries, data, kind, cls):
    # (the first answer failing at least once where a retry is allowed)
    pattern = [data.draw(st.integers(min(1, tries - 1), tries - 1))] + \
        data.draw(st.lists(st.integers(0, tries - 1), max_size=7))
    x = np.linspace(-1.0, 1.0, 4)
    kw = dict(epochs=3, steps_per_epoch=2, estimator=_estimator(kind), optimizer=zo.sgd(0.05), rng=5, progress=False)
    clean = zo.train(cls(), x, **kw)
    flaky = cls(pattern)
    got = zo.train(zo.retrying(flaky, tries=tries, backoff=0), x, **kw)
    event(f"failed tries: {min(flaky.attempts - flaky.j, 3)}+")
    assert got.params.tobytes() == clean.params.tobytes()
    assert [(s["loss"], s["nfev"]) for s in got.history.steps] == \
        [(s["loss"], s["nfev"]) for s in clean.history.steps]
    assert got.nfev == clean.nfev


@FAST
@given(tries=st.integers(1, 5), before=st.integers(0, 4), batch=st.booleans())
def test_tries_consecutive_failures_raise_retries_exhausted_listing_them(tries, before, batch):
    """``before`` answered calls, then a call failing on each of its ``tries`` tries."""
    flaky = (_FlakyBatch if batch else _Flaky)([0] * before + [tries])
    w = zo.retrying(flaky, tries=tries, backoff=0)
    ask = (lambda: w.batch(np.zeros((2, 3)))) if batch else (lambda: w(np.zeros(3)))
    for _ in range(before):
        ask()
    with pytest.raises(zo.RetriesExhausted) as got:
        ask()
    assert got.value.errors == [f"ConnectionResetError: failure at attempt {before + i + 1}" for i in range(tries)]
    assert isinstance(got.value.__cause__, ConnectionResetError)
    assert str(got.value.__cause__) == f"failure at attempt {before + tries}"
    assert flaky.attempts == before + tries


@FAST
@given(tries=st.integers(1, 5), error=st.sampled_from([ValueError, KeyError, RuntimeError, OSError]),
       by_callable=st.booleans(), batch=st.booleans())
def test_errors_on_does_not_match_are_raised_at_their_first_try(tries, error, by_callable, batch):
    flaky = (_FlakyBatch if batch else _Flaky)([1], error=error)
    transient = (ConnectionError, TimeoutError)
    on = (lambda exc: isinstance(exc, transient)) if by_callable else transient
    w = zo.retrying(flaky, tries=tries, on=on, backoff=0)
    with pytest.raises(error):
        w.batch(np.zeros((2, 3))) if batch else w(np.zeros(3))
    assert flaky.attempts == 1


# ------------------------------------------------------------------ (d) in-place arithmetic
_FLOATS = st.sampled_from([np.float32, np.float64])


@FAST
@given(dtype=_FLOATS, data=st.data(), mu=st.floats(1e-4, 0.5), scheme=st.sampled_from(["forward", "central"]))
def test_cge_is_the_textbook_difference_quotient_bit_for_bit(dtype, data, mu, scheme):
    x = data.draw(hnp.arrays(dtype, st.integers(1, 12), elements=st.floats(-8, 8, width=32)))
    d = x.shape[0]
    coords = data.draw(st.none() | st.lists(st.integers(0, d - 1), min_size=1, max_size=d, unique=True))

    def f(p):
        p = np.asarray(p, dtype=np.float64)
        return float(np.sum(np.cos(p * 0.9) * (1.0 + np.arange(p.shape[0]))))

    got = zo.estimate_gradient(f, x, zo.CGE(mu=mu, scheme=scheme),
                               coordinates=None if coords is None else np.array(coords))
    want = np.zeros(d, dtype=dtype)
    f0, m = f(x), dtype(mu)
    for i in (range(d) if coords is None else coords):
        plus, minus = x.copy(), x.copy()
        plus[i] = x[i] + m
        minus[i] = x[i] - m
        h = np.float64(plus[i] - x[i])
        if scheme == "forward":
            want[i] = dtype((f(plus) - f0) / h)
        else:
            want[i] = dtype((f(plus) - f(minus)) / (h + np.float64(x[i] - minus[i])))
    assert got.grad.dtype == dtype
    assert got.grad.tobytes() == want.tobytes()
    assert got.loss == f0


def _philox_rows(root, n, d, distribution):
    """The (n, d) directions: Philox rows, each divided by its norm (the (n, d) matrix's row norms) on the sphere;
    Rademacher: -1 where the row's uniforms are below 1/2, else +1."""
    gens = [np.random.Generator(np.random.Philox(key=[root, i])) for i in range(n)]
    if distribution == "rademacher":
        return np.stack([np.where(g.random(d) < 0.5, -1.0, 1.0) for g in gens]).reshape(n, d)
    rows = np.stack([g.standard_normal(d) for g in gens])
    if distribution == "sphere":
        rows = rows / np.linalg.norm(rows, axis=1)[:, None]
    return rows


@FAST
@given(root=st.integers(0, 2**63 - 1), q=st.integers(1, 9), d=st.integers(1, 40),
       distribution=st.sampled_from(["gaussian", "sphere", "rademacher"]), rows_a_block=st.sampled_from([1, 2, 3, 1000]),
       data=st.data(), second=st.booleans())
def test_rge_row_sums_are_the_matrix_products_of_the_philox_rows(root, q, d, distribution, rows_a_block, data, second):
    """``sum_i w_i u_i`` (and SNES's ``sum_i w_i (u_i^2 - 1)``) against the (q, d) matrix of the
    Philox rows, multiplied block by block as the estimator's budget splits them (one product
    where the budget holds all rows); drawn twice (the second time from the row cache)."""
    w = data.draw(hnp.arrays(np.float64, q, elements=st.floats(-1e3, 1e3)))
    v = data.draw(hnp.arrays(np.float64, q, elements=st.floats(-1e3, 1e3)))
    U = _philox_rows(root, q, d, distribution)
    budget = rows_a_block * 8 * d
    chunk = rows_a_block
    want = [np.zeros(d), np.zeros(d)]
    for lo in range(0, q, chunk):
        want[0] += w[lo:lo + chunk] @ U[lo:lo + chunk]
        want[1] += v[lo:lo + chunk] @ (U[lo:lo + chunk] * U[lo:lo + chunk] - 1.0)
    if chunk >= q:
        assert want[0].tobytes() == (np.zeros(d) + w @ U).tobytes()
    terms = [(w, None)] + ([(v, _squared_less_one)] if second else [])
    try:
        for _ in range(2):
            got = _row_sums(root, d, distribution, budget, *terms)
            for g, wnt in zip(got, want):
                assert g.tobytes() == wnt.tobytes()
    finally:
        release_rows(root)


@FAST
@given(data=st.data(), sparsity=st.floats(0.0, 1.0, exclude_max=True), ranking=st.sampled_from(["magnitude", "grasp"]),
       fill_small=st.booleans(), dtype=_FLOATS)
def test_layer_ratios_are_a_plain_concatenate_and_rank(data, sparsity, ranking, fill_small, dtype):
    sizes = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=5))  # (an empty block is refused)
    contiguous = data.draw(st.booleans())  # (blocks following each other from 0: ranked in the scores' own array)
    gaps = [0] * len(sizes) if contiguous else data.draw(st.lists(st.integers(0, 2), min_size=len(sizes),
                                                                  max_size=len(sizes)))
    blocks, at = [], 0
    for size, gap in zip(sizes, gaps):
        at += gap
        blocks.append(slice(at, at + size))
        at += size
    order = range(len(blocks)) if contiguous else data.draw(st.permutations(range(len(blocks))))
    blocks = [blocks[i] for i in order]
    n = at + data.draw(st.integers(0, 2))
    # 1e-3 as the dtype holds it: hypothesis refuses an element the array would round (float32's 1e-3
    # compares unequal to the float under NumPy 1.x, whose comparisons of scalars are value-based)
    small = float(dtype(1e-3))
    scores = data.draw(hnp.arrays(dtype, n, elements=st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, small])
                                  | st.floats(-1e3, 1e3, width=32)))
    got = layer_ratios(scores, blocks, sparsity, ranking=ranking, fill_small=fill_small)
    s = scores.astype(np.float64)
    vals = np.concatenate([s[b] for b in blocks])
    bsizes = np.array([b.stop - b.start for b in blocks])
    owner = np.repeat(np.arange(len(blocks)), bsizes)
    key = -np.abs(vals) if ranking == "magnitude" else vals
    kept = np.argsort(key, kind="stable")[:int(round((1 - sparsity) * vals.size))]
    counts = np.bincount(owner[kept], minlength=len(blocks))
    if fill_small:
        counts = fill_small_blocks(counts, bsizes)
    want = counts.astype(np.float64) / bsizes.astype(np.float64)
    assert got.tobytes() == want.tobytes()


@FAST
@given(dtype=_FLOATS, data=st.data(), mu=st.floats(1e-3, 0.1), seed=st.integers(0, 2**32), crn=st.booleans(),
       directions=st.integers(1, 6), with_blocks=st.booleans())
def test_zo_grasp_scores_are_the_textbook_minus_theta_times_hg(dtype, data, mu, seed, crn, directions, with_blocks):
    """ZO-GraSP's scores against ``-theta * (g(theta + mu g) - g(theta)) / mu`` in float64, from the
    two forward RGE estimates made here with the seeds it draws."""
    x = data.draw(hnp.arrays(dtype, st.integers(1, 10), elements=st.floats(-2, 2, width=32)))
    d = x.shape[0]
    blocks = None
    if with_blocks:
        lo = data.draw(st.integers(0, d - 1))
        blocks = [slice(lo, data.draw(st.integers(lo + 1, d)))]

    def f(p):
        p = np.asarray(p, dtype=np.float64)
        return float(np.sum(np.sin(p) * p + 0.3 * p ** 2))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (a long second step is warned of: the scores are still the formula's)
        got = zo.zo_grasp(f, x, blocks=blocks, mu=mu, directions=directions, rng=seed, common_random_numbers=crn)
    gen = np.random.default_rng(seed)
    seed1 = int(gen.integers(2**63))
    seed2 = seed1 if crn else int(gen.integers(2**63))
    est = zo.RGE(mu=mu, directions=directions)
    g1 = zo.estimate_gradient(f, x, est, rng=seed1).grad
    g2 = zo.estimate_gradient(f, x + dtype(mu) * g1, est, rng=seed2).grad
    want = -x.astype(np.float64) * ((g2.astype(np.float64) - g1.astype(np.float64)) / mu)
    if blocks is not None:
        outside = np.ones(d, dtype=bool)
        outside[blocks[0]] = False
        want[outside] = 0.0
    assert got.dtype == np.float64 and got.tobytes() == want.tobytes()
