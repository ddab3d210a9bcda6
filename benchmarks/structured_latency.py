"""Measured CPU speed-up of physically removed channels at a 2× (and 4×) MACs reduction.

For each model, channel groups (`causalprune.groups.channel_groups`) are ranked globally
by the L2 norm of their producer weights (the weights of a freshly initialised network:
this measures speed, not accuracy), the smallest are removed — at least one channel kept
per layer — with the fraction found by bisection so that dense MACs / slim MACs reaches the
target, and the dense and slim networks' forward latencies are measured
(`metrics.latency_ms`: eval mode, median of 30 runs after warm-up, batch 1 and 64).
Prints one JSON line per (model, target). Run: python benchmarks/structured_latency.py
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from causalprune.groups import channel_groups
from causalprune.metrics import latency_ms, macs_and_params
from causalprune.models import create_model

MODELS = {  # name → (constructor kwargs, one sample's shape)
    "cnn1d": ({"length": 40, "widths": (64, 64, 64)}, (1, 40)),
    "resnet20-B": ({"name": "resnet20", "shortcut": "B"}, (3, 32, 32)),
    "resnet20-A": ({"name": "resnet20"}, (3, 32, 32)),
}


def _build(key: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    kwargs, shape = MODELS[key]
    kwargs = dict(kwargs)
    name = kwargs.pop("name", key)
    torch.manual_seed(0)
    return create_model(name, **kwargs).eval(), shape


def _slim(model: torch.nn.Module, shape: tuple[int, ...], fraction: float) -> torch.nn.Module:
    """Remove the `fraction` of groups with the smallest producer-weight L2 norm (≥ 1 kept per layer)."""
    slim = copy.deepcopy(model)
    groups = channel_groups(slim, torch.zeros(1, *shape))
    layout = groups.layout()
    params = {n: slim.get_parameter(n).detach() for n in layout.names}
    norms = layout.to_columns(layout.flatten(params) ** 2).sqrt()  # (G,)
    order = torch.argsort(norms)
    keep = torch.ones(groups.G, dtype=torch.bool)
    for layer_groups in groups.layers.values():  # the strongest channel of each layer is never removed
        idx = torch.tensor(layer_groups)
        order = order[order != idx[norms[idx].argmax()]]
    keep[order[: int(fraction * groups.G)]] = False
    return groups.remove_groups_(slim, keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--targets", default="2,4", help="MACs reductions (dense / slim)")
    a = ap.parse_args()
    for key in a.models.split(","):
        model, shape = _build(key)
        dense_macs, dense_params = macs_and_params(model, shape)
        dense_lat = latency_ms(model, shape)
        for target in (float(t) for t in a.targets.split(",")):
            lo, hi, best = 0.0, 0.99, None
            for _ in range(14):  # bisection on the removed fraction
                mid = (lo + hi) / 2
                try:
                    slim = _slim(model, shape, mid)
                except ValueError:  # would empty a layer: too much
                    hi = mid
                    continue
                macs, params = macs_and_params(slim, shape)
                best = (mid, slim, macs, params) if best is None or abs(dense_macs / macs - target) < abs(
                    dense_macs / best[2] - target) else best  # fmt: skip
                lo, hi = (mid, hi) if dense_macs / macs < target else (lo, mid)
            assert best is not None
            fraction, slim, macs, params = best
            with torch.no_grad():
                x = torch.randn(2, *shape)
                assert slim(x).shape == model(x).shape
            lat = latency_ms(slim, shape)
            print(json.dumps({
                "model": key, "target": target, "removed_fraction": round(fraction, 4),
                "macs_dense": dense_macs, "macs_slim": macs, "macs_reduction": round(dense_macs / macs, 3),
                "params_dense": dense_params, "params_slim": params,
                "latency_ms_dense": {k: round(v, 3) for k, v in dense_lat.items() if k.startswith("batch")},
                "latency_ms_slim": {k: round(v, 3) for k, v in lat.items() if k.startswith("batch")},
                "speedup_measured_batch_64": round(dense_lat["batch_64"] / lat["batch_64"], 3),
                "speedup_measured_batch_1": round(dense_lat["batch_1"] / lat["batch_1"], 3),
                "threads": lat["threads"], "torch": torch.__version__,
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
