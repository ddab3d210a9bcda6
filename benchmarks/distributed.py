"""Trajectory memory per process and Lasso solve time on column shards: world 1 and 2 on this CPU, and a projection.

A synthetic trajectory X (T × d float32, standard normal) and ΔL y are split by columns as a
distributed recording splits them (`Platform.shard_range`); each of `world` processes (gloo,
spawned here) holds its shard and solves the Lasso on the shards with each of `--solvers`
(`lasso.solve(..., comm=...)`; default minnorm and cd). Printed per world size and solver: the
bytes of X each process holds, the solve time (median of `--repeats`), and the coefficients'
agreement with world 1.

Then a **projection** (computed, not measured) for ResNet-50 on ImageNet, d = 25.5 M prunable
weights, T = 400 recorded steps per round (README: its trajectory is 41 GB in float32),
on 8 GPUs of 80 GB: X bytes per process T·⌈d/8⌉·4, and the minnorm solve time from the
per-column costs measured here on this CPU (the Gram's T² multiply-adds per column dominate;
a GPU is far faster, so read it as an upper bound of the shape, not a GPU time).
Run: python benchmarks/distributed.py [--T 256 --d 400000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from causalprune import lasso
from causalprune.platform import current


def _work(rank: int, world: int, init: str, out: str, T: int, d: int, repeats: int, solver: str) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads() // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    plat = current()
    g = torch.Generator().manual_seed(0)
    a, b = plat.shard_range(d)
    X = torch.randn(T, d, generator=g)[:, a:b].contiguous()  # every process draws X, keeps its columns
    y = torch.randn(T, generator=g)
    comm = lasso.Comm.over(plat) if world > 1 else None
    times = []
    for _ in range(repeats):
        plat.barrier()
        t0 = time.perf_counter()
        fit = lasso.solve(X, y, alpha_ratio=0.01, solver=solver, comm=comm)
        plat.barrier()
        times.append(time.perf_counter() - t0)
    coef = plat.gather_columns(fit.coef, d)
    if plat.is_primary:
        torch.save(coef, f"{out}.coef")
        with open(f"{out}.json", "w") as f:
            json.dump({"world": world, "solver": solver, "T": T, "d": d, "nnz": int((coef != 0).sum()),
                       "X_bytes_per_process": X.numel() * X.element_size(),
                       "solve_s_median": statistics.median(times), "threads_per_process": torch.get_num_threads()}, f)
    if world > 1:
        dist.barrier()  # leave together (a gloo process leaving while its peer still talks can abort)
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--d", type=int, default=400_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--solvers", default="minnorm,cd", help="comma list of Lasso solvers")
    a = ap.parse_args()
    minnorm_s = None
    for solver in a.solvers.split(","):
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            for world in (1, 2):
                out = f"{tmp}/w{world}"
                mp.start_processes(_work, args=(world, f"{tmp}/init{world}", out, a.T, a.d, a.repeats, solver),
                                   nprocs=world, start_method="spawn")  # fmt: skip
                with open(f"{out}.json") as f:
                    results[world] = json.load(f)
                results[world]["coef"] = torch.load(f"{out}.coef")
        ref = results[1]["coef"]
        for world in (1, 2):
            r = dict(results[world])
            coef = r.pop("coef")
            r["coef_max_rel_diff_vs_world_1"] = float((coef - ref).abs().max() / ref.abs().max())
            print(json.dumps(r))
        if solver == "minnorm":
            minnorm_s = results[1]["solve_s_median"]
    if minnorm_s is None:
        return
    # Projection: ResNet-50 / ImageNet on 8 GPUs (computed from the measured per-column cost).
    per_column_s = minnorm_s / a.d * (400 / a.T) ** 2  # minnorm ≈ T² work per column
    d50, T50, world50 = 25_500_000, 400, 8
    print(json.dumps({
        "projection": "ResNet-50 / ImageNet, minnorm on column shards (computed, not measured)",
        "d": d50, "T": T50, "world": world50,
        "X_bytes_one_process": T50 * d50 * 4, "X_bytes_per_process": T50 * -(-d50 // world50) * 4,
        "solve_s_per_process_at_this_cpu_rate": round(per_column_s * -(-d50 // world50), 1),
        "plus": "one all-reduce of the T×T float64 Gram (1.3 MB) and a gather of d coefficients",
    }))


if __name__ == "__main__":
    main()
