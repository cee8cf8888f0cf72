"""Exact or refuse, its reference: the plain ``model(x)`` loss every check compares with, in a
context with the RNG kept, the tolerance it compares within, and a split's retirement."""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from ._torch_chain import _DROPOUT, _NoDropout, _put_back_slots
from ._torch_layout import Chain, Step, to_torch


@contextlib.contextmanager
def plain_context(model: nn.Module):
    """The user's own forward, unpatched: dropout off (modules, functional, attention),
    buffers (running statistics) restored afterwards, nothing else touched."""
    flags = []
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    # the tensors registered: a forward assigning a buffer out of place (``self.count = self.count + 1``) registers another
    slots = [(m, name, b) for m in model.modules() for name, b in m._buffers.items() if b is not None]
    for m in model.modules():
        # a stock dropout's F.dropout is switched off by the mode below, which returns a new tensor where
        # torch's dropout does, as norm_context's does (p = 0 would return the input itself: ``out =
        # self.drop(h); out += h`` would write into h); another forward is run with p = 0
        if isinstance(m, _DROPOUT) and m.p and (type(m) not in _DROPOUT or "forward" in m.__dict__):
            flags.append((m, "p", m.p))
            m.p = 0.0
        if isinstance(m, (nn.MultiheadAttention, nn.RNNBase)) and m.dropout:
            flags.append((m, "dropout", m.dropout))
            m.dropout = 0.0
    mode = _NoDropout()
    try:
        with torch.no_grad(), mode:
            yield
    finally:
        for m, attr, v in flags:
            setattr(m, attr, v)
        _put_back_slots(slots)
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


def reference_loss(oracle, x, y) -> float:
    """Loss of the plain ``model(x)`` (module parameters as loaded), dropout off, on a copy of
    ``x``: a forward writing into its input (an in-place activation first, ``out += x`` on the
    input) wrote into the bound batch or a check's probe, whose next forward (the captured graph
    it is compared with) then read the written values and agreed with it."""
    with plain_context(oracle.model):
        out = oracle.model(x.clone())
        v = to_torch(oracle.loss_fn(out, y), out.device)
    return float(v.double().mean())


def rng_kept():
    """``torch.random.fork_rng`` of the CPU's and every GPU's generator: the checks' forwards (one
    drawing noise: torch.randn in forward, functional dropout) and their reseeding leave torch's
    random streams as the user seeded them."""
    # torch.manual_seed reseeds every CUDA device: every one's generator is put back
    return torch.random.fork_rng(list(range(torch.cuda.device_count())) if torch.cuda.is_available() else [])


def retire_split(oracle, reason: str) -> None:
    core = oracle._core
    core.reason = reason + "; every perturbation runs a full forward (no feature reuse)"
    core.blocks, core.block_steps, core.block_names = [], [], []
    core.info = [dataclasses.replace(i, read=True) for i in core.info]  # full forwards: no parameter is known unread
    core.chain = Chain([Step(module=core.model, name="model")])
    core.probe.clear()
    core.costs.clear()
    core.downstream.clear()
    oracle._warn_fallback()


def _close(got: float, want: float, scale: float, dtype) -> bool:
    # round-off only: a wrong path moves the loss by about step * |gradient|, far more.
    # BatchNorm over two samples amplifies round-off ~1e4 times (float64 keeps 1e-12)
    rel = 1e-9 if dtype == torch.float64 else 2000 * torch.finfo(dtype).eps
    return abs(got - want) <= rel * (abs(scale) + 1.0)
