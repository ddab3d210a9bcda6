"""`causalprune sweep SWEEP.yaml`: a grid of runs in parallel processes, resumable.

A sweep file names a base config, overrides, and a grid::

    base: demo.yaml                  # relative to the sweep file, else a shipped config's name;
                                     # omit for the built-in demo
    name: ablation-npre
    set: {prune.n_post: 20}          # fixed overrides
    grid:                            # every combination is one run
      prune.n_pre: [0, 1, 5, 10]
      prune.sparsity: [0.9, 0.98]
      seed: [0, 1, 2]

Runs go to OUT/<key=value,...>/ (one run folder each); finished runs are skipped, stopped
ones resume; runs that agree on everything pre-training reads share θ_pre (``OUT/_pre``).
Planning and running (runs as tasks on an `executors.Executor`, failures collected per
run) are `grid`'s, shared with `compare`. `causalprune report OUT` then tabulates the runs
and draws Fig. 3-style boxplots.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, find_config, load_config, read_yaml
from .executors import Executor, executor_for
from .grid import Cell, Failed, Grid, override, plan, run_cells, short, slug


def load_sweep(path: str | Path) -> tuple[Path | None, str, list[str], Grid]:
    """Read a sweep file (a path or a shipped sweep's name): (base config path, name, fixed overrides, grid)."""
    path = find_config(path, "sweep file")
    spec = read_yaml(path, "sweep file") or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep file {path} must be a mapping")
    unknown = set(spec) - {"base", "name", "set", "grid"}
    if unknown:
        raise ConfigError(f"unknown sweep key {sorted(unknown)[0]!r}; valid: base, name, set, grid")
    base = None
    if spec.get("base"):
        base = find_config(str(spec["base"]), f"base config of {path}", relative_to=path.parent)
    fixed = [override(k, v) for k, v in (spec.get("set") or {}).items()]
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"sweep file {path} needs a non-empty grid: key: [values]")
    items = [(k, v if isinstance(v, list) else [v]) for k, v in grid.items()]
    return base, str(spec.get("name", path.stem)), fixed, items


def _naming(pairs: list[tuple[str, Any]], cfg: Config) -> tuple[str, Path]:
    """Label: every varied key but the seed; folder: every varied key."""
    label = ",".join(short(k, v) for k, v in pairs if k != "seed")
    return label, Path(slug(",".join(short(k, v) for k, v in pairs)))


def plan_sweep(path: str | Path, out: Path, overrides: Sequence[str] = ()) -> list[Cell]:
    """Return one `Cell` per run of the sweep (folders relative to `out`); configs are checked now.

    `overrides` (``key=value``) apply to every run after the sweep's own (the CLI's ``--track``).
    """
    base, name, fixed, grid = load_sweep(path)
    return plan(load_config(base, [f"name={name}", *fixed, *overrides]), grid, _naming)


def run_sweep(path: str | Path, out: str | Path, jobs: int = 1, executor: Executor | None = None,
              overrides: Sequence[str] = ()) -> tuple[int, list[Failed]]:  # fmt: skip
    """Run every combination of the sweep (skipping finished runs); return the number of runs and the failed ones.

    `executor` runs the runs (default: `executors.executor_for(jobs)`: one after another, or
    `jobs` local processes); a run that fails does not stop the others.
    """
    out = Path(out)
    executor = executor if executor is not None else executor_for(jobs)
    cells = plan_sweep(path, out, overrides)
    todo = [c for c in cells if not (out / c.folder / "summary.json").exists()]
    where = f"on {executor.name}" if hasattr(executor, "name") else f"with {jobs} process(es)"
    print(f"{len(cells)} runs, {len(cells) - len(todo)} already finished, {len(todo)} to run {where}")
    _, failed = run_cells(todo, out, executor)
    return len(cells), failed
