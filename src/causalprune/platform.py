"""The one module that knows `torch.distributed`: rank, world size, the primary process, barriers, reductions.

A single process is a `Platform` of world size 1, and every method here is then a no-op
that returns its input: the single-process code path is the one that always ran. Under
``torchrun`` (or ``causalprune run --nproc N``) `init_from_env` joins the process group that
torchrun's environment describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), with the ``nccl`` backend on CUDA and ``gloo`` on the CPU. Nothing else in
the package imports `torch.distributed` (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

#: How long a collective waits for a lost rank before the run fails (seconds).
TIMEOUT_S = 600

#: What a collective raises when another rank is gone (gloo / nccl report a closed peer this way).
LOST_RANK_ERRORS: tuple[type[BaseException], ...] = (dist.DistError,) if hasattr(dist, "DistError") \
    else (RuntimeError,)


#: How gloo and nccl word a vanished peer when they raise a plain RuntimeError (lower case).
LOST_PEER_WORDS = ("connection closed by peer", "connection reset by peer", "broken pipe", "remote worker crash",
                   "communicator was aborted", "timed out")  # fmt: skip


class DistributedError(RuntimeError):
    """The ranks of a distributed run disagree, or one of them failed."""


def lost_peer(error: BaseException) -> bool:
    """Return whether `error` is how a collective fails when another rank of the run is gone.

    gloo raises a plain RuntimeError from inside backward (DDP's all-reduce), so the words count too.
    """
    if isinstance(error, DistributedError):  # the ranks disagree: every rank raises it, nobody is lost
        return False
    if isinstance(error, LOST_RANK_ERRORS) and LOST_RANK_ERRORS != (RuntimeError,):
        return True
    return isinstance(error, RuntimeError) and any(w in str(error).lower() for w in LOST_PEER_WORDS)


@dataclass(frozen=True)
class Platform:
    """Where this process stands among the processes of a run.

    Attributes:
        rank: this process's rank, 0 … world_size − 1.
        world_size: number of processes of the run (1: a single process).
        local_rank: its rank on this machine (the CUDA device it uses).
        backend: the process group's backend (``gloo`` or ``nccl``), None for one process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """Whether several processes run together."""
        return self.world_size > 1

    @property
    def local_world_size(self) -> int:
        """Processes of the run on this machine (they share its cores)."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if self.distributed else 1

    @property
    def is_primary(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank arrives."""
        if self.distributed:
            dist.barrier()

    def _reduce(self, t: torch.Tensor, op: Any) -> torch.Tensor:
        """All-reduce `t` in place with `op`; nccl reduces CUDA tensors only, so a CPU one goes through the GPU."""
        if not self.distributed:
            return t
        if self.backend == "nccl" and t.device.type != "cuda":
            on_gpu = t.to(f"cuda:{self.local_rank}")
            dist.all_reduce(on_gpu, op=op)
            return t.copy_(on_gpu)
        dist.all_reduce(t, op=op)
        return t

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` over the ranks, in place; return it."""
        return self._reduce(t, dist.ReduceOp.SUM)

    def all_reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise maximum of `t` over the ranks, in place; return it."""
        return self._reduce(t, dist.ReduceOp.MAX)

    def max_float(self, x: float) -> float:
        """The maximum of `x` over the ranks."""
        if not self.distributed:
            return x
        return float(self.all_reduce_max(torch.tensor([x], dtype=torch.float64))[0])

    def shard_range(self, n: int) -> tuple[int, int]:
        """This rank's share [start, stop) of n columns: contiguous, balanced by count, in rank order."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def gather_columns(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Concatenate every rank's piece (its `shard_range(n)` of a length-n vector), in rank order."""
        if not self.distributed:
            return local
        sizes = [self._range_of(r, n) for r in range(self.world_size)]
        width = max(b - a for a, b in sizes)
        device = f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"  # where the backend gathers
        padded = torch.zeros(width, dtype=local.dtype, device=device)
        padded[: local.numel()] = local.reshape(-1)
        pieces = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(pieces, padded)
        return torch.cat([p[: b - a] for p, (a, b) in zip(pieces, sizes, strict=True)]).to(local.device)

    def _range_of(self, rank: int, n: int) -> tuple[int, int]:
        return Platform(rank, self.world_size).shard_range(n)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Return rank `src`'s `obj` on every rank (picklable objects)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Return every rank's `obj`, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Return `model` wrapped in `DistributedDataParallel` (gradients averaged over the ranks, BatchNorm
        buffers broadcast from rank 0 at every forward), or `model` itself for one process.

        The wrapper is for the training forward only: names, masks and checkpoints stay those
        of `model` (no ``module.`` prefix anywhere).
        """
        if not self.distributed:
            return model
        device = next(model.parameters()).device
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                         else None)  # fmt: skip

    def check_same(self, value: str, what: str) -> None:
        """Raise `DistributedError` on every rank unless all ranks hold the same `value` (e.g. a config digest)."""
        values = self.all_gather_object(value)
        if len(set(values)) > 1:
            detail = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise DistributedError(f"the ranks disagree on {what} ({detail})")

    def check_same_tensors(self, tensors: dict[str, torch.Tensor], what: str) -> None:
        """Raise `DistributedError` unless every rank holds bit-identical `tensors` (a SHA-256 compared)."""
        if not self.distributed:
            return
        h = hashlib.sha256()
        for name in sorted(tensors):
            h.update(name.encode())
            h.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
        self.check_same(h.hexdigest()[:16], what)


SINGLE = Platform()


def current() -> Platform:
    """The platform of this process: the joined process group, or `SINGLE`."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Platform(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                    dist.get_backend())  # fmt: skip


def launched() -> bool:
    """Whether this process was started by torchrun for a run of several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_type: str | None = None) -> Platform:
    """Join the process group torchrun's environment describes (no-op for a single process).

    `device_type` picks the backend: ``nccl`` for ``cuda`` (each rank on device
    ``LOCAL_RANK``), else ``gloo``; default: ``cuda`` when available.
    """
    if not launched():
        return SINGLE
    if dist.is_initialized():
        return current()
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=TIMEOUT_S))
    return current()


def shutdown(wait: bool = False) -> None:
    """Leave the process group, if joined; `wait`: first wait until every rank is leaving too.

    Waiting matters after a successful run: a gloo process that leaves while a peer still
    talks to it can abort ("terminate called without an active exception").
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


__all__ = ["LOST_PEER_WORDS", "LOST_RANK_ERRORS", "SINGLE", "TIMEOUT_S", "DistributedError", "Platform", "current",
           "init_from_env", "launched", "lost_peer", "shutdown"]  # fmt: skip
