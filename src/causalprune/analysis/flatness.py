"""Flatness under random perturbation (paper eq. 16–17; docs/analysis.md, "Analysis tools").

For each σ on a grid and J draws ε_j ~ N(0, I) over every trainable parameter (pruned
weights stay exactly zero):

    relative loss  = mean_j log( L(θ + σ ε_j) / L(θ) )        (eq. 16)
    maximum loss   = max_j | L(θ + σ ε_j) − L(θ) |             (eq. 17)

L is the mean loss over `data` with the model in eval mode (a fixed function).

`mean_loss`, `mask_factors` and `restored` are shared with `landscape`: both perturb the
parameters (masks keyed by parameter name), evaluate, and put θ back however they end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..batching import Batch, as_batches
from ..io import save_json
from ..masks import Mask


@torch.no_grad()
def mean_loss(model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor], batches: Sequence[Batch]) -> float:
    """Return the sample-weighted mean loss over `batches` (eval mode)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for x, y in batches:
        total += float(loss_fn(model(x.to(device)), y.to(device))) * len(y)
        n += len(y)
    model.train(was)
    return total / n


def mask_factors(model: nn.Module, mask: Mask | None) -> dict[str, torch.Tensor]:
    """Return canonical parameter name → its mask as 0/1 in the parameter's dtype and device (empty without a mask).

    Multiplying a perturbation of that parameter by it keeps pruned weights exactly zero.
    """
    if mask is None:
        return {}
    mask = mask.canonical(model)  # names the model lacks raise; aliases of tied weights are resolved
    named = dict(model.named_parameters())
    return {n: mask[n].to(named[n].device, named[n].dtype) for n in mask}


@contextmanager
def restored(params: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Yield a copy of `params` (θ); on exit, however the block ends, copy it back into them."""
    theta = [p.detach().clone() for p in params]
    try:
        yield theta
    finally:
        with torch.no_grad():
            for p, t in zip(params, theta, strict=True):
                p.copy_(t)


@torch.no_grad()
def flatness(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    data: Batch | Iterable[Batch],
    sigmas: Sequence[float] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05),
    draws: int = 100,
    mask: Mask | None = None,
    seed: int = 0,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Return (and with `out`, write as flatness.json) eq. 16–17 on the σ grid."""
    batches = as_batches(data)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    keep = mask_factors(model, mask)
    with restored(params) as original:
        base = mean_loss(model, loss_fn, batches)
        if not (base > 0 and math.isfinite(base)):
            raise ValueError(f"the unperturbed loss is {base}; the relative loss needs a positive finite loss")
        g = torch.Generator(device="cpu").manual_seed(seed)
        result: dict[str, Any] = {"sigma": [], "relative_loss": [], "max_loss": [], "mean_increase": [],
                                  "base_loss": base, "draws": draws, "seed": seed}  # fmt: skip
        for sigma in sigmas:
            logs, diffs = [], []
            for _ in range(draws):
                for (name, p), p0 in zip(named, original, strict=True):
                    eps = torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device)
                    if name in keep:
                        eps.mul_(keep[name])  # pruned weights stay exactly zero
                    p.copy_(p0 + sigma * eps)
                loss = mean_loss(model, loss_fn, batches)
                logs.append(math.log(loss / base))
                diffs.append(loss - base)
            result["sigma"].append(float(sigma))
            result["relative_loss"].append(sum(logs) / draws)
            result["max_loss"].append(max(abs(d) for d in diffs))
            result["mean_increase"].append(sum(diffs) / draws)
    if out is not None:
        save_json(result, Path(out) / "flatness.json")
    return result
