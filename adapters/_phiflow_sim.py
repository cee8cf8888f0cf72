"""The unsteady 2D wake flow behind a cylinder, written with PhiFlow 3.4 (NumPy backend).

States cross this module's boundary as plain NumPy arrays of staggered face velocities:
``vx`` with shape ``(B, nx + 1, ny)`` (x-faces at ``x = i * dx``) and ``vy`` with shape
``(B, nx, ny)`` (y-faces at ``y = (j + 1) * dy``; the inflow face at ``y = 0`` is fixed by the
boundary condition and not stored). ``B`` is a batch of independent simulations: PhiFlow runs
them as one batch dimension, which costs little more than one simulation.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import zipfile
from dataclasses import asdict, dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import warnings

import numpy as np

with warnings.catch_warnings():  # phiml warns at its own import; `-W error` made that an ImportError-less crash
    warnings.filterwarnings("ignore", message="symmetric-gradient extrapolation is experimental",
                            category=DeprecationWarning)
    from phi import math as pm
    from phi.field import StaggeredGrid
    from phi.geom import Box, Sphere, UniformGrid
    from phi.physics import advect, diffuse, fluid

from zoracle._errors import ArgumentError, ZoracleError, user_stacklevel, warn
from zoracle._forked import ForkSafeLock

__all__ = [
    "WakeFlow",
    "SimulationError",
    "Reference",
    "downsample",
    "reference_trajectories",
    "vorticity",
    "default_cache_dir",
]

#: bump when the simulation code changes what a cached trajectory holds
#: (2: each Reynolds number gets its own diffusion sub-step count, not the batch's largest)
CACHE_VERSION = 2

#: explicit-diffusion sub-steps allowed per solver step: a Reynolds number needing more is
#: refused (the count grows like 1 / Re; Re 0.001 on the 128x256 grid asked for 163,840)
MAX_SUBSTEPS = 1000


_ONE_SIMULATION = ForkSafeLock(threading.RLock)  # see WakeFlow.simulate

#: whether the NumPy solver reuses one grid (its faces computed once) per flow; off, it builds the
#: template anew each call as PhiFlow alone would (the tests compare the two bit for bit)
_REUSE_GRID = True


class _FacesOnce(UniformGrid):
    """A ``UniformGrid`` that computes its faces once.

    PhiFlow 3.4's ``UniformGrid.faces`` rebuilds the staggered face grids on each access, and
    each staggered ``Field`` built reads them for its shape check: dozens of times a solver
    step, about a quarter of a step's time on the 8x16 and 32x64 grids. A grid is a frozen dataclass, so
    the faces it computed once are the ones it would compute again."""

    @cached_property
    def faces(self):
        return super().faces


@lru_cache(maxsize=8)
def _numpy_template(flow: "WakeFlow", precision: int):
    """``flow._phi()`` on a grid that keeps its faces, built once per flow (its grid, domain,
    boundaries and obstacle: every field of the frozen ``WakeFlow``) and precision."""
    template, obstacle = flow._phi()
    grid = template.geometry
    with pm.NUMPY:
        kept = _FacesOnce(grid.resolution, grid.bounds)
    if kept != grid:  # PhiFlow's grid equality: a changed UniformGrid would not be taken silently
        raise AssertionError(f"the reused grid {kept} differs from PhiFlow's {grid}")
    return template.with_geometry(kept), obstacle


class SimulationError(ZoracleError, FloatingPointError):
    """The simulation produced non-finite velocities; the message names the step and the runs.

    ``entries``: the failing entries of the simulation's batch (None when unknown), which a
    caller that built the batch maps back to what it stands for."""

    def __init__(self, message: str, entries=None):
        super().__init__(message)
        self.entries = None if entries is None else [int(e) for e in entries]


@dataclass(frozen=True)
class WakeFlow:
    """Unsteady 2D wake flow behind a cylinder (Um et al. 2020), one resolution.

    Domain ``[0, width] x [0, height]``, cylinder of ``radius`` at ``center``, inflow
    ``v_y = inflow`` through the bottom, open (zero-gradient) sides and top. One step of
    ``dt``: explicit diffusion (sub-stepped when needed for stability), semi-Lagrangian
    self-advection, pressure projection with the cylinder as obstacle (CG to ``tol``).
    The kinematic viscosity is ``inflow * 2 * radius / Re``.

    Parameters
    ----------
    nx, ny : int
        Cells along x and y (default 32 x 64: the coarse grid of the benchmark).
    width, height : float
        The domain's size.
    center : tuple of float
        The cylinder's centre.
    radius : float
        The cylinder's radius.
    inflow : float
        The inflow velocity ``v_y`` through the bottom.
    dt : float
        The time step.
    tol : float
        Relative and absolute tolerance of the CG pressure solve.
    max_iter : int
        Iteration limit of the CG pressure solve.
    kick : float
        Amplitude of the small asymmetric x-velocity blob in the initial state that starts
        the vortex shedding deterministically.

    Examples
    --------
    >>> flow = WakeFlow(nx=16, ny=32)
    >>> vx, vy = flow.initial(2)
    >>> vx.shape, vy.shape
    ((2, 17, 32), (2, 16, 32))
    """

    nx: int = 32
    ny: int = 64
    width: float = 100.0
    height: float = 200.0
    center: tuple = (50.0, 50.0)
    radius: float = 10.0
    inflow: float = 1.0
    dt: float = 1.0
    tol: float = 1e-5
    max_iter: int = 2000
    kick: float = 0.5

    def __post_init__(self):
        for name in ("nx", "ny"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 4:
                raise ArgumentError(f"`{name}` must be an integer >= 4, got {v!r}")
        for name in ("width", "height", "radius", "inflow", "dt", "tol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v) \
                    or v <= 0:
                raise ArgumentError(f"`{name}` must be a finite number > 0, got {v!r}")
        v = self.max_iter
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ArgumentError(f"`max_iter` (pressure solve iterations) must be an integer >= 1, got {v!r}")
        if isinstance(self.kick, bool) or not isinstance(self.kick, (int, float, np.integer, np.floating)) \
                or not np.isfinite(self.kick):
            raise ArgumentError(f"`kick` must be a finite number, got {self.kick!r}")
        try:
            center = tuple(float(c) for c in self.center)
        except (TypeError, ValueError):
            center = ()
        if len(center) != 2 or not all(np.isfinite(center)):
            raise ArgumentError(f"`center` must be two finite numbers (x, y), got {self.center!r}")
        cx, cy = center
        if not (self.radius < cx < self.width - self.radius and self.radius < cy < self.height - self.radius):
            raise ArgumentError(f"the cylinder (center {center}, radius {self.radius}) must lie inside the domain "
                                f"[0, {self.width}] x [0, {self.height}]")
        object.__setattr__(self, "center", center)

    # geometry ----------------------------------------------------------------------------
    @property
    def dx(self) -> float:
        """Cell width, ``width / nx``."""
        return self.width / self.nx

    @property
    def dy(self) -> float:
        """Cell height, ``height / ny``."""
        return self.height / self.ny

    @property
    def shapes(self) -> tuple:
        """Shapes of one state's ``(vx, vy)`` without the batch axis."""
        return (self.nx + 1, self.ny), (self.nx, self.ny)

    def coarsened(self, factor: int) -> "WakeFlow":
        """The same flow on a grid ``factor`` times coarser in each direction."""
        if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
            raise ArgumentError(f"`factor` must be an integer >= 1, got {factor!r}")
        if self.nx % factor or self.ny % factor:
            raise ArgumentError(f"the grid {self.nx}x{self.ny} is not divisible by the factor {factor}")
        if self.nx // factor < 4 or self.ny // factor < 4:  # named as the factor, not the coarse grid's nx
            raise ArgumentError(f"`factor` {factor} leaves a {self.nx // factor}x{self.ny // factor} grid of the "
                                f"{self.nx}x{self.ny} one; a grid needs at least 4 cells a side: use a smaller factor")
        return WakeFlow(**{**asdict(self), "nx": self.nx // factor, "ny": self.ny // factor})

    def viscosity(self, re) -> np.ndarray:
        """Kinematic viscosity ``U * D / Re`` for Reynolds number(s) ``re``."""
        re = np.asarray(re, dtype=np.float64)
        if not np.all(np.isfinite(re)) or np.any(re <= 0):
            raise ArgumentError(f"Reynolds numbers must be finite and > 0, got {re.tolist()}")
        return self.inflow * 2 * self.radius / re

    def substeps(self, re) -> int:
        """Explicit-diffusion sub-steps that keep ``nu dt / dx^2`` under 0.2 (stable) at Reynolds
        number(s) ``re``.

        For several Reynolds numbers, the largest count (that of the lowest Re);
        :meth:`simulate` gives each batch entry its own count.
        """
        return int(self._substeps_each(re).max(initial=1))

    def _substeps_each(self, re) -> np.ndarray:
        """Sub-step count of each Reynolds number in ``re`` (a 1-D int array)."""
        re = np.atleast_1d(np.asarray(re, dtype=np.float64))
        nu = self.viscosity(re)
        h2 = 0.2 * min(self.dx, self.dy) ** 2
        n = np.maximum(1, np.ceil(nu * self.dt / h2))
        if re.size and n.max() > MAX_SUBSTEPS:
            lowest = float(re[np.argmax(n)])
            re_min = self.inflow * 2 * self.radius * self.dt / (h2 * MAX_SUBSTEPS)
            raise ArgumentError(
                f"`re` = {lowest:g} needs {int(n.max())} explicit-diffusion sub-steps per solver step on this "
                f"{self.nx}x{self.ny} grid (at most {MAX_SUBSTEPS}): use Reynolds numbers >= {re_min:.3g}, a "
                "coarser grid or a smaller `dt`"
            )
        return n.astype(np.int64)

    def fluid_mask(self) -> np.ndarray:
        """``(nx, ny)`` boolean mask of the fluid cells clear of the cylinder: those whose centre lies
        more than ``radius + 1.5 * max(dx, dy)`` from its centre (the cells the rasterized obstacle
        touches are left out, with a margin)."""
        xc = (np.arange(self.nx) + 0.5) * self.dx
        yc = (np.arange(self.ny) + 0.5) * self.dy
        X, Y = np.meshgrid(xc, yc, indexing="ij")
        # cells touched by the rasterized obstacle are excluded with one cell of margin
        r = np.hypot(X - self.center[0], Y - self.center[1])
        return r > self.radius + 1.5 * max(self.dx, self.dy)

    # phi objects -------------------------------------------------------------------------
    def _phi(self):
        bounds = Box(x=self.width, y=self.height)
        bc = {"x": pm.extrapolation.ZERO_GRADIENT, "y-": pm.vec(x=0.0, y=self.inflow),
              "y+": pm.extrapolation.ZERO_GRADIENT}
        with pm.NUMPY:
            template = StaggeredGrid(0.0, bc, bounds, x=self.nx, y=self.ny)
        obstacle = Sphere(x=self.center[0], y=self.center[1], radius=self.radius)
        return template, obstacle

    # states ------------------------------------------------------------------------------
    def initial(self, batch: int = 1, dtype=np.float32) -> tuple:
        """Uniform inflow plus a small asymmetric x-velocity blob behind the cylinder: face arrays
        ``(vx, vy)`` of ``batch`` equal states, in ``dtype``."""
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ArgumentError(f"`batch` must be an integer >= 1, got {batch!r}")
        (sx, sy) = self.shapes
        xf = np.arange(sx[0]) * self.dx
        yc = (np.arange(sx[1]) + 0.5) * self.dy
        X, Y = np.meshgrid(xf, yc, indexing="ij")
        cx, cy = self.center
        blob = self.kick * np.exp(-((X - cx) ** 2 + (Y - cy - 2.5 * self.radius) ** 2) / (2 * self.radius ** 2))
        vx = np.broadcast_to(blob, (batch,) + sx).astype(dtype)
        vy = np.full((batch,) + sy, self.inflow, dtype=dtype)
        return vx.copy(), vy

    def to_phi(self, vx, vy, template=None):
        """A PhiFlow ``StaggeredGrid`` (batch dimension ``sim``) from face arrays ``vx``, ``vy``, on
        ``template``'s grid and boundaries (default: this flow's)."""
        if template is None:
            template, _ = self._phi()
        tx = pm.wrap(vx, pm.batch("sim"), pm.spatial("x,y"))
        ty = pm.wrap(vy, pm.batch("sim"), pm.spatial("x,y"))
        return template.with_values(pm.stack([tx, ty], pm.dual(vector="x,y")))

    @staticmethod
    def from_phi(v, native: bool = False) -> tuple:
        """Face arrays ``(vx, vy)`` (batch first) of ``v``, a ``StaggeredGrid`` with batch dim ``sim``:
        NumPy arrays, or the backend's own tensors with ``native=True``."""
        tx, ty = pm.unstack(v.values, "~vector")
        if native:
            return tx.native("sim,x,y"), ty.native("sim,x,y")
        return tx.numpy("sim,x,y"), ty.numpy("sim,x,y")

    def simulate(self, vx, vy, re, steps: int, *, correct=None, record: bool = False,
                 start: int = 0, check: bool = True):
        """Advance a batch of states by ``steps`` solver steps.

        Parameters
        ----------
        vx, vy : array
            Face velocities, shapes ``(B, nx + 1, ny)`` and ``(B, nx, ny)``: NumPy arrays, or
            torch tensors (then PhiFlow's torch backend runs and the result is differentiable:
            call ``.backward()`` inside ``with phiml.backend.torch.TORCH:`` too, since the
            pressure solve's adjoint runs on the default backend otherwise).
        re : array_like
            Reynolds number per batch entry, shape ``(B,)`` (or a scalar).
        steps : int
            Solver steps to take.
        correct : callable, optional
            ``correct(vx, vy, t) -> (vx, vy)`` applied after every solver step ``t`` (a
            correction network; solver-in-the-loop).
        record : bool
            Return every state (``(B, steps + 1, ...)`` arrays) instead of the last one.
        start : int
            Number of the first step, used in error messages.
        check : bool
            Raise :class:`SimulationError` as soon as a state is not finite.

        Returns
        -------
        (vx, vy)
            The final (or every) state, the same kind of arrays as the input (NumPy or torch)
            in PhiFlow's precision: float32 by default, float64 after
            ``phi.math.set_global_precision(64)``, whatever the input's dtype.
        """
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ArgumentError(f"`steps` must be an integer >= 0, got {steps!r}")
        if not all(isinstance(v, np.ndarray) or type(v).__module__.startswith("torch") for v in (vx, vy)):
            raise ArgumentError(f"`vx` and `vy` must be NumPy arrays or torch tensors, got {type(vx).__name__} and "
                                f"{type(vy).__name__}")
        is_torch = not isinstance(vx, np.ndarray)
        B = vx.shape[0]
        if tuple(vx.shape[1:]) != self.shapes[0] or tuple(vy.shape[1:]) != self.shapes[1] or vy.shape[0] != B:
            raise ArgumentError(
                f"state shapes {tuple(vx.shape)}, {tuple(vy.shape)} do not match the grid: expected "
                f"(B, {self.nx + 1}, {self.ny}) and (B, {self.nx}, {self.ny})"
            )
        try:
            re = np.asarray(re, dtype=np.float64)
        except (TypeError, ValueError):
            raise ArgumentError(f"`re` must be Reynolds numbers, got {re!r}") from None
        if re.shape not in ((), (1,), (B,)):
            raise ArgumentError(f"`re` must be one Reynolds number or one per batch entry ({B}), got shape {re.shape}")
        re = np.broadcast_to(re, (B,))
        nu = self.viscosity(re)
        if B == 0:  # nothing to simulate (PhiFlow would fail on an empty batch dimension)
            if not record:
                return vx, vy
            if is_torch:
                return vx.unsqueeze(1).expand(-1, steps + 1, -1, -1), vy.unsqueeze(1).expand(-1, steps + 1, -1, -1)
            return (np.broadcast_to(vx[:, None], (0, steps + 1) + vx.shape[1:]).copy(),
                    np.broadcast_to(vy[:, None], (0, steps + 1) + vy.shape[1:]).copy())
        # each entry diffuses with its own sub-step count, as it would alone (the batch's
        # largest count changed a Re 600 run by 5e-3 next to a Re 150 one on the 128x256 grid);
        # the rest of the step runs on the whole batch, which is per-entry exact
        each = self._substeps_each(re)
        groups = [(int(n), np.flatnonzero(each == n)) for n in np.unique(each)]
        if is_torch:
            from phiml.backend.torch import TORCH as backend
        else:
            backend = pm.NUMPY
        # PhiFlow's default backend and its geometry caches are process-wide: threads sharing it
        # (a threading executor) got wrong losses or crashed; they take turns here
        with _ONE_SIMULATION, backend:  # PhiFlow samples on its default backend: keep it that of the state
            return self._loop(vx, vy, nu, groups, steps, correct, record, start, check, is_torch)

    def _diffuse(self, v, nu, groups, template, is_torch):
        """Explicit diffusion, each group of batch entries with its own sub-step count."""
        if len(groups) <= 1:
            sub = groups[0][0] if groups else 1
            return diffuse.explicit(v, pm.tensor(nu, pm.batch("sim")), self.dt, substeps=sub)
        vx, vy = self.from_phi(v, native=is_torch)
        if is_torch:
            import torch

            def take(a, idx):
                return a[torch.as_tensor(idx, device=a.device)]

            cat = torch.cat
        else:
            def take(a, idx):
                return a[idx]

            cat = np.concatenate
        parts_x, parts_y = [], []
        for sub, idx in groups:
            g = self.to_phi(take(vx, idx), take(vy, idx), template)
            g = diffuse.explicit(g, pm.tensor(nu[idx], pm.batch("sim")), self.dt, substeps=sub)
            gx, gy = self.from_phi(g, native=is_torch)
            parts_x.append(gx)
            parts_y.append(gy)
        inv = np.argsort(np.concatenate([idx for _, idx in groups]), kind="stable")
        return self.to_phi(take(cat(parts_x), inv), take(cat(parts_y), inv), template)

    def _loop(self, vx, vy, nu, groups, steps, correct, record, start, check, is_torch):
        if _REUSE_GRID and not is_torch:
            template, obstacle = _numpy_template(self, pm.get_precision())
        else:
            template, obstacle = self._phi()
        # the backward pass's pressure solve (first-order training, fit_differentiable) to the relative
        # tolerance alone: the loss gradient reaching it is about as small as the absolute one (a mean
        # over faces, ~1e-5), with which its CG stopped early (partials 2-28% off). A tol below what
        # float32 reaches relatively (1e-8) ends at max_iter with a residual at round-off: kept, not raised
        adjoint = pm.Solve("CG", self.tol, 0.0, max_iterations=self.max_iter, suppress=(pm.NotConverged,))
        solve = pm.Solve("CG", self.tol, self.tol, max_iterations=self.max_iter, gradient_solve=adjoint)
        if check:
            self._check_finite(vx, vy, start, after="nothing: the initial state")
        v = self.to_phi(vx, vy, template)
        pressure = None
        hist = [(vx, vy)] if record else None
        cx, cy = vx, vy
        for t in range(steps):
            v = self._diffuse(v, nu, groups, template, is_torch)
            v = advect.semi_lagrangian(v, v, self.dt)
            s = solve if pressure is None else pm.Solve("CG", self.tol, self.tol, max_iterations=self.max_iter, x0=pressure,
                                                         gradient_solve=adjoint)
            try:
                v, pressure = fluid.make_incompressible(v, [obstacle], s)
            except pm.ConvergenceException as exc:
                raise self._solve_error(exc, start + t) from None
            cx, cy = self.from_phi(v, native=is_torch)
            if check:
                self._check_finite(cx, cy, start + t)
            if correct is not None:
                shapes = (tuple(cx.shape), tuple(cy.shape))
                out = correct(cx, cy, start + t)
                got = tuple(tuple(getattr(a, "shape", ())) for a in out) if isinstance(out, (tuple, list)) else None
                if got != shapes:  # PhiFlow's own error would name merged shapes, not the callback
                    raise ArgumentError(f"`correct` must return (vx, vy) of the shapes it was given {shapes}; at step "
                                        f"{start + t} it returned "
                                        f"{got if got is not None else type(out).__name__}")
                cx, cy = out
                if check:
                    self._check_finite(cx, cy, start + t, after="the correction")
                v = self.to_phi(cx, cy, template)
            if record:
                hist.append((cx, cy))
        if not record:
            return cx, cy
        if is_torch:
            import torch

            return torch.stack([h[0] for h in hist], 1), torch.stack([h[1] for h in hist], 1)
        return np.stack([h[0] for h in hist], 1), np.stack([h[1] for h in hist], 1)

    def _solve_error(self, exc, t) -> "SimulationError":
        """The error for a failed pressure solve, naming the batch entries and the likely cause."""
        info = exc.result
        try:
            failed = np.atleast_1d(~info.converged.numpy())
            diverged = bool(np.any(info.diverged.numpy())) or isinstance(exc, pm.Diverged)
            residual = float(np.max(np.abs(info.residual.numpy())))
        except (AttributeError, TypeError, ValueError):  # another PhiFlow's SolveInfo: say what we know
            return SimulationError(f"the pressure solve of the wake-flow simulation failed at step {t} "
                                   f"({type(exc).__name__}: {str(exc)[:200]})")
        runs = np.flatnonzero(failed)
        shown = ", ".join(map(str, runs[:8].tolist())) + (", ..." if runs.size > 8 else "")
        if diverged:
            why = ("it diverged: the state is likely non-finite or blown up; lower the correction's magnitude, "
                   "the time step or the Reynolds number")
        else:
            why = (f"it did not reach the tolerance {self.tol:g} within `max_iter`={self.max_iter} iterations "
                   f"(largest residual {residual:.3g}): raise `max_iter` or `tol`")
        return SimulationError(
            f"the pressure solve of the wake-flow simulation failed at step {t} (batch entries {shown} of "
            f"{failed.size}): {why}", entries=runs
        )

    @staticmethod
    def _check_finite(vx, vy, t, after="the solver"):
        if isinstance(vx, np.ndarray):
            bad = ~(np.isfinite(vx).reshape(vx.shape[0], -1).all(1) & np.isfinite(vy).reshape(vy.shape[0], -1).all(1))
        else:
            import torch

            with torch.no_grad():
                bad = (~(torch.isfinite(vx).flatten(1).all(1) & torch.isfinite(vy).flatten(1).all(1))).cpu().numpy()
        if bad.any():
            runs = np.flatnonzero(bad)
            shown = ", ".join(map(str, runs[:8].tolist())) + (", ..." if runs.size > 8 else "")
            raise SimulationError(
                f"the wake-flow simulation produced non-finite velocities at step {t} after {after} "
                f"(batch entries {shown} of {bad.size}); lower the correction's magnitude, the time "
                "step or the Reynolds number", entries=runs
            )

    def divergence(self, vx, vy) -> np.ndarray:
        """Finite-volume divergence ``(B, nx, ny)`` of face velocities ``vx``, ``vy`` (inflow face included)."""
        vx, vy = np.asarray(vx), np.asarray(vy)
        inflow = np.full(vy.shape[:-1] + (1,), self.inflow, dtype=vy.dtype)
        fy = np.concatenate([inflow, vy], axis=-1)
        return (vx[:, 1:, :] - vx[:, :-1, :]) / self.dx + (fy[:, :, 1:] - fy[:, :, :-1]) / self.dy


def downsample(vx, vy, factor: int) -> tuple:
    """Fine face velocities ``vx``, ``vy`` to a grid ``factor`` times coarser, conserving face fluxes.

    A coarse face carries the mean of the ``factor`` fine faces it covers, so the coarse
    divergence of a cell is the mean of the fine divergences inside it (a divergence-free
    fine field stays divergence-free). Works on any leading batch axes.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ArgumentError(f"`factor` must be an integer >= 1, got {factor!r}")
    vx, vy = np.asarray(vx), np.asarray(vy)
    f = factor
    nxf, nyf = vy.shape[-2], vy.shape[-1]
    if nxf % f or nyf % f or vx.shape[-2] != nxf + 1 or vx.shape[-1] != nyf:
        raise ArgumentError(
            f"fine faces of shapes {vx.shape[-2:]} and {vy.shape[-2:]} cannot be coarsened by {f}: "
            "the grid must be divisible by the factor"
        )
    lead = vx.shape[:-2]
    cx = vx[..., ::f, :].reshape(lead + (nxf // f + 1, nyf // f, f)).mean(-1)
    cy = vy[..., :, f - 1::f].reshape(lead + (nxf // f, f, nyf // f)).mean(-2)
    return cx.astype(vx.dtype, copy=False), cy.astype(vy.dtype, copy=False)


def vorticity(flow: WakeFlow, vx, vy) -> np.ndarray:
    """Vorticity ``dvy/dx - dvx/dy`` of the face velocities ``vx``, ``vy`` on ``flow``'s grid, at
    cell centres, shape ``(..., nx, ny)``."""
    vx, vy = np.asarray(vx, dtype=np.float64), np.asarray(vy, dtype=np.float64)
    ux = 0.5 * (vx[..., 1:, :] + vx[..., :-1, :])
    inflow = np.full(vy.shape[:-1] + (1,), flow.inflow)
    fy = np.concatenate([inflow, vy], axis=-1)
    uy = 0.5 * (fy[..., 1:] + fy[..., :-1])
    return np.gradient(uy, flow.dx, axis=-2) - np.gradient(ux, flow.dy, axis=-1)


@dataclass(frozen=True, eq=False)
class Reference:
    """Downsampled fine trajectories: ``vx (R, T + 1, nx + 1, ny)``, ``vy (R, T + 1, nx, ny)``, one
    run per Reynolds number in ``re`` (R,); ``path`` is the cache file ("" where not cached),
    ``cached`` whether it was read from there, ``seconds`` the fine solver's time.

    Two are equal when their arrays are (shapes and values) and their other fields are; like its
    arrays, a Reference has no hash."""

    vx: np.ndarray
    vy: np.ndarray
    re: np.ndarray
    path: str = ""
    cached: bool = False
    seconds: float = 0.0

    def __post_init__(self):
        re, vx, vy = np.asarray(self.re), np.asarray(self.vx), np.asarray(self.vy)
        if re.ndim != 1 or vx.ndim != 4 or vy.ndim != 4 or not vx.shape[0] == vy.shape[0] == re.shape[0]:
            raise ArgumentError(f"`Reference` needs one Reynolds number per run: vx {vx.shape}, vy {vy.shape} and re "
                                f"{re.shape} must share their first dimension (vx and vy 4-D: run, frame, x, y)")
        for name, a in (("re", re), ("vx", vx), ("vy", vy)):
            if a.dtype.kind not in "iuf":
                raise ArgumentError(f"`Reference.{name}` must hold numbers, got dtype {a.dtype}")
            if not np.isfinite(a).all():  # a target frame's NaN made every loss NaN, silently
                run, frame = (np.argwhere(~np.isfinite(a))[0].tolist() + [None])[:2]
                where = f"run {run}" + (f", frame {frame}" if name != "re" else "")
                raise ArgumentError(f"`Reference.{name}` holds a NaN or inf ({where}); every loss against it "
                                    "would be NaN: recompute or drop that run")
        # staggered faces of one grid, frame for frame: a vy of fewer frames broadcast its one frame
        # over the steps of a rollout (a wrong error, silently), or failed inside the solver
        if vx.shape[1] != vy.shape[1] or vx.shape[2] != vy.shape[2] + 1 or vx.shape[3] != vy.shape[3]:
            raise ArgumentError(f"`Reference.vx` {vx.shape} and `Reference.vy` {vy.shape} must be one grid's faces, "
                                "frame for frame: vx (runs, frames, nx + 1, ny) and vy (runs, frames, nx, ny)")
        if not (re > 0).all():
            raise ArgumentError(f"`Reference.re` must be > 0, got {float(re[~(re > 0)][0])} (run "
                                f"{int(np.flatnonzero(~(re > 0))[0])})")
        # as arrays (a list of Reynolds numbers could not be indexed by a run array)
        object.__setattr__(self, "re", re)
        object.__setattr__(self, "vx", vx)
        object.__setattr__(self, "vy", vy)

    # the dataclass's == compared the arrays' elementwise results as truth values (a ValueError)
    def __eq__(self, other):
        if not isinstance(other, Reference):
            return NotImplemented
        return all(np.array_equal(getattr(self, k), getattr(other, k)) for k in ("vx", "vy", "re")) and \
            (self.path, self.cached, self.seconds) == (other.path, other.cached, other.seconds)

    __hash__ = None

    def __repr__(self) -> str:
        """The trajectories by shape and dtype: the generated repr printed NumPy's summary of both
        4-D arrays (about 19 kB and 600 lines for 8 runs of 100 frames)."""
        return (f"Reference(vx=<{self.vx.dtype} {self.vx.shape}>, vy=<{self.vy.dtype} {self.vy.shape}>, "
                f"re={self.re!r}, path={self.path!r}, cached={self.cached!r}, seconds={self.seconds!r})")

    def select(self, runs) -> "Reference":
        """The runs ``runs`` (an index or a sequence of them: the run axis is kept)."""
        idx = np.atleast_1d(np.asarray(runs))
        return Reference(self.vx[idx], self.vy[idx], self.re[idx], self.path, self.cached, self.seconds)


def default_cache_dir() -> Path:
    """``$ZORACLE_CACHE`` or ``~/.cache/zoracle``."""
    root = os.environ.get("ZORACLE_CACHE") or os.path.join("~", ".cache", "zoracle")
    return Path(root).expanduser()  # "~/cache" (an env file, a config) is the home's, as the CLI checks it


def _key(fine: WakeFlow, re, warmup, steps, factor) -> tuple:
    flow = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in asdict(fine).items()}  # NumPy scalars
    meta = {"version": CACHE_VERSION, "flow": flow, "re": [float(r) for r in re],
            "warmup": int(warmup), "steps": int(steps), "factor": int(factor)}
    if pm.get_precision() != 32:  # phi.math.set_global_precision(64): other trajectories (keys of 32 unchanged)
        meta["precision"] = int(pm.get_precision())
    blob = json.dumps(meta, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20], blob


def reference_trajectories(fine: WakeFlow, re, *, factor: int = 4, warmup: int = 0, steps: int = 100,
                           cache_dir=None, progress=None) -> Reference:
    """Trajectories of the ``fine`` flow for each Reynolds number in ``re``, downsampled by
    ``factor``; cached on disk.

    The fine solver runs all Reynolds numbers as one batch for ``warmup`` steps (the
    initial transient, not recorded) and then ``steps`` recorded steps. The result is stored
    as ``wake-<key>.npz`` under ``cache_dir`` (default :func:`default_cache_dir`), keyed by
    every parameter that changes it: the fine flow's settings, the Reynolds numbers,
    ``warmup``, ``steps``, ``factor``, PhiFlow's global precision and the cache format version.
    A cached file is used only if this user owns it (another user's is recomputed).
    ``progress``, where given, is called with a line of text before each solver phase.

    Returns
    -------
    Reference
        ``vx``/``vy`` of shape ``(R, steps + 1, ...)`` on the coarse grid, and ``re``.
    """
    import time

    try:
        re = np.atleast_1d(np.asarray(re, dtype=np.float64))
    except (TypeError, ValueError):
        raise ArgumentError(f"`re` must be a list of Reynolds numbers, got {re!r}") from None
    if re.ndim != 1 or re.size == 0:
        raise ArgumentError(
            f"`re` must be a non-empty 1-D list of Reynolds numbers (one run each), got shape {re.shape}"
        )
    fine._substeps_each(re)  # validates the Reynolds numbers and the sub-step count before any work
    for name, v, lo in (("warmup", warmup, 0), ("steps", steps, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ArgumentError(f"`{name}` must be an integer >= {lo}, got {v!r}")
    fine.coarsened(factor)  # validates divisibility
    key, blob = _key(fine, re, warmup, steps, factor)
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = directory / f"wake-{key}.npz"
    if path.exists():
        try:
            # our own handle: np.load leaves its file open when the zip is damaged
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                # only a file this user wrote: another's (a shared folder such as /tmp/...) is recomputed
                mine = not hasattr(os, "getuid") or os.fstat(fh.fileno()).st_uid == os.getuid()
                if mine and str(z["meta"]) == blob:
                    return Reference(z["vx"], z["vy"], z["re"], str(path), True, float(z["seconds"]))
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # a damaged (e.g. truncated) cache file is recomputed and replaced below
    try:  # where the result goes is checked before the simulation (minutes at the default size)
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ArgumentError(f"`cache_dir` {str(directory)!r} cannot hold the reference trajectories "
                            f"({type(exc).__name__}: {exc}); pass a writable directory") from None
    t0 = time.perf_counter()
    vx, vy = fine.initial(len(re))
    if warmup:
        if progress:
            progress(f"fine solver {fine.nx}x{fine.ny}: {warmup} warm-up steps for Re = {re.tolist()}")
        vx, vy = fine.simulate(vx, vy, re, warmup)
    if progress:
        progress(f"fine solver {fine.nx}x{fine.ny}: {steps} recorded steps")
    first = downsample(vx, vy, factor)
    out_x, out_y = [first[0]], [first[1]]

    def keep(fx, fy, t):  # record the downsampled state; the fine state continues unchanged
        cx, cy = downsample(fx, fy, factor)
        out_x.append(cx)
        out_y.append(cy)
        return fx, fy

    fine.simulate(vx, vy, re, steps, correct=keep, start=warmup)
    seconds = time.perf_counter() - t0
    vxs, vys = np.stack(out_x, 1), np.stack(out_y, 1)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, vx=vxs, vy=vys, re=re, meta=np.array(blob), seconds=np.array(seconds))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError as exc:  # a disk filled during the simulation: its result is used, uncached
        try:
            os.remove(tmp)  # (a partial file left behind kept the disk full)
        except OSError:
            pass
        warn(f"reference_trajectories: the fine trajectories ({seconds:.1f} s) could not be cached at "
             f"{str(path)!r} ({type(exc).__name__}: {exc}); they are used uncached, and the next run "
             "computes them again: free space or pass another `cache_dir`",
             UserWarning, stacklevel=user_stacklevel())
        return Reference(vxs, vys, re, "", False, seconds)
    return Reference(vxs, vys, re, str(path), False, seconds)
