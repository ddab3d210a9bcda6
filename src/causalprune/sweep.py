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
Planning is `grid.plan`'s, shared with `compare`. `causalprune report OUT` then tabulates
the runs and draws Fig. 3-style boxplots.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

from . import criteria
from .config import Config, ConfigError, config_from_dict, find_config, load_config, read_yaml
from .experiment import run_experiment
from .grid import Cell, Grid, override, plan, short, slug
from .io import save_text
from .runfolder import pre_cache_dir


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


def plan_sweep(path: str | Path, out: Path) -> list[Cell]:
    """Return one `Cell` per run of the sweep (folders relative to `out`); configs are checked now."""
    base, name, fixed, grid = load_sweep(path)
    return plan(load_config(base, [f"name={name}", *fixed]), grid, _naming)


def _one(args: tuple[dict[str, Any], str, str, str, int]) -> str:
    config, folder, label, pre, jobs = args
    run_experiment(config_from_dict(config), folder, pre_cache=pre, quiet=True, jobs=jobs)
    save_text(label + "\n", Path(folder) / "label.txt")
    return folder


def run_sweep(path: str | Path, out: str | Path, jobs: int = 1) -> int:
    """Run every combination of the sweep (skipping finished runs); return the number of runs."""
    out = Path(out)
    cells = plan_sweep(path, out)
    todo = [(c.config.to_dict(), str(out / c.folder), c.label, str(out / "_pre"), jobs) for c in cells
            if not (out / c.folder / "summary.json").exists()]  # fmt: skip
    print(f"{len(cells)} runs, {len(cells) - len(todo)} already finished, {len(todo)} to run with {jobs} process(es)")
    if jobs <= 1:
        for i, t in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {t[2]}", flush=True)
            _one(t)
        return len(cells)
    # θ_pre is shared: first one run per distinct θ_pre (in parallel), then the rest, which reuse it.
    first: dict[Path, int] = {}
    for i, t in enumerate(todo):
        cfg = config_from_dict(t[0])
        if criteria.get(cfg.prune.method).prunes:  # a run without pruning trains no θ_pre
            first.setdefault(pre_cache_dir(cfg, out / "_pre"), i)
    leaders = [todo[i] for i in sorted(first.values())]
    rest = [t for i, t in enumerate(todo) if i not in set(first.values())]
    done = 0
    with mp.get_context("spawn").Pool(jobs) as pool:
        for batch in (leaders, rest):
            for folder in pool.imap_unordered(_one, batch):
                done += 1
                print(f"[{done}/{len(todo)}] done {folder}", flush=True)
    return len(cells)
