"""Regenerate the documentation's study figures (docs/figures/<study>-*.png) from the stored tables docs/data/*.csv.

Run from the repository root: ``python docs/data/make_figures.py`` (``make figures``). The CSVs
are the docs' tables, extracted once by docs/data/extract.py; no run folder is read.
"""

from __future__ import annotations

from pathlib import Path

from causalprune.figures import figures_from_tables

ROOT = Path(__file__).resolve().parents[2]

if __name__ == "__main__":
    tables = sorted((ROOT / "docs" / "data").glob("*.csv"))
    written, notes = figures_from_tables(tables, ROOT / "docs" / "figures")
    for path in written:
        print(path.relative_to(ROOT))
    for note in notes:
        print(f"  {note}")
