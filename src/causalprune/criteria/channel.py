"""Channel-level baselines (``prune.granularity: channel``), scored with Torch-Pruning's importance classes.

| name | score per channel group | source |
|---|---|---|
| magnitude | mean over the coupled slices of Σ|θ|^p (``magnitude.norm`` p: 2, or 1) | Li et al. 2017 (L1) |
| taylor | mean over the coupled slices of Σ|θ ⊙ g| | Molchanov et al. 2019 (group Taylor) |
| bn_scale | |γ_BN| of the group's BatchNorm channel | Liu et al. 2017 (network slimming) |
| random | uniform draw (seeded per run and round) | — |

Magnitude, Taylor and BN-scale are Torch-Pruning's ``GroupMagnitudeImportance``,
``GroupTaylorImportance`` and ``BNScaleImportance`` (torch-pruning 1.6.0) on the groups its
`DependencyGraph` traced, without its per-layer normaliser (``normalizer=None``) so that
every method is ranked by its raw scores in the one selection code. Each importance is
computed on every coupled slice of a group — the producer's rows, the consumers' input
columns, the BatchNorm entries — and reduced by the mean (Torch-Pruning's default).
g is the gradient of the summed loss over ``prune.score_batches`` training batches.
Channels already pruned are zero and score 0 (they stay pruned in any case).
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp

from . import Scored, ScoreInput, register_channel
from .magnitude import MagnitudeSettings
from .saliency import batch_loss


def _groups(inp: ScoreInput) -> Any:
    """The `groups.ChannelGroups` of the model (criteria know them by their methods only)."""
    if inp.groups is None:
        raise ValueError("channel-level scores need the model's channel groups (ScoreInput.groups)")
    return inp.groups


@register_channel("magnitude")
def magnitude_channels(inp: ScoreInput) -> Scored:
    """Group L2 (or L1, ``magnitude.norm``) norm of every coupled slice, Torch-Pruning's GroupMagnitudeImportance."""
    groups = _groups(inp)
    norm = inp.settings.norm if isinstance(inp.settings, MagnitudeSettings) else 2
    imp = tp.importance.GroupMagnitudeImportance(p=norm, group_reduction="mean", normalizer=None)
    with torch.no_grad():
        return Scored(groups.per_layer(groups.importance(imp)))


@register_channel("taylor")
def taylor_channels(inp: ScoreInput) -> Scored:
    """First-order group Taylor |θ ⊙ g| summed per slice, Torch-Pruning's GroupTaylorImportance."""
    groups = _groups(inp)
    loss = batch_loss(inp)  # through the round's ModelIO (tensor, tuple or dict inputs)
    model = inp.model
    saved = {n: p.grad for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    try:
        for x, y in inp.data:
            loss(model, x, y).backward()
        imp = tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None)
        with torch.no_grad():
            values = groups.importance(imp)
    finally:
        for n, p in model.named_parameters():
            p.grad = saved[n]
    return Scored(groups.per_layer(values))


@register_channel("bn_scale", description="|γ_BN| of the channel's BatchNorm (network slimming, Liu et al. 2017)")
def bn_scale(inp: ScoreInput) -> Scored:
    """Score each channel group by the absolute scale of its BatchNorm channel (Torch-Pruning's BNScaleImportance)."""
    groups = _groups(inp)
    imp = tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None)
    try:
        with torch.no_grad():
            values = groups.importance(imp)
    except ValueError as e:
        raise ValueError(f"bn_scale needs a BatchNorm after every pruned layer: {e}") from None
    return Scored(groups.per_layer(values))


@register_channel("random")
def random_channels(inp: ScoreInput) -> Scored:
    """Score each channel group by an independent uniform draw (seeded per run and round)."""
    groups = _groups(inp)
    g = torch.Generator().manual_seed(inp.seed)
    return Scored(groups.per_layer(torch.rand(groups.G, generator=g, dtype=torch.float64)))


__all__ = ["bn_scale", "magnitude_channels", "random_channels", "taylor_channels"]
