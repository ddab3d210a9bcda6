"""Scores → masks: one thresholding code for every criterion (docs/method.md, "Scores, tie-break, masks").

Every pruning method only *scores* weights (higher = more important); this module turns
scores into masks the same way for all of them: a ranking among the weights still alive
within each unit of a *pool* (one global unit, one per layer, per output row, per block
of M inputs), exact prune counts per unit, ties broken by an optional secondary score (for
causal pruning: the KKT score), and a guard that never empties a layer.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .layout import ParamLayout
from .masks import Mask

log = logging.getLogger(__name__)

SCHEDULES = ("cubic", "geometric", "linear")
SCOPES = ("global", "layerwise")  # the config's prune.scope: names of the pools GLOBAL and LAYERWISE


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


# --- pools: which alive weights compete with each other ------------------------------------
@dataclass(frozen=True)
class Pool:
    """Which alive weights compete: a partition of every tensor's entries into units, each pruned to the same fraction.

    Every unit u prunes its own exact count, round(sparsity · N_u) zeros among its N_u entries
    (pruned ones included), taking its least important alive entries in the ranking's order
    (ties: the tie-break, then index order). A new pool is a new value, not a branch of `select`.

    Attributes:
        name: what errors and warnings call the pool.
        units: ``units(tensor name, shape)`` → the unit of every entry of that tensor: an integer
            tensor broadcastable to ``shape`` with values >= 0 (one value: the whole tensor is one unit).
        across_tensors: units of the same number in different tensors are one unit (the global
            ranking): the layer-collapse guard moves such a unit's pruning to its other entries, and a
            count it cannot reach is an error, as is a target below its current sparsity. Otherwise
            each tensor's units are its own: a unit already past its target prunes nothing, and the
            guard caps a unit that would prune the tensor's protected entries.
    """

    name: str
    units: Callable[[str, torch.Size], torch.Tensor]
    across_tensors: bool = False


def _one_unit(name: str, shape: torch.Size) -> torch.Tensor:
    """The whole tensor is one unit."""
    return torch.zeros((), dtype=torch.long)


def _dim_of(pool: str, name: str, shape: torch.Size, dim: int) -> int:
    """Return `dim` as a non-negative axis of `shape`; refuse tensors of fewer than 2 dimensions."""
    if len(shape) < 2 or not -len(shape) <= dim < len(shape):
        raise ValueError(f"the {pool} pool needs tensors of 2 or more dimensions with a dim {dim}; "
                         f"{name!r} has shape {tuple(shape)}")  # fmt: skip
    return dim % len(shape)


def rows(dim: int = 0) -> Pool:
    """Return the pool whose units are the output rows along `dim`: every row keeps the same fraction (Wanda).

    Dim 0 is the output dimension of ``nn.Linear`` and ``nn.ConvNd`` weights; a layer that stores
    its weight as (in, out), such as GPT-2's ``Conv1D``, has its rows along dim 1.
    """
    name = "row" if dim == 0 else f"row(dim={dim})"

    def units(tensor: str, shape: torch.Size) -> torch.Tensor:
        axis = _dim_of(name, tensor, shape, dim)
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return torch.arange(shape[axis]).view(view)  # broadcast along every other dimension

    return Pool(name, units)


def blocks(m: int, dim: int = 1) -> Pool:
    """Return the pool whose units are blocks of `m` consecutive entries along the input dimension `dim` (N:M).

    With sparsity (M − N) / M every block keeps exactly N of its M entries. Dim 1 is the input
    dimension of ``nn.Linear`` and ``nn.ConvNd`` weights (a convolution's blocks run across input
    channels, one set per output channel and kernel position); that dimension's size must be a
    multiple of `m`.
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"block size m must be an integer >= 1, got {m!r}")
    name = f"block({m})" if dim == 1 else f"block({m}, dim={dim})"

    def units(tensor: str, shape: torch.Size) -> torch.Tensor:
        axis = _dim_of(name, tensor, shape, dim)
        if shape[axis] % m:
            raise ValueError(f"the {name} pool needs dim {axis} of {tensor!r} (shape {tuple(shape)}) to be a multiple "
                             f"of {m}, got {shape[axis]}")  # fmt: skip
        blocked = list(shape)
        blocked[axis] //= m
        return torch.arange(math.prod(blocked)).view(blocked).repeat_interleave(m, dim=axis)

    return Pool(name, units)


GLOBAL = Pool("global", _one_unit, across_tensors=True)  # one ranking over every tensor
LAYERWISE = Pool("layerwise", _one_unit)  # one ranking per tensor
ROWS = rows()  # one ranking per output row
POOLS: dict[str, Pool] = {"global": GLOBAL, "layerwise": LAYERWISE}  # scope name → pool


def _units(pool: Pool, layout: ParamLayout) -> tuple[torch.Tensor | None, torch.Tensor, list[bool]]:
    """Return the unit of every candidate (None: there is one unit), the (U,) number of entries per unit, and
    whether each tensor holds several units.

    Units are numbered from 0; a pool whose units are the tensors' own gets each tensor's
    numbers shifted past the previous tensor's.
    """
    ids: list[torch.Tensor] = []  # per tensor: a 0-dim unit (the whole tensor) or the (numel,) unit of each entry
    offset = 0
    for n in layout.names:
        shape = layout.shapes[n]
        u = pool.units(n, shape)
        if not isinstance(u, torch.Tensor) or u.dtype.is_floating_point or u.dtype.is_complex or u.dtype == torch.bool:
            raise ValueError(f"pool {pool.name!r} must give integer unit tensors, got {u!r:.60} for {n!r}")
        u = u.to("cpu", torch.long)
        if u.numel() == 1:
            u = u.reshape(())
        else:
            try:
                u = u.broadcast_to(shape).reshape(-1)
            except RuntimeError:
                raise ValueError(f"pool {pool.name!r} gave units of shape {tuple(u.shape)} for {n!r} of shape "
                                 f"{tuple(shape)}; valid: a shape that broadcasts to it") from None  # fmt: skip
        if u.numel() and int(u.min()) < 0:
            raise ValueError(f"pool {pool.name!r} gave negative units for {n!r}; valid: integers >= 0")
        if not pool.across_tensors:
            u = u + offset
            offset = (int(u.max()) + 1) if u.numel() else offset
        ids.append(u)
    n_units = max((int(u.max()) + 1 for u in ids if u.numel()), default=1)
    size = torch.zeros(n_units, dtype=torch.long)  # (U,) entries of every unit, pruned ones included
    for n, u in zip(layout.names, ids, strict=True):
        if u.dim() == 0:
            size[u] += layout.shapes[n].numel()
        else:
            size += torch.bincount(u, minlength=n_units)
    split = [u.dim() > 0 for u in ids]
    if n_units == 1:
        return None, size, split
    parts = []
    for j, (n, u) in enumerate(zip(layout.names, ids, strict=True)):
        a, b = layout.span(j)
        i = layout.index[n]
        parts.append(u.expand(b - a) if u.dim() == 0 else (u if i is None else u[i]))
    return torch.cat(parts), size, split


def select(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    scope: str = "global",
    mask: Mask | None = None,
    tie_break: Mapping[str, torch.Tensor] | None = None,
    min_alive: int | Mapping[str, int] = 1,
    pool: Pool | None = None,
) -> Mask:
    """Prune the lowest-scored alive weights of every pool unit until `sparsity` of its weights are pruned.

    Args:
        scores: name → tensor of importance scores (higher = keep), one per prunable tensor.
        sparsity: cumulative target, fraction of the covered weights that are zero, in [0, 1).
        scope: ``global`` (one ranking over all tensors; exact count round(sparsity·N)) or
            ``layerwise`` (each tensor pruned to round(sparsity·n_layer)): the pools `GLOBAL` and
            `LAYERWISE`.
        mask: the current mask; pruned weights stay pruned. Default: all alive.
        tie_break: optional secondary scores that order weights whose primary scores tie
            (e.g. the many exact zeros of a Lasso; docs/method.md, "Scores, tie-break, masks").
        min_alive: the layer-collapse guard keeps at least this many weights per tensor (its most
            important alive ones; or name → count, a per-tensor ceiling on pruning); when it changes
            the outcome a `LayerCollapseWarning` names the layers.
        pool: which weights compete, instead of `scope`: `GLOBAL`, `LAYERWISE`, `ROWS` (per output
            row), `blocks(m)` (per block of m inputs, N:M), or any `Pool`; each unit prunes
            round(sparsity · its entries).

    Returns:
        The new mask. Raises ValueError on an impossible request.
    """
    p = check_sparsity(sparsity)
    if pool is None:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
        pool = POOLS[scope]
    elif scope != "global":
        raise ValueError(f"give scope or pool, not both (scope {scope!r}, pool {pool.name!r})")
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
    floor = {n: int(min_alive[n]) if isinstance(min_alive, Mapping) else int(min_alive) for n in names}
    floor_text = f"{min_alive}" if not isinstance(min_alive, Mapping) else "the minimum number of"
    unit_of, size, split = _units(pool, layout)  # (d,) or None (one unit); (U,); per tensor
    n_units = len(size)
    # Per unit: alive entries, target and current zeros, and k_u, the count to prune now.
    alive = torch.tensor([layout.d]) if unit_of is None else torch.bincount(unit_of, minlength=n_units)
    target = torch.round(size.to(torch.float64) * p).long()  # round(p·N_u), half to even like Python's round
    current = size - alive
    k = target - current

    # The ranking, least important first, grouped by unit (`seq` holds candidates; a stable sort by unit keeps
    # each unit's ranking order): one ranking over every tensor when units span tensors, else one per tensor.
    # Guard: the `min_alive` most important alive entries of every tensor are protected.
    protected = torch.zeros(layout.d, dtype=torch.bool)  # indexed by candidate
    keep = [min(floor[n], layout.sizes[j]) for j, n in enumerate(names)]  # protected entries per tensor
    if pool.across_tensors:
        order = ranking(key1, key2)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order))  # position of each candidate in the ranking
        for j in range(len(layout)):
            a, b = layout.span(j)
            if keep[j]:
                protected[a + rank[a:b].topk(keep[j]).indices] = True
        seqs = [order if unit_of is None else order[torch.argsort(unit_of[order], stable=True)]]
    else:  # the global ranking restricted to a tensor is the tensor's own ranking
        seqs = []
        for j in range(len(layout)):
            a, b = layout.span(j)
            order = ranking(key1[a:b], key2[a:b] if key2 is not None else None) + a
            if keep[j]:
                protected[order[b - a - keep[j]:]] = True
            seqs.append(order[torch.argsort(unit_of[order], stable=True)] if split[j] else order)
    seq = torch.cat(seqs)
    protected = protected[seq]  # now indexed by position in seq
    unit = None if unit_of is None else unit_of[seq]  # (d,) the unit of each position of seq

    def at(v: torch.Tensor) -> torch.Tensor:
        """(U,) per-unit values → the value at every position of `seq` (broadcast when there is one unit)."""
        return v[0] if unit is None else v[unit]

    free = ~protected
    n_protected = (torch.tensor([int(protected.sum())]) if unit is None
                   else torch.bincount(unit[protected], minlength=n_units))  # fmt: skip
    avail = alive - n_protected  # prunable entries per unit
    if pool.across_tensors:
        below = torch.nonzero(k < 0).squeeze(1)
        if len(below):
            u = int(below[0])
            where = "" if n_units == 1 else f" in unit {u} of the {pool.name} pool"
            raise ValueError(
                f"target sparsity {p} is below the mask's current sparsity {int(current[u]) / int(size[u]):.6f}"
                f"{where}; pruned weights cannot be revived"
            )
        short = torch.nonzero(k > avail).squeeze(1)
        if len(short):
            u = int(short[0])
            where = "" if n_units == 1 else f" in unit {u} of the {pool.name} pool"
            raise ValueError(
                f"sparsity {p} is impossible{where}: it needs {int(target[u])} zeros but at most "
                f"{int(current[u] + avail[u])} of {int(size[u])} weights can be pruned while keeping "
                f"{floor_text} weight(s) alive in each of {len(names)} tensors"
            )
    quota = torch.minimum(k.clamp(min=0), avail)  # per unit: what it prunes now
    free_before = torch.cumsum(free, 0) - free.long()  # free positions of seq before each position
    start = torch.cumsum(alive, 0) - alive  # where each unit begins in seq
    free_start = torch.cumsum(avail, 0) - avail  # free positions before each unit
    pruned_seq = free & (free_before - at(free_start) < at(quota))
    pruned = torch.zeros(layout.d, dtype=torch.bool)  # indexed by candidate: pruned this call
    pruned[seq[pruned_seq]] = True
    # The guard fired where a protected entry ranks among its unit's k_u least important.
    fired_seq = protected & (torch.arange(len(seq)) - at(start) < at(k))
    ends = torch.tensor(layout.offsets[1:])
    fired = set(torch.bucketize(seq[fired_seq], ends, right=True).tolist())
    guarded = sorted(names[j] for j in fired)
    if guarded:
        msg = (
            f"layer-collapse guard fired: kept {floor_text} weight(s) alive in "
            f"{', '.join(guarded)} that the ranking would have pruned"
        )
        log.warning(msg)
        warnings.warn(msg, LayerCollapseWarning, stacklevel=2)
    # Entries pruned before this call have no candidate: they come back as False (they stay pruned).
    return Mask(layout.unflatten(~pruned, fill=False, dtype=torch.bool))
