"""Solver-in-the-loop correction: a small torch CNN corrects the coarse PhiFlow solver.

The solver is a black box to the oracle: :class:`SolverInTheLoop` only ever runs it
forward (NumPy backend) and never asks it for gradients. All parameter vectors of one
oracle call run as one batched simulation: ``k`` networks (``torch.func.vmap`` over the
stacked parameters) correct ``k x n`` coarse simulations that PhiFlow advances along one
batch dimension.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from zoracle._backend import fields_hash
from zoracle._errors import ArgumentError

from ._phiflow_sim import Reference, SimulationError, WakeFlow

__all__ = [
    "ParamBlock",
    "correction_net",
    "flat_params",
    "SolverInTheLoop",
    "rollout",
    "mean_abs_error",
    "fit_offline",
    "fit_differentiable",
]


@dataclass(frozen=True)
class ParamBlock:
    """One tensor of the network inside the flat parameter vector: its ``name`` in the network,
    its ``slice`` of the vector, its ``shape``, and its ``kind``: ``"conv"`` (a weight, scored by
    sparse CGE) or ``"bias"`` (estimated densely)."""

    name: str
    slice: slice
    shape: tuple
    kind: str  # "conv" (scored by sparse CGE) or "bias" (estimated densely)

    __hash__ = fields_hash  # (the generated hash raised TypeError on the slice before Python 3.12)


class _CorrectionNet(nn.Module):
    def __init__(self, channels: int, kernel: int, layers: int):
        super().__init__()
        widths = [3] + [channels] * (layers - 1) + [2]
        # no bias on the output: a uniform velocity offset is the stiffest direction of the
        # unrolled loss (its curvature dwarfs every other parameter's) and corrects nothing local
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, kernel, padding=kernel // 2, bias=i < layers - 1)
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))
        )

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = torch.relu(x)
        return x


def correction_net(channels: int = 8, kernel: int = 5, layers: int = 3, seed: int = 0,
                   out_scale: float = 0.1) -> nn.Module:
    """A small CNN ``(N, 3, nx + 1, ny) -> (N, 2, nx + 1, ny)``: ``layers`` same-size convolutions
    of ``kernel`` x ``kernel`` (odd), ``channels`` wide between them, initialised from ``seed``.

    Inputs: ``vx``, ``vy - inflow`` (zero-padded to ``vx``'s shape) and the Reynolds-number feature
    ``log(Re / 200)``. Output: the velocity correction (``vy``'s channel is cropped back).
    The last layer is initialised ``out_scale`` times smaller, so training starts near
    the uncorrected solver. An all-zero parameter vector is exactly "no correction".
    """
    for name, v, lo in (("channels", channels, 1), ("kernel", kernel, 1), ("layers", layers, 2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ArgumentError(f"`{name}` must be an integer >= {lo}, got {v!r}")
    if kernel % 2 == 0:
        raise ArgumentError(f"`kernel` must be odd (same-size convolutions), got {kernel}")
    seed = _check_int("seed", seed, 0)  # torch took -1 and truncated 1.5 silently
    if isinstance(out_scale, bool) or not isinstance(out_scale, numbers.Real) or not np.isfinite(out_scale):
        raise ArgumentError(f"`out_scale` must be a finite number (e.g. 0.1), got {out_scale!r}")
    g = torch.Generator().manual_seed(seed)
    net = _CorrectionNet(channels, kernel, layers)
    with torch.no_grad():
        for conv in net.convs:
            bound = 1.0 / np.sqrt(conv.in_channels * kernel * kernel)
            conv.weight.copy_(torch.empty_like(conv.weight).uniform_(-bound, bound, generator=g))
            if conv.bias is not None:
                conv.bias.zero_()
        net.convs[-1].weight.mul_(out_scale)
    return net


def flat_params(net: nn.Module) -> np.ndarray:
    """The parameters of ``net`` as one flat float64 NumPy vector (``named_parameters`` order)."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).double().numpy()


def _blocks(net: nn.Module) -> list:
    out, pos = [], 0
    for name, p in net.named_parameters():
        n = p.numel()
        out.append(ParamBlock(name, slice(pos, pos + n), tuple(p.shape), "bias" if name.endswith("bias") else "conv"))
        pos += n
    return out


def _re_feature(re) -> np.ndarray:
    return np.log(np.asarray(re, dtype=np.float64) / 200.0)


class _Corrector:
    """``k`` copies of one network architecture with stacked parameters, applied at once."""

    def __init__(self, net: nn.Module, flow: WakeFlow):
        self.net = net
        self.inflow = float(flow.inflow)
        self.blocks = _blocks(net)
        self.d = self.blocks[-1].slice.stop
        self._batched = vmap(self._one)
        self._probe(flow.shapes[0])

    def _one(self, p, x):
        return functional_call(self.net, p, (x,))

    # the vmapped function is made again by a copy: pickle cannot save it, and a deepcopy kept the
    # original's (which ran the original's net, not the copy's)
    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_batched"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._batched = vmap(self._one)

    def _probe(self, faces: tuple) -> None:
        """Run the network once on a zero state of the grid: a net of another shape failed inside
        the first simulation with a raw torch error, or (extra output channels) was cut silently."""
        want = (1, 1, 2) + tuple(faces)
        x = torch.zeros((1, 1, 3) + tuple(faces))
        flat = torch.zeros(1, self.d)  # as apply() runs it: CPU float32 vectors (the net's own device unused)
        try:
            with torch.no_grad():
                got = tuple(self._batched(self.params(flat), x.to(flat.dtype)).shape)
        except Exception as exc:  # the net's own error, kept in the message
            raise ArgumentError(f"`net` must map a (N, 3, {faces[0]}, {faces[1]}) float32 batch (vx, vy, Re feature on "
                                f"the x faces) to (N, 2, {faces[0]}, {faces[1]}) corrections and run under "
                                f"torch.func.vmap (no BatchNorm in train mode: net.eval()); it raised "
                                f"{type(exc).__name__}: {exc}") from None
        if got != want:
            raise ArgumentError(f"`net` must map a (N, 3, {faces[0]}, {faces[1]}) batch to (N, 2, {faces[0]}, "
                                f"{faces[1]}) corrections (keep the grid: padding=kernel // 2), got (N, "
                                f"{', '.join(map(str, got[2:]))}); see correction_net")

    def params(self, P: torch.Tensor) -> dict:
        k = P.shape[0]
        return {b.name: P[:, b.slice].reshape((k,) + b.shape) for b in self.blocks}

    def features(self, vx, vy, re_feat):
        """``(..., 3, nx + 1, ny)`` network input from face arrays of shape ``(..., .., ..)``."""
        pad = torch.zeros(vy.shape[:-2] + (1, vy.shape[-1]), dtype=vy.dtype, device=vy.device)
        vyp = torch.cat([vy - self.inflow, pad], dim=-2)  # deviations from the inflow: O(0.1) inputs
        ref = torch.as_tensor(re_feat, dtype=vx.dtype).reshape(re_feat.shape + (1, 1)).expand(vx.shape)
        return torch.stack([vx, vyp, ref], dim=-3)

    def apply(self, P: torch.Tensor, vx, vy, re_feat):
        """Corrected ``(vx, vy)``; ``vx``: ``(k, n, nx + 1, ny)``, ``P``: ``(k, d)``."""
        # the network runs in its parameters' dtype (float32); a state of PhiFlow's 64-bit
        # precision is corrected in its own dtype
        x = self.features(vx, vy, re_feat).to(P.dtype)
        out = self._batched(self.params(P), x).to(vx.dtype)
        return vx + out[:, :, 0], vy + out[:, :, 1, :-1]


def _squares(c: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """Sum of ``(c - target) ** 2`` for each of the ``k`` parameter vectors, in float64. A
    float32 square overflows to inf above 1.8e19 (a blown-up but finite state, whose loss
    was then inf): those rows are summed again in float64; the others as before, bit for bit."""
    with np.errstate(over="ignore"):
        s = ((c - target) ** 2).reshape(k, -1).sum(1, dtype=np.float64)
    bad = ~np.isfinite(s)
    if bad.any():
        s[bad] = ((c[bad].astype(np.float64) - target) ** 2).reshape(int(bad.sum()), -1).sum(1)
    return s


def _as_matrix(params_batch, d: int, name: str = "params_batch") -> np.ndarray:
    P = np.asarray(params_batch.get() if hasattr(params_batch, "get") else params_batch)
    given = P.shape  # as the caller passed it (a vector is one row)
    if P.ndim == 1:
        P = P[None]
    if P.ndim != 2 or P.shape[1] != d:
        want = f"a vector of the network's {d} parameters" if name == "params" else f"of shape (k, {d})"
        raise ArgumentError(f"`{name}` must be {want}, got shape {given}")
    if P.dtype.kind not in "iuf":  # complex: the imaginary part was dropped silently; object: a raw TypeError
        raise ArgumentError(f"`{name}` must hold real numbers, got dtype {P.dtype}")
    finite = np.isfinite(P).all(axis=1)
    if not finite.all():  # refused before the solver, which would report non-finite velocities
        raise ArgumentError(f"parameters must be finite; row {int(np.flatnonzero(~finite)[0])} holds NaN or inf")
    return P


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ArgumentError(f"`{name}` must be an integer >= {lo}, got {v!r}")
    return int(v)


def _check_unroll(unroll, reference: Reference) -> int:
    unroll = _check_int("unroll", unroll, 1)
    T = reference.vx.shape[1] - 1
    if unroll > T:
        raise ArgumentError(f"`unroll`={unroll} exceeds the {T} recorded reference steps; record more steps")
    return unroll


def _check_starts(starts, reference: Reference, unroll: int) -> np.ndarray:
    """``(run, frame)`` rows with ``unroll`` recorded steps after each frame (a negative frame
    would index from the end and compare against the wrong frames)."""
    if isinstance(starts, tuple) and len(starts) == 1:  # a zo.Minibatches row tuple
        starts = starts[0]
    elif isinstance(starts, tuple) and len(starts) == 2 and all(isinstance(c, np.ndarray) and c.ndim == 1
                                                                and c.dtype.kind in "iu" for c in starts):
        # zo.Minibatches((runs, frames), ...) gives two columns: read as two (run, frame) rows, the
        # batch was transposed (the wrong start states, silently)
        raise ArgumentError("`starts` is a tuple of two columns (runs, frames), as zo.Minibatches((runs, frames), "
                            "...) yields; pass one (n, 2) array of (run, frame) rows instead: "
                            "zo.Minibatches((np.stack([runs, frames], 1),), batch_size)")
    s = np.asarray(starts)
    if s.ndim != 2 or s.shape[1] != 2 or s.shape[0] < 1 or s.dtype.kind not in "iu":
        raise ArgumentError(f"`starts` must be an integer array of (run, frame) rows, shape (n, 2), got shape "
                            f"{s.shape}; a zo.Minibatches batch of it is a 1-tuple: Minibatches((starts,), batch_size)")
    R, T = reference.vx.shape[0], reference.vx.shape[1] - 1
    bad = (s[:, 0] < 0) | (s[:, 0] >= R) | (s[:, 1] < 0) | (s[:, 1] + unroll > T)
    if bad.any():
        raise ArgumentError(
            f"start {s[bad][0].tolist()} is out of range: runs are 0..{R - 1}, frames 0..{T - unroll} "
            f"(unroll {unroll})"
        )
    return s.astype(np.int64)


def _check_lr(lr) -> None:
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not np.isfinite(lr) or lr <= 0:
        raise ArgumentError(f"`lr` must be a finite number > 0, got {lr!r}")


def _check_params(params, d: int) -> np.ndarray:
    """A finite parameter vector of the network's size (a longer one was silently truncated)."""
    p = np.asarray(params.get() if hasattr(params, "get") else params)
    if p.shape != (d,) or p.dtype.kind not in "iuf":
        raise ArgumentError(f"`params` must be a real vector of the network's {d} parameters, got shape {p.shape} "
                            f"and dtype {p.dtype}")
    bad = np.flatnonzero(~np.isfinite(p))
    if bad.size:
        raise ArgumentError(f"`params` must be finite; entry {int(bad[0])} is {p[bad[0]]}")
    return p


class SolverInTheLoop:
    """Loss oracle of a correction network trained *through* a black-box coarse solver.

    ``loss(theta)`` starts from downsampled fine states ``(run, frame)``, alternates
    ``unroll`` coarse solver steps with the correction ``v <- v + net_theta(v, Re)`` and
    returns the mean squared difference between each corrected state and the downsampled
    fine state of the same step (averaged over the steps, the start states and the faces).

    Capabilities: plain call, ``batch`` (``k`` parameter vectors as one PhiFlow batch of
    ``k * n`` simulations), ``coordinate_losses`` (sparse CGE without a dense matrix) and
    ``bind`` (another set of start states: a minibatch). ``max_queries_per_call`` sets how
    many parameter vectors the planner puts into one batched simulation. ``param_info``
    marks the convolution weights (scored by sparse CGE) and the biases (estimated densely).

    Parameters
    ----------
    flow : WakeFlow
        The coarse solver.
    net : torch.nn.Module
        The correction network (see :func:`correction_net`); used as an architecture, its
        own parameters are ignored in favour of the flat vector passed to the oracle.
    reference : Reference
        Downsampled fine trajectories on ``flow``'s grid.
    starts : array of shape (n, 2), optional
        ``(run, frame)`` start states; default every ``unroll``-th frame of every run.
    unroll : int
        Solver steps per loss evaluation (the paper unrolls 16).
    max_queries_per_call : int
        Parameter vectors per batched simulation.
    relative : bool
        Divide the loss by the uncorrected solver's loss on the same start states (SRC, one
        extra simulation in the same batch): 1.0 means "no better than no correction", and
        learning rates carry over between grids and minibatches.
    """

    def __init__(self, flow: WakeFlow, net: nn.Module, reference: Reference, *, starts=None, unroll: int = 4,
                 max_queries_per_call: int = 64, relative: bool = False):
        if not isinstance(net, nn.Module):  # (an AttributeError on named_parameters, naming neither)
            hint = ("; load it into the module it came from (net.load_state_dict(...)) and pass that module"
                    if isinstance(net, dict) else "; a function is not one: wrap it in an nn.Module whose forward "
                    "calls it" if callable(net) else "")
            raise ArgumentError(f"`net` must be a torch.nn.Module (the correction network, e.g. correction_net()), "
                                f"got {type(net).__name__}{hint}")
        unroll = _check_unroll(unroll, reference)
        T = reference.vx.shape[1] - 1
        if tuple(reference.vx.shape[2:]) != flow.shapes[0]:
            raise ArgumentError(
                f"the reference grid {reference.vx.shape[2:]} does not match the coarse solver's faces {flow.shapes[0]}"
            )
        self.flow = flow
        self.reference = reference
        self.unroll = int(unroll)
        self.corrector = _Corrector(net, flow)
        self.param_info = self.corrector.blocks
        self.d = self.corrector.d
        if (isinstance(max_queries_per_call, bool) or not isinstance(max_queries_per_call, numbers.Integral)
                or max_queries_per_call < 1):
            raise ArgumentError(f"`max_queries_per_call` must be an integer >= 1, got {max_queries_per_call!r}")
        self.max_queries_per_call = int(max_queries_per_call)
        if not isinstance(relative, (bool, np.bool_)):  # "False" from a config would count as True
            raise ArgumentError(f"`relative` must be True or False, got {relative!r}")
        self.relative = bool(relative)
        if starts is None:
            frames = np.arange(0, T - self.unroll + 1, self.unroll)
            starts = np.array([(r, f) for r in range(len(reference.re)) for f in frames])
        self.starts = self._check_starts(starts)
        self.solver_seconds = 0.0
        self.solver_calls = 0

    def _check_starts(self, starts) -> np.ndarray:
        return _check_starts(starts, self.reference, self.unroll)

    #: the correction network runs in float32: params of a wider float are rounded to it, and
    #: ``zo.estimate_gradient`` estimates at the rounded params with the steps the network takes
    compute_dtype = np.dtype("float32")

    # DataOracle --------------------------------------------------------------------------
    def bind(self, batch) -> "SolverInTheLoop":
        """The same oracle on other start states (a minibatch of ``(run, frame)`` rows)."""
        new = object.__new__(SolverInTheLoop)
        new.__dict__.update(self.__dict__)
        new.starts = self._check_starts(batch)
        return new

    # LossOracle / BatchOracle / CoordinateOracle ----------------------------------------
    def __call__(self, params) -> float:
        p = np.asarray(params.get() if hasattr(params, "get") else params)
        if p.ndim != 1:  # a (1, d) matrix was taken as a batch of one; a scalar or (k, d) named a (1, ...) shape
            raise ArgumentError(f"`params` must be a vector of the network's {self.d} parameters, got shape {p.shape}; "
                                "use .batch(...) for several")
        return float(self.batch(_as_matrix(p, self.d, "params"))[0])

    def coordinate_losses(self, params, coords, step):
        """Losses at ``params + step * e_i`` for each ``i`` in ``coords`` (one batched run)."""
        p = _check_params(params, self.d)
        if p.dtype.kind != "f":  # an integer vector would round the step away (every loss the base loss)
            raise ArgumentError(f"`params` must be a float vector, got dtype {p.dtype}; use params.astype(np.float64)")
        c = np.asarray(coords)
        if c.dtype == bool:
            raise ArgumentError("`coords` must be integer indices, got a boolean array; pass np.flatnonzero(mask)")
        if c.ndim != 1 or (c.size and c.dtype.kind not in "iu"):
            raise ArgumentError(f"`coords` must be a 1-D integer index array, got dtype {c.dtype} and shape {c.shape}")
        if c.size and (c.min() < 0 or c.max() >= self.d):
            raise ArgumentError(f"`coords` must lie in [0, {self.d}), got {int(c[(c < 0) | (c >= self.d)][0])}")
        if isinstance(step, bool) or not isinstance(step, numbers.Real) or not np.isfinite(step):
            raise ArgumentError(f"`step` must be a finite number, got {step!r}")
        coords = c.astype(np.int64)
        X = np.repeat(p[None], len(coords), axis=0)
        X[np.arange(len(coords)), coords] += p.dtype.type(step)
        try:
            return self.batch(X)
        except SimulationError as exc:  # its rows, as the coordinates they moved
            rows = getattr(exc, "rows", None)
            if rows:
                moved = [int(coords[i]) for i in rows if i < len(coords)]
                raise SimulationError(f"{exc}; the diverging queries move coordinate(s) "
                                      f"{', '.join(map(str, moved[:8]))}{', ...' if len(moved) > 8 else ''} by {step:g}",
                                      exc.entries) from None
            raise

    def batch(self, params_batch) -> np.ndarray:
        """Loss of each row of ``params_batch`` (``(k, d)``), all in one batched simulation."""
        P = _as_matrix(params_batch, self.d)
        if P.shape[0] == 0:  # no rows (e.g. sparse CGE on no coordinates): no simulation
            return np.zeros(0)
        if self.relative:  # the uncorrected solver rides along as one more row
            P = np.concatenate([P, np.zeros((1, self.d), dtype=P.dtype)])
        k, n, m = P.shape[0], len(self.starts), self.unroll
        ref = self.reference
        r, f = self.starts[:, 0], self.starts[:, 1]
        vx0 = np.tile(ref.vx[r, f], (k, 1, 1))
        vy0 = np.tile(ref.vy[r, f], (k, 1, 1))
        re = np.tile(ref.re[r], k)
        re_feat = _re_feature(ref.re[r]).astype(np.float32)
        Pt = torch.tensor(P, dtype=torch.float32)  # a copy: P may be a read-only view
        sq = np.zeros(k)
        count = (ref.vx[0, 0].size + ref.vy[0, 0].size) * n * m

        def correct(vx, vy, t):
            with torch.no_grad():
                cx, cy = self.corrector.apply(
                    Pt, torch.from_numpy(vx).reshape((k, n) + vx.shape[1:]),
                    torch.from_numpy(vy).reshape((k, n) + vy.shape[1:]), re_feat)
            cx, cy = cx.numpy(), cy.numpy()
            sq[:] += _squares(cx, ref.vx[r, f + t + 1], k) + _squares(cy, ref.vy[r, f + t + 1], k)
            return cx.reshape((k * n,) + cx.shape[2:]), cy.reshape((k * n,) + cy.shape[2:])

        t0 = time.perf_counter()
        try:
            self.flow.simulate(vx0, vy0, re, m, correct=correct)
        except SimulationError as exc:  # entries are (row, start state) pairs: name the rows
            if exc.entries is None:
                raise
            rows = sorted({e // n for e in exc.entries})
            names = [f"row {i}" if i < k - self.relative else "the uncorrected baseline (relative=True)" for i in rows]
            err = SimulationError(f"{exc}: parameter {', '.join(names[:8])}{', ...' if len(names) > 8 else ''} of "
                                  f"{k - self.relative}", exc.entries)
            err.rows = [i for i in rows if i < k - self.relative]
            raise err from None
        self.solver_seconds += time.perf_counter() - t0
        self.solver_calls += 1
        if self.relative:
            if not (np.isfinite(sq[-1]) and sq[-1] > 0):
                raise ArgumentError(
                    f"relative=True divides by the uncorrected solver's loss, which is {sq[-1] / count:g} on these "
                    "start states: the coarse solver already reproduces the reference (a reference downsampled by "
                    "factor 1?); use relative=False"
                )
            return sq[:-1] / sq[-1]
        return sq / count

    def __repr__(self) -> str:
        return (f"SolverInTheLoop(flow={self.flow.nx}x{self.flow.ny}, d={self.d}, starts={len(self.starts)}, "
                f"unroll={self.unroll})")


def rollout(flow: WakeFlow, net: nn.Module, reference: Reference, params_batch, steps: int, *, frame: int = 0):
    """Corrected coarse trajectories for every parameter vector and every reference run.

    ``flow`` is the coarse solver, ``net`` the correction network (run with each of the ``k``
    rows of ``params_batch`` as its parameters), ``steps`` the solver steps from the
    ``reference``'s ``frame``. All ``k x R`` simulations run as one batch. A zero parameter
    vector is the uncorrected solver (SRC).

    Returns
    -------
    (vx, vy)
        Arrays of shape ``(k, R, steps + 1, ...)`` starting at the reference ``frame``.
    """
    corr = _Corrector(net, flow)
    P = _as_matrix(params_batch, corr.d)
    k, R = P.shape[0], len(reference.re)
    _check_span(steps, frame, reference.vx.shape[1] - 1)
    vx0 = np.tile(reference.vx[:, frame], (k, 1, 1))
    vy0 = np.tile(reference.vy[:, frame], (k, 1, 1))
    re = np.tile(reference.re, k)
    re_feat = _re_feature(reference.re).astype(np.float32)
    Pt = torch.tensor(P, dtype=torch.float32)  # a copy: P may be a read-only view

    def correct(vx, vy, t):
        with torch.no_grad():
            cx, cy = corr.apply(Pt, torch.from_numpy(vx).reshape((k, R) + vx.shape[1:]),
                                torch.from_numpy(vy).reshape((k, R) + vy.shape[1:]), re_feat)
        return cx.numpy().reshape(vx.shape), cy.numpy().reshape(vy.shape)

    tx, ty = flow.simulate(vx0, vy0, re, steps, correct=correct, record=True)
    return tx.reshape((k, R) + tx.shape[1:]), ty.reshape((k, R) + ty.shape[1:])


def _check_span(steps, frame, recorded: int) -> None:
    """``steps`` >= 1 steps from ``frame`` >= 0 within the ``recorded`` steps (a negative frame
    would index from the end and compare against the wrong frames)."""
    for name, v, lo in (("steps", steps, 1), ("frame", frame, 0)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise ArgumentError(f"`{name}` must be an integer >= {lo}, got {v!r}")
    if steps + frame > recorded:
        raise ArgumentError(f"`steps`={steps} from frame {frame} exceeds the {recorded} recorded steps")


def mean_abs_error(traj, reference: Reference, *, frame: int = 0) -> np.ndarray:
    """MAE per parameter vector: mean ``|v - v_ref|`` over runs, steps ``1..T`` and faces, of
    ``traj``, the ``(vx, vy)`` that :func:`rollout` returned from ``frame``, against ``reference``."""
    try:
        tx, ty = (np.asarray(a) for a in traj)
    except (TypeError, ValueError):
        raise ArgumentError("`traj` must be the (vx, vy) pair that rollout returns") from None
    R = len(reference.re)
    # one run per reference run, on the reference grid (a rollout of other runs was broadcast
    # against every reference run and compared with the wrong Reynolds numbers)
    if (tx.ndim != 5 or ty.ndim != 5 or tx.shape[:3] != ty.shape[:3] or tx.shape[1] != R
            or tx.shape[3:] != reference.vx.shape[2:] or ty.shape[3:] != reference.vy.shape[2:]):
        raise ArgumentError(
            f"`traj` must hold (k, {R}, T + 1, ...) trajectories of the reference's {R} runs on its grid (vx "
            f"(k, {R}, T + 1, {', '.join(map(str, reference.vx.shape[2:]))})), got shapes {tx.shape} and {ty.shape}; "
            "roll out the same Reference (or its .select(...)) that you compare with"
        )
    T = tx.shape[2] - 1
    # named as this function's arguments (rollout's message named a `steps` it does not take)
    if isinstance(frame, bool) or not isinstance(frame, numbers.Integral) or frame < 0:
        raise ArgumentError(f"`frame` must be an integer >= 0, got {frame!r}")
    if T < 1 or T + frame > reference.vx.shape[1] - 1:
        raise ArgumentError(f"`traj` holds {T} step(s) after its start; from `frame` {frame} that "
                            f"{'is none to score' if T < 1 else 'exceeds'} the reference's {reference.vx.shape[1] - 1} "
                            "recorded steps")
    start = reference.vx[None, :, frame]
    atol = 1e-6 * float(np.abs(start).max() or 1.0)
    if not np.allclose(tx[:, :, 0], start, rtol=1e-5, atol=atol):
        # a rollout from another frame, scored against this one's steps (frame not passed again)
        match = [f for f in range(reference.vx.shape[1]) if np.allclose(tx[0, :, 0], reference.vx[:, f], rtol=1e-5, atol=atol)]
        hint = f"it starts at frame {match[0]}: pass frame={match[0]}" if match else "pass the frame it started from"
        raise ArgumentError(f"`traj` does not start at the reference's frame {frame} (`frame`); {hint}, as to rollout")
    rx = reference.vx[None, :, frame + 1:frame + T + 1]
    ry = reference.vy[None, :, frame + 1:frame + T + 1]
    ex = np.abs(tx[:, :, 1:] - rx).reshape(tx.shape[0], -1)
    ey = np.abs(ty[:, :, 1:] - ry).reshape(ty.shape[0], -1)
    return (ex.sum(1, dtype=np.float64) + ey.sum(1, dtype=np.float64)) / (ex.shape[1] + ey.shape[1])


def _load(net: nn.Module, params) -> nn.Module:
    net = _clone(net)
    torch.nn.utils.vector_to_parameters(torch.tensor(np.asarray(params), dtype=torch.float32), net.parameters())
    return net


def _clone(net: nn.Module) -> nn.Module:
    """A float32 copy: the baselines feed the net float32 inputs, as the oracle does (a float64
    net, ``net.double()`` or one built under torch's float64 default, failed in its first conv)."""
    import copy

    return copy.deepcopy(net).float()


def fit_offline(flow: WakeFlow, net: nn.Module, reference: Reference, *, epochs: int = 200, lr: float = 1e-3,
                batch_size: int = 32, seed: int = 0, params=None):
    """NON baseline: fit the correction on precomputed (one coarse step, fine) pairs.

    Every recorded frame ``t`` of every run is advanced by one coarse step (one batched
    simulation); the network learns ``net(step(ref_t)) ~ ref_{t+1} - step(ref_t)`` with Adam
    and autograd through the network only; the solver is not in the training loop.
    ``flow`` is the coarse solver, ``reference`` the fine trajectories; ``epochs`` passes over
    the pairs in minibatches of ``batch_size``, shuffled from ``seed``, at learning rate ``lr``,
    starting from ``params`` (default: ``net``'s own; ``net`` itself is not changed).

    Returns
    -------
    (params, seconds)
    """
    epochs = _check_int("epochs", epochs, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    _check_lr(lr)
    d = _Corrector(net, flow).d  # a net of the wrong shape refused before any simulation
    if params is not None:
        params = _check_params(params, d)
    R, T1 = reference.vx.shape[:2]
    vx = reference.vx[:, :-1].reshape((-1,) + reference.vx.shape[2:])
    vy = reference.vy[:, :-1].reshape((-1,) + reference.vy.shape[2:])
    re = np.repeat(reference.re, T1 - 1)
    t0 = time.perf_counter()
    sx, sy = flow.simulate(vx, vy, re, 1)
    tx = torch.from_numpy(reference.vx[:, 1:].reshape(sx.shape).astype(np.float32))
    ty = torch.from_numpy(reference.vy[:, 1:].reshape(sy.shape).astype(np.float32))
    sx, sy = torch.from_numpy(sx.astype(np.float32)), torch.from_numpy(sy.astype(np.float32))
    feat = torch.as_tensor(_re_feature(re), dtype=torch.float32)
    net = _clone(net) if params is None else _load(net, params)
    corr = _Corrector(net, flow)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(int(seed))
    N = sx.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(N, generator=g)
        for lo in range(0, N, batch_size):
            idx = perm[lo:lo + batch_size]
            x = corr.features(sx[idx], sy[idx], feat[idx].numpy())
            out = net(x)
            loss = ((sx[idx] + out[:, 0] - tx[idx]) ** 2).mean() + ((sy[idx] + out[:, 1, :-1] - ty[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return flat_params(net), time.perf_counter() - t0


def fit_differentiable(flow: WakeFlow, net: nn.Module, reference: Reference, *, starts, unroll: int = 4,
                       iterations: int = 50, lr: float = 1e-3, batch_size: int = 8, seed: int = 0, params=None,
                       callback=None):
    """FO-SOL baseline: the same solver-in-the-loop loss, differentiated by autograd.

    The coarse solver runs on PhiFlow's torch backend (the pressure solve is differentiated
    implicitly by PhiFlow), so the gradient flows through ``unroll`` solver steps.
    ``callback(iteration, loss, net)`` runs after each step (the gradients are still held
    in ``net``'s parameters). Each of the ``iterations`` Adam steps (learning rate ``lr``)
    unrolls ``batch_size`` rows drawn (from ``seed``) of ``starts``, ``(run, frame)`` rows of
    ``reference``, on the coarse solver ``flow``, starting from ``params`` (default: ``net``'s
    own; ``net`` itself is not changed: ``callback`` gets the copy in training).

    Returns
    -------
    (params, seconds)
    """
    from phiml.backend.torch import TORCH

    # the checks SolverInTheLoop makes: a negative frame indexed from the end (trained on the
    # wrong frames), a frame + unroll past the end gave a raw IndexError
    unroll = _check_unroll(unroll, reference)
    starts = _check_starts(starts, reference, unroll)
    iterations = _check_int("iterations", iterations, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)  # NumPy's bare "expected non-negative integer" otherwise
    if callback is not None and not callable(callback):  # found after the first unrolled step otherwise
        raise ArgumentError(f"`callback` must be callable (iteration, loss, net) or None, got {type(callback).__name__}")
    _check_lr(lr)
    d = _Corrector(net, flow).d  # a net of the wrong shape refused before any simulation
    if params is not None:
        params = _check_params(params, d)
    net = _clone(net) if params is None else _load(net, params)
    corr = _Corrector(net, flow)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for it in range(iterations):
        rows = starts[rng.choice(len(starts), size=min(batch_size, len(starts)), replace=False)]
        r, f = rows[:, 0], rows[:, 1]
        feat = _re_feature(reference.re[r]).astype(np.float32)
        vx = torch.from_numpy(reference.vx[r, f].astype(np.float32))
        vy = torch.from_numpy(reference.vy[r, f].astype(np.float32))
        losses = []

        def correct(cx, cy, t):
            x = corr.features(cx, cy, feat).to(torch.float32)  # a 64-bit state (PhiFlow's precision 64)
            out = net(x).to(cx.dtype)
            nx_, ny_ = cx + out[:, 0], cy + out[:, 1, :-1]
            tx = torch.from_numpy(reference.vx[r, f + t + 1].astype(np.float32))
            ty = torch.from_numpy(reference.vy[r, f + t + 1].astype(np.float32))
            n_faces = tx[0].numel() + ty[0].numel()
            losses.append((((nx_ - tx) ** 2).flatten(1).sum(1) + ((ny_ - ty) ** 2).flatten(1).sum(1)).mean() / n_faces)
            return nx_, ny_

        with TORCH:  # the adjoint pressure solves run during backward, on the default backend
            flow.simulate(vx, vy, reference.re[r], unroll, correct=correct)
            loss = torch.stack(losses).mean()
            opt.zero_grad()
            loss.backward()
        opt.step()
        if callback is not None:
            callback(it, float(loss.detach()), net)
    return flat_params(net), time.perf_counter() - t0
