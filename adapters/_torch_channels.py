"""Channel deltas for the step chain: one perturbation changes one output unit or channel of
its layer, absorbed into the next layer; the channels-last layout of the running suffix, and the rows
a delta couples."""

from __future__ import annotations

import functools
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._torch_chain import (BlockParams, Conv2dView, Step, _BATCHNORM, _BN, _DROPOUT, _as2d, _conv_index, _fork,
                           _identity, _pair, _split_roles, _t, conv_patches, patch_rows, unfold)


_ACT = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Hardtanh,
        nn.Softplus, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Identity) + _DROPOUT


def channel_ok(kind: str, out) -> bool:
    """Whether the channel-delta path applies to this block's output layout."""
    return ((kind == "linear" and out.dim() == 2) or (kind == "conv2d" and out.dim() in (2, 4))
            or (kind == "bn" and out.dim() in (2, 3, 4)) or (kind == "conv1d" and out.dim() == 3))


_POOL = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOL1D = (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)


def is_fork(step: Step) -> bool:
    return step.fn is _fork


def channel_local(step: Step, base) -> bool:
    """A step acting on each unit / channel separately (the delta stays in one channel)."""
    if step.fn is not None:
        return False
    m = step.module
    own = m.__dict__.get("forward")  # a forward the user set on the instance: not the closed form's layer
    return (own is None or getattr(own, "_norm_patch", False)) and (
        type(m) in _ACT or type(m) in _BN or (type(m) in _POOL and base.dim() == 4)
        or (type(m) in _POOL1D and base.dim() == 3))


def flatten_linear(steps, j: int, base) -> bool:
    """``Flatten()`` then ``Linear`` on a 3-D / 4-D activation: a one-channel delta is a small matmul."""
    if j + 1 >= len(steps) or base.dim() not in (3, 4):
        return False
    f, lin = steps[j], steps[j + 1]
    return (f.fn is None and type(f.module) is nn.Flatten and f.module.start_dim == 1 and f.module.end_dim == -1
            and lin.fn is None and type(lin.module) is nn.Linear)


def absorbs(step: Step, base_in) -> bool:
    """A layer that turns a one-channel delta into a dense output cheaply."""
    m = step.module
    if step.fn is not None:
        return False
    if type(m) is nn.Linear:
        return base_in.dim() == 2
    return ((type(m) is nn.Conv2d and base_in.dim() == 4) or (type(m) is nn.Conv1d and base_in.dim() == 3)) \
        and m.groups == 1


def channel_plan(kind: str, module, bp: BlockParams, local, dev) -> tuple:
    """``(ch, parts)``: the index work of :func:`perturbed_channels`, which depends only on the
    coordinates ``local`` (NumPy indices inside the block), the block's layer and the device,
    not on the parameters' values or the batch (so a caller may keep it for a mask's steps).
    ``ch`` is the channel each perturbation changes (torch), ``parts`` one ``(role, pos, ix)``
    for each parameter the coordinates touch (``pos`` as :func:`_split_roles` gives it, ``ix``
    its torch indices: the output channels, and the input columns of a Linear weight or the
    ``(ci, p, q, patch rows)`` of a convolution's)."""
    kind, module = _as2d(kind, module)
    ch = np.empty(len(local), dtype=np.int64)
    parts = []
    for role, pos, idx in _split_roles(bp, local, dev):
        if kind == "linear" and role == "weight":
            i, j = np.divmod(idx, module.in_features)
            ix = (_t(i, dev), _t(j, dev))
        elif kind == "conv2d" and role == "weight":
            i, ci, p, q = _conv_index(module, idx)
            ix = (_t(i, dev), (ci, p, q, patch_rows(module, ci, p, q, dev)))
        else:
            i = idx
            ix = (_t(i, dev),)
        parts.append((role, pos, ix))
        if pos is None:
            ch[:] = i
        else:
            ch[pos if isinstance(pos, slice) else pos.cpu().numpy()] = i
    return _t(ch, dev), tuple(parts)


def perturbed_channels(kind: str, module, x, out, cache, bp: BlockParams, local, h, plan=None):
    """``(ch, col)``: the channel each perturbation changes and its new values ``(k, B, ...)``.

    ``local`` holds NumPy indices inside the block, ``h`` the representable steps (torch);
    ``plan``: :func:`channel_plan` of ``local``, when the caller keeps it.
    """
    if kind == "conv1d":
        kind, module, x, out = _as2d(kind, module, x, out)
        ch, col = perturbed_channels(kind, module, x, out, cache, bp, local, h, plan)
        return ch, col.squeeze(2)
    k = len(local)
    dev = out.device
    ch, parts = channel_plan(kind, module, bp, local, dev) if plan is None else plan
    col = None  # allocated when the coordinates span several parameters (one parameter: its values are col)
    for role, pos, ix in parts:
        hr = h if pos is None else h[pos]
        if pos is not None and col is None:
            col = torch.empty((k, out.shape[0]) + tuple(out.shape[2:]), dtype=out.dtype, device=dev)
        # a run of positions is a contiguous slab of col: the values are computed into it (the
        # same elementwise operation, no temporary and no copy), else written by index
        dst = col[pos] if isinstance(pos, slice) else None
        if kind == "linear":
            if role == "weight":
                val = torch.addcmul(out.index_select(1, ix[0]).T, hr[:, None], x.index_select(1, ix[1]).T, out=dst)
            else:
                val = torch.add(out.index_select(1, ix[0]).T, hr[:, None], out=dst)
        elif kind == "conv2d":
            if role == "weight":
                ci, p, q, rows = ix[1]
                G = conv_patches(module, cache, ci, p, q, out, dev, rows)  # (B, k, Ho, Wo)
                val = torch.addcmul(out.index_select(1, ix[0]).transpose(0, 1), hr.view(-1, 1, 1, 1),
                                    G.transpose(0, 1), out=dst)
            else:
                val = torch.add(out.index_select(1, ix[0]).transpose(0, 1), hr.view(-1, 1, 1, 1), out=dst)
        else:  # bn
            it = ix[0]
            sl = out.index_select(1, it).transpose(0, 1)
            shape = (-1,) + (1,) * (sl.dim() - 1)
            if role == "weight":
                val = torch.addcmul(sl, hr.view(shape), cache.index_select(1, it).transpose(0, 1), out=dst)
            else:
                val = torch.add(sl, hr.view(shape), out=dst)
        if pos is None:
            col = val
        elif dst is None:
            col[pos] = val
    return ch, col


# the pools pooled_channels_last runs channels-last (run_owned checks the type before calling it)
CL_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AvgPool1d)


def pooled_channels_last(m, x):
    """``m(x)`` run channels-last for a stock ``MaxPool2d`` / ``AvgPool2d`` on a 4-D CPU input or
    ``AvgPool1d`` on a 3-D one, else None. On the CPU the channels-last kernels run many small
    planes 1.5-3x faster, with the same sum per output element (average pooling) or maximum,
    so the same values; not the adaptive average, whose channels-last kernel adds in another
    order. torch's average_pool1d is the 2-D one on ``(N, C, 1, L)``."""
    t = type(m)
    if x.device.type != "cpu" or t not in CL_POOLS:
        return None
    if t is not nn.AvgPool1d and x.dim() == 4 and not getattr(m, "return_indices", False):
        return m(x.contiguous(memory_format=torch.channels_last)).contiguous()
    if t is nn.AvgPool1d and x.dim() == 3:
        (kw,), (sw,), (pw,) = m.kernel_size, m.stride, m.padding
        y = F.avg_pool2d(x.unsqueeze(2).contiguous(memory_format=torch.channels_last), (1, kw), (1, sw), (0, pw),
                         m.ceil_mode, m.count_include_pad)
        return y.squeeze(2).contiguous()
    return None


@functools.lru_cache(maxsize=1024)
def _live_taps(size: int, kernel: int, stride: int, dilation: int, pad: int):
    """``(first, last, output size)`` of the kernel taps that read the input (not only its zero
    padding) at some output position along one dimension, or None when none does."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        return None
    live = []
    for t in range(kernel):
        off = t * dilation - pad  # input index of tap t at output 0; o * stride further at output o
        o = max(0, -(-max(0, -off) // stride))  # the first output position reading index >= 0
        if o < out and o * stride + off < size:
            live.append(t)
    return (live[0], live[-1], out) if live else None


def _cropped(size: int, kernel: int, stride: int, dilation: int, pad: int):
    """``(first tap, taps, new padding)`` of the kernel cropped to its live taps along one dimension,
    when that convolution has the same output size, else None."""
    live = _live_taps(size, kernel, stride, dilation, pad)
    if live is None:
        return None
    lo, hi, out = live
    taps, new_pad = hi - lo + 1, pad - lo * dilation
    if new_pad < 0 or (size + 2 * new_pad - dilation * (taps - 1) - 1) // stride + 1 != out:
        return None
    return lo, taps, new_pad


def cropped_conv(m, x):
    """``m(x)`` for a stock ``Conv2d`` whose zero padding leaves some kernel taps reading only
    zeros at every output position (a 3x3 or 5x5 kernel on the 1x1 or 2x2 maps of a network's last
    stages), with those taps dropped, else None. The taps dropped add exact zeros, so the sum is
    the same; on the CPU, oneDNN runs a 5x5 depthwise convolution of a 1x1 map as an im2col
    product (2-3 ms for 64 rows of 144 channels, 170 ms for 3,424), where the one tap left is a
    product by one weight per channel (0.01 and 0.4 ms), and a 3x3 convolution of a 1x1 map 4-5x
    slower than the 1x1 convolution it equals. Non-finite weights are left to the plain call (the
    im2col product multiplies the padding's zeros by them)."""
    if (x.device.type != "cpu" or type(m) is not nn.Conv2d or x.dim() != 4 or m.padding_mode != "zeros"
            or isinstance(m.padding, str) or "forward" in vars(m) or "_conv_forward" in vars(m)
            or m._forward_hooks or m._forward_pre_hooks or nn.modules.module._global_forward_hooks
            or nn.modules.module._global_forward_pre_hooks):
        return None
    w, b = m.weight, m.bias
    if not isinstance(w, torch.Tensor) or w.dim() != 4 or x.dtype != w.dtype or (b is not None and b.dtype != w.dtype):
        return None
    # the geometry F.conv2d reads: the weight's own shape (a weight replaced after construction
    # leaves kernel_size and the channel counts as they were), a number for a pair (m.stride = 2)
    (out_c, cg, kh, kw), groups = w.shape, m.groups
    stride, dilation, padding = _pair(m.stride), _pair(m.dilation), _pair(m.padding)
    if (x.shape[1] != cg * groups or out_c % groups or (b is not None and tuple(b.shape) != (out_c,))
            or not len(stride) == len(dilation) == len(padding) == 2
            or min(stride + dilation) < 1 or min(padding) < 0):
        return None  # the plain call's error
    (sh, sw), (dh, dw), (ph, pw) = stride, dilation, padding
    rows = _cropped(x.shape[2], kh, sh, dh, ph)
    cols = _cropped(x.shape[3], kw, sw, dw, pw)
    if rows is None or cols is None or (rows[1], cols[1]) == (kh, kw):
        return None
    if not bool(torch.isfinite(w).all()):
        return None
    (r0, th, ph2), (c0, tw, pw2) = rows, cols
    if (th, tw, ph2, pw2) == (1, 1, 0, 0) and cg == 1 and groups == out_c:
        # a depthwise convolution with one live tap: each channel times its weight at that tap
        # (no padding left, so output position o reads input position o * stride)
        y = x[:, :, ::sh, ::sw] * w[:, 0, r0, c0].view(1, out_c, 1, 1)
        return y if b is None else y.add_(b.view(1, out_c, 1, 1))
    wc = w[:, :, r0:r0 + th, c0:c0 + tw].contiguous()
    return F.conv2d(x, wc, b, stride, (ph2, pw2), dilation, groups)


def channel_step(step: Step, col, ch, groups_stats: bool):
    """Apply a channel-local step to the changed channels ``col`` (k, B, ...)."""
    m = step.module
    if type(m) in _POOL or type(m) is nn.AvgPool1d:  # pools each (perturbation, sample) plane
        y = pooled_channels_last(m, col)
        return m(col) if y is None else y
    if type(m) not in _BN:
        return _identity(col) if type(m) in _DROPOUT else m(col)
    shape = (col.shape[0],) + (1,) * (col.dim() - 1)
    if m.training or m.running_mean is None:
        # (k, B, ...) as one sample of k channels: the native kernel's per-channel statistics
        # over B * spatial values are each perturbation's batch statistics
        flat = col.reshape(1, col.shape[0], -1)
        w = None if m.weight is None else m.weight[ch]
        b = None if m.bias is None else m.bias[ch]
        return F.batch_norm(flat, None, None, w, b, True, 0.0, m.eps).view(col.shape)
    else:
        y = (col - m.running_mean[ch].view(shape)) * torch.rsqrt(m.running_var[ch].view(shape) + m.eps)
    if m.weight is not None:
        y = y * m.weight[ch].view(shape) + m.bias[ch].view(shape)
    return y


def absorb(step: Step, col, ch, base_in, base_out, delta=None):
    """Dense ``(k, B, ...)`` output of a Linear/Conv2d whose input changed in one channel
    (``delta``: ``col`` minus its base, when the caller has it)."""
    m = step.module
    if delta is None:
        delta = col - base_in.index_select(1, ch).transpose(0, 1)  # (k, B, ...)
    if type(m) is nn.Linear:
        w = m.weight.index_select(1, ch).T  # (k, out)
        Z = torch.empty((delta.shape[0],) + tuple(base_out.shape), dtype=base_out.dtype, device=base_out.device)
        return torch.addcmul(base_out.unsqueeze(0), delta.unsqueeze(-1), w.unsqueeze(1), out=Z)
    k = delta.shape[0]
    Z = rows_like(k, base_out)
    if type(m) is nn.Conv1d:  # as a Conv2d of height 1
        v = Conv2dView(m)
        d = one_channel_conv(v, delta.transpose(0, 1).unsqueeze(2), v.weight.index_select(1, ch).transpose(0, 1),
                             (1, base_out.shape[-1]))  # (B, k, O, 1, Lo)
        return torch.add(base_out.unsqueeze(0), d.squeeze(3).transpose(0, 1), out=Z)
    w = m.weight.index_select(1, ch).transpose(0, 1)  # (k, O, kh, kw)
    if _nhwc_absorb(m, base_out, Z):
        return _absorb_nhwc(m, delta, w, base_out, Z)
    d = one_channel_conv(m, delta.transpose(0, 1), w, tuple(base_out.shape[-2:])).transpose(0, 1)
    return torch.add(base_out.unsqueeze(0), d, out=Z)


def _nhwc_absorb(m, base_out, Z) -> bool:
    cl = torch.channels_last
    return (m.padding_mode == "zeros" and not isinstance(m.padding, str)
            and base_out.is_contiguous(memory_format=cl) and Z.flatten(0, 1).is_contiguous(memory_format=cl))


def _absorb_nhwc(m, delta, w, base_out, Z):
    """``base_out + conv(delta)`` written straight into the channels-last ``Z``: one batched
    ``baddbmm`` of each perturbation's patches (B*L, taps) by its channel's weights (taps, O)."""
    k, B = delta.shape[0], delta.shape[1]
    O = w.shape[1]
    taps = w.shape[2] * w.shape[3]
    U = unfold(delta.reshape((k * B, 1) + tuple(delta.shape[2:])), m.kernel_size, dilation=m.dilation,
               padding=m.padding, stride=m.stride, positions_first=True)  # (k*B, L, taps)
    L = U.shape[1]
    base = base_out.permute(0, 2, 3, 1).reshape(1, B * L, O)  # a view: channels-last
    Zp = Z.permute(0, 1, 3, 4, 2).view(k, B * L, O)  # a view of Z (channels-last rows)
    wt = w.reshape(k, O, taps).transpose(1, 2)  # (k, taps, O)
    torch.baddbmm(base.expand(k, B * L, O), U.view(k, B * L, taps), wt, out=Zp)
    return Z


_FEW_POSITIONS = 32  # output positions per sample up to which one_channel_conv makes a product per group


def one_channel_conv(m, inp, w, out_hw):
    """``(B, k, O, Ho, Wo)``: Conv2d ``m`` (no bias) applied to one input channel per group.

    ``inp`` is ``(B, k, H, W)``, ``w`` the ``(k, O, kh, kw)`` weights of each group's channel.
    On CPU, patches and one batched matrix product: several times faster than a grouped
    convolution with one input channel per group.
    """
    B, k = inp.shape[0], inp.shape[1]
    O = w.shape[1]
    if m.padding_mode != "zeros":
        inp = F.pad(inp, m._reversed_padding_repeated_twice, mode=m.padding_mode)
        pad = 0
    else:
        pad = m.padding
    if inp.device.type == "cpu" and not isinstance(pad, str):
        U = unfold(inp, m.kernel_size, dilation=m.dilation, padding=pad, stride=m.stride)  # (B, k*kh*kw, L)
        taps, L = w.shape[2] * w.shape[3], U.shape[-1]
        if B == 1 or L > _FEW_POSITIONS:
            d = torch.matmul(w.reshape(k, O, taps), U.view(B, k, taps, L))  # (B, k, O, L)
            return d.view((B, k, O) + tuple(out_hw))
        # few positions: one product per group over every sample's positions, (O, taps) x
        # (taps, B*L); the matmul broadcast over the samples makes B*k tiny products, each paying
        # a call's overhead (2-3.5x slower on the (32*k, 16, 3) x (3, 20) products of MNIST-1D's
        # first block; on long rows the broadcast wins, without the copy of the patches below)
        Uk = U.view(B, k, taps, L).permute(1, 2, 0, 3).reshape(k, taps, B * L)
        d = torch.bmm(w.reshape(k, O, taps), Uk)  # (k, O, B*L)
        return d.view((k, O, B) + tuple(out_hw)).permute(2, 0, 1, 3, 4)  # (B, k, O, Ho, Wo), a view
    d = F.conv2d(inp, w.reshape(k * O, 1, *w.shape[2:]), None, m.stride, pad, m.dilation, groups=k)
    return d.reshape((B, k, O) + tuple(d.shape[-2:]))


def absorb_flatten_linear(lin: nn.Linear, col, ch, base_in, base_out, delta=None):
    """Dense ``(k, B, out)`` output of ``Linear(Flatten(x))`` when ``x`` changed in one channel
    (``delta``: ``col`` minus its base, when the caller has it)."""
    k, B = col.shape[0], col.shape[1]
    if delta is None:
        delta = col - base_in.index_select(1, ch).transpose(0, 1)
    delta = delta.reshape(k, B, -1)  # (k, B, H*W)
    C = base_in.shape[1]
    w = lin.weight.view(lin.out_features, C, -1).index_select(1, ch).permute(1, 2, 0)  # (k, H*W, out)
    Z = torch.empty((k,) + tuple(base_out.shape), dtype=base_out.dtype, device=base_out.device)
    return torch.baddbmm(base_out.unsqueeze(0).expand(k, -1, -1), delta, w, out=Z)


#: ``nhwc``: the running suffix keeps its 4-D float32 CPU activations channels-last (set by
#: ``TorchOracle.suffix`` when every step after the block is known not to depend on the layout)
LAYOUT = threading.local()


def layout_free(step: Step) -> bool:
    """A step whose result does not depend on its inputs' memory layout (no ``.view``)."""
    if step.fn is None:
        return type(step.module).__module__.startswith("torch.nn")
    return step.fn is _fork or bool(getattr(step.fn, "layout_free", False))


def nhwc_on(t) -> bool:
    return (getattr(LAYOUT, "nhwc", False) and t.dim() == 4 and t.device.type == "cpu"
            and t.dtype == torch.float32)


def rows_like(k: int, base):
    """Uninitialized ``(k, B, ...)`` tensor for ``k`` copies of ``base``; flattened to ``k * B``
    rows it is channels-last for 4-D CPU float32 activations when ``LAYOUT.nhwc``."""
    if nhwc_on(base):
        Z = torch.empty((k * base.shape[0],) + tuple(base.shape[1:]), dtype=base.dtype,
                        memory_format=torch.channels_last)
        return Z.view((k,) + tuple(base.shape))
    return torch.empty((k,) + tuple(base.shape), dtype=base.dtype, device=base.device)


def tile(base, k: int):
    """``base`` repeated ``k`` times along the rows, in the layout of :func:`rows_like` (one copy)."""
    Z = rows_like(k, base)
    Z.copy_(base.unsqueeze(0).expand_as(Z))
    return Z.flatten(0, 1)


def materialize(base, col, ch):
    """Dense ``(k, B, ...)`` tensor: ``base`` repeated with channel ``ch[r]`` replaced by ``col[r]``."""
    k = col.shape[0]
    Y = rows_like(k, base)
    Y.copy_(base.unsqueeze(0).expand_as(Y))
    Y[torch.arange(k, device=base.device), :, ch] = col
    return Y


#: weight elements a gathered copy must hold per run of rows on one channel before
#: :func:`absorb_rows` reads each run's weights as a view (a call per run) instead
_RUN_ELEMENTS = 16384


def absorb_rows(kind: str, m, delta, chs, base_out_rows):
    """Like :func:`absorb` for ``M`` (perturbation, sample) rows: ``delta`` is ``(M, ...)``."""
    M = delta.shape[0]
    if kind == "flatten":
        C = m.in_features // delta[0].numel()
        W = m.weight.view(m.out_features, C, -1)
        b1, d1 = base_out_rows.unsqueeze(1), delta.reshape(M, 1, -1)
        gathered = M * W.shape[2] * W.shape[0]  # the per-row copy of the weights below: M * H*W * out floats
        if gathered >= 2 * _RUN_ELEMENTS and delta.device.type == "cpu":
            # a wide layer (100 MB a chunk on the study's largest model): each run of rows on one
            # channel reads that channel's weights as a view instead, the same products bit for bit;
            # runs are few, as ``chs`` follows the coordinates, sorted by parameter and output channel
            chans, counts = torch.unique_consecutive(chs, return_counts=True)
            if len(chans) * _RUN_ELEMENTS <= gathered:
                out = torch.empty_like(b1)
                at = 0
                for c, n in zip(chans.tolist(), counts.tolist()):
                    w = W[:, c].t().unsqueeze(0).expand(n, -1, -1)  # (n, H*W, out), a view
                    torch.baddbmm(b1[at:at + n], d1[at:at + n], w, out=out[at:at + n])
                    at += n
                return out.squeeze(1)
        w = W.index_select(1, chs).permute(1, 2, 0)  # (M, H*W, out)
        return torch.baddbmm(b1, d1, w).squeeze(1)
    if type(m) is nn.Linear:
        return torch.addcmul(base_out_rows, delta.unsqueeze(-1), m.weight.t().contiguous().index_select(0, chs))
    if type(m) is nn.Conv1d:  # as a Conv2d of height 1
        v = Conv2dView(m)
        w = v.weight.transpose(0, 1).contiguous().index_select(0, chs)  # (M, O, 1, k)
        d = one_channel_conv(v, delta.unsqueeze(0).unsqueeze(2), w, (1, base_out_rows.shape[-1]))[0]
        return base_out_rows + d.squeeze(2)  # (M, O, Lo)
    w = m.weight.transpose(0, 1).contiguous().index_select(0, chs)  # (M, O, kh, kw)
    d = one_channel_conv(m, delta.unsqueeze(0), w, tuple(base_out_rows.shape[-2:]))[0]  # (M, O, Ho, Wo)
    return base_out_rows + d


def sample_coupling(steps) -> bool:
    """Whether any of ``steps`` may mix samples (BatchNorm with batch statistics, or a
    captured function step not known to act row by row)."""
    for st in steps:
        if st.fn is not None and not st.rowwise:
            return True
        mods = st.module.modules() if st.module is not None else ()
        for m in mods:
            if isinstance(m, _BATCHNORM) and (m.training or m.running_mean is None):
                return True
    return False
