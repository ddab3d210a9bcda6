"""Table of the first-order ("gap") study (docs/results.md, docs/structured.md) from a `causalprune compare` folder.

    python benchmarks/first_order_study.py runs/first-order

The folder holds a grid over ``causal.first_order`` (ignore, free, subtract) for ``causal`` and
``causal-placebo``, plus ``energy`` and ``magnitude``. For every budget and method: the final test
accuracy and the accuracy *before* post-training (mean ± std over seeds), paired differences by
seed (same split, same θ_pre) to magnitude and to the own placebo (mean ± standard error,
wins/n), corr(ΔL, z) and z's free coefficient (each run's mean over its rounds, then mean ± std
over seeds), as logged by the rounds. Prints markdown.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ORDER = ["causal_first_order=ignore_", "causal-placebo_first_order=ignore_", "causal_first_order=free_",
         "causal-placebo_first_order=free_", "causal_first_order=subtract_", "causal-placebo_first_order=subtract_",
         "energy", "magnitude"]  # fmt: skip


def _runs(root: Path, method: str, budget: str) -> dict[str, Path]:
    folder = root / method / budget
    return {r.name: r for r in sorted(folder.glob("seed_*")) if (r / "summary.json").exists()}


def _accuracy(run: Path, key: str) -> float:
    return 100 * json.loads((run / "summary.json").read_text())["pruned"][key]


def _mean_std(xs: list[float], digits: int = 2) -> str:
    return f"{statistics.fmean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else "—"


def _paired(a: dict[str, Path], b: dict[str, Path], key: str) -> str:
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return "—"
    d = [_accuracy(a[s], key) - _accuracy(b[s], key) for s in seeds]
    se = statistics.stdev(d) / len(d) ** 0.5
    return f"{statistics.fmean(d):+.2f} ± {se:.2f} ({sum(x > 0 for x in d)}/{len(d)})"


def _round_mean(run: Path, name: str) -> float | None:
    values = [e[name] for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if name in e]
    return statistics.fmean(values) if values else None


def _label(method: str) -> str:
    return method.rstrip("_").replace("_first_order=", "[first_order=") + ("]" if "first_order" in method else "")


def _budget(folder: str) -> str:
    """``p0.9`` → ``90 %`` (sparsity), ``s2x`` → ``2×`` (fewer MACs)."""
    if folder.startswith("p"):
        return f"{100 * float(folder[1:]):g} %"
    return folder[1:].replace("x", "×") if folder.startswith("s") else folder


def table(root: Path) -> str:
    """Return the study's markdown table for the compare folder `root`."""
    methods = [m for m in ORDER if (root / m).is_dir()]
    budgets = sorted({b.name for m in methods for b in (root / m).iterdir() if b.is_dir()})
    lines = ["| method | budget | n | test acc. % (final) | Δ vs magnitude | Δ vs own placebo | before post-training % "
             "| before: Δ vs own placebo | corr(ΔL, z) | z's coefficient |", "|---" * 10 + "|"]
    for budget in budgets:
        for m in methods:
            runs = _runs(root, m, budget)
            if not runs:
                continue
            placebo = _runs(root, m.replace("causal_", "causal-placebo_"), budget) if m.startswith("causal_") else {}
            final = [_accuracy(r, "test_accuracy") for r in runs.values()]
            before = [_accuracy(r, "test_accuracy_before_post") for r in runs.values()]
            corr = [c for c in (_round_mean(r, "first_order_corr") for r in runs.values()) if c is not None]
            coef = [c for c in (_round_mean(r, "first_order_coef") for r in runs.values()) if c is not None]
            magnitude = _paired(runs, _runs(root, "magnitude", budget), "test_accuracy") if m != "magnitude" else "—"
            lines.append(f"| {_label(m)} | {_budget(budget)} | {len(runs)} | {_mean_std(final)} | {magnitude} | "
                         f"{_paired(runs, placebo, 'test_accuracy')} | {_mean_std(before)} | "
                         f"{_paired(runs, placebo, 'test_accuracy_before_post')} | {_mean_std(corr, 3)} | "
                         f"{_mean_std(coef, 4)} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print(table(Path(folder)))
