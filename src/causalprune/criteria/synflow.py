"""SynFlow (Tanaka et al. 2020): data-free synaptic-flow scores, applied iteratively.

Each inner round replaces every parameter by its absolute value (pruned weights stay
zero), feeds an all-ones input through the network in eval mode (for integer inputs,
token id 1 at every position), and scores
|θ ⊙ ∂R/∂θ| with R the sum of the outputs. With a target sparsity, `rounds` inner rounds
prune towards it on an exponential schedule (density falls by the same factor each
round), as the paper prescribes; the returned scores order weights by the round in which
they were pruned (then by score), so `selection.select` at the target reproduces the
inner pruning exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch

from ..masks import Mask, prunable_parameters
from ..modelio import ModelIO
from ..selection import select
from . import Scored, ScoreInput, register


def synflow_scores(model: torch.nn.Module, mask: Mask, inputs: ModelIO | tuple[int, ...],
                   input_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """One SynFlow round: |θ ⊙ ∂R/∂θ| on the |θ|-linearised, masked network (float64).

    `inputs` is the model's `ModelIO` (a tensor, tuple or dict of inputs, called through its
    forward) or one sample's shape. The input is one sample of all ones: float64 for
    floating inputs, ones of their own dtype for integer ones (token ids: every position is
    token 1, for a model that starts with an embedding; an attention mask of ones), or of
    `input_dtype` when that is an integer type and `inputs` a shape. R is the sum of every
    output tensor.
    """
    net = copy.deepcopy(model).double().eval()  # deepcopy keeps tied weights tied
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
        mask.apply_(net)
    params = prunable_parameters(net)
    device = next(net.parameters()).device
    integer = input_dtype is not None and not (input_dtype.is_floating_point or input_dtype.is_complex)
    if not isinstance(inputs, ModelIO):
        inputs = ModelIO.from_shape(inputs, input_dtype if integer else None)
    R = _total(inputs.forward(net, inputs.example_inputs(1, "ones", device=device, float_dtype=torch.float64)))
    grads = torch.autograd.grad(R, [params[n] for n in mask])
    return {n: (params[n].detach() * g).abs().float().cpu() for n, g in zip(mask, grads, strict=True)}


def _total(outputs: object) -> torch.Tensor:
    """R: the sum of a model's outputs (a tensor, or every floating tensor of a tuple, list or dict of outputs)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.sum()
    values = outputs.values() if isinstance(outputs, Mapping) else outputs
    if not isinstance(values, Iterable):
        raise ValueError(f"synflow sums the model's outputs; got {type(outputs).__name__}")
    parts = [_total(v) for v in values if isinstance(v, torch.Tensor | tuple | list | Mapping)
             and not (isinstance(v, torch.Tensor) and not v.is_floating_point())]  # fmt: skip
    if not parts:
        raise ValueError(f"synflow sums the model's outputs; {type(outputs).__name__} holds no floating tensor")
    return torch.stack(parts).sum()


@register("synflow", needs=["input_shape"],
          description="|θ ⊙ ∂R/∂θ|, data-free, iterative (SynFlow, Tanaka et al. 2020)")
def synflow(inp: ScoreInput) -> Scored:
    """Iterative SynFlow towards the round's target sparsity (one round without a target)."""
    if inp.input_shape is None and inp.io is None:
        raise ValueError("synflow needs the input shape: pass one data batch or input_shape=(C, H, W)")
    input_shape = inp.io if inp.io is not None else inp.input_shape  # the ModelIO, else a shape
    rounds = int(inp.options.get("rounds", 100))
    mask = inp.mask
    target = inp.target_sparsity
    if target is None or target <= mask.sparsity():
        return Scored(synflow_scores(inp.model, mask, input_shape, inp.input_dtype))
    start_density = 1.0 - mask.sparsity()
    order = {n: torch.full(m.shape, float(rounds + 1)) for n, m in mask.items()}  # round pruned (+ rank)
    for r in range(1, rounds + 1):
        scores = synflow_scores(inp.model, mask, input_shape, inp.input_dtype)
        density = start_density * ((1.0 - target) / start_density) ** (r / rounds)
        new = select(scores, 1.0 - density if r < rounds else target, mask=mask, min_alive=1)
        for n in mask:
            just_pruned = mask[n] & ~new[n]
            if just_pruned.any():  # order inside the round by score, in [r, r + 1)
                s = scores[n][just_pruned]
                order[n][just_pruned] = r + s / (s.max() + 1e-30) * 0.999
        mask = new
    last = synflow_scores(inp.model, mask, input_shape, inp.input_dtype)
    for n in mask:
        alive = mask[n]
        s = last[n][alive]
        order[n][alive] = rounds + 1 + s / (s.max() + 1e-30) * 0.999
    return Scored(order, info={"rounds": rounds})
