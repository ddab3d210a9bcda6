"""Small networks that train on a CPU: an MLP and a 1-D CNN (for MNIST-1D)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten, then Linear-(BatchNorm)-ReLU-(Dropout) per hidden width, then a Linear head."""

    def __init__(
        self,
        in_features: int,
        num_classes: int = 10,
        widths: tuple[int, ...] = (256, 256),
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = in_features
        for w in widths:
            layers.append(nn.Linear(width_in, w))
            if batchnorm:
                layers.append(nn.BatchNorm1d(w))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width_in = w
        layers.append(nn.Linear(width_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, ...) inputs to (N, num_classes) outputs."""
        return self.net(x)


class CNN1d(nn.Module):
    """1-D CNN for sequences (N, L) or (N, C, L): stride-2 conv + ReLU layers, then a linear head.

    The shape of the MNIST-1D paper's CNN (Greydanus 2020): kernel 5, stride 2, padding 1.
    """

    def __init__(self, length: int, num_classes: int = 10, widths: tuple[int, ...] = (25, 25, 25),
                 in_channels: int = 1) -> None:  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [nn.Conv1d(c, w, 5, stride=2, padding=1), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            n = self.features(torch.zeros(1, in_channels, length)).numel()
        self.head = nn.Linear(n, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, L) or (N, C, L) sequences to (N, num_classes) logits."""
        if x.dim() == 2:
            x = x[:, None, :]
        return self.head(self.features(x).flatten(1))
