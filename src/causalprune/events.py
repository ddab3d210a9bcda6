"""A run's events as typed values, and the sinks they go to (metrics.jsonl first; trackers later).

One schema for every event: its kind (``event``: ``epoch``, ``level``, ``stage`` or
``summary``), the ``stage`` it belongs to (``pre``, ``level_<k>``, ``post``, or the method's
name for a run that does not prune), the pruning round ``level`` (k in ``level_<k>``; None
outside the rounds), the global ``step`` (optimizer steps since the run's start, over every
stage: a round restarts from θ_pre, the count goes on) and the wall-clock ``time``; then the
kind's own fields, flat (docs/cli.md, "metrics.jsonl").

    EpochEvent    the end of a training epoch: ``epoch`` and its metrics (train_loss, lr, val_*, test_*)
    RoundEvent    a pruning round's selection (``event: level``): ``target``, ``target_kind``,
                  ``sparsity`` (of the plan's units) and the round's facts (the fit's T, d, solver, ...)
    StageEvent    a stage's end: its ``epochs`` and ``source`` (trained here, or a θ_pre shared by a grid)
    SummaryEvent  the run's final numbers (summary.json's scalar fields)

A sink takes events (`EventSink`: ``emit``, ``close``); the driver emits through one
(`Sinks` fans out to several) and knows no tracker. A leaf: standard library only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

Scalar = int | float | str | bool | None

COMMON = ("time", "event", "stage", "level", "step")  # every event's fields, in this order


def _now() -> float:
    return round(time.time(), 3)


@dataclass(frozen=True, kw_only=True)
class Event:
    """What every event carries: its stage, pruning round (None outside the rounds) and global step."""

    KIND: ClassVar[str] = ""
    stage: str
    level: int | None
    step: int  # optimizer steps since the run's start, over all stages
    time: float = field(default_factory=_now)  # seconds since the epoch (wall clock), to the millisecond

    def fields(self) -> dict[str, Any]:
        """Return the kind's own fields (flat, JSON-ready)."""
        return {}

    def to_json(self) -> dict[str, Any]:
        """Return the event as one flat JSON object (a line of metrics.jsonl)."""
        own = self.fields()
        clash = sorted(set(own) & set(COMMON))
        if clash:
            raise ValueError(f"{type(self).__name__} field(s) {', '.join(clash)} would overwrite the schema's "
                             f"common fields {', '.join(COMMON)}")  # fmt: skip
        return {"time": self.time, "event": self.KIND, "stage": self.stage, "level": self.level, "step": self.step,
                **own}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class EpochEvent(Event):
    """The end of a training epoch (1-based ``epoch`` of its stage) and its metrics."""

    KIND: ClassVar[str] = "epoch"
    epoch: int
    metrics: Mapping[str, float] = field(default_factory=dict)  # train_loss, lr, val_<metric>, test_<metric>

    def fields(self) -> dict[str, Any]:
        """Return ``epoch`` and the metrics."""
        return {"epoch": self.epoch, **{k: v for k, v in self.metrics.items() if k != "epoch"}}


@dataclass(frozen=True, kw_only=True)
class RoundEvent(Event):
    """A pruning round's selection: its cumulative target, the sparsity reached, and the round's facts."""

    KIND: ClassVar[str] = "level"  # "level" is the project's word for a pruning round
    target: float  # the round's cumulative target (a sparsity, or a MACs ratio: target_kind)
    target_kind: str  # "sparsity" | "macs" | another plan's budget
    sparsity: float  # fraction of the plan's units pruned (weights, or channel groups)
    facts: Mapping[str, Scalar] = field(default_factory=dict)  # the fit's T, d, solver, converged; channels_pruned

    def fields(self) -> dict[str, Any]:
        """Return target, target_kind, sparsity and the facts."""
        base = {"target": self.target, "target_kind": self.target_kind, "sparsity": self.sparsity}
        clash = sorted(set(self.facts) & set(base))
        if clash:
            raise ValueError(f"round facts {', '.join(clash)} would overwrite the round's own fields")
        return {**base, **self.facts}


@dataclass(frozen=True, kw_only=True)
class StageEvent(Event):
    """A stage's end: its epochs and where its outputs came from (``trained``, or ``shared`` for a grid's θ_pre)."""

    KIND: ClassVar[str] = "stage"
    epochs: int
    source: str = "trained"

    def fields(self) -> dict[str, Any]:
        """Return epochs and source."""
        return {"epochs": self.epochs, "source": self.source}


@dataclass(frozen=True, kw_only=True)
class SummaryEvent(Event):
    """The run's final numbers: summary.json's scalar fields."""

    KIND: ClassVar[str] = "summary"
    summary: Mapping[str, Scalar] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """Return the summary's scalar fields."""
        return dict(self.summary)


KINDS: dict[str, type[Event]] = {c.KIND: c for c in (EpochEvent, RoundEvent, StageEvent, SummaryEvent)}


def from_json(obj: Mapping[str, Any]) -> Event:
    """Return the event a metrics.jsonl line holds (`Event.to_json`'s inverse).

    Raises ValueError for a line of another schema (no ``event`` kind known here, or a
    common field missing).
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"an event is a JSON object, got {type(obj).__name__}")
    kind = obj.get("event")
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r} (known: {', '.join(KINDS)})")
    missing = [k for k in COMMON if k not in obj]
    if missing:
        raise ValueError(f"a {kind} event without {', '.join(missing)}")
    common = {"time": obj["time"], "stage": obj["stage"], "level": obj["level"], "step": obj["step"]}
    own = {k: v for k, v in obj.items() if k not in COMMON}
    if kind == "epoch":
        return EpochEvent(**common, epoch=own.pop("epoch"), metrics=own)
    if kind == "level":
        return RoundEvent(**common, target=own.pop("target"), target_kind=own.pop("target_kind"),
                          sparsity=own.pop("sparsity"), facts=own)  # fmt: skip
    if kind == "stage":
        return StageEvent(**common, epochs=own["epochs"], source=own["source"])
    return SummaryEvent(**common, summary=own)


def read_events(path: str | Path) -> list[Event] | None:
    """Return the events of a metrics.jsonl file ([] when it does not exist).

    A last line cut short (a process killed while writing it) is left out. Returns None
    when an earlier line is not an event of this schema (a file written by an older
    version): the caller keeps such a file as it is.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # cut short
            return None
        try:
            out.append(from_json(obj))
        except (ValueError, TypeError):
            return None
    return out


@runtime_checkable
class EventSink(Protocol):
    """Where a run's events go: metrics.jsonl (`runfolder.MetricsFile`), a tracker, or several (`Sinks`)."""

    def emit(self, event: Event) -> None:
        """Take one event."""
        ...

    def close(self) -> None:
        """Flush and release what the sink holds (the run attempt is over)."""
        ...


class NullSink:
    """A sink that drops every event (a process that does not write the run's files)."""

    def emit(self, event: Event) -> None:
        """Drop `event`."""

    def close(self) -> None:
        """Nothing to release."""


class Sinks:
    """Several sinks as one: each event goes to every sink, in order; `close` closes them all."""

    def __init__(self, sinks: Iterable[EventSink] = ()) -> None:
        self.sinks = list(sinks)

    def emit(self, event: Event) -> None:
        """Send `event` to every sink."""
        for s in self.sinks:
            s.emit(event)

    def close(self) -> None:
        """Close every sink (all of them, even when one fails; the first failure is raised)."""
        error: BaseException | None = None
        for s in self.sinks:
            try:
                s.close()
            except Exception as e:  # the others still close
                error = error or e
        if error is not None:
            raise error


def stage_level(stage: str) -> int | None:
    """Return the pruning round of a stage name (``level_3`` → 3; None for pre, post and others)."""
    if stage.startswith("level_") and stage[6:].isdigit():
        return int(stage[6:])
    return None


__all__ = ["COMMON", "KINDS", "EpochEvent", "Event", "EventSink", "NullSink", "RoundEvent", "Sinks", "StageEvent",
           "SummaryEvent", "from_json", "read_events", "stage_level"]  # fmt: skip
