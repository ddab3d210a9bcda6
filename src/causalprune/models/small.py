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
    """1-D CNN for sequences (N, L) or (N, C, L): stride-2 conv (+ BatchNorm) + ReLU layers, then a linear head.

    The shape of the MNIST-1D paper's CNN (Greydanus 2020): kernel 5, stride 2, padding 1.
    """

    def __init__(self, length: int, num_classes: int = 10, widths: tuple[int, ...] = (25, 25, 25),
                 in_channels: int = 1, batchnorm: bool = False) -> None:  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [nn.Conv1d(c, w, 5, stride=2, padding=1), *([nn.BatchNorm1d(w)] if batchnorm else []), nn.ReLU()]
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


class CNN2d(nn.Module):
    """Small 2-D CNN for small images (N, C, H, W): 3×3 conv (+ BatchNorm) + ReLU layers, then a linear head.

    The first layer keeps the resolution, every later one halves it (stride 2), e.g. 8×8
    digits → 8, 4, 2 pixels with three layers. Flat inputs (N, C·H·W) of square images are
    reshaped (scikit-learn's digits come as 64 features). Built for structured pruning on CPU.
    """

    def __init__(self, image_size: int, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 64),
                 in_channels: int = 1, batchnorm: bool = True) -> None:  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            conv = nn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=not batchnorm)
            layers += [conv, *([nn.BatchNorm2d(w)] if batchnorm else []), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.image_shape = (in_channels, image_size, image_size)
        with torch.no_grad():
            n = self.features(torch.zeros(1, *self.image_shape)).numel()
        self.head = nn.Linear(n, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, C, H, W) images, or (N, C·H·W) flat ones, to (N, num_classes) logits."""
        if x.dim() == 2:
            x = x.reshape(x.shape[0], *self.image_shape)
        return self.head(self.features(x).flatten(1))
