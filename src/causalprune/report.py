"""Run summaries → tables: mean ± std per method and sparsity, paired differences, evidence.

Paired differences compare two methods on the same seed (same data split, same θ_pre),
so seed-to-seed variation cancels: mean ± standard error over seeds, and wins out of n.
Which methods are the reference baselines, and which method is whose placebo, comes from
the method registry (`criteria.references`, `criteria.placebo_of`).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from . import criteria

EFFICIENCY = ("size_nz", "compression_ratio", "flops_nz", "theoretical_speedup")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(mean: float, spread: float, pct: bool) -> str:
    k = 100.0 if pct else 1.0
    return f"{k * mean:.2f} ± {k * spread:.2f}" if pct else f"{mean:.4f} ± {spread:.4f}"


def metric_of(summary: dict[str, Any]) -> str:
    """Return 'accuracy' or 'mse' for a summary."""
    return "accuracy" if summary.get("task", "classification") == "classification" else "mse"


def paired(a: dict[int, float], b: dict[int, float], higher_is_better: bool) -> tuple[float, float, int, int] | None:
    """Return (mean diff a − b, standard error, wins of a, n) over seeds present in both."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    wins = sum(1 for d in diffs if (d > 0 if higher_is_better else d < 0))
    return mean, se, wins, len(diffs)


def baselines_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Return the registered reference baselines that have rows in `rows`."""
    present = {r["method"] for r in rows}
    return [b for b in criteria.references() if b in present]


def table_rows(summaries: Sequence[dict[str, Any]], baselines: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Group summaries by (label, sparsity); return one row per group with statistics.

    Each row carries its paired difference to every baseline (default: the registered
    reference baselines) and, for a method that has a registered placebo, to the placebo
    run with the same settings.
    """
    baselines = criteria.references() if baselines is None else baselines
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        groups[(s.get("label", s["method"]), s["sparsity_target"])].append(s)
    rows = []
    for (label, sparsity), runs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        metric = metric_of(runs[0])
        final = {r["seed"]: r["pruned"][f"test_{metric}"] for r in runs}
        at_val = {r["seed"]: r["pruned"][f"test_{metric}_at_best_val"] for r in runs}
        row: dict[str, Any] = {
            "method": label, "sparsity": sparsity, "n": len(runs), "metric": metric, "_method": runs[0]["method"],
            "final": _mean_std(list(final.values())), "at_best_val": _mean_std(list(at_val.values())),
            "best_test": _mean_std([r["pruned"][f"best_test_{metric}"] for r in runs]),
            "sparsity_actual": statistics.fmean(r["sparsity_actual"] for r in runs),
            **(
                {k: statistics.fmean(r["efficiency"][k] for r in runs) for k in EFFICIENCY}
                if all("efficiency" in r for r in runs)
                else {}
            ),
            "time_s": statistics.fmean(r["timing"]["total_s"] for r in runs),
            "_final_by_seed": final,
        }  # fmt: skip
        rows.append(row)
    higher = rows[0]["metric"] == "accuracy" if rows else True
    for row in rows:
        for base in baselines:
            ref = next((r for r in rows if r["method"] == base and r["sparsity"] == row["sparsity"]), None)
            if ref is not None and ref is not row:
                row[f"vs_{base}"] = paired(row["_final_by_seed"], ref["_final_by_seed"], higher)
        # A method against its own placebo control (same settings, e.g. ΔL permuted).
        method = row["_method"]
        placebo = criteria.placebo_of(method) if method in criteria.METHODS else None
        if placebo is not None and row["method"].startswith(method):
            partner = placebo + row["method"][len(method):]
            ref = next((r for r in rows if r["method"] == partner and r["sparsity"] == row["sparsity"]), None)
            if ref is not None:
                row["vs_placebo"] = paired(row["_final_by_seed"], ref["_final_by_seed"], higher)
    return rows


def markdown(rows: Sequence[dict[str, Any]], baselines: Sequence[str] | None = None) -> str:
    """Render rows as a markdown table (accuracy in %; mean ± std over seeds); baselines default to `baselines_of`."""
    if not rows:
        return "(no finished runs)\n"
    baselines = baselines_of(rows) if baselines is None else baselines
    pct = rows[0]["metric"] == "accuracy"
    unit = "test accuracy %" if pct else "test MSE"
    head = ["method", "sparsity", "n", f"{unit} (final)", f"{unit} (at best val)", f"{unit} (best, paper's way)"]
    with_placebo = any("vs_placebo" in r for r in rows)
    head += [f"Δ vs {b} (paired, ± SE, wins/n)" for b in baselines]
    if with_placebo:
        head.append("Δ vs own placebo (paired, ± SE, wins/n)")
    head += ["sparsity actual", "compression", "speed-up (theoretical)", "time s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], f"{r['sparsity']:.3g}", str(r["n"]), _fmt(*r["final"], pct),
                 _fmt(*r["at_best_val"], pct), _fmt(*r["best_test"], pct)]  # fmt: skip
        for key in [f"vs_{b}" for b in baselines] + (["vs_placebo"] if with_placebo else []):
            p = r.get(key)
            if p is None:
                cells.append("—")
            else:
                k = 100.0 if pct else 1.0
                cells.append(f"{k * p[0]:+.2f} ± {k * p[1]:.2f} ({p[2]}/{p[3]})")
        eff = [f"{r[k]:.1f}×" if k in r else "—" for k in ("compression_ratio", "theoretical_speedup")]
        cells += [f"{r['sparsity_actual']:.4f}", *eff, f"{r['time_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Render rows as CSV (one column per statistic; paired columns against the first reference baseline)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    ref = f"vs_{criteria.references()[0]}"  # vs_magnitude
    w.writerow(["method", "sparsity", "n", "metric", "final_mean", "final_std", "at_best_val_mean",
                "at_best_val_std", "best_test_mean", "best_test_std", f"{ref}_mean", f"{ref}_se",
                f"{ref}_wins", "sparsity_actual", *EFFICIENCY, "time_s"])  # fmt: skip
    for r in rows:
        p = r.get(ref) or (None, None, None, None)
        w.writerow([r["method"], r["sparsity"], r["n"], r["metric"], *r["final"], *r["at_best_val"],
                    *r["best_test"], p[0], p[1], p[2], r["sparsity_actual"], *[r.get(k) for k in EFFICIENCY],
                    r["time_s"]])  # fmt: skip
    return buf.getvalue()


def boxplots(summaries: Sequence[dict[str, Any]], path: str | Any) -> None:
    """Fig. 3-style boxplots: final test metric per label, one panel per sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not summaries:
        return
    metric = metric_of(summaries[0])
    sparsities = sorted({s["sparsity_target"] for s in summaries})
    n_labels = len({s.get("label", s["method"]) for s in summaries})
    width = min(2 + 0.6 * n_labels, 14.0)
    fig, axes = plt.subplots(1, len(sparsities), figsize=(width * len(sparsities), 4.5), squeeze=False)
    for ax, sp in zip(axes[0], sparsities, strict=True):
        groups: dict[str, list[float]] = defaultdict(list)
        for s in summaries:
            if s["sparsity_target"] == sp:
                groups[s.get("label", s["method"])].append(s["pruned"][f"test_{metric}"])
        labels = sorted(groups)
        ax.boxplot([groups[k] for k in labels], tick_labels=labels)
        ax.set_title(f"sparsity {sp:g}")
        ax.set_ylabel(f"test {metric} (final)")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
