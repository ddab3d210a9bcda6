"""Gradient-based saliency criteria, scored on (inputs, targets) batches.

| name | score per weight | source |
|---|---|---|
| snip | |g ⊙ θ| | Lee et al. 2019 (connection sensitivity) |
| grasp | −θ ⊙ (H g), largest pruned | Wang et al. 2020 (gradient-signal preservation) |
| taylor | Σ_b (g_b ⊙ θ)² | Molchanov et al. 2019 (first-order Taylor) |
| fisher | ½ θ² · mean_b g_b² | LeCun et al. 1990 (OBD) with the empirical Fisher diagonal |
| gradient | |g| | Redman et al. 2022-style gradient magnitude |

g is the gradient of the mean loss over all batches (batch-size weighted); g_b is one
batch's gradient (the model called through the round's `ModelIO`: a tensor, tuple or dict
of inputs, e.g. a Hugging Face batch whose loss is the model's own); H g is a
Hessian-vector product by double backprop. Weights already
pruned are zero in the model, so they contribute nothing to any forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..masks import prunable_parameters
from ..modelio import batch_size, to_device
from . import Scored, ScoreInput, register

BatchLoss = Callable[[nn.Module, Any, Any], torch.Tensor]


def batch_loss(inp: ScoreInput) -> BatchLoss:
    """Return ``loss(model, inputs, targets)``: the batch moved to the model's device, called through ``inp.io``.

    The loss is ``inp.loss_fn`` (else the `ModelIO`'s loss); the call is ``inp.io.forward``
    (a tensor, tuple or dict of inputs; a custom forward), or ``model(inputs)`` without one.
    """
    io = inp.io
    loss_fn = inp.loss_fn if inp.loss_fn is not None else (io.loss if io is not None else None)
    if not inp.data or loss_fn is None:
        raise ValueError("this criterion needs data batches and a loss function")

    def loss(model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        device = next(model.parameters()).device
        inputs, targets = to_device(inputs, device), to_device(targets, device)
        return loss_fn(io.forward(model, inputs) if io is not None else model(inputs), targets)

    return loss


def _setup(inp: ScoreInput) -> tuple[list[str], list[nn.Parameter], BatchLoss]:
    loss = batch_loss(inp)
    params = prunable_parameters(inp.model)
    names = [n for n in params if n in inp.mask]
    return names, [params[n] for n in names], loss


def _batch_grads(model: nn.Module, params: Sequence[nn.Parameter], loss_fn: BatchLoss,
                 data: Sequence[tuple[Any, Any]]):  # fmt: skip
    """Yield (batch size, gradients of the batch's mean loss w.r.t. `params`)."""
    for x, y in data:
        yield batch_size(x), torch.autograd.grad(loss_fn(model, x, y), params)


def _mean_grad(inp: ScoreInput, params: Sequence[nn.Parameter], loss_fn: BatchLoss) -> list[torch.Tensor]:
    total = [torch.zeros_like(p) for p in params]
    n = 0
    for b, grads in _batch_grads(inp.model, params, loss_fn, inp.data):
        for t, g in zip(total, grads, strict=True):
            t.add_(g, alpha=b)
        n += b
    return [t / n for t in total]


def _out(names: list[str], values: list[torch.Tensor]) -> Scored:
    return Scored({n: v.detach().float().cpu() for n, v in zip(names, values, strict=True)})


@register("snip", needs=["batches"], description="|g ⊙ θ| (SNIP, Lee et al. 2019)")
def snip(inp: ScoreInput) -> Scored:
    """Connection sensitivity: |∂L/∂θ ⊙ θ|."""
    names, params, loss_fn = _setup(inp)
    g = _mean_grad(inp, params, loss_fn)
    return _out(names, [(gi * p).abs() for gi, p in zip(g, params, strict=True)])


@register("gradient", needs=["batches"], description="|g| (gradient magnitude, Redman et al. 2022)")
def gradient(inp: ScoreInput) -> Scored:
    """Gradient magnitude |∂L/∂θ|."""
    names, params, loss_fn = _setup(inp)
    return _out(names, [gi.abs() for gi in _mean_grad(inp, params, loss_fn)])


@register("taylor", needs=["batches"], description="Σ_b (g_b ⊙ θ)² (Molchanov et al. 2019)")
def taylor(inp: ScoreInput) -> Scored:
    """First-order Taylor importance accumulated over batches."""
    names, params, loss_fn = _setup(inp)
    acc = [torch.zeros_like(p) for p in params]
    for _, grads in _batch_grads(inp.model, params, loss_fn, inp.data):
        for a, g, p in zip(acc, grads, params, strict=True):
            a.add_((g * p.detach()) ** 2)
    return _out(names, acc)


@register("fisher", needs=["batches"], description="½ θ² · E_b[g_b²] (OBD, empirical Fisher diagonal)")
def fisher(inp: ScoreInput) -> Scored:
    """Optimal Brain Damage saliency with the empirical Fisher as the Hessian diagonal."""
    names, params, loss_fn = _setup(inp)
    acc = [torch.zeros_like(p) for p in params]
    n = 0
    for _, grads in _batch_grads(inp.model, params, loss_fn, inp.data):
        for a, g in zip(acc, grads, strict=True):
            a.add_(g * g)
        n += 1
    return _out(names, [0.5 * p.detach() ** 2 * a / n for a, p in zip(acc, params, strict=True)])


@register("grasp", needs=["batches"], higher_is_important=False,
          description="−θ ⊙ (H g), largest pruned (GraSP, Wang et al. 2020)")  # fmt: skip
def grasp(inp: ScoreInput) -> Scored:
    """GraSP: −θ ⊙ Hg; removing the weights with the largest score preserves gradient flow most."""
    names, params, loss_fn = _setup(inp)
    g = [gi.detach() for gi in _mean_grad(inp, params, loss_fn)]
    hg = [torch.zeros_like(p) for p in params]
    n = 0
    for x, y in inp.data:
        grads = torch.autograd.grad(loss_fn(inp.model, x, y), params, create_graph=True)
        z = sum((gb * gi).sum() for gb, gi in zip(grads, g, strict=True))
        b = batch_size(x)
        for acc, h in zip(hg, torch.autograd.grad(z, params), strict=True):  # (H_b g) for this batch
            acc.add_(h, alpha=b)
        n += b
    return _out(names, [-p.detach() * h / n for p, h in zip(params, hg, strict=True)])
