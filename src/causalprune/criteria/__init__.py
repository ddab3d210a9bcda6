"""Pruning criteria: each only *scores* weights; `selection.select` thresholds them all alike.

A criterion is registered under a method name with `register`. Criteria that need the
recorded SGD trajectory of a round (``records=True``) get it in `ScoreInput.trajectory`;
the others score the model as it stands after the round's training. ``dense`` is the
no-pruning baseline and has no criterion.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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
    cfg: Config | None = None  # None when called through `score()` outside the driver
    seed: int = 0  # round-specific seed, for criteria that draw random numbers
    trajectory: Trajectory | None = None
    data: Sequence[tuple[Any, Any]] = ()  # (inputs, targets) batches for data-driven criteria
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    target_sparsity: float | None = None  # the round's cumulative target (SynFlow's inner schedule)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scored:
    """Scores, optional tie-break scores, and facts worth logging."""

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
    higher_is_important: bool = True  # False: the largest scores are pruned first (GraSP)
    needs_data: bool = False  # scores from (inputs, targets) batches


METHODS: dict[str, Criterion | None] = {"dense": None}


def register(name: str, *, records: bool = False, description: str, uses_causal_config: bool = False,
             higher_is_important: bool = True, needs_data: bool = False):  # fmt: skip
    """Decorator: register `fn(ScoreInput) -> Scored` as pruning method `name`."""

    def wrap(fn: Callable[[ScoreInput], Scored]) -> Callable[[ScoreInput], Scored]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = Criterion(name, records, fn, description, uses_causal_config, higher_is_important,
                                  needs_data)  # fmt: skip
        return fn

    return wrap


def get(name: str) -> Criterion | None:
    """Return the criterion registered as `name` (None for ``dense``)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def names() -> list[str]:
    """Return the names of the scoring criteria (every method except ``dense``)."""
    return sorted(n for n, c in METHODS.items() if c is not None)


def score(
    name: str,
    model: nn.Module,
    data: Iterable[tuple[Any, Any]] = (),
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Score `model`'s prunable weights with criterion `name`; return name → scores.

    `data` is an iterable of (inputs, targets) batches (ignored by data-free criteria).
    Options: ``mask`` (a `Mask`; default all alive), ``seed``, ``sparsity`` (SynFlow's
    iterative target), ``trajectory`` (causal criteria), and criterion-specific ones.
    Scores follow each method's own formula; for GraSP the *largest* scores are pruned
    (`Criterion.higher_is_important` is False).
    """
    from ..masks import Mask

    crit = get(name)
    if crit is None:
        raise ValueError("'dense' prunes nothing and has no scores")
    mask = options.pop("mask", None) or Mask.ones(model)
    batches = list(data)
    if crit.needs_data and not batches:
        raise ValueError(f"criterion {name!r} needs data: an iterable of (inputs, targets) batches")
    if crit.needs_data and loss_fn is None:
        raise ValueError(f"criterion {name!r} needs loss_fn")
    traj = options.pop("trajectory", None)
    if crit.records and traj is None:
        raise ValueError(f"criterion {name!r} scores a recorded trajectory: pass trajectory=TrajectoryRecorder(...)"
                         ".trajectory()")  # fmt: skip
    inp = ScoreInput(model, mask, None, int(options.pop("seed", 0)), traj, batches, loss_fn,
                     options.pop("sparsity", None), options)  # fmt: skip
    return crit.fn(inp).scores


from . import causal, magnitude, saliency, synflow  # noqa: E402,F401  (registration side effects)

__all__ = ["METHODS", "Criterion", "ScoreInput", "Scored", "get", "names", "register", "score"]
