"""Peak memory of a Lasso solve on a wide trajectory: a solve must not copy X.

A dense solution (``minnorm``, every coefficient non-zero) used to be scored by copying
all of X to float64 on the host (2× X's float32 size; 160 GB for an 800 × 25.5M
trajectory). Each solve runs in its own subprocess, so its peak resident memory is clean.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import causalprune

T, D = 200, 2_000_000  # X: 1.6 GB of float32

SCRIPT = r"""
import json, resource, sys
import torch
import sklearn.linear_model  # noqa: F401 (cd imports it; count it in the baseline)
from causalprune import lasso

solver, T, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kwargs = {"solver": "minnorm"} if solver == "minnorm" else {"solver": "cd", "alpha_ratio": 0.1}
g = torch.Generator().manual_seed(0)
# Warm up on a small problem (thread pools, BLAS buffers, lazy imports): not part of the measurement.
lasso.solve(torch.rand(T, 5000, generator=g), torch.randn(T, generator=g), **kwargs)
buf = torch.empty(d, T).uniform_(0.0, 1.0, generator=g)  # column-major (d, T), as the recorder stores it
X = buf.T
support = torch.randperm(d, generator=g)[:20]  # y from a sparse γ, plus noise
y = X[:, support] @ torch.randn(20, generator=g) + 0.1 * torch.randn(T, generator=g)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak so far: X is touched
res = lasso.solve(X, y, **kwargs)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"x_bytes": X.numel() * X.element_size(), "added": peak - base, "nnz": int((res.coef != 0).sum()),
                  "n_iter": res.n_iter, "converged": res.converged, "time_s": res.time_s}))
"""


def _available_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _measure(solver: str, T: int, d: int) -> dict:
    """Run one solve of a (T, d) trajectory in a fresh process; return its peak RSS added and result."""
    env = dict(os.environ)
    src = str(Path(causalprune.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, solver, str(T), str(d)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
@pytest.mark.parametrize("solver", ["minnorm", "cd"])
def test_solve_adds_little_memory_beyond_x(solver):
    x_bytes = T * D * 4
    if _available_bytes() < x_bytes + (2 << 30):
        pytest.skip("not enough free memory for a 1.6 GB trajectory")
    out = _measure(solver, T, D)
    mib = 2**20
    print(f"{solver}: peak RSS +{out['added'] / mib:.0f} MiB over X's {out['x_bytes'] / mib:.0f} MiB "
          f"({out['added'] / out['x_bytes']:.3f} × X), {out['n_iter']} iterations in {out['time_s']:.1f} s")
    assert out["x_bytes"] == x_bytes
    if solver == "minnorm":
        assert out["nnz"] > 0.99 * D  # a dense solution: every column is scored exactly
    else:
        assert 0 < out["nnz"] <= T
    assert out["added"] < 0.25 * x_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
def test_cd_bookkeeping_is_at_most_32_bytes_per_column():
    """cd's (d,) bookkeeping, measured as the slope of peak RSS added over d at T = 96 (X: 384 bytes a column).

    Two solves in fresh processes, d = 250 000 and 1 000 000: what does not grow with d (imports,
    BLAS buffers, chunked temporaries, the working set) cancels in the difference. The code before
    issue 19 held ≈ 110 bytes a column here (float64 vectors, full top-k orderings).
    """
    t, small, large = 96, 250_000, 1_000_000
    if _available_bytes() < t * large * 4 + (1 << 30):
        pytest.skip("not enough free memory for a 384 MB trajectory")
    a, b = _measure("cd", t, small), _measure("cd", t, large)
    per_column = (b["added"] - a["added"]) / (large - small)
    print(f"cd at T = {t}: {per_column:.1f} bytes a column beyond X; at d = {large}: +{b['added'] / 2**20:.0f} MiB "
          f"({b['added'] / b['x_bytes']:.3f} × X)")
    assert a["converged"] and b["converged"] and 0 < b["nnz"] <= t
    assert per_column <= 32
    assert b["added"] < 0.25 * b["x_bytes"]
