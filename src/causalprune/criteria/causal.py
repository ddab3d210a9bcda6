"""Causal Pruning's scores (docs/method.md, sections 1–3) and the controls that test them.

* ``causal``: Lasso fit of ΔL_t on x̃_t over the round's trajectory; score |γ| (or |γ|·θ²
  with ``causal.score: gamma_theta2``), ties at γ = 0 broken by the KKT score.
* ``causal-placebo``: the same fit with ΔL randomly permuted across steps (same X). If it
  prunes as well as ``causal``, the loss changes are not what ranks the weights.
* ``causal.first_order`` (docs/method.md, "The first-order (gap) reading"): ``ignore`` fits ΔL as
  above; ``free`` adds z_t = g_t·Δθ_t as an unpenalised regressor (its coefficient is reported as
  ``first_order_coef``); ``subtract`` fits ΔL − z. The placebo permutes ΔL and z together.
* ``energy``: Σ_t x̃_t, how much each weight moved, with no ΔL at all.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from .. import lasso
from ..config import ConfigError, check_choice, check_positive, register_section
from ..masks import prunable_parameters
from ..trajectory import DELTA_LOSSES
from . import Scored, ScoreInput, register, register_channel

FIRST_ORDER = ("ignore", "free", "subtract")


@register_section
@dataclass(frozen=True)
class CausalSettings:
    """How the causal criteria record a round and fit it: config section ``causal`` (docs/method.md, 1–3)."""

    SECTION = "causal"
    # Every run reads it, whatever its method: the probe set is carved out of the training split.
    SHARED = ("probe_size",)

    # Defaults: the variant that pruned best on MNIST-1D (docs/results.md). The paper's own
    # is delta_loss=same_batch, solver=sgd, score=gamma.
    delta_loss: str = "same_batch"  # same_batch | probe (docs/method.md, "Recording")
    probe_size: int = 256  # probe samples, held out of the training split
    solver: str = "minnorm"  # auto | cd | fista | sgd | minnorm
    alpha_ratio: float = 0.01  # α = alpha_ratio · α_max
    score: str = "gamma_theta2"  # gamma: |γ| | gamma_theta2: |γ|·θ² (OBD-style)
    tie_break: str = "kkt"  # kkt | none: order of weights tied at γ = 0
    recorder: str = "train"  # train: the training optimizer records | sgd: a dedicated plain SGD
    record_lr: float = 0.001  # learning rate of the dedicated SGD recorder
    momentum_model: bool = False  # momentum features (docs/method.md, "Recording") when the recorder has momentum
    dtype: str = "float32"  # float32 | bfloat16 | float16 storage
    placebo_seed: int = 12345  # seed of the ΔL permutation of causal-placebo
    record_steps: int | None = None  # record N steps of each round, evenly spread (None: all of them)
    memory_budget_gb: float | None = None  # GiB of trajectory kept in memory; the rest spills to disk
    storage: str = "device"  # device: trajectory on the training device | cpu: in host memory (big models on a GPU)
    # channel granularity: a group's regressor is the sum of its members' x̃ (sum), or that sum scaled
    # to unit norm over the round (standardize; γ is reported back in the summed feature's units)
    group_columns: str = "sum"
    # distributed runs: each process records only its share of the columns (memory ÷ world) and
    # the Lasso solves on the shards (every built-in solver); off: every process records and solves all of them,
    # which gives the single process's masks exactly (docs/distributed.md)
    shard_trajectory: bool = False
    # the first-order term z_t = g_t·Δθ_t (over every trained parameter): ignore | free: an unpenalised
    # regressor beside x̃ | subtract: the target is ΔL − z (the abstract's "gap"); SPEC §1b
    first_order: str = "ignore"

    def __post_init__(self) -> None:
        check_choice(self.delta_loss, DELTA_LOSSES, "causal.delta_loss")
        check_positive(self.probe_size, "causal.probe_size")
        check_choice(self.solver, lasso.SOLVERS, "causal.solver")
        check_positive(self.alpha_ratio, "causal.alpha_ratio")
        check_choice(self.score, ("gamma", "gamma_theta2"), "causal.score")
        check_choice(self.tie_break, ("kkt", "none"), "causal.tie_break")
        check_choice(self.recorder, ("train", "sgd"), "causal.recorder")
        check_positive(self.record_lr, "causal.record_lr")
        check_choice(self.dtype, ("float32", "bfloat16", "float16"), "causal.dtype")
        if self.record_steps is not None:
            check_positive(self.record_steps, "causal.record_steps")
            if self.momentum_model:
                raise ConfigError("causal.momentum_model needs consecutive recorded steps; causal.record_steps "
                                  "spreads them over the round (set one of them off)")  # fmt: skip
        check_choice(self.storage, ("device", "cpu"), "causal.storage")
        check_choice(self.group_columns, ("sum", "standardize"), "causal.group_columns")
        check_choice(self.first_order, FIRST_ORDER, "causal.first_order")
        if self.shard_trajectory and self.solver not in ("auto", *lasso.SHARDED_SOLVERS):
            raise ConfigError(f"causal.shard_trajectory needs a solver that runs on column shards "
                              f"({', '.join(lasso.SHARDED_SOLVERS)}), got causal.solver {self.solver}")  # fmt: skip
        if self.shard_trajectory and self.momentum_model:
            raise ConfigError("causal.shard_trajectory does not support causal.momentum_model (its lagged "
                              "block is not sharded); set one of them off")  # fmt: skip
        if self.memory_budget_gb is not None:
            check_positive(self.memory_budget_gb, "causal.memory_budget_gb")


#: The fields that say how a round is recorded (every method that needs a trajectory reads them).
RECORDING = ("delta_loss", "probe_size", "recorder", "record_lr", "momentum_model", "dtype", "record_steps",
             "memory_budget_gb", "storage", "shard_trajectory")  # fmt: skip
FIT = ("solver", "alpha_ratio", "score", "tie_break", "group_columns", "first_order")


def _theta2(inp: ScoreInput) -> dict[str, torch.Tensor]:
    params = prunable_parameters(inp.model)
    return {n: params[n].detach().float().cpu() ** 2 for n in inp.mask}


def _solve(inp: ScoreInput, placebo: bool) -> tuple[lasso.LassoResult, CausalSettings, float, dict[str, float]]:
    """Fit the round's Lasso (ΔL, and z, permuted for the placebo); return (fit, settings, start time, facts)."""
    traj = inp.trajectory
    if traj is None:
        raise ValueError("causal criteria need a recorded trajectory")
    c: CausalSettings = inp.settings if inp.settings is not None else CausalSettings()
    blocks, y, Z = traj.design()
    z = None  # (T,) float64 first-order term, when the fit uses it
    if c.first_order != "ignore":
        if traj.first_order is None:
            raise ValueError(f"causal.first_order={c.first_order} needs the first-order term in the trajectory: "
                             "record with TrajectoryRecorder(..., first_order=True)")  # fmt: skip
        z = traj.first_order.to(torch.float64)
    if placebo:  # one permutation of the steps' targets (and their first-order terms) against X
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(c.placebo_seed + inp.seed))
        y = y[perm]
        z = z[perm] if z is not None else None
    facts: dict[str, float] = {}
    if z is not None:
        facts["first_order_corr"] = float(torch.corrcoef(torch.stack([y.double(), z]))[0, 1])
        if c.first_order == "subtract":
            y = y.double() - z
        else:  # free: z beside the momentum model's loss lags (if any), last
            Z = z[:, None] if Z is None else torch.cat([Z.double(), z[:, None]], dim=1)
    t0 = time.perf_counter()
    comm = traj.shard.comm if traj.shard is not None else None  # a column shard of a distributed recording
    if c.group_columns == "standardize" and traj.layout.grouped:
        norms = [b.float().norm(dim=0).clamp_min(1e-30) for b in blocks]  # (G,) per block
        fit = lasso.solve([b.float() / n for b, n in zip(blocks, norms, strict=True)], y,
                          alpha_ratio=c.alpha_ratio, solver=c.solver, unpenalized=Z, comm=comm)  # fmt: skip
        fit = dataclasses.replace(fit, coef=fit.coef / torch.cat(norms).to(fit.coef))  # summed feature's units
    else:
        fit = lasso.solve(blocks, y, alpha_ratio=c.alpha_ratio, solver=c.solver, unpenalized=Z, comm=comm)
    if traj.shard is not None:  # every process scores every weight: assemble the shards' coefficients
        fit = dataclasses.replace(fit, coef=traj.full(fit.coef), kkt=traj.full(fit.kkt))
    if c.first_order == "free":
        facts["first_order_coef"] = float(fit.unpenalized[-1])
    return fit, c, t0, facts


def _info(inp: ScoreInput, fit: lasso.LassoResult, t0: float) -> dict[str, object]:
    traj = inp.trajectory
    assert traj is not None
    return {
        "solver": fit.solver, "alpha": fit.alpha, "nnz": int((fit.coef != 0).sum()), "gap": fit.gap,
        "objective": fit.objective, "converged": fit.converged, "n_iter": fit.n_iter, "T": traj.T,
        "d": traj.n_columns, "columns_here": int(traj.X.shape[1]), "solve_s": time.perf_counter() - t0,
    }  # fmt: skip


def _fit(inp: ScoreInput, placebo: bool) -> Scored:
    fit, c, t0, facts = _solve(inp, placebo)
    traj = inp.trajectory
    assert traj is not None
    scores = traj.scores(fit.coef)
    tie = traj.combine(fit.kkt) if c.tie_break == "kkt" else None
    if c.score == "gamma_theta2":  # OBD-style: γ read as a Hessian-diagonal estimate, times θ²
        th2 = _theta2(inp)
        scores = {n: s * th2[n] for n, s in scores.items()}
        tie = {n: s * th2[n] for n, s in tie.items()} if tie is not None else None
    return Scored(scores, tie, {**_info(inp, fit, t0), **facts})


def _group_theta2(inp: ScoreInput) -> torch.Tensor:
    """Return ‖θ_g‖² per column of the grouped trajectory: the squared norm of each group's alive producer rows."""
    traj = inp.trajectory
    assert traj is not None
    params = prunable_parameters(inp.model)
    flat = traj.layout.flatten({n: params[n].detach().float().cpu() ** 2 for n in traj.layout.names})
    return traj.layout.to_columns(flat)


def _channels(inp: ScoreInput, per_column: torch.Tensor) -> dict[str, torch.Tensor]:
    """Map a grouped trajectory's (G,) per-column values to root layer → per-channel values."""
    traj = inp.trajectory
    if inp.groups is None or traj is None or not traj.layout.grouped or traj.n_columns != inp.groups.G:
        raise ValueError("channel-level causal scores need a trajectory recorded with the groups' layout "
                         "(TrajectoryRecorder(..., layout=groups.layout(mask)))")  # fmt: skip
    return inp.groups.per_layer(per_column.detach().to("cpu", torch.float64))


def _fit_channels(inp: ScoreInput, placebo: bool) -> Scored:
    """Channel level (weight sharing, docs/structured.md): |γ_g| (or |γ_g|·‖θ_g‖²) per group, KKT tie-break."""
    fit, c, t0, facts = _solve(inp, placebo)
    traj = inp.trajectory
    assert traj is not None
    gamma = traj.group_scores(fit.coef)
    tie = traj.column_max(fit.kkt) if c.tie_break == "kkt" else None
    if c.score == "gamma_theta2":
        th2 = _group_theta2(inp)
        gamma = gamma * th2
        tie = tie * th2 if tie is not None else None
    info = {**_info(inp, fit, t0), "G": traj.n_columns, **facts}
    return Scored(_channels(inp, gamma), _channels(inp, tie) if tie is not None else None, info)


def _energy_total(inp: ScoreInput) -> torch.Tensor:
    """Return Σ_t x̃_t per column of the round's trajectory (float32)."""
    traj = inp.trajectory
    if traj is None:
        raise ValueError("energy needs a recorded trajectory")
    X = traj.X
    total = torch.zeros(X.shape[1], dtype=torch.float32, device=X.device)
    for a in range(0, X.shape[0], 64):
        total += X[a : a + 64].float().sum(0)
    return traj.full(total)



@register("causal", needs=["trajectory"], settings=CausalSettings, reads=RECORDING + FIT,
          description="Lasso of ΔL on squared updates; |γ| (or |γ|·θ²), KKT tie-break")  # fmt: skip
def causal(inp: ScoreInput) -> Scored:
    """Score weights by their causal coefficient."""
    return _fit(inp, placebo=False)


@register("causal-placebo", needs=["trajectory"], settings=CausalSettings,
          reads=(*RECORDING, *FIT, "placebo_seed"), placebo_for="causal",
          description="control: the causal fit with ΔL permuted across steps")  # fmt: skip
def causal_placebo(inp: ScoreInput) -> Scored:
    """Score weights by a causal fit to permuted loss changes."""
    return _fit(inp, placebo=True)


@register("energy", needs=["trajectory"], settings=CausalSettings,
          reads=tuple(f for f in RECORDING if f != "delta_loss"),  # x̃ alone: ΔL plays no part
          description="control: Σ_t x̃_t, update size alone (no ΔL)")
def energy(inp: ScoreInput) -> Scored:
    """Score weights by the sum of their squared updates over the round."""
    total = _energy_total(inp)
    assert inp.trajectory is not None
    return Scored(inp.trajectory.unflatten(total))


@register_channel("causal")
def causal_channels(inp: ScoreInput) -> Scored:
    """Score channel groups by their shared causal coefficient |γ_g| (or |γ_g|·‖θ_g‖²)."""
    return _fit_channels(inp, placebo=False)


@register_channel("causal-placebo")
def causal_placebo_channels(inp: ScoreInput) -> Scored:
    """Score channel groups by a causal fit to permuted loss changes."""
    return _fit_channels(inp, placebo=True)


@register_channel("energy")
def energy_channels(inp: ScoreInput) -> Scored:
    """Score channel groups by Σ_t x̃_{t,g}, the summed squared updates of their members."""
    return Scored(_channels(inp, _energy_total(inp)))
