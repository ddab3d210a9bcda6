"""Extract the stored evidence of the docs' studies (their markdown tables) into docs/data/*.csv, once.

Run from the repository root: ``python docs/data/extract.py``. Each CSV has the columns
`causalprune.figures.rows_from_csv` reads: experiment, method, budget (a sparsity, or ``2x``
for a MACs reduction), n, metric, final_mean / final_std (test accuracy %, mean ± std over
seeds), ``vs_<x>_mean`` / ``vs_<x>_se`` (paired differences in % points, ± SE), and, for
channel runs, speedup_macs and speedup_measured.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PM = re.compile(r"^([+-]?[0-9.]+) ± ([0-9.]+)")
#: (page, the heading whose section holds the study's tables, experiment name when the headings give none, csv)
STUDIES = [
    ("docs/results.md", "## Full table (5 seeds)", "demo-mnist1d-mlp", "results.csv"),
    ("docs/baselines.md", "# Causal pruning against the standard criteria", "demo-mnist1d-mlp", "baselines.csv"),
    ("docs/structured.md", "### Main table (5 seeds each)", None, "structured.csv"),
]
DELTA = {"Δ vs magnitude": "vs_magnitude", "Δ vs magnitude L1": "vs_magnitude", "Δ vs own placebo": "vs_placebo",
         "Δ vs random": "vs_random"}  # fmt: skip


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _budget(text: str) -> str:
    text = text.strip()
    if text.endswith("%"):
        return f"{float(text[:-1]) / 100:g}"
    return text.replace("×", "x")


def _delta_key(header: str) -> str | None:
    head = header.split(" (")[0].strip()
    return DELTA.get(head)


def tables(page: Path, section: str, experiment: str | None) -> list[dict[str, str]]:
    """Return the rows of every table in `section` of `page` (up to the next heading of its level or above)."""
    lines = page.read_text().splitlines()
    start = lines.index(section)
    level = len(section.split()[0])
    out: list[dict[str, str]] = []
    exp, budget = experiment, None
    i = start + 1
    while i < len(lines):
        line = lines[i]
        heading = re.match(r"^(#+)\s+(.*)$", line)
        if heading and len(heading.group(1)) <= level:
            break
        if heading:
            m = re.match(r"^([\w-]+), ([0-9.]+)× fewer MACs", heading.group(2))
            if m:
                exp, budget = m.group(1), f"{m.group(2)}x"
        if line.startswith("| method") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            head = _cells(line)
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rec = dict(zip(head, _cells(lines[i]), strict=True))
                row = {"experiment": exp or "", "method": rec["method"], "n": rec["n"], "metric": "accuracy",
                       "budget": _budget(rec.get("budget") or rec.get("sparsity") or budget or "")}  # fmt: skip
                for col, value in rec.items():
                    m = PM.match(value)
                    if col.startswith("test acc") and "(final)" in col and m:
                        row["final_mean"], row["final_std"] = m.group(1), m.group(2)
                    elif (key := _delta_key(col)) is not None and m:
                        row[f"{key}_mean"], row[f"{key}_se"] = m.group(1), m.group(2)
                    elif col == "MACs reduction":
                        row["speedup_macs"] = value.rstrip("×")
                    elif col.startswith("measured speed-up"):
                        row["speedup_measured"] = value.rstrip("×")
                out.append(row)
                i += 1
            continue
        i += 1
    return out


def main() -> None:
    """Write one CSV per study under docs/data/."""
    for page, section, experiment, name in STUDIES:
        rows = tables(ROOT / page, section, experiment)
        cols = ["experiment", "method", "budget", "n", "metric", "final_mean", "final_std"]
        cols += sorted({k for r in rows for k in r if k not in cols})
        with (ROOT / "docs" / "data" / name).open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
        print(f"docs/data/{name}: {len(rows)} rows from {page}")


if __name__ == "__main__":
    main()
