"""TorchOracle's batch machinery (the ``_Batches`` mixin): keys, targets, the per-sample loss,
chunks within the memory budget, and the batched (vmap) and looped full forwards."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from zoracle._errors import ArgumentError, user_stacklevel, warn

from ._torch_chain import norm_context, vmap_safe
from ._torch_channels import absorb, absorb_rows
from ._torch_exact import _reaches, _vmap_off, ensure_split, parameter_names, _one_tensor, vmap_failed_text
from ._torch_guards import _version
from ._torch_layout import class_major, class_major_loss, run_owned, to_torch
from ._torch_tensors import _CPU_BUDGET, _GPU_BUDGET, _keep, _nonzero_rows, _rows


class _Batches:
    """TorchOracle's batches: their keys and targets, the per-sample loss, the chunks a batch runs in
    within the memory budget, and the batched (vmap) and looped full forwards."""

    # ---------------------------------------------------------------- evaluation helpers
    def _require_batch(self):
        if self._x is None:
            raise ArgumentError(
                "TorchOracle has no minibatch: pass batches= to zo.train (batch= to zo.zo_grasp), batch=(x, y) "
                "to TorchOracle(...), or call oracle.bind((x, y)) and query the returned oracle"
            )

    def _warn_fallback(self):
        core = self._core
        if not core.warned and core.reason and not core.blocks:
            core.warned = True
            warn(f"TorchOracle: {core.reason}", RuntimeWarning, stacklevel=user_stacklevel())

    def _key(self):
        return tuple(self._x.shape[1:])

    def _batch_id(self) -> tuple:
        """The bound batch's identity and versions (copies of one bound oracle share it)."""
        return id(self._x), self._batch_key()

    def _batch_key(self) -> tuple:
        """The bound batch's version counters: bind keeps the caller's tensors when they need no
        conversion, so an in-place write into them (an augmentation, a reused input buffer) must
        retire the activations and base losses cached for the old values. An aligned copy of the
        caller's tensor is made again here when that tensor was written since (its versions are
        the key then)."""
        aligned = getattr(self, "_aligned_from", None)
        if aligned is None:
            return _version(self._x), None if self._y is None else _version(self._y)
        src, seen = aligned
        now = [_version(t) if t is not None else None for t in src]
        if now != seen:
            if src[0] is not None:
                self._x = src[0].clone(memory_format=torch.contiguous_format)
            if src[1] is not None:
                self._y = src[1].clone(memory_format=torch.contiguous_format)
            self._aligned_from = (src, now)
        return (now[0] if src[0] is not None else _version(self._x),
                now[1] if src[1] is not None else (None if self._y is None else _version(self._y)))

    def _targets(self, k: int):
        y = self._y
        if y is None or k == 1:
            return y
        cached = getattr(self, "_ycache", None)
        if cached is None or cached[0] is not y or cached[1] != _version(y) or cached[2].shape[0] < k * y.shape[0]:
            self._ycache = cached = (y, _version(y), y.repeat((k,) + (1,) * (y.dim() - 1)))
        return cached[2][: k * y.shape[0]]

    def _loss(self, outputs, k: int) -> torch.Tensor:
        """Mean loss of each of ``k`` perturbation groups of ``B`` rows, shape ``(k,)``."""
        _one_tensor(outputs)
        B = self._x.shape[0]
        if self._core.scalar_loss:
            # a mean-reduced loss_fn: one call per perturbation group
            y = self._y
            parts = outputs.reshape((k, B) + tuple(outputs.shape[1:]))
            return torch.stack([self._scalar(parts[r], y) for r in range(k)])
        vals = _rows(to_torch(self._call_loss(outputs, self._targets(k)), outputs.device))
        if vals.dim() != 1 or vals.shape[0] != k * B:
            raise ArgumentError(f"`loss_fn` must return per-sample losses of shape ({k * B},) or one mean "
                                f"loss (a scalar) for {k * B} rows, got shape {tuple(vals.shape)}")
        return vals.reshape(k, B).mean(dim=1)

    def _call_loss(self, outputs, targets):
        """``loss_fn(outputs, targets)``. A stock ``nn.CrossEntropyLoss(reduction="none")`` on
        2-15 classes runs on the logits laid out class-major (``class_major_loss``: the same
        loss, 4-8x faster on the CPU for the many narrow rows of a step; every loss the oracle
        computes, plain calls included, takes the same layout, so base and perturbed rows agree)."""
        if class_major(self.loss_fn):
            v = class_major_loss(self.loss_fn, outputs, targets)
            if v is not None:
                return v
        return self.loss_fn(outputs, targets)

    def _scalar(self, outputs, targets) -> torch.Tensor:
        _one_tensor(outputs)
        v = to_torch(self.loss_fn(outputs, targets), outputs.device)
        if v.numel() != 1 and getattr(self._core, "group_rows", False):
            return _rows(v).mean()  # one group's coupled per-sample losses: their mean
        if v.numel() != 1:
            raise ArgumentError(f"`loss_fn` returned a scalar for the first minibatch but shape {tuple(v.shape)} "
                                "now; it must keep one convention")
        return v.reshape(())

    def _loss_rows(self, outputs, targets) -> torch.Tensor:
        """Per-sample losses of ``outputs`` (one loss_fn call), checked to have one per row."""
        _one_tensor(outputs)
        n = outputs.shape[0]
        vals = _rows(to_torch(self._call_loss(outputs, targets), outputs.device))
        if n == 1 and vals.dim() == 0:  # one sample's loss, squeezed by the loss (a last minibatch of one)
            vals = vals.reshape(1)
        if vals.dim() != 1 or vals.shape[0] != n:
            raise ArgumentError(f"`loss_fn` must return per-sample losses of shape ({n},) or one mean loss "
                                f"(a scalar), got {tuple(vals.shape)}")
        return vals

    def _sparse_rows(self, feats, col, ch, k, skip=None, D=None):
        """Losses when most (perturbation, sample) pairs leave the activations unchanged.

        Only the changed pairs run through the rest of the network; the others keep the
        base per-sample loss. Returns None when too many pairs changed to be worth it.
        ``D``: the change of the perturbed channel, ``col`` minus its base (computed if None).
        """
        steps = self._core.chain.steps
        stop, absorbed, base_in, base_out, base_losses, (base_rest, _, _) = feats.walk
        B = base_in.shape[0]
        if D is None:
            D = col - base_in.index_select(1, ch).transpose(0, 1)  # (k, B, ...) change of the perturbed channel
        changed = _nonzero_rows(D, k * B)
        if skip is not None:  # the walk forked: the skip branch changed in the same channel
            changed |= _nonzero_rows(skip - base_rest[0].index_select(1, ch).transpose(0, 1), k * B)
        flat = changed.nonzero().squeeze(1)
        n = flat.shape[0]
        if n > 0.7 * k * B:
            return None
        L = base_losses.unsqueeze(0).expand(k, B).clone()
        if n:
            r, b = torch.floor_divide(flat, B), torch.remainder(flat, B)  # flat // B, flat % B (no operator wrapper)
            tail = tuple(col.shape[2:])
            delta = D.reshape((k * B,) + tail).index_select(0, flat)
            chs = ch.index_select(0, r)
            m = steps[stop].module if absorbed == "layer" else None
            if absorbed == "layer" and type(m) is nn.Linear and 2 * n > k * B:
                # many changed rows: the broadcast rank-one update of all k*B rows and one
                # gather beat two gathers of the changed rows
                Y = absorb(steps[stop], col, ch, base_in, base_out, D).reshape(k * B, -1).index_select(0, flat)
                start = stop + 1
            elif absorbed:
                m = steps[stop + 1].module if absorbed == "flatten" else m
                Y = absorb_rows(absorbed, m, delta, chs, base_out.index_select(0, b))
                start = stop + (2 if absorbed == "flatten" else 1)
            else:
                Y = base_in.index_select(0, b)
                Y[torch.arange(n, device=Y.device), chs] = col.reshape((k * B,) + tail).index_select(0, flat)
                start = stop
            rest = tuple(s.index_select(0, b) for s in base_rest)
            if skip is not None:
                rest[0][torch.arange(n, device=b.device), chs] = skip.reshape((k * B,) + tail).index_select(0, flat)
            if n == 1 and B > 1:
                # one changed sample: run it twice, as a batch of two, since a forward written for
                # batches (``fc(pool(x).squeeze())``) loses the batch dimension of a batch of one
                Y, rest, b = torch.cat([Y, Y]), tuple(torch.cat([s, s]) for s in rest), b.repeat(2)
            out = run_owned(steps, (Y,) + rest, start, *_keep(feats, rows=b))[0]
            vals = self._loss_rows(out, None if self._y is None else self._y.index_select(0, b))[:n]
            L.view(-1).index_copy_(0, flat, vals.to(L.dtype))
        return L.mean(dim=1)

    def _probe(self):
        """Bytes per sample of the state after each step (measured once per input shape)."""
        key = self._key()
        if key not in self._core.probe:
            sizes = []
            with torch.no_grad(), norm_context(self.model, loss_fn=self.loss_fn):
                state = (self._x,)
                B = self._x.shape[0]
                for st in self._core.chain.steps:
                    state = st(state)
                    # a step may keep a tuple (an LSTMCell's (h, c), read whole by the next call)
                    tensors = torch.utils._pytree.tree_leaves(state)
                    sizes.append(sum(s.numel() * s.element_size() for s in tensors if isinstance(s, torch.Tensor)) // B)
            self._core.probe[key] = sizes
        return self._core.probe[key]

    def _budget_bytes(self) -> int:
        """The memory budget of batched work and kept activations: ``budget_bytes`` or the device's default."""
        return self._budget or (_GPU_BUDGET if self.device.type == "cuda" else _CPU_BUDGET)

    def _chunk(self, block: int, feats=None) -> int:
        """Perturbations per batched suffix call within the memory budget.

        Dense path: ``3 * B *`` the largest per-sample state of the suffix. Channel-delta
        path: one channel up to the absorbing layer, dense states after it.
        """
        sizes = self._probe()
        si = self._core.block_steps[block]
        B = self._x.shape[0]
        if feats is not None and feats.walk is not None:
            stop, absorbed, base_in = feats.walk[:3]
            start = stop + {"layer": 1, "flatten": 2}.get(absorbed, 0)
            one = base_in[:, :1].numel() * base_in.element_size()  # one channel, all samples
            dense = max(sizes[start - 1:], default=0) * B
            per = 3 * (one + dense)
        else:
            per = 3 * max(sizes[si:]) * B
        budget = self._budget_bytes()
        return max(1, budget // max(1, per))

    def _measure_costs(self) -> list:
        """Time each step on the bound batch; a block's cost is the time of its suffix."""
        steps = self._core.chain.steps
        times = np.zeros(len(steps))
        with torch.no_grad(), norm_context(self.model, loss_fn=self.loss_fn):
            for _ in range(2):
                state = (self._x,)
                for i, st in enumerate(steps):
                    t0 = time.perf_counter()
                    state = st(state)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    times[i] += time.perf_counter() - t0
        tail = np.cumsum(times[::-1])[::-1]
        costs = np.array([tail[si] for si in self._core.block_steps])
        return (costs / costs.max()).tolist()

    def _full_batched(self, P: torch.Tensor) -> torch.Tensor:
        k = P.shape[0]
        out = torch.empty(k, dtype=P.dtype, device=P.device)
        B = self._x.shape[0]
        sizes = self._probe()
        budget = self._budget_bytes()
        chunk = max(1, budget // max(1, 3 * max(sizes) * B + P.shape[1] * P.element_size()))
        was_on = self._core.vmap_ok
        for lo in range(0, k, chunk):
            out[lo:lo + chunk] = self._full_chunk(P[lo:lo + chunk])
            if was_on and not self._core.vmap_ok and lo:
                # vmap turned off in this chunk: the chunks before it, vmapped, are computed again as every
                # later call computes them (one forward each), so that this call equals the next bit for bit
                # (vmap's batched kernels and single forwards round differently on some CPUs: oneDNN on AVX2)
                for before in range(0, lo, chunk):
                    out[before:before + chunk] = self._full_loop(P[before:before + chunk])
                was_on = False
        return out

    def _full_chunk(self, P: torch.Tensor) -> torch.Tensor:
        core = self._core
        if core.vmap_ok and vmap_safe(self.model):
            try:
                out = self._vmapped(P)
                if -1 not in core.vmap_reached:  # once: every parameter put in by name reaches every read of it
                    names = parameter_names(self.model)
                    with torch.no_grad(), norm_context(self.model) as ctx:
                        ok = _reaches(self, ctx, [names[id(p)] for p in core.params], core.params)
                        # the one read through a copy, by name (once, two forwards a tensor: the warning
                        # named none and showed `self.weight` as the attribute to read)
                        bad = None if ok else next((names[id(p)][0] for p in core.params
                                                    if not _reaches(self, ctx, [names[id(p)]], [p])), None)
                    if not ok:
                        _vmap_off(self, "a parameter" if bad is None else f"parameter {bad!r}", bad)
                        return self._full_loop(P)
                    core.vmap_reached.add(-1)
                return out
            except Exception as exc:  # an op vmap cannot batch, or the forward's own error: the loop tells
                out = self._full_loop(P)  # raises the forward's own error (vmap stays on)
                core.vmap_ok = False  # the loop ran where vmap failed: say so once
                warn(vmap_failed_text(exc, "batched queries run one full forward each", self.model), RuntimeWarning,
                     stacklevel=user_stacklevel())
                return out
        return self._full_loop(P)

    def _full_loop(self, P: torch.Tensor) -> torch.Tensor:
        """Losses of the rows of ``P``, one full forward each."""
        k = P.shape[0]
        core = self._core
        outs = []
        ensure_split(self)  # the loop runs the captured chain
        with torch.no_grad(), norm_context(self.model, loss_fn=self.loss_fn) as ctx:
            for r in range(k):
                self._load(P[r])
                ctx.reset()
                outs.append(core.chain.run((self._x,))[0])
        with torch.no_grad():
            return self._loss(torch.cat(outs), k)

    def _vmapped(self, P: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call, vmap

        core, k = self._core, P.shape[0]
        model = self.model
        names = parameter_names(model)  # a tied weight under each of its names
        keys = [names[id(p)] for p in core.params]
        x = self._x

        def run(flat):
            d = {key: flat[i.slice].view(i.shape) for ks, i in zip(keys, core.info) for key in ks}
            return functional_call(model, d, (x,), strict=False, tie_weights=False)

        with torch.no_grad(), norm_context(model):
            outs = vmap(run, randomness="error")(P)  # (k, B, ...)
            return self._loss(outs.reshape((k * x.shape[0],) + tuple(outs.shape[2:])), k)
