"""``zoracle.train``'s checkpoint writer: what a save holds, and whether the file at the path is still
the one this run wrote last (another writer's file is not overwritten)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from ._backend import to_numpy
from ._bar import _beside, log
from ._checkpoint import CheckpointError, Records, save_checkpoint, save_fix, writer_lock
from ._errors import ArgumentError, log_path, logging_kept_out, user_stacklevel, warn
from ._resume import WARNED
from ._train_records import _state_arrays

__all__ = ["Saver", "last_mask"]


def last_mask(masks, steps_hist, epoch, step):
    """The mask of the last step taken (of the next step, before any): what the checkpoint
    stores as the current mask and the result returns."""
    at = steps_hist[-1] if steps_hist else {"epoch": epoch, "step": step}
    return masks.coordinates(at["epoch"], step=at["step"])


class Saver:
    """Writes a run's checkpoint at ``checkpoint`` (None: saves nothing) with what stays fixed over
    the run; each save is given what changes."""

    def __init__(self, checkpoint, *, oracle, optimizer, snes, sparse, masks, keep, layout, config, root, prints,
                 modes, cadence, steps_hist, epoch_hist, saved):
        self.checkpoint, self.oracle, self.optimizer = checkpoint, oracle, optimizer
        self.snes, self.sparse, self.masks, self.keep = snes, sparse, masks, keep
        self.layout, self.config, self.root, self.prints, self.modes = layout, config, root, prints, modes
        self.cadence = cadence
        # each record encoded at its first save
        self.steps_text, self.epochs_text = Records(steps_hist), Records(epoch_hist)
        # the step the file at `checkpoint` holds (resumed from that file: the step it held)
        self.saved = saved
        # the file this run wrote last (or resumed from, or found at its start: an earlier run's, overwritten
        # with a warning, or None): a file another run wrote before this run's first save is not overwritten
        self.written = self.stamp() if checkpoint is not None else None
        self.warned_at = None  # the step whose final save failed (warned once)

    def stamp(self):
        """What identifies the file at ``checkpoint`` as one save's (each save is a new file, renamed
        into place); None when there is none."""
        try:
            st = os.stat(self.checkpoint)
        except OSError:
            return None
        return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size

    def save(self, last, *, params, state, est_state, step, epoch, pos, nfev, checked, steps_hist, bar, progress,
             stacklevel=4, warned=()):
        """Write the checkpoint; ``last``: the run's final save (a failure warns, the result is
        returned). ``warned``: the keys of the warnings the run gave (its resumes give them no more), kept in
        the member ``warned`` (none where there are none: such a file is the one written before)."""
        checkpoint, oracle, optimizer, snes, sparse = (self.checkpoint, self.oracle, self.optimizer, self.snes,
                                                       self.sparse)
        keep, layout, config, root, prints, modes = (self.keep, self.layout, self.config, self.root, self.prints,
                                                     self.modes)
        steps_text, epochs_text = self.steps_text, self.epochs_text
        if checkpoint is None or (last and self.warned_at == step):  # its failure at this step was warned
            return
        arrays = {"params": to_numpy(params), **_state_arrays(state)}
        if snes:
            arrays["est/sigma"] = est_state
        if callable(getattr(oracle, "state_arrays", None)):  # e.g. BatchNorm running statistics
            arrays.update({f"oracle/{k}": to_numpy(v) for k, v in oracle.state_arrays().items()})
        if warned:  # (a member, not a header field: zoracle 0.2.0 reads past it, and refuses a field it does not know)
            arrays[WARNED] = np.frombuffer(json.dumps(sorted(warned)).encode("utf-8"), dtype=np.uint8)
        if sparse:
            arrays["ratios"] = keep
            arrays["coordinates"] = last_mask(self.masks, steps_hist, epoch, step)
        for k, (shape, dtype) in layout.items():
            a = arrays.get(k)
            if a is not None and np.shape(a) == shape and np.asarray(a).dtype == dtype:
                continue
            got = "missing" if a is None else f"{np.asarray(a).dtype} of shape {np.shape(a)}"
            whose = (f"`optimizer` {optimizer.name!r}: its state's field {k[4:]!r}" if k.startswith("opt/") else
                     f"the oracle's state_arrays() entry {k[7:]!r}")
            err = ArgumentError(
                f"{whose} is {got} at step {step}, where the run started it as {dtype} of shape {shape}: a resume "
                f"reads it in the shape and dtype it had at the start, so this checkpoint could not be resumed; "
                f"start it as it stays (0.0 rather than 0, np.zeros(...) of the final shape)")
            if not last:
                raise err
            warn(f"train: {err}; no checkpoint written at the end, the result is returned", UserWarning,
                 stacklevel=stacklevel)
            return
        meta = {"config": config, "root": str(root), "step": step, "epoch": epoch, "pos": pos, "nfev": nfev,
                "opt_count": int(state.count), "history": {"steps": steps_text, "epochs": epochs_text},
                "fingerprints": prints, "modes": modes}
        if checked:  # (absent where no fast path was checked: a reader before the field reads the file)
            meta["fast_paths"] = dict(checked)
        with writer_lock(checkpoint):  # the check, the save and its stamp: one step for other writers
            if self.stamp() not in (None, self.written):  # not the file this run wrote last (or found at its start)
                since = (f"this run saved (or resumed from) step {self.saved}" if self.saved is not None else
                         "this run started (before its first save)")
                err = CheckpointError(
                    f"the checkpoint {os.fspath(checkpoint)!r} was rewritten by another writer since {since}: two runs "
                    "given the same checkpoint path overwrite each other's saves, and a resume continues whichever saved "
                    "last; give each run its own checkpoint path")
                if not last:
                    raise err
                warn(f"train: {err}; the file is left as it is and the result is returned", UserWarning,
                     stacklevel=stacklevel)
                self.warned_at = step  # not again at the end
                return
            try:
                save_checkpoint(checkpoint, arrays, meta)
            except OSError as exc:  # a full disk, a folder removed: which file, and what is still there
                if self.saved is None:
                    held = "no checkpoint of this run was written before"
                elif self.stamp() is None:  # deleted meanwhile (to free space): resume=True would start over
                    held = (f"the checkpoint of step {self.saved} is no longer there (deleted since), so resume=True "
                            "would start the run over")
                else:
                    held = f"the checkpoint there still holds step {self.saved} (resume=True continues from it)"
                err = CheckpointError(f"the checkpoint {os.fspath(checkpoint)!r} could not be written at step {step} "
                                      f"({type(exc).__name__}: {exc}); {held}; {save_fix(exc)}")
                if not last:
                    raise err from exc
                warn(f"train: {err}; the result is returned", UserWarning, stacklevel=stacklevel)
                self.warned_at = step  # not again at the end
                return
            self.saved = step
            self.written = self.stamp()
            self.cadence.saved()
        if log.isEnabledFor(logging.INFO):  # a log shipper's heartbeat: checkpoint_every="10min" gives one that often
            fields = {"path": os.fspath(checkpoint), "steps": int(step), "total_nfev": int(nfev),
                      "loss": steps_hist[-1]["loss"] if steps_hist else None}
            with _beside(bar, progress, clear_now=True):
                with logging_kept_out():
                    log.info("checkpoint %s saved after %d steps, %d queries", log_path(fields["path"]), step, nfev,
                             extra={"zoracle_event": "checkpoint", "zoracle": fields}, stacklevel=user_stacklevel())
