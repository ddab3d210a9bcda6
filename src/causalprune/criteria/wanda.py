"""Wanda (Sun et al. 2024): weights scored by their magnitude times their input's norm, ranked per output row.

| name | score per weight | source |
|---|---|---|
| wanda | \\|W_ij\\| · ‖X_j‖₂, ranked within each output row | Sun et al. 2024 ("A Simple and Effective ...") |

‖X_j‖₂ is the L2 norm of the layer's input feature j over every calibration token and
sample: the inputs of each prunable layer are collected with forward hooks while the model
runs (in eval mode, without gradients, through the round's `ModelIO`) on the criterion's
batches. For ``nn.Linear`` a feature is one input coordinate (every leading dimension —
batch, sequence — counts as tokens); for ``nn.Conv1d``/``nn.Conv2d`` it is one (input
channel, kernel position) of the unfolded input (``F.unfold``; each output position is a
token), so a convolution's weight is scored as the matrix (out, in·k) it multiplies.
The method declares the per-output-row pool (`selection.ROWS`): every row keeps the same
fraction of its weights, whatever ``prune.scope`` says. A weight shared by several layers
sums the squared inputs of all the prunable layers that use it (an ``nn.Embedding`` tied to
a Linear head is not one); a layer that never ran scores 0.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import masks
from ..masks import prunable_parameters
from ..modelio import to_device
from ..selection import ROWS
from . import Scored, ScoreInput, register

_KINDS = "nn.Linear, nn.Conv1d and nn.Conv2d (zero padding, numeric padding)"


def _features(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Return the (tokens, features) matrix `module`'s weight multiplies for input `x`."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    conv1d = isinstance(module, nn.Conv1d)
    if conv1d:  # (B, C, L) as a (B, C, 1, L) image with a (1, k) kernel
        x = x.unsqueeze(-2) if x.dim() == 3 else x.unsqueeze(-2).unsqueeze(0)
        k, d, p, s = (1, *module.kernel_size), (1, *module.dilation), (0, *module.padding), (1, *module.stride)
    else:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        k, d, p, s = module.kernel_size, module.dilation, module.padding, module.stride
    cols = F.unfold(x, kernel_size=k, dilation=d, padding=p, stride=s)  # (B, C·k, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _check(name: str, module: nn.Module) -> None:
    """Refuse a layer whose inputs Wanda cannot collect, in one line naming it."""
    ok = isinstance(module, nn.Linear) or (
        type(module) in (nn.Conv1d, nn.Conv2d)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )
    if not ok:
        raise ValueError(f"wanda cannot collect the inputs of layer {name!r} ({type(module).__name__}); "
                         f"valid: {_KINDS}")  # fmt: skip


def input_norms(inp: ScoreInput) -> dict[str, torch.Tensor]:
    """Return weight name → ‖X_j‖₂ of each input feature, broadcast to the weight's shape.

    Runs the model on ``inp.data`` (eval mode, no gradients, through ``inp.io`` when given)
    with a forward hook on every layer whose weight the mask covers.
    """
    if not inp.data:
        raise ValueError("wanda needs calibration batches: an iterable of (inputs, targets) batches")
    model = inp.model
    params = prunable_parameters(model)
    by_id = {id(p): n for n, p in params.items() if n in inp.mask}
    sumsq: dict[str, torch.Tensor] = {}
    layers: dict[str, nn.Module] = {}
    handles = []

    def hook(name: str) -> Any:
        def collect(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            feats = _features(module, args[0].detach()).to(torch.float64)
            s = (feats * feats).sum(0).cpu()
            sumsq[name] = sumsq[name] + s if name in sumsq else s

        return collect

    for mod_name, module in model.named_modules():
        if not isinstance(module, masks.PRUNABLE_LAYERS):  # e.g. an embedding tied to a Linear head: not read
            continue
        w = module._parameters.get("weight_orig", module._parameters.get("weight"))
        if w is None or id(w) not in by_id:
            continue
        name = by_id[id(w)]
        _check(mod_name, module)
        layers.setdefault(name, module)
        handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            for x, _ in inp.data:
                x = to_device(x, device)
                _ = inp.io.forward(model, x) if inp.io is not None else model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for name in by_id.values():
        shape = params[name].shape
        module = layers[name]
        norm = sumsq[name].sqrt() if name in sumsq else torch.zeros(shape[1:].numel() * getattr(module, "groups", 1),
                                                                     dtype=torch.float64)  # fmt: skip
        if isinstance(module, nn.Linear):
            out[name] = norm.expand(shape)
        else:  # (groups·C_g·k) features → each output channel sees its own group's (C_g, k...)
            g = module.groups
            per_group = norm.view(g, *shape[1:])
            out[name] = per_group.repeat_interleave(shape[0] // g, dim=0)
    return out


@register("wanda", needs=["batches"], pool=ROWS, calibrates=True,
          description="|W_ij| · ‖X_j‖₂ per output row (Wanda, Sun et al. 2024)")  # fmt: skip
def wanda(inp: ScoreInput) -> Scored:
    """Score each weight by |W_ij| · ‖X_j‖₂, the norm of its input feature over the calibration batches."""
    norms = input_norms(inp)
    params = prunable_parameters(inp.model)
    return Scored({n: (params[n].detach().abs().cpu().double() * v).float() for n, v in norms.items()})
