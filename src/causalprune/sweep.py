"""`causalprune sweep SWEEP.yaml`: a grid of runs in parallel processes, resumable.

A sweep file names a base config, overrides, and a grid::

    base: configs/demo.yaml          # relative to the sweep file; omit for the built-in demo
    name: ablation-npre
    set: {prune.n_post: 20}          # fixed overrides
    grid:                            # every combination is one run
      prune.n_pre: [0, 1, 5, 10]
      prune.sparsity: [0.9, 0.98]
      seed: [0, 1, 2]

Runs go to OUT/<key=value,...>/ (one run folder each); finished runs are skipped, stopped
ones resume. `causalprune report OUT` then tabulates them and draws Fig. 3-style boxplots.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
from pathlib import Path
from typing import Any

import yaml

from .compare import _slug
from .config import ConfigError, load_config
from .experiment import run_experiment
from .io import save_text


def load_sweep(path: str | Path) -> tuple[Path | None, str, list[str], list[tuple[str, list[Any]]]]:
    """Read a sweep file: (base config path, name, fixed overrides, grid)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep file {path} must be a mapping")
    unknown = set(spec) - {"base", "name", "set", "grid"}
    if unknown:
        raise ConfigError(f"unknown sweep key {sorted(unknown)[0]!r}; valid: base, name, set, grid")
    base = (path.parent / spec["base"]) if spec.get("base") else None
    fixed = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in (spec.get("set") or {}).items()]
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"sweep file {path} needs a non-empty grid: key: [values]")
    items = [(k, v if isinstance(v, list) else [v]) for k, v in grid.items()]
    return base, str(spec.get("name", path.stem)), fixed, items


def plan_sweep(path: str | Path, out: Path) -> list[tuple[list[str], Path, str]]:
    """Return (overrides, run folder, label) for every combination; configs are checked now."""
    base, name, fixed, grid = load_sweep(path)
    jobs = []
    for combo in itertools.product(*[vs for _, vs in grid]):
        pairs = list(zip(grid, combo, strict=True))
        sets = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for (k, _), v in pairs]
        overrides = [f"name={name}", *fixed, *sets]
        load_config(base, overrides)  # fail early, before any run starts, on a bad value
        label = ",".join(f"{k.split('.')[-1]}={v}" for (k, _), v in pairs if k != "seed")
        jobs.append((overrides, out / _slug(",".join(f"{k.split('.')[-1]}={v}" for (k, _), v in pairs)), label))
    return jobs


def _one(args: tuple[str | None, list[str], str, str]) -> str:
    base, overrides, folder, label = args
    run_experiment(load_config(base, overrides), folder, quiet=True)
    save_text(label + "\n", Path(folder) / "label.txt")
    return folder


def run_sweep(path: str | Path, out: str | Path, jobs: int = 1) -> int:
    """Run every combination of the sweep (skipping finished runs); return the number of runs."""
    out = Path(out)
    base = load_sweep(path)[0]
    plan = plan_sweep(path, out)
    todo = [(str(base) if base else None, ov, str(folder), label) for ov, folder, label in plan
            if not (folder / "summary.json").exists()]  # fmt: skip
    print(f"{len(plan)} runs, {len(plan) - len(todo)} already finished, {len(todo)} to run with {jobs} process(es)")
    if jobs <= 1:
        for i, t in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {t[2]}", flush=True)
            _one(t)
    else:
        with mp.get_context("spawn").Pool(jobs) as pool:
            for i, folder in enumerate(pool.imap_unordered(_one, todo), 1):
                print(f"[{i}/{len(todo)}] done {folder}", flush=True)
    return len(plan)
