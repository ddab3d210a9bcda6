"""Experiment trackers as event sinks: TensorBoard and MLflow (config key ``track``; ``--track``).

Each tracker is an `events.EventSink` fed the same events as metrics.jsonl, so the driver
imports no tracker: it asks `sinks` for the config's trackers and emits through them.

    tensorboard   event files in ``<run>/tensorboard/`` (torch.utils.tensorboard.SummaryWriter)
    mlflow        one MLflow run per causalprune run, in the experiment named after the config
                  (``name``), at ``MLFLOW_TRACKING_URI`` when set, else an SQLite store
                  ``<root>/mlflow.db`` (artifacts in ``<root>/mlartifacts``)

What each records, under one set of tag names: ``epoch/<metric>`` (train_loss, val_accuracy,
..., plus ``epoch/sparsity`` — the network's while the epoch trained, the previous round's —
and ``epoch/round``, the round the epoch belongs to) at the run's global
step; ``round/<fact>`` for a round's numeric facts (target, sparsity, T, d or G, alpha, nnz,
solve time, first-order coefficient: whatever the round's event carries); ``summary/<field>``
for summary.json's scalar fields; the resolved config as parameters (flattened keys:
``train.lr``); MLflow also keeps summary.json (and, for ``compare``, table.md) as artifacts.

A resumed run: TensorBoard's folder is rewritten from the start (the driver replays the
restored stages' events, so it ends as an uninterrupted run's would); MLflow's run id is kept
in ``<run>/mlflow.json`` and the run is resumed: a value the MLflow run holds at a step is not
logged again (the replayed stages, and the epochs of a stage cut short and trained anew: a
resumed run gives an uninterrupted run's numbers, so the values kept are the same).

The trackers are imported lazily, inside the sinks; a missing one is one line naming the
extra (``pip install 'causalprune[track]'``), raised by `check` before anything runs.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from .config import Config, ConfigError
from .events import EpochEvent, Event, EventSink, RoundEvent, SummaryEvent
from .io import save_json

#: tracker name → the modules it needs (the ``track`` extra installs them)
TRACKERS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard",),
    "mlflow": ("mlflow",),
}
SQLITE_MODULES = ("sqlalchemy", "alembic")  # MLflow's SQLite store (the default, no MLFLOW_TRACKING_URI)
GRID_FILES = ("table.md", "table.csv", "figures")  # a grid's outputs kept as artifacts (those that exist)
STATE = "mlflow.json"  # in the run folder: the MLflow run a resumed run continues
_PARAM_BATCH = 100  # MLflow's limit of parameters per log_batch call


def _import(module: str) -> ModuleType:
    """Import `module` (one place, so tests can make a tracker look missing)."""
    return importlib.import_module(module)


def check(names: Sequence[str]) -> None:
    """Refuse an unknown or duplicated tracker, or one whose packages are not installed (config key ``track``)."""
    valid = ", ".join(TRACKERS)
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"unknown tracker {name!r} (config key track, --track); valid: {valid}")
    if len(set(names)) < len(names):
        raise ConfigError(f"track names a tracker twice: {', '.join(names)}")
    for name in names:
        needed = TRACKERS[name]
        if name == "mlflow" and _default_uri_is_sqlite():
            needed = (*needed, *SQLITE_MODULES)
        for module in needed:
            try:
                _import(module)
            except ImportError:
                raise ConfigError(f"track {name} needs the package {module!r}, which is not installed: "
                                  "pip install 'causalprune[track]'") from None  # fmt: skip


def _default_uri_is_sqlite() -> bool:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return not uri or uri.startswith("sqlite:")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Return the nested config dict `d` as ``section.key`` → value strings (lists as JSON)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


def mlflow_uri(root: str | os.PathLike[str]) -> str:
    """Return the MLflow tracking URI: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<root>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def scalars(event: Event, state: dict[str, float]) -> dict[str, float]:
    """Return an event's numeric values under their tag names (`state`: the last round and its sparsity)."""
    if isinstance(event, EpochEvent):
        if event.level is not None:
            state["round"] = float(event.level)
        out = {f"epoch/{k}": float(v) for k, v in event.metrics.items() if _numeric(v) and k != "epoch"}
        out["epoch/sparsity"] = state.get("sparsity", 0.0)
        out["epoch/round"] = state.get("round", 0.0)
        return out
    if isinstance(event, RoundEvent):
        state["sparsity"], state["round"] = float(event.sparsity), float(event.level or 0)
        out = {"round/target": float(event.target), "round/sparsity": float(event.sparsity)}
        out.update({f"round/{k}": float(v) for k, v in event.facts.items() if _numeric(v)})
        return out
    if isinstance(event, SummaryEvent):
        return {f"summary/{k}": float(v) for k, v in event.summary.items() if _numeric(v)}
    return {}


def _numeric(v: Any) -> bool:
    return isinstance(v, int | float) and v == v  # bools are ints; NaN left out


class TensorBoardSink:
    """A run's events as TensorBoard scalars in ``<run>/tensorboard/`` (rewritten from the start on resume)."""

    def __init__(self, run_dir: str | os.PathLike[str], params: Mapping[str, str]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # lazily: needs the tensorboard package

        self.path = Path(run_dir) / "tensorboard"
        if self.path.exists():  # a resumed run: the driver replays every restored event
            shutil.rmtree(self.path)
        self.writer = SummaryWriter(log_dir=str(self.path))
        self.state: dict[str, float] = {}
        table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", f"| key | value |\n|---|---|\n{table}", global_step=0)

    def emit(self, event: Event) -> None:
        """Write the event's scalars at its global step and wall time."""
        for tag, value in scalars(event, self.state).items():
            self.writer.add_scalar(tag, value, global_step=event.step, walltime=event.time)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


class MLflowSink:
    """A run's events as one MLflow run (resumed by the id kept in ``<run>/mlflow.json``)."""

    def __init__(self, run_dir: str | os.PathLike[str], experiment: str, params: Mapping[str, str],
                 uri: str) -> None:  # fmt: skip
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient  # lazily: needs the mlflow package

        # MLflow's SQLite store on SQLAlchemy 2.1 warns about its own queries: not the user's concern
        warnings.filterwarnings("ignore", message="The ``noload`` loader strategy is deprecated")
        self.run_dir = Path(run_dir)
        self.client = MlflowClient(tracking_uri=uri)
        self.state: dict[str, float] = {}
        self.logged: set[tuple[str, int]] = set()  # (key, step) the MLflow run holds already (a resumed run)
        previous = self._previous(uri)
        if previous is not None:
            self.run_id = previous
            for key in self.client.get_run(previous).data.metrics:
                self.logged.update((key, m.step) for m in self.client.get_metric_history(previous, key))
            self.client.update_run(self.run_id, status="RUNNING")
            return
        exp_id = experiment_id(self.client, experiment, uri)
        run = self.client.create_run(exp_id, run_name=self.run_dir.name if self.run_dir.name else None,
                                     tags={"causalprune.run_dir": str(self.run_dir.resolve())})  # fmt: skip
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _PARAM_BATCH])
        save_json({"tracking_uri": uri, "experiment_id": exp_id, "run_id": self.run_id}, self.run_dir / STATE)

    def _previous(self, uri: str) -> str | None:
        """Return the MLflow run id a resumed run continues (same store, run still there), else None."""
        path = self.run_dir / STATE
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if state.get("tracking_uri") != uri:
                return None
            run = self.client.get_run(state["run_id"])
        except Exception:  # a damaged file, or a run deleted from the store: start a new one
            return None
        return None if run.info.lifecycle_stage == "deleted" else str(state["run_id"])

    def emit(self, event: Event) -> None:
        """Log the event's scalars at its global step (not those a resumed MLflow run holds at that step)."""
        from mlflow.entities import Metric

        stamp = int(event.time * 1000)
        metrics = [Metric(k, v, stamp, event.step) for k, v in scalars(event, self.state).items()
                   if (k, event.step) not in self.logged]  # fmt: skip
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        """Keep summary.json as an artifact; end the MLflow run (FINISHED, or FAILED when the run did not finish)."""
        summary = self.run_dir / "summary.json"
        if summary.exists():
            self.client.log_artifact(self.run_id, str(summary))
        self.client.set_terminated(self.run_id, status="FINISHED" if summary.exists() else "FAILED")


def experiment_id(client: Any, name: str, uri: str) -> str:
    """Return the id of MLflow experiment `name`, created if needed (artifacts beside an SQLite store)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except Exception:  # another process created it meanwhile
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def sinks(cfg: Config, run_dir: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> list[EventSink]:
    """Return the sinks of the config's trackers for a run in `run_dir` (MLflow's default store under `root`).

    `root` defaults to the run folder's parent.
    """
    if not cfg.track:
        return []
    params = flatten(cfg.to_dict())
    out: list[EventSink] = []
    for name in cfg.track:
        if name == "tensorboard":
            out.append(TensorBoardSink(run_dir, params))
        elif name == "mlflow":
            uri = mlflow_uri(root if root is not None else Path(run_dir).parent)
            out.append(MLflowSink(run_dir, cfg.name, params, uri))
        else:
            check([name])
    return out


def grid_store(track: Sequence[str], root: str | os.PathLike[str], experiment: str) -> None:
    """Point a grid's runs at MLflow's default store in the grid's folder (unless ``MLFLOW_TRACKING_URI`` is set).

    Sets ``MLFLOW_TRACKING_URI`` for this process and the run processes it starts, and
    creates the store and the experiment here, before several processes would at once.
    """
    check(track)  # before anything is written
    if "mlflow" not in track:
        return
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        Path(root).mkdir(parents=True, exist_ok=True)
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_uri(root)
    from mlflow.tracking import MlflowClient

    warnings.filterwarnings("ignore", message="The ``noload`` loader strategy is deprecated")
    uri = mlflow_uri(root)
    experiment_id(MlflowClient(tracking_uri=uri), experiment, uri)


def log_grid_artifacts(track: Sequence[str], experiment: str, root: str | os.PathLike[str],
                       paths: Sequence[str | os.PathLike[str]] | None = None) -> None:  # fmt: skip
    """Keep a grid's files and folders as artifacts of one MLflow run ``grid`` in `experiment`.

    `paths` defaults to `GRID_FILES` under `root` (table.md, table.csv, figures/), those that exist.
    """
    if "mlflow" not in track:
        return
    from mlflow.tracking import MlflowClient

    uri = mlflow_uri(root)
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(experiment_id(client, experiment, uri), run_name="grid",
                            tags={"causalprune.grid": str(Path(root).resolve())})  # fmt: skip
    for p in map(Path, paths if paths is not None else [Path(root) / n for n in GRID_FILES]):
        if p.is_dir():
            client.log_artifacts(run.info.run_id, str(p), artifact_path=p.name)
        elif p.exists():
            client.log_artifact(run.info.run_id, str(p))
    client.set_terminated(run.info.run_id)


__all__ = ["GRID_FILES", "STATE", "TRACKERS", "MLflowSink", "TensorBoardSink", "check", "flatten", "grid_store",
           "log_grid_artifacts", "mlflow_uri", "scalars", "sinks"]  # fmt: skip
