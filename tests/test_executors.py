"""Executors and grids as tasks: dependencies, failures collected per cell, threads, the locked θ_pre cache."""

import fcntl
import threading
import time

import pytest
import torch

from causalprune import experiment, runfolder
from causalprune.config import config_from_dict
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
