"""Cost of recording: median recorded-step time over a plain training step.

For LeNet-5 and CIFAR ResNet-20 on 3×32×32 batches of 128 (CPU), three kinds of step are
timed, interleaved so that drift hits them alike:

* plain: forward, backward, SGD-momentum step;
* plain + forward: the same plus one no-grad forward of the batch (the unavoidable extra
  cost of a same-batch ΔL);
* recorded: `TrajectoryRecorder.step` (same_batch, float32 storage).

Prints one JSON object as its last line: {"lenet": {"ratio_vs_plain": …,
"ratio_vs_plain_plus_forward": …}, "resnet20": {…}}. `--quick` takes fewer steps.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch
from torch import nn

from causalprune import TrajectoryRecorder
from causalprune.models import create_model

LOSS = nn.CrossEntropyLoss()


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def bench_model(name: str, steps: int, warmup: int, batch: int = 128) -> dict:
    torch.manual_seed(0)
    base = create_model(name, num_classes=10)
    models = {k: copy.deepcopy(base) for k in ("plain", "plain_plus_forward", "recorded")}
    opts = {k: _sgd(m) for k, m in models.items()}
    rec = TrajectoryRecorder(models["recorded"], LOSS, opts["recorded"], capacity=steps + warmup)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    def plain(kind: str) -> None:
        m, o = models[kind], opts[kind]
        o.zero_grad(set_to_none=True)
        LOSS(m(x), y).backward()
        o.step()
        if kind == "plain_plus_forward":
            with torch.no_grad():
                LOSS(m(x), y)

    run = {
        "plain": lambda: plain("plain"),
        "plain_plus_forward": lambda: plain("plain_plus_forward"),
        "recorded": lambda: rec.step(x, y),
    }
    times: dict[str, list[float]] = {k: [] for k in run}
    for i in range(warmup + steps):
        for k, fn in run.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "ratio_vs_plain": round(med["recorded"] / med["plain"], 3),
        "ratio_vs_plain_plus_forward": round(med["recorded"] / med["plain_plus_forward"], 3),
        "extra_forward_over_plain": round(med["plain_plus_forward"] / med["plain"], 3),
        "median_step_s": {k: round(v, 4) for k, v in med.items()},
        "steps": steps,
        "d": rec.d,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps, for a smoke run")
    args = ap.parse_args()
    steps, warmup = (5, 1) if args.quick else (30, 3)
    result = {
        "benchmark": "recorder",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batch": 128,
    }
    for key, name in (("lenet", "lenet5"), ("resnet20", "resnet20")):
        result[key] = bench_model(name, steps, warmup)
        print(key, json.dumps(result[key]), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
