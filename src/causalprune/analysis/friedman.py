"""The Friedman proof of concept (paper Fig. 1; docs/analysis.md), vectorised across instances.

For each instance: draw Friedman #1 data (10 features; y depends on x0..x4 only),
standardise, fit scikit-learn's Lasso (the reference importances), and train a linear
model ŷ = Σ_k θ_k x_k + b — one parameter per feature — with minibatch SGD while
recording x̃_{t,k} = (Δθ_k)²/η² and ΔL_t; then fit the causal Lasso of ΔL on x̃ (exact
coordinate descent) to get γ̃_k. All instances train at once as a batch of independent
linear models with closed-form gradients, so 1000 instances take seconds.

ΔL is measured two ways (docs/method.md, "Recording"): ``probe`` — the loss on the whole training set of the
instance, before and after each step (the "actual total loss"); ``same_batch`` — the loss
on the step's own minibatch. `friedman.json` holds both: ``causal`` is the probe version
(the default, the one that reproduces the figure), ``causal_same_batch`` the other.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import make_friedman1
from sklearn.linear_model import Lasso

from .. import lasso
from ..io import save_json

FEATURES = [f"x{k}" for k in range(10)]
INFORMATIVE = 5  # x0..x4 drive y; x5..x9 are noise


def _instances(n_instances: int, n_samples: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in range(n_instances):
        x, y = make_friedman1(n_samples=n_samples, n_features=10, noise=noise, random_state=seed + i)
        x = (x - x.mean(0)) / x.std(0)
        y = (y - y.mean()) / y.std()
        xs.append(x)
        ys.append(y)
    return torch.tensor(np.stack(xs)), torch.tensor(np.stack(ys))  # (I, n, 10), (I, n) float64


def _train_and_record(x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, lr: float,
                      seed: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """SGD on I independent linear models; return x̃ (I, T, 10) and ΔL (I, T) for both ΔL kinds."""
    n_inst, n, d = x.shape
    g = torch.Generator().manual_seed(seed)
    theta = torch.zeros(n_inst, d, dtype=torch.float64)
    bias = torch.zeros(n_inst, 1, dtype=torch.float64)

    def loss(xb: torch.Tensor, yb: torch.Tensor, th: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        r = (xb @ th[:, :, None])[..., 0] + b - yb  # (I, m)
        return (r**2).mean(1)

    rows, dl_probe, dl_batch = [], [], []
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=g).split(batch_size):
            xb, yb = x[:, idx], y[:, idx]
            before_p, before_b = loss(x, y, theta, bias), loss(xb, yb, theta, bias)
            r = (xb @ theta[:, :, None])[..., 0] + bias - yb
            grad_t = 2.0 / len(idx) * (xb.transpose(1, 2) @ r[:, :, None])[..., 0]  # (I, d)
            grad_b = 2.0 / len(idx) * r.sum(1, keepdim=True)
            new_t, new_b = theta - lr * grad_t, bias - lr * grad_b
            rows.append(((new_t - theta) / lr) ** 2)
            dl_probe.append(loss(x, y, new_t, new_b) - before_p)
            dl_batch.append(loss(xb, yb, new_t, new_b) - before_b)
            theta, bias = new_t, new_b
    return {"X": torch.stack(rows, 1), "probe": torch.stack(dl_probe, 1), "same_batch": torch.stack(dl_batch, 1)}


def _causal(X: torch.Tensor, y: torch.Tensor, alpha_ratio: float) -> np.ndarray:
    out = np.zeros((X.shape[0], X.shape[2]))
    for i in range(X.shape[0]):
        res = lasso.solve(X[i].float(), y[i].float(), alpha_ratio=alpha_ratio, solver="cd", tol=1e-8)
        out[i] = res.coef.double().numpy()
    return out


def separation(coefs: np.ndarray) -> float:
    """Fraction of instances whose mean |coefficient| over x0..x4 exceeds the mean over x5..x9."""
    a = np.abs(coefs)
    return float(np.mean(a[:, :INFORMATIVE].mean(1) > a[:, INFORMATIVE:].mean(1)))


def pairwise_auc(coefs: np.ndarray) -> float:
    """P(|c_informative| > |c_noise|) over all (informative, noise) pairs and instances; ties count ½."""
    a = np.abs(coefs)
    inf, noise = a[:, :INFORMATIVE, None], a[:, None, INFORMATIVE:]
    return float(np.mean((inf > noise) + 0.5 * (inf == noise)))


def noise_level(coefs: np.ndarray) -> float:
    """Median |coefficient| of the noise features over that of the linear informative ones (x0, x1, x3, x4).

    x2 enters Friedman #1 only through (x2 − ½)², which a linear model cannot use, so it is
    left out of the reference level.
    """
    a = np.abs(coefs)
    return float(np.median(a[:, INFORMATIVE:]) / max(np.median(a[:, [0, 1, 3, 4]]), 1e-300))


def spearman_vs(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over instances of Spearman's rank correlation between |a| and |b|."""
    from scipy.stats import spearmanr

    vals = []
    for u, v in zip(np.abs(a), np.abs(b), strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = spearmanr(u, v).statistic
        vals.append(0.0 if np.isnan(rho) else rho)
    return float(np.mean(vals))


def run_friedman(
    instances: int = 1000,
    seed: int = 0,
    noise: float = 1.0,
    n_samples: int = 200,
    epochs: int = 5,
    batch_size: int = 16,
    lr: float = 0.01,
    lasso_alpha: float = 0.02,
    alpha_ratio: float = 0.01,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Run the proof of concept; return (and with `out`, write) friedman.json and the figure."""
    if instances < 1:
        raise ValueError(f"instances must be >= 1, got {instances}")
    t0 = time.perf_counter()
    x, y = _instances(instances, n_samples, noise, seed)
    ref = np.stack([Lasso(alpha=lasso_alpha).fit(xi.numpy(), yi.numpy()).coef_ for xi, yi in zip(x, y, strict=True)])
    traj = _train_and_record(x, y, epochs, batch_size, lr, seed)
    causal = _causal(traj["X"], traj["probe"], alpha_ratio)
    causal_sb = _causal(traj["X"], traj["same_batch"], alpha_ratio)
    result: dict[str, Any] = {
        "features": FEATURES,
        "lasso": ref.tolist(),
        "causal": causal.tolist(),
        "causal_same_batch": causal_sb.tolist(),
        "settings": {"instances": instances, "seed": seed, "noise": noise, "n_samples": n_samples, "epochs": epochs,
                     "batch_size": batch_size, "lr": lr, "lasso_alpha": lasso_alpha, "alpha_ratio": alpha_ratio,
                     "steps": int(traj["X"].shape[1])},
        "summary": {
            "separation_lasso": separation(ref),
            "separation_causal": separation(causal),
            "separation_causal_same_batch": separation(causal_sb),
            "auc_lasso": pairwise_auc(ref),
            "auc_causal": pairwise_auc(causal),
            "auc_causal_same_batch": pairwise_auc(causal_sb),
            "noise_level_lasso": noise_level(ref),
            "noise_level_causal": noise_level(causal),
            "noise_level_causal_same_batch": noise_level(causal_sb),
            "spearman_causal_vs_lasso": spearman_vs(causal, ref),
            "spearman_causal_same_batch_vs_lasso": spearman_vs(causal_sb, ref),
        },
        "time_s": round(time.perf_counter() - t0, 2),
    }
    if out is not None:
        out = Path(out)
        save_json(result, out / "friedman.json")
        plot_friedman(result, out / "friedman.png")
    return result


def plot_friedman(result: dict[str, Any], path: str | Path) -> None:
    """Side-by-side boxplots: causal |γ̃| (probe and same-batch ΔL) and Lasso |coefficients|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("causal", "causal |γ̃| (probe ΔL)"), ("causal_same_batch", "causal |γ̃| (same-batch ΔL)"),
              ("lasso", "Lasso |coefficient|")]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.boxplot(np.abs(np.asarray(result[key])), tick_labels=result["features"], showfliers=False)
        ax.set_title(title)
        ax.axvline(INFORMATIVE + 0.5, color="grey", ls="--", lw=0.8)
    n = result["settings"]["instances"]
    fig.suptitle(f"Friedman #1, {n} instances: x0–x4 informative, x5–x9 noise")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
