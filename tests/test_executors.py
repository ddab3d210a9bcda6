"""Executors and grids as tasks: dependencies, failures collected per cell, threads, the locked θ_pre cache."""

import fcntl
import os
import threading
import time

import pytest
import torch

from causalprune import experiment, report, runfolder
from causalprune.compare import run_grid
from causalprune.config import config_from_dict
from causalprune.executors import LocalPool, Sequential, Task, executor_for, order
from causalprune.experiment import run_experiment

from .conftest import TINY


# --- the locked θ_pre cache ------------------------------------------------------------------
class _Rendezvous:
    """Count the shared θ_pre saves; the thread about to save waits (up to 20 s) until another thread reaches the cache.

    "Reaches" is a look-up of the cache (`load_shared_pre`) or a wait on a lock. Unlocked, the other
    thread then finds the cache empty and trains θ_pre a second time; locked, it waits until the
    first has saved, then reads it.
    """

    def __init__(self, monkeypatch):
        self.saves, self.arrived, self.cond = 0, set(), threading.Condition()
        load, save, flock = runfolder.load_shared_pre, runfolder.save_shared_pre, fcntl.flock

        def arrive():
            with self.cond:
                self.arrived.add(threading.get_ident())
                self.cond.notify_all()

        def loads(cache, device):
            arrive()
            return load(cache, device)

        def saves(cache, theta, seconds):
            me = threading.get_ident()
            with self.cond:
                self.saves += 1
                self.cond.wait_for(lambda: self.arrived - {me}, timeout=20)
            save(cache, theta, seconds)

        def locks(fd, op):
            if not op & fcntl.LOCK_NB:
                arrive()
            flock(fd, op)

        monkeypatch.setattr(experiment, "load_shared_pre", loads)
        monkeypatch.setattr(experiment, "save_shared_pre", saves)
        monkeypatch.setattr(fcntl, "flock", locks)


def _in_threads(*calls):
    """Run each call in its own thread; return their results (re-raising the first error)."""
    results, errors = [None] * len(calls), []

    def target(i, call):
        try:
            results[i] = call()
        except BaseException as e:  # handed to the test
            errors.append(e)

    threads = [threading.Thread(target=target, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    if errors:
        raise errors[0]
    return results


def test_concurrent_runs_sharing_a_pre_cache_pre_train_it_once(tmp_path, monkeypatch):
    seen = _Rendezvous(monkeypatch)
    cache = tmp_path / "_pre"
    runs = [(m, config_from_dict(TINY, [f"prune.method={m}", "train.threads=1"])) for m in ("magnitude", "random")]
    a, b = _in_threads(*[lambda m=m, c=c: run_experiment(c, tmp_path / m, pre_cache=cache, quiet=True)
                         for m, c in runs])  # fmt: skip
    assert seen.saves == 1  # unlocked, both runs found the cache empty and trained θ_pre
    (entry,) = cache.glob("pre-*")
    shared = torch.load(entry / "checkpoint.pt", weights_only=True)
    for m, _ in runs:
        own = torch.load(tmp_path / m / "pre" / "checkpoint.pt", weights_only=True)
        assert own.keys() == shared.keys() and all(torch.equal(own[k], shared[k]) for k in own)
    assert a["method"] == "magnitude" and b["method"] == "random"


def test_two_concurrent_compares_over_one_folder_pre_train_each_theta_pre_once(tmp_path, monkeypatch):
    """Two grids at once over one folder (threads here: a run folder's and the cache's locks are per open file)."""
    seen = _Rendezvous(monkeypatch)
    monkeypatch.setattr(report, "boxplots", lambda *a, **k: None)  # matplotlib is not thread-safe
    cfg = config_from_dict(TINY, ["train.threads=1"])
    out = tmp_path / "cmp"
    first, second = _in_threads(lambda: run_grid(cfg, ["magnitude", "random"], [0.8], [0], out),
                                lambda: run_grid(cfg, ["random", "magnitude"], [0.8], [0], out))  # fmt: skip
    assert seen.saves == 1  # one θ_pre for the seed, trained by one of them
    for summaries, _, failed in (first, second):
        assert failed == [] and sorted(s["method"] for s in summaries) == ["magnitude", "random"]
    # each cell ran once: the grid that found its folder busy waited, then read the finished run
    assert {s["method"]: s["timing"]["total_s"] for s in first[0]} == \
        {s["method"]: s["timing"]["total_s"] for s in second[0]}  # fmt: skip
    assert len(list((out / "_pre").glob("pre-*/checkpoint.pt"))) == 1


def test_the_shared_pre_checkpoint_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    cache = tmp_path / "pre-x"
    theta = {"w": torch.arange(6.0).reshape(2, 3)}

    def dies(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(OSError, match="disk full"):
        runfolder.save_shared_pre(cache, theta, 1.5)
    assert runfolder.load_shared_pre(cache, torch.device("cpu")) is None  # nothing half-written to read
    assert sorted(p.name for p in cache.iterdir()) == ["timing.json"]
    monkeypatch.undo()
    runfolder.save_shared_pre(cache, theta, 1.5)
    got, seconds = runfolder.load_shared_pre(cache, torch.device("cpu"))
    assert torch.equal(got["w"], theta["w"]) and seconds == 1.5


def test_waiting_for_a_run_folder_returns_when_its_holder_lets_go(tmp_path):
    folder = runfolder.RunFolder(tmp_path / "r")
    runfolder.wait_for_lock(folder.path)  # no lock file: at once
    released = []
    with folder.lock():
        with pytest.raises(runfolder.RunFolderBusy, match="in use by another process"), \
                runfolder.RunFolder(folder.path).lock():  # fmt: skip
            pass
        waiter = threading.Thread(target=lambda: (runfolder.wait_for_lock(folder.path), released.append(1)))
        waiter.start()
        time.sleep(0.3)
        assert not released  # still held
    waiter.join(timeout=10)
    assert released == [1]


# --- executors ------------------------------------------------------------------------------
def _record(log, key, *, threads):
    """A task: note its key and threads in the file `log` (one line each), fail for keys starting with "bad"."""
    with open(log, "a") as f:
        f.write(f"{key} {threads}\n")
    if key.startswith("bad"):
        raise RuntimeError(f"{key} broke\non two lines")
    return key.upper()


def _graph(log):
    return [Task("b", _record, (log, "b"), after=("a",)), Task("bad", _record, (log, "bad"), after=("a",)),
            Task("a", _record, (log, "a")), Task("c", _record, (log, "c"), after=("bad",))]  # fmt: skip


def _cores():
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize("executor", [Sequential(), LocalPool(2)], ids=["sequential", "pool"])
def test_executors_respect_dependencies_collect_failures_and_set_threads(tmp_path, executor):
    log = tmp_path / "log"
    started, ended = [], []
    outcomes = executor.run(_graph(log), started=lambda t: started.append(t.key), ended=lambda o: ended.append(o.key))
    assert [o.key for o in outcomes] == ["b", "bad", "a", "c"]  # task order, whatever order they ran in
    assert [o.value for o in outcomes] == ["B", None, "A", "C"]
    assert [o.ok for o in outcomes] == [True, False, True, True]  # a failure stops nothing, not even its dependents
    bad = outcomes[1]
    assert bad.error == "RuntimeError: bad broke on two lines" and "Traceback" in bad.detail
    lines = [line.split() for line in log.read_text().splitlines()]
    ran = [k for k, _ in lines]
    assert ran[0] == "a" and ran.index("c") > ran.index("bad")  # after the tasks they name
    jobs = getattr(executor, "jobs", 1)
    assert {int(t) for _, t in lines} == {max(1, _cores() // jobs)}  # the cores, shared among the jobs
    assert sorted(started) == sorted(ended) == ["a", "b", "bad", "c"]


def test_task_graphs_that_cannot_run_are_refused():
    with pytest.raises(ValueError, match="task 'x' runs after 'y', which is not one of the tasks"):
        Sequential().run([Task("x", _record, after=("y",))])
    with pytest.raises(ValueError, match="task key 'x' is given twice"):
        order([Task("x", _record), Task("x", _record)])
    with pytest.raises(ValueError, match="cycle"):
        order([Task("x", _record, after=("y",)), Task("y", _record, after=("x",))])
    with pytest.raises(ValueError, match="--jobs must be a positive number of processes, got 0"):
        executor_for(0)
    assert isinstance(executor_for(1), Sequential) and executor_for(3).jobs == 3


def _dies(*, threads):
    """A task whose process dies without a word (as one killed by the kernel)."""
    os._exit(3)


def test_a_dead_worker_fails_its_task_and_the_pool_goes_on(tmp_path):
    log = tmp_path / "log"
    tasks = [Task("dies", _dies), Task("next", _record, (log, "next"), after=("dies",))]
    dead, after = LocalPool(1).run(tasks)
    assert dead.error == "a worker process died (killed, or out of memory)" and not dead.ok
    assert after.ok and after.value == "NEXT" and log.read_text() == f"next {_cores()}\n"
