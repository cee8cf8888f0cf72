"""Hybrid mode: a black-box function as a torch op whose backward is estimated by ZO."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from zoracle._backend import is_cupy, namespace
from zoracle._errors import ArgumentError, OracleError, Shown, estimator_hint
from zoracle._estimators import CGE, RGE, SNES, as_generator, check_step

__all__ = ["blackbox", "BlackBox"]

#: most bytes of perturbed copies of the input a CGE backward holds at once
COPY_BYTES = 256 << 20


def _as_tensor(value, like: torch.Tensor, dtype=None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value
    elif is_cupy(value):
        t = torch.from_dlpack(value)
    else:
        a = np.ascontiguousarray(np.asarray(value))
        t = torch.from_numpy(a if a.flags.writeable else a.copy())  # a read-only result (np.broadcast_to)
    if t.is_complex() or t.dtype == torch.bool:  # the cast would drop the imaginary part, or count booleans
        raise TypeError(f"expected real numbers, got {t.dtype}")
    out = t.detach().to(device=like.device, dtype=dtype or like.dtype)
    if out.data_ptr() == t.data_ptr():  # no copy made: an fn that writes into one output buffer
        out = out.clone()              # call after call must not change the outputs already kept
    return out


def _repeat(t, k: int):
    """``t`` repeated ``k`` times along its rows, of its own kind: ``fn`` sees a NumPy context as
    NumPy in the backward as in the forward. Always a fresh, writable copy (as the forward's own
    context is writable), whatever ``t``'s number of rows."""
    if not isinstance(t, torch.Tensor):
        xp = namespace(t) if is_cupy(t) else np  # a CuPy context stays on its device (np.asarray refuses it)
        a = xp.asarray(t)
        return xp.tile(a, (k,) + (1,) * (a.ndim - 1))
    return t.repeat((k,) + (1,) * (t.dim() - 1))


class _Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, box, *context):
        with torch.no_grad():  # a copy: an ``fn`` that writes into its input must not change the caller's x
            y = box._eval(x.detach().clone(), context, 1, "forward")  # float64: the backward's differences
        ctx.box, ctx.context = box, context
        ctx.save_for_backward(x.detach(), y)
        # a copy in any dtype: an in-place op on the output must not change the saved y
        return y.to(x.dtype, copy=True)

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative would see no curvature here
            raise ArgumentError("a blackbox op has first derivatives only (estimated from its outputs): a backward "
                                "with create_graph=True (a Hessian, a gradient penalty) through it would silently "
                                "treat it as linear; differentiate once, or keep it out of the second derivative")
        x, y = ctx.saved_tensors
        with torch.no_grad():
            g = ctx.box._vjp(x, ctx.context, y, grad_out)
        return (g, None) + (None,) * len(ctx.context)


class BlackBox:
    """A black-box function of a batch as a differentiable torch op (see :func:`blackbox`)."""

    def __init__(self, fn, estimator, rng, max_rows):
        self.fn = fn
        self.estimator = estimator
        self._rng = as_generator(rng)
        self.max_rows = max_rows
        self.nfev = 0  # samples evaluated through fn (forward + backward)

    def __call__(self, x: torch.Tensor, *context) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = f"a tensor of {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ArgumentError(f"blackbox input `x` must be a floating torch tensor, got {got}")
        if x.dtype not in (torch.float32, torch.float64):
            raise ArgumentError(f"blackbox input `x` must be float32 or float64 (finite differences need the "
                                f"precision), got {x.dtype}; use x.float()")
        if x.dim() < 1 or x.shape[0] == 0:
            raise ArgumentError(f"blackbox input `x` must have a leading batch dimension, got shape {tuple(x.shape)}")
        for i, c in enumerate(context):
            shape = tuple(getattr(c, "shape", ()))
            if not shape or shape[0] != x.shape[0]:
                raise ArgumentError(f"blackbox context argument {i} must have {x.shape[0]} rows like `x`, got shape {shape}")
            if isinstance(c, torch.Tensor) and c.requires_grad and torch.is_grad_enabled():
                raise ArgumentError(f"blackbox context argument {i} requires grad, but a blackbox op differentiates "
                                    "`x` only: its context would silently get no gradient; pass what needs one as part "
                                    f"of `x` (torch.cat it in and split it inside fn), or pass context {i} .detach()ed")
        if not bool(torch.isfinite(x).all()):
            raise ArgumentError("blackbox input `x` holds NaN or inf; a finite difference needs finite inputs")
        if x.requires_grad and torch.is_grad_enabled():  # the backward's step, checked before the forward's work
            check_step(x.detach().reshape(-1).cpu().numpy(), self.estimator.mu, self.estimator.scheme,
                       type(self.estimator).__name__)
        return _Function.apply(x, self, *context)

    # ------------------------------------------------------------------ internals
    def _eval(self, X: torch.Tensor, context, k: int, what: str, shape=None) -> torch.Tensor:
        """``fn`` on ``X`` (k * N rows, perturbation-major) with the context repeated ``k`` times,
        at most ``max_rows`` rows a call (``fn`` treats rows independently), in float64: the
        differences of a float32 ``x``'s outputs must not lose what ``fn`` computed beyond float32
        (a loss with an offset). ``what`` names the pass for error reports."""
        ctx = tuple(_repeat(c, k) if k > 1 else c for c in context)
        outs = []
        for lo in range(0, X.shape[0], self.max_rows):
            hi = min(X.shape[0], lo + self.max_rows)
            query = f"blackbox fn, {what}, rows {lo}..{hi - 1} of {X.shape[0]}"
            try:
                out = self.fn(X[lo:hi], *(c[lo:hi] for c in ctx))
                out = _as_tensor(out, X, torch.float64)
            except Exception as exc:
                raise OracleError(query, cause=exc) from exc
            if out.dim() == 0 or out.shape[0] != hi - lo:
                raise OracleError(query, tuple(out.shape), detail=f"expected per-sample outputs with {hi - lo} rows")
            if shape is None:
                shape = tuple(out.shape[1:])
            elif tuple(out.shape[1:]) != shape:
                raise OracleError(query, tuple(out.shape), detail=f"expected each sample's output to have shape "
                                  f"{shape}, as in the forward: fn must keep its output shape")
            if not torch.isfinite(out).all():
                raise OracleError(query, Shown("non-finite values"), detail="expected finite outputs")
            outs.append(out)
            self.nfev += hi - lo
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _phi(self, X, context, k, grad_out) -> torch.Tensor:
        """``<grad_out_n, fn(X)_n>`` per row, shape (k, N), evaluated in chunks of rows."""
        N = grad_out.shape[0]
        per = max(1, self.max_rows // N)
        vals = []
        Xv = X.reshape((k, N) + tuple(X.shape[1:]))
        for lo in range(0, k, per):
            kk = min(per, k - lo)
            out = self._eval(Xv[lo:lo + kk].reshape((kk * N,) + tuple(X.shape[1:])), context, kk,
                             f"backward ({type(self.estimator).__name__}), perturbations {lo}..{lo + kk - 1} of {k}",
                             tuple(grad_out.shape[1:]))
            out = out.reshape((kk, N, -1))
            vals.append((out * grad_out.reshape(1, N, -1).double()).sum(-1))
        return torch.cat(vals)

    def _shifted(self, xf, idx, steps, context, grad_out, shape) -> tuple:
        """``(phi, h)``, both ``(len(steps) k, N)``: :meth:`_phi` of ``xf`` (N, D) with coordinate ``idx[j]``
        moved by ``steps[i]`` in its copy ``i k + j``, all copies in one pass, and the representable steps."""
        k, m = idx.numel(), len(steps)
        Xs = xf.unsqueeze(0).repeat(m * k, 1, 1)  # (m k, N, D)
        rows, cols = torch.arange(m * k, device=xf.device), idx.repeat(m)
        base = Xs[rows, :, cols]  # (m k, N)
        new = base + torch.tensor(steps, dtype=xf.dtype, device=xf.device).repeat_interleave(k)[:, None]
        Xs[rows, :, cols] = new
        h = (new - base).double()  # the representable steps, in x's dtype
        return self._phi(Xs.reshape((m * k * xf.shape[0],) + tuple(shape[1:])), context, m * k, grad_out), h

    def _vjp(self, x, context, y, grad_out) -> torch.Tensor:
        est = self.estimator
        N = x.shape[0]
        D = x[0].numel()
        if D == 0:  # samples with no entries: an empty gradient, no query (a pass size divided by 0)
            return torch.zeros_like(x)
        phi0 = (y.reshape(N, -1) * grad_out.reshape(N, -1).double()).sum(-1)  # (N,), float64 as every phi
        xf = x.reshape(N, D)
        if isinstance(est, CGE):
            grad = torch.zeros_like(xf, dtype=torch.float64)
            # coordinates per pass: at most max_rows rows, and at most COPY_BYTES of perturbed
            # copies of the batch (k copies of N x D: a 224 x 224 image at max_rows asked for 39 GB)
            per = max(1, min(self.max_rows // N, COPY_BYTES // (N * D * xf.element_size())))
            # central: a pass's +mu and -mu copies in one fn call (a simulator's fixed cost paid once, not
            # twice), half as many coordinates a pass, where that makes no more calls than a sign at a time
            fused = est.scheme != "forward" and -(-D // max(1, per // 2)) <= 2 * -(-D // per)
            per, signs = (max(1, per // 2), [est.steps]) if fused else (per, [(s,) for s in est.steps])
            for lo in range(0, D, per):
                idx = torch.arange(lo, min(D, lo + per), device=x.device)
                k = idx.numel()
                f, h = zip(*(self._shifted(xf, idx, s, context, grad_out, x.shape) for s in signs))
                f, h = torch.cat(f), torch.cat(h)  # (len(steps) k, N): the +mu rows, then the -mu ones
                g = (f - phi0) / h if est.scheme == "forward" else (f[:k] - f[k:]) / (h[:k] - h[k:])
                grad[:, lo:lo + k] = g.T
            return grad.reshape(x.shape).to(x.dtype)
        # RGE: each sample gets its own q directions
        q, mu = est.directions, est.mu
        gen = torch.Generator(device=x.device)
        gen.manual_seed(int(self._rng.integers(2**63)))
        if est.distribution == "rademacher":  # +-1, each with probability 1/2
            U = torch.randint(0, 2, (q, N, D), generator=gen, device=x.device).to(x.dtype).mul_(2).sub_(1)
        else:
            U = torch.randn((q, N, D), generator=gen, device=x.device, dtype=x.dtype)
            if est.distribution == "sphere":
                U = U / U.norm(dim=-1, keepdim=True)
        if est.scheme == "forward":
            fp = self._phi((xf.unsqueeze(0) + mu * U).reshape((q * N,) + tuple(x.shape[1:])), context, q, grad_out)
            coef = (fp - phi0) / mu
        else:  # both signs in one fn pass: x + mu U, then x + (-mu) U (x - mu U, bit for bit), no more copies held
            Xs = torch.empty((2 * q, N, D), dtype=U.dtype, device=x.device)
            torch.mul(U, mu, out=Xs[:q])
            torch.mul(U, -mu, out=Xs[q:])
            Xs += xf
            f = self._phi(Xs.reshape((2 * q * N,) + tuple(x.shape[1:])), context, 2 * q, grad_out)
            del Xs
            coef = (f[:q] - f[q:]) / (2 * mu)
        scale = (D if est.distribution == "sphere" else 1.0) / q
        grad = torch.einsum("qn,qnd->nd", coef, U.double()) * scale
        return grad.reshape(x.shape).to(x.dtype)

    def __repr__(self) -> str:
        return f"blackbox({getattr(self.fn, '__name__', type(self.fn).__name__)}, {self.estimator})"


def blackbox(fn, estimator=None, rng=None, *, max_rows: int = 65536) -> BlackBox:
    r"""Wrap a black-box function as a differentiable torch op with a ZO backward.

    Signature of the returned op: ``op(x, *context) -> y`` where ``x`` is a floating tensor
    ``(N, ...)`` (the differentiable input), ``context`` are optional per-sample tensors or
    arrays with ``N`` rows (labels, ...; not differentiated: one that requires grad is
    refused, as it would get no gradient) and ``y = fn(x, *context)``
    has ``N`` rows (scalars per sample or any per-sample shape).

    The backward estimates the vector-Jacobian product **per sample** from ``fn`` values
    only: for sample ``n`` with upstream gradient ``v_n`` it estimates the gradient of
    ``phi_n(x_n) = <v_n, fn(x)_n>`` (ZO-AE-DS style). ``fn`` must treat rows independently;
    all perturbations of a backward go through ``fn`` as batches of ``k * N`` rows
    (perturbation-major, context repeated ``k`` times, a NumPy context as NumPy), at most
    ``max_rows`` per call (the forward too; a central scheme's ``+mu`` and ``-mu`` rows in the
    same calls). ``fn`` gets a copy of ``x``: writing into it
    changes nothing of the caller's. A step ``mu`` that does not register at ``x``'s values
    in its dtype (float32 or float64) is refused when the op is called with gradients on,
    before the forward.

    - ``zo.RGE(mu, directions=q, distribution, scheme)``: ``q`` random directions per
      sample, ``g_n = (phi/q) sum_i [phi_n(x_n + mu u_i) - phi_n(x_n)] / mu * u_i``
      (``phi = D`` for ``"sphere"``, 1 for ``"gaussian"`` and ``"rademacher"``); ``q * N`` rows per backward
      (twice that for the central scheme).
    - ``zo.CGE(mu, scheme)``: one query per input coordinate and sample, ``D * N`` rows
      (``2 D N`` central); exact up to O(mu) / O(mu^2).

    Parameters
    ----------
    fn : callable
        ``fn(x, *context)``: torch tensors in, a tensor or array with ``N`` rows out. It may
        leave torch (NumPy, onnxruntime, a simulator); its result is moved to ``x``'s device
        and kept in float64 for the backward's differences (a float32 ``x`` does not round
        away what ``fn`` computed in float64); the op returns it in ``x``'s dtype.
    estimator : zo.RGE or zo.CGE, optional
        Default ``zo.RGE(mu=5e-3, directions=192, distribution="sphere")``.
    rng : Generator, int or None
        Seeds the RGE directions (a fresh child seed every backward).
    max_rows : int
        Most rows per ``fn`` call. A CGE backward also holds at most 256 MiB of perturbed
        copies of ``x`` at once (fewer rows a call for a large ``x``).

    Returns
    -------
    BlackBox
        Callable op; ``op.nfev`` counts rows evaluated by ``fn``.

    Examples
    --------
    >>> import torch, zoracle as zo
    >>> from zoracle.adapters.torch import blackbox
    >>> op = blackbox(lambda x: (x ** 2).sum(1).numpy(), zo.CGE(mu=1e-4, scheme="central"))
    >>> x = torch.tensor([[1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    >>> op(x).sum().backward()
    >>> [round(v, 4) for v in x.grad[0].tolist()]
    [2.0, -4.0]
    """
    if not callable(fn):
        raise ArgumentError(f"`fn` must be callable (x, *context) -> per-sample outputs, got {fn!r}")
    if estimator is None:
        estimator = RGE(mu=5e-3, directions=192, distribution="sphere")
    if not isinstance(estimator, (CGE, RGE)):
        snes = estimator is SNES or (  # (no hint towards what blackbox refuses; an instance gets none anyway)
            isinstance(estimator, str) and estimator.strip().lower() == "snes")
        raise ArgumentError(f"`estimator` must be zo.RGE(...) or zo.CGE(...), got {type(estimator).__name__}"
                            + ("" if snes else estimator_hint(estimator)))
    if getattr(estimator, "shaping", "none") != "none":
        raise ArgumentError("`estimator`: blackbox needs a linear estimate of each vector-Jacobian product, and "
                            "rank shaping is not linear in the losses; use zo.RGE(..., shaping='none')")
    if isinstance(max_rows, bool) or not isinstance(max_rows, numbers.Integral) or max_rows < 1:
        raise ArgumentError(f"`max_rows` must be a positive integer, got {max_rows!r}")
    return BlackBox(fn, estimator, rng, int(max_rows))
