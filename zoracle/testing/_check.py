"""``check_oracle``: verify an oracle's declared capabilities against plain calls."""

from __future__ import annotations

import numbers

import numpy as np

from .._backend import namespace, to_numpy
from .._errors import ArgumentError, ZoracleError
from .._estimators import as_generator, validate_params
from .._oracle import capabilities
from .._plan import check_blocks

__all__ = ["OracleCheckError", "check_oracle"]


class OracleCheckError(ZoracleError, AssertionError):
    """An oracle's capability disagrees with its plain calls; the message lists every failure."""


def _close(a, b, rtol, atol):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.allclose(a, b, rtol=rtol, atol=atol), float(np.max(np.abs(a - b))) if a.size else 0.0


def check_oracle(oracle, params, *, n_coords: int = 8, n_rows: int = 4, step: float = 1e-2,
                 rtol: float | None = None, atol: float | None = None, rng=0) -> dict:
    """Check ``oracle``'s declared capabilities against plain calls at ``params``.

    Checks: the oracle returns a finite scalar and is deterministic; it equals
    ``oracle.reference_loss(params)`` where the oracle offers one (TorchOracle: the plain,
    unpatched ``model(x)``), which then replaces plain calls as the reference below;
    ``batch`` equals a loop of calls and returns one loss per row; ``coordinate_losses`` equals
    calls at ``params + step * e_i`` and at ``params - step * e_i``, for coordinates in an
    unsorted order (central CGE sends both signs, and a caller's coordinates keep their order);
    for a SplitOracle, ``blocks`` are contiguous, ordered, disjoint and cover ``[0, d)``, and
    ``prefix`` + ``suffix`` equal full evaluations for coordinates sampled in every block, in an
    unsorted order and with both signs.

    ``rtol`` and ``atol`` default by ``params``' dtype: 1e-6 and 1e-8 in float64; 1e-5 and 1e-7
    in float32, where a correct fast path and a plain call may differ by a few units of the
    float32 rounding of the model's outputs.

    Returns
    -------
    dict
        Largest absolute deviation per check (for reporting).

    Raises
    ------
    OracleCheckError
        Listing every failed check with the deviation found.
    """
    params = validate_params(params)
    for name, v in (("n_coords", n_coords), ("n_rows", n_rows)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ArgumentError(f"`{name}` must be an integer >= 1, got {v!r}")
    single = params.dtype == np.float32
    rtol = (1e-5 if single else 1e-6) if rtol is None else rtol
    atol = (1e-7 if single else 1e-8) if atol is None else atol
    xp = namespace(params)
    gen = as_generator(rng)
    d = params.shape[0]
    caps = capabilities(oracle)
    failures, report = [], {}
    dt = params.dtype.type

    # an oracle that runs a model through its own machinery (TorchOracle) offers the plain,
    # unpatched evaluation as ``reference_loss``: every fast path is compared against it
    reference = getattr(oracle, "reference_loss", None)

    def call(x):
        v = reference(x) if reference is not None else oracle(x)
        return float(v)

    def perturbed(i, s):
        x = params.copy()
        x[i] = x[i] + dt(s)
        return x

    base = float(oracle(params))
    if not np.isfinite(base):
        failures.append(f"call: loss at params is {base}, expected finite")
    if reference is not None:
        ok, dev = _close(base, call(params), rtol, atol)
        report["reference"] = dev
        if not ok:
            failures.append(f"reference: oracle(params) deviates from reference_loss(params) by {dev:.3g}")
    again = float(oracle(params))
    ok, dev = _close(base, again, 0, 0)
    report["determinism"] = dev
    if not ok:
        failures.append(f"determinism: two calls at the same params differ by {dev:.3g}")

    coords = np.sort(gen.choice(d, size=min(n_coords, d), replace=False))
    if caps.batch:
        rows = min(n_rows, d)
        X = xp.stack([perturbed(int(i), step * (r + 1)) for r, i in enumerate(coords[:rows])])
        got = np.asarray(to_numpy(oracle.batch(X)))
        want = [call(X[r]) for r in range(X.shape[0])]
        # the shapes estimate_gradient takes: one loss per row, (k,) or (k, 1)
        got = got.reshape(-1) if got.shape in ((len(want),), (len(want), 1)) else got
        ok, dev = _close(got, want, rtol, atol) if got.shape == (len(want),) else (False, np.inf)
        report["batch"] = dev
        if not ok:
            failures.append(f"batch: {got.shape} result deviates from a loop of calls by {dev:.3g}")
    if caps.coordinate:
        shuffled = gen.permutation(coords)
        worst = 0.0
        for s in (step, -step):
            got = to_numpy(oracle.coordinate_losses(params, shuffled, s)).reshape(-1)
            want = [call(perturbed(int(i), s)) for i in shuffled]
            ok, dev = _close(got, want, rtol, atol) if got.shape == (len(want),) else (False, np.inf)
            worst = max(worst, dev)
            if not ok:
                failures.append(f"coordinate_losses: deviates from calls at params {'+' if s > 0 else '-'} "
                                f"step*e_i (coordinates {shuffled.tolist()}) by {dev:.3g}")
        report["coordinate_losses"] = worst
    if caps.split:
        blocks = list(oracle.blocks)
        try:
            check_blocks(blocks, d)  # the planner's own check
        except ArgumentError as exc:
            failures.append(f"blocks: {exc}")
        if not any(f.startswith("blocks") for f in failures):
            worst = 0.0
            for b, blk in enumerate(blocks):
                n = min(max(1, n_coords // 2), blk.stop - blk.start)
                cb = gen.choice(np.arange(blk.start, blk.stop), size=n, replace=False)  # unsorted
                feats = oracle.prefix(params, b)
                for s in (step, -step):
                    got = to_numpy(oracle.suffix(feats, params, b, cb, s)).reshape(-1)
                    want = [call(perturbed(int(i), s)) for i in cb]
                    ok, dev = _close(got, want, rtol, atol) if got.shape == (len(want),) else (False, np.inf)
                    worst = max(worst, dev)
                    if not ok:
                        failures.append(f"prefix+suffix: block {b}, step {s:+g}: deviates from calls by {dev:.3g}")
            report["prefix_suffix"] = worst
    if failures:
        raise OracleCheckError(
            f"check_oracle found {len(failures)} problem(s) with {type(oracle).__name__}:\n  - "
            + "\n  - ".join(failures)
        )
    return report
