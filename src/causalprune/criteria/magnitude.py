"""Data-free baselines: weight magnitude and random scores."""

from __future__ import annotations

import torch

from ..masks import prunable_parameters
from . import Scored, ScoreInput, register


@register("magnitude", reference=True, description="|θ| after the round's training (global magnitude pruning)")
def magnitude(inp: ScoreInput) -> Scored:
    """Score each weight by its absolute value."""
    params = prunable_parameters(inp.model)
    return Scored({n: params[n].detach().abs().cpu() for n in inp.mask})


@register("random", description="uniform random scores (seeded per run and round)")
def random(inp: ScoreInput) -> Scored:
    """Score each weight by an independent uniform draw."""
    g = torch.Generator().manual_seed(inp.seed)
    return Scored({n: torch.rand(m.shape, generator=g) for n, m in inp.mask.items()})
