"""Model registry: `create_model(name, **kwargs)` builds a registered network."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from .gpt import GPT
from .imagenet_cifar import MobileNetV1, ResNet18Cifar, VGG16Cifar, resnet50
from .lenet import LeNet5
from .pretrained import load_pretrained, pretrained_status
from .resnet_cifar import resnet20, resnet32, resnet56
from .small import MLP, CNN1d, CNN2d

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn1d": CNN1d,
    "cnn2d": CNN2d,
    "lenet5": LeNet5,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet18": ResNet18Cifar,
    "vgg16": VGG16Cifar,
    "mobilenet_v1": MobileNetV1,
    "resnet50": resnet50,
    "gpt": GPT,
}


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build the model registered as `name` (e.g. ``create_model("resnet20", num_classes=10)``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


#: Models with a choice of shortcut (``model.shortcut``: A zero-padding, B 1×1 conv + BN).
SHORTCUT_MODELS = ("resnet20", "resnet32", "resnet56")


def build_model(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the network a `ModelConfig` names for inputs of `input_shape` (one sample)."""
    name = cfg.name
    if name == "mlp":
        return MLP(math.prod(input_shape), num_classes, tuple(cfg.widths), cfg.dropout, cfg.batchnorm)
    if name == "cnn1d":
        if len(input_shape) not in (1, 2):
            raise ValueError(f"model cnn1d needs sequence inputs (L,) or (C, L), got samples of shape {input_shape}")
        channels = 1 if len(input_shape) == 1 else input_shape[0]
        return CNN1d(input_shape[-1], num_classes, tuple(cfg.widths), channels, cfg.batchnorm)
    if name == "gpt":  # (T,) token ids, num_classes = vocabulary size
        return GPT(num_classes, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.d_model, cfg.d_mlp, cfg.tie_weights)
    if name == "cnn2d" and len(input_shape) == 1 and math.isqrt(input_shape[0]) ** 2 == input_shape[0]:
        return CNN2d(math.isqrt(input_shape[0]), num_classes, tuple(cfg.widths), 1, cfg.batchnorm)  # flat digits
    if len(input_shape) != 3:
        raise ValueError(f"model {name} needs image inputs (C, H, W), got samples of shape {input_shape}")
    if name == "cnn2d":
        return CNN2d(input_shape[-1], num_classes, tuple(cfg.widths), input_shape[0], cfg.batchnorm)
    if name == "lenet5":
        return LeNet5(num_classes, in_channels=input_shape[0], image_size=input_shape[-1])
    if name in SHORTCUT_MODELS:
        shortcut = getattr(cfg, "shortcut", "A")
        return create_model(name, num_classes=num_classes, in_channels=input_shape[0], shortcut=shortcut)
    return create_model(name, num_classes=num_classes, in_channels=input_shape[0])


__all__ = ["GPT", "MLP", "MODELS", "CNN1d", "LeNet5", "build_model", "create_model", "load_pretrained",
           "pretrained_status", "resnet20", "resnet32", "resnet56"]
