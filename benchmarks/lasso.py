"""Lasso solvers vs scikit-learn on trajectory-like data (T = 400, d ≫ T).

For each size: median time (3 runs) for each solver to reach scikit-learn `Lasso`'s objective (within
1e-6 relative), scikit-learn given its best setup (float32, column-major X, copy_X=False),
and the peak resident memory each solver adds beyond X (as a fraction of X's float32
size; Linux VmHWM, reset before each solve). celer (and skglm with --libraries celer,skglm) run too when installed.
Prints one JSON object as its last line.

    python benchmarks/lasso.py            # d = 270 000 and 2 000 000
    python benchmarks/lasso.py --quick    # d = 27 000 and 100 000
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import numpy as np
import torch
from sklearn.linear_model import Lasso

from causalprune import lasso

T = 400


def _rss_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    except OSError:
        pass


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def make_problem(d: int, seed: int = 0, T: int = T) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive, heavy-tailed columns (x = g², per-weight log-normal scale), y ≈ −Σ_k x_k + noise.

    Returns X as a (T, d) view of a column-major (d, T) float32 buffer, as the recorder stores it.
    """
    g = torch.Generator().manual_seed(seed)
    buf = torch.empty(d, T, dtype=torch.float32)
    y = torch.zeros(T, dtype=torch.float64)
    step = 200_000
    for a in range(0, d, step):
        k = min(step, d - a)
        scale = torch.exp(torch.randn(k, 1, generator=g))
        chunk = (torch.randn(k, T, generator=g) * scale) ** 2
        # Heavy tails in time too: a few steps with large updates.
        chunk *= 1.0 + 4.0 * (torch.rand(1, T, generator=g) < 0.05)
        buf[a : a + k] = chunk
        w = -torch.rand(k, generator=g) * (torch.rand(k, generator=g) < 0.01)
        y += (chunk.T.double() @ w.double())
    y += 0.05 * y.std() * torch.randn(T, generator=g, dtype=torch.float64)
    return buf.T, y.float()


def objective(X: np.ndarray, y: np.ndarray, coef: np.ndarray, alpha: float) -> float:
    nz = np.flatnonzero(coef)
    r = y.astype(np.float64) - X[:, nz].astype(np.float64) @ coef[nz].astype(np.float64)
    return float(0.5 * r @ r / len(y) + alpha * np.abs(coef).sum())


def measure(fn, repeats: int = 3):
    """Return (result, median seconds over `repeats` runs, peak extra RSS of the first run)."""
    times = []
    for i in range(repeats):
        _rss_reset()
        base = _rss("VmRSS")
        t0 = time.perf_counter()
        coef = fn()
        times.append(time.perf_counter() - t0)
        if i == 0:
            mem = max(_rss("VmHWM") - base, 0)
    return coef, sorted(times)[len(times) // 2], mem


def run_size(d: int, with_fista: bool, libraries: set[str]) -> dict:
    X, y = make_problem(d)
    Xn = X.numpy()  # (T, d) Fortran-ordered view: no copy
    yn = y.numpy()
    x_bytes = d * T * 4
    alpha = 0.01 * float(np.abs(Xn.T @ yn).max()) / T
    out: dict = {"T": T, "d": d, "alpha": alpha}

    def sk():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = Lasso(alpha=alpha, fit_intercept=False, copy_X=False, max_iter=1000).fit(Xn, yn)
        return m.coef_

    coef, t_sk, mem = measure(sk)
    target = objective(Xn, yn, coef, alpha)
    out["sklearn"] = {"time_s": round(t_sk, 3), "objective": target, "extra_mem_over_X32": round(mem / x_bytes, 3)}

    def ours(solver: str, tol: float, max_iter: int | None = None):
        return lambda: lasso.solve(X, y, alpha=alpha, solver=solver, tol=tol, max_iter=max_iter).coef.numpy()

    candidates = [("cd", ours("cd", 1e-6))]
    if with_fista:
        candidates.append(("fista", ours("fista", 1e-6, 3000)))
    try:
        if "skglm" not in libraries:
            raise ImportError
        from skglm import Lasso as SkglmLasso

        # Compile skglm's numba kernels on a tiny problem first: time the solve, not the JIT.
        SkglmLasso(alpha=alpha, fit_intercept=False).fit(Xn[:, :50].copy(order="F"), yn)

        candidates.append(("skglm", lambda: SkglmLasso(alpha=alpha, fit_intercept=False).fit(Xn, yn).coef_))
    except ImportError:
        out["skglm"] = "not installed or not selected"
    try:
        if "celer" not in libraries:
            raise ImportError
        from celer import Lasso as CelerLasso

        candidates.append(("celer", lambda: CelerLasso(alpha=alpha, fit_intercept=False).fit(Xn, yn).coef_))
    except ImportError:
        out["celer"] = "not installed or not selected"

    for name, fn in candidates:
        coef, dt, mem = measure(fn, repeats=1 if name == "fista" else 3)  # fista is slow on CPU
        obj = objective(Xn, yn, np.asarray(coef), alpha)
        reached = obj <= target * (1 + 1e-6)
        out[name] = {
            "time_s": round(dt, 3),
            "objective": obj,
            "reached_sklearn_objective": bool(reached),
            "speedup_vs_sklearn": round(t_sk / dt, 2) if reached else None,
            "extra_mem_over_X32": round(mem / x_bytes, 3),
            "nnz": int(np.count_nonzero(coef)),
        }
    cd = out["cd"]
    out["speedup_vs_sklearn"] = cd["speedup_vs_sklearn"]
    out["extra_mem_over_X32"] = cd["extra_mem_over_X32"]
    others = [out[k]["time_s"] for k in ("skglm", "celer") if isinstance(out.get(k), dict)]
    if others:
        out["cd_time_over_fastest_library"] = round(cd["time_s"] / min(others), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument(
        "--libraries", default="celer", help="other libraries to time: celer, skglm (slow here)"
    )
    args = ap.parse_args()
    libraries = set(args.libraries.split(","))
    sizes = {"d27k": 27_000, "d100k": 100_000} if args.quick else {"d270k": 270_000, "d2M": 2_000_000}
    result: dict = {
        "benchmark": "lasso",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    for i, (key, d) in enumerate(sizes.items()):
        result[key] = run_size(d, with_fista=i == 0, libraries=libraries)
        print(key, json.dumps(result[key]), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
