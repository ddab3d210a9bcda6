"""Channel-level Algorithm 1 (``prune.granularity: channel``; docs/structured.md): budget, selection, slimming.

A run at channel granularity prunes whole channel groups (`groups.ChannelGroups`, traced
by Torch-Pruning). Its state between rounds is a `Mask` over every parameter the groups
touch (`ChannelGroups.full_mask`): the removed channels' weights, biases and BatchNorm
entries are held at zero while the rounds train. After the last round the network is
physically slimmed (`ChannelPlan.slim`) and post-training runs on the slim network.

Budget (`ChannelPlan.targets`), one of:

* ``prune.sparsity``: the fraction of channel groups pruned after the last round (the
  schedule gives each round's cumulative fraction);
* ``prune.speedup`` S: the MACs of the slim network are MACs_dense / S; the schedule is
  applied to the MACs reduction 1 − 1/S. Each round picks the number of pruned groups by
  bisection on a cheap proxy — the weight and bias MACs of the alive entries, Σ alive × output
  positions per layer — and checks the pick with the exact count (Torch-Pruning's op counter
  on a slimmed copy, `metrics.macs_and_params`, which also counts normalisation and
  activation ops); while the exact MACs miss the round's target by more than
  `MACS_PRECISION`, the proxy's target is rescaled by their ratio and the bisection rerun.

Selection is `selection.select` on per-layer channel scores: a global ranking (or per
layer, ``prune.scope``) among the alive groups, with a per-layer ceiling — at most
``prune.max_layer_ratio`` of a layer's channels are pruned, and one always stays — and an
optional ``prune.round_to``: every layer keeps a multiple of that many channels (rounded up
by keeping its best-scored channels of the round), or all of them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .config import ConfigError, PruneConfig
from .groups import ChannelGroups, channel_groups
from .layout import ParamLayout
from .masks import Mask
from .metrics import macs_and_params
from .modelio import ModelIO
from .selection import LayerCollapseWarning, ranking, schedule, select

#: how close a ``prune.speedup`` target must be reachable: MACs within this fraction of MACs_dense / S
SPEEDUP_TOLERANCE = 0.03
#: the bisection's aim: exact MACs within this fraction of a round's target (a few proxy corrections at most)
MACS_PRECISION = 0.005


@dataclass
class ChannelPlan:
    """The channel groups of a run's model and its budget (`build`).

    Attributes:
        groups: the model's channel groups (built on the dense model; used up by `slim`).
        prune: the ``prune`` section of the run's config.
        input_shape: one sample's shape.
        dense_macs: MACs of one sample's forward through the dense model (Torch-Pruning's counter).
        dense_params: parameter count of the dense model.
    """

    groups: ChannelGroups
    prune: PruneConfig
    input_shape: tuple[int, ...] | ModelIO  # a ModelIO for inputs that are not one float tensor
    dense_macs: int
    dense_params: int
    positions: dict[str, int] = field(default_factory=dict)  # prunable weight → output positions per sample
    _macs_cache: dict[bytes, int] = field(default_factory=dict, repr=False)

    kind: ClassVar[str] = "channel"  # the unit kind of `plan.Plan`: criteria score it with their channel scorer
    slims: ClassVar[bool] = True  # `finish` removes the pruned channels

    @classmethod
    def build(cls, model: nn.Module, prune: PruneConfig, input_shape: tuple[int, ...] | ModelIO) -> ChannelPlan:
        """Trace `model`'s channel groups and check that the budget can be met; raise `ConfigError` if not.

        `input_shape` is one sample's shape, or a `ModelIO` (tuple or dict inputs, a custom forward).
        """
        io = ModelIO.of(input_shape)
        try:
            groups = channel_groups(model, io)  # one sample (zeros for a shape)
        except Exception as e:  # Torch-Pruning's tracer raises whatever the model's forward raises
            raise ConfigError(f"prune.granularity: channel: Torch-Pruning cannot trace model "
                              f"{type(model).__name__} ({type(e).__name__}: {e}); use prune.granularity: "
                              "weight") from e  # fmt: skip
        if groups.G == 0:
            raise ConfigError(f"prune.granularity: channel: model {type(model).__name__} has no channel group that "
                              "can be pruned (only output layers); use prune.granularity: weight")  # fmt: skip
        macs, params = macs_and_params(model, io)
        kept = io.input_shape if io.plain and io.input_dtype is None else io  # one float tensor: its shape
        plan = cls(groups, prune, kept, macs, params, _output_positions(model, io))
        plan.check_budget()
        return plan

    # --- the budget ------------------------------------------------------------------------
    @property
    def G(self) -> int:
        """Number of channel groups."""
        return self.groups.G

    def floors(self) -> dict[str, int]:
        """Return root layer → the fewest channels it keeps (``prune.max_layer_ratio``, at least one, ``round_to``)."""
        out = {}
        for layer, idx in self.groups.layers.items():
            n = len(idx)
            keep = max(1, n - math.floor(self.prune.max_layer_ratio * n + 1e-9))
            out[layer] = self._rounded(keep, n)
        return out

    def _rounded(self, kept: int, n: int) -> int:
        r = self.prune.round_to
        return min(n, -(-kept // r) * r)

    def check_budget(self) -> None:
        """Raise `ConfigError` if the target cannot be reached under the per-layer ceiling."""
        floors = self.floors()
        most = sum(len(idx) - floors[layer] for layer, idx in self.groups.layers.items())
        p = self.prune
        ceiling = f"prune.max_layer_ratio {p.max_layer_ratio}" + (f", prune.round_to {p.round_to}" if p.round_to > 1
                                                                   else "")  # fmt: skip
        if p.speedup is None:
            assert p.sparsity is not None
            if round(p.sparsity * self.G) > most:
                raise ConfigError(f"prune.sparsity {p.sparsity} cannot be reached: at most {most} of the {self.G} "
                                  f"channel groups ({most / self.G:.3f}) can be pruned under {ceiling} "
                                  "(every layer keeps a channel)")  # fmt: skip
            return
        slimmest = self.macs(self._keep_floors(floors))
        best = self.dense_macs / slimmest
        if slimmest > self.target_macs(p.speedup) * (1 + SPEEDUP_TOLERANCE):
            raise ConfigError(f"prune.speedup {p.speedup} cannot be reached: pruning every layer to its ceiling "
                              f"({ceiling}, one channel kept per layer) gives {best:.2f}× fewer MACs "
                              f"({self.dense_macs:,} → {slimmest:,})")  # fmt: skip

    def _keep_floors(self, floors: dict[str, int]) -> torch.Tensor:
        keep = torch.ones(self.G, dtype=torch.bool)
        for layer, idx in self.groups.layers.items():
            keep[torch.tensor(idx[floors[layer] :], dtype=torch.long)] = False
        return keep

    def target_macs(self, speedup: float) -> float:
        """MACs of one sample for a MACs reduction `speedup`."""
        return self.dense_macs / speedup

    def targets(self) -> list[float]:
        """Each round's cumulative target: the fraction of groups pruned, or the MACs of the slim network."""
        p = self.prune
        if p.speedup is None:
            assert p.sparsity is not None
            return schedule(p.schedule, p.sparsity, p.n_iter)
        reductions = schedule(p.schedule, 1.0 - 1.0 / p.speedup, p.n_iter)
        return [self.dense_macs * (1.0 - r) for r in reductions]

    def describe_targets(self) -> str:
        """One line of text: each round's cumulative target."""
        if self.prune.speedup is None:
            return "channel groups pruned after each round: " + ", ".join(f"{t:.4f}" for t in self.targets())
        return "MACs reduction after each round: " + ", ".join(f"{self.dense_macs / t:.3f}×" for t in self.targets())

    # --- masks and selection ----------------------------------------------------------------
    def initial_mask(self) -> Mask:
        """Return the mask that keeps every group."""
        return self.groups.full_mask(torch.ones(self.G, dtype=torch.bool))

    def macs(self, keep: torch.Tensor) -> int:
        """Exact MACs of one sample through the network slimmed to the groups `keep` (cached)."""
        key = keep.numpy().tobytes()
        if key not in self._macs_cache:
            self._macs_cache[key] = macs_and_params(self.groups.slim_copy(keep), self.input_shape)[0]
        return self._macs_cache[key]

    def proxy_macs(self, keep: torch.Tensor) -> int:
        """Weight and bias MACs of one sample through the slim network: Σ alive entries × output positions."""
        mask = self.groups.full_mask(keep)
        total = 0
        for n, pos in self.positions.items():
            total += int(mask[n].sum()) * pos if n in mask else 0
            bias = n[: -len("weight")] + "bias"
            if bias in mask:
                total += int(mask[bias].sum()) * pos
        return total

    def select(self, scores: dict[str, torch.Tensor], tie_break: dict[str, torch.Tensor] | None, target: float,
               mask: Mask) -> Mask:  # fmt: skip
        """Return the new mask for one round: the round's `target` (`targets`) from oriented per-layer scores.

        `scores` / `tie_break` are keyed by root layer (higher = keep); `mask` is the current
        mask (`full_mask`); pruned groups stay pruned.
        """
        current = self.groups.keep_of(mask)
        alive = Mask(self.groups.per_layer(current))
        floors = self.floors()

        def pick(k: int) -> torch.Tensor:
            chosen = select(scores, k / self.G, scope=self.prune.scope, mask=alive, tie_break=tie_break,
                            min_alive=floors)  # fmt: skip
            return self._round_to(chosen, alive, scores, tie_break)

        if self.prune.speedup is None:
            keep = pick(round(target * self.G))
        else:
            keep, over = self._bisect(pick, int((~current).sum()), self.G - sum(floors.values()), target)
            keep = self._last_channel(keep, over, scores, tie_break, target, floors)
        return self.groups.full_mask(keep)

    def _bisect(self, pick, lo: int, hi: int, target: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The keep vector of the pruned count in [lo, hi] whose exact MACs are closest to `target`, and the
        keep vector of the count nearest to it whose MACs are still above the target (None: none is).

        Bisection on `proxy_macs` (MACs fall as k grows), with the proxy's target rescaled by
        target / exact until the exact MACs are within `MACS_PRECISION` (at most 6 bisections).
        """
        dense_keep = torch.ones(self.G, dtype=torch.bool)
        aim = target * self.proxy_macs(dense_keep) / self.dense_macs
        best: tuple[float, int] | None = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LayerCollapseWarning)  # the final pick warns once
            for _ in range(6):
                a, b = lo, hi
                while a < b:  # smallest k with proxy MACs ≤ aim (hi if none)
                    mid = (a + b) // 2
                    if self.proxy_macs(pick(mid)) <= aim:
                        b = mid
                    else:
                        a = mid + 1
                for k in {a, max(lo, a - 1)}:
                    miss = abs(self.macs(pick(k)) - target)
                    if best is None or miss < best[0]:
                        best = (miss, k)
                exact = self.macs(pick(a))
                if abs(exact / target - 1) <= MACS_PRECISION or (a == hi and exact > target) or \
                        (a == lo and exact < target):  # close enough, or no count gets closer
                    break
                aim *= target / exact
        assert best is not None
        k = best[1]
        over = k if self.macs(pick(k)) > target else k - 1  # the neighbouring pick still above the target
        return pick(k), (pick(over) if over >= lo else None)

    def _last_channel(self, keep: torch.Tensor, over: torch.Tensor | None, scores: dict[str, torch.Tensor],
                      tie_break: dict[str, torch.Tensor] | None, target: float,
                      floors: dict[str, int]) -> torch.Tensor:  # fmt: skip
        """Bring a pick within `SPEEDUP_TOLERANCE` of `target` when whole channels in ranking order cannot.

        Where one channel carries several per cent of the MACs, the ranking's next channel may
        overshoot the target. Then, from the pick `over` (still above the target), the one
        channel among the next 32 alive ones in the global ranking whose removal brings the
        exact MACs closest to the target is removed (``prune.scope: global`` and
        ``prune.round_to: 1`` only); a pick still off by more than the tolerance is kept
        closest and warned about.
        """
        best_keep, best_miss = keep, abs(self.macs(keep) - target)
        if best_miss > SPEEDUP_TOLERANCE * target and self.prune.scope == "global" and self.prune.round_to == 1:
            values = self.groups.from_layers(scores).to(torch.float64)
            tie = self.groups.from_layers(tie_break).to(torch.float64) if tie_break is not None else None
            layer_of = torch.empty(self.G, dtype=torch.long)
            names = list(self.groups.layers)
            for j, idx in enumerate(self.groups.layers.values()):
                layer_of[torch.tensor(idx, dtype=torch.long)] = j
            base = over if over is not None else keep
            kept = [int(base[torch.tensor(idx, dtype=torch.long)].sum()) for idx in self.groups.layers.values()]
            free = [g for g in ranking(values, tie).tolist()
                    if base[g] and kept[int(layer_of[g])] > floors[names[int(layer_of[g])]]]  # fmt: skip
            for g in free[:32] if over is not None else []:
                trial = base.clone()
                trial[g] = False
                miss = abs(self.macs(trial) - target)
                if miss < best_miss:
                    best_keep, best_miss = trial, miss
        if best_miss > SPEEDUP_TOLERANCE * target:
            warnings.warn(f"the round's MACs target {target:,.0f} is missed by {best_miss / target:.1%}: no pick of "
                          "whole channels comes closer (one channel carries that many MACs)", stacklevel=3)  # fmt: skip
        return best_keep

    def _round_to(self, chosen: Mask, alive: Mask, scores: dict[str, torch.Tensor],
                  tie_break: dict[str, torch.Tensor] | None) -> torch.Tensor:  # fmt: skip
        """Apply ``prune.round_to`` to a per-layer channel mask; return the (G,) keep vector."""
        out = {}
        for layer in chosen:
            new = chosen[layer].clone()
            n, kept = new.numel(), int(new.sum())
            want = self._rounded(kept, n)
            if want > kept:  # keep the best-scored channels pruned in this round
                revived = torch.nonzero(alive[layer] & ~new).squeeze(1)
                s = scores[layer].detach().to("cpu", torch.float64)[revived]
                t = tie_break[layer].detach().to("cpu", torch.float64)[revived] if tie_break is not None else None
                best_first = ranking(s, t).flip(0)
                new[revived[best_first[: want - kept]]] = True
            out[layer] = new
        return self.groups.from_layers(out)

    # --- the round (`plan.Plan`) -------------------------------------------------------------
    @property
    def target_key(self) -> str:
        """A round's target: a fraction of groups (``sparsity_target``) or MACs (``macs_target``)."""
        return "macs_target" if self.prune.speedup is not None else "sparsity_target"

    @property
    def units(self) -> ChannelGroups:
        """The channel groups: channel scorers read them in ``ScoreInput.groups``."""
        return self.groups

    def layout(self, model: nn.Module, mask: Mask) -> ParamLayout:
        """Return what a round records: one column per channel group alive under `mask`."""
        return self.groups.layout(mask)

    def facts(self, mask: Mask) -> dict[str, Any]:
        """Return a round's facts: the fraction of groups pruned, the pruned channels, the slim network's MACs."""
        keep = self.groups.keep_of(mask)
        return {"sparsity": float((~keep).float().mean()), "channels_pruned": int((~keep).sum()),
                "macs": self.macs(keep)}  # fmt: skip

    def finish(self, model: nn.Module, mask: Mask) -> nn.Module:
        """Apply `mask` and remove the pruned channels physically (`slim`); return the slim network."""
        mask.apply_(model)
        return self.slim(model, mask)

    def counts(self, model: nn.Module, mask: Mask) -> tuple[int, int]:
        """Return (prunable weights of the dense network, those `mask` keeps): the slim network's are all alive."""
        return self.weight_counts(mask)

    def run_facts(self, mask: Mask) -> dict[str, Any]:
        """Return the run's channel facts for summary.json: ``channels`` (`summary`) and ``speedup_target``."""
        return {"channels": self.summary(mask), "speedup_target": self.prune.speedup}

    def describe(self) -> list[str]:
        """Return the groups, the dense network's cost, and each round's target (a dry run's lines)."""
        return [f"channel groups: {self.G} in {len(self.groups.layers)} layers; dense {self.dense_macs:,} MACs per "
                f"sample, {self.dense_params:,} parameters", self.describe_targets()]  # fmt: skip

    # --- the end ----------------------------------------------------------------------------
    def slim(self, model: nn.Module, mask: Mask) -> nn.Module:
        """Zero the removed groups of `model` and remove them physically (the plan's groups are used up)."""
        keep = self.groups.keep_of(mask)
        self.groups.zero_groups_(model, keep)
        return self.groups.remove_groups_(model, keep)

    def weight_counts(self, mask: Mask) -> tuple[int, int]:
        """Return (prunable weights of the dense model, those `mask` keeps alive)."""
        weights = [mask[n] for n in self.groups.shapes]
        return sum(m.numel() for m in weights), sum(int(m.sum()) for m in weights)

    def summary(self, mask: Mask) -> dict[str, object]:
        """The channel facts of the final `mask` for summary.json: groups, pruned, fraction, channels kept per layer."""
        keep = self.groups.keep_of(mask)
        return {
            "groups": self.G, "pruned": int((~keep).sum()), "sparsity": float((~keep).float().mean()),
            "kept_per_layer": {layer: int(v.sum()) for layer, v in self.groups.per_layer(keep).items()},
        }  # fmt: skip


def _output_positions(model: nn.Module, input_shape: tuple[int, ...] | ModelIO) -> dict[str, int]:
    """Return prunable weight name → output positions of its layer for one sample (output numel / channels)."""
    from .masks import PRUNABLE_LAYERS

    names = {id(m.weight): n for n, m in model.named_modules() if isinstance(m, PRUNABLE_LAYERS)}
    canonical = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, int] = {}
    hooks = []
    for m in model.modules():
        if isinstance(m, PRUNABLE_LAYERS) and id(m.weight) in names:
            def hook(mod: nn.Module, _: object, y: torch.Tensor) -> None:
                channels = y.shape[-1] if isinstance(mod, nn.Linear) else y.shape[1]
                key = canonical[id(mod.weight)]
                out[key] = out.get(key, 0) + y.numel() // max(channels, 1)
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            io = ModelIO.of(input_shape)
            io.forward(model, io.example_inputs(1, "example", device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return out


def slim_to_mask(model: nn.Module, mask: Mask, input_shape: tuple[int, ...] | ModelIO) -> nn.Module:
    """Slim a freshly built dense `model` to the channel groups a finished run's `mask` keeps (to load its model.pt).

    `input_shape` is one sample's shape (a float tensor) or the run's `ModelIO` (e.g. token ids).
    """
    groups = channel_groups(model, ModelIO.of(input_shape))
    return groups.remove_groups_(model, groups.keep_of(mask.canonical(model)))


__all__ = ["SPEEDUP_TOLERANCE", "ChannelPlan", "slim_to_mask"]
