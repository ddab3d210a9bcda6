"""cd's memory beyond X and its speed, against the solver of an earlier commit, in one run.

For each T (default 96 and 400; d = 2 000 000 float32 columns, X = 4·T·d bytes), on the
trajectory-like problem of `benchmarks/lasso.py` (α = 0.01 · α_max, tol 1e-6):

* memory: each version solves once in a fresh process (after a small warm-up solve); the
  peak resident memory added by the solve (Linux VmHWM, reset once X is built, minus the RSS
  then) over X's size, and per column of X;
* speed: one process loads both versions and times them interleaved (baseline, current,
  baseline, …), median of `--repeats`; ``time_over_baseline`` is current / baseline.

The baseline is `src/causalprune/lasso.py` at `--baseline` (default: the last commit before
issue 19's bookkeeping change), loaded from ``git show`` as a module beside the current one.
Prints one JSON object as its last line.

    python benchmarks/lasso_memory.py                  # T = 96 and 400, d = 2 000 000
    python benchmarks/lasso_memory.py --d 200000 --T 96  # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "b9da555f2f2fe89ab748c84e207fcd1faa356370"  # lasso.py before the float32 bookkeeping (issue 19)

CHILD = r"""
import importlib.util, json, statistics, sys, time
import numpy as np
import torch
import sklearn.linear_model  # noqa: F401 (cd imports it; count it in the baseline)
from causalprune import lasso

mode, baseline_file, bench_file, T, d, repeats = sys.argv[1:7]
T, d, repeats = int(T), int(d), int(repeats)

def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod

bench = load("lasso_bench", bench_file)
versions = {"current": lasso, "baseline": load("causalprune._lasso_baseline", baseline_file)}
g = torch.Generator().manual_seed(1)
for mod in versions.values() if mode == "speed" else [versions[mode]]:  # warm-up: thread pools, lazy imports
    mod.solve(torch.rand(T, 5000, generator=g), torch.randn(T, generator=g), alpha_ratio=0.01, solver="cd")
X, y = bench.make_problem(d, T=T)
alpha = 0.01 * float(torch.linalg.vector_norm(X.T @ y, float("inf"))) / T

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

def solve(mod):
    t0 = time.perf_counter()
    res = mod.solve(X, y, alpha=alpha, solver="cd", tol=1e-6)
    return time.perf_counter() - t0, res

if mode == "speed":
    times = {k: [] for k in versions}
    objectives = {}
    for _ in range(repeats):
        for name, mod in versions.items():
            dt, res = solve(mod)
            times[name].append(dt)
            objectives[name] = res.objective
    out = {k: {"time_s": round(statistics.median(v), 3), "times_s": [round(t, 3) for t in v],
               "objective": objectives[k]} for k, v in times.items()}
else:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS: building X peaked higher than X
    base = status("VmRSS")
    dt, res = solve(versions[mode])
    added = status("VmHWM") - base
    x_bytes = X.numel() * X.element_size()
    out = {"added_bytes": added, "extra_mem_over_X32": round(added / x_bytes, 4),
           "bytes_per_column": round(added / d, 1), "time_s": round(dt, 3), "objective": res.objective,
           "n_iter": res.n_iter, "nnz": int((res.coef != 0).sum()), "converged": res.converged}
print(json.dumps(out))
"""


def _child(args: list[str]) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="+", default=[96, 400], help="rows (recorded steps)")
    ap.add_argument("--d", type=int, default=2_000_000, help="columns (weights)")
    ap.add_argument("--baseline", default=BASELINE, help="git revision whose lasso.py is the baseline")
    ap.add_argument("--repeats", type=int, default=3, help="timed solves of each version (interleaved)")
    args = ap.parse_args()
    source = subprocess.run(["git", "show", f"{args.baseline}:src/causalprune/lasso.py"], cwd=ROOT,
                            capture_output=True, text=True)  # fmt: skip
    if source.returncode != 0:
        raise SystemExit(f"cannot read lasso.py at --baseline {args.baseline!r}: {source.stderr.strip()}")
    result: dict = {
        "benchmark": "lasso_memory",
        "d": args.d,
        "baseline": args.baseline,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        baseline_file = Path(tmp) / "lasso_baseline.py"
        baseline_file.write_text(source.stdout)
        bench_file = str(ROOT / "benchmarks" / "lasso.py")
        for T in args.T:
            common = [str(baseline_file), bench_file, str(T), str(args.d), str(args.repeats)]
            row: dict = {"x_bytes": 4 * T * args.d}
            for version in ("baseline", "current"):
                row[f"memory_{version}"] = _child([version, *common])
            row["speed"] = _child(["speed", *common])
            row["time_over_baseline"] = round(row["speed"]["current"]["time_s"] / row["speed"]["baseline"]["time_s"], 3)
            row["extra_mem_over_X32"] = row["memory_current"]["extra_mem_over_X32"]
            result[f"T{T}"] = row
            print(f"T{T}", json.dumps(row), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
