"""SparseGPT (Frantar & Alistarh 2023): layer-wise OBS with the inputs' Hessian, mask chosen while reconstructing.

| name | score per weight | source |
|---|---|---|
| sparsegpt | kept (1) / pruned (0) by the OBS sweep; tie-break w_ij² / U_jj² | Frantar & Alistarh 2023 |

For every prunable layer the inputs of the calibration batches (``prune.calibration_batches``,
else ``prune.score_batches``) are collected with forward hooks, as Wanda does (`wanda._features`:
``nn.Linear`` inputs, ``nn.Conv1d``/``nn.Conv2d`` unfolded; grouped convolutions are refused), giving
H = 2·XᵀX/n + λI with λ = ``sparsegpt.percdamp`` · mean(diag H) (an input feature that never fires
gets diag 1 first, as in the authors' code). U is the upper Cholesky factor of H⁻¹. The weight, as the
(out, in·k) matrix it multiplies, is then swept column by column (float64):

1. at the start of every block of ``sparsegpt.blocksize`` columns (128, the paper's B_s) the mask of
   the block is chosen from the *current* (already updated) weights by the OBS saliency
   w_ij² / U_jj² — the paper's adaptive mask selection (for column 0, U_00² = [H⁻¹]_00: the OBS
   saliency w²/[H⁻¹]_qq; later columns see the inverse Hessian of the columns not yet swept);
2. column j's pruned entries are set to 0 and their error err_i = w_ij / U_jj is propagated to the
   later columns: W[:, j+1:] −= err ⊗ U[j, j+1:].

How our rounds differ from the paper (docs/criteria.md): the plan selects after scoring, so the
sweep chooses the mask itself under the plan's pool (`ScoreInput.pool`) and returns scores that make
the plan's selection reproduce it exactly — 1 for the entries it keeps, 0 for those it prunes, the
saliency at decision time as the tie-break — and the reconstructed weights as `Scored.updates` (the
plan writes them for the kept entries). Each unit of the pool prunes round(s · N_u) − (already
pruned) entries, s the round's cumulative target (`ScoreInput.target_sparsity`), as
`selection.select` counts them. Per output row (the method's pool, `selection.ROWS`) a row's new
prunes are spread over the column blocks in proportion to its alive entries in each (the paper picks
one fraction of each block over all rows together); with ``prune.pattern`` N:M the blocks of M inputs
are the units and each block's mask is chosen when the sweep reaches its first column (as the paper's
N:M code does). Entries pruned by earlier rounds stay pruned and are constrained to 0 in the sweep (so
the kept weights compensate them again). Iterative rounds train between sweeps, which the paper (one
shot) does not. Without a target (`criteria.score` without ``sparsity``) the scores are the dense
saliency w_ij² / U_jj² of the unmodified weights, and no updates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import masks
from ..config import ConfigError, check_positive, register_section
from ..masks import prunable_parameters
from ..modelio import to_device
from ..selection import ROWS, Pool, ranking
from . import Scored, ScoreInput, register
from .wanda import _features

_KINDS = "nn.Linear, nn.Conv1d and nn.Conv2d (groups 1, zero padding, numeric padding)"


@register_section
@dataclass(frozen=True)
class SparseGPTSettings:
    """SparseGPT's damping and mask block: config section ``sparsegpt`` (docs/criteria.md)."""

    SECTION = "sparsegpt"

    percdamp: float = 0.01  # λ = percdamp · mean(diag H), added to H's diagonal (the paper's 1 %)
    blocksize: int = 128  # columns whose mask is chosen together (the paper's B_s)

    def __post_init__(self) -> None:
        if isinstance(self.percdamp, bool) or not self.percdamp > 0:
            raise ConfigError(f"sparsegpt.percdamp must be > 0, got {self.percdamp}")
        if isinstance(self.blocksize, bool) or int(self.blocksize) != self.blocksize:
            raise ConfigError(f"sparsegpt.blocksize must be an integer >= 1, got {self.blocksize}")
        check_positive(self.blocksize, "sparsegpt.blocksize")


def _check(name: str, module: nn.Module) -> None:
    """Refuse a layer whose inputs SparseGPT cannot collect, in one line naming it."""
    ok = isinstance(module, nn.Linear) or (
        type(module) in (nn.Conv1d, nn.Conv2d)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and module.groups == 1
    )
    if not ok:
        raise ValueError(f"sparsegpt cannot collect the inputs of layer {name!r} ({type(module).__name__}); "
                         f"valid: {_KINDS}")  # fmt: skip


def hessians(inp: ScoreInput) -> dict[str, torch.Tensor]:
    """Return weight name → H = 2·XᵀX/n (float64, CPU) of its layer's inputs over ``inp.data`` (undamped).

    A weight used by several prunable layers sums their XᵀX and tokens; a layer that never ran gets zeros.
    """
    if not inp.data:
        raise ValueError("sparsegpt needs calibration batches: an iterable of (inputs, targets) batches")
    model = inp.model
    params = prunable_parameters(model)
    by_id = {id(p): n for n, p in params.items() if n in inp.mask}
    xtx: dict[str, torch.Tensor] = {}
    tokens: dict[str, int] = {}
    handles = []

    def hook(name: str) -> Any:
        def collect(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            feats = _features(module, args[0].detach()).to(torch.float64)  # (tokens, features)
            g = (feats.T @ feats).cpu()
            xtx[name] = xtx[name] + g if name in xtx else g
            tokens[name] = tokens.get(name, 0) + feats.shape[0]

        return collect

    for mod_name, module in model.named_modules():
        if not isinstance(module, masks.PRUNABLE_LAYERS):
            continue
        w = module._parameters.get("weight_orig", module._parameters.get("weight"))
        if w is None or id(w) not in by_id:
            continue
        _check(mod_name, module)
        handles.append(module.register_forward_hook(hook(by_id[id(w)])))
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            for x, _ in inp.data:
                x = to_device(x, device)
                _ = inp.io.forward(model, x) if inp.io is not None else model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for name in by_id.values():
        cols = params[name][0].numel()
        out[name] = 2 * xtx[name] / tokens[name] if name in xtx else torch.zeros(cols, cols, dtype=torch.float64)
    return out


def inverse_factor(h: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    """Return U, the upper Cholesky factor of (H + λI)⁻¹ with λ = percdamp · mean(diag H) (dead inputs: diag 1)."""
    h = h.to(torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    lam = percdamp * torch.diagonal(h).mean()
    h += lam * torch.eye(len(h), dtype=h.dtype)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(hinv, upper=True)


Choose = Callable[[int, int, torch.Tensor], torch.Tensor]


def sweep(w: torch.Tensor, u: torch.Tensor, pruned: torch.Tensor, choose: Choose | None = None,
          step: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Run the OBS sweep over the columns of `w` (rows, cols); return (new weights, pruned, saliency).

    Args:
        u: the upper Cholesky factor of the damped H⁻¹ (`inverse_factor`), (cols, cols).
        pruned: (rows, cols) bool, entries that must be 0 (earlier rounds, or a fixed mask).
        choose: ``choose(i1, i2, saliency)`` → (rows, i2 − i1) bool, the entries of columns [i1, i2) to
            prune too, from the saliency w²/U_jj² of the current weights; None: the mask is `pruned`.
        step: columns whose mask is chosen at once.
    """
    w = w.to(torch.float64).clone()
    pruned = pruned.clone()
    sal = torch.zeros_like(w)
    d = torch.diagonal(u)
    cols = w.shape[1]
    for i1 in range(0, cols, step):
        i2 = min(i1 + step, cols)
        sal[:, i1:i2] = w[:, i1:i2] ** 2 / d[i1:i2] ** 2
        if choose is not None:
            pruned[:, i1:i2] |= choose(i1, i2, sal[:, i1:i2])
        for j in range(i1, i2):
            q = w[:, j]
            err = torch.where(pruned[:, j], q, torch.zeros_like(q)) / d[j]
            w[:, j] = torch.where(pruned[:, j], torch.zeros_like(q), q)
            w[:, j + 1:] -= err[:, None] * u[j, j + 1:][None, :]
    return w, pruned, sal


def _chooser(units: torch.Tensor, old: torch.Tensor, sparsity: float) -> Choose:
    """Return the rule that prunes each unit's round(s · N_u) − (already pruned), spread over the column blocks.

    `units` (rows, cols): the pool unit of every entry; `old` (rows, cols): pruned before this round.
    A unit's count up to column c is round(quota · alive before c / alive), so each block prunes its share
    and the last one reaches the quota; within a block a unit prunes its lowest-saliency alive entries.
    """
    ids = torch.unique(units, return_inverse=True)[1]  # (rows, cols) → 0..U-1
    n = int(ids.max()) + 1
    flat_ids, flat_old = ids.reshape(-1), old.reshape(-1)
    size = torch.bincount(flat_ids, minlength=n)
    alive = torch.bincount(flat_ids[~flat_old], minlength=n)
    quota = (torch.round(size.to(torch.float64) * sparsity).long() - (size - alive)).clamp(min=0)
    quota = torch.minimum(quota, alive)

    def share(c: int) -> torch.Tensor:  # (U,) new prunes of every unit in columns < c
        a = torch.bincount(ids[:, :c][~old[:, :c]], minlength=n).to(torch.float64)
        return torch.round(quota * a / alive.clamp(min=1)).long()

    def choose(i1: int, i2: int, sal: torch.Tensor) -> torch.Tensor:
        k = share(i2) - share(i1)  # (U,) prunes of each unit in this block
        blk_ids, blk_old = ids[:, i1:i2].reshape(-1), old[:, i1:i2].reshape(-1)
        cand = torch.nonzero(~blk_old).squeeze(1)  # alive entries of the block
        out = torch.zeros(blk_ids.numel(), dtype=torch.bool)
        if len(cand):
            order = cand[ranking(sal.reshape(-1)[cand], None)]  # least salient first
            order = order[torch.argsort(blk_ids[order], stable=True)]  # grouped by unit, ranking kept
            uid = blk_ids[order]
            first = torch.searchsorted(uid, uid, side="left")  # where each unit's run starts
            out[order[torch.arange(len(order)) - first < k[uid]]] = True
        return out.view(sal.shape)

    return choose


def _step(units: torch.Tensor, blocksize: int) -> int:
    """Return M when every unit is M aligned consecutive columns of one row (N:M), else `blocksize`."""
    rows, cols = units.shape
    per_row = len(torch.unique(units[0]))
    m = cols // per_row
    if per_row * m != cols or m >= cols:
        return blocksize
    g = units.view(rows, per_row, m)
    if (g == g[..., :1]).all() and len(torch.unique(g[..., 0])) == rows * per_row:
        return m
    return blocksize


@register("sparsegpt", needs=["batches"], pool=ROWS, settings=SparseGPTSettings, calibrates=True,
          description="OBS with the inputs' Hessian, per output row, weights reconstructed (SparseGPT, "
                      "Frantar & Alistarh 2023)")  # fmt: skip
def sparsegpt(inp: ScoreInput) -> Scored:
    """Choose each layer's mask by SparseGPT's OBS sweep and return it as scores, with the reconstructed weights."""
    settings = inp.settings if isinstance(inp.settings, SparseGPTSettings) else SparseGPTSettings()
    pool: Pool = inp.pool if inp.pool is not None else ROWS
    if pool.across_tensors:
        raise ValueError(f"sparsegpt chooses its mask tensor by tensor; the {pool.name!r} pool spans tensors "
                         f"(valid: a pool within tensors, e.g. rows or N:M blocks)")  # fmt: skip
    hs = hessians(inp)
    params = prunable_parameters(inp.model)
    scores, tie, updates = {}, {}, {}
    for name, h in hs.items():
        p = params[name]
        w = p.detach().cpu().to(torch.float64).reshape(p.shape[0], -1)
        u = inverse_factor(h, settings.percdamp)
        old = ~inp.mask[name].cpu().reshape(w.shape)
        if inp.target_sparsity is None:  # no round: the dense saliency, no reconstruction
            scores[name] = (w**2 / torch.diagonal(u) ** 2).reshape(p.shape).float()
            continue
        units = pool.units(name, p.shape).to("cpu", torch.long).broadcast_to(p.shape).reshape(w.shape)
        new_w, pruned, sal = sweep(w, u, old, _chooser(units, old, float(inp.target_sparsity)),
                                   _step(units, int(settings.blocksize)))  # fmt: skip
        scores[name] = (~pruned).reshape(p.shape).float()
        tie[name] = sal.reshape(p.shape).float()
        updates[name] = new_w.reshape(p.shape).to(p.dtype)
    if inp.target_sparsity is None:
        return Scored(scores)
    return Scored(scores, tie_break=tie, updates=updates)
