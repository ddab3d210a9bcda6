"""A run folder on disk: every file a run reads or writes, written atomically, in one place.

    <run>/config.yaml     resolved config, written before training starts
          env.json        versions and machine facts
          metrics.jsonl   one JSON object per event (epoch, level, stage, summary: `events`)
          timing.json     seconds per kind of work, carried across resumes
          pre/            checkpoint.pt: θ_pre, the rewind point
          level_<k>/      scores.pt, checkpoint.pt, mask.pt (written last: marks the level done)
          model.pt, mask.pt, summary.json (written last: marks the run done)

A θ_pre shared by several runs (a compare or sweep grid) lives in a cache folder keyed by
everything pre-training reads (`pre_cache_dir`); one process at a time looks it up and, if
missing, trains and saves it (`shared_pre_lock`), so concurrent runs pre-train it once.

Integrity: one process at a time works in a run folder (`lock`, an exclusive `flock` on
``<run>/.lock``); a folder that is not a causalprune run folder, or that holds another
config, is refused; a damaged file is reported by name with the command that recovers
(move the damaged stage aside and re-run: the stage is redone). Every error is a
`RunFolderError`, which the CLI prints as one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .config import SECTIONS, Config, ConfigError, dump_config, load_config, non_default
from .events import Event, EventSink, NullSink, read_events
from .io import append_jsonl, save_json, save_text, save_torch
from .masks import Mask


class RunFolderError(ValueError):
    """The run folder cannot be used as asked: another config's, in use, damaged, not writable."""


class RunFolderBusy(RunFolderError):
    """Another process holds the run folder's lock (`RunFolder.lock`); `wait_for_lock` waits until it is free."""


#: What reading a truncated or foreign torch file raises.
_DAMAGE = (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError)


def _damaged(path: Path, error: Exception, stage_dir: Path | None) -> RunFolderError:
    what = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if stage_dir is None:
        return RunFolderError(f"{path} is damaged ({what})")
    aside = stage_dir.with_name(stage_dir.name + ".damaged")
    return RunFolderError(f"{path} is damaged ({what}); to redo that stage: mv {stage_dir} {aside} "
                          "and re-run the same command")  # fmt: skip


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path,
                    stage_dir: Path | None) -> None:  # fmt: skip
    """`model.load_state_dict(state)`, reporting a state that does not fit as a damaged file `path`."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        raise _damaged(path, e, stage_dir) from None


def _load_torch(path: Path, device: torch.device | str, stage_dir: Path | None) -> Any:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except _DAMAGE as e:
        raise _damaged(path, e, stage_dir) from None


def _load_mask(path: Path, stage_dir: Path | None) -> Mask:
    try:
        return Mask.load(path)
    except _DAMAGE as e:
        raise _damaged(path, e, stage_dir) from None


def _load_json(path: Path, stage_dir: Path | None) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise _damaged(path, e, stage_dir) from None


def default_run_dir(cfg: Config, root: str | Path = "runs") -> Path:
    """Return runs/<config-name>-<short-hash>/seed_<n> for a config."""
    h = cfg.digest(keys=("name", "data", "model", "train", "prune", *SECTIONS))
    return Path(root) / f"{cfg.name}-{h}" / f"seed_{cfg.seed}"


def pre_cache_dir(cfg: Config, root: Path) -> Path:
    """Folder of the θ_pre checkpoint shared by runs that agree on everything pre-training reads."""
    d, defaults = cfg.identity(), Config().identity()
    train = {k: v for k, v in d["train"].items() if not k.startswith("post_")}  # post-training only
    key = {"seed": d["seed"], "data": non_default(d["data"], defaults["data"]),
           "model": non_default(d["model"], defaults["model"]), "train": non_default(train, defaults["train"]),
           "n_pre": d["prune"]["n_pre"]}  # fmt: skip
    for section, cls in SECTIONS.items():  # fields every run reads (causal.probe_size: the data split)
        key.update({name: d[section][name] for name in getattr(cls, "SHARED", ())})
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return root / f"pre-{h}"


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix[:-1]]


def _writes(method: Callable[..., None]) -> Callable[..., None]:
    """A `RunFolder` method that writes: it does nothing in a folder that is not the writer."""

    @functools.wraps(method)
    def guarded(self: RunFolder, *args: Any, **kwargs: Any) -> None:
        if self.writer:
            method(self, *args, **kwargs)

    return guarded


class RunFolder:
    """The files of one run.

    `writer` is False on every process of a distributed run but the primary: such a folder
    reads as usual and writes nothing (its write methods return at once, it takes no lock).
    """

    def __init__(self, path: str | Path, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer

    # --- the folder as a whole ----------------------------------------------------------
    def exists(self) -> bool:
        """Whether a run was started here (its config.yaml exists)."""
        return (self.path / "config.yaml").exists()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's exclusive lock (creating the folder); refuse if another process holds it.

        Also checks that the folder is writable, before any training. Folders it created are
        removed again when it is released with nothing but the lock file in them (the run
        refused its input before writing anything).
        """
        if not self.writer:
            yield
            return
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file, not a folder; choose another --out")
        created = [p for p in (self.path, *self.path.parents) if not p.exists()]  # innermost first
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise RunFolderError(f"cannot write to {self.path} ({e.strerror}); choose another --out") from None
        locked = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise RunFolderBusy(f"{self.path} is in use by another process (pid {holder}); wait for it to "
                                     "finish or choose another --out") from None  # fmt: skip
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            if not os.access(self.path, os.W_OK):
                raise RunFolderError(f"cannot write to {self.path} (not writable); choose another --out")
            yield
        finally:
            if locked and created:
                self._remove_unused(created)
            os.close(fd)  # releases the lock

    def _remove_unused(self, created: list[Path]) -> None:
        """Remove the lock file and the `created` folders (innermost first) if the run wrote nothing there."""
        with contextlib.suppress(OSError):
            if [p.name for p in self.path.iterdir()] == [".lock"]:
                (self.path / ".lock").unlink()
                for folder in created:
                    folder.rmdir()  # stops at the first folder that holds something else

    def claim(self, cfg: Config) -> None:
        """Refuse a folder whose config.yaml differs from `cfg`; write it if the folder is new."""
        existing = self.path / "config.yaml"
        if not existing.exists() and (self.path / "summary.json").exists():
            raise RunFolderError(f"{self.path} holds a summary.json but no config.yaml: it is not a causalprune run "
                                 "folder; choose another --out")  # fmt: skip
        if existing.exists():
            try:
                old = load_config(existing)
            except ConfigError as e:
                raise RunFolderError(f"{self.path} holds an unreadable config.yaml ({e}); "
                                     "choose another --out") from None  # fmt: skip
            a, b = old.identity(), cfg.identity()  # train.threads may change on resume
            if a != b:
                diff = sorted(_diff_keys(a, b))
                raise RunFolderError(f"{self.path} holds a run with a different config (differs in "
                                     f"{', '.join(diff[:5])}); choose another --out or delete the folder")  # fmt: skip
            return
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
            save_text(dump_config(cfg), existing)

    def started_threads(self) -> int | None:
        """Return the threads the run started with (env.json), or None for a new run."""
        path = self.path / "env.json"
        return _load_json(path, None).get("threads") if path.exists() else None

    @_writes
    def write_env(self, env: dict[str, Any]) -> None:
        """Write env.json once (the first start of the run)."""
        if not (self.path / "env.json").exists():
            save_json(env, self.path / "env.json")

    def events(self) -> EventSink:
        """Return the sink of the run's events: metrics.jsonl (`MetricsFile`); nothing in a folder it does not write."""
        return MetricsFile(self.path / "metrics.jsonl") if self.writer else NullSink()

    def read_events(self) -> list[Event]:
        """Return the events metrics.jsonl holds (none for a new run, or a file of an older schema)."""
        return read_events(self.path / "metrics.jsonl") or []

    # --- timing -------------------------------------------------------------------------
    def load_timing(self) -> dict[str, float]:
        """Return the seconds recorded so far (empty for a new run)."""
        path = self.path / "timing.json"
        return _load_json(path, None) if path.exists() else {}

    @_writes
    def save_timing(self, timing: dict[str, float]) -> None:
        """Write timing.json."""
        save_json(timing, self.path / "timing.json")

    # --- θ_pre ----------------------------------------------------------------------------
    @property
    def pre_checkpoint(self) -> Path:
        """Path of θ_pre."""
        return self.path / "pre" / "checkpoint.pt"

    def load_pre(self, device: torch.device) -> dict[str, torch.Tensor] | None:
        """Return this run's θ_pre on `device`, or None if the pre stage has not finished."""
        ckpt = self.pre_checkpoint
        return _load_torch(ckpt, device, ckpt.parent) if ckpt.exists() else None

    @_writes
    def save_pre(self, theta: dict[str, torch.Tensor]) -> None:
        """Write θ_pre."""
        save_torch(theta, self.pre_checkpoint)

    # --- levels ---------------------------------------------------------------------------
    def level_dir(self, k: int) -> Path:
        """Folder of pruning round `k` (1-based)."""
        return self.path / f"level_{k}"

    def level_done(self, k: int) -> bool:
        """Whether round `k` finished (its mask and checkpoint exist)."""
        d = self.level_dir(k)
        return (d / "mask.pt").exists() and (d / "checkpoint.pt").exists()

    def load_level(self, k: int, device: torch.device,
                   like: Mask | None = None) -> tuple[Mask, dict[str, torch.Tensor]]:  # fmt: skip
        """Return round `k`'s mask and model state; a mask whose names or shapes differ from `like` is refused."""
        d = self.level_dir(k)
        mask = _load_mask(d / "mask.pt", d)
        if like is not None and {n: tuple(t.shape) for n, t in mask.items()} != \
                {n: tuple(t.shape) for n, t in like.items()}:  # fmt: skip
            theirs = ", ".join(f"{n} {tuple(t.shape)}" for n, t in mask.items())
            raise _damaged(d / "mask.pt", ValueError(f"a mask of another model: {theirs}; this run's model has "
                           + ", ".join(f"{n} {tuple(t.shape)}" for n, t in like.items())), d)  # fmt: skip
        return mask, _load_torch(d / "checkpoint.pt", device, d)

    @_writes
    def save_level(self, k: int, scores: dict[str, Any], state: dict[str, torch.Tensor], mask: Mask) -> None:
        """Write round `k`'s scores, model state and mask (the mask last: it marks the round done)."""
        d = self.level_dir(k)
        save_torch(scores, d / "scores.pt")
        save_torch(state, d / "checkpoint.pt")
        mask.save(d / "mask.pt")

    # --- the end ------------------------------------------------------------------------
    def load_result(self, model: torch.nn.Module,
                    prepare: Callable[[torch.nn.Module, Mask], torch.nn.Module] | None = None) -> Mask:  # fmt: skip
        """Load the finished run's model.pt into `model` and return its mask.pt (damaged files named).

        `prepare(model, mask)` runs before the weights are loaded: a channel run's model.pt
        holds the slim network, so its caller slims the freshly built dense model first
        (`structured.slim_to_mask`).
        """
        mask = _load_mask(self.path / "mask.pt", None)
        if prepare is not None:
            prepare(model, mask)
        state = _load_torch(self.path / "model.pt", "cpu", None)
        load_state_into(model, state, self.path / "model.pt", None)
        return mask

    def finished(self) -> bool:
        """Whether the run finished (summary.json exists)."""
        return (self.path / "summary.json").exists()

    def summary(self) -> dict[str, Any]:
        """Return the finished run's summary (refusing a damaged one, naming it)."""
        path = self.path / "summary.json"
        s = _load_json(path, path)  # damaged: moving it aside redoes the final stage
        if not isinstance(s, dict) or "method" not in s:
            raise RunFolderError(f"{path} is not a causalprune summary (no 'method'); choose another --out")
        return s

    @_writes
    def save_result(self, state: dict[str, torch.Tensor], mask: Mask, timing: dict[str, float],
                    summary: dict[str, Any]) -> None:  # fmt: skip
        """Write model.pt, mask.pt, timing.json and summary.json (the summary last: it marks the run done)."""
        save_torch(state, self.path / "model.pt")
        mask.save(self.path / "mask.pt")
        self.save_timing(timing)
        save_json(summary, self.path / "summary.json")


@contextlib.contextmanager
def shared_pre_lock(cache: Path | None) -> Iterator[None]:
    """Hold the exclusive lock of a shared θ_pre cache folder (``<cache>/.lock``), waiting for it if need be.

    Whoever holds it looks the cache up and, finding nothing, trains θ_pre and saves it before
    letting go; a process that waited then reads the saved θ_pre instead of training its own,
    so concurrent runs (a grid's processes, two grids over one folder) pre-train it once.
    `cache` None: nothing to lock.
    """
    if cache is None:
        yield
        return
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd = os.open(cache / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise RunFolderError(f"cannot write to the θ_pre cache {cache} ({e.strerror}); choose another --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def wait_for_lock(path: Path) -> None:
    """Return once no process holds the run folder `path`'s lock (at once if it has no lock file)."""
    try:
        fd = os.open(path / ".lock", os.O_RDWR)
    except OSError:  # no lock file: nobody holds it (or it was removed with the folder it guarded)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)


def load_shared_pre(cache: Path, device: torch.device) -> tuple[dict[str, torch.Tensor], float] | None:
    """Return (θ_pre on `device`, seconds it took to train) from a shared cache folder, or None if it has none.

    Both files are written atomically and the checkpoint last (`save_shared_pre`), so a
    checkpoint that exists is complete and its timing.json is there.
    """
    ckpt = cache / "checkpoint.pt"
    if not ckpt.exists():
        return None
    theta = _load_torch(ckpt, device, cache)
    return theta, _load_json(cache / "timing.json", cache)["pre_s"]


def save_shared_pre(cache: Path, theta: dict[str, torch.Tensor], seconds: float) -> None:
    """Write θ_pre and its training time to a shared cache folder, each atomically (the checkpoint last)."""
    save_json({"pre_s": seconds}, cache / "timing.json")
    save_torch(theta, cache / "checkpoint.pt")


class MetricsFile:
    """The run's metrics.jsonl as an event sink: one JSON object per event (`events.Event.to_json`), appended.

    A resumed run re-emits the events of the stages it restored (the driver replays them
    from this file): while they match the file's first lines nothing is written. The first
    event that does not (the first stage done anew) rewrites the file atomically as the
    matched lines followed by it, dropping the events of a stage that was cut short — so a
    resumed run's file holds the events an uninterrupted run's would, and a process killed at
    any moment leaves either the old file or the new one. A file of an older schema is only
    appended to.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        previous = read_events(self.path)
        self._written = previous is None  # an older schema: append only
        self._previous = [e.to_json() for e in previous or []]
        self._matched = 0  # the file's first lines re-emitted so far

    def emit(self, event: Event) -> None:
        """Write `event` (unless it is the next line the file already holds)."""
        line = event.to_json()
        if not self._written:
            if self._matched < len(self._previous) and self._previous[self._matched] == line:
                self._matched += 1
                return
            kept = self._previous[: self._matched]
            save_text("".join(json.dumps(e) + "\n" for e in [*kept, line]), self.path)
            self._written = True
            return
        append_jsonl(line, self.path)

    def close(self) -> None:
        """Nothing held between events (each is written when emitted)."""

