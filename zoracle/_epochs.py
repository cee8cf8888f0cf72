"""An epoch's batches for ``train``: drawn, drained, checked and described."""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import zlib

import numpy as np

from ._errors import ArgumentError, user_stacklevel, warn
from ._executors_core import split_bound
from ._history import Minibatches, _rows
from ._oracle import has_methods
from ._resume import CALLABLE_BATCHES


def _shown_ratios(ratios) -> str:
    """``ratios`` as an error message shows it: a name or None as written, an array by its size."""
    return repr(ratios) if isinstance(ratios, str) or ratios is None else f"an array of {np.size(ratios)}"


def _epoch_batches(batches, epoch: int, steps_per_epoch, returned: dict | None = None):
    """One epoch's batches; ``returned`` (one dict for a run) keeps the iterator a callable returned
    for the epoch before, to tell one iterator returned again (used up) from a new, short one."""
    if batches is None:
        return [None] * (steps_per_epoch or 1)
    used_up = ""  # why a callable's epoch may run short: the iterator it returned was used up before
    if callable(batches):
        seen = _generator_states(returned)
        try:
            got = batches(epoch)
        except StopIteration as exc:  # escaping train bare, it would end a caller's loop or generator, silently
            raise ArgumentError(f"`batches({epoch})` raised StopIteration (a next() on a used-up iterator?): a "
                                "`batches` callable gives the batches of each of the `epochs`; return a list of "
                                "batches or a new iterator each call, and stop a run early with fewer `epochs` or "
                                "from a callback (return True)") from exc
        _warn_unreplayed_loader(got, epoch, returned, seen)
        if isinstance(got, (list, tuple)):
            out = list(got)
        else:
            try:
                it = iter(got)
            except TypeError:
                raise ArgumentError(f"`batches` is a callable epoch -> batches, but for epoch {epoch} it returned "
                                    f"{type(got).__name__}, not a sequence of batches") from None
            again = returned is not None and returned.get("it") is got
            if returned is not None:
                returned["it"] = got if it is got else None
            if again:  # the iterator of the epoch before, returned again: read once, it ran out
                used_up = (f" (it returned a {type(got).__name__}, an iterator read once: one returned again for "
                           f"every epoch, as `lambda epoch: it` does, runs out; return a list of batches or a new "
                           f"iterator each call, e.g. `lambda epoch: iter(data)`)")
            try:
                out = _drain(it, epoch, steps_per_epoch)  # (an endless generator stops at steps_per_epoch)
            except RuntimeError as exc:
                if not isinstance(exc.__cause__, StopIteration):
                    raise
                raise ArgumentError(f"`batches({epoch})`'s generator raised StopIteration inside it, which Python "
                                    "turns into RuntimeError (a next() on a used-up iterator, as `yield next(it)` "
                                    "does at its end); end the generator with `return`, or `yield from it`") from exc
    else:
        out = list(batches)
    if steps_per_epoch is not None:
        if callable(batches) and len(out) < steps_per_epoch:  # sized batches are refused before the run
            msg = (f"`batches({epoch})` gave {len(out)} batches, fewer than `steps_per_epoch`={steps_per_epoch}: the "
                   f"epoch runs {len(out)} steps{used_up}")
            if epoch == 0:  # before the run's steps: refused, as for a list
                raise ArgumentError(f"{msg}; pass steps_per_epoch={len(out)}, or give that many batches an epoch")
            if returned is None or not returned.get("warned_short"):  # once per run, not once per epoch
                if returned is not None:
                    returned["warned_short"] = True
                fix = "" if used_up else (f"; give {steps_per_epoch} batches every epoch, or pass a "
                                          "`steps_per_epoch` no larger than the fewest an epoch gives")
                warn(f"{msg}{fix} (said once per run)", UserWarning, stacklevel=user_stacklevel())
        out = out[:steps_per_epoch]
        if used_up and len(out) == steps_per_epoch and returned.get("replayed") and not returned.get("warned_again"):
            returned["warned_again"] = True  # (an endless iterator returned again runs on, and a resume restarts it)
            warn(f"`batches({epoch})` returned the {type(got).__name__} it returned for the epoch before, which "
                 "runs on from where that epoch stopped: a resumed run makes it afresh and starts it over, so it "
                 "trains on other batches than the run it continues; return an iterator made for the epoch, e.g. "
                 "`lambda epoch: itertools.islice(make_stream(seed=epoch), steps_per_epoch)` (said once per run)",
                 UserWarning, stacklevel=user_stacklevel())
    if not out:
        given = f" (`batches({epoch})` returned an empty {type(got).__name__})" if callable(batches) and not used_up \
            else ""
        raise ArgumentError(f"`batches` gave no batch for epoch {epoch}{given}{used_up}; every epoch needs at least "
                            "one: return one or more batches from `batches(epoch)`, or run fewer `epochs`")
    return out


def _generator_states(returned: dict | None):
    """Before ``batches(epoch)`` is called, in a run that checkpoints or resumes where torch is
    imported: torch's global generator and the one the epoch before's loader shuffled by, each with
    its state, for :func:`_warn_unreplayed_loader` to tell a call that seeds them (replayed) from one
    that leaves them running on; else None."""
    torch = sys.modules.get("torch")
    if torch is None or returned is None or not returned.get("replayed") or returned.get("warned_loader"):
        return None
    gens = [torch.default_generator] + [g for g in (returned.get("gen"),) if g is not None]
    return [(g, g.get_state()) for g in gens]


def _warn_unreplayed_loader(got, epoch: int, returned: dict | None, seen=None) -> None:
    """A run that checkpoints or resumes whose ``batches(epoch)`` returns a shuffling torch
    DataLoader drawing from torch's global generator, or from the generator of the epoch before's
    loader, that the call left as it was (``seen``: the generators' states before it): its order
    runs on from epoch to epoch, and a resumed run, starting the generator afresh, trained other
    batches than the run it continues, silently. A call that seeds the generator
    (``torch.manual_seed(epoch)``, ``g.manual_seed(epoch)``) replays its order. Warned once."""
    if seen is None or returned.get("warned_loader"):
        return
    if not (hasattr(got, "dataset") and hasattr(got, "batch_size")) or \
            type(getattr(got, "sampler", None)).__name__ != "RandomSampler":
        return
    own = got.sampler.generator
    gen = own if own is not None else seen[0][0]
    again, returned["gen"] = own is not None and returned.get("gen") is own, own
    if own is not None and not again:  # (a generator of the epoch's own: seeded for it, or new)
        return
    before = next((state for g, state in seen if g is gen), None)
    if before is None or not bool((gen.get_state() == before).all()):  # the call seeded it: replayed
        return
    if own is None:  # as just seeded (by the call, or the script with nothing drawn since): the next epoch tells
        torch = sys.modules["torch"]
        if bool((before == torch.Generator().manual_seed(torch.initial_seed()).get_state()).all()):
            return
    returned["warned_loader"] = True
    how = ("torch's global generator (no `generator=`)" if own is None
           else "one generator that runs on from epoch to epoch (the same generator for every epoch)")
    warn(f"`batches({epoch})` returned a DataLoader that shuffles by {how}: a resumed run does not replay that order, "
         "so it trains on other batches than the run it continues; make the epoch's loader seeded by epoch, "
         "`lambda epoch: DataLoader(dataset, batch_size, shuffle=True, generator=torch.Generator().manual_seed(epoch))`"
         ", or pass zo.Minibatches((X, y), batch_size, seed=0) (said once per run)", UserWarning,
         stacklevel=user_stacklevel())


def _checksum(a):
    """A checksum of a host array's bytes (NumPy, or a CPU torch tensor), else None."""
    try:
        if type(a).__module__.split(".")[0] == "torch":
            if a.device.type != "cpu":
                return None
            a = a.detach()
            try:
                a = a.numpy()
            except TypeError:  # a dtype NumPy has no name for (bfloat16, float8): its bytes
                a = a.contiguous().view(sys.modules["torch"].uint8).numpy() if a.dim() >= 1 else None
        if isinstance(a, np.ndarray) and a.ndim >= 1 and a.dtype != object:
            return zlib.crc32(np.ascontiguousarray(a).data)
    except Exception:  # an array whose bytes cannot be read here: not checked
        return None
    return None


def _leaves(b):
    """The arrays of a batch, through tuples, lists and dicts."""
    if isinstance(b, dict):
        for v in b.values():
            yield from _leaves(v)
    elif isinstance(b, (tuple, list)):
        for v in b:
            yield from _leaves(v)
    else:
        yield b


#: batches an endless generator may yield without steps_per_epoch before it is refused
DRAIN_LIMIT = 100_000


def _drain(it, epoch: int, limit=None) -> list:
    """The batches an iterator (a generator ``epoch -> batches``) yields, up to ``limit``: the
    epoch is drawn before its first step. A loader that refills one buffer for every batch
    rewrites what it yielded before (through the same array, a view of it of any size, or a
    tensor sharing it), or yields one list or dict whose items it replaces: every step would
    then train on the last batch written. Each array's bytes are summed as it is yielded and
    again at the end; a change is refused, naming the fix (a batch yielded again unchanged,
    such as the full batch every step, is taken)."""
    out, marks, boxes = [], [], {}
    for k, b in enumerate(it):
        if isinstance(b, (list, dict)):
            items = tuple(map(id, b.values() if isinstance(b, dict) else b))
            first = boxes.setdefault(id(b), (k, items, b))
            if first[1] != items:
                raise ArgumentError(
                    f"`batches({epoch})` yielded one {type(b).__name__} object in batch {first[0]} and again, its "
                    f"items replaced, in batch {k}: train draws an epoch's batches before its first step, so every "
                    "step would see the last batch; yield a new container for each batch")
        marks.extend((k, a, c) for a in _leaves(b) for c in [_checksum(a)] if c is not None)
        out.append(b)
        if limit is not None and len(out) >= limit:
            break
        if limit is None and len(out) > DRAIN_LIMIT:
            raise ArgumentError(f"`batches({epoch})` yielded more than {DRAIN_LIMIT:,} batches for one epoch (an endless "
                                "generator?): train draws an epoch before its first step; pass steps_per_epoch")
    for k, a, c in marks:
        if _checksum(a) != c:
            raise ArgumentError(
                f"`batches({epoch})` yielded batch {k}, then rewrote its memory before the epoch's last batch (a loader "
                "refilling one buffer): train draws an epoch's batches before its first step, so every step would "
                "see the last batch written; yield a copy of each batch (buf.copy(), or new arrays)")
    return out


def _batches_print(batches, steps_per_epoch=None, dict_rows=True):
    """What a resume compares of ``batches``: a Minibatches' settings and its arrays' shapes and
    dtypes, a list's number of batches and rows per batch (as a short hash: a long list would
    grow every checkpoint's header); a text for none (the oracle's own data); a text for a
    callable, whose batches are known per epoch (a resume compares nothing of them against a
    Minibatches or a list, but refuses the oracle's own data). The data's values are not read."""
    def dtype(a):
        return str(getattr(a, "dtype", type(a).__name__)).replace("torch.", "")  # the same data in NumPy or torch

    if isinstance(batches, Minibatches):
        return {"minibatches": {"batch_size": int(batches.batch_size), "seed": int(batches.seed),
                                "shuffle": bool(batches.shuffle), "drop_last": bool(batches.drop_last),
                                "fields": [[[int(n) for n in getattr(a, "shape", ())], dtype(a)]
                                           for a in batches.arrays]}}
    if batches is None:  # a run on the oracle's own data: resumed with batches (or without), it would differ
        return "none (the oracle's own data)"
    if callable(batches):
        return CALLABLE_BATCHES
    used = list(batches)[:steps_per_epoch]  # the batches a run draws
    # a dict batch ({"x": ..., "y": ...}, as a HuggingFace-style pipeline holds one) by its first field
    fields = [list(b.values()) if isinstance(b, dict) and dict_rows else b for b in used]
    rows = [_rows(b[0]) if isinstance(b, (tuple, list)) and b and getattr(b[0], "ndim", 1)
            and (hasattr(b[0], "__len__") or getattr(b[0], "shape", None)) else None for b in fields]
    return {"batches": len(used), "rows": _short_hash(rows)}


def _layout_print(oracle):
    """The oracle's flat layout as a resume compares it: a short hash of its parameters' names
    and shapes in flat order (``param_info``), or None for an oracle without named parameters.
    A vector laid out otherwise (another model; a TorchOracle built in other train/eval modes,
    which can order its parameters otherwise) would load into the wrong tensors."""
    info = getattr(oracle, "param_info", None)
    if not info or not all(hasattr(i, "name") and hasattr(i, "shape") for i in info):
        return None
    return _short_hash([[str(i.name), [int(n) for n in i.shape]] for i in info])


def _short_hash(rows) -> str:
    """A short hash of JSON-able ``rows``, for a checkpoint's header (a list of them would grow it)."""
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _bind_hint(oracle) -> str:
    """For a plain function that takes the batch as well (``loss(params, batch)``, ``loss(params, x, y)``):
    the DataOracle that runs it, written out, or ``""``."""
    try:
        params = inspect.signature(oracle).parameters.values()
    except (TypeError, ValueError):  # (a builtin without a signature)
        return ""
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2:
        return ""
    name = getattr(oracle, "__name__", "")
    who, name = (name, name) if name.isidentifier() else ("the oracle", "f")  # (a lambda: f = it)
    call = f"{name}(params, batch)" if len(positional) == 2 else f"{name}(params, *batch)"
    return (f"; {who} takes the batch after the params: give train an object whose bind(batch) returns the step's "
            f"loss, e.g. {'with f the oracle, ' if who == 'the oracle' else ''}"
            f"`class Data: bind = lambda self, batch: lambda params: {call}` and "
            "zo.train(Data(), params, batches=...) (docs/concepts.md, DataOracle)")


def _bound(oracle, batch, name: str = "batches", executor=None):
    """``oracle.bind(batch)``. A ``bind`` that rebinds the oracle in place and returns it (and
    has no ``unbind``) is one object for every batch: an executor that ships oracles once per
    object would keep the first batch, so the executor forgets it and ships it again. So does a
    ``bind`` without ``unbind`` that rebinds one bound object of its own in place and returns it
    (a new bound object is not held yet, so forgetting it costs nothing). With ``unbind`` the
    executor sees the batch: it sends a bound object's new batch, not the parent, again."""
    if batch is None:
        if not callable(oracle):
            raise ArgumentError("the oracle is not callable; pass `batches=` so it can be bound with `bind(batch)`")
        return oracle
    if not has_methods(oracle, "bind"):
        raise ArgumentError(
            f"`{name}` {'were' if name == 'batches' else 'was'} given but the oracle ({type(oracle).__name__}) has no "
            f"`bind(batch)`; drop `{name}` or wrap the model in a DataOracle (e.g. zoracle.adapters.torch.TorchOracle)"
            f"{_bind_hint(oracle)}"
        )
    bound = oracle.bind(batch)
    if not callable(bound):  # a bind that returns None (it bound in place): named, not "oracle must be callable"
        raise ArgumentError(f"{type(oracle).__name__}.bind(batch) returned {type(bound).__name__}, not an oracle: bind "
                            "must return the bound oracle (a bind that binds in place: end it with `return self`)")
    if executor is not None and callable(getattr(executor, "forget", None)) and split_bound(bound)[1] is None:
        executor.forget(bound)  # (a bound object made for this batch is not held yet: nothing to forget)
    return bound


def _steps_per_epoch(batches, steps_per_epoch):
    """Steps of one epoch when known before the run (for schedule fingerprints)."""
    if batches is None:
        return steps_per_epoch or 1
    if hasattr(batches, "__len__"):
        return min(len(batches), steps_per_epoch or len(batches))
    return steps_per_epoch
