"""The round as one value: plans (a toy unit kind), weight updates, the recorder factory, the rewind rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from causalprune import criteria, experiment
from causalprune.config import ConfigError, config_from_dict
from causalprune.criteria import Criterion, Scored
from causalprune.criteria.causal import CausalSettings
from causalprune.experiment import run_experiment
from causalprune.layout import ParamLayout
from causalprune.masks import Mask, prunable_parameters
from causalprune.plan import Plan, WeightPlan, apply_updates
from causalprune.pruner import CausalPruner
from causalprune.recording import Recording
from causalprune.selection import select
from causalprune.structured import ChannelPlan

from .conftest import TINY, stop_in_round


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def batches(n: int = 6, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 8, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def train_rounds(pruner: CausalPruner, epochs: int, data=None) -> None:
    for _ in range(epochs):
        for x, y in data or batches():
            pruner.step(x, y)
        pruner.end_epoch()


# --- a new unit kind: the hidden neurons of an MLP, as a plan (nothing else changes) -------------------
@dataclass
class NeuronPlan:
    """The 16 hidden neurons of `mlp()`: a neuron is row i of 0.weight and column i of 2.weight."""

    kind: ClassVar[str] = "neuron"
    slims: ClassVar[bool] = False
    targets_: tuple[float, ...] = (0.25, 0.5)

    @property
    def target_key(self) -> str:
        return "sparsity_target"

    @property
    def units(self) -> Any:
        return None

    def targets(self) -> list[float]:
        return list(self.targets_)

    def full(self, keep: torch.Tensor) -> Mask:
        return Mask({"0.weight": keep[:, None].expand(16, 8).clone(), "2.weight": keep[None, :].expand(3, 16).clone()})

    def initial_mask(self) -> Mask:
        return self.full(torch.ones(16, dtype=torch.bool))

    def layout(self, model: nn.Module, mask: Mask) -> ParamLayout:
        params = prunable_parameters(model)
        return ParamLayout.of({n: params[n] for n in mask}, dict(mask))

    def select(self, scores, tie_break, target, mask):
        chosen = select(scores, target, mask=Mask({"neurons": mask["0.weight"][:, 0]}), tie_break=tie_break)
        return self.full(chosen["neurons"])

    def facts(self, mask: Mask) -> dict[str, Any]:
        return {"sparsity": float((~mask["0.weight"][:, 0]).float().mean())}

    def finish(self, model, mask):
        mask.apply_(model)
        return model

    def counts(self, model, mask):
        return mask["0.weight"].numel(), int(mask["0.weight"].sum())

    def run_facts(self, mask):
        return {}

    def describe(self):
        return []


def test_a_toy_unit_kind_is_a_plan_and_a_scorer(monkeypatch):
    seen: list[torch.Tensor] = []

    def neuron_norms(inp):  # one score per hidden neuron: its input weights' L2 norm
        norms = inp.model[0].weight.detach().norm(dim=1)
        seen.append(norms.clone())
        return Scored({"neurons": norms})

    monkeypatch.setitem(criteria.METHODS, "magnitude", criteria.get("magnitude").with_scorer("neuron", neuron_norms))
    plan = NeuronPlan()
    assert isinstance(plan, Plan)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), method="magnitude", plan=plan, n_iter=2)
    train_rounds(pruner, 1)
    pruned_1 = set(torch.argsort(seen[0])[:4].tolist())  # oracle: the 4 weakest neurons of round 1
    keep = pruner.mask["0.weight"][:, 0]
    assert set(torch.nonzero(~keep).squeeze(1).tolist()) == pruned_1
    train_rounds(pruner, 1)
    keep = pruner.mask["0.weight"][:, 0]
    alive_2 = [i for i in range(16) if i not in pruned_1]
    weakest = sorted(alive_2, key=lambda i: float(seen[1][i]))[:4]
    assert set(torch.nonzero(~keep).squeeze(1).tolist()) == pruned_1 | set(weakest)
    assert pruner.done and [h["sparsity"] for h in pruner.history] == [0.25, 0.5]
    assert torch.equal(pruner.mask["2.weight"], keep[None, :].expand(3, 16))  # a neuron's in and out weights
    assert (model[0].weight[~keep] == 0).all() and (model[2].weight[:, ~keep] == 0).all()


def test_a_method_without_a_scorer_for_the_plans_units_is_refused_when_built():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="'bn_scale' does not score single weights; methods that do: .*magnitude"):
        CausalPruner(model, opt, nn.CrossEntropyLoss(), method="bn_scale")
    with pytest.raises(ValueError, match="'magnitude' does not score neuron units"):
        CausalPruner(model, opt, nn.CrossEntropyLoss(), method="magnitude", plan=NeuronPlan())


def test_recording_settings_the_pruner_cannot_follow_are_refused_when_built():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="delta_loss 'probe' needs probe_data"):
        CausalPruner(model, opt, nn.CrossEntropyLoss(), settings={"delta_loss": "probe"})
    with pytest.raises(ValueError, match="recorder 'sgd'.*leave recorder at 'train'"):
        CausalPruner(model, opt, nn.CrossEntropyLoss(), settings={"recorder": "sgd"})


# --- weight updates -------------------------------------------------------------------------------------
def updating(value: float, rounds: set[int]):
    """A magnitude criterion whose scorer also sets every kept entry of 0.weight to `value` in `rounds`."""
    calls = {"n": 0}
    magnitude = criteria.get("magnitude").fn

    def fn(inp):
        calls["n"] += 1
        scored = magnitude(inp)
        if calls["n"] in rounds:
            name = next(iter(prunable_parameters(inp.model)))
            scored.updates = {name: torch.full_like(prunable_parameters(inp.model)[name], value)}
        return scored

    return Criterion("magnitude", "magnitude with updates", {"weight": fn}, reference=True)


def test_updates_apply_to_kept_weights_and_survive_the_rewind(monkeypatch):
    monkeypatch.setitem(criteria.METHODS, "magnitude", updating(0.5, {1}))
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    theta_pre = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), method="magnitude", sparsity=0.5, n_iter=2)
    train_rounds(pruner, 1)
    keep = pruner.mask["0.weight"]
    assert torch.equal(model[0].weight.detach(), torch.where(keep, 0.5, 0.0))  # updated where kept, zero where pruned
    assert torch.equal(pruner.theta_pre["0.weight"][keep], torch.full((int(keep.sum()),), 0.5))
    assert torch.equal(model[2].weight.detach(), theta_pre["2.weight"] * pruner.mask["2.weight"])  # rewound
    train_rounds(pruner, 1)  # round 2 trains the weights, returns no update, and rewinds
    keep = pruner.mask["0.weight"]
    assert torch.equal(model[0].weight.detach(), torch.where(keep, 0.5, 0.0))


def test_an_update_that_does_not_fit_the_model_is_refused():
    model = mlp()
    with pytest.raises(ValueError, match=r"weight update for '0.weight' of shape \(3,\) does not fit the model"):
        apply_updates(model, Mask.ones(model), {"0.weight": torch.zeros(3)})


def test_the_driver_keeps_updates_in_theta_pre_across_a_resume(monkeypatch, tmp_path):
    cfg = config_from_dict(TINY, ["prune.method=magnitude", "prune.n_iter=2", "train.threads=1"])
    rewound: list[torch.Tensor] = []
    original = experiment.rewind

    def spy(model, theta_pre, reset_bn=False):
        rewound.append(next(iter(theta_pre.values())).clone())  # the first prunable weight's θ_pre
        original(model, theta_pre, reset_bn)

    monkeypatch.setattr(experiment, "rewind", spy)
    monkeypatch.setitem(criteria.METHODS, "magnitude", updating(0.25, {1}))
    stop_in_round(monkeypatch, "magnitude", "fn")  # stopped in round 2, after round 1's files
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "r", quiet=True)
    monkeypatch.setitem(criteria.METHODS, "magnitude", updating(0.25, set()))  # the resumed run updates nothing
    run_experiment(cfg, tmp_path / "r", quiet=True)
    mask = Mask.load(tmp_path / "r" / "level_1" / "mask.pt")
    kept = mask[next(iter(mask))]
    first, resumed_level_2 = rewound[1], rewound[2]  # [0]: round 1's rewind; [1]: round 2's; [2]: round 2 resumed
    for theta in (first, resumed_level_2):
        assert torch.equal(theta[kept], torch.full((int(kept.sum()),), 0.25))


# --- recording: one factory, one momentum rule ----------------------------------------------------------
def test_momentum_features_need_sgd_with_momentum_in_both_drivers():
    w = [nn.Parameter(torch.zeros(2))]
    on = Recording.of(CausalSettings(momentum_model=True))
    assert on.momentum_for(torch.optim.SGD(w, lr=0.1, momentum=0.9))
    assert not on.momentum_for(torch.optim.SGD(w, lr=0.1))
    assert not on.momentum_for(torch.optim.RMSprop(w, lr=0.1, momentum=0.9))  # not the heavy-ball model
    assert not Recording.of(None).momentum_for(torch.optim.SGD(w, lr=0.1, momentum=0.9))  # off by default
    cfg = config_from_dict(TINY, ["causal.momentum_model=true", "causal.probe_size=32"])
    assert Recording.from_config(cfg).momentum_model and Recording.from_config(cfg).probe_size == 32


def test_rounds_after_the_first_are_recorded_into_a_preallocated_trajectory():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.5, n_iter=3)
    train_rounds(pruner, 1)
    pruner.step(*batches()[0])
    assert pruner._recorder._store.chunk_rows == 6  # round 1 recorded 6 steps: round 2 is allocated for as many
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), steps_per_epoch=6, epochs_per_round=2)
    pruner.step(*batches()[0])
    assert pruner._recorder._store.chunk_rows == 12  # the first round too


# --- the rewind rule: optimizer state and the LR schedule -------------------------------------------------
def test_a_rewind_restarts_the_given_lr_schedule():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), method="magnitude", n_iter=2, epochs_per_round=2,
                          lr_scheduler=sched)  # fmt: skip
    for epoch in range(2):
        for x, y in batches():
            pruner.step(x, y)
        sched.step()
        assert opt.param_groups[0]["lr"] == 0.1 * 0.5 ** (epoch + 1)
        pruner.end_epoch()
    assert opt.param_groups[0]["lr"] == 0.1 and sched.last_epoch == 0 and not opt.state  # back to θ_pre's
    assert pruner.state_dict()["lr_start"]["lr"] == [0.1]


def test_channel_tracing_keeps_torch_prunings_error_as_the_cause():
    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            raise RuntimeError("boom in forward")

    with pytest.raises(ConfigError, match="cannot trace model Fails") as info:
        ChannelPlan.build(Fails(), config_from_dict({**TINY, "prune": {**TINY["prune"], "granularity": "channel",
                                                                       "sparsity": 0.5}}).prune, (4,))  # fmt: skip
    assert isinstance(info.value.__cause__, RuntimeError) and "boom in forward" in str(info.value.__cause__)


def test_weight_plan_records_the_masks_parameters_in_its_order():
    model = mlp()
    mask = Mask.ones(model)
    plan = WeightPlan.build(model, config_from_dict(TINY).prune)
    layout = plan.layout(model, mask)
    assert layout.names == list(prunable_parameters(model)) and layout.d == 16 * 8 + 3 * 16
    assert plan.targets() == pytest.approx([0.8 * (1 - (1 - i / 2) ** 3) for i in (1, 2)])  # cubic schedule
