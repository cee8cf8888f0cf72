"""``check_oracle``: verify an oracle's declared capabilities against plain calls."""

from __future__ import annotations

import numpy as np

from .._backend import namespace, to_numpy
from .._errors import ZoracleError
from .._estimators import as_generator, validate_params
from .._oracle import capabilities

__all__ = ["OracleCheckError", "check_oracle"]


class OracleCheckError(ZoracleError, AssertionError):
    """An oracle's capability disagrees with its plain calls; the message lists every failure."""


def _close(a, b, rtol, atol):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.allclose(a, b, rtol=rtol, atol=atol), float(np.max(np.abs(a - b))) if a.size else 0.0


def check_oracle(oracle, params, *, n_coords: int = 8, n_rows: int = 4, step: float = 1e-2,
                 rtol: float = 1e-6, atol: float = 1e-8, rng=0) -> dict:
    """Check ``oracle``'s declared capabilities against plain calls at ``params``.

    Checks: the oracle returns a finite scalar and is deterministic; it equals
    ``oracle.reference_loss(params)`` where the oracle offers one (TorchOracle: the plain,
    unpatched ``model(x)``), which then replaces plain calls as the reference below;
    ``batch`` equals a loop of calls; ``coordinate_losses`` equals calls at ``params + step * e_i``; for a
    SplitOracle, ``blocks`` are contiguous, ordered, disjoint and cover ``[0, d)``, and
    ``prefix`` + ``suffix`` equal full evaluations for coordinates sampled in every block.

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
        got = to_numpy(oracle.batch(X)).reshape(-1)
        want = [call(X[r]) for r in range(X.shape[0])]
        ok, dev = _close(got, want, rtol, atol) if got.shape == (len(want),) else (False, np.inf)
        report["batch"] = dev
        if not ok:
            failures.append(f"batch: {got.shape} result deviates from a loop of calls by {dev:.3g}")
    if caps.coordinate:
        got = to_numpy(oracle.coordinate_losses(params, coords, step)).reshape(-1)
        want = [call(perturbed(int(i), step)) for i in coords]
        ok, dev = _close(got, want, rtol, atol) if got.shape == (len(want),) else (False, np.inf)
        report["coordinate_losses"] = dev
        if not ok:
            failures.append(f"coordinate_losses: deviates from calls at params + step*e_i by {dev:.3g}")
    if caps.split:
        blocks = list(oracle.blocks)
        pos = 0
        for b, blk in enumerate(blocks):
            if not isinstance(blk, slice) or blk.start != pos or blk.stop <= blk.start or blk.step not in (None, 1):
                failures.append(f"blocks: block {b} is {blk!r}, expected a contiguous slice starting at {pos}")
                break
            pos = blk.stop
        else:
            if pos != d:
                failures.append(f"blocks: cover [0, {pos}) but params have {d} entries")
        if not any(f.startswith("blocks") for f in failures):
            worst = 0.0
            for b, blk in enumerate(blocks):
                n = min(max(1, n_coords // 2), blk.stop - blk.start)
                cb = np.sort(gen.choice(np.arange(blk.start, blk.stop), size=n, replace=False))
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
