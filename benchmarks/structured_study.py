"""Tables of the structured (channel-level) study, docs/structured.md, from `causalprune compare --speedup` folders.

    python benchmarks/structured_study.py runs/study/cnn1d-mnist1d runs/study/cnn2d-digits

For every folder and speed-up: each method's final test accuracy and its accuracy *before*
post-training (mean ± std over seeds), paired differences by seed (same split, same θ_pre)
to its own placebo, to magnitude L1 (``magnitude[norm=1]``) and to random (mean ± standard
error, wins/n), the measured CPU speed-up at batch 64 and, for the recorded methods, the
recorded steps per round T against the G channel groups. Prints markdown.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from causalprune.compare import collect
from causalprune.report import paired


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "—"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.fmean(xs):.2f} ± {100 * sd:.2f}"


def _diff(p: tuple[float, float, int, int] | None) -> str:
    return "—" if p is None else f"{100 * p[0]:+.2f} ± {100 * p[1]:.2f} ({p[2]}/{p[3]})"


def _recorded(run_dir: str) -> tuple[int, int] | None:
    """(T, G) of the run's first round, from its metrics.jsonl (None: it recorded nothing)."""
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "level" and "T" in event:
            return int(event["T"]), int(event.get("G", event.get("d", 0)))
    return None


def _placebo(label: str) -> str | None:
    return "causal-placebo" + label[len("causal"):] if label.startswith("causal") and "placebo" not in label else None


def tables(folder: Path) -> str:
    """Markdown tables of one compare folder, one per speed-up."""
    runs = collect(folder)
    by: dict[tuple[float, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for s in runs:
        by[(float(s["speedup_target"]), s["label"])][int(s["seed"])] = s
    out = []
    for speedup in sorted({k[0] for k in by}):
        labels = sorted(label for sp, label in by if sp == speedup)
        some = list(by[(speedup, labels[0])].values())
        dense = _mean_std([r["dense"]["test_accuracy"] for r in some])
        out.append(f"#### {folder.name}, {speedup:g}× fewer MACs ({some[0]['channels']['groups']} channel groups, "
                   f"θ_pre test accuracy {dense} %)\n")  # fmt: skip
        out.append("| method | n | test acc. % (final) | before post-training | Δ vs own placebo | Δ vs magnitude L1 "
                   "| Δ vs random | MACs reduction | measured speed-up (batch 64) | T / G |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")

        def final(label: str, speedup: float = speedup) -> dict[int, float]:
            return {seed: r["pruned"]["test_accuracy"] for seed, r in by.get((speedup, label), {}).items()}

        for label in labels:
            rs = list(by[(speedup, label)].values())
            placebo = _placebo(label)
            rec = _recorded(rs[0]["run_dir"])
            cells = [
                label, str(len(rs)), _mean_std([r["pruned"]["test_accuracy"] for r in rs]),
                _mean_std([r["pruned"]["test_accuracy_before_post"] for r in rs]),
                _diff(paired(final(label), final(placebo), True)) if placebo else "—",
                _diff(paired(final(label), final("magnitude[norm=1]"), True)) if label != "magnitude[norm=1]" else "—",
                _diff(paired(final(label), final("random"), True)) if label != "random" else "—",
                f"{statistics.fmean(r['efficiency']['speedup_macs'] for r in rs):.3f}×",
                f"{statistics.fmean(r['efficiency']['speedup_measured'] for r in rs):.2f}×",
                f"{rec[0]} / {rec[1]}" if rec else "—",
            ]  # fmt: skip
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    """Print the tables of every compare folder in `argv`."""
    if not argv:
        print(__doc__)
        return 2
    for folder in argv:
        print(tables(Path(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
