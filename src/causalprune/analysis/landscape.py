"""2-D loss landscape along filter-normalised random directions (Li et al. 2018; paper App. B).

Two Gaussian directions d₁, d₂ over every trainable parameter are filter-normalised
(eq. 26): for each filter (output unit / channel, i.e. each slice along dim 0 of a weight
with ≥ 2 dimensions) d ← d / ‖d‖ · ‖θ‖. A filter of θ that is all zero (e.g. fully
pruned) gets a zero direction; pruned weights get zero direction entries, so the surface
stays inside the pruned model (the mask is keyed by parameter name, as in `flatness`).
1-D parameters (biases, norm layers) get zero directions, as Li et al. recommend. The loss
L(θ + a d₁ + b d₂) is evaluated on a grid a, b ∈ [−1, 1]. See docs/analysis.md,
"Analysis tools".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..batching import Batch, as_batches
from ..masks import Mask
from .flatness import mask_factors, mean_loss, restored


def filter_normalise(direction: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Scale each filter (slice along dim 0) of `direction` to the norm of the same filter of `weight`."""
    if weight.dim() <= 1:
        return torch.zeros_like(direction)
    d = direction.reshape(direction.shape[0], -1)
    w = weight.reshape(weight.shape[0], -1)
    dn = d.norm(dim=1, keepdim=True)
    wn = w.norm(dim=1, keepdim=True)
    scale = torch.where(dn > 0, wn / dn.clamp_min(1e-30), torch.zeros_like(dn))  # zero filters: zero direction
    return (d * scale).reshape(direction.shape)


def random_direction(model: nn.Module, mask: Mask | None, generator: torch.Generator) -> list[torch.Tensor]:
    """Return one filter-normalised Gaussian direction (a tensor per trainable parameter)."""
    keep = mask_factors(model, mask)
    out = []
    for name, p in model.named_parameters():
        d = torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device, p.dtype)
        if name in keep:
            d = d * keep[name]
        out.append(filter_normalise(d, p.detach()))
    return out


@torch.no_grad()
def landscape(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    data: Batch | Iterable[Batch],
    steps: int = 21,
    mask: Mask | None = None,
    seed: int = 0,
    out: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Return {"alpha", "beta", "loss"} with loss[i, j] = L(θ + α_i d₁ + β_j d₂); write npz + figure."""
    batches = as_batches(data)
    g = torch.Generator(device="cpu").manual_seed(seed)
    d1, d2 = random_direction(model, mask, g), random_direction(model, mask, g)
    params = [p for _, p in model.named_parameters()]  # the order of the directions
    grid = np.linspace(-1.0, 1.0, steps)
    loss = np.zeros((steps, steps))
    with restored(params) as theta:
        for i, a in enumerate(grid):
            for j, b in enumerate(grid):
                for p, t, u, v in zip(params, theta, d1, d2, strict=True):
                    p.copy_(t + a * u + b * v)
                loss[i, j] = mean_loss(model, loss_fn, batches)
    result = {"alpha": grid, "beta": grid, "loss": loss}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "landscape.npz", **result)
        plot_landscape(result, out / "landscape.png")
    return result


def plot_landscape(result: dict[str, np.ndarray], path: str | Path, title: str = "") -> None:
    """Surface and contour plot of log(1 + loss) (paper App. B)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    A, B = np.meshgrid(result["alpha"], result["beta"], indexing="ij")
    Z = np.log1p(result["loss"])
    fig = plt.figure(figsize=(11, 4.5))
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    ax.plot_surface(A, B, Z, cmap="viridis", linewidth=0)
    ax.set_xlabel("α")
    ax.set_ylabel("β")
    ax.set_zlabel("log(1 + loss)")
    ax2 = fig.add_subplot(1, 2, 2)
    cs = ax2.contour(A, B, Z, levels=20, cmap="viridis")
    ax2.clabel(cs, fontsize=6)
    ax2.set_xlabel("α")
    ax2.set_ylabel("β")
    fig.suptitle(title or "loss landscape, filter-normalised directions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
