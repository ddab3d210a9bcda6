"""Masks: which weights are alive, and keeping pruned weights exactly zero.

A `Mask` maps parameter names to bool tensors (True = alive). The model keeps plain
dense parameters whose pruned entries are exactly zero; `Mask.attach` enforces that
after every optimizer step, optimizer state included, so that neither momentum nor
weight decay nor Adam's moments can revive a pruned weight.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .io import save_torch

#: Layer types whose ``.weight`` is prunable by default (docs/method.md, "Scores, tie-break, masks").
PRUNABLE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Return the prunable parameters of `model`: the `.weight` of every Linear/Conv layer.

    Names are those of `model.named_parameters()`, in module order. A layer already
    converted by `torch.nn.utils.prune` contributes its `weight_orig`.

    Raises:
        ValueError: if the model has no prunable parameter.
    """
    out: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_LAYERS):
            continue
        prefix = f"{module_name}." if module_name else ""
        for attr in ("weight", "weight_orig"):
            p = module._parameters.get(attr)
            if isinstance(p, nn.Parameter) and p.requires_grad:
                out[prefix + attr] = p
                break
    if not out:
        kinds = ", ".join(t.__name__ for t in PRUNABLE_LAYERS)
        raise ValueError(
            f"model {type(model).__name__} has no prunable parameters "
            f"(looked for trainable .weight of {kinds})"
        )
    return out


class MaskHandle:
    """Handle returned by `Mask.attach`; `remove()` stops the enforcement."""

    def __init__(self, hook: Any) -> None:
        self._hook = hook

    def remove(self) -> None:
        """Stop enforcing the mask after optimizer steps."""
        self._hook.remove()


class Mask(Mapping[str, torch.Tensor]):
    """A name → bool tensor map (True = alive weight) over a model's prunable parameters."""

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        self._masks: dict[str, torch.Tensor] = {}
        for name, m in masks.items():
            if not isinstance(m, torch.Tensor):
                raise TypeError(f"mask for {name!r} must be a torch.Tensor, got {type(m).__name__}")
            self._masks[name] = m.detach().to(device="cpu", dtype=torch.bool).clone()

    # --- construction -------------------------------------------------------------
    @classmethod
    def ones(cls, model: nn.Module) -> Mask:
        """Return a mask that keeps every prunable weight of `model`."""
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(model).items()})

    @classmethod
    def from_model(cls, model: nn.Module) -> Mask:
        """Return the mask of the non-zero entries of `model`'s prunable weights."""
        return cls({n: p.detach() != 0 for n, p in prunable_parameters(model).items()})

    # --- Mapping protocol ---------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, {self.numel()} weights, sparsity={self.sparsity():.4f})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask):
            return NotImplemented
        return self.keys() == other.keys() and all(torch.equal(self[k], other[k]) for k in self)

    # --- counts -------------------------------------------------------------------
    def numel(self) -> int:
        """Return the number of weights the mask covers."""
        return sum(m.numel() for m in self._masks.values())

    def count_alive(self) -> int:
        """Return the number of alive (kept) weights."""
        return sum(int(m.sum()) for m in self._masks.values())

    def sparsity(self) -> float:
        """Return the fraction of covered weights that are pruned (zeros / total)."""
        total = self.numel()
        return 0.0 if total == 0 else 1.0 - self.count_alive() / total

    def layer_sparsity(self) -> dict[str, float]:
        """Return the sparsity of each tensor."""
        return {n: 1.0 - float(m.sum()) / max(m.numel(), 1) for n, m in self._masks.items()}

    # --- model side ---------------------------------------------------------------
    def check(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Check that every masked tensor exists in `model` with the same shape; return them."""
        params = dict(model.named_parameters())
        out: dict[str, nn.Parameter] = {}
        for name, m in self._masks.items():
            if name not in params:
                valid = ", ".join(prunable_parameters(model)) or "none"
                raise ValueError(f"mask names parameter {name!r}, which the model lacks (prunable: {valid})")
            if tuple(params[name].shape) != tuple(m.shape):
                raise ValueError(
                    f"mask shape {tuple(m.shape)} does not match parameter {name!r} "
                    f"of shape {tuple(params[name].shape)}"
                )
            out[name] = params[name]
        return out

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> nn.Module:
        """Set every pruned weight of `model` to exactly zero, in place; return the model."""
        for name, p in self.check(model).items():
            p.mul_(self._masks[name].to(p.device, p.dtype))
        return model

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> MaskHandle:
        """Keep pruned weights exactly zero after every `optimizer.step()`.

        Applies the mask once now, then registers an optimizer step post-hook that zeroes
        the pruned entries of the weights and of every same-shaped optimizer state tensor
        (SGD's momentum buffer, Adam/AdamW's ``exp_avg`` / ``exp_avg_sq``, ...). Works with
        any optimizer whose per-parameter state tensors have the parameter's shape.
        Call ``handle.remove()`` to stop.
        """
        params = self.check(model)
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in params.items() if id(p) not in in_optimizer]
        if missing:
            raise ValueError(f"masked parameters are not in the optimizer: {', '.join(missing)}")
        # Masks live on the parameters' devices, in their dtypes: a multiply per step, no sync.
        keep = {n: self._masks[n].to(p.device, p.dtype) for n, p in params.items()}
        pairs = [(params[n], keep[n]) for n in params]
        self.apply_(model)

        @torch.no_grad()
        def enforce(opt: torch.optim.Optimizer, *_: Any) -> None:
            for p, k in pairs:
                p.mul_(k)
                for value in opt.state.get(p, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape:
                        value.mul_(k.to(value.dtype))

        for p, k in pairs:  # clean any state that already exists
            for value in optimizer.state.get(p, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    value.mul_(k.to(value.dtype))
        return MaskHandle(optimizer.register_step_post_hook(enforce))

    # --- persistence --------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Save the mask atomically (temp file + rename) with torch.save."""
        save_torch({"format": "causalprune.Mask/1", "masks": self._masks}, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Mask:
        """Load a mask written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"mask file not found: {path}")
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or obj.get("format") != "causalprune.Mask/1":
            raise ValueError(f"{path} is not a causalprune mask file")
        return cls(obj["masks"])

    # --- torch.nn.utils.prune interop ---------------------------------------------
    def to_torch_prune(self, model: nn.Module) -> nn.Module:
        """Convert `model` in place to the `torch.nn.utils.prune` convention.

        Each masked ``<module>.weight`` becomes ``weight_orig`` plus a ``weight_mask`` buffer.
        """
        self.check(model)
        modules = dict(model.named_modules())
        for name, m in self._masks.items():
            module_name, _, attr = name.rpartition(".")
            module = modules[module_name]
            if attr != "weight":
                raise ValueError(f"{name!r} is already in the torch.nn.utils.prune convention")
            torch_prune.custom_from_mask(module, "weight", m.to(module.weight.device))
        return model

    @classmethod
    def from_torch_prune(cls, model: nn.Module, remove: bool = False) -> Mask:
        """Read the ``weight_mask`` buffers of a model pruned with `torch.nn.utils.prune`.

        With ``remove=True`` the pruning re-parametrisation is made permanent
        (`torch.nn.utils.prune.remove`), leaving plain ``weight`` parameters.
        """
        masks: dict[str, torch.Tensor] = {}
        for module_name, module in model.named_modules():
            buf = module._buffers.get("weight_mask")
            if buf is None:
                continue
            prefix = f"{module_name}." if module_name else ""
            masks[prefix + "weight"] = buf.detach().bool()
            if remove:
                torch_prune.remove(module, "weight")
        if not masks:
            raise ValueError("model has no torch.nn.utils.prune weight_mask buffers")
        return cls(masks)
