"""Pruning criteria: each only *scores* weights; `selection.select` thresholds them all alike.

A criterion is registered under a method name with `register`. Criteria that need the
recorded SGD trajectory of a round (``records=True``) get it in `ScoreInput.trajectory`;
the others score the model as it stands after the round's training. ``dense`` is the
no-pruning baseline and has no criterion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ..config import Config
    from ..masks import Mask
    from ..trajectory import Trajectory


@dataclass
class ScoreInput:
    """What a criterion may look at for one pruning round."""

    model: nn.Module
    mask: Mask
    cfg: Config
    seed: int  # round-specific seed, for criteria that draw random numbers
    trajectory: Trajectory | None = None


@dataclass
class Scored:
    """Scores (higher = keep), optional tie-break scores, and facts worth logging."""

    scores: dict[str, torch.Tensor]
    tie_break: dict[str, torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Criterion:
    """A registered scoring method."""

    name: str
    records: bool  # needs the round's recorded trajectory
    fn: Callable[[ScoreInput], Scored]
    description: str
    uses_causal_config: bool = False  # reads causal.* keys (compare grids vary them)


METHODS: dict[str, Criterion | None] = {"dense": None}


def register(name: str, *, records: bool, description: str, uses_causal_config: bool = False):
    """Decorator: register `fn(ScoreInput) -> Scored` as pruning method `name`."""

    def wrap(fn: Callable[[ScoreInput], Scored]) -> Callable[[ScoreInput], Scored]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = Criterion(name, records, fn, description, uses_causal_config)
        return fn

    return wrap


def get(name: str) -> Criterion | None:
    """Return the criterion registered as `name` (None for ``dense``)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]


from . import causal, magnitude  # noqa: E402,F401  (registration side effects)

__all__ = ["METHODS", "Criterion", "ScoreInput", "Scored", "get", "register"]
