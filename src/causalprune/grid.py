"""One grid planner for `compare` and `sweep`: every combination of key values becomes one run.

A grid is a list of (config key, values). A method is only varied along keys it reads
(`criteria.Criterion.reads_key`): ``magnitude`` runs once whatever ``causal.solver``
takes, ``dense`` once whatever the sparsity. Every cell is resolved (`resolve.check`)
when planned, so a bad value fails before any run starts. Runs of a grid share θ_pre per
seed through the cache folder ``<out>/_pre`` (pre-training reads neither the method nor
its settings), which is also what makes paired differences meaningful.

A grid runs as tasks (`tasks`, `run_cells`) on an `executors.Executor`: the first cell that
trains each shared θ_pre goes first, the cells that read it after it. A cell that fails
does not stop the others: it leaves one `Failed` line naming its folder, and its traceback
in ``<folder>/error.log``. The executor decides each cell's CPU threads (`run_cell`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import criteria, resolve
from .config import Config, ConfigError, check_key, config_from_dict, dump_config, yaml_problem
from .executors import Executor, Outcome, Task
from .experiment import run_experiment
from .io import save_text
from .platform import current as current_platform
from .runfolder import RunFolder, RunFolderBusy, pre_cache_dir, wait_for_lock

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


def pre_folder(out: Path) -> Path:
    """Return the folder of the θ_pre cache shared by the runs of the grid under `out`."""
    return out / "_pre"


def run_cell(cfg: Config, folder: str, label: str, pre_cache: str, *, threads: int) -> dict[str, Any]:
    """Run, resume or read back one cell in `folder`; return its summary with ``label`` and ``run_dir``.

    `threads` is the executor's choice of CPU threads; a config that sets ``train.threads``
    keeps its own, and a resumed run the count it started with (its float sums stay the
    same). A folder that another process is working in (a concurrent grid over the same
    folder) is waited for, then read back or continued.
    """
    path = Path(folder)
    if cfg.train.threads is None:
        threads = RunFolder(path).started_threads() or threads
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
    while True:
        try:
            summary = run_experiment(cfg, path, pre_cache=pre_cache, quiet=True)
            break
        except RunFolderBusy:
            wait_for_lock(path)
    if current_platform().is_primary:
        save_text(label + "\n", path / "label.txt")
        (path / "error.log").unlink(missing_ok=True)  # a failure of an earlier attempt
    return {**summary, "label": label, "run_dir": folder}


def run_cell_launched(cfg: Config, folder: str, label: str, pre_cache: str, nproc: int, *,
                      threads: int) -> dict[str, Any]:  # fmt: skip
    """Run, resume or read back one cell as `nproc` processes (``causalprune run --nproc``); return its summary.

    The task's `threads` are shared among its processes (``train.threads`` of each: the
    config's, a resumed run's, else ``threads // nproc``). The cell's resolved config goes to
    ``<folder>.launch.yaml``, the command's output to ``<folder>.launch.log``. A distributed run
    trains its own θ_pre (`pre_cache` unused, as under ``compare --nproc``). A failure is one
    line naming the folder and, for a crash, its ``logs/rank_<r>.log``.
    """
    path = Path(folder)
    if RunFolder(path).finished():
        summary = RunFolder(path).summary()
    else:
        if cfg.train.threads is None:
            own = RunFolder(path).started_threads() or max(1, threads // nproc)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=own))
        path.parent.mkdir(parents=True, exist_ok=True)
        config, log = path.parent / f"{path.name}.launch.yaml", path.parent / f"{path.name}.launch.log"
        save_text(dump_config(cfg), config)
        env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_ENV}
        env["OMP_NUM_THREADS"] = str(cfg.train.threads)
        command = [sys.executable, "-m", "causalprune", "run", str(config), "--out", str(path), "--nproc", str(nproc)]
        with open(log, "w", encoding="utf-8") as sink:
            code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env).returncode
        if code != 0:
            said = [ln.removeprefix("causalprune: error: ") for ln in log.read_text().splitlines()
                    if ln.startswith("causalprune: error: ")]  # fmt: skip
            logs = f"; rank logs: {path / 'logs' / 'rank_<r>.log'}" if (path / "logs").is_dir() else ""
            raise RuntimeError(f"causalprune run --nproc {nproc} of {path} exited with code {code}: "
                               f"{said[-1] if said else 'no error line'} (output in {log}){logs}")  # fmt: skip
        summary = RunFolder(path).summary()
    save_text(label + "\n", path / "label.txt")
    (path / "error.log").unlink(missing_ok=True)  # a failure of an earlier attempt
    return {**summary, "label": label, "run_dir": folder}


#: torchrun's variables: a task started inside another distributed run must not join it
_TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_RUN_ID", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE")  # fmt: skip


def tasks(cells: Sequence[Cell], out: Path, nproc: int = 1) -> list[Task]:
    """Return one `run_cell` task per cell, keyed by its folder; cells sharing a θ_pre run after the first of them.

    The first cell that trains each shared θ_pre (a method that prunes; ``dense`` trains
    none) is that θ_pre's task; the others that read it name it in ``after``. With `nproc` > 1
    each task is `run_cell_launched` (one run as `nproc` processes) and asks for `nproc` ×
    ``train.threads`` CPUs when the config sets them.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    first: dict[Path, str] = {}
    out_tasks = []
    for cell in cells:
        key = str(cell.folder)
        after: tuple[str, ...] = ()
        if criteria.get(cell.config.prune.method).prunes:
            shared = pre_cache_dir(cell.config, pre_folder(out))
            after = (first[shared],) if shared in first else ()
            first.setdefault(shared, key)
        args = (cell.config, str(out / cell.folder), cell.label, str(pre_folder(out)))
        threads = cell.config.train.threads
        if nproc > 1:
            out_tasks.append(Task(key, run_cell_launched, (*args, nproc), after, threads and nproc * threads))
            continue
        out_tasks.append(Task(key, run_cell, args, after, threads))
    return out_tasks


@dataclass(frozen=True)
class Failed:
    """A cell that failed: its run folder, the error in one line, and the file holding its traceback."""

    cell: Cell
    folder: Path
    error: str
    log: Path | None

    def __str__(self) -> str:
        where = f"; traceback in {self.log}" if self.log is not None else ""
        return f"{self.cell.label} seed {self.cell.config.seed} failed in {self.folder}: {self.error}{where}"


def _failed(cell: Cell, out: Path, outcome: Outcome, write: bool) -> Failed:
    """The `Failed` of a cell's outcome; its error and traceback go to ``<folder>/error.log`` if `write`."""
    folder = out / cell.folder
    error = outcome.error or "failed"
    if not write:
        return Failed(cell, folder, error, None)
    log = folder / "error.log"
    try:
        save_text(f"{error}\n\n{outcome.detail}", log)
    except OSError:
        return Failed(cell, folder, error, None)
    return Failed(cell, folder, error, log)


class Progress:
    """One live line of counts, ``<d> done, <r> running, <f> failed, <q> queued``, as tasks start and end.

    On a terminal the line is redrawn in place; otherwise one line is printed as each task ends.
    """

    def __init__(self, total: int) -> None:
        self.total, self.running, self.done, self.failed = total, 0, 0, 0
        self.tty = sys.stdout.isatty()

    def line(self) -> str:
        """Return the counts as one line."""
        queued = self.total - self.running - self.done - self.failed
        return f"{self.done} done, {self.running} running, {self.failed} failed, {queued} queued"

    def started(self, task: Task) -> None:
        """Count `task` as running (submitted to the executor)."""
        self.running += 1
        if self.tty:
            print("\r" + self.line(), end="", flush=True)

    def ended(self, outcome: Outcome) -> None:
        """Count a task's end: done, or failed."""
        self.running -= 1
        self.done, self.failed = self.done + outcome.ok, self.failed + (not outcome.ok)
        print(("\r" if self.tty else "") + self.line(), end="" if self.tty else "\n", flush=True)

    def close(self) -> None:
        """End the live line."""
        if self.tty:
            print(flush=True)


def run_cells(cells: Sequence[Cell], out: Path, executor: Executor, describe: Callable[[Cell], str] | None = None,
              nproc: int = 1) -> tuple[list[dict[str, Any]], list[Failed]]:  # fmt: skip
    """Run every cell under `out` on `executor`; return the summaries of those that finished, and the failures.

    `nproc` > 1: each cell one ``causalprune run --nproc`` inside its task (`run_cell_launched`).

    Prints ``[i/n] <describe(cell)>`` as each starts (the primary process only, under torchrun);
    for an executor that says it is ``live`` (Ray, Slurm), one line of counts instead
    (`Progress`).
    """
    primary = current_platform().is_primary
    planned = tasks(cells, out, nproc)
    by_key = {t.key: c for t, c in zip(planned, cells, strict=True)}
    say = describe or (lambda c: f"{c.label} seed {c.config.seed}")
    count = itertools.count(1)

    def started(task: Task) -> None:
        if primary:
            print(f"[{next(count)}/{len(planned)}] {say(by_key[task.key])}", flush=True)

    if getattr(executor, "live", False):
        progress = Progress(len(planned))
        outcomes = executor.run(planned, progress.started, progress.ended)
        progress.close()
    else:
        outcomes = executor.run(planned, started)
    summaries = [o.value for o in outcomes if o.ok]
    failed = [_failed(c, out, o, primary) for c, o in zip(cells, outcomes, strict=True) if not o.ok]
    return summaries, failed


__all__ = ["Cell", "Failed", "Grid", "Progress", "parse_grid", "plan", "pre_folder", "run_cell", "run_cell_launched",
           "run_cells", "short", "slug", "tasks"]  # fmt: skip
