"""causalprune: Causal Pruning and the tools to test it.

Weights are ranked by how well their SGD updates explain the loss changes seen during
training (a Lasso fit of ΔL_t on (Δθ_k^t)², docs/method.md) and the least causal are pruned.
"""

import importlib
from typing import Any

from . import criteria, lasso, selection
from .groups import ChannelGroups, channel_groups
from .lasso import ConvergenceWarning, LassoResult
from .masks import Mask, parameter_aliases, prunable_parameters
from .pruner import CausalPruner
from .selection import LayerCollapseWarning, schedule, select
from .structured import ChannelPlan, slim_to_mask
from .trajectory import Trajectory, TrajectoryRecorder

__version__ = "0.1.0"



def __getattr__(name: str) -> Any:
    """Return `load_run` / `LoadedRun` from `causalprune.export`, imported on first use.

    A lazy import: lower layers import this package (``experiment`` reads ``__version__``),
    and ``export`` sits above them, so it must not load with the package.
    """
    if name in ("load_run", "LoadedRun"):
        return getattr(importlib.import_module(f"{__name__}.export"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CausalPruner",
    "ChannelGroups",
    "ChannelPlan",
    "ConvergenceWarning",
    "LassoResult",
    "LayerCollapseWarning",
    "LoadedRun",
    "Mask",
    "Trajectory",
    "TrajectoryRecorder",
    "__version__",
    "channel_groups",
    "criteria",
    "lasso",
    "load_run",
    "parameter_aliases",
    "prunable_parameters",
    "schedule",
    "select",
    "selection",
    "slim_to_mask",
]
