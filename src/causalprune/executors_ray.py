"""`RayExecutor`: each task one Ray remote task, on a local Ray or an existing cluster (extra ``ray``).

A task asks Ray for ``num_cpus`` = its threads (`executors.Task.threads`, else the executor's
default) and ``num_gpus`` = ``gpus_per_run``; Ray schedules them by those resources. A task
starts once the tasks it names in ``after`` have ended (a ``ray.wait`` loop here, so ``after``
orders without gating, as on every executor). A task that raises is an `Outcome` with its
one-line error and traceback; a Ray worker that dies is an `Outcome` naming the task and
where Ray keeps the worker logs. Tasks are not retried: a re-run resumes what was cut short.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Sequence
from typing import Any

from .executors import Ended, Outcome, Started, Task, _call, _share, order

_MISSING = "--executor ray needs Ray, which is not installed: pip install 'causalprune[ray]'"


def require_ray() -> None:
    """Raise a one-line ValueError naming the extra if Ray is not installed."""
    if importlib.util.find_spec("ray") is None:
        raise ValueError(_MISSING)


def check_address(address: str, timeout: float = 5.0) -> None:
    """Raise a one-line ValueError if nothing answers at the Ray cluster `address` (``host:port``, ``ray://…``).

    ``auto`` (the cluster this machine belongs to) is checked when Ray connects.
    """
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--ray-address must look like host:port or ray://host:port, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ValueError(f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e}); "
                         "nothing was submitted") from None  # fmt: skip


class RayExecutor:
    """Run every task as a Ray remote task; start a quiet local Ray unless one is running or `address` is given.

    Args:
        address: a cluster to join (``host:port``, ``ray://host:port`` or ``auto``); None: use the
            Ray this process already started, else start a local one with `num_cpus` CPUs.
        num_cpus: the CPUs of a local Ray this executor starts (None: this machine's).
        gpus_per_run: GPUs Ray reserves for each task (0: none; fractions share a GPU).
        threads: each task's CPU threads (and ``num_cpus``) when the task names none (None: this
            machine's cores shared among `jobs`, as `executors.LocalPool` would give).
    """

    live = True  # progress: one line of counts, not a line per started task
    name = "Ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, gpus_per_run: float = 0,
                 threads: int | None = None, jobs: int = 1) -> None:  # fmt: skip
        require_ray()
        if gpus_per_run < 0:
            raise ValueError(f"--gpus-per-run must be >= 0, got {gpus_per_run:g}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be a positive number, got {threads}")
        if address is not None:
            check_address(address)
        self.address, self.num_cpus, self.gpus_per_run = address, num_cpus, gpus_per_run
        self.threads = threads if threads is not None else _share(jobs)

    def _connect(self) -> bool:
        """Connect to Ray; return whether this call started it (and so shuts it down after)."""
        import ray

        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        try:
            if self.address is not None:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=self.num_cpus, **kwargs)
        except (ConnectionError, RuntimeError, TimeoutError) as e:
            where = f"--ray-address {self.address}" if self.address else "a local Ray"
            raise ValueError(f"{where}: Ray could not start or connect ({' '.join(str(e).split())}); "
                             "nothing was submitted") from None  # fmt: skip
        return True

    def run(self, tasks: Sequence[Task], started: Started | None = None, ended: Ended | None = None) -> list[Outcome]:
        """Run every task once the tasks it names have ended; return their outcomes in task order."""
        import ray

        pending = order(tasks)
        owner = self._connect()
        try:
            most = self._node_cpus()
        except ValueError:
            if owner:
                ray.shutdown()
            raise
        remote = ray.remote(max_retries=0)(_call)
        outcomes: dict[str, Outcome] = {}
        running: dict[Any, Task] = {}
        try:
            while pending or running:
                for task in [t for t in pending if all(k in outcomes for k in t.after)]:
                    pending.remove(task)
                    threads = min(task.threads or self.threads, most)  # more than any node has would never start
                    ref = remote.options(num_cpus=threads, num_gpus=self.gpus_per_run).remote(
                        task.fn, task.args, threads)
                    running[ref] = task
                    if started is not None:
                        started(task)
                if not running:  # cannot happen: `order` refused cycles
                    break
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    task = running.pop(ref)
                    try:
                        value, error, detail = ray.get(ref)
                    except ray.exceptions.RayError as e:  # the worker died, or Ray lost the task
                        value, error, detail = None, self._lost(task, e), str(e)
                    outcomes[task.key] = Outcome(task.key, value, error, detail)
                    if ended is not None:
                        ended(outcomes[task.key])
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
            if owner:
                ray.shutdown()
        return [outcomes[t.key] for t in tasks]

    def _node_cpus(self) -> int:
        """Return the most CPUs of any live node; refuse GPUs per run that no node has (they would never start)."""
        import ray

        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", False)]
        gpus = max((r.get("GPU", 0) for r in nodes), default=0)
        if self.gpus_per_run > gpus:
            raise ValueError(f"--gpus-per-run {self.gpus_per_run:g}, but the Ray cluster's nodes have at most {gpus:g} "
                             "GPUs; nothing was submitted")  # fmt: skip
        return max(1, int(max((r.get("CPU", 0) for r in nodes), default=1)))

    @staticmethod
    def _lost(task: Task, error: BaseException) -> str:
        """The one-line error of a task whose Ray worker died: the task and where the worker logs are."""
        logs = "the Ray session's logs/ folder (e.g. /tmp/ray/session_latest/logs)"
        try:
            import ray

            logs = ray._private.worker._global_node.get_logs_dir_path()  # the running session's logs
        except Exception:  # a private API: keep the general hint
            pass
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"the Ray worker running {task.key} died ({type(error).__name__}: {first}); worker logs in {logs}"


__all__ = ["RayExecutor", "check_address", "require_ray"]
