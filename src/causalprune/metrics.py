"""Efficiency metrics, ShrinkBench's set (Blalock et al. 2020), for a (pruned) model.

* ``size``: all parameters; ``size_nz``: non-zero parameters; ``compression_ratio`` =
  size / size_nz. A tensor shared by several modules (a tied weight) counts once.
* ``flops``: multiply-accumulate-based FLOPs of one forward on one sample, counted by
  `torch.utils.flop_counter` (dense); ``flops_nz``: each prunable layer's FLOPs scaled by
  its weight density (other operations count in full; a tied weight's density scales the
  FLOPs of every layer that uses it); ``theoretical_speedup`` = flops / flops_nz.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .masks import PRUNABLE_LAYERS


@torch.no_grad()
def efficiency(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """Return size, size_nz, compression_ratio, flops, flops_nz, theoretical_speedup."""
    size = sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once
    size_nz = sum(int((p != 0).sum()) for p in model.parameters())
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    flops = counter.get_total_flops()
    counts = counter.get_flop_counts()
    prefix = type(model).__name__
    flops_nz = float(flops)
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_LAYERS):
            continue
        layer = sum(counts.get(f"{prefix}.{name}", {}).values())
        w = module.weight
        density = float((w != 0).sum()) / w.numel()
        flops_nz -= layer * (1.0 - density)
    return {
        "size": size,
        "size_nz": size_nz,
        "compression_ratio": size / max(size_nz, 1),
        "flops": int(flops),
        "flops_nz": flops_nz,
        "theoretical_speedup": flops / max(flops_nz, 1e-30),
    }
