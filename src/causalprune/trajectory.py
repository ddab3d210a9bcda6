"""Record the causal regression's data during training: one row per optimizer step.

For step t (θ^t → θ^{t+1}) the recorder stores

* y_t = ΔL_t, the loss change across the step (docs/method.md, "Recording"; ``same_batch`` or ``probe``), and
* x̃_{t,k} = (θ_k^{t+1} − θ_k^t)² / η₀² for every alive prunable weight k,

where η₀ is the learning rate at the first recorded step (raw squared updates underflow in
float16; x̃ is an effective squared gradient, rankings are unchanged). The order of the
columns is a `layout.ParamLayout` over the alive weights, shared with the criteria and
selection.

Storage is column-major: chunks of shape (d_alive, rows) on the storage device, so the
solvers read a weight's whole history contiguously, and `Trajectory.X` is a (T, d_alive)
*view* of one (d_alive, T) buffer. Per step the recorder does O(d_alive) device work and no
host↔device synchronisation; non-finite values are detected once, in `trajectory()`,
which names the step and the parameter.

Grouped recording (structured pruning, docs/method.md "Structured variant"): given a
grouped layout (``layout=groups.layout(mask)``), each step's (d,) x̃ row is computed
exactly as above and summed over each group by one segment-sum on the parameters'
device, x̃_{t,g} = Σ_{k∈g} x̃_{t,k}; only the (G,) row is stored, so the store is (G, T):
T·G·(element size) bytes plus O(d) working buffers.

First-order term (``first_order=True``; docs/method.md, "The first-order (gap) reading"): the
recorder also stores z_t = g_t · Δθ_t, the loss change predicted to first order, summed over
every parameter the optimizer trains (weights, biases, normalisation; pruned and not-recorded
ones included), with g_t the ``.grad`` the optimizer stepped with. It costs one float32 copy of
the trained parameters (θ^t, taken in `before_step`) and three multi-tensor operations per step.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .batching import Batch, as_batches
from .layout import ParamLayout
from .masks import Mask, names_hint, parameter_aliases, prunable_parameters

DELTA_LOSSES = ("same_batch", "probe")
STORAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)



@dataclass(frozen=True)
class ColumnShard:
    """The columns [start, stop) of a distributed recording this process holds (SPEC §9).

    `comm` is the `lasso.Comm` its solver reduces through; `gather(local)` returns the
    (n_columns,) vector of every process's (stop − start,) pieces, in rank order.
    """

    start: int
    stop: int
    comm: Any
    gather: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Trajectory:
    """The recorded regression data.

    Columns are the layout's: one per alive weight, or, for a grouped recording
    (``layout.grouped``), one per group (x̃_g = Σ_{k∈g} x̃_k); `n_columns` says how many.
    `unflatten`, `scores` and `combine` take a per-column vector and give every entry of a
    group its group's value.

    Attributes:
        X: (T, n_columns) x̃ = (Δθ)² / scale; a view of a column-major (n_columns, T) buffer.
        y: (T,) float32 loss changes ΔL_t.
        scale: η₀², the divisor of the squared updates (float).
        layout: which weights have columns, in which order (`ParamLayout` over the alive
            entries of the recorded parameters, row-major within a tensor).
        loss_before: (T,) float32 loss at θ^t (training batch or probe set).
        loss_after: (T,) float32 loss at θ^{t+1} on the same data.
        X_lag: (T, n_columns) x̃ of the previous step (momentum model, docs/method.md "Recording"):
            an offset view of the same buffer, or None when recorded without ``momentum_features``.
        lags: (T, 2) unpenalised loss regressors [L^t, L^{t−1}] of the momentum model, or None.
        shard: in a distributed recording, the columns of X this process holds (X is then
            (T, stop − start)); `full` assembles per-column vectors. None: every column.
        first_order: (T,) float64 z_t = g_t · Δθ_t, the first-order prediction of ΔL_t over every
            trained parameter (rows aligned with y), or None when recorded without ``first_order``.
            Never sharded: every process holds all of it.
    """

    X: torch.Tensor
    y: torch.Tensor
    scale: float
    layout: ParamLayout
    loss_before: torch.Tensor
    loss_after: torch.Tensor
    X_lag: torch.Tensor | None = None
    lags: torch.Tensor | None = None
    shard: ColumnShard | None = None
    first_order: torch.Tensor | None = None

    def full(self, local: torch.Tensor) -> torch.Tensor:
        """Return a per-column vector of every column from this process's piece (itself when not sharded)."""
        return local if self.shard is None else self.shard.gather(local)

    @property
    def T(self) -> int:
        """Number of rows (steps)."""
        return self.X.shape[0]

    @property
    def n_columns(self) -> int:
        """Number of columns of X: alive weights, or groups for a grouped recording."""
        return self.layout.n_columns

    @property
    def param_names(self) -> list[str]:
        """Recorded parameter names, in column order."""
        return self.layout.names

    @property
    def alive(self) -> dict[str, torch.Tensor]:
        """Name → bool tensor of the weights that have columns."""
        return self.layout.alive

    def sizes(self) -> list[int]:
        """Return the number of alive entries of each parameter, in `param_names` order (its columns when
        not grouped)."""
        return list(self.layout.sizes)

    def design(self) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Return (X blocks, y, unpenalised regressors) for `lasso.solve`.

        Plain model: ([X], y, None). Momentum model: ([X, X_lag], y, lags) — ΔL regressed on
        both blocks with [L^t, L^{t−1}] unpenalised; this equals the paper's eq. 25 (target
        L^{t+1}) with c₁ shifted by one.
        """
        if self.X_lag is None:
            return [self.X], self.y, None
        return [self.X, self.X_lag], self.y, self.lags

    def unflatten(self, values: torch.Tensor, fill: float = 0.0) -> dict[str, torch.Tensor]:
        """Map a (n_columns,) vector back to name → float32 CPU tensor; pruned entries get `fill`.

        Grouped: every alive entry of a group gets its group's value.
        """
        v = values.detach().to("cpu", torch.float32).reshape(-1)
        if self.layout.grouped:
            if v.numel() != self.n_columns:
                raise ValueError(f"expected a ({self.n_columns},) per-group vector, got {tuple(values.shape)}")
            v = self.layout.from_columns(v)
        return self.layout.unflatten(v, fill=fill)

    def group_scores(self, coef: torch.Tensor) -> torch.Tensor:
        """Return the (n_columns,) float32 CPU |γ| per column (momentum model: sqrt(γ₀² + γ₁²)).

        For a grouped recording these are the groups' |γ_g|, in group order.
        """
        n = self.n_columns
        c = coef.detach().to("cpu", torch.float32).reshape(-1)
        if c.numel() == 2 * n:
            return torch.sqrt(c[:n] ** 2 + c[n:] ** 2)
        if c.numel() != n:
            raise ValueError(f"expected {n} or {2 * n} coefficients, got {c.numel()}")
        return c.abs()

    def scores(self, coef: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return |γ| per weight (momentum model: sqrt(γ₀² + γ₁²)) as name → tensor (grouped: its group's)."""
        return self.unflatten(self.group_scores(coef))

    def column_max(self, per_column: torch.Tensor) -> torch.Tensor:
        """Return a per-column statistic (e.g. the KKT score) as a (n_columns,) float32 CPU vector; max over
        blocks (the momentum model's two)."""
        n = self.n_columns
        v = per_column.detach().to("cpu", torch.float32).reshape(-1)
        return torch.maximum(v[:n], v[n:]) if v.numel() == 2 * n else v

    def combine(self, per_column: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map a per-column statistic (e.g. the KKT score) to name → tensor; max over blocks."""
        return self.unflatten(self.column_max(per_column))


class _Store:
    """Column-major chunked storage of rows, spilling to disk-backed files past a budget.

    Rows arrive one per step; writing one straight into a column-major buffer touches a
    different cache line per weight. They are staged instead in a small row-major block
    of `block_rows` rows and moved into the chunks by one blocked transpose when the block
    fills (or when the trajectory is read).
    """

    def __init__(
        self,
        d: int,
        dtype: torch.dtype,
        device: torch.device,
        chunk_rows: int,
        memory_budget: int | None,
        spill_dir: str | None,
        block_rows: int = 32,
        exact: bool = False,
        stage_device: torch.device | None = None,
    ) -> None:
        self.d, self.dtype, self.device = d, dtype, device
        row_bytes = max(self._bytes(1), 1)
        # Big models: no chunk over ~1 GiB and no staging block over 256 MiB (ResNet-50 rows are
        # 100 MB in float32), unless the caller sized the chunk exactly (`capacity`).
        self.chunk_rows = chunk_rows if exact else min(chunk_rows, max(8, 2**30 // row_bytes))
        block_rows = max(1, min(block_rows, 2**28 // row_bytes))
        self.budget = memory_budget
        self.spill_dir = spill_dir
        self._tmpdir: str | None = None
        self.chunks: list[torch.Tensor] = []  # each (d, rows)
        self.rows = 0  # rows moved into the chunks
        self.in_memory_bytes = 0
        self.spilled = False
        # The staging block lives where the rows come from (the parameters' device), so that
        # a step's row is a device-local copy; rows cross to `device` once per block.
        rows = min(block_rows, self.chunk_rows)
        self.block = torch.empty(rows, d, dtype=dtype, device=stage_device or device)  # (B, d)
        self.staged = 0

    def _bytes(self, rows: int) -> int:
        return self.d * rows * torch.tensor([], dtype=self.dtype).element_size()

    def _disk_tensor(self, rows: int) -> torch.Tensor:
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="causalprune-traj-", dir=self.spill_dir)
        fd, path = tempfile.mkstemp(dir=self._tmpdir, suffix=".bin")
        os.close(fd)
        t = torch.from_file(path, shared=True, size=self.d * rows, dtype=self.dtype)
        self.spilled = True
        return t.view(self.d, rows)

    def _alloc(self, rows: int) -> torch.Tensor:
        nbytes = self._bytes(rows)
        if self.budget is not None and self.in_memory_bytes + nbytes > self.budget:
            return self._disk_tensor(rows)
        self.in_memory_bytes += nbytes
        return torch.empty(self.d, rows, dtype=self.dtype, device=self.device)

    def next_row(self) -> torch.Tensor:
        """Return the (d,) slot of the next row."""
        if self.staged == self.block.shape[0]:
            self.flush()
        row = self.block[self.staged]
        self.staged += 1
        return row

    def flush(self) -> None:
        """Move the staged rows into the column-major chunks (allocating chunks as needed)."""
        done = 0
        while done < self.staged:
            capacity = sum(c.shape[1] for c in self.chunks)
            if self.rows >= capacity:
                self.chunks.append(self._alloc(self.chunk_rows))
                capacity += self.chunk_rows
            chunk = self.chunks[-1]
            o = self.rows - (capacity - chunk.shape[1])
            n = min(self.staged - done, chunk.shape[1] - o)
            chunk[:, o : o + n].copy_(self.block[done : done + n].T)
            done += n
            self.rows += n
        self.staged = 0

    def consolidate(self, rows: int) -> torch.Tensor:
        """Return the first `rows` rows as one (d, rows) buffer (a view when already one chunk)."""
        self.flush()
        if len(self.chunks) == 1:
            return self.chunks[0][:, :rows]
        out = self._alloc(rows) if not self.spilled else self._disk_tensor(rows)
        o = 0
        for c in self.chunks:
            k = min(c.shape[1], rows - o)
            if k <= 0:
                break
            out[:, o : o + k].copy_(c[:, :k])
            o += k
        self.chunks = [out]  # the old chunks are released; later rows go to new chunks
        self.in_memory_bytes = 0 if self.spilled else self._bytes(rows)
        return out[:, :rows]

    def close(self) -> None:
        self.chunks = []
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


def _trained_parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters `optimizer` steps, each tensor once, in its param groups' order."""
    seen: set[int] = set()
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    if not out:
        raise ValueError("the optimizer trains no parameter: nothing to record the first-order term over")
    return out


def _norm_modules(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
    ]


class _FrozenRunningStats:
    """Context: forwards in train mode use batch statistics but leave running stats as they were.

    BatchNorm layers are switched to ``track_running_stats=False`` for the duration (in
    training mode they then normalise with batch statistics and update nothing: no copy,
    no kernel); other norm layers that track statistics (e.g. InstanceNorm) are saved and
    restored.
    """

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        self.toggled: list[nn.Module] = []
        self.others: list[nn.Module] = []
        self.saved: list[dict[str, torch.Tensor]] = []

    def __enter__(self) -> None:
        # A BatchNorm in eval mode uses and keeps its running stats: nothing to do.
        is_bn = [isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules]
        self.toggled = [m for m, bn in zip(self.modules, is_bn, strict=True) if bn and m.training]
        self.others = [m for m, bn in zip(self.modules, is_bn, strict=True) if not bn]
        for m in self.toggled:
            m.track_running_stats = False
        self.saved = [{k: b.clone() for k, b in m._buffers.items() if b is not None} for m in self.others]

    def __exit__(self, *exc: object) -> None:
        for m in self.toggled:
            m.track_running_stats = True
        with torch.no_grad():
            for m, saved in zip(self.others, self.saved, strict=True):
                for k, b in saved.items():
                    m._buffers[k].copy_(b)  # type: ignore[union-attr]


def _call(module: nn.Module, inputs: Any) -> Any:
    """The default forward: ``module(inputs)``."""
    return module(inputs)


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class TrajectoryRecorder:
    """Train and record (ΔL_t, (Δθ_t)²) for every optimizer step.

    Three ways to use it:

    * ``loss = rec.step(inputs, targets)`` performs one training step (forward, backward,
      optimizer step) and records it;
    * a custom loop calls ``rec.before_step(inputs, targets)`` right before its forward and
      ``rec.after_step(loss)`` right after ``optimizer.step()``;
    * wrappers for other loops (e.g. a Lightning callback) build on the split API.

    Args:
        model: the network; its prunable parameters are the ``.weight`` of Linear/Conv
            layers (or ``params``), each unique tensor once under its canonical name
            (`masks.prunable_parameters`: a tied weight is one column block).
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor`` (mean over the batch).
        optimizer: the optimizer that takes the steps.
        mask: alive weights; only they get columns. Default: all prunable weights.
        dtype: storage dtype of x̃: float32, bfloat16 or float16.
        delta_loss: ``same_batch`` (ΔL on the step's own minibatch, the "after" forward
            replays its dropout masks and uses batch statistics) or ``probe`` (ΔL on the
            fixed `probe_data`, one probe forward per step).
        probe_data: (inputs, targets) or an iterable of such batches, for ``probe``.
        momentum_features: also expose the lagged block and loss lags (docs/method.md, "Recording").
        params: names of the parameters to record (default: all prunable ones). Aliases of a
            tied weight name its canonical tensor, which gets one column block.
        memory_budget: bytes of storage kept on the storage device; further rows spill to
            disk-backed files in `spill_dir` (default: a temp folder). None: no limit.
        chunk_rows: rows per storage chunk. `capacity`: allocate that many rows up front
            (one chunk, so `trajectory()` returns a view without any copy).
        storage_device: where rows are stored (default: the parameters' device).
        probe_seed: RNG seed of the probe forward (its dropout masks are fixed).
        layout: a `ParamLayout` saying what to record instead of `params` and `mask`: its
            `names` are the recorded parameters (canonical names), its `alive` their entries.
            A grouped layout (`groups.ChannelGroups.layout(mask)`) records one column per
            group: each step's (d,) row x̃ is computed as for weights, then summed over each
            group on the parameters' device (one segment-sum); the store holds (G, T).
        train_model: the module `step` trains through (a `DistributedDataParallel` wrapper
            of `model`); the "after" and probe forwards always use `model` itself.
        loss_reduce: in a distributed run, sums a (3,) float64 tensor [loss before · n,
            loss after · n, n] of this rank's same-batch shard over the ranks, in place, so
            that ΔL is the global batch's (one all-reduce per step). Probe losses are
            computed on the whole probe set by every rank and are not reduced.
        shard: store only the columns [shard.start, shard.stop) of every row (a distributed
            recording: each process its share of the columns, memory ÷ world); the
            trajectory carries the shard for its solver and `Trajectory.full`.
        probe_reduce: in a distributed run whose processes each hold a slice of the probe
            set (`probe_data`), sums a (2,) float64 tensor [summed loss, count] over them in
            place, so that the probe loss is the whole probe set's.
        forward: ``forward(module, inputs) -> outputs``, how the model is called on a batch's
            inputs (default ``module(inputs)``; a Hugging Face model takes a dict of keyword
            arguments: ``lambda m, batch: m(**batch)``).
        first_order: also record z_t = g_t · Δθ_t (`Trajectory.first_order`) over every parameter
            the optimizer trains, with the ``.grad`` the step used: `after_step` must come before
            the gradients are zeroed. In a distributed run each rank sees the all-reduced gradient
            and the same step, so z is the same on every rank.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        mask: Mask | Mapping[str, torch.Tensor] | None = None,
        dtype: torch.dtype = torch.float32,
        delta_loss: str = "same_batch",
        probe_data: Batch | Iterable[Batch] | None = None,
        momentum_features: bool = False,
        *,
        params: Sequence[str] | None = None,
        memory_budget: int | None = None,
        spill_dir: str | None = None,
        chunk_rows: int = 256,
        capacity: int | None = None,
        storage_device: torch.device | str | None = None,
        probe_seed: int = 0,
        layout: ParamLayout | None = None,
        train_model: nn.Module | None = None,
        loss_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        shard: ColumnShard | None = None,
        probe_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        forward: Callable[[nn.Module, Any], Any] | None = None,
        first_order: bool = False,
    ) -> None:
        if delta_loss not in DELTA_LOSSES:
            raise ValueError(f"unknown delta_loss {delta_loss!r}; valid: {', '.join(DELTA_LOSSES)}")
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage dtype must be float32, bfloat16 or float16, got {dtype}")
        if delta_loss == "probe" and probe_data is None:
            raise ValueError("delta_loss='probe' needs probe_data: (inputs, targets) or a list of batches")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.delta_loss = delta_loss
        self.momentum_features = momentum_features
        self.dtype = dtype
        if layout is not None:
            if params is not None or mask is not None:
                raise ValueError("give either layout or params/mask: the layout's names and alive say what to record")
            prunable = self._layout_parameters(model, layout)
        else:
            prunable, layout = self._weight_layout(model, mask, params)
        self.layout = layout  # the entry order of every (d,) row, and its columns
        self.param_names = self.layout.names
        self.params = [prunable[n] for n in self.param_names]
        self.alive = self.layout.alive
        device = self.params[0].device
        self.sizes = self.layout.sizes
        self.d = self.layout.d
        self.n_columns = self.layout.n_columns  # the row's columns: d, or G when grouped
        if self.d == 0:
            raise ValueError("nothing to record: every prunable weight is pruned")
        if shard is not None and not (0 <= shard.start <= shard.stop <= self.n_columns):
            raise ValueError(f"shard [{shard.start}, {shard.stop}) is not within the {self.n_columns} columns")
        if shard is not None and momentum_features:
            raise ValueError("the momentum model cannot be recorded in column shards")
        self.shard = shard
        width = self.n_columns if shard is None else shard.stop - shard.start  # the stored row's width
        self.device = torch.device(storage_device) if storage_device is not None else device
        self._store = _Store(
            width, dtype, self.device, capacity or chunk_rows, memory_budget, spill_dir,
            exact=capacity is not None, stage_device=device,
        )
        # θ^t and θ^{t+1} (alive entries); after a step they swap, so θ^{t+1} is the next step's θ^t: one copy of θ
        # per step, unless the weights changed between `after_step` and `before_step` (`_held`).
        self._prev = torch.empty(self.d, dtype=torch.float32, device=device)
        self._cur = torch.empty_like(self._prev)
        self._held: list[tuple[int, int]] | None = None  # the recorded tensors' (version, address) _prev holds
        # Fully alive parameters are copied with one multi-tensor launch into these views.
        self._views = {id(b): self.layout.dense_views(b) for b in (self._prev, self._cur)}
        # Grouped: the (G,) float32 sums (only when stored in another dtype; float32 sums go
        # straight into the row's slot), and column_of moved to the device once, here.
        self._columns: torch.Tensor | None = None
        if self.layout.grouped:
            self.layout.column_of_on(device)
            if dtype != torch.float32 or shard is not None:
                self._columns = torch.empty(self.n_columns, dtype=torch.float32, device=device)
        self._loss_before: list[torch.Tensor] = []
        self._loss_after: list[torch.Tensor] = []
        self._norms = _norm_modules(model)
        self._probe = as_batches(probe_data, "probe_data") if probe_data is not None else []
        self._probe_seed = probe_seed
        self._probe_rng: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._probe_cache: tuple[list[int], torch.Tensor] | None = None
        self._pending: dict[str, Any] | None = None
        self._train_model = train_model if train_model is not None else model
        self._loss_reduce = loss_reduce
        self._probe_reduce = probe_reduce
        self._forward = forward if forward is not None else _call
        self.scale: float | None = None
        self.rows = 0
        # First-order term: the trained parameters and a float32 snapshot of θ^t (views of one buffer).
        self._trained: list[torch.Tensor] = []
        self._snapshot: list[torch.Tensor] = []
        self._first_order: list[torch.Tensor] = []  # 0-dim float64 z_t per recorded step
        if first_order:
            self._trained = _trained_parameters(optimizer)
            flat = torch.empty(sum(p.numel() for p in self._trained), dtype=torch.float32, device=device)
            self._snapshot = [v.view(p.shape) for v, p in
                              zip(flat.split([p.numel() for p in self._trained]), self._trained, strict=True)]

    # --- public API -------------------------------------------------------------------
    def step(self, inputs: Any, targets: Any) -> torch.Tensor:
        """Perform and record one training step; return the (detached) training loss."""
        self.before_step(inputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self._forward(self._train_model, inputs), targets)
        loss.backward()
        self.optimizer.step()
        self.after_step(loss)
        return loss.detach()

    def before_step(self, inputs: Any, targets: Any) -> None:
        """Snapshot θ^t (and the RNG, or the probe loss). Call right before the forward."""
        if self._pending is not None:
            raise RuntimeError("before_step called twice without after_step")
        if self.scale is None:
            lr = self._lr()
            if not (lr > 0 and math.isfinite(lr)):
                raise ValueError(f"learning rate must be > 0 at the first recorded step to scale the squared "
                                 f"updates, got {lr} (a warmup that starts at 0? start recording after it)")
            self.scale = lr * lr
        if self._held is None or self._held != self._stamps():  # else _prev already holds θ^t
            self._gather(self._prev)
        self._held = None
        if self._trained:
            with torch.no_grad():
                torch._foreach_copy_(self._snapshot, self._trained)  # θ^t of every trained parameter
        pending: dict[str, Any] = {"inputs": inputs, "targets": targets}
        if self.delta_loss == "same_batch":
            pending["rng"] = _rng_state(self._prev.device)
        else:
            pending["before"] = self._probe_before()
        self._pending = pending

    @torch.no_grad()
    def after_step(self, loss: torch.Tensor) -> None:
        """Record the step just taken; `loss` is the training forward's loss at θ^t."""
        if self._pending is None:
            raise RuntimeError("after_step called without before_step")
        pending, self._pending = self._pending, None
        # Inside an autocast region the cast copies of the weights are cached from the training
        # forward; the step changed the weights, so drop them before evaluating θ^{t+1}
        # (only then: clearing costs ~0.4 ms per step on a GPU).
        if torch.is_autocast_enabled(self._prev.device.type):
            torch.clear_autocast_cache()
        if self.delta_loss == "same_batch":
            before = loss.detach().float().reshape(())
            after = self._same_batch_after(pending)
            if self._loss_reduce is not None:  # the global batch's losses: Σ_r n_r·L_r / Σ_r n_r
                n = float(len(pending["targets"]))
                sums = self._loss_reduce(torch.stack([before.double() * n, after.double() * n,
                                                      torch.tensor(n, dtype=torch.float64, device=before.device)]))
                before, after = (sums[0] / sums[2]).float(), (sums[1] / sums[2]).float()
        else:
            before = pending["before"]
            after = self._probe_loss()
            self._probe_cache = (self._versions(), after)
        z = self._first_order_term() if self._trained else None  # before any row is written: it may refuse
        # x̃ = (θ^{t+1} − θ^t)² / η₀² (the sign is squared away), written into column t of the store; θ^{t+1}
        # stays in _cur, which becomes the next step's θ^t.
        self._gather(self._cur)
        x = self._prev.sub_(self._cur).square_().mul_(1.0 / self.scale)  # type: ignore[operator]
        row = self._store.next_row()
        a, b = (0, self.n_columns) if self.shard is None else (self.shard.start, self.shard.stop)
        if not self.layout.grouped:
            row.copy_(x[a:b], non_blocking=True)
        elif self._columns is None:  # x̃_g = Σ_{k∈g} x̃_k, one segment-sum into the float32 slot
            self.layout.to_columns(x, out=row)
        else:
            row.copy_(self.layout.to_columns(x, out=self._columns)[a:b], non_blocking=True)
        self._prev, self._cur = self._cur, self._prev
        self._held = self._stamps()
        if z is not None:
            self._first_order.append(z)
        self._loss_before.append(before)
        self._loss_after.append(after)
        self.rows += 1

    def trajectory(self) -> Trajectory:
        """Return the recorded `Trajectory` (checks every value is finite)."""
        if self.rows == 0:
            raise ValueError("empty trajectory: no steps were recorded")
        if self._pending is not None:
            raise RuntimeError("a step is in progress: call after_step first")
        buf = self._store.consolidate(self.rows)  # (d, T)
        before = torch.stack(self._loss_before).float().cpu()
        after = torch.stack(self._loss_after).float().cpu()
        y = after - before
        if self._trained and len(self._first_order) != self.rows:
            raise ValueError(f"the first-order term covers {len(self._first_order)} of the {self.rows} recorded steps "
                             "(rows restored from a recording made without first_order?)")  # fmt: skip
        z = torch.stack(self._first_order).cpu() if self._trained else None  # (T,) float64
        self._check_finite(buf, before, after, z)
        X = buf.T
        X_lag = lags = None
        if self.momentum_features:
            if self.rows < 2:
                raise ValueError("the momentum model needs at least 2 recorded steps")
            X, X_lag = buf[:, 1:].T, buf[:, :-1].T  # offset views: row t and row t−1
            y = y[1:]
            lags = torch.stack([before[1:], before[:-1]], dim=1)
            before, after = before[1:], after[1:]
            z = z[1:] if z is not None else None
        return Trajectory(
            X=X,
            y=y,
            scale=float(self.scale),  # type: ignore[arg-type]
            layout=self.layout,
            loss_before=before,
            loss_after=after,
            X_lag=X_lag,
            lags=lags,
            shard=self.shard,
            first_order=z,
        )

    def state_dict(self) -> dict[str, Any]:
        """Return the rows recorded so far, on the CPU in their storage dtype: what `load_state_dict` continues from.

        Its size is about ``rows × n_columns × element size`` bytes (T × d × 4 for float32 storage).
        """
        rows = self.rows
        X = self._store.consolidate(rows).to("cpu", copy=True)  # (n_columns, T) in the storage dtype
        z = self._first_order  # the first-order term z_t, when recorded
        return {"rows": rows, "X": X, "scale": self.scale,
                "loss_before": torch.stack(self._loss_before).detach().cpu() if rows else torch.empty(0),
                "loss_after": torch.stack(self._loss_after).detach().cpu() if rows else torch.empty(0),
                "first_order": torch.stack(z).detach().cpu() if z else None}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Put a saved recording's rows into this fresh recorder of the same layout: later steps follow them."""
        X = state["X"]  # (n_columns, T)
        if self.rows or X.shape[0] != self._store.d or X.dtype != self.dtype:
            raise ValueError(f"the saved recording ({X.shape[0]} columns of {X.dtype}) does not fit this round's "
                             f"recorder ({self._store.d} columns of {self.dtype})")  # fmt: skip
        for t in range(int(state["rows"])):
            self._store.next_row().copy_(X[:, t])
        device = self._prev.device
        self._loss_before = list(state["loss_before"].to(device).unbind())
        self._loss_after = list(state["loss_after"].to(device).unbind())
        if state.get("first_order") is not None:
            self._first_order = list(state["first_order"].to(device).unbind())
        self.scale = state["scale"]
        self.rows = int(state["rows"])

    def nbytes(self) -> int:
        """Return the bytes of storage allocated for rows (memory and disk)."""
        return sum(c.numel() * c.element_size() for c in self._store.chunks)

    @property
    def spilled(self) -> bool:
        """Whether rows went to disk because the memory budget was exceeded."""
        return self._store.spilled

    def close(self) -> None:
        """Release the storage (and delete spill files)."""
        self._store.close()

    def __del__(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()

    # --- internals --------------------------------------------------------------------
    def _lr(self) -> float:
        first = self.params[0]
        for g in self.optimizer.param_groups:
            if any(p is first for p in g["params"]):
                return float(g["lr"])
        raise ValueError(f"parameter {self.param_names[0]!r} is not in the optimizer")

    @staticmethod
    def _weight_layout(model: nn.Module, mask: Mask | Mapping[str, torch.Tensor] | None,
                       params: Sequence[str] | None) -> tuple[dict[str, nn.Parameter], ParamLayout]:  # fmt: skip
        """The recorded parameters and their (ungrouped) layout from `params` and `mask`."""
        prunable = prunable_parameters(model)
        if params is not None:
            named = dict(model.named_parameters())
            aliases = parameter_aliases(model)
            missing = [n for n in params if aliases.get(n, n) not in named]
            if missing:
                raise ValueError(f"unknown parameters {missing}; {names_hint(model)}")
            # Canonical names: an alias and its tensor's canonical name are one column block.
            prunable = {aliases.get(n, n): named[aliases.get(n, n)] for n in params}
        if mask is not None:
            m = (mask if isinstance(mask, Mask) else Mask(mask)).canonical(model)
            unknown = [n for n in m if n not in prunable]
            if unknown:
                raise ValueError(f"mask covers non-recorded parameters {unknown}")
            alive = {n: (m[n] if n in m else torch.ones_like(p, dtype=torch.bool, device="cpu"))
                     for n, p in prunable.items()}  # fmt: skip
        else:
            alive = {n: torch.ones_like(p, dtype=torch.bool, device="cpu") for n, p in prunable.items()}
        return prunable, ParamLayout.of(prunable, alive)

    @staticmethod
    def _layout_parameters(model: nn.Module, layout: ParamLayout) -> dict[str, nn.Parameter]:
        """Name → parameter of the layout's names (canonical names, shapes checked)."""
        if not layout.names:
            raise ValueError("the layout names no parameters: nothing to record")
        named = dict(model.named_parameters())
        aliases = parameter_aliases(model)
        missing = [n for n in layout.names if aliases.get(n, n) not in named]
        if missing:
            raise ValueError(f"layout names unknown parameters {missing}; {names_hint(model)}")
        canonical = [aliases.get(n, n) for n in layout.names]
        if canonical != layout.names:
            raise ValueError(f"layout names must be canonical parameter names, got {layout.names}")
        for n in layout.names:
            if named[n].shape != layout.shapes[n]:
                shapes = f"{tuple(layout.shapes[n])}, the model {tuple(named[n].shape)}"
                raise ValueError(f"layout gives {n!r} shape {shapes}")
        return {n: named[n] for n in layout.names}

    def _gather(self, out: torch.Tensor) -> None:
        """Copy the alive entries of every recorded parameter into the flat (d,) `out`."""
        self.layout.flatten_into(self.params, out, self._views[id(out)])

    def _same_batch_after(self, pending: dict[str, Any]) -> torch.Tensor:
        """L_B(θ^{t+1}) with the training forward's dropout masks and batch statistics."""
        device = self._prev.device
        resume = _rng_state(device)
        _set_rng_state(pending["rng"], device)  # replay the training forward's dropout
        try:
            with _FrozenRunningStats(self._norms):
                out = self._forward(self.model, pending["inputs"])
                return self.loss_fn(out, pending["targets"]).detach().float().reshape(())
        finally:
            _set_rng_state(resume, device)

    def _versions(self) -> list[int]:
        return [p._version for p in self.model.parameters()]

    def _stamps(self) -> list[tuple[int, int]]:
        """(version, address) of every recorded tensor: they change with any in-place write or a new ``.data``."""
        return [(p._version, p.data_ptr()) for p in self.params]

    def _probe_before(self) -> torch.Tensor:
        """L_P(θ^t): reuse the previous step's "after" unless the weights changed since."""
        if self._probe_cache is not None and self._probe_cache[0] == self._versions():
            return self._probe_cache[1]
        return self._probe_loss()

    @torch.no_grad()
    def _probe_loss(self) -> torch.Tensor:
        """Mean loss over the probe batches: fixed dropout seed, running stats untouched."""
        device = self._prev.device
        devices = [device] if device.type == "cuda" else []
        total = torch.zeros((), dtype=torch.float32, device=device)
        count = 0
        with torch.random.fork_rng(devices=devices), _FrozenRunningStats(self._norms):
            if self._probe_rng is None:  # seeding every device is slow: do it once, then replay
                torch.manual_seed(self._probe_seed)
                self._probe_rng = _rng_state(device)
            _set_rng_state(self._probe_rng, device)
            for inputs, targets in self._probe:
                n = len(targets)
                total += self.loss_fn(self._forward(self.model, inputs), targets).detach().float() * n
                count += n
        if self._probe_reduce is not None:  # the whole probe set's mean over the processes' slices
            sums = self._probe_reduce(torch.stack([total.double(), torch.tensor(float(count), dtype=torch.float64,
                                                                               device=total.device)]))  # fmt: skip
            return (sums[0] / sums[1]).float()
        return total / count

    def _first_order_term(self) -> torch.Tensor:
        """Return z_t = Σ_p g_p · (θ_p^{t+1} − θ_p^t) as a 0-dim float64 tensor (no host sync).

        Parameters without a gradient this step were not moved by it and add nothing.
        """
        pairs = [(s, p, p.grad) for s, p in zip(self._snapshot, self._trained, strict=True) if p.grad is not None]
        if not pairs:
            raise RuntimeError("recording the first-order term needs the step's gradients, but every trained "
                               "parameter's .grad is None: call after_step before the gradients are zeroed")
        snap, params, grads = (list(v) for v in zip(*pairs, strict=True))
        grads = [g.to_dense() if g.is_sparse else g for g in grads]
        torch._foreach_sub_(snap, params)  # θ^t − θ^{t+1} = −Δθ, in the snapshot's float32
        torch._foreach_mul_(snap, grads)  # −g ∘ Δθ
        sums = torch.stack([s.sum(dtype=torch.float64) for s in snap])
        return -sums.sum()

    def _check_finite(self, buf: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                      first_order: torch.Tensor | None = None) -> None:  # fmt: skip
        for name, v in (("loss before", before), ("loss after", after), ("first-order term", first_order)):
            if v is None:
                continue
            if not torch.isfinite(v).all():
                t = int(torch.nonzero(~torch.isfinite(v))[0])
                raise ValueError(f"non-finite {name} at recorded step {t}: {float(v[t])}")
        # (T,) rows holding a non-finite value, checked in slices of weights to bound temporaries.
        bad_rows = torch.zeros(buf.shape[1], dtype=torch.bool, device=buf.device)
        step = max(4096, buf.shape[0] // 32)
        for a in range(0, buf.shape[0], step):
            bad_rows |= ~torch.isfinite(buf[a : a + step]).all(dim=0)
        bad_rows = bad_rows.cpu()
        if bad_rows.any():
            t = int(torch.nonzero(bad_rows)[0])
            col = int(torch.nonzero(~torch.isfinite(buf[:, t].cpu()))[0]) + (self.shard.start if self.shard else 0)
            where = ""
            if self.layout.grouped:  # the group's first entry names a parameter
                where = f" (group {col})"
                col = int(torch.nonzero(self.layout.column_of == col)[0])
            ((segment, _, _),) = self.layout.locate(torch.tensor([col]))
            name = self.param_names[segment]
            raise ValueError(f"non-finite weight update at recorded step {t} in parameter {name!r}{where}")
