"""`causalprune analyze`: the paper's analyses on finished run folders, and comparison figures.

Per run (written under OUT/<run>/, where <run> names the run folder; the run folders are
only read): ``hessian.json`` (top eigenvalues on the alive
weights, Hutchinson trace), ``flatness.json`` (eq. 16–17), ``landscape.npz`` + figure, and
``weights.npy`` (the remaining non-zero weights, for histograms). Across runs (under
--out): eigenvalue vs sparsity per method (paper Fig. 2a), flatness curves (Fig. 4), and
overlaid histograms of the remaining weights (Fig. 2b), plus ``analysis.json`` with every
run's numbers.

A run is labelled by its budget (`report.budget_text`): its sparsity (``0.9``), or for a
channel run with a ``prune.speedup`` target its MACs reduction (``2× MACs``). The eigenvalue
figure's x-axis is the runs' shared budget kind (sparsity, or MACs reduction); runs of
mixed kinds are placed at their measured sparsity (zeros / prunable weights).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import resolve
from ..data import input_io, materialize
from ..experiment import load_splits
from ..io import save_json
from ..masks import Mask, prunable_parameters
from ..models import build_model
from ..plan import restore_model, slims
from ..report import budget_text
from ..runfolder import RunFolder
from ..train import loss_function
from .flatness import flatness
from .hessian import top_eigenvalues, trace
from .landscape import landscape


def load_run_and_data(run_dir: Path) -> tuple[Any, torch.nn.Module, Mask, Any]:
    """Rebuild a finished run's config, trained model, mask and data splits.

    The model and mask are those `causalprune.load_run` gives (the slim network and an
    all-True mask for a channel run); this loader also reads the run's data.
    """
    run_dir = Path(run_dir)
    for f in ("config.yaml", "model.pt", "mask.pt", "summary.json"):
        if not (run_dir / f).exists():
            raise FileNotFoundError(f"{run_dir} is not a finished run folder (no {f})")
    cfg = resolve.load(run_dir / "config.yaml")
    data = load_splits(cfg, download=False)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    granularity = cfg.prune.granularity
    io = input_io(cfg.data.name, cfg.data.image_size, getattr(cfg.model, "block_size", None))
    mask = RunFolder(run_dir).load_result(model, lambda m, saved: restore_model(granularity, m, saved, io))
    if slims(granularity):  # model.pt holds the network without its pruned units; nothing in it is masked
        return cfg, model, Mask.ones(model), data
    return cfg, model, mask.canonical(model), data


def run_name(run_dir: Path) -> str:
    """Return a folder name for a run's analysis results: its last path parts, made safe (``x_p0.9_seed_0``)."""
    parts = [p for p in Path(run_dir).resolve().parts[-3:] if p not in ("/", "")]
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "_".join(parts))


def analyze_run(run_dir: Path, out: Path, hessian: bool, flat: bool, land: bool, histogram: bool,
                samples: int = 512, k: int = 3, draws: int = 100) -> dict[str, Any]:  # fmt: skip
    """Run the selected analyses on one run folder, writing under `out`; return its numbers."""
    _, model, mask, data = load_run_and_data(run_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x, y = data.train
    batches = [(materialize(x[a : a + 256]), y[a : a + 256]) for a in range(0, min(samples, len(y)), 256)]
    loss_fn = loss_function(data.task)
    summary = RunFolder(run_dir).summary()  # a damaged or foreign summary is named, not a traceback
    result: dict[str, Any] = {"run": str(run_dir), "results": str(out), "method": summary["method"],
                              "seed": summary["seed"], "sparsity": summary["sparsity_target"],
                              "sparsity_actual": summary.get("sparsity_actual"),
                              "speedup_target": summary.get("speedup_target"),
                              "budget": budget_text(summary)}  # fmt: skip
    alive_mask = mask  # all ones for a run that did not prune
    if hessian:
        eig = top_eigenvalues(model, loss_fn, batches, k=k, mask=alive_mask, max_iter=200, tol=1e-4)
        tr, se = trace(model, loss_fn, batches, mask=alive_mask, n_samples=50)
        result["hessian"] = {"top_eigenvalues": eig, "trace": tr, "trace_se": se, "samples": samples}
        save_json(result["hessian"], out / "hessian.json")
    if flat:
        result["flatness"] = flatness(model, loss_fn, batches, draws=draws, mask=alive_mask, out=out)
    if land:
        landscape(model, loss_fn, batches, steps=15, mask=alive_mask, out=out)
    if histogram:
        params = prunable_parameters(model)
        w = torch.cat([params[n].detach()[mask[n]].reshape(-1) for n in mask]).numpy()
        np.save(out / "weights.npy", w)
        result["weights"] = {"n": len(w), "mean_abs": float(np.abs(w).mean()), "std": float(w.std())}
    return result


def budget_axis(results: list[dict[str, Any]]) -> tuple[Callable[[dict[str, Any]], float], str]:
    """Return (result → x position, axis label) for plotting `results` of `analyze_run` against their budget.

    Runs that all have a sparsity budget sit at it (``sparsity``); runs that all have a
    ``prune.speedup`` target at it (``MACs reduction (×)``); a mix at the measured sparsity.
    """
    speedups = {r.get("speedup_target") is not None for r in results}
    if speedups == {True}:
        return (lambda r: float(r["speedup_target"])), "MACs reduction (×)"
    if speedups == {False}:
        return (lambda r: float(r["sparsity"])), "sparsity"
    return (lambda r: float(r["sparsity_actual"])), "measured sparsity (zeros / prunable weights)"


def compare_figures(results: list[dict[str, Any]], out: Path) -> None:
    """Eigenvalue vs sparsity (Fig. 2a), flatness curves (Fig. 4), weight histograms (Fig. 2b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_method[r["method"]].append(r)
    if any("hessian" in r for r in results):
        where, xlabel = budget_axis(results)
        fig, ax = plt.subplots(figsize=(5, 4))
        for m, rs in sorted(by_method.items()):
            pts = sorted((where(r), r["hessian"]["top_eigenvalues"][0]) for r in rs if "hessian" in r)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=m)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top Hessian eigenvalue")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "eigenvalues.png", dpi=110)
        plt.close(fig)
    if any("flatness" in r for r in results):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for r in results:
            if "flatness" in r:
                f = r["flatness"]
                lab = f"{r['method']} {r['budget']} s{r['seed']}"
                axes[0].plot(f["sigma"], f["relative_loss"], "o-", label=lab)
                axes[1].plot(f["sigma"], f["max_loss"], "o-", label=lab)
        for ax, t in zip(axes, ("relative loss (eq. 16)", "maximum loss (eq. 17)"), strict=True):
            ax.set_xscale("log")
            ax.set_xlabel("σ")
            ax.set_title(t)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "flatness.png", dpi=110)
        plt.close(fig)
    weights = [(r, Path(r["results"]) / "weights.npy") for r in results]
    weights = [(r, p) for r, p in weights if p.exists()]
    if weights:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r, p in weights:
            ax.hist(np.load(p), bins=80, histtype="step", density=True,
                    label=f"{r['method']} {r['budget']} s{r['seed']}")  # fmt: skip
        ax.set_xlabel("remaining weight value")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "histogram.png", dpi=110)
        plt.close(fig)
    save_json(results, out / "analysis.json")
