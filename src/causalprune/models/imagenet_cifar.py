"""Paper-scale networks: ResNet-18 (CIFAR stem), VGG-16 with BatchNorm (CIFAR), MobileNetV1, ResNet-50."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # option B: 1×1 projection
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    """ResNet-18 with the CIFAR stem (3×3 conv, no max-pool): 11.2M parameters."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_Basic(cin, cout, stride), _Basic(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, C, H, W) images to logits."""
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16Cifar(nn.Module):
    """VGG-16 with BatchNorm, CIFAR variant (one 512 → classes linear head): 14.7M parameters."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU()]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, C, H, W) images to logits (any H, W ≥ 32: global average pooling)."""
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al. 2017), width 1.0: 4.2M parameters for 1000 classes."""

    CFG = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
           (512, 1), (1024, 2), (1024, 1))  # fmt: skip

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()

        def conv_bn(cin: int, cout: int, k: int, s: int, groups: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        layers = conv_bn(in_channels, 32, 3, 2)
        c = 32
        for cout, stride in self.CFG:
            layers += conv_bn(c, c, 3, stride, groups=c) + conv_bn(c, cout, 1, 1)  # depthwise, pointwise
            c = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, C, H, W) images to logits."""
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-50 (25.6M parameters), randomly initialised."""
    try:
        from torchvision.models import resnet50 as tv_resnet50
    except ImportError as e:  # pragma: no cover - the vision extra
        raise ValueError("model resnet50 needs torchvision: pip install 'causalprune[vision]'") from e
    model = tv_resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model
