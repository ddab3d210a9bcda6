"""GPU check of the Lasso path: solves on a CUDA trajectory agree with the CPU and do not copy X.

For each solver, a (T, d) float32 trajectory stored column-major on the GPU (as the
recorder stores it) is solved on the GPU and, from a host copy, on the CPU. Prints one
JSON line per solver: the GPU memory the solve added beyond X (peak allocated minus
allocated before, as a fraction of X's bytes), the relative difference of the
coefficients and of the objectives, and both times. Run: python benchmarks/gpu_lasso_check.py
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from causalprune import lasso


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=200)
    ap.add_argument("--d", type=int, default=2_000_000)
    ap.add_argument("--solvers", default="minnorm,cd,fista")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_lasso_check: no CUDA device")
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    buf = torch.empty(a.d, a.T).uniform_(0.0, 1.0, generator=g)  # (d, T) column-major
    support = torch.randperm(a.d, generator=g)[:20]
    y = buf.T[:, support] @ torch.randn(20, generator=g) + 0.1 * torch.randn(a.T, generator=g)
    X_cpu = buf.T
    X_gpu = buf.to(dev).T
    x_bytes = X_gpu.numel() * 4
    for solver in a.solvers.split(","):
        kwargs = {"solver": solver} if solver == "minnorm" else {"solver": solver, "alpha_ratio": 0.1}
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        res_gpu = lasso.solve(X_gpu, y, **kwargs)
        torch.cuda.synchronize()
        t_gpu = time.perf_counter() - t0
        added = torch.cuda.max_memory_allocated() - before
        t0 = time.perf_counter()
        res_cpu = lasso.solve(X_cpu, y, **kwargs)
        t_cpu = time.perf_counter() - t0
        cg, cc = res_gpu.coef.cpu().double(), res_cpu.coef.double()
        print(json.dumps({
            "solver": solver, "T": a.T, "d": a.d, "device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
            "gpu_added_over_x": round(added / x_bytes, 4), "coef_rel_diff": float((cg - cc).norm() / cc.norm()),
            "objective_rel_diff": abs(res_gpu.objective - res_cpu.objective) / abs(res_cpu.objective),
            "converged_gpu": res_gpu.converged, "converged_cpu": res_cpu.converged,
            "time_gpu_s": round(t_gpu, 3), "time_cpu_s": round(t_cpu, 3),
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
