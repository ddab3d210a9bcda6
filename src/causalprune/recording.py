"""How a round is recorded, and the one place a `TrajectoryRecorder` is configured from it.

The recording settings are the ``causal`` config section's recording fields
(`RECORDING_FIELDS`; the section and its keys stay where users write them). The driver
(`causalprune.experiment`) and `causalprune.pruner.CausalPruner` read them only through
`Recording` and build their recorders only through `make_recorder`, so both record a
round alike: the same storage, probe seed, first-order term and momentum-model rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import criteria  # noqa: F401  (registers the recording settings' section, causal)
from .config import SECTIONS
from .layout import ParamLayout
from .trajectory import ColumnShard, TrajectoryRecorder

#: the config section that holds the recording settings (users' keys: ``causal.delta_loss``, ...)
RECORDING_SECTION = "causal"
#: the fields of that section that say how a round is recorded
RECORDING_FIELDS = ("delta_loss", "probe_size", "recorder", "record_lr", "momentum_model", "dtype", "record_steps",
                    "memory_budget_gb", "storage", "shard_trajectory", "first_order")  # fmt: skip
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def stage_seed(seed: int, stage: str) -> int:
    """Return a seed for one stage of a run: stable across processes and resumes."""
    return (seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(stage))) % (2**31 - 1)


@dataclass(frozen=True)
class Recording:
    """A run's recording settings (the ``causal`` section's `RECORDING_FIELDS`, checked there)."""

    delta_loss: str  # same_batch | probe
    probe_size: int  # probe samples held out of the training split (every run reads it)
    recorder: str  # train: the training optimizer records | sgd: a dedicated plain SGD (the driver only)
    record_lr: float  # learning rate of the dedicated SGD recorder
    momentum_model: bool  # momentum features, when the recording optimizer is SGD with momentum
    dtype: str  # storage dtype: float32 | bfloat16 | float16
    record_steps: int | None  # steps recorded per round, evenly spread (None: every step)
    memory_budget_gb: float | None  # GiB of trajectory in memory; the rest spills to disk
    storage: str  # device | cpu
    shard_trajectory: bool  # distributed runs: each process records its share of the columns
    first_order: str  # ignore | free | subtract: z_t = g_t·Δθ_t is recorded unless ignore

    @classmethod
    def of(cls, settings: Any = None) -> Recording:
        """Return the recording settings of a method's `settings` (the section's defaults for fields it lacks)."""
        default = SECTIONS[RECORDING_SECTION]()
        return cls(**{f: getattr(settings, f, getattr(default, f)) for f in RECORDING_FIELDS})

    @classmethod
    def from_config(cls, cfg: Any) -> Recording:
        """Return a run config's recording settings."""
        return cls.of(cfg.section(RECORDING_SECTION))

    @property
    def dedicated(self) -> bool:
        """Whether a dedicated plain SGD records (``recorder: sgd``) instead of the training optimizer."""
        return self.recorder == "sgd"

    def momentum_for(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether a round recorded with `optimizer` has momentum features: `momentum_model` and SGD with momentum."""
        return self.momentum_model and isinstance(optimizer, torch.optim.SGD) and \
            any(g.get("momentum", 0) > 0 for g in optimizer.param_groups)  # fmt: skip

    def replace(self, **changes: Any) -> Recording:
        """Return a copy with `changes`."""
        return dataclasses.replace(self, **changes)


def make_recorder(recording: Recording, model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor],
                  optimizer: torch.optim.Optimizer, layout: ParamLayout, *, seed: int, probe_data: Any = None,
                  capacity: int | None = None, forward: Callable[[nn.Module, Any], Any] | None = None,
                  train_model: nn.Module | None = None,
                  loss_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  probe_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  shard: ColumnShard | None = None) -> TrajectoryRecorder:  # fmt: skip
    """Build the recorder of one round: `layout` (the plan's) over `model`, trained by `optimizer`.

    Every setting comes from `recording`; the probe forward is seeded from the run's `seed`;
    momentum features follow `Recording.momentum_for`. `capacity` (the round's recorded
    steps, when known) allocates the trajectory up front, so scoring reads it without a copy.
    The other keywords are those of `TrajectoryRecorder` (distributed runs, custom forwards).
    """
    return TrajectoryRecorder(
        model, loss_fn, optimizer, layout=layout, dtype=DTYPES[recording.dtype], delta_loss=recording.delta_loss,
        probe_data=probe_data, momentum_features=recording.momentum_for(optimizer), capacity=capacity,
        memory_budget=None if recording.memory_budget_gb is None else int(recording.memory_budget_gb * 2**30),
        storage_device="cpu" if recording.storage == "cpu" else None, probe_seed=stage_seed(seed, "probe"),
        first_order=recording.first_order != "ignore", forward=forward, train_model=train_model,
        loss_reduce=loss_reduce, probe_reduce=probe_reduce, shard=shard,
    )  # fmt: skip


__all__ = ["DTYPES", "RECORDING_FIELDS", "RECORDING_SECTION", "Recording", "make_recorder", "stage_seed"]
