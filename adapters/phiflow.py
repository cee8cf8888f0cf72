"""PhiFlow wake-flow simulator as a black box, and solver-in-the-loop correction (ZO-SOL).

Importing this module imports PhiFlow and torch (``pip install -e '.[phiflow,torch]'``).

- :class:`WakeFlow`: the unsteady 2D wake flow behind a cylinder (Um et al. 2020) at one
  resolution, on PhiFlow's NumPy backend; a batch of states runs as one batch dimension.
- :func:`downsample`, :func:`reference_trajectories`: fine trajectories, downsampled and
  cached on disk (npz keyed by every parameter that changes them).
- :class:`SolverInTheLoop`: the loss oracle of a correction network unrolled through the
  coarse solver, batched over parameter vectors (``BatchOracle``, ``CoordinateOracle``,
  ``DataOracle``).
- :func:`rollout`, :func:`mean_abs_error`: evaluation; :func:`fit_offline` (NON) and
  :func:`fit_differentiable` (FO-SOL, PhiFlow's torch backend) baselines.
"""

from __future__ import annotations

try:
    import phi  # noqa: F401
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"zoracle.adapters.phiflow needs PhiFlow and torch ({exc}); install them with: "
        "pip install -e '.[phiflow,torch]'"
    ) from exc

from ._phiflow_sim import (
    Reference,
    SimulationError,
    WakeFlow,
    default_cache_dir,
    downsample,
    reference_trajectories,
    vorticity,
)
from ._phiflow_sol import (
    ParamBlock,
    SolverInTheLoop,
    correction_net,
    fit_differentiable,
    fit_offline,
    flat_params,
    mean_abs_error,
    rollout,
)

__all__ = [
    "WakeFlow",
    "SimulationError",
    "Reference",
    "downsample",
    "reference_trajectories",
    "vorticity",
    "default_cache_dir",
    "ParamBlock",
    "SolverInTheLoop",
    "correction_net",
    "flat_params",
    "rollout",
    "mean_abs_error",
    "fit_offline",
    "fit_differentiable",
]
