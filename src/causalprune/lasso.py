"""Lasso solvers for the causal regression (docs/method.md, "2. The Lasso"). Pure tensors in, tensors out.

Objective, in scikit-learn's scaling (T rows, γ the penalised coefficients)::

    P(γ) = (1 / 2T) · ‖y − Xγ − Zc‖² + α · ‖γ‖₁

Z (T × m) holds optional *unpenalised* regressors (the loss lags of the momentum model,
docs/method.md, "1. Recording: one row per optimizer step"). They are profiled out exactly:
with Q an orthonormal basis of Z's columns and the projection P = I − QQᵀ, the problem is a
plain Lasso on (PX, Py), and c is recovered by least squares at the end. P is only ever
applied to T-vectors and to the few columns a solver gathers, never to X itself.

X may be one (T × d) tensor or a list of blocks sharing T (the momentum model's lagged
block is an offset view of the same buffer); it may be float32, bfloat16 or float16, any
layout, on CPU or CUDA. X is never copied, to float64 or to another device: products are
taken in float32 chunks on X's device, and the columns that are recomputed exactly in
float64 (on the host) are gathered in blocks of at most `Design.block_columns` columns
(≈ 64 MiB of float64), so beyond X a solve holds a few (d,) vectors (sgd: also one
minibatch of rows; cd: its working set's columns and Gram matrix), also for dense
solutions (``minnorm``), never a copy of X. The (d,) vectors are float32 (Xᵀr, column
norms, priorities) except the float64 coefficients, and d-length work (screening, top-k
selections) runs in chunks of `CHUNK` entries: cd holds 17 bytes per column beyond X
(coefficients, norms, Xᵀr, screened flags) plus a few MiB; a working set wider than T is
solved on its columns, without its Gram matrix (docs/benchmarks.md).

Solvers, each registered under its name with `register_solver` and called as
``fn(D, alpha, tol, max_iter, **options) -> SolverOutput`` (its keyword-only parameters are
the options `solve` accepts for it):

* ``cd`` — exact coordinate descent inside working sets with gap-safe screening (the
  celer / skglm strategy: Massias et al. 2018, Ndiaye et al. 2017). The outer loop makes
  one pass over X per iteration (Xᵀr, duality gap, screening, working-set priorities);
  the working-set subproblem (a few hundred columns) is solved on its Gram matrix (on its
  columns once that is wider than T and `GRAM_BYTES`) by scikit-learn's compiled coordinate
  descent. Default on CPU.
* ``fista`` — accelerated proximal gradient (Beck & Teboulle 2009), step 1/L with L from
  power iteration, adaptive restart (O'Donoghue & Candès 2015), duality-gap stop. Matrix-
  vector products only: the GPU path.
* ``sgd`` — the paper's solver: minibatch stochastic gradient with the cumulative L1
  penalty of Tsuruoka et al. (2009), coefficients starting at 0, batch 16, lr 0.1, at most
  50 epochs, stop after 5 epochs without improvement (paper App. C). ``variant="authors"``
  gives the authors' code instead (lr 0.1/t^0.1, 30 epochs, patience 2, α = 1e-3/d, y
  divided by its mean).
* ``minnorm`` — the α → 0 limit that SGD from zero tends to: γ = Xᵀ(XXᵀ + ρI)⁻¹y through
  the T × T Gram matrix.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .layout import Segments


class ConvergenceWarning(RuntimeWarning):
    """A Lasso solver stopped before its duality-gap criterion was met (the result is still returned)."""


@dataclass(frozen=True)
class LassoResult:
    """A Lasso solution and the evidence of its quality.

    Attributes:
        coef: (p,) float32 penalised coefficients γ, blocks concatenated in input order.
        objective: P(γ) in scikit-learn's scaling (with c at its optimum for this γ).
        gap: duality gap P(γ) − D(θ) ≥ 0 in the same units (``nan`` for minnorm at α=0).
        n_iter: outer iterations (cd), iterations (fista), epochs (sgd), 1 (minnorm).
        alpha: the L1 weight used.
        solver: the solver that produced it.
        kkt: (p,) |x_kᵀ r| / max(T·α, ‖Xᵀr‖_∞) ∈ [0, 1]: how close weight k is to entering
            the model (docs/method.md, "3. Scores, tie-break, masks"); equals |x_kᵀ r| / (T·α)
            at an exact solution.
        unpenalized: (m,) coefficients c of the unpenalised regressors (empty if none).
        converged: whether the solver's stopping rule was met.
        time_s: wall-clock seconds of the solve.
    """

    coef: torch.Tensor
    objective: float
    gap: float
    n_iter: int
    alpha: float
    solver: str
    kkt: torch.Tensor
    unpenalized: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    converged: bool = True
    time_s: float = 0.0


@dataclass(frozen=True)
class SolverOutput:
    """What a registered solver returns to `solve` (p columns, T rows, all on the CPU).

    Attributes:
        coef: (p,) float64 penalised coefficients γ of the projected problem (PX, Py).
        objective: P(γ) in scikit-learn's scaling (`Design.evaluate`).
        gap: duality gap at γ, same units (``nan`` when α = 0).
        n_iter: iterations the solver ran (its own unit: outer iterations, iterations, epochs).
        corr: (p,) float32 (PX)ᵀr: a float32 pass over X, recomputed exactly in float64 (then
            rounded to float32) on the support and the largest entries.
        residual: (T,) float64 r = Py − PXγ.
        converged: whether the solver's stopping rule was met.
    """

    coef: torch.Tensor
    objective: float
    gap: float
    n_iter: int
    corr: torch.Tensor
    residual: torch.Tensor
    converged: bool


@dataclass(frozen=True)
class Comm:
    """How the column shards of a distributed design meet (SPEC §9): each process holds some columns of X.

    `sum_` sums a tensor over the processes in place (an all-reduce), `max` takes the maximum
    of a float over them, `gather` returns every process's (picklable) object in rank order,
    `broadcast` the primary's; `rank` is this process's place in that order. For one process
    they are identities. The driver builds one from the platform seam (`causalprune.platform`).
    """

    sum_: Callable[[torch.Tensor], torch.Tensor]
    max: Callable[[float], float]
    gather: Callable[[Any], list[Any]] = lambda obj: [obj]
    broadcast: Callable[[Any], Any] = lambda obj: obj
    rank: int = 0


    @classmethod
    def over(cls, group: Any) -> Comm:
        """The `Comm` of a process group such as `causalprune.platform.Platform` (its reductions and rank)."""
        return cls(sum_=group.all_reduce_sum, max=group.max_float, gather=group.all_gather_object,
                   broadcast=group.broadcast_object, rank=group.rank)  # fmt: skip


LOCAL = Comm(sum_=lambda t: t, max=lambda x: x)


class Design:
    """The design matrix [X_1 | X_2 | …] with unpenalised regressors Z projected out.

    Only the operations the solvers need, each a pass over X in float32 chunks:
    ``rmatvec`` (Xᵀr), ``matvec`` (Xv), ``sq_norms`` (column norms), ``gram`` (XXᵀ) and
    ``columns`` (gather a few columns as a float64 CPU array). It also keeps what the
    solvers read directly: the raw ``blocks`` of X, the targets (``y64`` raw, ``y``
    projected) and the unpenalised regressors ``Z`` (T × m, float64, CPU).
    """

    EXACT_SUPPORT = 20_000  # largest support whose columns are gathered for exact residuals
    BLOCK_BYTES = 64 << 20  # float64 bytes of columns gathered at once by the blocked products

    def __init__(
        self,
        X: torch.Tensor | Sequence[torch.Tensor],
        y: torch.Tensor,
        unpenalized: torch.Tensor | None = None,
        comm: Comm | None = None,
    ) -> None:
        self.comm = comm if comm is not None else LOCAL
        blocks = [X] if isinstance(X, torch.Tensor) else list(X)
        if not blocks:
            raise ValueError("X has no blocks")
        T = blocks[0].shape[0] if blocks[0].dim() == 2 else -1
        for i, b in enumerate(blocks):
            if b.dim() != 2:
                raise ValueError(f"X block {i} must be 2-D (T, d), got shape {tuple(b.shape)}")
            if b.shape[0] != T:
                raise ValueError(f"X blocks disagree on T: block 0 has {T} rows, block {i} {b.shape[0]}")
            if b.dtype not in (torch.float32, torch.bfloat16, torch.float16):
                raise ValueError(f"X must be float32, bfloat16 or float16, got {b.dtype}")
        if T == 0:
            raise ValueError("empty trajectory: X has 0 rows (no recorded steps)")
        if y.dim() != 1 or y.shape[0] != T:
            raise ValueError(f"y must have shape ({T},), got {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            bad = int(torch.nonzero(~torch.isfinite(y))[0])
            raise ValueError(f"y contains NaN or Inf (first at row {bad})")
        self.blocks = blocks
        self.device = blocks[0].device
        self.T = T
        self.segments = Segments([b.shape[1] for b in blocks])  # where each block's columns sit in γ
        self.sizes = self.segments.sizes
        self.offsets = self.segments.offsets
        self.p = self.segments.total  # columns held here (this shard's, when sharded)
        counts = [self.p] if comm is None else comm.gather(self.p)  # every shard's (one collective, on all ranks)
        # Sharded: X holds this process's columns of several processes' (y and Z are every process's). A comm of
        # one process (LOCAL, a single-process group) holds every column: the exact, unsharded paths apply.
        self.sharded = len(counts) > 1
        if min(counts) == 0:
            empty = [r for r, c in enumerate(counts) if c == 0]
            raise ValueError("X has no columns (nothing alive to score)" if comm is None else
                             f"X has no columns on shard(s) {empty} of {len(counts)}: fewer columns than processes")
        self.p_total = int(sum(counts))  # columns of every shard
        # Columns per gathered block: ≈ BLOCK_BYTES of float64, so the transient memory of
        # the blocked products is a few times BLOCK_BYTES whatever d is.
        self.block_columns = max(64, self.BLOCK_BYTES // (8 * T))
        # Unpenalised regressors: orthonormal basis Q (T × m), float64 on CPU.
        if unpenalized is not None:
            Z = unpenalized.detach().to("cpu", torch.float64)
            if Z.dim() == 1:
                Z = Z[:, None]
            if Z.shape[0] != T:
                raise ValueError(f"unpenalized must have {T} rows, got {Z.shape[0]}")
            if not torch.isfinite(Z).all():
                raise ValueError("unpenalized regressors contain NaN or Inf")
            Q, R = torch.linalg.qr(Z)
            keep = R.diagonal().abs() > 1e-10 * max(float(R.diagonal().abs().max()), 1e-300)
            self.Z, self.Q, self.R = Z, Q[:, keep], R[keep][:, keep]
            self.z_keep = keep
        else:
            self.Z = torch.zeros(T, 0, dtype=torch.float64)
            self.Q = self.Z
            self.R = torch.zeros(0, 0, dtype=torch.float64)
            self.z_keep = torch.zeros(0, dtype=torch.bool)
        self._xty: torch.Tensor | None = None
        self.y64 = y.detach().to("cpu", torch.float64)  # (T,) float64, raw y
        self.y = self.project(self.y64)  # (T,) float64, P y

    # --- small (T-sized) operations, float64 on CPU ---------------------------------
    def project(self, v: torch.Tensor) -> torch.Tensor:
        """Return P v for a (T,) or (T, k) float64 CPU tensor."""
        if self.Q.shape[1] == 0:
            return v
        return v - self.Q @ (self.Q.T @ v)

    def _project_(self, v: torch.Tensor) -> torch.Tensor:
        """Overwrite the (T, k) float64 CPU tensor `v` with P v (the same numbers as `project`) and return it."""
        if self.Q.shape[1]:
            v -= self.Q @ (self.Q.T @ v)
        return v

    def unpenalized_coef(self, residual_raw: torch.Tensor) -> torch.Tensor:
        """Return c minimising ‖(y − Xγ) − Zc‖ given residual_raw = y − Xγ (float64, (T,))."""
        m = self.Z.shape[1]
        c = torch.zeros(m, dtype=torch.float64)
        if self.Q.shape[1]:
            c[self.z_keep] = torch.linalg.solve_triangular(
                self.R, (self.Q.T @ residual_raw)[:, None], upper=True
            )[:, 0]
        return c

    # --- passes over X ------------------------------------------------------------
    def _chunks(self, b: torch.Tensor):
        """Yield (start, float32 chunk of columns) keeping temporaries ≲ 3 % of X."""
        d = b.shape[1]
        if b.dtype == torch.float32:
            yield 0, b
            return
        step = max(4096, math.ceil(d / 32))
        for a in range(0, d, step):
            yield a, b[:, a : a + step].float()

    def rmatvec(self, r: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Return Xᵀr as a (p,) float32 tensor on X's device; r is (T,) and lies in range(P).

        `out`, a (p,) float32 tensor on X's device, receives the result (no new allocation).
        """
        rr = r.to(self.device, torch.float32)
        if out is None:
            out = torch.empty(self.p, dtype=torch.float32, device=self.device)
        for b, o in zip(self.blocks, self.offsets[:-1], strict=True):
            for a, chunk in self._chunks(b):
                torch.mv(chunk.T, rr, out=out[o + a : o + a + chunk.shape[1]])  # written in place: no temporary
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Return P X v as a (T,) float64 CPU tensor, for a (p,) vector v."""
        vv = v.to(self.device, torch.float32)
        acc = torch.zeros(self.T, dtype=torch.float32, device=self.device)
        for b, o in zip(self.blocks, self.offsets[:-1], strict=True):
            for a, chunk in self._chunks(b):
                acc += chunk @ vv[o + a : o + a + chunk.shape[1]]
        return self.project(self.comm.sum_(acc.to("cpu", torch.float64)))

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """Return aᵀb for two (p,) coefficient-space vectors, summed over the shards of a sharded design."""
        return float(self.comm.sum_(torch.dot(a, b).reshape(1).to(torch.float64))[0])

    def norms(self) -> torch.Tensor:
        """Return ‖P x_j‖ for every column as a (p,) float32 CPU tensor.

        Beyond the result this holds one float32 (p,) vector per unpenalised regressor pass
        (with Z) and `CHUNK`-sized float64 temporaries: ‖Px‖² = ‖x‖² − Σ_k (q_kᵀx)² is formed
        chunk by chunk in float64 from float32 terms, as precise as the float32 pass allows.
        """
        out = torch.empty(self.p, dtype=torch.float32)
        for b, part in zip(self.blocks, self.segments.split(out), strict=True):
            # A norm reduction reads X once, accumulates in float32 and allocates no temporary.
            if b.device.type == "cpu":
                torch.linalg.vector_norm(b, dim=0, dtype=torch.float32, out=part)
            else:
                part.copy_(torch.linalg.vector_norm(b, dim=0, dtype=torch.float32))
        if self.Q.shape[1]:
            along = torch.zeros(self.p, dtype=torch.float32)  # Σ_k (q_kᵀx)², float32
            for k in range(self.Q.shape[1]):
                t = self.rmatvec(self.Q[:, k]).to("cpu")
                along.addcmul_(t, t)
                del t
            for a in range(0, self.p, CHUNK):
                e = min(a + CHUNK, self.p)
                sq = out[a:e].double().square_().sub_(along[a:e].double()).clamp_(min=0.0)
                out[a:e] = sq.sqrt_()
        return out

    def gram(self) -> torch.Tensor:
        """Return (PX)(PX)ᵀ as a (T, T) float64 CPU tensor."""
        G = torch.zeros(self.T, self.T, dtype=torch.float64)
        for b in self.blocks:
            for _, chunk in self._chunks(b):
                G += (chunk @ chunk.T).to("cpu", torch.float64)
        self.comm.sum_(G)  # Σ_r X_r X_rᵀ: the Gram of every shard's columns
        return self.project(self.project(G).T)

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        """Return the columns `idx` of PX as a (T, len(idx)) float64 CPU tensor.

        This allocates 8·T·len(idx) bytes (and as much again for the projection): callers
        gather working sets and supports, or blocks of at most `block_columns` columns.
        """
        idx = idx.to("cpu", torch.long)
        if len(idx) and _is_run(idx):
            return self._column_range(int(idx[0]), int(idx[-1]) + 1)
        out = torch.empty(self.T, len(idx), dtype=torch.float64)
        for i, pos, local in self.segments.locate(idx):
            b = self.blocks[i]
            cols = b.T.index_select(0, local.to(b.device))  # (k, T): rows of Xᵀ
            out[:, pos] = cols.to("cpu", torch.float64).T
        return self._project_(out)

    def _column_range(self, start: int, stop: int) -> torch.Tensor:
        """Return the columns start, …, stop − 1 of PX as a (T, stop − start) float64 CPU tensor (a copy, no gather)."""
        out = torch.empty(self.T, stop - start, dtype=torch.float64)
        for i, b in enumerate(self.blocks):
            lo, hi = self.segments.span(i)
            a, e = max(start, lo), min(stop, hi)
            if a < e:
                out[:, a - start : e - start].copy_(b[:, a - lo : e - lo])
        return self._project_(out)

    def smallest(self, key: torch.Tensor, k: int) -> torch.Tensor:
        """Return the sorted local indices of this shard's entries among the k smallest of `key` over every shard.

        `key` is (p,) float CPU, one value per column held here (no NaN). Ties are ordered by
        global column position (shard order, then index), so every process agrees on the selection.
        """
        local = _select(key, k, largest=False)  # position order inside the shard
        if not self.sharded:
            return local
        pieces = self.comm.gather((key[local], local))  # [(values, indices)] in shard order
        values = torch.cat([v for v, _ in pieces])
        owner = torch.cat([torch.full((len(i),), r, dtype=torch.long) for r, (_, i) in enumerate(pieces)])
        index = torch.cat([i for _, i in pieces])
        chosen = torch.argsort(values, stable=True)[:k]  # candidates are in position order: ties by position
        mine = chosen[owner[chosen] == self.comm.rank]
        return index[mine].sort().values

    def shared_columns(self, idx: torch.Tensor) -> tuple[torch.Tensor, slice]:
        """Return (every shard's gathered columns of PX, the slice of them that is this shard's `idx`).

        The columns come as one (T, Σ_r len(idx_r)) float64 CPU tensor in shard order; for one
        process it is `columns(idx)` and the slice covers it all.
        """
        cols = self.columns(idx)
        if not self.sharded:
            return cols, slice(0, cols.shape[1])
        pieces = self.comm.gather(cols)
        start = sum(p.shape[1] for p in pieces[: self.comm.rank])
        return torch.cat(pieces, dim=1), slice(start, start + cols.shape[1])

    def exact_rmatvec(self, idx: torch.Tensor | None, r: torch.Tensor) -> torch.Tensor:
        """Return (PX)[:, idx]ᵀ r (`idx` None: every column) as a float64 CPU vector, exact in float64.

        The columns are gathered `block_columns` at a time, so the extra memory is bounded
        whatever len(idx) is; without Z each entry is the same float64 product as with one
        gather (with Z, the projection of a block may round differently in the last bit).
        """
        n = self.p if idx is None else len(idx)
        out = torch.empty(n, dtype=torch.float64)
        for a, e, values in self._exact_blocks(idx, r):
            out[a:e] = values
        return out

    def _exact_blocks(self, idx: torch.Tensor | None, r: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield (a, e, (PX)[:, idx[a:e]]ᵀ r as float64) for consecutive blocks of `block_columns` columns."""
        # Consecutive columns from `start` (every column of a dense fit): copy block after block, no gather.
        start: int | None = 0
        if idx is None:
            n = self.p
        else:
            idx = idx.to("cpu", torch.long)
            n = len(idx)
            start = int(idx[0]) if n and _is_run(idx) else None
        step = self.block_columns
        for a in range(0, n, step):
            e = min(a + step, n)
            cols = self._column_range(start + a, start + e) if start is not None else self.columns(idx[a:e])
            values = cols.T @ r
            del cols  # before the next block is allocated
            yield a, e, values

    def raw_fit(self, coef: torch.Tensor) -> torch.Tensor:
        """Return Xγ without the projection as a (T,) float64 CPU tensor, from the non-zeros of `coef`.

        The non-zero columns are gathered in float64 `block_columns` at a time.
        """
        nz = torch.nonzero(coef).squeeze(1)
        out = torch.zeros(self.T, dtype=torch.float64)
        step = self.block_columns
        for i, pos, local in self.segments.locate(nz):
            b = self.blocks[i]
            c = coef[nz[pos]]
            run = _is_run(local)  # every column of the block (a dense fit): copy, no gather
            for a in range(0, len(local), step):
                e = min(a + step, len(local))
                if run:
                    lo = int(local[0])
                    cols = torch.empty(e - a, self.T, dtype=torch.float64).copy_(b.T[lo + a : lo + e])  # (k, T)
                else:
                    cols = b.T.index_select(0, local[a:e].to(b.device)).to("cpu", torch.float64)  # (k, T)
                out += cols.T @ c[a:e]
                del cols  # before the next block is allocated
        return self.comm.sum_(out)

    # --- objective and duality gap ---------------------------------------------------
    def xty(self) -> torch.Tensor:
        """Return (PX)ᵀPy as a (p,) float32 tensor, computed once (α_max and γ = 0 share it)."""
        if self._xty is None:
            self._xty = self.rmatvec(self.y)
        return self._xty

    def _take_xty(self) -> torch.Tensor:
        """Return `xty()` and drop the cached copy: the caller owns (and may overwrite) the tensor."""
        out = self.xty()
        self._xty = None
        return out

    def alpha_max(self) -> float:
        """Return ‖(PX)ᵀPy‖_∞ / T, the smallest α whose solution is all zero."""
        return self.comm.max(float(torch.linalg.vector_norm(self.xty(), math.inf))) / self.T

    def residual(self, coef: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Return (r = Py − PXγ, support indices, support columns or None), r float64.

        y − Xγ nearly cancels near a solution, so when the support is small (the usual
        Lasso case, at most `EXACT_SUPPORT` columns) r is computed from the support's
        columns in float64; otherwise from a float32 product.
        """
        nz = torch.nonzero(coef).squeeze(1)
        if len(nz) <= self.EXACT_SUPPORT and not self.sharded:  # sharded: Xγ is summed over the shards
            cols = self.columns(nz)
            return self.y - cols @ coef[nz], nz, cols
        return self.y - self.matvec(coef), nz, None

    def evaluate(
        self, coef: torch.Tensor, alpha: float, out: torch.Tensor | None = None
    ) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        """Return (objective, gap, residual r = Py − PXγ, Xᵀr) for the float64 CPU `coef`.

        Xᵀr is a float32 pass over X, then recomputed exactly in float64 on the support and
        the 2·|support| + 64 largest entries — every column for a dense solution, in blocks
        (`exact_rmatvec`), so no more than `block_columns` columns are held in float64. It is
        returned as a (p,) float32 CPU vector (the exact entries rounded); the dual point's
        scale ‖Xᵀr‖∞ is taken before that rounding, from the float64 values. `out`, a (p,)
        float32 CPU tensor that is no longer needed, is reused for Xᵀr when X is on the CPU.
        """
        residual, nz, cols = self.residual(coef)
        if len(nz) == 0 and not self.sharded:
            local = self._take_xty()
        else:
            local = self.rmatvec(residual, out if self.device.type == "cpu" else None)
        del out
        corr = local.to("cpu", torch.float32)  # (p,) float32: overwritten below, never a cached tensor
        del local
        finite = math.isfinite(float(torch.linalg.vector_norm(corr, math.inf)))  # NaN and ±inf propagate
        if self.sharded and self.comm.max(0.0 if finite else 1.0) > 0:  # every shard raises together
            raise ValueError("X contains NaN or Inf" + ("" if finite else f" (shard {self.comm.rank})"))
        if not finite:
            j = int(torch.nonzero(~torch.isfinite(corr))[0])
            raise ValueError(f"X contains NaN or Inf (column {j})")
        # Recompute exactly (float64) where it decides the dual point: the support and the
        # largest |x_jᵀr|, whose float32 rounding would otherwise inflate ‖Xᵀr‖∞.
        k = min(self.p, 2 * len(nz) + 64)
        top = _select(corr, k, largest=True, absolute=True) if k < self.p else None  # None: all (a dense fit)
        exact_max = 0.0  # max |x_jᵀr| over the entries recomputed in float64
        if cols is not None and len(nz):
            values = cols.T @ residual
            corr[nz] = 0.0  # out of the float32 maximum below; written back rounded
            top = torch.arange(self.p) if top is None else top  # p ≤ 2·EXACT_SUPPORT + 64 here
            top = top[~torch.isin(top, nz)]
        if top is None:
            for a, e, values_ae in self._exact_blocks(None, residual):
                corr[a:e] = values_ae
                exact_max = max(exact_max, float(values_ae.abs().max()))
            rest_max = 0.0
        else:
            top_values = self.exact_rmatvec(top, residual)
            corr[top] = 0.0
            rest_max = float(torch.linalg.vector_norm(corr, math.inf))  # the float32 pass elsewhere
            corr[top] = top_values.float()
            if len(top):
                exact_max = float(top_values.abs().max())
        if cols is not None and len(nz):
            corr[nz] = values.float()
            exact_max = max(exact_max, float(values.abs().max()))
        T = self.T
        rr = float(residual @ residual)
        l1 = float(self.comm.sum_(torch.linalg.vector_norm(coef, 1).reshape(1).to(torch.float64))[0])
        primal = 0.5 * rr / T + alpha * l1
        if alpha > 0:
            scale = max(T * alpha, self.comm.max(max(exact_max, rest_max)))
            s = T * alpha / scale
            # Dual of the scaled problem at θ = s·r: (‖y‖² − ‖y − θ‖²) / 2T.
            diff = self.y - s * residual
            dual = 0.5 * (float(self.y @ self.y) - float(diff @ diff)) / T
            gap = max(primal - dual, 0.0)
        else:
            gap = math.nan
        return primal, gap, residual, corr

    def output(self, coef: torch.Tensor, alpha: float, n_iter: int, converged: bool) -> SolverOutput:
        """Evaluate the float64 CPU `coef` and return it as a `SolverOutput`."""
        obj, gap, residual, corr = self.evaluate(coef, alpha)
        return SolverOutput(coef, obj, gap, int(n_iter), corr, residual, bool(converged))


def _is_run(idx: torch.Tensor) -> bool:
    """Whether the non-empty (k,) long tensor `idx` is k consecutive integers in increasing order."""
    return int(idx[-1]) - int(idx[0]) == len(idx) - 1 and bool((idx.diff() == 1).all())


CHUNK = 1 << 18  # entries of a (p,) vector that the d-length loops (screening, selection, norms) take at once
SCREEN_MARGIN = 1e-6  # cd screens a column when |x_jᵀθ| + radius·‖x_j‖ < 1 − this (float32 Xᵀr and norms)
_F32_MAX = float(torch.finfo(torch.float32).max)  # finite priorities stay below +inf (screened)
GRAM_BYTES = 16 << 20  # cd forms a working set's Gram up to this size (or while it is no larger than the columns)


def _select(key: torch.Tensor, k: int, *, largest: bool, absolute: bool = False) -> torch.Tensor:
    """Return the sorted indices of the k largest (or smallest) entries of the (n,) `key`; ties go to lower indices.

    `absolute` ranks |key|. `key` holds no NaN. A full `torch.topk` holds 16 bytes per entry
    (value, int64 index) at once; this takes `key` in chunks of max(`CHUNK`, 2k) entries and
    keeps each chunk's best k. Every entry strictly better than the k-th best value is among
    them; entries equal to it are re-read only from a chunk whose best k ended on that value
    (it may have cut some), so ties are resolved by position whatever the chunking.
    """
    n = key.numel()
    k = min(k, n)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    step = max(CHUNK, 2 * k)

    def chunk(a: int) -> torch.Tensor:
        c = key[a : a + step]
        return c.abs() if absolute else c

    values: list[torch.Tensor] = []
    indices: list[torch.Tensor] = []
    last: list[torch.Tensor] = []  # each chunk's k-th best value (its worst kept)
    for a in range(0, n, step):
        c = chunk(a)
        v, i = torch.topk(c, min(k, len(c)), largest=largest, sorted=False)
        values.append(v)
        indices.append(i + a)
        last.append(v.max() if not largest else v.min())
    vals, idx = torch.cat(values), torch.cat(indices)
    kth = torch.topk(vals, k, largest=largest, sorted=True).values[-1]
    chosen = idx[vals > kth if largest else vals < kth]
    ties = [idx[vals == kth]]
    for j, a in enumerate(range(0, n, step)):
        if len(values[j]) == k and bool(last[j] == kth):  # this chunk may hold more entries equal to kth
            ties.append(torch.nonzero(chunk(a) == kth).squeeze(1) + a)
    tied = torch.unique(torch.cat(ties))  # sorted, each index once
    return torch.cat([chosen, tied[: k - len(chosen)]]).sort().values


def _soft(x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0.0)


def _kkt_(corr: torch.Tensor, T: int, alpha: float, comm: Comm = LOCAL) -> torch.Tensor:
    """Overwrite the (p,) `corr` with |corr| / max(T·α, ‖corr‖∞) and return it as float32 (`LassoResult.kkt`)."""
    denom = max(T * alpha, comm.max(float(torch.linalg.vector_norm(corr, math.inf))), 1e-300)
    return corr.abs_().div_(denom).float()


# --- the solver registry -------------------------------------------------------------
SolverFn = Callable[..., SolverOutput]
"""``fn(D: Design, alpha: float, tol: float, max_iter: int | None, *, **options) -> SolverOutput``."""


@dataclass(frozen=True)
class _Registered:
    fn: SolverFn
    certified: bool  # stops on a duality-gap certificate: warn when it stops without one


_REGISTRY: dict[str, _Registered] = {}
SOLVERS: tuple[str, ...] = ("auto",)  # "auto" (fista on CUDA, cd on CPU), then the registered solvers in order
SHARDED_SOLVERS: tuple[str, ...] = ("cd", "fista", "minnorm", "sgd")  # the solvers that run on column shards


def register_solver(name: str, *, certified: bool = False) -> Callable[[SolverFn], SolverFn]:
    """Register a solver under `name` (a decorator); `solve(..., solver=name)` calls it.

    The solver is called as ``fn(D, alpha, tol, max_iter, **options)`` with the `Design` D,
    the L1 weight, the relative duality-gap tolerance and the iteration budget (None: the
    solver's default; solvers without one ignore tol and max_iter), and returns a
    `SolverOutput`. Its keyword-only parameters, each with a default, are the options
    `solve` accepts for it. ``certified=True`` marks a solver whose stopping rule is the
    duality gap: `solve` warns when it returns unconverged. `SOLVERS` lists the new name.
    """
    if name == "auto" or name in _REGISTRY:
        raise ValueError(f"Lasso solver name {name!r} is taken")

    def decorate(fn: SolverFn) -> SolverFn:
        global SOLVERS
        params = list(inspect.signature(fn).parameters.values())
        positional = [q for q in params if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
        keyword = [q for q in params if q.kind is q.KEYWORD_ONLY]
        if len(positional) != 4 or len(positional) + len(keyword) != len(params):
            raise TypeError(f"solver {name!r} must take (D, alpha, tol, max_iter, *, **options)")
        missing = [q.name for q in keyword if q.default is q.empty]
        if missing:
            raise TypeError(f"solver {name!r}: options {', '.join(missing)} need defaults")
        _REGISTRY[name] = _Registered(fn, certified)
        SOLVERS = ("auto", *_REGISTRY)
        return fn

    return decorate


def solver_options(name: str) -> dict[str, object]:
    """Return the options of the registered solver `name` with their defaults (from its signature)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown Lasso solver {name!r}; valid: {', '.join(_REGISTRY)}")
    params = inspect.signature(_REGISTRY[name].fn).parameters.values()
    return {q.name: q.default for q in params if q.kind is q.KEYWORD_ONLY}


# --- solvers ------------------------------------------------------------------------
@register_solver("cd", certified=True)
def _solve_cd(
    D: Design, alpha: float, tol: float, max_iter: int | None, *, working_set: int | None = None
) -> SolverOutput:
    """Working-set coordinate descent; `max_iter` outer iterations (default 100).

    `working_set` is the size of the first working set (default max(100, T)). On column
    shards (SPEC §9) screening is local, the scale ‖Xᵀr‖∞, the duality gap and the sizes are
    reduced over the shards, the working set is the global one (`Design.smallest`), its
    columns are gathered to every process and the subproblem's solution is the primary's.
    """
    from sklearn.linear_model import enet_path

    max_iter = 100 if max_iter is None else max_iter
    T, p = D.T, D.p_total
    comm = D.comm
    coef = torch.zeros(D.p, dtype=torch.float64)  # this shard's coefficients
    # The (p,) bookkeeping: coef float64, norms and Xᵀr (then the priorities, in its place)
    # float32, screened bool: 17 bytes a column, plus chunked temporaries of a few MiB.
    norms = D.norms()  # (p,) float32 ‖P x_j‖
    screened = norms == 0  # all-zero columns never enter
    lam = T * alpha
    inner_epochs = 100
    # First working set: T columns (an exact Lasso has at most T non-zeros), at least 100.
    ws_size = min(working_set if working_set is not None else max(100, T), p)
    converged = False
    gaps: list[float] = []
    spare: torch.Tensor | None = None  # the last iteration's priorities: the next Xᵀr is written there
    for it in range(1, max_iter + 1):  # noqa: B007 (it is returned)
        obj, gap, residual, corr = D.evaluate(coef, alpha, out=spare)
        spare = None
        if gap <= tol * obj:
            converged = True
            break
        gaps.append(gap)
        if len(gaps) > 4 and gap > 0.5 * gaps[-5]:
            break  # stalled at the precision float32 X allows: report converged=False
        # Gap-safe sphere test (Ndiaye et al. 2017) at θ = r / max(λ, ‖Xᵀr‖∞), the maximum over
        # the columns not yet screened. Chunk by chunk, in float64 (corr and norms are float32).
        free_max = 0.0
        for a in range(0, D.p, CHUNK):
            free_max = max(free_max, float(corr[a : a + CHUNK].abs().masked_fill_(screened[a : a + CHUNK], 0.0).max()))
        scale = max(lam, comm.max(free_max))
        radius = math.sqrt(2.0 * T * gap) / lam
        prio = corr  # (p,) float32: each chunk's priorities overwrite its |x_jᵀr| once they are read
        n_free = n_support = 0
        for a in range(0, D.p, CHUNK):
            e = min(a + CHUNK, D.p)
            c = corr[a:e].double().abs_().div_(scale)  # |x_jᵀθ|
            nrm = norms[a:e].double()
            scr = screened[a:e]  # a view: updated in place
            # The margin covers the float32 rounding of Xᵀr and of the norms.
            scr |= c + radius * nrm < 1.0 - SCREEN_MARGIN
            sup = coef[a:e] != 0
            dead = sup & scr
            if dead.any():  # provably zero at the optimum
                coef[a:e].masked_fill_(dead, 0.0)
                sup &= ~scr
            # Working set: the support plus the columns closest to violating |x_jᵀθ| ≤ 1.
            key = c.neg_().add_(1.0).div_(nrm.clamp_(min=1e-300)).clamp_(max=_F32_MAX)
            prio[a:e] = key.masked_fill_(scr, math.inf).masked_fill_(sup, -math.inf)
            n_free += len(scr) - int(torch.count_nonzero(scr))
            n_support += int(torch.count_nonzero(sup))
        del corr  # now the priorities
        n_candidates, n_support = (int(v) for v in comm.sum_(torch.tensor(
            [float(n_free), float(n_support)], dtype=torch.float64)))  # fmt: skip
        ws_size = min(max(ws_size, 2 * n_support), n_candidates)
        W = D.smallest(prio, ws_size)  # this shard's part of the working set, sorted
        spare = prio
        del prio
        Xw_all, own = D.shared_columns(W)  # (T, w) float64: the working set only, every shard's
        Xw = np.asfortranarray(Xw_all.numpy(force=True))
        del Xw_all
        coef_w = comm.gather(coef[W])
        # The subproblem reads the working set's Gram (w × w) while it is small or no larger than
        # its columns (T × w); a working set grown past that is read through its columns.
        w = Xw.shape[1]
        G = np.ascontiguousarray(Xw.T @ Xw) if 8 * w * w <= max(8 * T * w, GRAM_BYTES) else None
        yv = D.y.numpy()
        q = Xw.T @ yv
        # The subproblem is small and cheap next to a pass over X, so solve it to the final
        # precision. scikit-learn stops on gap < tol·‖y‖², in unscaled (×T) units.
        # Coordinate descent finds the support and signs quickly but converges slowly on these
        # ill-conditioned (positive-column) designs, so after a bounded number of epochs the
        # solution is polished exactly on the support it found (`_polish`); if that fails
        # the CD iterate is kept and the next outer iteration warm-starts from it.
        inner_tol = min(0.3 * gap, 0.1 * tol * obj) * T / max(float(yv @ yv), 1e-300)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, coefs, _ = enet_path(
                Xw, yv, l1_ratio=1.0, alphas=[alpha], precompute=False if G is None else G, Xy=q,
                coef_init=torch.cat(coef_w).numpy(), tol=max(inner_tol, 1e-13), max_iter=inner_epochs,
                check_input=False,
            )  # fmt: skip
        sub = coefs[:, 0]
        polished = _polish(G, q, sub, T * alpha, X=Xw)
        solution = comm.broadcast(polished if polished is not None else sub)  # every process: the primary's
        coef[W] = torch.from_numpy(solution[own])
        inner_epochs = min(inner_epochs * 4, 100_000)
        ws_size = min(2 * ws_size, p)
    else:
        obj, gap, residual, corr = D.evaluate(coef, alpha, out=spare)
        converged = gap <= tol * obj
    return SolverOutput(coef, obj, gap, it, corr, residual, converged)


def _polish(
    G: np.ndarray | None, q: np.ndarray, coef: np.ndarray, lam: float, max_steps: int = 500, *,
    X: np.ndarray | None = None,
) -> np.ndarray | None:  # fmt: skip
    """Return the exact minimiser of ½γᵀGγ − qᵀγ + λ‖γ‖₁ starting from `coef`, or None.

    Feature-sign search (Lee et al. 2007): solve the equality-constrained problem on the
    current support and signs in closed form, line-search towards it over the points where
    a coefficient changes sign, drop coefficients that reach zero, and add the most
    violating zero coefficient when the support is optimal. The objective decreases at every
    step, so it terminates; it returns None if `max_steps` is reached or a system is singular.
    With `G` None, G = XᵀX is applied through the columns `X` and never formed.
    """
    x = coef.copy()
    if G is None:
        if X is None:
            raise ValueError("_polish needs the Gram G or the columns X")

        def gram_times(v: np.ndarray) -> np.ndarray:
            return X.T @ (X @ v)

        def gram_block(A: np.ndarray) -> np.ndarray:
            return X[:, A].T @ X[:, A]
    else:

        def gram_times(v: np.ndarray) -> np.ndarray:
            return G @ v

        def gram_block(A: np.ndarray) -> np.ndarray:
            return G[np.ix_(A, A)]

    def objective(v: np.ndarray) -> float:
        return float(0.5 * v @ gram_times(v) - q @ v + lam * np.abs(v).sum())

    theta = np.sign(x)
    slack = 1e-10 * max(lam, 1e-300) + 1e-12 * np.abs(q).max()  # rounding allowance
    for _ in range(max_steps):
        grad = gram_times(x) - q
        A = np.flatnonzero(theta)
        # Optimality on the support: grad_i + λθ_i = 0; off the support: |grad_i| ≤ λ.
        if len(A) == 0 or np.abs(grad[A] + lam * theta[A]).max() <= slack:
            zero = np.flatnonzero(theta == 0)
            if len(zero) == 0:
                return x
            j = zero[np.argmax(np.abs(grad[zero]))]
            if abs(grad[j]) <= lam * (1 + 1e-9):
                return x
            theta[j] = -np.sign(grad[j])
            A = np.flatnonzero(theta)
        try:
            x_new_A = np.linalg.solve(gram_block(A), q[A] - lam * theta[A])
        except np.linalg.LinAlgError:
            return None
        x_new = np.zeros_like(x)
        x_new[A] = x_new_A
        # Candidates: x_new and every point on [x, x_new] where a coefficient crosses zero.
        best, best_f = x_new, objective(x_new) if np.all(np.sign(x_new_A) == theta[A]) else np.inf
        d = x_new - x
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -x[A] / d[A]
        for tk in np.unique(t[(t > 0) & (t < 1)]):
            cand = x + tk * d
            cand[np.abs(cand) < 1e-15 * max(np.abs(cand).max(), 1e-300)] = 0.0
            f = objective(cand)
            if f < best_f:
                best, best_f = cand, f
        if not np.isfinite(best_f):
            best = x_new
        x = best
        theta = np.sign(x)
    return None


def _power_lipschitz(D: Design, n_iter: int = 30) -> float:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(D.p, generator=g, dtype=torch.float64)
    v /= math.sqrt(D.dot(v, v))
    L = 0.0
    for _ in range(n_iter):
        w = D.rmatvec(D.matvec(v)).to("cpu", torch.float64)
        L = math.sqrt(D.dot(w, w))
        if L == 0:
            return 0.0
        v = w / L
    return L / D.T


@register_solver("fista", certified=True)
def _solve_fista(D: Design, alpha: float, tol: float, max_iter: int | None, *, check_every: int = 10) -> SolverOutput:
    """FISTA with adaptive restart; `max_iter` iterations (default 20 000), the gap checked every `check_every`."""
    max_iter = 20_000 if max_iter is None else max_iter
    T = D.T
    L = _power_lipschitz(D) * 1.05  # power iteration approaches ‖X‖₂² from below
    if L == 0:
        return D.output(torch.zeros(D.p, dtype=torch.float64), alpha, 0, True)
    # Iterates are float64 on the CPU (p-vectors); X is only touched by matrix-vector
    # products, and residuals come from the (small) support in float64 (Design.residual).
    x = torch.zeros(D.p, dtype=torch.float64)
    z = x.clone()
    t = 1.0
    converged = False
    for it in range(1, max_iter + 1):
        r, _, _ = D.residual(z)
        grad = -D.rmatvec(r).to("cpu", torch.float64) / T
        x_new = _soft(z - grad / L, alpha / L)
        step = x_new - x
        if D.dot(z - x_new, step) > 0:
            t = 1.0  # adaptive restart: the momentum points uphill
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        z = x_new + ((t - 1.0) / t_new) * step
        x, t = x_new, t_new
        if it % check_every == 0 or it == max_iter:
            obj, gap, _, _ = D.evaluate(x, alpha)
            if gap <= tol * obj:
                converged = True
                break
    obj, gap, residual, corr = D.evaluate(x, alpha)
    return SolverOutput(x, obj, gap, it, corr, residual, converged or gap <= tol * obj)


@register_solver("sgd")
def _solve_sgd(
    D: Design,
    alpha: float,
    tol: float,
    max_iter: int | None,
    *,
    lr: float = 0.1,
    batch_size: int = 16,
    max_epochs: int = 50,
    patience: int = 5,
    variant: str = "paper",
    seed: int = 0,
) -> SolverOutput:
    """Minibatch SGD with the cumulative L1 penalty (Tsuruoka et al. 2009), from γ = 0.

    Reads the raw blocks, y and Z from `D` (the unpenalised coefficients are fitted along).
    Its budget is `max_epochs` (``variant="authors"``: 30 epochs, patience 2); tol and
    max_iter are not used. ``converged`` means it stopped on `patience`. On column shards
    every process draws the same minibatches; the minibatch's fit X_b γ is summed over the
    shards (one all-reduce of `batch_size` numbers per step), so the dynamics are one
    process's: each shard updates its own coefficients, the unpenalised ones are replicated.
    """
    T, dev = D.T, D.device
    if variant == "authors":
        max_epochs, patience = 30, 2
    elif variant != "paper":
        raise ValueError(f"unknown sgd variant {variant!r}; valid: paper, authors")
    yy = D.y64.to(dev, torch.float32)
    y_scale = 1.0
    if variant == "authors":
        y_scale = float(yy.mean())
        if y_scale == 0 or not math.isfinite(y_scale):
            raise ValueError("sgd variant 'authors' divides y by its mean, which is 0")
        yy = yy / y_scale
    Zd = D.Z.to(dev, torch.float32)  # (T, m)
    gamma = torch.zeros(D.p, dtype=torch.float32, device=dev)
    c = torch.zeros(Zd.shape[1], dtype=torch.float32, device=dev)
    q = torch.zeros_like(gamma)  # penalty actually applied to each weight so far
    u = 0.0  # total penalty each weight could have received
    g = torch.Generator().manual_seed(seed)
    best = (D.evaluate(gamma.to("cpu", torch.float64), alpha)[0], gamma.clone())
    bad = 0
    step_t = 0
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        perm = torch.randperm(T, generator=g).to(dev)
        for a in range(0, T, batch_size):
            rows = perm[a : a + batch_size]
            Xb = torch.cat([b.index_select(0, rows).float() for b in D.blocks], dim=1)  # (B, p)
            r = yy[rows] - D.comm.sum_(Xb @ gamma) - Zd[rows] @ c  # (B,): X_b γ summed over the shards
            step_t += 1
            eta = lr / step_t**0.1 if variant == "authors" else lr
            gamma += (eta / len(rows)) * (Xb.T @ r)
            c += (eta / len(rows)) * (Zd[rows].T @ r)
            u += eta * alpha
            z = gamma.clone()
            pos, neg = gamma > 0, gamma < 0
            gamma = torch.where(pos, torch.clamp(gamma - (u + q), min=0.0), gamma)
            gamma = torch.where(neg, torch.clamp(gamma + (u - q), max=0.0), gamma)
            q += gamma - z
        try:
            if D.comm.max(0.0 if torch.isfinite(gamma).all() else 1.0) > 0:  # on any shard
                raise ValueError("non-finite coefficients")
            obj, _, _, _ = D.evaluate(gamma.to("cpu", torch.float64) * y_scale, alpha)
        except ValueError as e:
            raise RuntimeError(
                f"sgd Lasso diverged in epoch {epoch} (lr={lr}): {e}; lower the solver's lr "
                "or use solver 'cd'"
            ) from None
        if obj < best[0] - 1e-12 * abs(best[0]):
            best, bad = (obj, gamma.clone()), 0
        else:
            bad += 1
            if bad >= patience:
                break
    return D.output(best[1].to("cpu", torch.float64) * y_scale, alpha, epoch, bad >= patience)


@register_solver("minnorm")
def _solve_minnorm(D: Design, alpha: float, tol: float, max_iter: int | None, *, ridge: float = 1e-10) -> SolverOutput:
    """γ = (PX)ᵀ(G + ρI)⁻¹Py with G the T × T Gram and ρ = `ridge` · mean(diag G); tol, max_iter unused."""
    G = D.gram()
    rho = ridge * max(float(G.diagonal().mean()), 1e-300)
    # Minimum-norm solution in range(P): γ = (PX)ᵀ (G + ρI)⁺ Py, solved in float64 (T × T).
    cvec = torch.linalg.lstsq(G + rho * torch.eye(D.T, dtype=torch.float64), D.y[:, None]).solution[:, 0]
    coef = D.rmatvec(D.project(cvec)).to("cpu", torch.float64)
    return D.output(coef, alpha, 1, True)


def solve(
    X: torch.Tensor | Sequence[torch.Tensor],
    y: torch.Tensor,
    alpha: float | None = None,
    alpha_ratio: float | None = None,
    solver: str = "auto",
    tol: float = 1e-6,
    max_iter: int | None = None,
    unpenalized: torch.Tensor | None = None,
    comm: Comm | None = None,
    **options: object,
) -> LassoResult:
    """Solve min_γ (1/2T)‖y − Xγ − Zc‖² + α‖γ‖₁ (c free) and return a `LassoResult`.

    Args:
        X: (T, d) tensor or list of (T, d_i) blocks (float32/bfloat16/float16, CPU or CUDA).
        y: (T,) targets, e.g. the loss changes ΔL_t.
        alpha: the L1 weight (> 0). Give `alpha` or `alpha_ratio`, not both.
        alpha_ratio: α as a fraction of α_max = ‖Xᵀy‖_∞/T (default 0.01 when neither is given).
        solver: ``auto`` (cd on CPU, fista on CUDA), ``cd``, ``fista``, ``sgd``, ``minnorm``
            (`SOLVERS`; more can be added with `register_solver`).
        tol: stop when the duality gap ≤ tol · objective (cd, fista).
        max_iter: outer iterations (cd, default 100), iterations (fista, default 20000).
        unpenalized: optional (T, m) regressors whose coefficients are not penalised.
        comm: X is this process's column shard of a distributed design (SPEC §9); y and
            `unpenalized` are every process's. The result's ``coef`` and ``kkt`` are this
            shard's; objective, gap, α and the unpenalised coefficients are global. Solvers
            on shards (`SHARDED_SOLVERS`): ``minnorm`` (one all-reduce of the T × T Gram),
            ``fista`` (a T-vector all-reduce per product Xγ, scalar ones for norms and the
            restart test), ``cd`` (the working set chosen over every shard, its columns
            gathered, the subproblem solved once and shared) and ``sgd`` (one all-reduce of
            the minibatch's fit per step).
        **options: the chosen solver's own keyword options (`solver_options`): sgd ``lr``,
            ``batch_size``, ``max_epochs``, ``patience``, ``variant`` (``paper``/``authors``),
            ``seed``; minnorm ``ridge``; cd ``working_set``; fista ``check_every``.

    Warns:
        ConvergenceWarning: cd or fista stopped (max_iter reached, or cd stalled) before the
            duality gap met tol; the result is still returned, with ``converged=False``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown Lasso solver {solver!r}; valid: {', '.join(SOLVERS)}")
    t0 = time.perf_counter()
    D = Design(X, y, unpenalized, comm)
    if solver == "auto":
        solver = "fista" if D.device.type == "cuda" else "cd"
    if comm is not None and solver not in SHARDED_SOLVERS:
        raise ValueError(f"Lasso solver {solver!r} cannot solve a column-sharded design yet; sharded solvers: "
                         f"{', '.join(SHARDED_SOLVERS)}")  # fmt: skip
    if alpha is not None and alpha_ratio is not None:
        raise ValueError("give alpha or alpha_ratio, not both")
    if alpha is None:
        if solver == "sgd" and options.get("variant") == "authors" and alpha_ratio is None:
            alpha = 1e-3 / D.p_total
        else:
            ratio = 0.01 if alpha_ratio is None else float(alpha_ratio)
            if not (ratio > 0) or not math.isfinite(ratio):
                raise ValueError(f"alpha_ratio must be > 0, got {alpha_ratio}")
            alpha = ratio * D.alpha_max()
            if alpha == 0:
                raise ValueError("alpha_max is 0 (Xᵀy = 0): every α gives γ = 0; give alpha directly")
    alpha = float(alpha)
    if solver != "minnorm" and not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if max_iter is not None and max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    valid = solver_options(solver)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for solver {solver!r}; valid: {', '.join(valid) or 'none'}"
        )

    entry = _REGISTRY[solver]
    out = entry.fn(D, alpha, tol, max_iter, **options)
    if entry.certified and not out.converged:
        warnings.warn(
            f"Lasso solver {solver!r} stopped after {out.n_iter} iterations without converging: duality gap "
            f"{out.gap:.3g} > tol · objective = {tol * out.objective:.3g}; raise max_iter (or tol, now {tol:g}, "
            "if the gap has stalled at the precision of X's dtype)",
            ConvergenceWarning,
            stacklevel=2,
        )
    raw_residual = D.y64 - _raw_fit(D, out.coef)
    kkt = _kkt_(out.corr, D.T, alpha, D.comm)  # in place: out.corr is not read again
    return LassoResult(
        coef=out.coef.to(D.device, torch.float32),
        objective=out.objective,
        gap=out.gap,
        n_iter=int(out.n_iter),
        alpha=alpha,
        solver=solver,
        kkt=kkt.to(D.device),
        unpenalized=D.unpenalized_coef(raw_residual).float(),
        converged=bool(out.converged),
        time_s=time.perf_counter() - t0,
    )


def _raw_fit(D: Design, coef: torch.Tensor) -> torch.Tensor:
    """Return Xγ without the projection (T,) float64, for recovering c (zeros when there is no Z)."""
    if D.Z.shape[1] == 0:
        return torch.zeros(D.T, dtype=torch.float64)
    return D.raw_fit(coef)
