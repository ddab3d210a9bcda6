"""Run summaries → tables: mean ± std per method and sparsity, paired differences, evidence.

Paired differences compare two methods on the same seed (same data split, same θ_pre),
so seed-to-seed variation cancels: mean ± standard error over seeds, and wins out of n.
Which methods are the reference baselines, and which method is whose placebo, comes from
the method registry (`criteria.references`, `criteria.placebo_of`).

Runs of different experiments are never pooled: a summary's ``experiment`` (set by
`tag_experiments` from the run's config) is its config with what varies inside one table
left out — the method, sparsity and seed, and the keys its grid varies — so the runs of a
compare or sweep grid form one table and anything else gets a table of its own.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from . import criteria
from .config import Config, without_execution_keys

EFFICIENCY = ("size_nz", "compression_ratio", "flops_nz", "theoretical_speedup")

#: config keys that vary inside one table (its rows and seeds): never part of an experiment
ROW_KEYS = ("prune.method", "prune.sparsity", "prune.speedup", "seed")
#: the keys a grid label names: ``causal[solver=cd,recorder=sgd]`` (compare), ``n_pre=1,sparsity=0.9`` (sweep)
_LABEL_KEY = re.compile(r"(?:^|[\[,])\s*([A-Za-z_][A-Za-z0-9_]*)=")


def label_keys(label: str) -> set[str]:
    """Return the config keys (their last part, e.g. ``solver``) that a grid label names."""
    return set(_LABEL_KEY.findall(label))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def tag_experiments(summaries: Sequence[dict[str, Any]], configs: Sequence[dict[str, Any]]) -> None:
    """Set each summary's ``experiment`` (``<config name>-<hash>``) and ``experiment_keys`` from its run's config.

    `configs` are the runs' configs as nested dicts (a run folder's config.yaml). What varies
    inside one table is left out: the method, sparsity and seed; the grid keys a run's label
    names (``causal[solver=cd]`` names ``causal.solver``); and the grid keys of the other
    runs that the run's method does not read (a grid runs such a method once, with the base
    config's value). The hash covers the remaining keys that differ from their defaults, so a
    key added later with its default leaves it as it was.
    """
    grid = set().union(*(label_keys(s.get("label", "")) for s in summaries))
    defaults = _flat(Config().identity())
    for s, config in zip(summaries, configs, strict=True):
        config = without_execution_keys(config)
        own = label_keys(s.get("label", ""))
        crit = criteria.METHODS.get(s.get("method", ""))
        keep = {}
        for key, value in _flat(config).items():
            last = key.rsplit(".", 1)[-1]
            if key in ROW_KEYS or last in own or (last in grid and crit is not None and not crit.reads_key(key)):
                continue
            keep[key] = value
        changed = {k: v for k, v in keep.items() if k not in defaults or defaults[k] != v}
        digest = hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()[:10]
        s["experiment"] = f"{config.get('name', 'run')}-{digest}"
        s["experiment_keys"] = keep


def identity(summary: dict[str, Any]) -> dict[str, Any]:
    """The keys that make a summary's experiment: its ``experiment_keys``, else what the summary says it ran."""
    if "experiment_keys" in summary:
        return summary["experiment_keys"]
    epochs = {f"epochs.{k}": v for k, v in summary.get("epochs", {}).items() if k != "total"}
    return {"dataset": summary.get("dataset"), "model": summary.get("model"), **epochs}


def experiment_of(summary: dict[str, Any]) -> str:
    """Return the summary's experiment (`tag_experiments`; untagged: its data set, model and epochs)."""
    if "experiment" in summary:
        return str(summary["experiment"])
    return " ".join(f"{k}={v}" for k, v in identity(summary).items() if v is not None) or "?"


def experiments(summaries: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Split summaries by experiment (sorted by experiment)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        groups[experiment_of(s)].append(s)
    return dict(sorted(groups.items()))


def differing_keys(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """Return the identity keys whose values differ between the experiments of `summaries`."""
    firsts = [identity(runs[0]) for runs in experiments(summaries).values()]
    keys = sorted(set().union(*firsts)) if firsts else []
    missing = object()
    return [k for k in keys if len({json.dumps(f.get(k, missing), default=repr) for f in firsts}) > 1]


def split_note(summaries: Sequence[dict[str, Any]], where: Any, shown: int = 6) -> str:
    """One line saying that `summaries` hold several experiments and what differs between them."""
    keys = differing_keys(summaries)
    what = ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")
    return f"{len(experiments(summaries))} experiments under {where} (differ in {what or 'their configs'}); " \
        "one table each"


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


def budget_of(summary: dict[str, Any]) -> float:
    """The run's pruning budget: its ``prune.speedup`` target (a MACs reduction) if it had one, else its sparsity."""
    speedup = summary.get("speedup_target")
    return float(speedup) if speedup is not None else float(summary["sparsity_target"])


def budget_text(summary: dict[str, Any]) -> str:
    """The budget as a table shows it: ``0.9`` (sparsity) or ``2× MACs`` (speed-up)."""
    b = budget_of(summary)
    return f"{b:g}× MACs" if summary.get("speedup_target") is not None else f"{b:.3g}"


def _where(summary: dict[str, Any]) -> str:
    return str(summary.get("run_dir", "?"))


def table_rows(summaries: Sequence[dict[str, Any]], baselines: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Group summaries by (experiment, label, sparsity); return one row per group with statistics.

    Each row carries its paired difference to every baseline (default: the registered
    reference baselines) and, for a method that has a registered placebo, to the placebo
    run with the same settings — both within the row's experiment. Two runs of one seed in
    one group would be counted twice: that raises `ValueError` naming their folders.
    """
    baselines = criteria.references() if baselines is None else baselines
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        groups[(experiment_of(s), s.get("label", s["method"]), budget_of(s))].append(s)
    rows = []
    for (experiment, label, sparsity), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        by_seed: dict[int, dict[str, Any]] = {}
        for r in runs:
            if r["seed"] in by_seed:
                raise ValueError(f"two runs of {label}, sparsity {sparsity:g}, seed {r['seed']} in one experiment "
                                 f"({experiment}): {_where(by_seed[r['seed']])} and {_where(r)}; pooling them would "
                                 "count the seed twice: report their folders separately or remove one")  # fmt: skip
            by_seed[r["seed"]] = r
        metric = metric_of(runs[0])
        final = {r["seed"]: r["pruned"][f"test_{metric}"] for r in runs}
        at_val = {r["seed"]: r["pruned"][f"test_{metric}_at_best_val"] for r in runs}
        row: dict[str, Any] = {
            "method": label, "sparsity": sparsity, "budget": budget_text(runs[0]), "n": len(runs), "metric": metric,
            "_method": runs[0]["method"],
            "experiment": experiment,
            "final": _mean_std(list(final.values())), "at_best_val": _mean_std(list(at_val.values())),
            "best_test": _mean_std([r["pruned"][f"best_test_{metric}"] for r in runs]),
            "sparsity_actual": statistics.fmean(r["sparsity_actual"] for r in runs),
            **(
                {k: statistics.fmean(r["efficiency"][k] for r in runs) for k in EFFICIENCY}
                if all("efficiency" in r for r in runs)
                else {}
            ),
            **(
                {"speedup_measured": statistics.fmean(r["efficiency"]["speedup_measured"] for r in runs)}
                if all("speedup_measured" in r.get("efficiency", {}) for r in runs)
                else {}
            ),
            **(
                {"speedup_macs": statistics.fmean(r["efficiency"]["speedup_macs"] for r in runs)}
                if all("speedup_macs" in r.get("efficiency", {}) for r in runs)
                else {}
            ),
            "time_s": statistics.fmean(r["timing"]["total_s"] for r in runs),
            "_final_by_seed": final,
        }  # fmt: skip
        rows.append(row)

    def partner(row: dict[str, Any], method: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["experiment"] == row["experiment"] and r["method"] == method
                     and r["sparsity"] == row["sparsity"]), None)  # fmt: skip

    for row in rows:
        higher = row["metric"] == "accuracy"
        for base in baselines:
            ref = partner(row, base)
            if ref is not None and ref is not row:
                row[f"vs_{base}"] = paired(row["_final_by_seed"], ref["_final_by_seed"], higher)
        # A method against its own placebo control (same settings, e.g. ΔL permuted).
        method = row["_method"]
        placebo = criteria.placebo_of(method) if method in criteria.METHODS else None
        if placebo is not None and row["method"].startswith(method):
            ref = partner(row, placebo + row["method"][len(method):])
            if ref is not None:
                row["vs_placebo"] = paired(row["_final_by_seed"], ref["_final_by_seed"], higher)
    return rows


def markdown(rows: Sequence[dict[str, Any]], baselines: Sequence[str] | None = None) -> str:
    """Render rows as a markdown table (accuracy in %; mean ± std over seeds); baselines default to `baselines_of`.

    Rows of several experiments become one table per experiment, each under a ``### <experiment>`` heading.
    """
    if not rows:
        return "(no finished runs)\n"
    split = list(dict.fromkeys(r.get("experiment", "") for r in rows))
    if len(split) > 1:
        return "\n".join(f"### {e}\n\n" + markdown([r for r in rows if r.get("experiment", "") == e], baselines)
                         for e in split)  # fmt: skip
    baselines = baselines_of(rows) if baselines is None else baselines
    pct = rows[0]["metric"] == "accuracy"
    unit = "test accuracy %" if pct else "test MSE"
    head = ["method", "sparsity", "n", f"{unit} (final)", f"{unit} (at best val)", f"{unit} (best, paper's way)"]
    with_placebo = any("vs_placebo" in r for r in rows)
    head += [f"Δ vs {b} (paired, ± SE, wins/n)" for b in baselines]
    if with_placebo:
        head.append("Δ vs own placebo (paired, ± SE, wins/n)")
    head += ["sparsity actual", "compression", "speed-up (theoretical)"]
    measured = any("speedup_measured" in r for r in rows)
    head += ["speed-up (measured, CPU batch 64)"] if measured else []
    head += ["time s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r.get("budget", f"{r['sparsity']:.3g}"), str(r["n"]), _fmt(*r["final"], pct),
                 _fmt(*r["at_best_val"], pct), _fmt(*r["best_test"], pct)]  # fmt: skip
        for key in [f"vs_{b}" for b in baselines] + (["vs_placebo"] if with_placebo else []):
            p = r.get(key)
            if p is None:
                cells.append("—")
            else:
                k = 100.0 if pct else 1.0
                cells.append(f"{k * p[0]:+.2f} ± {k * p[1]:.2f} ({p[2]}/{p[3]})")
        eff = [f"{r[k]:.1f}×" if k in r else "—" for k in ("compression_ratio", "theoretical_speedup")]
        cells += [f"{r['sparsity_actual']:.4f}", *eff]
        if measured:
            cells.append(f"{r['speedup_measured']:.2f}×" if "speedup_measured" in r else "—")
        cells.append(f"{r['time_s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Render rows as CSV (one column per statistic; paired columns against the first reference baseline).

    The last column names each row's experiment.
    """
    buf = io.StringIO()
    w = csv.writer(buf)
    ref = f"vs_{(criteria.references() or ['reference'])[0]}"  # vs_magnitude
    w.writerow(["method", "sparsity", "n", "metric", "final_mean", "final_std", "at_best_val_mean",
                "at_best_val_std", "best_test_mean", "best_test_std", f"{ref}_mean", f"{ref}_se",
                f"{ref}_wins", "sparsity_actual", *EFFICIENCY, "speedup_measured", "time_s", "experiment"])  # fmt: skip
    for r in rows:
        p = r.get(ref) or (None, None, None, None)
        w.writerow([r["method"], r["sparsity"], r["n"], r["metric"], *r["final"], *r["at_best_val"],
                    *r["best_test"], p[0], p[1], p[2], r["sparsity_actual"], *[r.get(k) for k in EFFICIENCY],
                    r.get("speedup_measured"), r["time_s"], r.get("experiment", "")])  # fmt: skip
    return buf.getvalue()


def boxplots(summaries: Sequence[dict[str, Any]], path: str | Any) -> None:
    """Fig. 3-style boxplots: final test metric per label, one panel per sparsity.

    Summaries of several experiments get one box per experiment and label (``<experiment>: <label>``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not summaries:
        return
    metric = metric_of(summaries[0])
    several = len(experiments(summaries)) > 1

    def box(s: dict[str, Any]) -> str:
        label = s.get("label", s["method"])
        return f"{experiment_of(s)}: {label}" if several else label

    sparsities = sorted({budget_of(s) for s in summaries})
    titles = {budget_of(s): budget_text(s) for s in summaries}
    n_labels = len({box(s) for s in summaries})
    width = min(2 + 0.6 * n_labels, 14.0)
    fig, axes = plt.subplots(1, len(sparsities), figsize=(width * len(sparsities), 4.5), squeeze=False)
    for ax, sp in zip(axes[0], sparsities, strict=True):
        groups: dict[str, list[float]] = defaultdict(list)
        for s in summaries:
            if budget_of(s) == sp:
                groups[box(s)].append(s["pruned"][f"test_{metric}"])
        labels = sorted(groups)
        ax.boxplot([groups[k] for k in labels], tick_labels=labels)
        ax.set_title(titles[sp] if "MACs" in titles[sp] else f"sparsity {titles[sp]}")
        ax.set_ylabel(f"test {metric} (final)")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
