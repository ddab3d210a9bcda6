"""Resolve a config for a run: check the names it gives against the registries that own them.

`config` type-checks values and knows no registry; here the data set, model, method,
schedule and scope names are looked up where they are defined, together with the rules
that depend on them (which data sets take an image size, which model has torchvision
weights). Every entry point that starts runs (`run_experiment`, `dry_run`, the grid
planner, the CLI) resolves its configs first, so a bad name fails before anything trains.
"""

from __future__ import annotations

from pathlib import Path

from . import criteria, tracking
from .config import Config, ConfigError, check_choice, load_config
from .data import DATASETS, RESIZABLE
from .models import MODELS, SHORTCUT_MODELS
from .selection import SCHEDULES, SCOPES


def check(cfg: Config) -> Config:
    """Return `cfg` if every name in it is registered and fits; raise `ConfigError` naming the key."""
    d, m, p = cfg.data, cfg.model, cfg.prune
    check_choice(d.name, tuple(sorted(DATASETS)), "data.name")
    if d.image_size is not None and d.name not in RESIZABLE:
        raise ConfigError(f"data.image_size applies to {', '.join(RESIZABLE)} only, not {d.name}; leave it null")
    if d.on_device and d.name in RESIZABLE:
        raise ConfigError(f"data.on_device needs an in-memory data set; {d.name} is streamed from files")
    check_choice(m.name, tuple(sorted(MODELS)), "model.name")
    if (d.name == "pysrc") != (m.name == "gpt"):  # token ids in, (B, T, vocabulary) logits out
        raise ConfigError(f"data.name {d.name} with model.name {m.name}: data set pysrc (token ids) and model gpt go "
                          "together; use data.name: pysrc with model.name: gpt")  # fmt: skip
    if m.pretrained == "torchvision" and m.name != "resnet50":
        raise ConfigError(f"model.pretrained: torchvision weights exist for resnet50 only, not {m.name}; "
                          "give the path of a state-dict file instead")  # fmt: skip
    if m.shortcut != "A" and m.name not in SHORTCUT_MODELS:
        raise ConfigError(f"model.shortcut applies to {', '.join(SHORTCUT_MODELS)} only, not {m.name}; leave it A")
    check_choice(p.method, tuple(sorted(criteria.METHODS)), "prune.method")
    check_choice(p.schedule, SCHEDULES, "prune.schedule")
    check_choice(p.scope, SCOPES, "prune.scope")
    crit = criteria.get(p.method)
    if crit.prunes and p.granularity not in crit.granularities:
        valid = ", ".join(criteria.names(p.granularity))
        raise ConfigError(f"prune.method {p.method} does not score at prune.granularity {p.granularity} (it "
                          f"scores: {', '.join(crit.granularities)}); methods at {p.granularity} granularity: "
                          f"{valid}")  # fmt: skip
    if crit.records and p.n_prune < 1:
        raise ConfigError(f"prune.n_prune must be >= 1 for {p.method}, which records the round's training")
    tracking.check(cfg.track)  # known trackers, their packages installed
    return cfg


def load(path: str | Path | None = None, overrides: list[str] | None = None,
         notes: list[str] | None = None) -> Config:  # fmt: skip
    """Load a YAML config (None: the built-in demo), apply overrides, and resolve it (`check`).

    `notes` receives a line per budget an override replaced (`config.settle_budgets`).
    """
    return check(load_config(path, overrides, notes))
