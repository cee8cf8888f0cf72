"""Resume without trusting the checkpoint: every header field and array is checked against the run.

:func:`read_resume` is the one validation layer between a checkpoint file and
:func:`zoracle.train`: settings (``check_compatible``), schedule fingerprints, every
counter (type, range and consistency with the history), every history record, and every
array's dtype, shape and values. Anything implausible raises :class:`CheckpointError`
naming the field; nothing reaches the training loop as a raw ``KeyError`` or ``TypeError``.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re

import numpy as np

from ._backend import to_numpy
from ._checkpoint import WRITER, CheckpointError, as_path, check_compatible, load_checkpoint, new_run, release, upgrade, written_by
from ._errors import short_repr, warn
from ._optim import SGDState
from ._schedules import schedule_value

__all__ = ["read_resume", "read_history", "compare_fingerprints", "compare_history"]

_MAX_COUNT = 2**53  # counters above this are not exact in JSON / float64: implausible
_FIX = "delete it to start over, or resume from another checkpoint"


#: what a checkpoint's settings hold for a callable ``batches`` (before: None, as for no batches)
CALLABLE_BATCHES = "a callable epoch -> batches"


def _bad(path, field, value, want):
    return CheckpointError(f"checkpoint {path!r}: header field {field!r} is {short_repr(value, 79)}, expected {want}; "
                           f"{_FIX}")


def _int(meta, key, path, lo=0, hi=_MAX_COUNT, field=None):
    v = meta.get(key) if isinstance(meta, dict) else None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not lo <= v <= hi:
        raise _bad(path, field or key, v, f"an integer in [{lo}, {hi}]")
    return int(v)


def _number(rec, key, path, field, lo=-np.inf, allow_text=False):
    v = rec.get(key)
    if allow_text and v in ("nan", "inf", "-inf"):
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (v >= lo) or (not allow_text and not np.isfinite(v)):
        raise _bad(path, field, v, f"a finite number >= {lo}" if lo > -np.inf else "a number")
    return v


def _plain_step(r, i: int, last: int, epoch: int) -> bool:
    """Whether step record ``r`` (of step ``i``, its epoch from ``last`` to ``epoch``) passes
    :func:`_history`'s checks of it as a run writes it: JSON's ints and finite floats, no loss as text.
    Any other record is checked field by field, each named where it fails; this one test, without the
    fields' names made and the numbers' abstract classes asked (0.96 s at 100,000 steps, three times the
    JSON's parsing), reads a long run's history for a resume or a plot in a sixth of the time."""
    if type(r) is not dict:
        return False
    s, e, n, t = r.get("step"), r.get("epoch"), r.get("nfev"), r.get("total_nfev", 0)
    loss, lr, mu, sec = r.get("loss"), r.get("lr"), r.get("mu"), r.get("seconds")
    return (type(s) is int and s == i and type(e) is int and last <= e <= epoch and type(n) is int
            and 0 <= n <= _MAX_COUNT and type(t) is int and 0 <= t <= _MAX_COUNT
            and type(loss) is float and not math.isnan(loss)  # (inf: a loss that overflowed, recorded)
            and type(lr) is float and type(mu) is float and type(sec) is float
            and 0.0 <= lr < math.inf and 0.0 <= mu < math.inf and 0.0 <= sec < math.inf)


def _history(meta, path, step, epoch, pos):
    hist = meta.get("history")
    if not isinstance(hist, dict) or not isinstance(hist.get("steps"), list) or not isinstance(hist.get("epochs"), list):
        raise _bad(path, "history", type(hist).__name__, "an object with lists 'steps' and 'epochs'")
    steps, epochs = hist["steps"], hist["epochs"]
    if len(steps) != step:
        raise _bad(path, "step", step, f"the number of step records ({len(steps)})")
    if len(epochs) != epoch:
        raise _bad(path, "epoch", epoch, f"the number of epoch records ({len(epochs)})")
    last = 0
    for i, r in enumerate(steps):
        if _plain_step(r, i, last, epoch):
            last = r["epoch"]
            continue
        f = f"history.steps[{i}]"
        if not isinstance(r, dict):
            raise _bad(path, f, r, "an object")
        _int(r, "step", path, i, i, f + ".step")
        last = _int(r, "epoch", path, last, epoch, f + ".epoch")
        _int(r, "nfev", path, field=f + ".nfev")
        if "total_nfev" in r:  # absent in checkpoints written before steps carried it
            _int(r, "total_nfev", path, field=f + ".total_nfev")
        _number(r, "loss", path, f + ".loss", allow_text=True)
        _number(r, "lr", path, f + ".lr", lo=0.0)
        _number(r, "mu", path, f + ".mu", lo=0.0)
        _number(r, "seconds", path, f + ".seconds", lo=0.0)
    here = sum(1 for r in steps if r["epoch"] == epoch)
    if here != pos:
        raise _bad(path, "pos", pos, f"the number of step records of epoch {epoch} ({here})")
    for j, r in enumerate(epochs):
        if not isinstance(r, dict) or r.get("epoch") != j:
            raise _bad(path, f"history.epochs[{j}]", r, f"an object with 'epoch': {j}")
    return steps, epochs


def _with_totals(steps: list, nfev: int) -> list:
    """``steps`` with each record's ``total_nfev``: written before step records carried it, it is the
    header's ``nfev`` less the later steps' queries (what newer records hold, and are checked for). A
    resumed older run mixed records with and without it, unlike the run it continues."""
    if all("total_nfev" in r for r in steps):
        return steps
    out, total = [], nfev
    for r in reversed(steps):
        out.append(r if "total_nfev" in r else dict(r, total_nfev=total))
        total -= int(r["nfev"])
    return out[::-1]


def _fast_paths(meta, path) -> dict:
    """The run's fast paths checked against the plain call and their verdicts (``{"batch": True}``):
    a resumed run checks them no more, so its queries are the uninterrupted run's. Absent in
    checkpoints written before the check, or where no fast path was checked: checked at the next
    one's first use."""
    got = meta.get("fast_paths", {})
    known = ("batch", "coordinate", "split")
    if not isinstance(got, dict) or any(k not in known or not isinstance(v, bool) for k, v in got.items()):
        raise _bad(path, "fast_paths", got, f"an object mapping some of {', '.join(map(repr, known))} to true or false")
    return got


def read_history(path) -> tuple[list, list]:
    """The step and epoch records of a training checkpoint, checked as a resume checks them
    (counters, every record); no array is read."""
    path = as_path(path, "path")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist or is not a file; pass the file that "
                              "zo.train(checkpoint=...) writes")
    found = {}

    def check(meta):
        step = _int(meta, "step", path)
        epoch = _int(meta, "epoch", path, hi=step)
        pos = _int(meta, "pos", path)
        steps, epochs = _history(meta, path, step, epoch, pos)
        if not all("total_nfev" in r for r in steps):
            steps = _with_totals(steps, _int(meta, "nfev", path, lo=sum(int(r["nfev"]) for r in steps)))
        found["history"] = steps, epochs

    try:
        load_checkpoint(path, expected={}, check=check)
    except CheckpointError as exc:  # a reader's advice, not a resume's: nothing here starts over
        text = str(exc)
        if text.endswith(_FIX):
            raise CheckpointError(text[:-len(_FIX)] + "it is not a checkpoint zo.train wrote, or it is damaged; pass "
                                  "the file zo.train(checkpoint=...) writes") from None
        raise
    return found["history"]


def compare_fingerprints(path, saved, current: dict) -> None:
    """Raise when a schedule's values differ from the checkpoint's at any step both runs reach."""
    if not isinstance(saved, dict):
        raise _bad(path, "fingerprints", saved, "an object (schedule name -> steps and values)")
    for name, fp in current.items():
        old = saved.get(name)
        if old is None and fp is None:
            continue
        if fp is None or old is None:
            raise CheckpointError(
                f"checkpoint {path!r} was written with{'out' if old is None else ''} a `{name}` schedule, this run "
                f"has {'one' if old is None else 'none'}; resume with the same settings, or {_FIX}; {new_run(path)}"
            )
        if (not isinstance(old, dict) or not isinstance(old.get("steps"), list) or not isinstance(old.get("values"), list)
                or len(old["steps"]) != len(old["values"])):
            raise _bad(path, f"fingerprints.{name}", old, "an object with equally long 'steps' and 'values'")
        mine = dict(zip(fp["steps"], fp["values"]))
        for t, v in zip(old["steps"], old["values"]):
            if t in mine and mine[t] != v:
                raise CheckpointError(
                    f"checkpoint {path!r} was written with another `{name}` schedule: at step {t} it gave {v!r}, "
                    f"this run's gives {mine[t]!r}; resume with the same schedule, or {_FIX}; {new_run(path)}"
                )


#: a NumPy scalar's repr in a settings text (``np.float64(0.05)``): its number is the setting
_NP_SCALAR = re.compile(r"np\.((?:float|u?int)\d+|longdouble)\(([^()]*)\)")  # np.longdouble('0.1000...')
#: an RGE's repr before it took ``shaping`` (zoracle 0.1.0 of 2026-11-30 and before)
_RGE_UNSHAPED = re.compile(r"RGE\((?!.*shaping=).*scheme='\w+'\)")
#: a number in a settings text (``final=0``, ``init=1.0``, ``lr=1e-3``)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?(?![\w.])")


def _as_float(m) -> str:
    return repr(float(m.group()))


def _np_value(m) -> str:
    """A NumPy scalar's repr as the Python number it holds, as the settings write it now:
    ``np.float32(0.1)`` is ``0.10000000149011612`` (float(np.float32(0.1))), not ``0.1``."""
    try:
        value = np.dtype(m.group(1)).type(m.group(2).strip("'"))
    except (TypeError, ValueError, OverflowError):
        return m.group(2)
    out = value.item()  # (a longdouble's item() is itself)
    return repr(float(out) if isinstance(out, np.floating) else out)


def _numbers_alike(text: str) -> str:
    """A settings text with every number written one way: ``np.float64(0.05)`` (a NumPy scalar in
    a schedule before its fields were stored as floats) as ``0.05``, ``0`` as ``0.0``."""
    return _NUMBER.sub(_as_float, _NP_SCALAR.sub(_np_value, text))


def compare_history(path, steps, schedules: dict) -> None:
    """Raise when a schedule's value at a step the checkpoint ran differs from the value its
    history recorded there. The fingerprints hold the values at ``FINGERPRINT_STEPS`` only: a
    lambda whose cut-off moved from step 30 to 48 agrees with them at 20 and 50, and resumed at
    step 40 it would give a run that neither schedule makes. ``schedules`` maps a history field
    (``"lr"``, ``"mu"``) to ``(schedule, name)``; a ``None`` schedule is skipped."""
    for key, (sched, name) in schedules.items():
        if sched is None:
            continue
        for r in steps:
            old, t = r.get(key), r.get("step")
            if not isinstance(old, float) or not isinstance(t, int):
                continue
            new = schedule_value(sched, t, name, positive=key == "mu")  # as the run recorded it (a Fraction: a float)
            if new != old:
                raise CheckpointError(
                    f"checkpoint {path!r} was written with another `{name}` schedule: its step {t} ran with "
                    f"{key} {old!r}, this run's schedule gives {new!r} there; resume with the same schedule, or "
                    f"{_FIX}; {new_run(path)}")


#: the header fields a training checkpoint of this format holds (zo.train writes them)
HEADER_FIELDS = frozenset({"format", "version", WRITER, "config", "root", "step", "epoch", "pos", "nfev", "opt_count",
                           "history", "fingerprints", "modes", "fast_paths"})


def _unknown_fields(path, meta: dict, saved, config: dict) -> None:
    """Refuse a header field or a setting this release does not know: a newer zoracle writes what it
    needs to resume a run, and a resume that skipped it would continue another run, silently."""
    unknown = sorted(k for k in meta if k not in HEADER_FIELDS)
    if isinstance(saved, dict):  # ("seed": an int rng; a run resumed with rng=None keeps it)
        unknown += [f"config.{k}" for k in sorted(saved) if k not in config and k != "seed"]
    if not unknown:
        return
    names = ("field " if len(unknown) == 1 else "fields ") + ", ".join(map(repr, unknown))
    writer = meta.get(WRITER)
    if writer == release() or _not_newer(writer):  # a release that writes no such field: the header was edited
        raise CheckpointError(f"checkpoint {path!r} has header {names} that zoracle {writer}, which wrote "
                              f"it, never writes: the header was edited; {_FIX}")
    raise CheckpointError(f"checkpoint {path!r} has header {names}, written by {written_by(meta)}, that this "
                          f"zoracle does not know, so it cannot resume that run as it would continue; {upgrade()}")


def _not_newer(writer) -> bool:
    """Whether release ``writer`` (a header's ``zoracle_version``) is this one or an earlier one: every
    field it writes, this one knows (0.2.0 added ``fast_paths``). False where it does not read as
    dotted numbers."""
    parts = writer.split(".") if isinstance(writer, str) else []
    if not parts or not all(p.isdecimal() for p in parts):
        return False
    mine = release().split(".")
    return all(p.isdecimal() for p in mine) and tuple(map(int, parts)) <= tuple(map(int, mine))


def _finite(path, name, a):
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise CheckpointError(f"checkpoint {path!r}: array {name!r} holds NaN or inf; {_FIX}")


def read_resume(path, *, config: dict, fingerprints: dict, params, state, sparse: bool, n_scored: int,
                oracle, steps_per_epoch=None, estimator_state=None, legacy_batches=None) -> dict:
    """Load and validate a training checkpoint for this run; a dict of what the loop needs.

    ``params`` and ``state`` (the optimizer's initial state) give the expected shapes and
    dtypes; ``oracle.state_arrays()``, when present, those of the oracle's own state;
    ``estimator_state`` (SNES's initial sigma), when given, that of ``est/sigma``.
    """
    p = np.asarray(to_numpy(params))
    expected: dict = {"params": (p.shape, (p.dtype,))}
    zeros_ok = set()  # sgd's unused velocity: empty now, d zeros in checkpoints written before
    for k, v in state._asdict().items():
        if k != "count":
            v = np.asarray(to_numpy(v))
            if isinstance(state, SGDState) and k == "momentum" and v.shape == (0,):
                zeros_ok.add(f"opt/{k}")
            expected[f"opt/{k}"] = (None if f"opt/{k}" in zeros_ok else v.shape, (v.dtype,))
    if sparse:
        expected["ratios"] = ((n_scored,), (np.float64,))
    if estimator_state is not None:
        expected["est/sigma"] = (np.shape(estimator_state), (np.float64,))
    template = None
    if callable(getattr(oracle, "state_arrays", None)):
        template = {k: np.asarray(to_numpy(v)) for k, v in oracle.state_arrays().items()}
        expected.update({f"oracle/{k}": (v.shape, (v.dtype,)) for k, v in template.items()})
    expected[WARNED] = (None, (np.uint8,))  # (absent from checkpoints that recorded no warning, or written before)
    header = {}

    def check(meta):
        saved = meta.get("config")
        # a run without `bounds` records none (its checkpoints are as before bounds= was added): one with
        # them is told from it as a setting of this run's, None
        _unknown_fields(path, meta, saved, config if "bounds" in config else dict(config, bounds=None))
        if isinstance(saved, dict) and "ratios" not in saved:
            saved = dict(saved, ratios=config.get("ratios"))  # written before the ratio settings were saved
        if isinstance(saved, dict):
            was, now = saved.get("batches"), config.get("batches")
            # written before the batches were compared (or before a callable's were told from none), or a
            # callable's against a Minibatches' or a list's (then or now): nothing to compare; a callable
            # against the oracle's own data (both texts) is compared: those runs differ
            if was is None or now is None or (CALLABLE_BATCHES in (was, now)
                                              and not (isinstance(was, str) and isinstance(now, str))):
                if was is None and isinstance(now, dict):  # a Minibatches or a list now: nothing to compare it with
                    warn(
                        f"checkpoint {path!r} was written before checkpoints recorded the batches: they are not "
                        "compared, so another batch size, shuffle seed or list of batches is not caught; resume with "
                        "the batches that run used (the next checkpoint records them)", UserWarning, stacklevel=5)
                saved = dict(saved, batches=now)
            elif legacy_batches is not None and was == legacy_batches and was != now:
                saved = dict(saved, batches=now)  # written before a dict batch's rows were read (then: none)
                warn(
                    f"checkpoint {path!r} was written before checkpoints recorded the rows of dict batches: only "
                    f"their number ({was.get('batches')}) is compared, so dict batches of other sizes are not caught; "
                    "resume with the batches that run used (the next checkpoint records their rows)",
                    UserWarning, stacklevel=5)
        unread = list(getattr(oracle, "_unread_moved", None) or ())
        if isinstance(saved, dict) and "layout" not in saved and unread:
            # before layouts were saved, a TorchOracle kept such parameters in the model's order; it
            # puts them last now: the checkpoint's vector belongs to other tensors
            raise CheckpointError(
                f"checkpoint {path!r} was written before checkpoints recorded the oracle's layout, and this oracle "
                f"puts parameters its forward does not read ({', '.join(map(repr, unread[:3]))}) last in its flat "
                "vector, where the oracle then kept the model's order: its vector may load into the wrong tensors; "
                f"{_FIX}")
        if isinstance(saved, dict) and (saved.get("layout") is None or config.get("layout") is None):
            saved = dict(saved, layout=config.get("layout"))  # written before layouts were saved, or unnamed
        elif isinstance(saved, dict) and saved["layout"] != config.get("layout"):
            raise CheckpointError(
                f"checkpoint {path!r} was written by a run whose oracle laid its parameters out otherwise (their names "
                "and shapes in flat order differ: another model, or a TorchOracle built in other train/eval modes, "
                "which may order its parameters otherwise), so its vector would load into the wrong tensors; build "
                f"the oracle as that run did, or {_FIX}")
        if isinstance(saved, dict) and isinstance(saved.get("estimator"), str):
            # written before estimators kept Python numbers: CGE(mu=np.float64(0.005)) is CGE(mu=0.005)
            saved = dict(saved, estimator=_NP_SCALAR.sub(_np_value, saved["estimator"]))
            if WRITER not in meta and _RGE_UNSHAPED.fullmatch(saved["estimator"]):
                if "fingerprints" not in meta:  # (written from f48a224 on; RGE's draws changed before, at 9d81c58)
                    raise CheckpointError(
                        f"checkpoint {path!r} was written by zoracle 0.1.0 before commit f48a224 of 2026-11-30 (its header "
                        "has no 'fingerprints'), with an RGE whose directions some of those versions drew otherwise; this is "
                        f"zoracle {release()}, which cannot tell whether it would continue that run as it was going: "
                        "finish it with the zoracle that wrote it, or " + new_run(path))
                # written before RGE took `shaping` (and before checkpoints named their release): that
                # RGE is shaping='none', bit for bit; it was refused as other settings no run could match
                saved = dict(saved, estimator=saved["estimator"][:-1] + ", shaping='none')")
        if isinstance(saved, dict):
            for k in ("optimizer", "schedule", "mu"):
                # written before schedules stored their fields as Python numbers (final=0, now
                # final=0.0): the same settings; the values themselves are compared below
                if isinstance(saved.get(k), str) and isinstance(config.get(k), str) \
                        and _numbers_alike(saved[k]) == _numbers_alike(config[k]):
                    saved = dict(saved, **{k: config[k]})
        check_compatible(path, saved, config if not (isinstance(saved, dict) and "bounds" in saved)
                         else dict({"bounds": None}, **config), meta)
        header["seed"] = saved.get("seed")  # a resume with rng=None keeps the run's seed in what it saves
        header["modes"] = meta.get("modes")  # the oracle's train/eval modes (compared by train, a warning)
        header["fast_paths"] = _fast_paths(meta, path)
        if "fingerprints" in meta or any("<" in str(config.get(k)) for k in ("schedule", "mu", "optimizer")):
            compare_fingerprints(path, meta.get("fingerprints"), fingerprints)
        root = meta.get("root")
        # (ASCII digits, at most 19 of them: int() refuses '²', which isdigit() takes, and 5,000 digits)
        if not isinstance(root, str) or not (root.isascii() and root.isdigit() and len(root) <= 19) or int(root) >= 2**63:
            raise _bad(path, "root", root, "a decimal seed string below 2**63")
        step = _int(meta, "step", path)
        epoch = _int(meta, "epoch", path, hi=step)
        pos = _int(meta, "pos", path, hi=steps_per_epoch if steps_per_epoch is not None else _MAX_COUNT)
        # train makes one optimizer update a step: a lower count would change Adam's bias
        # correction and an optimizer-driven schedule from here on
        opt_count = _int(meta, "opt_count", path, lo=step, hi=step)
        steps, epochs = _history(meta, path, step, epoch, pos)
        used = sum(int(r["nfev"]) for r in steps)
        nfev = _int(meta, "nfev", path, lo=used)
        steps = _with_totals(steps, nfev)
        if steps:  # each step's running total is the one before plus its queries
            before = int(steps[0]["total_nfev"]) - int(steps[0]["nfev"])  # ZO-GraSP's queries, before any step
            if before < 0:
                raise _bad(path, "history.steps[0].total_nfev", steps[0]["total_nfev"],
                           f"at least that step's nfev ({steps[0]['nfev']})")
            for i in range(1, len(steps)):
                want = int(steps[i - 1]["total_nfev"]) + int(steps[i]["nfev"])
                if int(steps[i]["total_nfev"]) != want:
                    raise _bad(path, f"history.steps[{i}].total_nfev", steps[i]["total_nfev"],
                               f"the step before's total plus this step's nfev ({want})")
            if nfev != int(steps[-1]["total_nfev"]):
                raise _bad(path, "nfev", nfev, f"the last step's total_nfev ({steps[-1]['total_nfev']})")
        seed = saved.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed:
            want = int(np.random.default_rng(seed).integers(2**63))  # as train derives it from the seed
            if int(root) != want:
                raise _bad(path, "root", root, f"the root train derives from the run's seed {seed} ({want})")
        header.update(root=int(root), step=step, epoch=epoch, pos=pos, opt_count=opt_count, steps=steps,
                      epochs=epochs, nfev=nfev)

    arrays, _ = load_checkpoint(path, expected, prefixes=() if template is not None else ("oracle/",), check=check)

    missing = [k for k in expected if k not in arrays and k != WARNED]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} lacks the arrays {missing}; it was written by another run "
                              f"(optimizer, sparsity or oracle); {_FIX}")
    for k in zeros_ok & set(arrays):
        if arrays[k].shape not in ((0,), p.shape) or np.any(arrays[k]):
            raise CheckpointError(f"checkpoint {path!r}: array {k!r} has shape {arrays[k].shape}; sgd without momentum "
                                  f"keeps an empty one (or {p.shape[0]} zeros, as saved before); {_FIX}")
    for k, a in arrays.items():
        if not k.startswith("oracle/"):  # the oracle's own state may hold inf (an attention mask's -inf)
            _finite(path, k, a)
    keep = None
    if sparse:
        keep = arrays["ratios"]
        if ((keep < 0) | (keep > 1)).any():
            raise CheckpointError(f"checkpoint {path!r}: keep ratios must lie in [0, 1], got {keep.tolist()}; {_FIX}")
    extra = {k[len("oracle/"):]: v for k, v in arrays.items() if k.startswith("oracle/")}
    opt = {k[len("opt/"):]: v for k, v in arrays.items() if k.startswith("opt/")}
    return dict(header, params=arrays["params"], opt=opt, keep=keep, oracle=extra, estimator=arrays.get("est/sigma"),
                warned=_warned(path, arrays.get(WARNED)))


#: the checkpoint's member that records the warnings the run gave (see zoracle._run_save.Saver): an array, not
#: a header field, as zoracle 0.2.0 refuses a header field it does not know and reads past a member it does not
WARNED = "warned"


def _warned(path, blob) -> set:
    """The warnings a checkpoint records its run gave (its ``warned`` member, JSON text as ``uint8``): a set of
    keys such as ``"flat"``; empty where the member is absent."""
    if blob is None:
        return set()
    try:
        got = json.loads(blob.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        got = None
    if blob.ndim != 1 or not isinstance(got, list) or not all(isinstance(k, str) for k in got):
        raise CheckpointError(f"checkpoint {path!r}: array {WARNED!r} is not a JSON list of texts (the warnings the "
                              f"run gave); {_FIX}")
    return set(got)
