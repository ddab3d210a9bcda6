"""`SlurmExecutor`: tasks as Slurm jobs through submitit (extra ``slurm``), one job per task or per batch.

Each job runs `runs_per_job` tasks one after another (``--runs-per-job``) with ``cpus_per_task``
= the largest of their threads and ``gpus_per_node`` = ``gpus_per_run``; the job's stdout and
stderr go to ``<folder>/<job id>_0_log.out|err`` (the CLI's folder: ``<out>/slurm_logs``). A
task is submitted once the tasks it names in ``after`` have ended (this process polls the
jobs), so ``after`` orders without gating, as on every executor. A task that raises is an
`Outcome` with its one-line error and traceback; a job that ends without a result (killed,
out of time, out of memory) fails each of its tasks with one line naming the job's log.
``cluster="local"`` runs the jobs as processes on this machine (submitit's local backend:
how the tests run it); ``"slurm"`` (the default) needs ``sbatch``.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .executors import Ended, Outcome, Started, Task, _call, _share, order

_MISSING = "--executor slurm needs submitit, which is not installed: pip install 'causalprune[slurm]'"
_Result = tuple[Any, str | None, str]


def require_submitit() -> None:
    """Raise a one-line ValueError naming the extra if submitit is not installed."""
    if importlib.util.find_spec("submitit") is None:
        raise ValueError(_MISSING)


def run_batch(calls: list[tuple[Callable[..., Any], tuple[Any, ...], int]]) -> list[_Result]:
    """Run the (fn, args, threads) calls of one job one after another; return each one's (value, error, traceback)."""
    return [_call(fn, args, threads) for fn, args, threads in calls]


class SlurmExecutor:
    """Submit the tasks as submitit jobs (Slurm, or local processes with ``cluster="local"``).

    Args:
        folder: where submitit keeps each job's pickles and logs.
        partition: the Slurm partition (None: the cluster's default).
        time_min: each job's time limit in minutes (None: submitit's default, 5 min on the local
            backend; Slurm's partition default otherwise).
        gpus_per_run: GPUs of each job (the most of its tasks' needs: one job runs them in turn).
        runs_per_job: tasks per job, run one after another in it.
        cluster: ``"slurm"`` or ``"local"`` (submitit's backends).
        threads: each task's CPU threads when the task names none (None: this machine's cores
            shared among `jobs`).
        max_running: the most jobs submitted at once (None: no limit; the cluster queues them).
        poll_s: seconds between looks at the jobs' states.
    """

    live = True  # progress: one line of counts, not a line per started task
    name = "Slurm"

    def __init__(self, folder: str | Path, partition: str | None = None, time_min: int | None = None,
                 gpus_per_run: int = 0, runs_per_job: int = 1, cluster: str = "slurm", threads: int | None = None,
                 jobs: int = 1, max_running: int | None = None, poll_s: float = 1.0) -> None:  # fmt: skip
        require_submitit()
        if cluster not in ("slurm", "local"):
            raise ValueError(f"cluster must be slurm or local, got {cluster!r}")
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise ValueError("--executor slurm: this machine has no Slurm (sbatch is not on PATH); nothing was "
                             "submitted")  # fmt: skip
        if runs_per_job < 1:
            raise ValueError(f"--runs-per-job must be a positive number of runs, got {runs_per_job}")
        if time_min is not None and time_min < 1:
            raise ValueError(f"--slurm-time must be a positive number of minutes, got {time_min}")
        if gpus_per_run < 0 or gpus_per_run != int(gpus_per_run):
            raise ValueError(f"--gpus-per-run must be a whole number >= 0 under Slurm, got {gpus_per_run:g}")
        if max_running is not None and max_running < 1:
            raise ValueError(f"max_running must be a positive number of jobs, got {max_running}")
        self.folder, self.partition, self.time_min = Path(folder), partition, time_min
        self.gpus_per_run, self.runs_per_job, self.cluster = int(gpus_per_run), runs_per_job, cluster
        self.threads = threads if threads is not None else _share(jobs)
        self.max_running, self.poll_s = max_running, poll_s

    def _executor(self, cpus: int) -> Any:
        """A submitit executor for jobs of `cpus` CPUs."""
        import submitit

        ex = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        params: dict[str, Any] = {"cpus_per_task": cpus, "tasks_per_node": 1, "nodes": 1, "name": "causalprune"}
        if self.gpus_per_run:
            params["gpus_per_node"] = self.gpus_per_run
        if self.time_min is not None:
            params["timeout_min"] = self.time_min
        if self.partition is not None:
            params["slurm_partition"] = self.partition
        ex.update_parameters(**params)
        return ex

    def run(self, tasks: Sequence[Task], started: Started | None = None, ended: Ended | None = None) -> list[Outcome]:
        """Submit every task once the tasks it names have ended; return their outcomes in task order."""
        pending = order(tasks)
        outcomes: dict[str, Outcome] = {}
        running: list[tuple[Any, list[Task]]] = []
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            while pending or running:
                ready = [t for t in pending if all(k in outcomes for k in t.after)]
                while ready and (self.max_running is None or len(running) < self.max_running):
                    batch, ready = ready[: self.runs_per_job], ready[self.runs_per_job :]
                    threads = [t.threads or self.threads for t in batch]
                    calls = [(t.fn, t.args, n) for t, n in zip(batch, threads, strict=True)]
                    job = self._executor(max(threads)).submit(run_batch, calls)
                    if self.cluster == "local" and hasattr(job, "_results_timeout_s"):
                        job._results_timeout_s = 1.0  # a result file on this machine's disk: no NFS delay to wait out
                    running.append((job, batch))
                    for t in batch:
                        pending.remove(t)
                        if started is not None:
                            started(t)
                finished = [(job, batch) for job, batch in running if job.done()]
                if not finished:
                    time.sleep(self.poll_s)
                    continue
                for job, batch in finished:
                    running.remove((job, batch))
                    for task, (value, error, detail) in zip(batch, self._results(job, batch), strict=True):
                        outcomes[task.key] = Outcome(task.key, value, error, detail)
                        if ended is not None:
                            ended(outcomes[task.key])
        finally:
            for job, _ in running:
                job.cancel(check=False)
        return [outcomes[t.key] for t in tasks]

    @staticmethod
    def _results(job: Any, batch: list[Task]) -> list[_Result]:
        """The (value, error, traceback) of each task of a finished job; a job without a result fails them all."""
        try:
            results = job.result()
        except Exception as e:  # the job died: killed, out of time or memory, or it could not start
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else type(e).__name__
            return [(None, f"the job {job.job_id} running {t.key} ended without a result ({last}); its log: "
                     f"{job.paths.stderr}", str(e)) for t in batch]  # fmt: skip
        return list(results)


__all__ = ["SlurmExecutor", "require_submitit", "run_batch"]
