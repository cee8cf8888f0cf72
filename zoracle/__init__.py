"""zoracle: train and tune models through black boxes (DeepZero zeroth-order optimization).

Any callable ``params -> float`` is an oracle. The core imports NumPy, SciPy and joblib only;
framework adapters live in :mod:`zoracle.adapters`.
"""

from __future__ import annotations

import importlib.util as _ilu
import os as _os
import sys as _sys

from ._errors import ArgumentError, OracleError, ZoracleError
from ._estimators import CGE, RGE, SNES, GradientEstimate, estimate_gradient
from ._oracle import (
    BatchOracle,
    Capabilities,
    CoordinateOracle,
    DataOracle,
    LossOracle,
    Oracle,
    SplitOracle,
    capabilities,
)
from ._retrying import RetriesExhausted, retrying
from ._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ._malloc import reuse_freed_memory
from ._masks import DynamicMasks, keep_counts, random_masks
from ._optim import AdamState, Optimizer, SGDState, SignState, adam, sgd, sign_sgd
from ._pruning import layer_ratios, random_ratios, smart_ratio, split_blocks, uniform_ratios, zo_grasp
from ._schedules import constant_schedule, cosine_schedule, linear_warmup, step_schedule
from ._history import History, Minibatches, TrainResult
from ._train import train
from ._ask_tell import AskTell
from . import recipes  # noqa: E402  (imports train)

__version__ = "0.2.0"


def _map_source_tree(name: str) -> None:
    """In a source checkout, ``adapters/`` and ``apps/`` sit beside ``zoracle/``.

    Wheels (and editable installs) map them to ``zoracle.<name>`` through pyproject's
    ``package-dir``; when Python imports this package straight from a checkout (pytest from
    the repository root), register the sibling folder under the same name.
    """
    full = f"{__name__}.{name}"
    here = _os.path.dirname(__file__)
    sibling = _os.path.join(_os.path.dirname(here), name, "__init__.py")
    if full in _sys.modules or _os.path.isdir(_os.path.join(here, name)) or not _os.path.isfile(sibling):
        return
    for finder in _sys.meta_path:  # an editable install's finder already knows the mapping
        find = getattr(finder, "find_spec", None)
        if find is not None and type(finder).__name__ != "PathFinder":
            try:
                found = find(full, __path__)
            except Exception:  # a foreign finder failing is no reason to break the import
                continue
            if found is None:
                continue
            # the first finder that answers is the one the import would use: of this checkout,
            # it maps the sibling already; of another clone's editable install, it would pair
            # this clone's core with that clone's folder, so the sibling is registered below
            origin = getattr(found, "origin", None)
            if origin and _os.path.exists(origin) and _os.path.samefile(origin, sibling):
                return
            break
    spec = _ilu.spec_from_file_location(full, sibling, submodule_search_locations=[_os.path.dirname(sibling)])
    module = _ilu.module_from_spec(spec)
    _sys.modules[full] = module
    spec.loader.exec_module(module)
    globals()[name] = module


_map_source_tree("adapters")
_map_source_tree("apps")


def __getattr__(name: str):
    """``zo.smoothing``, ``zo.testing`` and ``zo.executors`` after ``import zoracle as zo``,
    imported when first used (SciPy's statistics and hypothesis stay out of ``import zoracle``)."""
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_LAZY = ("smoothing", "testing", "executors")


def __dir__():  # tab completion sees the lazy submodules before their first use
    return sorted({*globals(), *_LAZY} - {"annotations"})  # (`from __future__ import annotations`: not ours)

__all__ = [
    "ArgumentError",
    "BatchOracle",
    "CGE",
    "Capabilities",
    "CoordinateOracle",
    "DataOracle",
    "GradientEstimate",
    "LossOracle",
    "Oracle",
    "OracleError",
    "RGE",
    "SNES",
    "SplitOracle",
    "ZoracleError",
    "capabilities",
    "estimate_gradient",
    "RetriesExhausted",
    "retrying",
    # training (DeepZero)
    "AdamState",
    "AskTell",
    "CheckpointError",
    "DynamicMasks",
    "History",
    "Minibatches",
    "Optimizer",
    "SGDState",
    "SignState",
    "TrainResult",
    "adam",
    "constant_schedule",
    "cosine_schedule",
    "keep_counts",
    "layer_ratios",
    "linear_warmup",
    "load_checkpoint",
    "random_masks",
    "random_ratios",
    "save_checkpoint",
    "sgd",
    "sign_sgd",
    "smart_ratio",
    "split_blocks",
    "step_schedule",
    "train",
    "uniform_ratios",
    "zo_grasp",
    "recipes",
    # speed
    "reuse_freed_memory",
]
