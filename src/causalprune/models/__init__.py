"""Model registry: `create_model(name, **kwargs)` builds a registered network."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .lenet import LeNet5
from .resnet_cifar import resnet20, resnet32, resnet56

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
}


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build the model registered as `name` (e.g. ``create_model("resnet20", num_classes=10)``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "LeNet5", "create_model", "resnet20", "resnet32", "resnet56"]
