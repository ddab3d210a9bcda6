"""GPU A/B of recorder per-step costs (ResNet-20, batch 128): which part of a recorded step costs what."""

from __future__ import annotations

import copy
import json
import time

import torch
from torch import nn

import causalprune.trajectory as tj
from causalprune import TrajectoryRecorder
from causalprune.models import create_model

LOSS = nn.CrossEntropyLoss()


def time_steps(fn, steps=150, warmup=20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / steps


def main() -> None:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    base = create_model("resnet20").to(dev)
    x = torch.randn(128, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (128,), device=dev)
    out = {}

    m = copy.deepcopy(base)
    o = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

    def plain_fwd():
        o.zero_grad(set_to_none=True)
        LOSS(m(x), y).backward()
        o.step()
        with torch.no_grad():
            LOSS(m(x), y)

    out["plain_plus_forward_ms"] = time_steps(plain_fwd)
    variants = {
        "default": {},
        "no_clear_autocast": {"clear": False},
        "block_rows_1": {"block": 1},
        "float32": {"dtype": torch.float32},
    }
    real_clear = torch.clear_autocast_cache
    for name, v in variants.items():
        mm = copy.deepcopy(base)
        oo = torch.optim.SGD(mm.parameters(), lr=0.01, momentum=0.9)
        if v.get("clear") is False:
            torch.clear_autocast_cache = lambda: None
        rec = TrajectoryRecorder(mm, LOSS, oo, dtype=v.get("dtype", torch.bfloat16), capacity=400)
        if "block" in v:
            rec._store = tj._Store(rec.d, rec.dtype, rec.device, 400, None, None, block_rows=v["block"])
        out[f"{name}_ms"] = time_steps(lambda rec=rec: rec.step(x, y))
        torch.clear_autocast_cache = real_clear
    print(json.dumps({k: round(val, 3) for k, val in out.items()}))


if __name__ == "__main__":
    main()
