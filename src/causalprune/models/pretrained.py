"""Pretrained weights: a state-dict file, or torchvision's ImageNet weights for ResNet-50.

The paper's ImageNet rows start from pretrained networks (App. C). ``model.pretrained`` is
either ``torchvision`` (ResNet-50's ``IMAGENET1K_V1`` weights, fetched into torch's hub
cache on first use, as torchvision does) or the path of a file holding a state dict (any
model; e.g. MobileNetV1 weights converted to this library's parameter names).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def _torchvision_weights() -> object:
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.IMAGENET1K_V1


def _cache_file() -> Path:
    url = _torchvision_weights().url  # type: ignore[attr-defined]
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def pretrained_status(spec: str) -> str:
    """Say whether the weights `spec` names are available here (for dry runs); never raises."""
    if spec == "torchvision":
        try:
            path = _cache_file()
        except ImportError:
            return "NOT AVAILABLE — torchvision is not installed"
        return f"cached at {path}" if path.is_file() else f"not cached yet; torchvision downloads them to {path}"
    return f"present ({spec})" if Path(spec).is_file() else f"NOT PRESENT — no file {spec}"


def load_pretrained(model: nn.Module, name: str, spec: str) -> None:
    """Load the weights `spec` names into `model` (strict: every key and shape must match).

    Raises:
        ValueError: one line naming the file or the mismatching keys.
    """
    if spec == "torchvision":
        if name != "resnet50":
            raise ValueError(f"torchvision weights exist for resnet50 only, not {name}")
        state = _torchvision_weights().get_state_dict(progress=False)  # type: ignore[attr-defined]
    else:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"model.pretrained: no file {path} (a state dict saved with torch.save)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]  # a training checkpoint
    if not isinstance(state, dict):
        raise ValueError(f"model.pretrained: {spec} does not hold a state dict")
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        what = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                else f"shape mismatch in {sorted(shapes)[:3]}")  # fmt: skip
        raise ValueError(f"model.pretrained: {spec} does not fit model {name} ({what})")
    model.load_state_dict(state)
