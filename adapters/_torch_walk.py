"""TorchOracle's walk of its step chain (the ``_Walk`` mixin) behind ``prefix`` and ``suffix``."""

from __future__ import annotations

import contextlib
import numbers

import numpy as np
import torch

from zoracle._errors import ArgumentError

from ._torch_chain import generic_outputs, norm_context, perturbed_outputs, prepare_cache
from ._torch_channels import (absorb, absorb_flatten_linear, absorbs, channel_local, channel_plan, is_fork, channel_ok,
                              channel_step, flatten_linear, materialize, perturbed_channels, sample_coupling, LAYOUT,
                              layout_free, tile)
from ._torch_exact import shared_suffix
from ._torch_graph import downstream
from ._torch_guards import _copy, _model_state
from ._torch_layout import UNREAD, repeat_rows, run_owned
from ._torch_tensors import _Features, _keep, _nhwc, _same


#: what a core's index plans may hold before they are emptied (a fresh mask every step makes new
#: ones every step, for nothing): coordinate sets of ``coordinate_losses``, plans, and coordinates
#: in all (a dense step on a 121k model is 121k)
_PLAN_SETS = 8
_PLANS = 1024
_PLAN_COORDS = 2**18


def kept_plan(core, device, key, n: int, make):
    """``make()``, kept on ``core`` under ``key`` (the bytes of ``n`` coordinates, and what they
    are for, ``"coords"`` for a coordinate set): the index work a sparse step repeats while its
    coordinates stay the same. A new mask, or a batch of another shape that cuts a block into
    other chunks, has other keys; all are made again when the split (``core.blocks``, emptied when
    it retires), the step chain or ``device`` change. Every bound copy of an oracle shares its
    core, and its plans."""
    held = core.__dict__.get("index_plans")
    if held is None or held[0] is not core.blocks or held[1] is not core.chain or held[2] != device:
        held = core.index_plans = [core.blocks, core.chain, device, {}, 0, 0]
    plan = held[3].get(key)
    if plan is None:
        plan = make()
        sets = key[0] == "coords"
        if len(held[3]) >= _PLANS or held[4] + n > _PLAN_COORDS or held[5] + sets > _PLAN_SETS:
            held[3].clear()
            held[4] = held[5] = 0
        held[3][key] = plan
        held[4] += n
        held[5] += sets
    return plan


class _Walk:
    """TorchOracle's walk of its step chain behind ``prefix`` and ``suffix``: the features entering a
    block, the cached rows before it, and the per-block losses run in chunks."""

    def _features(self, params, block: int, states, now=None, ctx=None) -> _Features:
        """``prefix``'s work, the parameters loaded and ``states`` theirs (``now``: the model's
        :func:`_model_state`, when the caller has it; ``ctx``: the inert ``norm_context`` it
        runs in, when the caller has entered one)."""
        core = self._core
        si = core.block_steps[block]
        st = core.chain.steps[si]
        kind = core.kinds[block]
        state = states[si]
        with torch.no_grad(), (norm_context(self.model, loss_fn=self.loss_fn) if ctx is None
                               else contextlib.nullcontext()):
            out = cache = walk = None
            if kind:
                x = state[0]
                # a module step's output is in the states already (the same call on the same input)
                out = states[si + 1][0] if st.fn is None else st.module(x)
                cache = prepare_cache(kind, st.module, x, out)
                if channel_ok(kind, out):
                    walk = self._walk(si, out, state[1:], params, states if st.fn is None else None, now)
        mask = core.downstream.get(si, False)
        if mask is False:
            mask = core.downstream[si] = downstream(core.chain.steps, si)
        keep = None if mask is None or all(mask[si + 1:]) else (mask, states)
        return _Features(block, state, out, cache, self._x.shape[0], walk, keep)

    def _states(self, params, now=None) -> list:
        """The state entering every step at ``params`` (one chain run, cached per params):
        every node's value for the bound minibatch, read by prefixes and by suffixes for the
        steps a perturbation does not reach."""
        now = _model_state(self.model) if now is None else now
        cached = self._state_cache
        if cached is not None and _same(cached[0], params) and cached[2] == now and cached[3] == self._batch_key():
            return cached[1]
        self._load(params)
        with torch.no_grad(), norm_context(self.model, loss_fn=self.loss_fn):
            states = self._run_chain()[1]
        self._state_cache = (_copy(params), states, now, self._batch_key())
        return states

    def _run_chain(self, limit=None) -> tuple:
        """``(output, states)`` of one chain run on the bound batch (inside the caller's contexts):
        ``states`` holds the state entering every step and the last, or is None once their bytes
        pass ``limit``."""
        state, states, held = (self._x,), [(self._x,)], 0
        for st in self._core.chain.steps:
            state = st(state)
            if states is not None:
                if limit is not None:
                    held += sum(t.numel() * t.element_size() for t in state if torch.is_tensor(t))
                if limit is None or held <= limit:
                    states.append(state)
                else:
                    states = None
        return state[0], states

    def _cached_base_rows(self, params, now):
        """Per-sample base losses from the last plain call, if it was at these params and the
        model's state ``now``."""
        cached = getattr(self, "_base_rows", None)
        if cached is None:
            return None
        return cached[1] if _same(cached[0], params) and cached[2] == now and cached[3] == self._batch_key() else None

    def _walk(self, si: int, out, state_rest, params=None, states=None, now=None):
        """Follow a one-channel change through channel-local steps to the next Linear/Conv1d/Conv2d.

        ``states`` (the chain's states at ``params``, ``out`` being ``states[si + 1][0]``): module
        steps walked before any join or fork read their output there instead of running again.
        """
        steps = self._core.chain.steps
        j, h, rest = si + 1, out, tuple(state_rest)
        joins, fork_at = {}, None
        ran = states is not None  # h is states[j][0]: a module step's output is states[j + 1][0]

        def step_out(j, h):
            return states[j + 1][0] if ran and steps[j].fn is None else steps[j]((h,))[0]

        while j < len(steps):
            st = steps[j]
            if channel_local(st, h):
                h = step_out(j, h)
                ran = ran and st.fn is None
            elif st.channel_fn is not None and fork_at is None and h.dim() == 4:
                # a declared join (``relu(main + shortcut(skip))``): still one channel changed
                joins[j] = (h,) + rest
                new = st(joins[j])
                h, rest, ran = new[0], tuple(new[1:]), False
            elif is_fork(st) and fork_at is None:
                fork_at, rest, ran = j, (h,) + rest, False  # the skip branch carries the changed channel
            else:
                break
            j += 1
        if j < len(steps) and absorbs(steps[j], h):
            kind, base_out, start = "layer", step_out(j, h), j + 1
        elif flatten_linear(steps, j, h):
            flat = step_out(j, h)
            ran = ran and steps[j].fn is None
            kind, base_out, start = "flatten", step_out(j + 1, flat), j + 2
        else:
            kind, base_out, start = "", None, j
        # samples whose activations a perturbation leaves unchanged keep their base loss,
        # unless a later layer mixes samples (train-mode BatchNorm)
        base_losses = None
        if not self._core.scalar_loss and not sample_coupling(steps[start:]):
            now = _model_state(self.model) if now is None else now
            base_losses = None if params is None else self._cached_base_rows(params, now)
            if base_losses is None:
                # the same full forward a plain call makes, so the rows are bitwise those of
                # oracle(params) whichever process computed them (sharded = serial)
                with norm_context(self.model, 1, update=False, loss_fn=self.loss_fn):
                    out_ = self.model(self._x)
                base_losses = self._loss_rows(out_, self._y)
                if params is not None:
                    self._base_rows = (_copy(params), base_losses, now, self._batch_key())
        # base state after the walk (its first entry changed too when the walk forked), the
        # base states entering the joins walked, the fork's step
        # the dense suffix runs channels-last (``_nhwc``): keep the bases it copies in that layout
        LAYOUT.nhwc = not getattr(LAYOUT, "off", False) and all(layout_free(st) for st in steps[si + 1:])
        try:
            rest = _nhwc(rest)
            if kind == "layer" and base_out is not None:
                base_out = _nhwc((base_out,))[0]
        finally:
            LAYOUT.nhwc = False
        return (j, kind, h, base_out, base_losses, (rest, joins, fork_at))

    def _coordinate_plan(self, c) -> tuple:
        """``(c_t, blocks)`` for ``coordinate_losses`` on the int64 indices ``c``: ``c`` as a
        torch index, and for each block they touch, in ascending order, ``(b, sel, local, at)``:
        ``sel`` the positions in ``c`` of its coordinates, ``local`` their indices inside the
        block, ``at`` ``sel`` as a slice where it is one run (the planner's sorted order), else as
        a torch index. Kept per coordinate set (:func:`kept_plan`)."""
        core = self._core

        def make():
            starts = np.array([b.start for b in core.blocks])
            owner = np.searchsorted(starts, c, side="right") - 1
            blocks = []
            for b in np.unique(owner).tolist():
                sel = np.flatnonzero(owner == b)
                at = (slice(int(sel[0]), int(sel[-1]) + 1) if sel[-1] - sel[0] + 1 == len(sel)
                      else torch.as_tensor(sel, device=self.device))
                local = c[sel] - core.blocks[b].start
                sel.flags.writeable = local.flags.writeable = False  # kept: no caller may write into them
                blocks.append((b, sel, local, at))
            # a copy: ``as_tensor`` would share the caller's array, which it may write new coordinates into
            return torch.tensor(c, device=self.device), tuple(blocks)

        return kept_plan(core, self.device, ("coords", c.dtype.str, c.tobytes()), len(c), make)

    def _channel_plan(self, block: int, kind: str, module, local, dev) -> tuple:
        """:func:`channel_plan` of ``local`` in ``block``, kept per coordinate set (:func:`kept_plan`)."""
        return kept_plan(self._core, dev, ("channels", block, local.dtype.str, local.tobytes()), len(local),
                         lambda: channel_plan(kind, module, self._core.block_params[block], local, dev))

    def _check_block(self, block) -> int:
        n = len(self._core.blocks)
        if isinstance(block, bool) or not isinstance(block, numbers.Integral) or not 0 <= block < n:
            raise ArgumentError(f"`block` must be an integer in [0, {n}), got {block!r}")
        return int(block)

    def _block_losses(self, features, block: int, local, h, ctx=None) -> np.ndarray:
        """``suffix``'s work, the parameters loaded: ``local`` indices inside ``block``, ``h``
        their representable steps (torch); ``ctx``: the inert ``norm_context`` it runs in, when
        the caller has entered one."""
        core = self._core
        chunk = self._chunk(block, features)
        # on the CPU each chunk's losses leave torch at once: small tensors kept across chunks sat between
        # the chunks' freed temporaries, and the heap grew by a chunk's work per chunk (1.1 GiB for 40 MiB
        # forwards); on a GPU they stay there until the end (one copy to the host, no sync per chunk)
        out = np.empty(len(local)) if torch.device(self.device).type == "cpu" else []
        steps = core.chain.steps
        # the chunks' index plans, found or made before any chunk runs: made between the chunks, the
        # kept ones would sit between their freed temporaries as the losses did
        plans = [None] * -(-len(local) // chunk)
        if features.walk is not None and not core.shared[block] and core.block_names[block] != UNREAD:
            si = core.block_steps[block]
            plans = [self._channel_plan(block, core.kinds[block], steps[si].module, local[lo:lo + chunk],
                                        features.out.device) for lo in range(0, len(local), chunk)]
        LAYOUT.nhwc = not getattr(LAYOUT, "off", False) and all(
            layout_free(st) for st in steps[core.block_steps[block] + 1:])
        try:
            with torch.no_grad(), (norm_context(self.model, loss_fn=self.loss_fn) if ctx is None
                                   else contextlib.nullcontext(ctx)) as ctx:
                for lo, plan in zip(range(0, len(local), chunk), plans):
                    ctx.groups = 1
                    part = self._suffix_chunk(features, block, local[lo:lo + chunk], h[lo:lo + chunk], ctx, plan)
                    if isinstance(out, list):
                        out.append(part)
                    else:
                        out[lo:lo + chunk] = part.double().numpy()
        finally:
            LAYOUT.nhwc = False
        return torch.cat(out).double().cpu().numpy() if isinstance(out, list) else out

    def _suffix_chunk(self, feats: _Features, block: int, local, h, ctx, plan=None) -> torch.Tensor:
        """One chunk's losses (``plan``: the chunk's :meth:`_channel_plan`, when the caller has it)."""
        core = self._core
        ctx.reset()  # a chunk's forward starts from the buffers the query found, as the first one did
        si = core.block_steps[block]
        st = core.chain.steps[si]
        kind = core.kinds[block]
        k = len(local)
        if core.shared[block]:
            return shared_suffix(self, feats, block, local, h, ctx)
        if core.block_names[block] == UNREAD:  # no step reads these (the split's check saw model(x) agree)
            return self._loss(feats.state[0], 1).expand(k)
        if True:
            if feats.walk is not None:
                ch, col = perturbed_channels(kind, st.module, feats.state[0], feats.out, feats.cache,
                                             core.block_params[block], local, h,
                                             plan or self._channel_plan(block, kind, st.module, local, feats.out.device))
                stop, absorbed, base_in, base_out, base_losses, (base_rest, joins, fork_at) = feats.walk
                skip = None
                for j in range(si + 1, stop):
                    if j in joins:
                        col = core.chain.steps[j].channel_fn(col, ch, joins[j])
                    elif j == fork_at:
                        skip = col
                    else:
                        col = channel_step(core.chain.steps[j], col, ch, True)
                # the change of the perturbed channel, (k, B, ...): the sparse rows and the
                # absorbing layer both start from it
                D = None
                if base_losses is not None or absorbed:
                    D = col - base_in.index_select(1, ch).transpose(0, 1)
                if base_losses is not None:
                    sparse = self._sparse_rows(feats, col, ch, k, skip, D)
                    if sparse is not None:
                        return sparse
                rest = tuple(tile(s, k) for s in base_rest[1 if skip is not None else 0:])
                if skip is not None:
                    sk = materialize(base_rest[0], skip, ch)
                    rest = (sk.reshape((-1,) + tuple(sk.shape[2:])),) + rest
                if absorbed == "layer":
                    Y, start = absorb(core.chain.steps[stop], col, ch, base_in, base_out, D), stop + 1
                elif absorbed == "flatten":
                    lin = core.chain.steps[stop + 1].module
                    Y, start = absorb_flatten_linear(lin, col, ch, base_in, base_out, D), stop + 2
                else:
                    Y, start = materialize(base_in, col, ch), stop
                ctx.groups = k
                state = run_owned(core.chain.steps, _nhwc((Y.reshape((-1,) + tuple(Y.shape[2:])),) + rest), start,
                                  *_keep(feats, k))
                return self._loss(state[0], k)
            rest = tuple(repeat_rows(s, k) for s in feats.state[1:])
            if kind:
                Y = perturbed_outputs(kind, st.module, feats.state[0], feats.out, feats.cache,
                                      core.block_params[block], local, h)
                state = (Y.reshape((-1,) + tuple(Y.shape[2:])),) + rest
            else:
                outs = generic_outputs(st, feats.state, core.block_params[block], local, h, ctx.reset)
                state = tuple(torch.cat([o[i] for o in outs]) for i in range(len(outs[0])))
            ctx.groups = k
            state = run_owned(core.chain.steps, _nhwc(state), si + 1, *_keep(feats, k))
            return self._loss(state[0], k)
