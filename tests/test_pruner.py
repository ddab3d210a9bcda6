"""CausalPruner: Algorithm 1 around a plain loop, checked against hand-computed masks and the manual recipe."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from causalprune import CausalPruner, Mask, TrajectoryRecorder, criteria, select
from causalprune.criteria import ScoreInput
from causalprune.criteria.causal import CausalSettings


def _data():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    return list(zip(x[:640].split(64), torch.tensor(y[:640]).split(64), strict=True))


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _train(pruner, batches, split=False):
    while not pruner.done:
        for x, y in batches:
            if split:  # the user's own step around before_step / after_step
                pruner.before_step(x, y)
                pruner.optimizer.zero_grad()
                loss = nn.functional.cross_entropy(pruner.model(x), y)
                loss.backward()
                pruner.optimizer.step()
                pruner.after_step(loss)
            else:
                pruner.step(x, y)
        pruner.end_epoch()


def test_rounds_reach_the_schedule_and_keep_pruned_weights_zero():
    model, opt = _setup()
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.8, n_iter=3, schedule="linear")
    batches = _data()
    _train(pruner, batches)
    assert [round(h["target"], 6) for h in pruner.history] == [round(0.8 * k / 3, 6) for k in (1, 2, 3)]
    assert [h["round"] for h in pruner.history] == [1, 2, 3] and all(h["solver"] for h in pruner.history)
    assert abs(pruner.mask.sparsity() - 0.8) < 1e-3
    for x, y in batches:  # post-training in the user's loop: the mask stays enforced
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name, m in pruner.mask.items():
        assert (dict(model.named_parameters())[name][~m] == 0).all()
    pruner.make_permanent()
    assert abs(Mask.from_model(model).sparsity() - 0.8) < 1e-3


def test_a_magnitude_round_prunes_the_smallest_weights_after_the_round():
    model, opt = _setup()
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.5, n_iter=1, method="magnitude")
    for x, y in _data():
        pruner.step(x, y)
    weights = torch.cat([model[0].weight.detach().flatten(), model[2].weight.detach().flatten()]).abs()
    theta_pre = pruner.theta_pre
    mask = pruner.end_epoch()
    flat = torch.cat([mask["0.weight"].flatten(), mask["2.weight"].flatten()])
    expected = torch.ones_like(flat)
    expected[torch.argsort(weights, stable=True)[: round(0.5 * len(weights))]] = False
    assert torch.equal(flat, expected)  # hand-computed: the half with the smallest |w|
    # rewound: the surviving weights are θ_pre's, the pruned ones zero
    assert torch.equal(model[0].weight.detach(), theta_pre["0.weight"] * mask["0.weight"])


@pytest.mark.parametrize("split", [False, True])
def test_a_causal_round_equals_the_manual_recipe(split):
    batches = _data()
    model, opt = _setup()
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.6, n_iter=1)
    _train(pruner, batches, split=split)
    # The manual recipe (README): record the round, score with the causal method, select.
    model2, opt2 = _setup()
    rec = TrajectoryRecorder(model2, nn.CrossEntropyLoss(), opt2)
    for x, y in batches:
        rec.step(x, y)
    from causalprune.pruner import stage_seed

    scored = criteria.get("causal").fn(ScoreInput(model2, Mask.ones(model2), settings=CausalSettings(),
                                                  seed=stage_seed(0, "level_1/score"), trajectory=rec.trajectory()))
    expected = select(scored.scores, 0.6, tie_break=scored.tie_break)
    assert pruner.mask == expected


@pytest.mark.parametrize("method", criteria.names("weight"))
def test_every_registered_method_prunes_through_the_pruner(method):
    model, opt = _setup()
    settings = {"solver": "minnorm"} if criteria.get(method).section == "causal" else None
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.7, n_iter=2, method=method,
                          settings=settings, score_batches=2)  # fmt: skip
    _train(pruner, _data()[:4])
    tol = 1e-3 if criteria.get(method).pool is None else 1e-2  # a per-row pool (wanda) rounds every row
    assert abs(pruner.mask.sparsity() - 0.7) < tol and len(pruner.history) == 2


def test_state_dict_at_a_round_boundary_resumes_to_the_same_masks():
    batches = _data()
    model, opt = _setup()
    whole = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.8, n_iter=3)
    _train(whole, batches)
    model, opt = _setup()
    first = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.8, n_iter=3)
    for _ in range(2):
        for x, y in batches:
            first.step(x, y)
        first.end_epoch()
    state, weights = first.state_dict(), {k: v.clone() for k, v in model.state_dict().items()}
    first.make_permanent()
    model2, opt2 = _setup(seed=1)  # another process: other initial weights, restored from the checkpoint
    model2.load_state_dict(weights)
    resumed = CausalPruner(model2, opt2, nn.CrossEntropyLoss(), sparsity=0.8, n_iter=3)
    resumed.load_state_dict(state)
    assert resumed.round == 3 and len(resumed.history) == 2
    _train(resumed, batches)
    assert resumed.mask == whole.mask


def test_channel_rounds_meet_a_macs_target_and_slim_the_network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = _data()
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), granularity="channel", speedup=2.0, n_iter=2,
                          method="taylor", example_inputs=batches[0][0], score_batches=2)  # fmt: skip
    _train(pruner, batches)
    assert abs(pruner.plan.dense_macs / pruner.history[-1]["macs"] - 2.0) / 2.0 < 0.03  # within 3 % of 2×
    masked = model(batches[0][0]).detach()
    slim = pruner.slim()
    assert slim[0].out_features < 48 and slim[2].out_features < 48
    torch.testing.assert_close(slim(batches[0][0]), masked)  # removing the zeroed channels changes nothing


def test_bad_input_is_named():
    model, opt = _setup()
    other = torch.optim.SGD(nn.Linear(3, 3).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer does not hold the model's parameter"):
        CausalPruner(model, other, nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="unknown causal setting"):
        CausalPruner(model, opt, nn.CrossEntropyLoss(), settings={"sovler": "cd"})
    with pytest.raises(ValueError, match="prunes nothing"):
        CausalPruner(model, opt, nn.CrossEntropyLoss(), method="dense")
    with pytest.raises(ValueError, match="unknown method|valid"):
        CausalPruner(model, opt, nn.CrossEntropyLoss(), method="nope")
    with pytest.raises(ValueError, match="nothing to prune|no prunable"):
        CausalPruner(nn.ReLU(), torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1), nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="sparsity must be in"):
        CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=1.5)


def test_causal_channel_rounds_record_one_column_per_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = _data()
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), granularity="channel", sparsity=0.5, n_iter=2,
                          example_inputs=batches[0][0])  # fmt: skip
    _train(pruner, batches)
    assert [h["d"] for h in pruner.history] == [48, 48]  # one column per group (a removed group's stays zero)
    assert [h["channels_pruned"] for h in pruner.history] == [round(48 * 0.5 * (1 - 0.5**3)), 24]  # cubic
    assert [h["T"] for h in pruner.history] == [len(batches)] * 2
    assert pruner.history[-1]["channels_pruned"] == 24 and pruner.slim()[0].out_features == 24


def test_probe_delta_loss_uses_the_probe_batches():
    model, opt = _setup()
    x, y = load_digits(return_X_y=True)
    probe = (torch.tensor(x[1500:1600] / 16.0, dtype=torch.float32), torch.tensor(y[1500:1600]))
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.5, n_iter=1,
                          settings={"delta_loss": "probe"}, probe_data=probe)  # fmt: skip
    _train(pruner, _data())
    assert pruner.history[0]["T"] == 10 and abs(pruner.mask.sparsity() - 0.5) < 1e-3
    model, opt = _setup()
    with pytest.raises(ValueError, match="probe_data"):
        _train(CausalPruner(model, opt, nn.CrossEntropyLoss(), n_iter=1, settings={"delta_loss": "probe"}), _data())


def test_a_channel_state_loaded_before_the_first_batch_keeps_its_mask():
    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    batches = _data()
    model, opt = build()
    first = CausalPruner(model, opt, nn.CrossEntropyLoss(), granularity="channel", sparsity=0.5, n_iter=2,
                         method="magnitude")  # fmt: skip
    for x, y in batches:
        first.step(x, y)
    first.end_epoch()
    state = first.state_dict()
    model2, opt2 = build()
    model2.load_state_dict(model.state_dict())
    resumed = CausalPruner(model2, opt2, nn.CrossEntropyLoss(), granularity="channel", sparsity=0.5, n_iter=2,
                           method="magnitude")  # no example_inputs: the plan is traced at the first step
    resumed.load_state_dict(state)
    resumed.step(*batches[0])  # traces the groups; the loaded mask and targets stay
    assert resumed.mask == first.mask and resumed.targets == first.targets


def test_channel_rounds_without_any_batch_and_multi_process_use_are_named(monkeypatch):
    model, opt = _setup()
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), granularity="channel", sparsity=0.5, n_iter=1,
                          method="magnitude")  # fmt: skip
    with pytest.raises(ValueError, match="before any batch was seen"):
        pruner.end_epoch()
    from causalprune import pruner as module
    from causalprune.platform import Platform

    monkeypatch.setattr(module, "current_platform", lambda: Platform(0, 2))
    with pytest.raises(ValueError, match="runs in one process"):
        CausalPruner(*_setup(), nn.CrossEntropyLoss())


def test_params_restrict_what_is_pruned_and_what_the_optimizer_must_hold():
    model, _ = _setup()
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1)  # trains the first layer only
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.5, n_iter=1, params=["0.weight"])
    _train(pruner, _data()[:4])
    assert list(pruner.mask) == ["0.weight"] and abs(pruner.mask.sparsity() - 0.5) < 1e-3
    assert (model[2].weight != 0).all()  # not selected: never pruned
    with pytest.raises(ValueError, match="not prunable parameter names"):
        CausalPruner(model, opt, nn.CrossEntropyLoss(), params=["0.bias"])


def test_after_the_last_round_the_same_calls_post_train_under_the_mask():
    """One loop for rounds and post-training: step / before_step / after_step / end_epoch after `done` take plain
    steps under the mask, record nothing and prune nothing; a plain SGD step (the oracle) gives the same weights."""
    batches = _data()[:4]
    model, opt = _setup()
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.5, n_iter=1, method="magnitude")
    for _ in range(3):  # 1 round, then 2 epochs of post-training in the same loop
        for x, y in batches:
            pruner.step(x, y)
        pruner.end_epoch()
    assert pruner.done and len(pruner.history) == 1
    oracle = {k: v.clone() for k, v in model.state_dict().items()}
    twin, twin_opt = _setup()
    twin.load_state_dict(oracle)
    x, y = batches[0]
    pruner.before_step(x, y)
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    pruner.after_step(loss)
    pruner.step(x, y)
    for _ in range(2):  # the oracle: two plain SGD steps, then the mask
        twin_opt.zero_grad()
        nn.functional.cross_entropy(twin(x), y).backward()
        twin_opt.step()
        pruner.mask.apply_(twin)
    torch.testing.assert_close(model.state_dict(), twin.state_dict())
    assert all((dict(model.named_parameters())[n][~m] == 0).all() for n, m in pruner.mask.items())
    assert pruner.end_epoch() is None and len(pruner.history) == 1 and pruner._recorder is None


def _state_mid_round(save_recording, steps=4):
    """A causal pruner (2 rounds) stopped after `steps` recorded steps of round 1: (state, weights, optimizer)."""
    model, opt = _setup()
    extra = {"save_recording": True} if save_recording else {}
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.6, n_iter=2, **extra)
    for x, y in _data()[:steps]:
        pruner.step(x, y)
    return pruner.state_dict(), {k: v.clone() for k, v in model.state_dict().items()}, opt.state_dict()


def _resume(state, weights, opt_state, steps=4):
    model, opt = _setup(seed=1)
    model.load_state_dict(weights)
    opt.load_state_dict(opt_state)
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.6, n_iter=2)
    pruner.load_state_dict(state, source="ckpt-4")
    batches = _data()
    for x, y in batches[steps:]:
        pruner.step(x, y)
    pruner.end_epoch()
    _train(pruner, batches)
    return pruner


def test_a_mid_round_state_with_its_recording_resumes_to_the_same_masks():
    model, opt = _setup()
    whole = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.6, n_iter=2)
    _train(whole, _data())
    state, weights, opt_state = _state_mid_round(save_recording=True)
    assert state["steps_in_round"] == 4
    assert state["recording"]["X"].shape == (64 * 32 + 32 * 10, 4)  # (d, T) float32: T × d × 4 bytes
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing lost: no warning
        resumed = _resume(state, weights, opt_state)
    assert [h["T"] for h in resumed.history] == [10, 10]
    assert resumed.mask == whole.mask


def test_a_mid_round_state_without_its_recording_warns_naming_the_lost_steps():
    """The round's steps are counted in the state: a resume that lost them says so (before, a mid-epoch state had
    epoch_in_round 0 and resumed silently with other masks)."""
    state, weights, opt_state = _state_mid_round(save_recording=False)
    assert state.get("steps_in_round") == 4 and state["epoch_in_round"] == 0 and state["recording"] is None
    with pytest.warns(UserWarning, match=r"ckpt-4: resumed in round 1 after 4 recorded step\(s\), of which it holds 0"):
        resumed = _resume(state, weights, opt_state)
    assert [h["T"] for h in resumed.history] == [6, 10]  # round 1 scored from the 6 steps that remained


def test_a_round_that_ends_with_every_recorded_step_lost_is_refused_in_one_line():
    state, weights, _ = _state_mid_round(save_recording=False, steps=10)
    model, opt = _setup()
    model.load_state_dict(weights)
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.6, n_iter=2)
    with pytest.warns(UserWarning, match="of which it holds 0"):
        pruner.load_state_dict(state)
    with pytest.raises(ValueError, match=r"round 1 ended with no recorded step \(10 recorded step\(s\) were lost"):
        pruner.end_epoch()
    with pytest.raises(ValueError, match="the pruner state is not a complete CausalPruner state: no mask"):
        pruner.load_state_dict({k: v for k, v in state.items() if k != "mask"})


@pytest.mark.parametrize("method", ["magnitude", "causal"])
def test_pattern_keeps_n_of_every_m_inputs_after_every_round_and_step(method):
    model, opt = _setup()
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), method=method, pattern="2:4", n_iter=2,
                          schedule="linear")  # fmt: skip
    assert pruner.prune.sparsity == 0.5  # the pattern is the budget: (M - N) / M
    params = dict(model.named_parameters())
    kept_per_round = []
    while not pruner.done:
        for x, y in _data():
            pruner.step(x, y)
            for name, m in pruner.mask.items():  # after every optimizer step: pruned entries stay zero
                assert (params[name][~m] == 0).all()
        if pruner.end_epoch() is not None:
            counts = {name: m.reshape(m.shape[0], -1, 4).sum(-1) for name, m in pruner.mask.items()}
            kept_per_round.append({int(c) for v in counts.values() for c in v.unique()})
            for name, m in pruner.mask.items():  # the weights themselves hold the pattern, not only the mask
                nonzero = (params[name] != 0).reshape(m.shape[0], -1, 4).sum(-1)
                assert int(nonzero.max()) <= (2 if pruner.done else 3)
    assert kept_per_round == [{3}, {2}]  # round k prunes round(s_k * M) of every block: s = 0.25, 0.5


def test_pattern_is_checked_when_the_pruner_is_built():
    model, opt = _setup()
    with pytest.raises(ValueError, match=r"prune.pattern must be \"N:M\" with integers 0 < N < M.*got '4:2'"):
        CausalPruner(model, opt, nn.CrossEntropyLoss(), pattern="4:2")
    with pytest.raises(ValueError, match="needs prune.granularity: weight, got channel"):
        CausalPruner(model, opt, nn.CrossEntropyLoss(), method="magnitude", pattern="2:4", granularity="channel")
    with pytest.raises(ValueError, match=r"conflicts with prune.pattern '2:4'"):
        CausalPruner(model, opt, nn.CrossEntropyLoss(), pattern="2:4", sparsity=0.7)
    with pytest.raises(ValueError, match=r"needs dim 1 of '0.weight' \(shape \(3, 6\)\) to be a multiple of 4, got 6"):
        CausalPruner(nn.Sequential(nn.Linear(6, 3)), opt, nn.CrossEntropyLoss(), pattern="2:4")


def test_the_callbacks_forward_pattern_and_refuse_a_bad_one_when_built():
    from causalprune.pruner import check_options

    check_options({"pattern": "2:4"}, "CausalPruning")  # a CausalPruner option the integrations pass through
    with pytest.raises(ValueError, match=r"got '2-4'"):
        check_options({"pattern": "2-4"}, "CausalPruning")


def test_the_lightning_and_hf_callbacks_take_pattern_and_refuse_a_bad_one():
    lightning = pytest.importorskip("causalprune.integrations.lightning")
    cb = lightning.CausalPruning(method="magnitude", pattern="2:4", loss_fn=nn.CrossEntropyLoss())
    assert cb.options["pattern"] == "2:4"  # forwarded to CausalPruner when the fit starts
    with pytest.raises(ValueError, match=r"got '3:3'"):
        lightning.CausalPruning(method="magnitude", pattern="3:3", loss_fn=nn.CrossEntropyLoss())
    transformers = pytest.importorskip("causalprune.integrations.transformers")
    with pytest.raises(ValueError, match=r"got '3:3'"):
        transformers.CausalPruningCallback(method="magnitude", pattern="3:3")
