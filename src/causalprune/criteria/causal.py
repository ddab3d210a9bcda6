"""Causal Pruning's scores (SPEC §1–4) and the controls that test them.

* ``causal``: Lasso fit of ΔL_t on x̃_t over the round's trajectory; score |γ| (or |γ|·θ²
  with ``causal.score: gamma_theta2``), ties at γ = 0 broken by the KKT score.
* ``causal-placebo``: the same fit with ΔL randomly permuted across steps (same X). If it
  prunes as well as ``causal``, the loss changes are not what ranks the weights.
* ``energy``: Σ_t x̃_t, how much each weight moved, with no ΔL at all.
"""

from __future__ import annotations

import time

import torch

from .. import lasso
from ..masks import prunable_parameters
from . import Scored, ScoreInput, register


def _theta2(inp: ScoreInput) -> dict[str, torch.Tensor]:
    params = prunable_parameters(inp.model)
    return {n: params[n].detach().float().cpu() ** 2 for n in inp.mask}


def _fit(inp: ScoreInput, placebo: bool) -> Scored:
    from ..config import CausalConfig

    traj = inp.trajectory
    assert traj is not None, "causal criteria need a recorded trajectory"
    c = inp.cfg.causal if inp.cfg is not None else CausalConfig(**inp.options)
    blocks, y, Z = traj.design()
    if placebo:
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(c.placebo_seed + inp.seed))
        y = y[perm]
    t0 = time.perf_counter()
    fit = lasso.solve(blocks, y, alpha_ratio=c.alpha_ratio, solver=c.solver, unpenalized=Z)
    scores = traj.scores(fit.coef)
    tie = traj.combine(fit.kkt) if c.tie_break == "kkt" else None
    if c.score == "gamma_theta2":  # OBD-style: γ read as a Hessian-diagonal estimate, times θ²
        th2 = _theta2(inp)
        scores = {n: s * th2[n] for n, s in scores.items()}
        tie = {n: s * th2[n] for n, s in tie.items()} if tie is not None else None
    info = {
        "solver": fit.solver, "alpha": fit.alpha, "nnz": int((fit.coef != 0).sum()), "gap": fit.gap,
        "objective": fit.objective, "converged": fit.converged, "n_iter": fit.n_iter, "T": traj.T,
        "d": int(traj.X.shape[1]), "solve_s": time.perf_counter() - t0,
    }  # fmt: skip
    return Scored(scores, tie, info)


@register("causal", records=True, uses_causal_config=True,
          description="Lasso of ΔL on squared updates; |γ| (or |γ|·θ²), KKT tie-break")  # fmt: skip
def causal(inp: ScoreInput) -> Scored:
    """Score weights by their causal coefficient."""
    return _fit(inp, placebo=False)


@register("causal-placebo", records=True, uses_causal_config=True,
          description="control: the causal fit with ΔL permuted across steps")  # fmt: skip
def causal_placebo(inp: ScoreInput) -> Scored:
    """Score weights by a causal fit to permuted loss changes."""
    return _fit(inp, placebo=True)


@register("energy", records=True, description="control: Σ_t x̃_t, update size alone (no ΔL)")
def energy(inp: ScoreInput) -> Scored:
    """Score weights by the sum of their squared updates over the round."""
    traj = inp.trajectory
    assert traj is not None, "energy needs a recorded trajectory"
    X = traj.X
    total = torch.zeros(X.shape[1], dtype=torch.float32, device=X.device)
    for a in range(0, X.shape[0], 64):
        total += X[a : a + 64].float().sum(0)
    return Scored(traj.unflatten(total))
