"""Run a grid of experiments (methods × sparsities × seeds × optional config grid) and tabulate.

All runs of one seed share the θ_pre checkpoint (pre-training reads neither the method
nor the sparsity), so the grid pre-trains once per seed and every method starts from the
same weights — which is also what makes paired differences meaningful. Planning and
running (cells as tasks on an `executors.Executor`, failures collected per cell) are
`grid`'s, shared with `sweep`.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import figures, report
from .config import Config, read_yaml
from .executors import Executor, Sequential
from .grid import Cell, Failed, Grid, parse_grid, run_cells, short, slug
from .grid import plan as plan_grid
from .io import save_text
from .platform import current as current_platform
from .runfolder import RunFolder

#: keys compare itself varies; the user's --grid keys are labelled, these are not
_OWN = ("prune.method", "prune.sparsity", "prune.speedup", "seed")


def _naming(pairs: list[tuple[str, Any]], cfg: Config) -> tuple[str, Path]:
    """Label ``method[key=value,...]``; folder ``<label>/p<sparsity>/seed_<n>`` (``s<speedup>x`` for a speed-up)."""
    assignment = [short(k, v) for k, v in pairs if k not in _OWN]
    label = cfg.prune.method + (f"[{','.join(assignment)}]" if assignment else "")
    return label, Path(slug(label)) / _budget_folder(cfg) / f"seed_{cfg.seed}"


def _budget_folder(cfg: Config) -> str:
    p = cfg.prune
    return f"s{p.speedup:g}x" if p.speedup is not None else f"p{p.sparsity:g}"


def budget(cfg: Config) -> str:
    """The run's budget as progress lines show it: ``sparsity 0.9`` or ``speed-up 2×``."""
    p = cfg.prune
    return f"speed-up {p.speedup:g}×" if p.speedup is not None else f"sparsity {p.sparsity:g}"


def plan(cfg: Config, methods: list[str], sparsities: list[float], seeds: list[int], grid: Grid,
         speedups: list[float] | None = None) -> list[Cell]:  # fmt: skip
    """Return the cells of the comparison; methods that ignore a grid key run once.

    With `speedups` (``prune.granularity: channel``), the budget axis is ``prune.speedup`` and
    `sparsities` is ignored.
    """
    base: Config | dict[str, Any] = cfg
    if speedups:
        base = cfg.to_dict()
        base["prune"]["sparsity"] = None  # the speed-up is the budget
        axis: tuple[str, list[Any]] = ("prune.speedup", list(speedups))
    else:
        axis = ("prune.sparsity", list(sparsities))
    axes = [("prune.method", list(methods)), *grid, axis, ("seed", list(seeds))]
    return plan_grid(base, axes, _naming)


def run_grid(cfg: Config, methods: list[str], sparsities: list[float], seeds: list[int], out: Path,
             grid: Grid | None = None, speedups: list[float] | None = None, executor: Executor | None = None,
             nproc: int = 1) -> tuple[list[dict[str, Any]], str, list[Failed]]:  # fmt: skip
    """Run (or resume) every run of the grid under `out`; write table.md and table.csv for those that finished.

    Returns (summaries, table markdown, failed cells). `executor` runs the cells (default:
    `executors.Sequential`, one after another here); a cell that fails does not stop the
    others. Under torchrun every rank runs every cell in step, so the first failure stops it.
    `nproc` > 1 (Ray, Slurm): each cell's task runs it as `nproc` processes (`grid.run_cell_launched`).
    """
    cells = plan(cfg, methods, sparsities, seeds, grid or [], speedups)
    plat = current_platform()
    if executor is None:
        executor = Sequential(catch=not plat.distributed)
    t0 = time.perf_counter()
    finished, failed = run_cells(cells, out, executor, lambda c: f"{c.label} {budget(c.config)} seed {c.config.seed}",
                                 nproc)  # fmt: skip
    by_folder = {s["run_dir"]: s for s in finished}
    ran = [c for c in cells if str(out / c.folder) in by_folder]  # in grid order
    summaries = [by_folder[str(out / c.folder)] for c in ran]
    report.tag_experiments(summaries, [c.config.to_dict() for c in ran])
    if not plat.is_primary or not summaries:  # under torchrun every rank runs every cell; one writes
        return summaries, "", failed
    first = summaries[0]
    done = f"{len(cells)} runs" if not failed else f"{len(summaries)} of {len(cells)} runs ({len(failed)} failed)"
    header = (
        f"{cfg.name}: {cfg.data.name}, {cfg.model.name}, seeds {','.join(map(str, seeds))}; "
        f"n_pre {cfg.prune.n_pre}, n_iter {cfg.prune.n_iter}, n_prune {cfg.prune.n_prune}, "
        f"n_post {cfg.prune.n_post}, schedule {cfg.prune.schedule}, scope {cfg.prune.scope}; "
        f"device {first.get('device', '?')} ({first.get('threads', '?')} threads), torch {torch.__version__}; "
        f"{done} in {time.perf_counter() - t0:.0f} s\n\n"
    )
    return summaries, write_table(summaries, out, header), failed


def _read_run(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (summary, config as nested dicts) of the finished run folder `run`; ValueError says what is wrong."""
    summary = RunFolder(run).summary()  # RunFolderError (a ValueError) for a damaged or foreign one
    metric = report.metric_of(summary)
    missing = [k for k in ("method", "seed", "sparsity_target", "sparsity_actual") if k not in summary]
    for part, keys in (("pruned", (f"test_{metric}", f"test_{metric}_at_best_val", f"best_test_{metric}")),
                       ("timing", ("total_s",))):  # fmt: skip
        inner = summary.get(part)
        missing += [f"{part}.{k}" for k in keys if not isinstance(inner, dict) or k not in inner]
    if missing:
        raise ValueError(f"summary.json lacks {', '.join(repr(k) for k in missing)}")
    if not (run / "config.yaml").is_file():
        raise ValueError("no config.yaml beside summary.json: not a run folder")
    config = read_yaml(run / "config.yaml")
    if not isinstance(config, dict):
        raise ValueError("config.yaml is not a mapping of keys to values")
    said = {"prune.method": summary["method"], "seed": summary["seed"]}
    prune = config.get("prune")
    ran = {"prune.method": prune.get("method") if isinstance(prune, dict) else None, "seed": config.get("seed")}
    clash = [k for k in said if ran[k] is not None and ran[k] != said[k]]
    if clash:
        raise ValueError(f"summary.json and config.yaml disagree on {', '.join(clash)}")
    return summary, config


def collect(folder: Path, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """Return the summaries of every finished run under `folder`, each tagged with its experiment.

    A run's label comes from its label.txt (or its path), its experiment from its config.yaml
    (`report.tag_experiments`), and ``run_dir`` names its folder. A damaged run (unreadable or
    incomplete summary.json, missing or unreadable config.yaml) is left out: one line
    ``<folder>: <what is wrong>`` is appended to `skipped`, or, without it, warned on stderr.
    """
    summaries, configs = [], []
    for path in sorted(folder.rglob("summary.json")):
        run = path.parent
        try:
            s, config = _read_run(run)
        except (ValueError, OSError) as e:  # ConfigError is a ValueError
            line = f"{run}: {' '.join(str(e).split())}"
            if skipped is None:
                print(f"causalprune: warning: skipping {line}", file=sys.stderr)
            else:
                skipped.append(line)
            continue
        label_file = run / "label.txt"
        parts = run.relative_to(folder).parts
        if label_file.exists():
            s["label"] = label_file.read_text().strip()
        elif len(parts) >= 3 and re.fullmatch(r"p[0-9.e+-]+", parts[-2]) and parts[-1].startswith("seed_"):
            s["label"] = parts[-3]  # <label>/p<sparsity>/seed_<n> in a compare folder
        else:
            s["label"] = s["method"]
        s["run_dir"] = str(run)
        summaries.append(s)
        configs.append(config)
    report.tag_experiments(summaries, configs)
    return summaries


def write_table(summaries: list[dict[str, Any]], out: Path, header: str, html: bool = False) -> str:
    """Write table.md, table.csv, boxplots and figures/ for `summaries` under `out`; return the markdown.

    figures/ holds `figures.figures_for`'s PNG and SVG files (a figure with nothing to show is
    skipped: figures/skipped.txt says why); `html` also writes report.html, tables and figures in one page.

    Summaries of several experiments (`report.experiments`) are never pooled: table.md holds a
    one-line note on what differs and one table per experiment, table.csv one row per
    experiment, method and sparsity (its ``experiment`` column tells them apart), and each
    experiment gets ``boxplots-<experiment>.png`` instead of one boxplots.png.
    """
    groups = report.experiments(summaries)
    tables = {exp: report.table_rows(runs) for exp, runs in groups.items()}  # refuses pooling before writing
    if len(groups) <= 1:
        rows = next(iter(tables.values()), [])
        table = header + report.markdown(rows, report.baselines_of(rows))
        report.boxplots(summaries, out / "boxplots.png")
    else:
        keys = report.differing_keys(summaries)[:6]
        parts = [header, report.split_note(summaries, out) + "\n\n"]
        for exp, runs in groups.items():
            ident = report.identity(runs[0])
            what = ", ".join(f"{k}={ident.get(k, '—')}" for k in keys)
            parts.append(f"### {exp} ({what})\n\n" + report.markdown(tables[exp]) + "\n")
            report.boxplots(runs, out / f"boxplots-{slug(exp)}.png")
        table = "".join(parts)
        rows = [r for t in tables.values() for r in t]
    save_text(table, out / "table.md")
    save_text(report.to_csv(rows), out / "table.csv")
    drawn, notes = figures.figures_for(rows, out / "figures")
    save_text("".join(f"{n}\n" for n in notes), out / "figures" / "skipped.txt")
    if html:
        pngs = [*drawn, *sorted(out.glob("boxplots*.png"))]
        save_text(figures.report_html(table, pngs, title=f"causalprune report: {out}"), out / "report.html")
    return table


__all__ = ["collect", "parse_grid", "plan", "run_grid", "write_table"]
