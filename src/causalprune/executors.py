"""Executors: run planned tasks, in the order their dependencies allow, and return their outcomes.

A grid (`compare`, `sweep`) is a list of `Task`s (`grid.tasks`): a function, its arguments,
and the tasks that must have ended before it starts (``after``: the run that trains a shared
θ_pre before the runs that read it). An `Executor` runs them and returns one `Outcome` per
task, in task order: its value, or its error as one line plus the traceback. A failed task
does not stop the others, and the tasks after it still run: ``after`` orders, it does not
gate (a run that finds no shared θ_pre trains it itself, under the cache's lock).

The executor decides each task's CPU threads and passes them as ``fn(*args, threads=n)``;
the task applies them (a run: ``train.threads``) and never learns which executor ran it.
Here: `Sequential` (one task after another in this process) and `LocalPool` (N spawned
processes on this machine, the cores shared among them); `executors_ray.RayExecutor` and
`executors_slurm.SlurmExecutor` implement the same `Executor` protocol on a cluster.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .experiment import available_cores
from .platform import current as current_platform


@dataclass(frozen=True)
class Task:
    """One unit of work: ``fn(*args, threads=n)``, started once the tasks named in `after` have ended.

    For a process pool `fn` and `args` must pickle (a module-level function).
    """

    key: str  # unique among the tasks of one `Executor.run`
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    after: tuple[str, ...] = ()  # keys of tasks that end (finished or failed) before this one starts
    threads: int | None = None  # CPU threads the task sets itself (a run's train.threads); None: the executor's


@dataclass(frozen=True)
class Outcome:
    """What one task left: its value, or the one-line error and the traceback of its failure."""

    key: str
    value: Any = None
    error: str | None = None  # ``Type: message`` on one line; None: it finished
    detail: str = ""  # the failure's traceback

    @property
    def ok(self) -> bool:
        """Whether the task finished without an error."""
        return self.error is None


Started = Callable[[Task], None]
Ended = Callable[[Outcome], None]


class Executor(Protocol):
    """Runs tasks with dependencies and returns their outcomes (one per task, in task order)."""

    def run(self, tasks: Sequence[Task], started: Started | None = None, ended: Ended | None = None) -> list[Outcome]:
        """Run every task after those it names in ``after``; call `started` / `ended` as each starts and ends."""
        ...


def order(tasks: Sequence[Task]) -> list[Task]:
    """Return `tasks` in an order where each comes after those it names (else in the given order).

    A duplicated key, an unknown ``after`` key or a cycle is a ValueError naming it.
    """
    keys = [t.key for t in tasks]
    by_key = {t.key: t for t in tasks}
    if len(by_key) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"task key {dup!r} is given twice; every task needs its own key")
    for t in tasks:
        unknown = [k for k in t.after if k not in by_key]
        if unknown:
            raise ValueError(f"task {t.key!r} runs after {unknown[0]!r}, which is not one of the tasks")
    done: set[str] = set()
    out: list[Task] = []
    while len(out) < len(tasks):
        ready = [t for t in tasks if t.key not in done and all(k in done for k in t.after)]
        if not ready:
            stuck = next(t for t in tasks if t.key not in done)
            raise ValueError(f"tasks wait on each other in a cycle (e.g. {stuck.key!r} after {stuck.after[0]!r})")
        out.append(ready[0])
        done.add(ready[0].key)
    return out


def _call(fn: Callable[..., Any], args: tuple[Any, ...], threads: int) -> tuple[Any, str | None, str]:
    """Run one task; return (value, None, "") or (None, one-line error, traceback). Interrupts propagate."""
    try:
        return fn(*args, threads=threads), None, ""
    except Exception as e:  # a failed task is reported, the others go on
        message = " ".join(str(e).split())
        return None, f"{type(e).__name__}: {message}" if message else type(e).__name__, traceback.format_exc()


def _share(jobs: int) -> int:
    """The threads of each of `jobs` tasks running at once: this machine's cores shared among them.

    The processes of a distributed run (torchrun) share the cores too.
    """
    return max(1, available_cores() // (max(1, jobs) * current_platform().local_world_size))


class Sequential:
    """Run the tasks one after another in this process, each with every core.

    `catch=False` lets a failure propagate at once instead (a distributed run: its ranks must
    stay in step, so one rank cannot skip a task the others run).
    """

    def __init__(self, catch: bool = True) -> None:
        self.catch = catch

    def run(self, tasks: Sequence[Task], started: Started | None = None, ended: Ended | None = None) -> list[Outcome]:
        """Run every task in dependency order; return their outcomes in task order."""
        threads = _share(1)
        outcomes: dict[str, Outcome] = {}
        for task in order(tasks):
            if started is not None:
                started(task)
            if self.catch:
                value, error, detail = _call(task.fn, task.args, threads)
            else:
                value, error, detail = task.fn(*task.args, threads=threads), None, ""
            outcomes[task.key] = Outcome(task.key, value, error, detail)
            if ended is not None:
                ended(outcomes[task.key])
        return [outcomes[t.key] for t in tasks]


class LocalPool:
    """Run up to `jobs` tasks at once, each in a process of a spawned pool, sharing this machine's cores.

    A task starts when a process is free and the tasks it names have ended (in task order
    among those ready). A process that dies (killed, out of memory) fails the tasks it was
    running; the pool is started again for the rest.
    """

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be a positive number of processes, got {jobs}")
        self.jobs = jobs

    def run(self, tasks: Sequence[Task], started: Started | None = None, ended: Ended | None = None) -> list[Outcome]:
        """Run every task once the tasks it names have ended; return their outcomes in task order."""
        pending = order(tasks)
        threads = _share(self.jobs)
        outcomes: dict[str, Outcome] = {}
        context = mp.get_context("spawn")  # a fresh interpreter: no inherited torch threads or CUDA state
        pool = cf.ProcessPoolExecutor(self.jobs, mp_context=context)
        running: dict[cf.Future[tuple[Any, str | None, str]], Task] = {}
        try:
            while pending or running:
                for task in [t for t in pending if all(k in outcomes for k in t.after)]:
                    if len(running) >= self.jobs:
                        break
                    pending.remove(task)
                    if started is not None:
                        started(task)
                    running[pool.submit(_call, task.fn, task.args, threads)] = task
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                broken = False
                for future in done:
                    task = running.pop(future)
                    try:
                        value, error, detail = future.result()
                    except cf.process.BrokenProcessPool:
                        value, error, detail = None, "a worker process died (killed, or out of memory)", ""
                        broken = True
                    outcomes[task.key] = Outcome(task.key, value, error, detail)
                    if ended is not None:
                        ended(outcomes[task.key])
                if broken:  # every task still running went down with it
                    for task in running.values():
                        outcomes[task.key] = Outcome(task.key, None, "a worker process died (killed, or out of "
                                                     "memory) while it ran", "")  # fmt: skip
                        if ended is not None:
                            ended(outcomes[task.key])
                    running.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = cf.ProcessPoolExecutor(self.jobs, mp_context=context)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [outcomes[t.key] for t in tasks]


def executor_for(jobs: int) -> Executor:
    """Return the local executor for `jobs` processes: `Sequential` for 1, else a `LocalPool`."""
    if jobs < 1:
        raise ValueError(f"--jobs must be a positive number of processes, got {jobs}")
    return Sequential() if jobs == 1 else LocalPool(jobs)


__all__ = ["Executor", "LocalPool", "Outcome", "Sequential", "Task", "executor_for", "order"]
