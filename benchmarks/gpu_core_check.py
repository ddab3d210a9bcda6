"""GPU check of the core library (run on a CUDA machine; prints one JSON line last).

ResNet-20 on synthetic CIFAR-shaped batches of 128: median plain step, plain step + one
no-grad forward, and recorded step (same_batch, bf16 storage) on the GPU; then the
recorded trajectory is solved by `fista` on the GPU and `cd` on the CPU, and their
objectives compared.
"""

from __future__ import annotations

import copy
import json
import statistics
import time

import torch
from torch import nn

from causalprune import TrajectoryRecorder, lasso
from causalprune.models import create_model
from gpu_recorder_ab import time_steps  # sibling script: benchmarks/ is sys.path[0]

LOSS = nn.CrossEntropyLoss()


def main(steps: int = 200, warmup: int = 20) -> None:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    base = create_model("resnet20").to(dev)
    models = {k: copy.deepcopy(base) for k in ("plain", "plus_forward", "recorded")}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    rec = TrajectoryRecorder(models["recorded"], LOSS, opts["recorded"], dtype=torch.bfloat16,
                             capacity=steps + warmup)  # fmt: skip
    x = torch.randn(128, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (128,), device=dev)

    def plain(k: str) -> None:
        opts[k].zero_grad(set_to_none=True)
        LOSS(models[k](x), y).backward()
        opts[k].step()
        if k == "plus_forward":
            with torch.no_grad():
                LOSS(models[k](x), y)

    fns = {"plain": lambda: plain("plain"), "plus_forward": lambda: plain("plus_forward"),
           "recorded": lambda: rec.step(x, y)}  # fmt: skip
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for k, fn in fns.items():  # blocks of steps, timed with one sync per block
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        blocks = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(steps // 5):
                fn()
            torch.cuda.synchronize()
            blocks.append((time.perf_counter() - t0) / (steps // 5))
        out[f"{k}_step_ms"] = round(1000 * statistics.median(blocks), 3)
    out["ratio_vs_plain"] = round(out["recorded_step_ms"] / out["plain_step_ms"], 3)
    out["ratio_vs_plain_plus_forward"] = round(out["recorded_step_ms"] / out["plus_forward_step_ms"], 3)
    traj = rec.trajectory()
    out["T"], out["d"] = traj.T, traj.X.shape[1]
    t0 = time.perf_counter()
    g = lasso.solve(traj.X, traj.y, alpha_ratio=0.01, solver="fista", max_iter=2000)
    torch.cuda.synchronize()
    out["fista_gpu"] = {"time_s": round(time.perf_counter() - t0, 2), "objective": g.objective, "gap": g.gap,
                        "n_iter": g.n_iter, "nnz": int((g.coef != 0).sum())}  # fmt: skip
    c = lasso.solve(traj.X.cpu(), traj.y, alpha_ratio=0.01, solver="cd")
    out["cd_cpu"] = {"time_s": round(c.time_s, 2), "objective": c.objective, "gap": c.gap, "n_iter": c.n_iter,
                     "nnz": int((c.coef != 0).sum())}  # fmt: skip
    out["fista_over_cd_objective"] = g.objective / c.objective
    out["amp_channels_last"] = amp_check(base, x, y, steps, warmup)
    print(json.dumps(out))


def amp_check(base: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int) -> dict:
    """Plain vs recorded steps under bf16 autocast with channels_last (the train.amp path)."""
    xs = x.to(memory_format=torch.channels_last)
    models = {k: copy.deepcopy(base).to(memory_format=torch.channels_last) for k in ("plain", "recorded")}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    rec = TrajectoryRecorder(models["recorded"], LOSS, opts["recorded"], dtype=torch.bfloat16,
                             capacity=steps + warmup)  # fmt: skip

    def plain() -> None:
        opts["plain"].zero_grad(set_to_none=True)
        LOSS(models["plain"](xs), y).backward()
        opts["plain"].step()

    res = {}
    for k, fn in (("plain", plain), ("recorded", lambda: rec.step(xs, y))):
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            res[f"{k}_step_ms"] = round(time_steps(fn, steps, warmup), 3)
    traj = rec.trajectory()
    res["ratio_recorded_over_plain"] = round(res["recorded_step_ms"] / res["plain_step_ms"], 3)
    res["delta_loss_nonzero_fraction"] = float((traj.y != 0).float().mean())
    return res


if __name__ == "__main__":
    main()
