"""Tables of the transformer study, docs/transformers.md, from `causalprune compare` folders of `gpt` on `pysrc`.

    python benchmarks/transformers_study.py runs/study/structured runs/study/unstructured runs/study/nm24

For every folder and budget (sparsity, MACs reduction or N:M pattern): each method's test loss
(nats/char) after post-training and before it, next-character accuracy (mean ± std over seeds),
paired differences of the final test loss by seed (same split, same θ_pre) to the causal fit's
placebo and to magnitude (mean ± standard error, wins/n: a win is a lower loss), and for channel
runs the MACs reduction reached, the measured CPU speed-up at batch 64 and the heads kept.
Prints markdown.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from causalprune.compare import collect
from causalprune.report import paired


def _mean_std(xs: list[float], digits: int = 3) -> str:
    if not xs:
        return "—"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.{digits}f} ± {sd:.{digits}f}"


def _diff(p: tuple[float, float, int, int] | None) -> str:
    return "—" if p is None else f"{p[0]:+.3f} ± {p[1]:.3f} ({p[2]}/{p[3]})"


def _budget(s: dict[str, Any]) -> str:
    if s.get("speedup_target") is not None:
        return f"{float(s['speedup_target']):g}× fewer MACs"
    pattern = (s.get("config") or {}).get("prune", {}).get("pattern") if isinstance(s.get("config"), dict) else None
    return f"{pattern}" if pattern else f"{float(s['sparsity_target']):g} sparsity"


def _heads(s: dict[str, Any]) -> int:
    kept = s["channels"]["kept_per_layer"]
    return sum(v for k, v in kept.items() if k.endswith("attn.q"))


def tables(folder: Path, pattern: str | None = None) -> str:
    """Markdown tables of one compare folder, one per budget."""
    runs = collect(folder)
    by: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for s in runs:
        budget = pattern or _budget(s)
        by[(budget, s["label"])][int(s["seed"])] = s
    out = []
    for budget in sorted({k[0] for k in by}):
        labels = sorted(label for b, label in by if b == budget)
        some = list(by[(budget, labels[0])].values())
        channel = some[0].get("granularity") == "channel"
        dense = _mean_std([r["dense"]["test_loss"] for r in some])
        dense_acc = _mean_std([100 * r["dense"]["test_accuracy"] for r in some], 2)
        head = (f"#### {folder.name}, {budget} (dense θ_pre: test loss {dense} nats/char, accuracy {dense_acc} %, "
                f"n = {len(some)} seeds)\n")  # fmt: skip
        cols = ["method", "n", "test loss (final)", "before post-training", "accuracy % (final)",
                "Δ loss vs causal-placebo", "Δ loss vs magnitude", "before: Δ vs causal-placebo",
                "before: Δ vs magnitude"]  # fmt: skip
        if channel:
            cols += ["MACs reduction", "measured speed-up (batch 64)", "heads kept"]
        lines = [head, "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        loss = {lab: {seed: r["pruned"]["test_loss"] for seed, r in by[(budget, lab)].items()} for lab in labels}
        before = {lab: {seed: r["pruned"]["test_loss_before_post"] for seed, r in by[(budget, lab)].items()}
                  for lab in labels}  # fmt: skip
        for lab in labels:
            rs = list(by[(budget, lab)].values())
            row = [lab, str(len(rs)), _mean_std([r["pruned"]["test_loss"] for r in rs]),
                   _mean_std([r["pruned"]["test_loss_before_post"] for r in rs]),
                   _mean_std([100 * r["pruned"]["test_accuracy"] for r in rs], 2),
                   _diff(paired(loss[lab], loss["causal-placebo"], False))
                   if lab != "causal-placebo" and "causal-placebo" in loss else "—",
                   _diff(paired(loss[lab], loss["magnitude"], False))
                   if lab != "magnitude" and "magnitude" in loss else "—",
                   _diff(paired(before[lab], before["causal-placebo"], False))
                   if lab != "causal-placebo" and "causal-placebo" in loss else "—",
                   _diff(paired(before[lab], before["magnitude"], False))
                   if lab != "magnitude" and "magnitude" in loss else "—"]  # fmt: skip
            if channel:
                eff = [r["efficiency"] for r in rs]
                row += [f"{statistics.fmean(e['speedup_macs'] for e in eff):.2f}×",
                        f"{statistics.fmean(e['speedup_measured'] for e in eff):.2f}×",
                        _mean_std([float(_heads(r)) for r in rs], 1)]  # fmt: skip
            lines.append("| " + " | ".join(row) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def main(argv: list[str]) -> None:
    """Print the tables of every folder given (``folder`` or ``folder=PATTERN`` to name its budget)."""
    for arg in argv:
        path, _, pattern = arg.partition("=")
        print(tables(Path(path), pattern or None), end="\n\n")


if __name__ == "__main__":
    main(sys.argv[1:])
