"""Measured CPU speed-up of physically removed channels at a 2× (and 4×) MACs reduction.

For each model, channel groups (`causalprune.groups.channel_groups`) are ranked globally
by the L2 norm of their producer weights (the weights of a freshly initialised network:
this measures speed, not accuracy) and removed by the library's channel selection
(`structured.ChannelPlan`: at least one channel kept per layer, the number removed bisected
so that dense MACs / slim MACs reaches the target), and the dense and slim networks' forward
latencies are measured
(`metrics.latencies_ms`: eval mode, median of 30 runs after warm-up, batch 1 and 64, the
dense and slim networks timed interleaved).
Prints one JSON line per (model, target). Run: python benchmarks/structured_latency.py
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from causalprune.config import ConfigError, PruneConfig
from causalprune.metrics import latencies_ms, macs_and_params
from causalprune.models import create_model
from causalprune.structured import ChannelPlan

MODELS = {  # name → (constructor kwargs, one sample's shape)
    "cnn1d": ({"length": 40, "widths": (64, 64, 64)}, (1, 40)),
    "cnn1d-wide": ({"name": "cnn1d", "length": 40, "widths": (256, 256, 256)}, (1, 40)),
    "resnet20-B": ({"name": "resnet20", "shortcut": "B"}, (3, 32, 32)),
    "resnet20-A": ({"name": "resnet20"}, (3, 32, 32)),
}


def _build(key: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    kwargs, shape = MODELS[key]
    kwargs = dict(kwargs)
    name = kwargs.pop("name", key)
    torch.manual_seed(0)
    return create_model(name, **kwargs).eval(), shape


def _slim(model: torch.nn.Module, shape: tuple[int, ...], target: float, round_to: int = 1) -> torch.nn.Module:
    """A copy of `model` slimmed to `target`× fewer MACs, smallest producer-weight L2 norms removed first.

    Selection is the library's own (`structured.ChannelPlan`: one global ranking, one channel
    kept per layer, MACs bisected to the target and checked by exact counts).
    """
    slim = copy.deepcopy(model)
    prune = PruneConfig(granularity="channel", speedup=target, n_iter=1, round_to=round_to)
    plan = ChannelPlan.build(slim, prune, shape)
    layout = plan.groups.layout()
    params = {n: slim.get_parameter(n).detach() for n in layout.names}
    norms = layout.to_columns(layout.flatten(params) ** 2).sqrt()  # (G,)
    mask = plan.select(plan.groups.per_layer(norms), None, plan.targets()[-1], plan.initial_mask())
    return plan.slim(slim, mask)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--targets", default="2,4", help="MACs reductions (dense / slim)")
    ap.add_argument("--round-to", type=int, default=1, help="prune.round_to: layers keep multiples of this")
    a = ap.parse_args()
    for key in a.models.split(","):
        model, shape = _build(key)
        dense_macs, dense_params = macs_and_params(model, shape)
        for target in (float(t) for t in a.targets.split(",")):
            try:
                slim = _slim(model, shape, target, a.round_to)
            except ConfigError as e:  # the target cannot be reached under the layer floors
                print(json.dumps({"model": key, "target": target, "round_to": a.round_to, "unreachable": str(e)}))
                continue
            macs, params = macs_and_params(slim, shape)
            with torch.no_grad():
                x = torch.randn(2, *shape)
                assert slim(x).shape == model(x).shape
            dense_lat, lat = latencies_ms([model, slim], shape)  # interleaved: load changes hit both alike
            print(json.dumps({
                "model": key, "target": target, "round_to": a.round_to,
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
