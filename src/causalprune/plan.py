"""One round of Algorithm 1 as one value: a `Plan` says what is pruned, `run_round` runs a round.

A plan is the unit kind of a run — single weights (`WeightPlan`), channel groups
(`structured.ChannelPlan`), or anything else a new plan brings (heads, neurons): its
round targets, its initial mask, what the recorder records (`layout`), how scores become
a mask (`select`, through `selection.select`), the facts of a round and of the run, and
how a finished run ends (`finish`: make the mask permanent, or slim the network). A
criterion scores a plan's units with its scorer for the plan's `kind`
(`criteria.Criterion.scorers`).

`run_round` is the round both the command-line driver (`experiment.level_stage`) and
`pruner.CausalPruner` run: build the `ScoreInput`, score, select, apply the criterion's
weight updates, and report the round's facts. The rewind rule (docs/method.md,
"Rewinding"): after a round, the surviving weights go back to θ_pre, the optimizer's state
is cleared, and the next round's LR schedule starts from its beginning; a criterion's
weight updates replace θ_pre for the weights the round keeps, so the rewind keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from .config import PruneConfig, parse_pattern
from .criteria import Criterion, Scored, ScoreInput
from .layout import ParamLayout
from .masks import Mask, prunable_parameters
from .modelio import ModelIO
from .recording import stage_seed
from .selection import Pool, blocks, schedule, select
from .structured import ChannelPlan, slim_to_mask


@runtime_checkable
class Plan(Protocol):
    """What a run prunes, round by round (`WeightPlan`, `structured.ChannelPlan`, or a new unit kind's plan)."""

    kind: ClassVar[str]  # the unit kind its criteria score (`criteria.Criterion.scorers` key)
    slims: ClassVar[bool]  # whether `finish` changes the network's shape (then it is measured against the dense one)

    @property
    def target_key(self) -> str:
        """The name of a round's target in the run's log: ``sparsity_target``, ``macs_target``, ..."""
        ...

    @property
    def units(self) -> Any:
        """What the scorers find in ``ScoreInput.groups`` (the channel groups; None for single weights)."""
        ...

    def targets(self) -> list[float]:
        """Return each round's cumulative target."""
        ...

    def initial_mask(self) -> Mask:
        """Return the mask before the first round (every unit alive)."""
        ...

    def layout(self, model: nn.Module, mask: Mask) -> ParamLayout:
        """Return what a round under `mask` records: the recorder's columns."""
        ...

    def select(self, scores: dict[str, torch.Tensor], tie_break: dict[str, torch.Tensor] | None, target: float,
               mask: Mask) -> Mask:  # fmt: skip
        """Return the new mask for a round's cumulative `target` from oriented scores (higher = keep)."""
        ...

    def facts(self, mask: Mask) -> dict[str, Any]:
        """Return a round's facts after selecting `mask`: ``sparsity`` (of the plan's units) and kind-specific ones."""
        ...

    def finish(self, model: nn.Module, mask: Mask) -> nn.Module:
        """End the rounds: apply `mask` for good (slim the network where the units are removed); return the model."""
        ...

    def counts(self, model: nn.Module, mask: Mask) -> tuple[int, int]:
        """Return (prunable weights of the dense network, those alive) after `finish`."""
        ...

    def run_facts(self, mask: Mask) -> dict[str, Any]:
        """Return the run's final facts of this kind for summary.json (may be empty)."""
        ...

    def describe(self) -> list[str]:
        """Return lines of text for a dry run: the units and each round's target."""
        ...


@dataclass
class WeightPlan:
    """Single weights (``prune.granularity: weight``): masks under `selection.select` with ``prune.scope``.

    With ``prune.pattern`` "N:M" the units are blocks of M consecutive inputs (`selection.blocks`)
    instead of ``prune.scope``: round k prunes round(s_k · M) entries of every block, s_k the
    schedule's cumulative sparsity, whose last value (M − N) / M leaves exactly N per block.
    """

    kind: ClassVar[str] = "weight"
    slims: ClassVar[bool] = False
    prune: PruneConfig
    initial: Mask  # every weight it prunes, alive (all prunable weights, or a chosen subset)

    @classmethod
    def build(cls, model: nn.Module, prune: PruneConfig, input_shape: tuple[int, ...] | None = None,
              initial: Mask | None = None) -> WeightPlan:  # fmt: skip
        """Return the plan of `model`'s prunable weights (or of those `initial` covers) under `prune`.

        With ``prune.pattern``, a weight whose input dimension (dim 1) is not a multiple of M is
        refused in one line naming it, before anything trains.
        """
        plan = cls(prune, initial if initial is not None else Mask.ones(model))
        nm = plan.pattern_pool
        if nm is not None:
            for name, m in plan.initial.items():
                try:
                    nm.units(name, m.shape)  # raises ValueError naming the tensor and its shape
                except ValueError as e:
                    raise ValueError(f"prune.pattern {prune.pattern!r}: {e}") from None
        return plan

    @property
    def pattern_pool(self) -> Pool | None:
        """Return the N:M blocks of ``prune.pattern`` (`selection.blocks(M)`), or None (no pattern)."""
        return None if self.prune.pattern is None else blocks(parse_pattern(self.prune.pattern)[1])

    @property
    def target_key(self) -> str:
        """A round's target is a sparsity."""
        return "sparsity_target"

    @property
    def units(self) -> Any:
        """None: weight scorers read the mask's parameters."""
        return None

    def targets(self) -> list[float]:
        """Return the schedule's cumulative sparsity after each round."""
        assert self.prune.sparsity is not None
        return schedule(self.prune.schedule, self.prune.sparsity, self.prune.n_iter)

    def initial_mask(self) -> Mask:
        """Return every weight the plan prunes, alive."""
        return self.initial

    def layout(self, model: nn.Module, mask: Mask) -> ParamLayout:
        """Return one column per alive entry of the parameters `mask` covers, in its order."""
        m = mask.canonical(model)
        params = prunable_parameters(model)
        return ParamLayout.of({n: params[n] for n in m}, {n: m[n] for n in m})

    def select(self, scores: dict[str, torch.Tensor], tie_break: dict[str, torch.Tensor] | None, target: float,
               mask: Mask, pool: Pool | None = None) -> Mask:  # fmt: skip
        """Return `selection.select` of `target` sparsity under ``prune.scope``; pruned weights stay pruned.

        `pool` (a criterion's own, `criteria.Criterion.pool`, e.g. Wanda's per-row pool) replaces the scope's;
        ``prune.pattern``'s blocks (`pattern_pool`, which lie within rows) replace both.
        """
        pool = self.pattern_pool or pool
        if pool is not None:
            return select(scores, target, mask=mask, tie_break=tie_break, pool=pool)
        return select(scores, target, scope=self.prune.scope, mask=mask, tie_break=tie_break)

    def facts(self, mask: Mask) -> dict[str, Any]:
        """Return the fraction of the mask's weights pruned."""
        return {"sparsity": mask.sparsity()}

    def finish(self, model: nn.Module, mask: Mask) -> nn.Module:
        """Zero the pruned weights (the network keeps its shape)."""
        mask.apply_(model)
        return model

    def counts(self, model: nn.Module, mask: Mask) -> tuple[int, int]:
        """Return (prunable weights, nonzero ones) of `model`."""
        params = prunable_parameters(model)
        return sum(p.numel() for p in params.values()), sum(int((p != 0).sum()) for p in params.values())

    def run_facts(self, mask: Mask) -> dict[str, Any]:
        """Nothing beyond the summary's common fields."""
        return {}

    def describe(self) -> list[str]:
        """Return the sparsity after each round."""
        lines = ["sparsity after each round: " + ", ".join(f"{t:.4f}" for t in self.targets())]
        if self.prune.pattern is not None:
            n, m = parse_pattern(self.prune.pattern)
            pruned = ", ".join(str(round(t * m)) for t in self.targets())
            lines.append(f"pattern {n}:{m}: entries pruned per block of {m} inputs after each round: {pruned}")
        return lines

    @staticmethod
    def restore(model: nn.Module, mask: Mask, input_shape: tuple[int, ...] | ModelIO) -> nn.Module:
        """Return a freshly built `model` shaped as a finished run's model.pt holds it: unchanged for weights."""
        return model


class _ChannelKind:
    """How `structured.ChannelPlan` is built and restored (the plan itself carries its kind and facts)."""

    slims = ChannelPlan.slims

    @staticmethod
    def build(model: nn.Module, prune: PruneConfig,
              input_shape: tuple[int, ...] | ModelIO | None = None) -> ChannelPlan:  # fmt: skip
        if input_shape is None:
            raise ValueError("a channel plan traces the model: it needs one sample's input shape")
        return ChannelPlan.build(model, prune, input_shape)

    @staticmethod
    def restore(model: nn.Module, mask: Mask, input_shape: tuple[int, ...] | ModelIO) -> nn.Module:
        return slim_to_mask(model, mask, input_shape)


#: unit kind (``prune.granularity``) → how its plan is built (``build(model, prune, input_shape)``) and how a
#: finished run's network is rebuilt from its mask (``restore(model, mask, input_shape)``)
PLANS: dict[str, Any] = {"weight": WeightPlan, "channel": _ChannelKind}


def build_plan(model: nn.Module, prune: PruneConfig, input_shape: tuple[int, ...] | ModelIO | None = None) -> Plan:
    """Return the plan of ``prune.granularity`` for `model` (channels traced on `input_shape`: shape or ModelIO)."""
    if prune.granularity not in PLANS:
        raise ValueError(f"unknown granularity {prune.granularity!r}; valid: {', '.join(PLANS)}")
    return PLANS[prune.granularity].build(model, prune, input_shape)


def slims(granularity: str) -> bool:
    """Return whether a finished run of `granularity` saved a network without its pruned units (slim)."""
    if granularity not in PLANS:
        raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(PLANS)}")
    return bool(PLANS[granularity].slims)


def restore_model(granularity: str, model: nn.Module, mask: Mask,
                  input_shape: tuple[int, ...] | ModelIO) -> nn.Module:
    """Return a freshly built dense `model` shaped as a finished run of `granularity` saved it (slim for channels)."""
    if granularity not in PLANS:
        raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(PLANS)}")
    return PLANS[granularity].restore(model, mask, input_shape)


@dataclass
class RoundResult:
    """What one round leaves: the new mask, the criterion's output, the round's facts, the updates applied."""

    mask: Mask
    scored: Scored
    facts: dict[str, Any]  # sparsity (of the plan's units), the method's facts, the plan's facts
    updates: dict[str, torch.Tensor] = field(default_factory=dict)  # weight name → values applied (kept entries)


def rewind(model: nn.Module, theta_pre: Mapping[str, torch.Tensor], reset_bn: bool = False) -> None:
    """Load θ_pre into `model`; keep BatchNorm running statistics unless `reset_bn` (then reset them)."""
    state = model.state_dict()
    for k, v in theta_pre.items():
        if not reset_bn and ("running_" in k or "num_batches_tracked" in k):
            continue
        state[k] = v
    model.load_state_dict(state)
    if reset_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()


def score_round(criterion: Criterion, plan: Plan, inp: ScoreInput) -> Scored:
    """Score one round's units with `criterion`'s scorer for the plan's kind."""
    return criterion.scorer(plan.kind)(inp)


def run_round(
    plan: Plan,
    criterion: Criterion,
    model: nn.Module,
    mask: Mask,
    k: int,
    target: float,
    *,
    seed: int,
    settings: Any = None,
    trajectory: Any = None,
    data: Callable[[int], Sequence[tuple[Any, Any]]] | Sequence[tuple[Any, Any]] = (),
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    inputs: Any = None,
    input_shape: tuple[int, ...] | None = None,
    theta_pre: MutableMapping[str, torch.Tensor] | None = None,
    io: ModelIO | None = None,
) -> RoundResult:
    """Run round `k` of Algorithm 1 on `model` trained under `mask`: score, select `target`, apply updates.

    The criterion gets a `ScoreInput` (`ScoreInput.build`: the input facts from the batch
    `inputs` or `input_shape`) seeded from the run's `seed` and the round; `data` is the
    scoring batches, or a function of the scoring seed returning them (called only when the
    method needs batches). The plan selects the new mask. A criterion's weight updates
    (`Scored.updates`) are written into `model` for the entries the new mask keeps and, when
    `theta_pre` is given, into θ_pre too (in place), so that rewinding keeps them. The model
    is left as trained (the caller rewinds: `rewind`). `io` (a `ModelIO`) is how the
    criteria call the model on batches (None: ``model(inputs)``).
    """
    score_seed = stage_seed(seed, f"level_{k}/score")
    batches = (data(score_seed) if criterion.needs_data else []) if callable(data) else list(data)
    # the pool the plan will select within (weight plans: the pattern's blocks, else the criterion's own)
    pool = (getattr(plan, "pattern_pool", None) or criterion.pool) if plan.kind == "weight" else None
    inp = ScoreInput.build(model, mask, inputs=inputs, input_shape=input_shape, settings=settings, seed=score_seed,
                           trajectory=trajectory, data=batches, loss_fn=loss_fn, target_sparsity=target,
                           groups=plan.units, io=io, pool=pool)  # fmt: skip
    scored = score_round(criterion, plan, inp)
    scores, tie = scored.oriented(criterion.higher_is_important)
    own_pool = {"pool": criterion.pool} if criterion.pool is not None else {}  # e.g. Wanda's rows (weight plans)
    new_mask = plan.select(scores, tie, target, inp.mask, **own_pool)
    updates = apply_updates(model, new_mask, scored.updates, theta_pre)
    info = {key: v for key, v in scored.info.items() if isinstance(v, int | float | str | bool)}
    own = plan.facts(new_mask)
    facts = {"sparsity": own.pop("sparsity"), **info, **own}
    return RoundResult(new_mask, scored, facts, updates)


def apply_updates(model: nn.Module, mask: Mask, updates: Mapping[str, torch.Tensor] | None,
                  theta_pre: MutableMapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Write a criterion's weight `updates` into `model` (and `theta_pre`) where `mask` keeps entries; return them.

    Pruned entries are left alone (the mask zeroes them); an update for a parameter that is
    not prunable, or of another shape, is refused naming it.
    """
    if not updates:
        return {}
    params = prunable_parameters(model)
    applied = {}
    for name, value in updates.items():
        if name not in params or params[name].shape != value.shape:
            have = tuple(params[name].shape) if name in params else "not a prunable parameter"
            raise ValueError(f"weight update for {name!r} of shape {tuple(value.shape)} does not fit the model "
                             f"({have})")  # fmt: skip
        p = params[name]
        keep = mask[name].to(p.device) if name in mask else torch.ones_like(p, dtype=torch.bool)
        new = torch.where(keep, value.to(p.device, p.dtype), p.detach())
        with torch.no_grad():
            p.copy_(new)
        if theta_pre is not None and name in theta_pre:
            old = theta_pre[name]
            theta_pre[name] = torch.where(keep.to(old.device), value.to(old.device, old.dtype), old)
        applied[name] = new.detach().clone()
    return applied


__all__ = ["PLANS", "Plan", "RoundResult", "WeightPlan", "apply_updates", "build_plan", "restore_model", "rewind",
           "run_round", "score_round", "slims"]  # fmt: skip
