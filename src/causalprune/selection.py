"""Scores → masks: one thresholding code for every criterion (docs/method.md, "Scores, tie-break, masks").

Every pruning method only *scores* weights (higher = more important); this module turns
scores into masks the same way for all of them: global or layer-wise ranking among the
weights still alive, exact prune counts, ties broken by an optional secondary score
(for causal pruning: the KKT score), and a guard that never empties a layer.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping

import torch

from .layout import ParamLayout
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


def ranking(primary: torch.Tensor, secondary: torch.Tensor | None) -> torch.Tensor:
    """Return indices ordering entries from least to most important (lexicographic keys)."""
    if secondary is None:
        return torch.argsort(primary, stable=True)
    order = torch.argsort(secondary, stable=True)
    return order[torch.argsort(primary[order], stable=True)]


def _checked_scores(scores: Mapping[str, torch.Tensor], layout: ParamLayout, what: str) -> dict[str, torch.Tensor]:
    """Return name → scores (CPU, float64) for every tensor of `layout`, refusing missing names, wrong shapes,
    NaN and Inf (pruned entries included)."""
    out = {}
    for n in layout.names:
        if n not in scores:
            raise ValueError(f"{what} lack parameter {n!r} (have: {', '.join(scores)}); key the mask and the "
                             "scores alike (a tied weight: by canonical names, Mask.canonical(model))")  # fmt: skip
        s = scores[n].detach().to("cpu", torch.float64)
        if s.shape != layout.shapes[n]:
            raise ValueError(f"{what} for {n!r} have shape {tuple(s.shape)}, mask has {tuple(layout.shapes[n])}")
        if not torch.isfinite(s).all():
            raise ValueError(f"{what} for {n!r} contain NaN or Inf")
        out[n] = s
    return out


def select(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    scope: str = "global",
    mask: Mask | None = None,
    tie_break: Mapping[str, torch.Tensor] | None = None,
    min_alive: int | Mapping[str, int] = 1,
) -> Mask:
    """Prune the lowest-scored alive weights until `sparsity` of all weights are pruned.

    Args:
        scores: name → tensor of importance scores (higher = keep), one per prunable tensor.
        sparsity: cumulative target, fraction of all covered weights that are zero, in [0, 1).
        scope: ``global`` (one ranking over all tensors; exact count round(sparsity·N)) or
            ``layerwise`` (each tensor pruned to round(sparsity·n_layer)).
        mask: the current mask; pruned weights stay pruned. Default: all alive.
        tie_break: optional secondary scores that order weights whose primary scores tie
            (e.g. the many exact zeros of a Lasso; docs/method.md, "Scores, tie-break, masks").
        min_alive: the layer-collapse guard keeps at least this many weights per tensor (or
            name → count, a per-tensor ceiling on pruning); when it changes the outcome a
            `LayerCollapseWarning` names the layers.

    Returns:
        The new mask. Raises ValueError on an impossible request.
    """
    p = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    if mask is None:
        mask = Mask({n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()})
    names = list(mask)
    if not names or mask.numel() == 0:
        raise ValueError("nothing to prune: the mask covers no weights")
    # Candidates: the alive entries of every tensor, row-major, tensor after tensor; tensor j owns layout.span(j).
    layout = ParamLayout.of(mask, alive=mask)
    key1 = layout.flatten(_checked_scores(scores, layout, "scores"), dtype=torch.float64)
    key2 = (layout.flatten(_checked_scores(tie_break, layout, "tie-break scores"), dtype=torch.float64)
            if tie_break is not None else None)  # fmt: skip
    pruned = torch.zeros(layout.d, dtype=torch.bool)  # indexed by candidate: pruned this call
    guarded: list[str] = []
    floor = {n: int(min_alive[n]) if isinstance(min_alive, Mapping) else int(min_alive) for n in names}
    floor_text = f"{min_alive}" if not isinstance(min_alive, Mapping) else "the minimum number of"

    if scope == "global":
        total = mask.numel()
        target_zeros = round(p * total)
        current_zeros = total - layout.d
        if target_zeros < current_zeros:
            raise ValueError(
                f"target sparsity {p} is below the mask's current sparsity {current_zeros / total:.6f}; "
                "pruned weights cannot be revived"
            )
        k = target_zeros - current_zeros
        order = ranking(key1, key2)  # least important first
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order))  # position of each candidate in the ranking
        # Guard: the `min_alive` most important alive entries of every tensor are protected.
        protected = torch.zeros(len(order), dtype=torch.bool)  # indexed by ranking position
        for j in range(len(layout)):
            a, b = layout.span(j)
            keep = min(floor[layout.names[j]], b - a)
            if keep:
                protected[rank[a:b].topk(keep).values] = True
        candidates = order[~protected]
        if k > len(candidates):
            raise ValueError(
                f"sparsity {p} is impossible: it needs {target_zeros} zeros but at most "
                f"{current_zeros + len(candidates)} of {total} weights can be pruned while keeping "
                f"{floor_text} weight(s) alive in each of {len(names)} tensors"
            )
        pruned[candidates[:k]] = True
        # The guard fired where a protected entry ranks among the k least important.
        ends = torch.tensor(layout.offsets[1:])
        fired = set(torch.bucketize(order[:k][protected[:k]], ends, right=True).tolist())
        guarded = [names[j] for j in sorted(fired)]
    else:
        for j, n in enumerate(names):
            a, b = layout.span(j)
            n_total = layout.shapes[n].numel()
            target_zeros = round(p * n_total)
            current_zeros = n_total - (b - a)
            cap = n_total - min(floor[n], n_total)
            if target_zeros > cap:
                guarded.append(n)
                target_zeros = cap
            k = target_zeros - current_zeros
            if k <= 0:
                continue
            order = ranking(key1[a:b], key2[a:b] if key2 is not None else None)
            pruned[a + order[:k]] = True

    if guarded:
        msg = (
            f"layer-collapse guard fired: kept {floor_text} weight(s) alive in "
            f"{', '.join(sorted(set(guarded)))} that the ranking would have pruned"
        )
        log.warning(msg)
        warnings.warn(msg, LayerCollapseWarning, stacklevel=2)
    # Entries pruned before this call have no candidate: they come back as False (they stay pruned).
    return Mask(layout.unflatten(~pruned, fill=False, dtype=torch.bool))
