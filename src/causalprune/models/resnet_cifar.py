"""CIFAR ResNets (He et al. 2016, §4.2): 6n+2 layers, widths 16-32-64, option-A shortcuts.

ResNet-20 has 0.27M parameters (0.268M prunable conv/linear weights). ``shortcut="B"``
replaces the parameter-free option-A shortcut (subsample + zero-pad the channels) of the
blocks that change shape by a 1×1 conv + BN projection (option B, as DepGraph's
ResNet-56): the residual stream then becomes visible to a dependency graph and its
channels prunable (docs/method.md "Structured variant: channel groups").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (zero-padded, strided) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.pad = stride, planes - in_planes
        self.option = shortcut
        if shortcut == "B" and (stride != 1 or self.pad):
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to (N, C, H, W) features."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.option == "B" and (self.stride != 1 or self.pad):
            shortcut = self.shortcut(x)
        elif self.stride != 1 or self.pad:
            # Option A: subsample and zero-pad the channels (no parameters).
            shortcut = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad // 2, self.pad // 2))
        return F.relu(out + shortcut)


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs."""

    def __init__(self, n: int, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> None:
        super().__init__()
        self.option = shortcut
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, shortcut))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, C, 32, 32) images to (N, num_classes) logits."""
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def channel_pruning_ignored_layers(self) -> list[nn.Module]:
        """Layers whose output channels structured pruning must keep (`causalprune.groups`).

        Option A: the residual stream (the stem conv and every block's conv2), whose
        zero-padded shortcuts a dependency graph cannot see; only block-inner channels
        (each block's conv1) are groups. Option B: none.
        """
        if self.option == "B":
            return []
        return [self.conv1, *(block.conv2 for block in self.layers)]


def resnet20(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> ResNetCifar:
    """ResNet-20 (n = 3); `shortcut` "A" (zero-padding) or "B" (1×1 conv + BN projection)."""
    return ResNetCifar(3, num_classes, in_channels, shortcut)


def resnet32(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> ResNetCifar:
    """ResNet-32 (n = 5); `shortcut` "A" (zero-padding) or "B" (1×1 conv + BN projection)."""
    return ResNetCifar(5, num_classes, in_channels, shortcut)


def resnet56(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> ResNetCifar:
    """ResNet-56 (n = 9); `shortcut` "A" (zero-padding) or "B" (1×1 conv + BN projection)."""
    return ResNetCifar(9, num_classes, in_channels, shortcut)
