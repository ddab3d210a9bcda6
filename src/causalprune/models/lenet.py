"""LeNet-5 (LeCun et al. 1998) for 1×28×28 or 3×32×32 inputs."""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """LeNet-5: two 5×5 conv + max-pool stages, then 120-84-`num_classes` linear layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        pad = 2 if image_size == 28 else 0  # 28×28 inputs are padded to 32×32 as in the original
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, C, H, W) images to (N, num_classes) logits."""
        return self.classifier(self.features(x))
