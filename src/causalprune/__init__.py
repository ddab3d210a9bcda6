"""causalprune: Causal Pruning and the tools to test it.

Weights are ranked by how well their SGD updates explain the loss changes seen during
training (a Lasso fit of ΔL_t on (Δθ_k^t)², docs/method.md) and the least causal are pruned.
"""

from . import criteria, lasso, selection
from .groups import ChannelGroups, channel_groups
from .lasso import ConvergenceWarning, LassoResult
from .masks import Mask, parameter_aliases, prunable_parameters
from .pruner import CausalPruner
from .selection import LayerCollapseWarning, schedule, select
from .structured import ChannelPlan, slim_to_mask
from .trajectory import Trajectory, TrajectoryRecorder

__version__ = "0.1.0"

__all__ = [
    "CausalPruner",
    "ChannelGroups",
    "ChannelPlan",
    "ConvergenceWarning",
    "LassoResult",
    "LayerCollapseWarning",
    "Mask",
    "Trajectory",
    "TrajectoryRecorder",
    "__version__",
    "channel_groups",
    "criteria",
    "lasso",
    "parameter_aliases",
    "prunable_parameters",
    "schedule",
    "select",
    "selection",
    "slim_to_mask",
]
