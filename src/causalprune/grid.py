"""One grid planner for `compare` and `sweep`: every combination of key values becomes one run.

A grid is a list of (config key, values). A method is only varied along keys it reads
(`criteria.Criterion.reads_key`): ``magnitude`` runs once whatever ``causal.solver``
takes, ``dense`` once whatever the sparsity. Every cell is resolved (`resolve.check`)
when planned, so a bad value fails before any run starts. Runs of a grid share θ_pre per
seed through the cache folder ``<out>/_pre`` (pre-training reads neither the method nor
its settings), which is also what makes paired differences meaningful.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import criteria, resolve
from .config import Config, ConfigError, check_key, config_from_dict, yaml_problem

Grid = list[tuple[str, list[Any]]]
#: (the cell's (key, value) pairs, its config) → (label, run folder relative to the grid's folder)
Naming = Callable[[list[tuple[str, Any]], Config], tuple[str, Path]]


@dataclass(frozen=True)
class Cell:
    """One run of a grid."""

    label: str  # its row in tables (the seed left out)
    folder: Path  # its run folder, relative to the grid's output folder
    config: Config
    overrides: tuple[str, ...]  # the ``key=value`` overrides that made it from the base config


def parse_grid(items: list[str]) -> Grid:
    """Parse ``key=v1,v2`` items into (key, values) pairs (values read as YAML)."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} must look like key.sub=value1,value2")
        key, _, raw = item.partition("=")
        try:
            out.append((key.strip(), [yaml.safe_load(v) for v in raw.split(",")]))
        except yaml.YAMLError as e:
            raise ConfigError(f"--grid {item!r}: a value is not valid YAML ({yaml_problem(e)})") from None
    return out


def slug(text: str) -> str:
    """Return `text` with every run of characters unsafe in a folder name replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text)


def override(key: str, value: Any) -> str:
    """Return the ``key=value`` override that sets `key` to `value` (value written as YAML)."""
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"


def short(key: str, value: Any) -> str:
    """Return ``last-part-of-key=value``, the spelling of labels and folder names."""
    return f"{key.split('.')[-1]}={value}"


def plan(base: Config | dict[str, Any], grid: Sequence[tuple[str, Sequence[Any]]], naming: Naming) -> list[Cell]:
    """Return one `Cell` per distinct run of the grid (in grid order; cells a method ignores dropped)."""
    base_dict = base.to_dict() if isinstance(base, Config) else base
    default_method = base_dict["prune"]["method"]
    cells: list[Cell] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    keys = [k for k, _ in grid]
    for key in keys:
        check_key(key)  # a misspelt key must not be dropped as "not read by this method"
    for combo in itertools.product(*[list(vs) for _, vs in grid]):
        pairs = list(zip(keys, combo, strict=True))
        method = next((v for k, v in pairs if k == "prune.method"), default_method)
        crit = criteria.get(method)
        pairs = [(k, v) for k, v in pairs if crit.reads_key(k)]
        identity = tuple((k, repr(v)) for k, v in pairs)
        if identity in seen:
            continue
        seen.add(identity)
        overrides = tuple(override(k, v) for k, v in pairs)
        cfg = resolve.check(config_from_dict(base_dict, list(overrides), source="the base config", given_by="the grid"))
        label, folder = naming(pairs, cfg)
        cells.append(Cell(label, folder, cfg, overrides))
    return cells


__all__ = ["Cell", "Grid", "parse_grid", "plan", "short", "slug"]
