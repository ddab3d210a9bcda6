"""Channel-level Algorithm 1 (prune.granularity: channel) end to end: budgets, selection, slimming, bad input."""

import json

import pytest
import torch
from torch import nn

from causalprune import Mask, criteria
from causalprune.cli import main
from causalprune.config import ConfigError, config_from_dict
from causalprune.experiment import run_experiment
from causalprune.export import export_run, load_finished_model
from causalprune.groups import channel_groups
from causalprune.metrics import macs_and_params
from causalprune.models import build_model
from causalprune.structured import ChannelPlan, slim_to_mask

from .conftest import TINY, stop_in_round

CHANNEL = {
    **TINY,
    "name": "tiny-channel",
    "model": {"name": "cnn2d", "widths": [16, 32, 32], "batchnorm": True},
    "prune": {**TINY["prune"], "granularity": "channel", "sparsity": None, "speedup": 2.0},
}


def channel_config(*overrides: str):
    return config_from_dict(CHANNEL, list(overrides))


def finished(path):
    return json.loads((path / "summary.json").read_text())


@pytest.mark.parametrize("method", criteria.names("channel"))
def test_every_channel_method_reaches_the_speedup_and_slims(method, tmp_path):
    s = run_experiment(channel_config(f"prune.method={method}"), tmp_path / "r", quiet=True)
    eff = s["efficiency"]
    assert s["granularity"] == "channel" and s["speedup_target"] == 2.0 and s["sparsity_target"] is None
    assert abs(eff["speedup_macs"] / 2.0 - 1) <= 0.03  # the MACs target, within 3 %
    assert eff["macs"]["pruned"] < eff["macs"]["dense"] and eff["params"]["pruned"] < eff["params"]["dense"]
    for which in ("dense", "pruned"):
        lat = eff["latency_ms"][which]
        assert lat["batch_1"] > 0 and lat["batch_64"] > 0 and lat["repeats"] >= 30 and lat["threads"] >= 1
    assert eff["speedup_measured"] == pytest.approx(eff["latency_ms"]["dense"]["batch_64"]
                                                    / eff["latency_ms"]["pruned"]["batch_64"])  # fmt: skip
    assert "test_accuracy_before_post" in s["pruned"]
    # model.pt is the slim network: it loads into the dense model slimmed to mask.pt's groups.
    state = torch.load(tmp_path / "r" / "model.pt", weights_only=True)
    model, shape, _, _ = load_finished_model(tmp_path / "r")
    assert sum(p.numel() for p in model.parameters()) == eff["params"]["pruned"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert macs_and_params(model, shape)[0] == eff["macs"]["pruned"]
    for layer, kept in s["channels"]["kept_per_layer"].items():  # the slim network has those widths
        assert model.get_submodule(layer).out_channels == kept
    assert s["channels"]["pruned"] == 80 - sum(s["channels"]["kept_per_layer"].values())


def test_sparsity_budget_prunes_that_fraction_of_groups(tmp_path):
    cfg = channel_config("prune.speedup=null", "prune.sparsity=0.5", "prune.method=magnitude")
    s = run_experiment(cfg, tmp_path / "r", quiet=True)
    assert s["channels"]["groups"] == 80 and s["channels"]["pruned"] == 40
    assert s["sparsity_target"] == 0.5 and s["speedup_target"] is None


def test_layer_ceiling_and_round_to(tmp_path):
    cfg = channel_config("prune.speedup=null", "prune.sparsity=0.5", "prune.method=random",
                         "prune.max_layer_ratio=0.6", "prune.round_to=4")  # fmt: skip
    s = run_experiment(cfg, tmp_path / "r", quiet=True)
    sizes = {"features.0": 16, "features.3": 32, "features.6": 32}
    for layer, kept in s["channels"]["kept_per_layer"].items():
        assert kept % 4 == 0  # round_to
        assert kept >= sizes[layer] * (1 - 0.6) - 1e-9  # at most 60 % of a layer pruned


def test_masked_rounds_hold_channels_at_zero_and_slim_equals_masked(tmp_path):
    cfg = channel_config("prune.method=magnitude", "prune.n_post=0")
    run_experiment(cfg, tmp_path / "r", quiet=True)
    mask = Mask.load(tmp_path / "r" / "level_2" / "mask.pt")
    state = torch.load(tmp_path / "r" / "level_2" / "checkpoint.pt", weights_only=True)
    # every slice of a removed group is zero in the round's checkpoint: weights, biases, BatchNorm
    assert any(not bool(m.all()) for n, m in mask.items() if "features.1" in n)  # a BatchNorm entry is masked
    for n, m in mask.items():
        assert torch.all(state[n][~m] == 0), n
    dense = build_model(cfg.model, (64,), 10)
    dense.load_state_dict(state)
    slim = build_model(cfg.model, (64,), 10)
    slim.load_state_dict(state)
    slim_to_mask(slim, mask, (64,))
    x = torch.randn(32, 64)
    dense.eval(), slim.eval()
    with torch.no_grad():
        assert (dense(x) - slim(x)).abs().max() < 1e-5
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in dense.parameters())


def test_channel_causal_scores_are_the_grouped_lasso_coefficients(tmp_path):
    from causalprune import lasso
    from causalprune.trajectory import TrajectoryRecorder

    model = build_model(config_from_dict(CHANNEL).model, (64,), 10)
    groups = channel_groups(model, torch.zeros(1, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    rec = TrajectoryRecorder(model, loss_fn, opt, layout=groups.layout())
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        rec.step(torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g))
    traj = rec.trajectory()
    assert traj.X.shape == (60, groups.G)
    settings = criteria.get("causal").settings(score="gamma", tie_break="none")
    mask = groups.full_mask(torch.ones(groups.G, dtype=torch.bool))
    inp = criteria.ScoreInput(model, mask, settings=settings, trajectory=traj, groups=groups)
    scored = criteria.get("causal").channel_fn(inp)
    fit = lasso.solve([traj.X], traj.y, alpha_ratio=settings.alpha_ratio, solver=settings.solver)
    want = groups.per_layer(fit.coef.abs().double())
    for layer, v in scored.scores.items():
        torch.testing.assert_close(v, want[layer], rtol=1e-5, atol=1e-12)
    rec.close()


def test_channel_run_resumes_to_the_same_groups_and_network(tmp_path, monkeypatch):
    cfg = channel_config("prune.n_iter=3")
    full = run_experiment(cfg, tmp_path / "full", quiet=True)
    stop_in_round(monkeypatch, "causal", "channel_fn")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "resumed", quiet=True)
    assert (tmp_path / "resumed" / "level_1" / "mask.pt").exists()
    assert not (tmp_path / "resumed" / "level_2" / "mask.pt").exists()
    monkeypatch.undo()
    resumed = run_experiment(cfg, tmp_path / "resumed", quiet=True)
    for k in (1, 2, 3):
        assert Mask.load(tmp_path / "full" / f"level_{k}" / "mask.pt") == Mask.load(
            tmp_path / "resumed" / f"level_{k}" / "mask.pt")  # fmt: skip
    assert resumed["channels"] == full["channels"] and resumed["pruned"] == full["pruned"]
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_export_of_a_channel_run_loads_without_the_package_classes(tmp_path):
    run_experiment(channel_config("prune.method=magnitude"), tmp_path / "r", quiet=True)
    out = export_run(tmp_path / "r", "pt2")
    program = torch.export.load(out["file"]).module()
    model, shape, _, _ = load_finished_model(tmp_path / "r")
    x = torch.randn(5, *shape)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x))


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["prune.speedup=1.0"], "prune.speedup must be > 1"),
        (["prune.speedup=0.5"], "prune.speedup must be > 1"),
        (["prune.sparsity=0.5", "prune.speedup=3"], "prune.sparsity (0.5) and prune.speedup (3) are both set by --set"),
        (["prune.granularity=weight"], "prune.speedup needs prune.granularity: channel"),
        (["prune.method=snip"], "prune.method snip does not score at prune.granularity channel"),
        (["prune.speedup=100000"], "prune.speedup 100000.0 cannot be reached"),
        (["prune.speedup=3", "prune.max_layer_ratio=0.3"], "prune.speedup 3.0 cannot be reached"),
        (["prune.speedup=null", "prune.sparsity=0.8", "prune.max_layer_ratio=0.5"],
         "prune.sparsity 0.8 cannot be reached"),
        (["prune.granularity=blocks"], "prune.granularity must be one of weight, channel"),
    ],
)
def test_bad_budgets_exit_2_with_one_line_and_write_nothing(sets, message, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(CHANNEL))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_speedup_alone_in_a_file_works_and_the_resolved_config_reloads(tmp_path):
    cfg = config_from_dict({"prune": {"granularity": "channel", "speedup": 2}})
    assert cfg.prune.sparsity is None and cfg.prune.speedup == 2.0
    from causalprune.config import dump_config, load_config

    (tmp_path / "c.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "c.yaml") == cfg


def test_a_model_torch_pruning_cannot_trace_is_refused_naming_the_key():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x, y):  # one example input is not enough to trace it
            return self.b(self.a(x) + y)

    with pytest.raises(ConfigError, match="prune.granularity: channel: Torch-Pruning cannot trace model TwoInputs"):
        ChannelPlan.build(TwoInputs(), config_from_dict(CHANNEL).prune, (4,))


def test_bn_scale_on_a_model_without_batchnorm_fails_before_the_run_folder(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(CHANNEL))
    out = tmp_path / "run"
    code = main(["run", str(path), "--out", str(out), "--set", "prune.method=bn_scale", "--set",
                 "model.batchnorm=false"])  # fmt: skip
    assert code == 2 and "bn_scale needs a BatchNorm" in capsys.readouterr().err
    assert not out.exists()


def test_compare_with_speedups_tabulates_measured_speedup(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(CHANNEL))
    code = main(["compare", str(path), "--methods", "magnitude,random", "--speedup", "2,3", "--seeds", "0",
                 "--out", str(tmp_path / "cmp")])  # fmt: skip
    assert code == 0
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "2× MACs" in table and "3× MACs" in table and "speed-up (measured, CPU batch 64)" in table
    assert (tmp_path / "cmp" / "magnitude" / "s2x" / "seed_0" / "summary.json").exists()
    csv = (tmp_path / "cmp" / "table.csv").read_text().splitlines()
    assert "speedup_measured" in csv[0].split(",")


def test_sigkill_between_rounds_then_resume_gives_the_same_network(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**CHANNEL, "prune": {**CHANNEL["prune"], "n_iter": 3}}))
    run_experiment(config_from_dict(yaml.safe_load(path.read_text())), tmp_path / "full", quiet=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "causalprune", "run", str(path), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "level_1" / "mask.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:  # poll() reaps an exited child, after which kill() would find no process
        os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() in (0, -signal.SIGKILL), f"the run failed before it could be killed (exit {proc.returncode})"
    if (out / "summary.json").exists():
        pytest.skip("the run finished before it could be killed")
    assert main(["run", str(path), "--out", str(out)]) == 0
    for k in (1, 2, 3):
        assert Mask.load(tmp_path / "full" / f"level_{k}" / "mask.pt") == Mask.load(out / f"level_{k}" / "mask.pt")
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(out / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
