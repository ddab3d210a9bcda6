"""`causalprune analyze` on runs of every budget: sparsity, and a channel run's `prune.speedup` (no sparsity)."""

import json

from causalprune.analysis.runs import budget_axis, run_name
from causalprune.cli import main
from causalprune.config import config_from_dict
from causalprune.experiment import run_experiment

from .conftest import TINY
from .test_structured import CHANNEL


def test_analyze_labels_a_speedup_channel_run_by_its_budget(tmp_path, capsys):
    run = tmp_path / "channel" / "seed_0"
    summary = run_experiment(config_from_dict(CHANNEL, ["prune.method=magnitude"]), run, quiet=True)
    assert summary["sparsity_target"] is None and summary["speedup_target"] == 2.0  # the case that crashed
    out = tmp_path / "analysis"
    assert main(["analyze", str(run), "--hessian", "--flatness", "--histogram", "--samples", "64", "--draws", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:4] == ["magnitude", "speed-up", "2×", "MACs"] for line in lines), lines
    stored = json.loads((out / "analysis.json").read_text())
    assert [r["budget"] for r in stored] == ["2× MACs"] and stored[0]["speedup_target"] == 2.0
    for f in ("eigenvalues.png", "flatness.png", "histogram.png"):
        assert (out / f).exists()
    assert (out / run_name(run) / "hessian.json").exists()


def test_budget_axis_places_runs_by_their_shared_budget_kind():
    sparse = [{"sparsity": 0.9, "sparsity_actual": 0.91, "speedup_target": None}]
    fast = [{"sparsity": None, "sparsity_actual": 0.4, "speedup_target": 3.0}]
    where, label = budget_axis(sparse)
    assert (where(sparse[0]), label) == (0.9, "sparsity")
    where, label = budget_axis(fast)
    assert (where(fast[0]), label) == (3.0, "MACs reduction (×)")
    where, label = budget_axis(sparse + fast)  # a mix: the measured sparsity of each
    assert [where(r) for r in sparse + fast] == [0.91, 0.4] and label.startswith("measured sparsity")


def test_analyze_of_a_sparsity_run_prints_its_sparsity(tmp_path, capsys):
    run = tmp_path / "weights" / "seed_0"
    run_experiment(config_from_dict(TINY, ["prune.method=magnitude"]), run, quiet=True)
    assert main(["analyze", str(run), "--hessian", "--samples", "64", "--out", str(tmp_path / "a")]) == 0
    assert any(line.split()[:3] == ["magnitude", "sparsity", "0.8"] for line in capsys.readouterr().out.splitlines())


def test_load_run_and_data_asks_the_plan_registry_how_to_rebuild_the_network(tmp_path, monkeypatch):
    """A unit kind that slims is rebuilt by its own `restore` and loaded unmasked: no granularity branch."""
    from causalprune import plan as plan_module
    from causalprune.analysis.runs import load_run_and_data

    run = tmp_path / "weights" / "seed_0"
    run_experiment(config_from_dict(TINY, ["prune.method=magnitude"]), run, quiet=True)
    seen = []

    class Spy:  # the weight kind, but claiming to slim; its restore records the mask it was given
        slims = True

        @staticmethod
        def restore(model, mask, inputs):  # inputs: the run's ModelIO
            seen.append((mask, tuple(inputs.input_shape)))
            return model

    monkeypatch.setitem(plan_module.PLANS, "weight", Spy)
    _, _, mask, data = load_run_and_data(run)
    assert len(seen) == 1 and seen[0][1] == tuple(data.input_shape)
    assert sum(int((~m).sum()) for m in seen[0][0].values()) > 0  # it got the run's saved (sparse) mask
    assert all(bool(m.all()) for m in mask.values())  # a slim network is loaded unmasked
