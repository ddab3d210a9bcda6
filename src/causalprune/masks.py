"""Masks: which weights are alive, and keeping pruned weights exactly zero.

A `Mask` maps parameter names to bool tensors (True = alive). The model keeps plain
dense parameters whose pruned entries are exactly zero; `Mask.attach` enforces that
after every optimizer step, optimizer state included, so that neither momentum nor
weight decay nor Adam's moments can revive a pruned weight.

Parameters are unique tensors. A tensor shared by several modules (a tied weight:
``h2.weight = h1.weight``, or a language-model head tied to its embedding) has one
*canonical* name, the one `model.named_parameters()` gives it (its first occurrence in
module order); its other names are *aliases* (`parameter_aliases`). Every name → tensor
map of the library is keyed by canonical names; a `Mask` keyed by an alias is accepted
wherever it meets its model (`Mask.canonical`).
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


def register_prunable_layer(layer: type[nn.Module]) -> None:
    """Make the ``.weight`` of every `layer` module prunable too (e.g. the ``Conv1D`` GPT-2 uses for Linear)."""
    global PRUNABLE_LAYERS
    if not (isinstance(layer, type) and issubclass(layer, nn.Module)):
        raise TypeError(f"register_prunable_layer needs an nn.Module subclass, got {layer!r}")
    if layer not in PRUNABLE_LAYERS:
        PRUNABLE_LAYERS = (*PRUNABLE_LAYERS, layer)


def _canonical_names(model: nn.Module) -> dict[int, str]:
    """Return id(tensor) → its canonical name (first name in `model.named_parameters()`)."""
    return {id(p): n for n, p in model.named_parameters()}


def parameter_aliases(model: nn.Module) -> dict[str, str]:
    """Return alias → canonical name for every parameter of `model` reachable under several names.

    The canonical name is the one `model.named_parameters()` gives the tensor, its first
    occurrence in module order; e.g. ``{"head.weight": "emb.weight"}`` for a head tied
    to its embedding. Empty for a model without shared parameters.
    """
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        canonical = first.setdefault(id(p), name)
        if canonical != name:
            out[name] = canonical
    return out


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Return the prunable parameters of `model`: the `.weight` of every Linear/Conv layer.

    Each tensor appears once, under its canonical name (the name `model.named_parameters()`
    gives it), in the module order of its first use by a Linear/Conv layer. A tensor shared
    by several modules (a tied weight) is prunable when one of them is a Linear/Conv layer,
    even if its canonical name belongs to another module (a head tied to an
    ``nn.Embedding`` is listed as ``emb.weight``). A layer already converted by
    `torch.nn.utils.prune` contributes its `weight_orig`. Other names of the same tensors:
    `parameter_aliases`.

    Raises:
        ValueError: if the model has no prunable parameter.
    """
    canonical = _canonical_names(model)
    out: dict[str, nn.Parameter] = {}
    for module in model.modules():
        if not isinstance(module, PRUNABLE_LAYERS):
            continue
        for attr in ("weight", "weight_orig"):
            p = module._parameters.get(attr)
            if isinstance(p, nn.Parameter) and p.requires_grad:
                out.setdefault(canonical[id(p)], p)  # a tied tensor keeps its first place
                break
    if not out:
        kinds = ", ".join(t.__name__ for t in PRUNABLE_LAYERS)
        raise ValueError(
            f"model {type(model).__name__} has no prunable parameters "
            f"(looked for trainable .weight of {kinds})"
        )
    return out


def names_hint(model: nn.Module) -> str:
    """Return "prunable: a, b; aliases: x → a" (the model's canonical prunable names and aliases), for errors."""
    try:
        prunable = ", ".join(prunable_parameters(model))
    except ValueError:
        prunable = "none"
    aliases = ", ".join(f"{a} → {c}" for a, c in parameter_aliases(model).items()) or "none"
    return f"prunable: {prunable}; aliases of tied weights: {aliases}"


def _uses(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """Return id(tensor) → every (qualified name, module, attribute) that holds it, in module order."""
    out: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for attr, p in module._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((prefix + attr, module, attr))
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
    def _resolve(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, nn.Parameter]]:
        """Return (canonical name → mask, canonical name → parameter), in mask order, aliases resolved.

        Raises ValueError on an unknown name, a shape mismatch, or an alias and its
        canonical name (or two aliases) given different values.
        """
        params = dict(model.named_parameters())
        aliases = parameter_aliases(model)
        masks: dict[str, torch.Tensor] = {}
        given: dict[str, str] = {}  # canonical name → the mask's name for it
        out: dict[str, nn.Parameter] = {}
        for name, m in self._masks.items():
            canonical = aliases.get(name, name)
            if canonical not in params:
                raise ValueError(f"mask names parameter {name!r}, which the model lacks ({names_hint(model)})")
            p = params[canonical]
            if tuple(p.shape) != tuple(m.shape):
                alias = f" (alias of {canonical!r})" if canonical != name else ""
                raise ValueError(
                    f"mask shape {tuple(m.shape)} does not match parameter {name!r}{alias} of shape {tuple(p.shape)}"
                )
            if canonical in masks:
                if not torch.equal(masks[canonical], m):
                    raise ValueError(
                        f"mask entries {name!r} and {given[canonical]!r} name the same tensor (a tied weight, "
                        f"canonical name {canonical!r}) but differ; give it once"
                    )
                continue
            masks[canonical], given[canonical], out[canonical] = m, name, p
        return masks, out

    def check(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Check that every masked tensor exists in `model` with the same shape; return them.

        The result is keyed by canonical names: an entry keyed by an alias of a tied
        weight names its canonical tensor (`parameter_aliases`); two names of one tensor
        must carry the same values.
        """
        return self._resolve(model)[1]

    def canonical(self, model: nn.Module) -> Mask:
        """Return this mask keyed by `model`'s canonical names (itself when it already is).

        Aliases of tied weights are mapped to their canonical name; an alias given
        together with its canonical name (same values) becomes one entry.
        """
        masks, _ = self._resolve(model)
        if list(masks) == list(self._masks):
            return self
        return Mask(masks)

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> nn.Module:
        """Set every pruned weight of `model` to exactly zero, in place; return the model."""
        masks, params = self._resolve(model)
        for name, p in params.items():
            if not bool(masks[name].all()):  # a fully alive tensor is left untouched
                p.mul_(masks[name].to(p.device, p.dtype))
        return model

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> MaskHandle:
        """Keep pruned weights exactly zero after every `optimizer.step()`.

        Applies the mask once now, then registers an optimizer step post-hook that zeroes
        the pruned entries of the weights and of every same-shaped optimizer state tensor
        (SGD's momentum buffer, Adam/AdamW's ``exp_avg`` / ``exp_avg_sq``, ...). Works with
        any optimizer whose per-parameter state tensors have the parameter's shape. Fully
        alive tensors are left alone (no multiply by an all-ones mask). Call
        ``handle.remove()`` to stop.
        """
        masks, params = self._resolve(model)
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in params.items() if id(p) not in in_optimizer]
        if missing:
            raise ValueError(f"masked parameters are not in the optimizer: {', '.join(missing)}")
        # Masks live on the parameters' devices, in their dtypes: a multiply per step, no sync. A fully alive
        # tensor has nothing to zero: neither it nor its optimizer state is touched.
        pairs = [(p, masks[n].to(p.device, p.dtype)) for n, p in params.items() if not bool(masks[n].all())]
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
        A tied weight is converted in every module that uses it (each gets its own
        ``weight_mask``, all equal, and its ``weight_orig`` is the one shared tensor);
        that needs every use to be a module's ``.weight``, else ValueError names the others.
        """
        masks, params = self._resolve(model)
        uses = _uses(model)
        for name in masks:
            p = params[name]
            holders = uses[id(p)]
            if any(attr == "weight_orig" for _, _, attr in holders):
                raise ValueError(f"{name!r} is already in the torch.nn.utils.prune convention")
            others = [q for q, _, attr in holders if attr != "weight"]
            if others and len(holders) > 1:
                raise ValueError(
                    f"tied weight {name!r} (used as {', '.join(q for q, _, _ in holders)}) cannot be converted: the "
                    "torch.nn.utils.prune convention (weight_orig + weight_mask in each module) needs every use to "
                    f"be a module's .weight, and {', '.join(others)} is not"
                )
            if others:
                raise ValueError(f"{name!r} cannot be converted: the torch.nn.utils.prune convention covers a "
                                 "module's .weight only")  # fmt: skip
        for name, m in masks.items():
            for _, module, _ in uses[id(params[name])]:
                torch_prune.custom_from_mask(module, "weight", m.to(params[name].device))
        return model

    @classmethod
    def from_torch_prune(cls, model: nn.Module, remove: bool = False) -> Mask:
        """Read the ``weight_mask`` buffers of a model pruned with `torch.nn.utils.prune`.

        With ``remove=True`` the pruning re-parametrisation is made permanent
        (`torch.nn.utils.prune.remove`), leaving plain ``weight`` parameters (a tied weight
        stays one shared tensor). A tied weight is one entry, under the name of its first
        use; every module that uses it must be pruned with the same mask, else ValueError
        (a use left unmasked would compute with the pruned weights).
        """
        groups: dict[int, list[tuple[str, nn.Module, torch.Tensor]]] = {}  # one per tensor
        for module_name, module in model.named_modules():
            buf = module._buffers.get("weight_mask")
            if buf is None:
                continue
            prefix = f"{module_name}." if module_name else ""
            orig = module._parameters.get("weight_orig")
            groups.setdefault(id(orig) if orig is not None else id(module), []).append((prefix + "weight", module, buf))
        if not groups:
            raise ValueError("model has no torch.nn.utils.prune weight_mask buffers")
        uses = _uses(model)
        masks: dict[str, torch.Tensor] = {}
        for key, entries in groups.items():
            name, _, buf = entries[0]
            unmasked = [q for q, module, attr in uses.get(key, [])
                        if not (attr == "weight_orig" and "weight_mask" in module._buffers)]  # fmt: skip
            if unmasked:
                raise ValueError(
                    f"{', '.join(unmasked)} uses the same tensor as {name!r} (a tied weight) without its "
                    "torch.nn.utils.prune mask; prune every use of a tied weight with the same mask"
                )
            differ = [n for n, _, b in entries[1:] if not torch.equal(b.bool(), buf.bool())]
            if differ:
                raise ValueError(f"tied weight {name!r} has different weight_mask buffers in {', '.join(differ)}")
            masks[name] = buf.detach().bool()
        if remove:
            for entries in groups.values():
                for _, module, _ in entries:
                    torch_prune.remove(module, "weight")
        return cls(masks)
