"""Run a grid of experiments (methods × sparsities × seeds × optional config grid) and tabulate.

All runs of one seed share the θ_pre checkpoint (pre-training reads neither the method
nor the sparsity), so the grid pre-trains once per seed and every method starts from the
same weights — which is also what makes paired differences meaningful. Planning is
`grid.plan`'s, shared with `sweep`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from . import report
from .config import Config
from .experiment import run_experiment
from .grid import Cell, Grid, parse_grid, short, slug
from .grid import plan as plan_grid
from .io import save_text

#: keys compare itself varies; the user's --grid keys are labelled, these are not
_OWN = ("prune.method", "prune.sparsity", "seed")


def _naming(pairs: list[tuple[str, Any]], cfg: Config) -> tuple[str, Path]:
    """Label ``method[key=value,...]``; folder ``<label>/p<sparsity>/seed_<n>``."""
    assignment = [short(k, v) for k, v in pairs if k not in _OWN]
    label = cfg.prune.method + (f"[{','.join(assignment)}]" if assignment else "")
    return label, Path(slug(label)) / f"p{cfg.prune.sparsity:g}" / f"seed_{cfg.seed}"


def plan(cfg: Config, methods: list[str], sparsities: list[float], seeds: list[int], grid: Grid) -> list[Cell]:
    """Return the cells of the comparison; methods that ignore a grid key run once."""
    axes = [("prune.method", list(methods)), *grid, ("prune.sparsity", list(sparsities)), ("seed", list(seeds))]
    return plan_grid(cfg, axes, _naming)


def run_grid(cfg: Config, methods: list[str], sparsities: list[float], seeds: list[int], out: Path,
             grid: Grid | None = None) -> tuple[list[dict[str, Any]], str]:  # fmt: skip
    """Run (or resume) every run of the grid under `out`; write table.md and table.csv."""
    cells = plan(cfg, methods, sparsities, seeds, grid or [])
    summaries = []
    t0 = time.perf_counter()
    for i, cell in enumerate(cells, 1):
        rc = cell.config
        print(f"[{i}/{len(cells)}] {cell.label} sparsity {rc.prune.sparsity:g} seed {rc.seed}", flush=True)
        s = run_experiment(rc, out / cell.folder, pre_cache=out / "_pre", quiet=True)
        save_text(cell.label + "\n", out / cell.folder / "label.txt")
        summaries.append({**s, "label": cell.label})
    first = summaries[0] if summaries else {}
    header = (
        f"{cfg.name}: {cfg.data.name}, {cfg.model.name}, seeds {','.join(map(str, seeds))}; "
        f"n_pre {cfg.prune.n_pre}, n_iter {cfg.prune.n_iter}, n_prune {cfg.prune.n_prune}, "
        f"n_post {cfg.prune.n_post}, schedule {cfg.prune.schedule}, scope {cfg.prune.scope}; "
        f"device {first.get('device', '?')} ({first.get('threads', '?')} threads), torch {torch.__version__}; "
        f"{len(cells)} runs in {time.perf_counter() - t0:.0f} s\n\n"
    )
    return summaries, write_table(summaries, out, header)


def collect(folder: Path) -> list[dict[str, Any]]:
    """Return the summaries of every finished run under `folder` (label from the run's path)."""
    import json

    out = []
    for path in sorted(folder.rglob("summary.json")):
        s = json.loads(path.read_text())
        label_file = path.parent / "label.txt"
        parts = path.parent.relative_to(folder).parts  # <label>/p<sparsity>/seed_<n> in a compare folder
        if label_file.exists():
            s["label"] = label_file.read_text().strip()
        else:
            s["label"] = parts[0] if len(parts) >= 3 else s["method"]
        out.append(s)
    return out


def write_table(summaries: list[dict[str, Any]], out: Path, header: str) -> str:
    """Write table.md, table.csv and boxplots.png for `summaries` under `out`; return the markdown."""
    rows = report.table_rows(summaries)
    baselines = report.baselines_of(rows)
    table = header + report.markdown(rows, baselines)
    save_text(table, out / "table.md")
    save_text(report.to_csv(rows), out / "table.csv")
    report.boxplots(summaries, out / "boxplots.png")
    return table


__all__ = ["collect", "parse_grid", "plan", "run_grid", "write_table"]
