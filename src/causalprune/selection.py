"""Scores → masks: one thresholding code for every criterion (SPEC §4).

Every pruning method only *scores* weights (higher = more important); this module turns
scores into masks the same way for all of them: global or layer-wise ranking among the
weights still alive, exact prune counts, ties broken by an optional secondary score
(for causal pruning: the KKT score, SPEC §4), and a guard that never empties a layer.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping

import torch

from .masks import Mask

log = logging.getLogger(__name__)

SCHEDULES = ("cubic", "geometric", "linear")
SCOPES = ("global", "layerwise")


class LayerCollapseWarning(UserWarning):
    """The layer-collapse guard kept weights that the ranking would have pruned."""


def check_sparsity(sparsity: float, key: str = "sparsity") -> float:
    """Return `sparsity` as a float if it lies in [0, 1); raise ValueError naming `key` if not."""
    s = float(sparsity)
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ValueError(f"{key} must be in [0, 1), got {sparsity}")
    return s


def schedule(kind: str, sparsity: float, rounds: int) -> list[float]:
    """Return the cumulative sparsity after each of `rounds` pruning rounds.

    `cubic`: P·(1 − (1 − i/N)³) (Zhu & Gupta 2017; the authors' code), `geometric`:
    1 − (1 − P)^(i/N) (lottery-ticket style, same fraction of the survivors each round),
    `linear`: P·i/N. The last value is always P.
    """
    p = check_sparsity(sparsity)
    if int(rounds) != rounds or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds}")
    n = int(rounds)
    if kind == "cubic":
        values = [p * (1.0 - (1.0 - i / n) ** 3) for i in range(1, n + 1)]
    elif kind == "geometric":
        values = [1.0 - (1.0 - p) ** (i / n) for i in range(1, n + 1)]
    elif kind == "linear":
        values = [p * i / n for i in range(1, n + 1)]
    else:
        raise ValueError(f"unknown schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
    values[-1] = p
    return values


def _ranking(primary: torch.Tensor, secondary: torch.Tensor | None) -> torch.Tensor:
    """Return indices ordering entries from least to most important (lexicographic keys)."""
    if secondary is None:
        return torch.argsort(primary, stable=True)
    order = torch.argsort(secondary, stable=True)
    return order[torch.argsort(primary[order], stable=True)]


def _flat_scores(
    scores: Mapping[str, torch.Tensor], names: list[str], shapes: dict[str, torch.Size], what: str
) -> dict[str, torch.Tensor]:
    out = {}
    for n in names:
        if n not in scores:
            raise ValueError(f"{what} lack parameter {n!r} (have: {', '.join(scores)})")
        s = scores[n].detach().to("cpu", torch.float64)
        if s.shape != shapes[n]:
            raise ValueError(f"{what} for {n!r} have shape {tuple(s.shape)}, mask has {tuple(shapes[n])}")
        if not torch.isfinite(s).all():
            raise ValueError(f"{what} for {n!r} contain NaN or Inf")
        out[n] = s.reshape(-1)
    return out


def select(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    scope: str = "global",
    mask: Mask | None = None,
    tie_break: Mapping[str, torch.Tensor] | None = None,
    min_alive: int = 1,
) -> Mask:
    """Prune the lowest-scored alive weights until `sparsity` of all weights are pruned.

    Args:
        scores: name → tensor of importance scores (higher = keep), one per prunable tensor.
        sparsity: cumulative target, fraction of all covered weights that are zero, in [0, 1).
        scope: ``global`` (one ranking over all tensors; exact count round(sparsity·N)) or
            ``layerwise`` (each tensor pruned to round(sparsity·n_layer)).
        mask: the current mask; pruned weights stay pruned. Default: all alive.
        tie_break: optional secondary scores that order weights whose primary scores tie
            (e.g. the many exact zeros of a Lasso, SPEC §4).
        min_alive: the layer-collapse guard keeps at least this many weights per tensor;
            when it changes the outcome a `LayerCollapseWarning` names the layers.

    Returns:
        The new mask. Raises ValueError on an impossible request.
    """
    p = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    if mask is None:
        mask = Mask({n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()})
    names = list(mask)
    shapes = {n: mask[n].shape for n in names}
    if not names or mask.numel() == 0:
        raise ValueError("nothing to prune: the mask covers no weights")
    prim = _flat_scores(scores, names, shapes, "scores")
    sec = _flat_scores(tie_break, names, shapes, "tie-break scores") if tie_break is not None else None
    alive = {n: mask[n].reshape(-1) for n in names}
    new_alive = {n: a.clone() for n, a in alive.items()}
    guarded: list[str] = []

    if scope == "global":
        total = mask.numel()
        target_zeros = round(p * total)
        current_zeros = total - mask.count_alive()
        if target_zeros < current_zeros:
            raise ValueError(
                f"target sparsity {p} is below the mask's current sparsity {current_zeros / total:.6f}; "
                "pruned weights cannot be revived"
            )
        k = target_zeros - current_zeros
        # Candidates: alive entries of every tensor, concatenated; tensor j owns [start_j, end_j).
        idx = [torch.nonzero(alive[n]).squeeze(1) for n in names]
        ends = torch.tensor([len(i) for i in idx]).cumsum(0).tolist()
        starts = [0, *ends[:-1]]
        key1 = torch.cat([prim[n][i] for n, i in zip(names, idx, strict=True)])
        key2 = torch.cat([sec[n][i] for n, i in zip(names, idx, strict=True)]) if sec else None
        order = _ranking(key1, key2)  # least important first
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order))  # position of each candidate in the ranking
        # Guard: the `min_alive` most important alive entries of every tensor are protected.
        protected = torch.zeros(len(order), dtype=torch.bool)  # indexed by ranking position
        for a, b in zip(starts, ends, strict=True):
            keep = min(min_alive, b - a)
            if keep:
                protected[rank[a:b].topk(keep).values] = True
        candidates = order[~protected]
        if k > len(candidates):
            raise ValueError(
                f"sparsity {p} is impossible: it needs {target_zeros} zeros but at most "
                f"{current_zeros + len(candidates)} of {total} weights can be pruned while keeping "
                f"{min_alive} weight(s) alive in each of {len(names)} tensors"
            )
        pruned = torch.zeros(len(order), dtype=torch.bool)  # indexed by candidate
        pruned[candidates[:k]] = True
        # The guard fired where a protected entry ranks among the k least important.
        fired = set(torch.bucketize(order[:k][protected[:k]], torch.tensor(ends), right=True).tolist())
        guarded = [names[j] for j in sorted(fired)]
        for n, i, a, b in zip(names, idx, starts, ends, strict=True):
            new_alive[n][i[pruned[a:b]]] = False
    else:
        for n in names:
            a = alive[n]
            n_total = a.numel()
            target_zeros = round(p * n_total)
            current_zeros = n_total - int(a.sum())
            cap = n_total - min(min_alive, n_total)
            if target_zeros > cap:
                guarded.append(n)
                target_zeros = cap
            k = target_zeros - current_zeros
            if k <= 0:
                continue
            i = torch.nonzero(a).squeeze(1)
            order = _ranking(prim[n][i], sec[n][i] if sec else None)
            new_alive[n][i[order[:k]]] = False

    if guarded:
        msg = (
            f"layer-collapse guard fired: kept {min_alive} weight(s) alive in "
            f"{', '.join(sorted(set(guarded)))} that the ranking would have pruned"
        )
        log.warning(msg)
        warnings.warn(msg, LayerCollapseWarning, stacklevel=2)
    return Mask({n: new_alive[n].reshape(shapes[n]) for n in names})
