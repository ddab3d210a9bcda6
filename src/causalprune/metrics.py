"""Efficiency metrics, ShrinkBench's set (Blalock et al. 2020), for a (pruned) model.

* ``size``: all parameters; ``size_nz``: non-zero parameters; ``compression_ratio`` =
  size / size_nz. A tensor shared by several modules (a tied weight) counts once.
* ``flops``: multiply-accumulate-based FLOPs of one forward on one sample, counted by
  `torch.utils.flop_counter` (dense); ``flops_nz``: each prunable layer's FLOPs scaled by
  its weight density (other operations count in full; a tied weight's density scales the
  FLOPs of every layer that uses it); ``theoretical_speedup`` = flops / flops_nz.

For a network whose channels were removed physically (`causalprune.groups.ChannelGroups.remove_groups_`)
two measurements of the slim network itself:

* `macs_and_params`: one sample's multiply-accumulates and the parameter count, by
  Torch-Pruning's op counter (``torch_pruning.utils.count_ops_and_params``, the numbers
  Torch-Pruning's papers and examples report). Its convention (ptflops'): a Conv/Linear
  counts its weight MACs *plus one op per bias addition*; activations, normalisations and
  pooling count one op per output element. So ``Linear(4, 3) + Linear(3, 2)`` gives
  4·3 + 3 + 3·2 + 2 = 23 (18 weight MACs + 5 bias additions), the same layers without
  biases 18.
  The counter sees modules only; the attention products of
  ``F.scaled_dot_product_attention`` (q·kᵀ and the weights times v) are added by
  `attention_macs`: B·heads·L·S·(E + Ev) per call, the full L × S product even when the
  attention is causal (as fvcore and ``torch.utils.flop_counter`` count it). A network
  without that call counts as before.
* `latency_ms`: CPU wall-clock latency of one forward pass, median over repeated runs, per
  batch size. A measurement of this machine, never an assertion: it depends on the
  thread count (returned with it), the CPU and what else runs.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import masks
from .modelio import ModelIO

#: what the functions below take as a model's inputs: a `ModelIO`, or one sample's shape (``ModelIO.from_shape``)
InputsLike = ModelIO | tuple[int, ...]


@torch.no_grad()
def efficiency(model: nn.Module, inputs: InputsLike) -> dict[str, float]:
    """Return size, size_nz, compression_ratio, flops, flops_nz, theoretical_speedup.

    `inputs` is a `ModelIO` or one sample's shape; FLOPs are those of one forward on one
    sample (zeros). The prunable layer types are read when it is called, so a type added
    with `masks.register_prunable_layer` counts.
    """
    size = sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once
    size_nz = sum(int((p != 0).sum()) for p in model.parameters())
    device = next(model.parameters()).device
    io = ModelIO.of(inputs)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        io.forward(model, io.example_inputs(1, "zeros", device=device))
    model.train(was_training)
    flops = counter.get_total_flops()
    counts = counter.get_flop_counts()
    prefix = type(model).__name__
    flops_nz = float(flops)
    for name, module in model.named_modules():
        if not isinstance(module, masks.PRUNABLE_LAYERS):  # the registry as it is now
            continue
        layer = sum(counts.get(f"{prefix}.{name}", {}).values())
        w = module.weight
        density = float((w != 0).sum()) / w.numel()
        flops_nz -= layer * (1.0 - density)
    return {
        "size": size,
        "size_nz": size_nz,
        "compression_ratio": size / max(size_nz, 1),
        "flops": int(flops),
        "flops_nz": flops_nz,
        "theoretical_speedup": flops / max(flops_nz, 1e-30),
    }


def macs_and_params(model: nn.Module, inputs: InputsLike) -> tuple[int, int]:
    """Return (MACs of one forward on one sample, parameter count) by Torch-Pruning's op counter.

    `inputs` is a `ModelIO` (a tensor, tuple or dict of tensors; a ``forward_fn`` is honoured)
    or one sample's shape (no batch dimension). The model is not changed (the
    counter works on a deep copy, in eval mode). See the module docstring for what counts
    as an op (bias additions and activations included).
    """
    import torch_pruning as tp  # imported here: the other metrics do not need it

    device = next(model.parameters()).device
    io = ModelIO.of(inputs)
    example = io.example_inputs(1, "zeros", device=device)
    if io.forward_fn is not None:  # the counter calls model(x) / model(*x) / model(**x): wrap the custom call
        model, example = _Call(model, io), (example,)
    elif io.kind == "tuple":
        example = tuple(example)
    with _AttentionCounter() as attention:
        macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs) + attention.macs, int(params)


def attention_macs(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    """Return the MACs of one attention product: q·kᵀ then the weights times v.

    Shapes are (..., L, E) for q, (..., S, E) for k and (..., S, Ev) for v (leading dims:
    batch, heads); the result is Π(leading)·L·S·(E + Ev).
    """
    *lead, n_q, e = q_shape
    n_s, e_v = k_shape[-2], v_shape[-1]
    count = 1
    for d in lead:
        count *= int(d)
    return count * int(n_q) * int(n_s) * (int(e) + int(e_v))


class _AttentionCounter(torch.overrides.TorchFunctionMode):
    """Sum `attention_macs` over the ``F.scaled_dot_product_attention`` calls made under it."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # torch.overrides.TorchFunctionMode protocol
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            q, k, v = (args + tuple(kwargs.get(n) for n in ("query", "key", "value")[len(args):]))[:3]
            self.macs += attention_macs(q.shape, k.shape, v.shape)
        return func(*args, **kwargs)


class _Call(nn.Module):
    """A model called through a `ModelIO`'s ``forward_fn``, as a module (for counters that call ``module(x)``)."""

    def __init__(self, model: nn.Module, io: ModelIO) -> None:
        super().__init__()
        self.model, self.io = model, io

    def forward(self, inputs: object) -> object:
        return self.io.forward(self.model, inputs)


def latency_ms(model: nn.Module, inputs: InputsLike, batch_sizes: Sequence[int] = (1, 64),
               repeats: int = 30, warmup: int = 5) -> dict[str, float | int]:  # fmt: skip
    """Measure CPU forward latency in milliseconds: the median of `repeats` timed runs per batch size.

    The model runs in eval mode under `torch.no_grad` on the CPU (a model on another device is
    copied there; the model itself is not changed, its train/eval mode is restored), on a
    fixed random input, after `warmup` untimed runs. Returns ``{"batch_<b>": ms, ...,
    "threads": torch.get_num_threads(), "repeats": repeats}``. A measurement only: it depends
    on the machine, the thread count and the load. To compare networks, use `latencies_ms`.
    """
    return latencies_ms([model], inputs, batch_sizes, repeats, warmup)[0]


@torch.no_grad()
def latencies_ms(models: Sequence[nn.Module], inputs: InputsLike, batch_sizes: Sequence[int] = (1, 64),
                 repeats: int = 30, warmup: int = 5) -> list[dict[str, float | int]]:  # fmt: skip
    """`latency_ms` of several networks, measured interleaved: run r times every model once, in an order
    that alternates between repeats, so that a change in the machine's load during the
    measurement slows all of them alike (their ratios are what a speed-up reports)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"latency_ms needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"latency_ms needs batch sizes >= 1, got {list(batch_sizes)}")
    nets = [m if all(p.device.type == "cpu" for p in m.parameters()) else copy.deepcopy(m).cpu() for m in models]
    modes = [n.training for n in nets]
    outs: list[dict[str, float | int]] = [{} for _ in nets]
    generator = torch.Generator().manual_seed(0)
    io = ModelIO.of(inputs)
    try:
        for n in nets:
            n.eval()
        for b in batch_sizes:
            x = io.example_inputs(b, "randn", generator=generator)  # float inputs random, token ids the example's
            for n in nets:
                for _ in range(warmup):
                    io.forward(n, x)
            times: list[list[float]] = [[] for _ in nets]
            for r in range(repeats):
                order = range(len(nets)) if r % 2 == 0 else reversed(range(len(nets)))
                for i in order:
                    start = time.perf_counter()
                    io.forward(nets[i], x)
                    times[i].append((time.perf_counter() - start) * 1000.0)
            for out, t in zip(outs, times, strict=True):
                out[f"batch_{b}"] = statistics.median(t)
    finally:
        for n, mode in zip(nets, modes, strict=True):
            n.train(mode)
    for out in outs:
        out["threads"] = torch.get_num_threads()
        out["repeats"] = repeats
    return outs


def measured_efficiency(dense: nn.Module, pruned: nn.Module, inputs: InputsLike,
                        batch_sizes: Sequence[int] = (1, 64), repeats: int = 30) -> dict[str, object]:  # fmt: skip
    """Compare a dense network with its physically slimmed version: parameters, MACs, measured CPU latency.

    Returns ``params`` and ``macs`` ({"dense", "pruned"}, `macs_and_params`), ``latency_ms``
    ({"dense", "pruned"}, each per batch size with threads and repeats; measured interleaved, `latencies_ms`),
    ``speedup_macs`` (dense / pruned MACs), ``speedup_measured`` (dense / pruned median latency
    at the largest batch size) and ``speedup_measured_by_batch`` (every batch size).
    """
    macs_d, params_d = macs_and_params(dense, inputs)
    macs_p, params_p = macs_and_params(pruned, inputs)
    lat_d, lat_p = latencies_ms([dense, pruned], inputs, batch_sizes, repeats)  # interleaved
    by_batch = {f"batch_{b}": float(lat_d[f"batch_{b}"]) / float(lat_p[f"batch_{b}"]) for b in batch_sizes}
    return {
        "params": {"dense": params_d, "pruned": params_p},
        "macs": {"dense": macs_d, "pruned": macs_p},
        "speedup_macs": macs_d / max(macs_p, 1),
        "latency_ms": {"dense": lat_d, "pruned": lat_p},
        "speedup_measured": by_batch[f"batch_{max(batch_sizes)}"],
        "speedup_measured_by_batch": by_batch,
    }
