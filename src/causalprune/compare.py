"""Run a grid of experiments (methods × sparsities × seeds × optional config grid) and tabulate.

All runs of one seed share the θ_pre checkpoint (pre-training reads neither the method
nor the sparsity), so the grid pre-trains once per seed and every method starts from the
same weights — which is also what makes paired differences meaningful.
"""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path
from typing import Any

import torch

from . import criteria, report
from .config import Config, ConfigError, apply_overrides, config_from_dict
from .experiment import run_experiment
from .io import save_text


def parse_grid(items: list[str]) -> list[tuple[str, list[Any]]]:
    """Parse ``key=v1,v2`` items into (key, values) pairs (values read as YAML)."""
    import yaml

    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} must look like key.sub=value1,value2")
        key, _, raw = item.partition("=")
        out.append((key.strip(), [yaml.safe_load(v) for v in raw.split(",")]))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text)


def plan(cfg: Config, methods: list[str], sparsities: list[float], seeds: list[int],
         grid: list[tuple[str, list[Any]]]) -> list[tuple[str, Config]]:  # fmt: skip
    """Return (label, config) for every run of the grid; methods that ignore a grid key run once."""
    runs: list[tuple[str, Config]] = []
    seen: set[str] = set()
    base = cfg.to_dict()
    for method in methods:
        crit = criteria.get(method)
        uses_causal = crit is not None and crit.uses_causal_config
        keys = [(k, vs) for k, vs in grid if uses_causal or not k.startswith("causal.")]
        for combo in itertools.product(*[vs for _, vs in keys]):
            assignment = [f"{k.split('.')[-1]}={v}" for (k, _), v in zip(keys, combo, strict=True)]
            label = method + (f"[{','.join(assignment)}]" if assignment else "")
            overrides = [f"{k}={v}" for (k, _), v in zip(keys, combo, strict=True)]
            sparsity_list = [0.0] if method == "dense" else sparsities
            for sparsity, seed in itertools.product(sparsity_list, seeds):
                d = apply_overrides(base, overrides)
                d["seed"], d["prune"]["method"] = seed, method
                if method != "dense":
                    d["prune"]["sparsity"] = sparsity
                key = f"{label}|{sparsity}|{seed}"
                if key not in seen:
                    seen.add(key)
                    runs.append((label, config_from_dict(d)))
    return runs


def run_grid(cfg: Config, methods: list[str], sparsities: list[float], seeds: list[int], out: Path,
             grid: list[tuple[str, list[Any]]] | None = None) -> tuple[list[dict[str, Any]], str]:  # fmt: skip
    """Run (or resume) every run of the grid under `out`; write table.md and table.csv."""
    runs = plan(cfg, methods, sparsities, seeds, grid or [])
    summaries = []
    t0 = time.perf_counter()
    for i, (label, rc) in enumerate(runs, 1):
        folder = out / _slug(label) / f"p{rc.prune.sparsity:g}" / f"seed_{rc.seed}"
        print(f"[{i}/{len(runs)}] {label} sparsity {rc.prune.sparsity:g} seed {rc.seed}", flush=True)
        s = run_experiment(rc, folder, pre_cache=out / "_pre", quiet=True)
        save_text(label + "\n", folder / "label.txt")
        summaries.append({**s, "label": label})
    header = (
        f"{cfg.name}: {cfg.data.name}, {cfg.model.name}, seeds {','.join(map(str, seeds))}; "
        f"n_pre {cfg.prune.n_pre}, n_iter {cfg.prune.n_iter}, n_prune {cfg.prune.n_prune}, "
        f"n_post {cfg.prune.n_post}, schedule {cfg.prune.schedule}, scope {cfg.prune.scope}; "
        f"device {summaries[0]['device'] if summaries else '?'}, torch {torch.__version__}; "
        f"{len(runs)} runs in {time.perf_counter() - t0:.0f} s\n\n"
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
    """Write table.md and table.csv for `summaries` under `out`; return the markdown."""
    methods = {s["method"] for s in summaries}
    baselines = [b for b in ("magnitude",) if b in methods]
    rows = report.table_rows(summaries, baselines)
    table = header + report.markdown(rows, baselines)
    save_text(table, out / "table.md")
    save_text(report.to_csv(rows), out / "table.csv")
    report.boxplots(summaries, out / "boxplots.png")
    return table


__all__ = ["collect", "parse_grid", "plan", "run_grid", "write_table"]
