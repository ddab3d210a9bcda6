"""Algorithm 1 end to end on a tiny task (digits, MLP 64-32-10), for every method."""

import json
import shutil

import pytest
import torch

from causalprune import Mask, criteria
from causalprune.experiment import RunFolderError, run_experiment

from .conftest import stop_in_round

SUMMARY_KEYS = {"method", "seed", "model", "dataset", "sparsity_target", "sparsity_actual", "params_prunable",
                "params_nonzero", "dense", "pruned", "timing", "device", "torch_version"}  # fmt: skip


@pytest.mark.parametrize("method", ["dense", *criteria.names("weight")])
def test_every_method_runs_end_to_end(method, tiny_config, tmp_path):
    cfg = tiny_config(f"prune.method={method}")
    s = run_experiment(cfg, tmp_path / "run", quiet=True)
    assert SUMMARY_KEYS <= set(s)
    assert {"test_accuracy"} <= set(s["dense"])
    assert {"test_accuracy", "test_accuracy_at_best_val", "best_test_accuracy"} <= set(s["pruned"])
    assert {"total_s", "record_s", "solve_s"} <= set(s["timing"])
    prunable = s["params_prunable"]
    assert prunable == 64 * 32 + 32 * 10
    target = 0.0 if method == "dense" else 0.8
    tol = 1 if criteria.get(method).pool is None else 21  # within one weight; a per-row pool: half a weight per row
    assert abs(s["sparsity_actual"] * prunable - target * prunable) <= tol
    # Pruned weights are exactly zero in the saved model, and the saved mask says which.
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    mask = Mask.load(tmp_path / "run" / "mask.pt")
    for name, m in mask.items():
        assert torch.all(state[name][~m] == 0)
    for f in ("config.yaml", "env.json", "metrics.jsonl", "summary.json"):
        assert (tmp_path / "run" / f).exists()
    if method != "dense":
        assert (tmp_path / "run" / "level_2" / "mask.pt").exists()
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_same_seed_same_masks_and_other_seed_differs(tiny_config, tmp_path):
    masks = []
    for i, seed in enumerate((0, 0, 1)):
        run_experiment(tiny_config(f"seed={seed}"), tmp_path / str(i), quiet=True)
        masks.append(Mask.load(tmp_path / str(i) / "mask.pt"))
    assert masks[0] == masks[1]
    assert masks[0] != masks[2]


def test_kill_and_resume_equals_uninterrupted(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config("prune.n_iter=3")
    run_experiment(cfg, tmp_path / "full", quiet=True)

    stop_in_round(monkeypatch, "causal", "fn")  # the process is stopped mid-run
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "resumed", quiet=True)
    assert (tmp_path / "resumed" / "level_1" / "mask.pt").exists()
    assert not (tmp_path / "resumed" / "level_2" / "mask.pt").exists()
    monkeypatch.undo()
    s = run_experiment(cfg, tmp_path / "resumed", quiet=True)
    for k in (1, 2, 3):
        assert Mask.load(tmp_path / "full" / f"level_{k}" / "mask.pt") == Mask.load(
            tmp_path / "resumed" / f"level_{k}" / "mask.pt"
        )
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert s["pruned"] == full["pruned"]


def test_finished_run_is_not_redone(tiny_config, tmp_path):
    cfg = tiny_config()
    s1 = run_experiment(cfg, tmp_path / "r", quiet=True)
    stamp = (tmp_path / "r" / "model.pt").stat().st_mtime_ns
    assert run_experiment(cfg, tmp_path / "r", quiet=True) == s1
    assert (tmp_path / "r" / "model.pt").stat().st_mtime_ns == stamp


def test_out_folder_with_other_config_is_refused(tiny_config, tmp_path):
    run_experiment(tiny_config(), tmp_path / "r", quiet=True)
    before = (tmp_path / "r" / "config.yaml").read_text()
    with pytest.raises(RunFolderError, match="different config.*prune.sparsity"):
        run_experiment(tiny_config("prune.sparsity=0.5"), tmp_path / "r", quiet=True)
    assert (tmp_path / "r" / "config.yaml").read_text() == before


def test_regression_reports_mse(tiny_config, tmp_path):
    cfg = tiny_config("data.name=friedman", "data.n_samples=600", "prune.method=magnitude")
    s = run_experiment(cfg, tmp_path / "r", quiet=True)
    assert s["task"] == "regression"
    assert {"test_mse", "test_mse_at_best_val", "best_test_mse"} <= set(s["pruned"])
    assert "test_mse" in s["dense"]


def test_causal_variants_and_controls_run(tiny_config, tmp_path):
    variants = [
        ["causal.delta_loss=same_batch", "causal.solver=sgd"],
        ["causal.solver=minnorm", "causal.score=gamma_theta2"],
        ["causal.recorder=sgd", "causal.tie_break=none", "causal.dtype=bfloat16"],
        ["causal.momentum_model=true"],
        ["prune.scope=layerwise", "prune.schedule=geometric", "prune.rewind=false"],
    ]
    for i, v in enumerate(variants):
        s = run_experiment(tiny_config(*v), tmp_path / str(i), quiet=True)
        assert abs(s["sparsity_actual"] - 0.8) < 0.01, v


def test_nan_loss_stops_with_the_epoch(tiny_config, tmp_path):
    from causalprune.train import TrainingDiverged

    cfg = tiny_config("train.lr=1e30", "prune.method=magnitude")
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        run_experiment(cfg, tmp_path / "r", quiet=True)
    assert (tmp_path / "r" / "config.yaml").exists()
    assert not (tmp_path / "r" / "summary.json").exists()


def test_bad_input_writes_no_run_folder(tiny_config, tmp_path):
    with pytest.raises(ValueError, match="probe"):
        run_experiment(tiny_config("causal.probe_size=5000"), tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="n_prune must be >= 1"):
        run_experiment(tiny_config("prune.n_prune=0"), tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()
    # A non-recording method may score right at θ_pre (n_prune = 0, SNIP-style).
    s = run_experiment(tiny_config("prune.n_prune=0", "prune.method=snip"), tmp_path / "r", quiet=True)
    assert abs(s["sparsity_actual"] - 0.8) < 0.01


def test_mnist1d_is_generated_offline():
    from causalprune.data import load_pool

    pool = load_pool("mnist1d", n_samples=300)
    assert pool.x_train.shape == (240, 40) and pool.x_test.shape == (60, 40)
    assert pool.num_classes == 10 and set(pool.y_train.tolist()) <= set(range(10))


def test_bf16_autocast_and_channels_last_run(tiny_config, tmp_path):
    s = run_experiment(tiny_config("train.amp=true"), tmp_path / "amp", quiet=True)
    assert abs(s["sparsity_actual"] - 0.8) < 0.01 and 0 < s["pruned"]["test_accuracy"] <= 1
    cfg = tiny_config("train.channels_last=true", "data.name=digits", "prune.method=magnitude")
    assert run_experiment(cfg, tmp_path / "cl", quiet=True)["sparsity_actual"] > 0.79


def _events(run_dir, event):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == event]


def test_record_steps_records_that_many_steps(tiny_config, tmp_path):
    run_experiment(tiny_config("causal.record_steps=3"), tmp_path / "a", quiet=True)
    assert [e["T"] for e in _events(tmp_path / "a", "level")] == [3, 3]
    run_experiment(tiny_config("causal.record_steps=100000"), tmp_path / "b", quiet=True)
    full = [e["T"] for e in _events(tmp_path / "b", "level")]
    run_experiment(tiny_config(), tmp_path / "c", quiet=True)
    assert full == [e["T"] for e in _events(tmp_path / "c", "level")] and full[0] > 3


def test_post_training_optimizer_overrides(tiny_config, tmp_path):
    cfg = tiny_config("train.post_optimizer=adamw", "train.post_lr=0.002", "train.post_weight_decay=0.01")
    run_experiment(cfg, tmp_path / "r", quiet=True)
    lrs = {e["stage"]: e["lr"] for e in _events(tmp_path / "r", "epoch")}
    assert lrs["pre"] == 0.1 and lrs["post"] == 0.002  # constant schedule: the configured rates
    post = cfg.train.for_stage("post")
    assert (post.optimizer, post.weight_decay, cfg.train.for_stage("pre").optimizer) == ("adamw", 0.01, "sgd")


def test_on_device_splits_give_the_same_run(tiny_config, tmp_path):
    a = run_experiment(tiny_config("data.on_device=true"), tmp_path / "a", quiet=True)
    b = run_experiment(tiny_config(), tmp_path / "b", quiet=True)
    assert a["pruned"] == b["pruned"]


def test_pretrained_state_dict_is_the_starting_point(tiny_config, tmp_path, capsys):
    from causalprune.cli import main
    from causalprune.models import build_model

    cfg = tiny_config()
    model = build_model(cfg.model, (64,), 10)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    s = run_experiment(tiny_config(f"model.pretrained={tmp_path / 'w.pt'}", "prune.n_pre=0"), tmp_path / "r",
                       quiet=True)  # fmt: skip
    theta_pre = torch.load(tmp_path / "r" / "pre" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(theta_pre[k], v) for k, v in model.state_dict().items()) and s["sparsity_actual"] > 0.79
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    capsys.readouterr()
    assert main(["run", "--set", f"model.pretrained={tmp_path / 'bad.pt'}", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit model mlp" in err[0] and not (tmp_path / "x").exists()


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler")
def test_compiled_model_runs_the_same_and_keeps_parameter_names(tiny_config, tmp_path):
    a = run_experiment(tiny_config("train.compile=true"), tmp_path / "a", quiet=True)
    b = run_experiment(tiny_config(), tmp_path / "b", quiet=True)
    assert a["pruned"]["test_accuracy"] == pytest.approx(b["pruned"]["test_accuracy"], abs=0.02)
    names = set(torch.load(tmp_path / "a" / "model.pt", weights_only=True))
    assert names == set(torch.load(tmp_path / "b" / "model.pt", weights_only=True))
    assert not any("_orig_mod" in n for n in names)


def test_onecycle_starts_at_initial_lr_and_peaks_at_lr():
    from causalprune.train import make_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_scheduler(opt, "onecycle", 100, initial_lr=0.001)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.001) and max(lrs) == pytest.approx(0.1, rel=1e-3) and lrs[-1] < 0.001


def test_recorded_steps_are_spread_over_the_round():
    from causalprune.experiment import _spread_recorded_steps

    for total, n in ((10, 3), (7, 7), (100, 1), (352, 100), (5, 9)):
        marks = []
        step = _spread_recorded_steps(lambda x, y, m=marks: m.append(1), lambda x, y, m=marks: m.append(0), total, n)
        for _ in range(total):
            step(None, None)
        recorded = [i for i, m in enumerate(marks, start=1) if m]
        assert len(recorded) == min(n, total) and recorded[-1] == total
        if n < total:  # no gap wider than ⌈total/n⌉ steps: the window spans the round
            gaps = [b - a for a, b in zip([0, *recorded], recorded, strict=False)]
            assert max(gaps) <= -(-total // n)


def test_the_driver_threads_one_model_io_to_every_round(tmp_path, monkeypatch):
    """Each round gets the run's `ModelIO` (one per run): one float sample of the data's shape, called as model(x)."""
    from causalprune import experiment
    from causalprune.config import config_from_dict
    from causalprune.modelio import ModelIO

    from .conftest import TINY

    seen = []
    real = experiment.run_round

    def spy(*args, **kwargs):
        seen.append(kwargs.get("io"))
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment, "run_round", spy)
    run_experiment(config_from_dict(TINY, ["prune.method=magnitude"]), tmp_path / "run", quiet=True)
    assert len(seen) == TINY["prune"]["n_iter"]
    assert all(isinstance(io, ModelIO) for io in seen) and all(io is seen[0] for io in seen)
    assert seen[0].plain and seen[0].example.dtype == torch.float32
    assert torch.equal(seen[0].example, torch.zeros(1, 64))  # digits: 8×8 pixels, flattened
