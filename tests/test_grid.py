"""The one grid planner behind compare and sweep, θ_pre sharing, and registry-driven tables."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from causalprune import criteria, report
from causalprune.cli import main
from causalprune.compare import plan
from causalprune.config import ConfigError, config_from_dict
from causalprune.criteria import Scored
from causalprune.grid import parse_grid, run_cell
from causalprune.sweep import plan_sweep, run_sweep

from .conftest import TINY


def test_compare_varies_a_method_only_along_keys_it_reads():
    cfg = config_from_dict(TINY)
    grid = parse_grid(["causal.solver=cd,minnorm", "causal.recorder=train,sgd"])
    cells = plan(cfg, ["causal", "energy", "magnitude", "dense"], [0.9, 0.98], [0], grid)
    labels = [c.label for c in cells]
    assert labels.count("causal[solver=cd,recorder=train]") == 2  # two sparsities
    assert sum(label.startswith("causal[") for label in labels) == 8
    energy = sorted({la for la in labels if la.startswith("energy")})
    assert energy == ["energy[recorder=sgd]", "energy[recorder=train]"]
    assert labels.count("magnitude") == 2 and labels.count("dense") == 1
    assert len(cells) == 8 + 4 + 2 + 1
    dense = next(c for c in cells if c.label == "dense")
    assert dense.folder == Path("dense") / "p0.8" / "seed_0"  # the base config's sparsity: dense ignores it
    energy = next(c for c in cells if c.label == "energy[recorder=sgd]")
    assert energy.config.causal.recorder == "sgd" and energy.config.causal.solver == "minnorm"  # the base's solver


def test_grid_cells_are_resolved_when_planned():
    with pytest.raises(ValueError, match="unknown method .snap.; valid: bn_scale, causal, causal-placebo, dense"):
        plan(config_from_dict(TINY), ["causal", "snap"], [0.9], [0], [])
    with pytest.raises(ConfigError, match="causal.solver must be one of"):
        plan(config_from_dict(TINY), ["causal"], [0.9], [0], parse_grid(["causal.solver=lars"]))


def _sweep_file(tmp_path, grid: str) -> Path:
    import yaml

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(TINY))
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: {base}\nname: s\nset: {{prune.method: magnitude}}\ngrid:\n{grid}")
    return path


def test_sweep_plans_with_the_same_planner_and_shares_pre_training(tmp_path):
    path = _sweep_file(tmp_path, "  prune.sparsity: [0.5, 0.8]\n  causal.solver: [cd, minnorm]\n  seed: [0]\n")
    cells = plan_sweep(path, tmp_path / "out")
    # magnitude does not read causal.solver: two runs, not four
    assert [c.label for c in cells] == ["sparsity=0.5", "sparsity=0.8"]
    assert [str(c.folder) for c in cells] == ["sparsity=0.5_seed=0", "sparsity=0.8_seed=0"]
    out = tmp_path / "out"
    assert run_sweep(path, out) == (2, [])
    assert len(list((out / "_pre").glob("pre-*/checkpoint.pt"))) == 1  # one θ_pre for the seed
    trained_pre = []
    for c in cells:
        events = [json.loads(line) for line in (out / c.folder / "metrics.jsonl").read_text().splitlines()]
        trained_pre.append(any(e["event"] == "epoch" and e["stage"] == "pre" for e in events))
    assert trained_pre == [True, False]  # the second run reused the first one's θ_pre


def test_tables_pair_methods_with_their_registered_placebo(monkeypatch):
    def summary(method, label, seed, acc):
        pruned = {"test_accuracy": acc, "test_accuracy_at_best_val": acc, "best_test_accuracy": acc}
        return {"method": method, "label": label, "seed": seed, "sparsity_target": 0.9, "task": "classification",
                "sparsity_actual": 0.9, "timing": {"total_s": 1.0}, "pruned": pruned}  # fmt: skip

    # A method registered as another's placebo is paired with it; names play no part.
    fake = dataclasses.replace(criteria.get("magnitude"), name="shuffled", placebo_for="random", reference=False)
    monkeypatch.setitem(criteria.METHODS, "shuffled", fake)
    runs = [summary("random", "random[x=1]", s, 0.5 + 0.1 * s) for s in (0, 1)]
    runs += [summary("shuffled", "shuffled[x=1]", s, 0.5) for s in (0, 1)]
    runs += [summary("magnitude", "magnitude", s, 0.6) for s in (0, 1)]
    rows = {r["method"]: r for r in report.table_rows(runs)}
    assert rows["random[x=1]"]["vs_placebo"][0] == pytest.approx(0.05)
    assert rows["random[x=1]"]["vs_magnitude"][0] == pytest.approx(-0.05)
    assert "vs_placebo" not in rows["magnitude"]
    assert report.baselines_of(list(rows.values())) == ["magnitude"]


def test_resume_refuses_to_start_a_new_run(tmp_path, capsys):
    out = tmp_path / "never-started"
    assert main(["run", "--out", str(out), "--resume", "--set", "prune.method=magnitude"]) == 2
    assert "nothing to resume" in capsys.readouterr().err and not out.exists()


def test_every_method_declares_what_the_driver_needs():
    for name, c in criteria.METHODS.items():
        assert c.needs <= set(criteria.NEEDS), name
        assert (not c.granularities) == (not c.prunes), name
        if c.placebo_for is not None:
            assert criteria.get(c.placebo_for).settings is c.settings, name
    assert criteria.placebo_of("causal") == "causal-placebo"
    assert criteria.references() == ["magnitude"]
    import torch

    scored = Scored({"w": torch.tensor([1.0, -2.0])}, {"w": torch.tensor([3.0, 0.0])})
    scores, tie = scored.oriented(criteria.get("grasp").higher_is_important)  # GraSP prunes its largest
    assert scores["w"].tolist() == [-1.0, 2.0] and tie["w"].tolist() == [-3.0, 0.0]
    assert scored.oriented(True) == (scored.scores, scored.tie_break)


def test_a_misspelt_grid_key_is_refused_not_dropped():
    with pytest.raises(ConfigError, match="unknown config key 'causal.slover'; valid keys under causal: delta_loss"):
        plan(config_from_dict(TINY), ["causal", "magnitude"], [0.9], [0], parse_grid(["causal.slover=cd,sgd"]))


def test_energy_is_not_varied_by_the_loss_change_it_does_not_use():
    cells = plan(config_from_dict(TINY), ["energy"], [0.9], [0], parse_grid(["causal.delta_loss=same_batch,probe"]))
    assert [c.label for c in cells] == ["energy"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA: the failing cell asks for it")
def test_a_failing_cell_does_not_stop_the_others(tmp_path, capsys):
    """Two processes (--jobs 2): one cell fails at run time (no CUDA), the other finishes and is tabulated."""
    base = tmp_path / "tiny.yaml"
    base.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "cmp"
    code = main(["compare", str(base), "--methods", "magnitude", "--sparsity", "0.8", "--seeds", "0",
                 "--grid", "train.device=cpu,cuda", "--jobs", "2", "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    bad = out / "magnitude_device=cuda_" / "p0.8" / "seed_0"
    assert captured.err.splitlines() == [
        f"causalprune: error: magnitude[device=cuda] seed 0 failed in {bad}: ConfigError: train.device is cuda but "
        f"no CUDA device is available (use cpu or auto); traceback in {bad / 'error.log'}"]  # fmt: skip
    assert "Traceback" in (bad / "error.log").read_text() and not (bad / "summary.json").exists()
    good = out / "magnitude_device=cpu_" / "p0.8" / "seed_0"
    assert (good / "summary.json").exists()
    rows = (out / "table.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("magnitude[device=cpu],0.8,1")  # the finished cell's row
    assert "1 of 2 runs (1 failed)" in captured.out and "| magnitude[device=cpu] | 0.8 | 1 |" in captured.out
    threads = json.loads((good / "env.json").read_text())["threads"]
    assert threads == max(1, len(os.sched_getaffinity(0)) // 2)  # the executor shared the cores between 2 jobs


def test_a_cell_takes_the_executors_threads_unless_its_config_or_its_start_decided(tmp_path):
    pre = str(tmp_path / "_pre")
    cfg = config_from_dict(TINY, ["prune.method=magnitude"])
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "error.log").write_text("RuntimeError: an earlier attempt\n")
    s = run_cell(cfg, str(folder), "lbl", pre, threads=1)
    assert s["threads"] == 1 and s["label"] == "lbl" and s["run_dir"] == str(folder)
    assert (folder / "label.txt").read_text() == "lbl\n" and not (folder / "error.log").exists()
    (folder / "summary.json").unlink()  # the final stage is redone: a resumed run
    assert run_cell(cfg, str(folder), "lbl", pre, threads=2)["threads"] == 1  # the count it started with
    fixed = config_from_dict(TINY, ["prune.method=magnitude", "train.threads=2"])
    assert run_cell(fixed, str(tmp_path / "f"), "lbl", pre, threads=1)["threads"] == 2  # the config's own


def test_jobs_and_nproc_do_not_combine(capsys):
    assert main(["compare", "--jobs", "2", "--nproc", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["causalprune: error: --jobs 2 and --nproc 2 do not combine: a distributed grid runs its cells one "
                   "after another (give one of them)"]  # fmt: skip
