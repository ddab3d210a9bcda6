"""``--nproc N``: run a command as N processes on this machine, and say in one line how they ended.

The launcher (`launch`) starts the ranks through torchrun with `RANK_ERRORS_ENV` naming a
private scratch folder. Each rank (`capture_output`) sends its stderr there, to
``rank_<r>.log`` (rank 0 also keeps the console for warnings and progress), and before it
exits on an error leaves a record ``rank_<r>.json`` (`leave_record`): its one line and its
kind — bad input, a crash of its own, or a peer that vanished. When torchrun returns, the
launcher reads the records and decides (`verdict`), whatever order the ranks ended in:

* any rank refused its input: that one line, exit status 2, nothing kept (a re-run cannot help);
* else a rank raised an exception: the exception, and the log file that holds its traceback;
* else a rank was lost (killed, no record): which one, its signal, the logs, and "re-run the
  same command to resume".

Ranks that failed because a peer vanished are never the cause. On a failure other than bad
input the rank logs move to the run folder's ``logs/`` (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import platform

#: Set by ``--nproc`` for its ranks: the scratch folder where each leaves its log and error record.
RANK_ERRORS_ENV = "CAUSALPRUNE_RANK_ERRORS"

INPUT = "input"  # the rank refused its input (config, files): exit status 2 on every try
CRASH = "crash"  # the rank raised an exception of its own
LOST = "lost"  # the rank failed because another rank vanished: a consequence, never the cause
KINDS = (INPUT, CRASH, LOST)

_log: IO[str] | None = None  # this rank's log file, once `capture_output` opened it


@dataclass(frozen=True)
class RankRecord:
    """What one rank said before it exited on an error."""

    kind: str  # one of KINDS
    message: str  # its one line, without the "causalprune: error: " prefix


@dataclass(frozen=True)
class Verdict:
    """How a run of several processes ended: its exit status and the one line that says why."""

    code: int
    line: str  # without the "causalprune: error: " prefix


def rank_folder() -> Path | None:
    """Return the scratch folder `launch` gave this rank, or None outside a ``--nproc`` run."""
    folder = os.environ.get(RANK_ERRORS_ENV)
    return Path(folder) if folder and platform.launched() else None


def rank_number() -> int | None:
    """Return this process's rank in a distributed run (torchrun's ``RANK`` before the group is joined), or None."""
    plat = platform.current()
    if plat.distributed:
        return plat.rank
    return int(os.environ.get("RANK", "0")) if platform.launched() else None


class _Tee:
    """A text stream that writes to the console and to a log file (rank 0's ``sys.stderr``)."""

    def __init__(self, console: IO[str], log: IO[str]) -> None:
        self.console, self.log = console, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.console.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, …: the console's
        return getattr(self.console, name)


def capture_output() -> Path | None:
    """Send this rank's stderr to ``rank_<r>.log`` in its scratch folder; return the log's path.

    Everything written to file descriptor 2 (Python tracebacks, gloo's and torch's C++ messages)
    goes to the log only. Rank 0's ``sys.stderr`` writes to the console as well, so its warnings
    and progress bar stay visible; the other ranks' go to their logs. No-op (None) outside a
    ``--nproc`` run.
    """
    global _log
    folder, rank = rank_folder(), rank_number()
    if folder is None or rank is None or _log is not None:
        return None
    path = folder / f"rank_{rank}.log"
    _log = open(path, "a", buffering=1, encoding="utf-8")  # open for the process's lifetime
    sys.stderr.flush()
    if rank == 0:
        console = open(os.dup(2), "w", buffering=1, encoding="utf-8")
        os.dup2(_log.fileno(), 2)
        sys.stderr = _Tee(console, _log)  # type: ignore[assignment]
    else:
        os.dup2(_log.fileno(), 2)
        sys.stderr = _log
    return path


def leave_record(kind: str, message: str, error: BaseException | None = None) -> bool:
    """Leave this rank's error record for the launcher (its traceback, if any, in its log); False outside ``--nproc``.

    The record is written atomically before the rank exits, so when the launcher reads it, it is whole.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    folder, rank = rank_folder(), rank_number()
    if folder is None or rank is None:
        return False
    if error is not None and _log is not None:
        traceback.print_exception(error, file=_log)
    tmp = folder / f".rank_{rank}.json.tmp"
    tmp.write_text(json.dumps({"kind": kind, "message": message}))
    os.replace(tmp, folder / f"rank_{rank}.json")
    return True


def read_records(folder: Path) -> dict[int, RankRecord]:
    """Return the error records the ranks left in `folder`, by rank (unreadable ones as crashes saying so)."""
    records = {}
    for path in folder.glob("rank_*.json"):
        rank = int(path.stem.removeprefix("rank_"))
        try:
            data = json.loads(path.read_text())
            records[rank] = RankRecord(str(data["kind"]), str(data["message"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            records[rank] = RankRecord(CRASH, f"its error record {path.name} is unreadable ({e})")
    return records


def verdict(nproc: int, records: dict[int, RankRecord], exitcodes: dict[int, int], logs: Path | None) -> Verdict:
    """Decide how a run of `nproc` processes ended from the ranks' records and torchrun's exit codes.

    Args:
        records: the error records the ranks left, by rank.
        exitcodes: torchrun's failed ranks and their exit codes (negative: killed by that signal).
        logs: the folder that holds the rank logs ``rank_<r>.log`` (named in the line), if kept.
    """
    refused = sorted(r for r, rec in records.items() if rec.kind == INPUT)
    if refused:  # bad input: whatever else happened meanwhile, a re-run cannot help
        first = refused[0]
        same = len({records[r].message for r in refused}) == 1
        return Verdict(2, ("" if same else f"[rank {first}] ") + records[first].message)
    if not records and not exitcodes:
        return Verdict(0, "")
    head = f"the {nproc}-process run failed"
    silent = {r: c for r, c in exitcodes.items() if r not in records}  # died without a word: killed, or stopped
    killed = {r: c for r, c in silent.items() if c < 0 and c != -signal.SIGTERM}  # SIGTERM: torchrun stopping it
    crashed = sorted(r for r, rec in records.items() if rec.kind == CRASH)
    if crashed and not killed:  # (a rank killed first makes its peers raise whatever their backend says)
        first = crashed[0]
        where = f" (traceback in {logs / f'rank_{first}.log'})" if logs is not None else ""
        return Verdict(1, f"{head}: rank {first} raised {records[first].message}{where}; the others were stopped")
    causes = killed or {r: c for r, c in silent.items() if c != -signal.SIGTERM} or silent
    if not causes:  # only ranks that saw a peer vanish reported: the lost one left no exit code
        causes = {r: exitcodes.get(r, 1) for r in records}
    said = ", ".join(f"rank {r} {_ended(c)}" for r, c in sorted(causes.items()))
    where = f"; rank logs: {logs / 'rank_<r>.log'}" if logs is not None else ""
    resume = "; re-run the same command to resume" if all(c < 0 for c in causes.values()) else ""  # killed
    return Verdict(1, f"{head}: {said}; the others were stopped{where}{resume}")


def _ended(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name} (exit code {code})"
    return f"exited with code {code}"


def launch(nproc: int | None, argv: list[str], home: Callable[[], Path | None]) -> int | None:
    """Run ``causalprune <argv>`` as `nproc` processes through torchrun; return its exit status, having said why.

    None: run in this process (`nproc` None or 1, or already one of torchrun's processes).

    Args:
        argv: the command line without ``--nproc``.
        home: called only after a failure other than bad input: the run folder whose ``logs/``
            receives the rank logs (None, or an exception: a kept temporary folder instead).
    """
    if nproc is not None and nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if nproc is None or nproc == 1 or platform.launched():
        return None
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException

    with tempfile.TemporaryDirectory(prefix="causalprune-ranks-") as scratch:
        os.environ[RANK_ERRORS_ENV] = scratch  # the ranks inherit it
        exitcodes: dict[int, int] = {}
        logging.disable(logging.CRITICAL)  # torchrun's own log lines (SIGTERM sent, "failed (exitcode …)")
        try:
            torchrun.main(["--standalone", f"--nproc-per-node={nproc}", "-m", "causalprune", *argv])
        except (SignalException, KeyboardInterrupt) as e:
            code = 128 + int(getattr(e, "sigval", signal.SIGINT))
            print("causalprune: interrupted; re-run the same command to resume", file=sys.stderr)
            return code
        except Exception as e:  # torchrun's ChildFailedError: the failed ranks and their exit codes
            failures = getattr(e, "failures", None)
            if not failures and not any(Path(scratch).glob("rank_*.json")):
                print(f"causalprune: error: could not run {nproc} processes ({type(e).__name__}: {e})",
                      file=sys.stderr)  # fmt: skip
                return 1
            exitcodes = {int(r): int(f.exitcode) for r, f in (failures or {}).items()}
        finally:
            logging.disable(logging.NOTSET)
            os.environ.pop(RANK_ERRORS_ENV, None)
        records = read_records(Path(scratch))
        logs = None
        if records or exitcodes:
            if not any(rec.kind == INPUT for rec in records.values()):
                logs = _keep_logs(Path(scratch), home)
        out = verdict(nproc, records, exitcodes, logs)
    if out.code:
        print(f"causalprune: error: {out.line}", file=sys.stderr)
    return out.code


def _keep_logs(scratch: Path, home: Callable[[], Path | None]) -> Path:
    """Move the rank logs from `scratch` to ``home()/logs`` (or a kept temporary folder); return where."""
    try:  # quietly: resolving the config again must not print its notes twice
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():  # fmt: skip
            warnings.simplefilter("ignore")
            folder = home()
        if folder is None:
            raise FileNotFoundError("no run folder")
        dest = folder / "logs"
        dest.mkdir(parents=True, exist_ok=True)
    except Exception:  # any reason not to know or write the run folder: keep the logs elsewhere
        dest = Path(tempfile.mkdtemp(prefix="causalprune-logs-"))
    for log in sorted(scratch.glob("rank_*.log")):
        shutil.move(log, dest / log.name)
    return dest


__all__ = ["CRASH", "INPUT", "KINDS", "LOST", "RANK_ERRORS_ENV", "RankRecord", "Verdict", "capture_output", "launch",
           "leave_record", "rank_folder", "rank_number", "read_records", "verdict"]  # fmt: skip
