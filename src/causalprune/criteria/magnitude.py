"""Data-free baselines: weight magnitude and random scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_choice, register_section
from ..masks import prunable_parameters
from . import Scored, ScoreInput, register


@register_section
@dataclass(frozen=True)
class MagnitudeSettings:
    """Config section ``magnitude``: the group norm of channel-level magnitude pruning (criteria/channel.py)."""

    SECTION = "magnitude"
    # p of the group norm Σ|θ|^p: 2 (Torch-Pruning's default) | 1 (the L1 filter norm of Li et al. 2017).
    # Single weights rank alike under both, so it matters at channel level only.
    norm: int = 2

    def __post_init__(self) -> None:
        check_choice(str(self.norm), ("1", "2"), "magnitude.norm")


@register("magnitude", reference=True, settings=MagnitudeSettings,
          description="|θ| after the round's training (global magnitude pruning)")
def magnitude(inp: ScoreInput) -> Scored:
    """Score each weight by its absolute value."""
    params = prunable_parameters(inp.model)
    return Scored({n: params[n].detach().abs().cpu() for n in inp.mask})


@register("random", description="uniform random scores (seeded per run and round)")
def random(inp: ScoreInput) -> Scored:
    """Score each weight by an independent uniform draw."""
    g = torch.Generator().manual_seed(inp.seed)
    return Scored({n: torch.rand(m.shape, generator=g) for n, m in inp.mask.items()})
