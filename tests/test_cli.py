"""The command line: runs, compare tables, and one-line errors with exit status 2."""

import subprocess
import sys

import yaml

from causalprune.analysis.runs import run_name
from causalprune.cli import main

from .conftest import TINY


def _config(tmp_path, **changes):
    d = yaml.safe_load(yaml.safe_dump(TINY))
    for k, v in changes.items():
        sec, key = k.split("__")
        d[sec][key] = v
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("causalprune: error:")
    for n in needles:
        assert n in err[0], err[0]


def test_run_writes_a_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", _config(tmp_path), "--out", str(out), "--set", "prune.method=magnitude"]) == 0
    assert (out / "summary.json").exists()
    assert "magnitude seed 0" in capsys.readouterr().out
    assert main(["run", _config(tmp_path), "--out", str(out), "--set", "prune.method=magnitude", "--resume"]) == 0


def test_compare_prints_and_writes_tables(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", _config(tmp_path), "--out", str(out), "--methods", "causal,magnitude,random",
                 "--sparsity", "0.5,0.8", "--seeds", "0,1"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    table = (out / "table.md").read_text()
    assert "| causal | 0.5 | 2 |" in table and "| random | 0.8 | 2 |" in table
    assert "Δ vs magnitude" in table and "(paired" in table
    assert table.splitlines()[-1] in printed
    csv = (out / "table.csv").read_text().splitlines()
    assert csv[0].startswith("method,sparsity,n") and len(csv) == 1 + 6
    # Both seeds of every method start from the same θ_pre (one pre-training per seed).
    assert len(list((out / "_pre").glob("pre-*"))) == 2


def test_compare_grid_varies_causal_keys_only_for_causal_methods(tmp_path, capsys):
    out = tmp_path / "grid"
    assert main(["compare", _config(tmp_path), "--out", str(out), "--methods", "causal,magnitude",
                 "--sparsity", "0.8", "--seeds", "0", "--grid", "causal.solver=cd,minnorm"]) == 0  # fmt: skip
    table = (out / "table.md").read_text()
    assert "causal[solver=cd]" in table and "causal[solver=minnorm]" in table
    assert "magnitude[" not in table


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("mlp", "mnist1d", "causal-placebo", "energy", "minnorm", "probe", "geometric"):
        assert word in out


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    _one_line_error(capsys, "config file not found", "missing.yaml")
    assert main(["run", cfg, "--set", "prune.colour=red"]) == 2
    _one_line_error(capsys, "prune.colour", "valid keys under prune")
    assert main(["run", cfg, "--set", "prune.n_iter=0"]) == 2
    _one_line_error(capsys, "prune.n_iter must be >= 1")
    assert main(["compare", cfg, "--methods", "causal,snap"]) == 2
    _one_line_error(capsys, "unknown method 'snap'", "valid:")
    assert main(["compare", cfg, "--sparsity", "0.9,lots"]) == 2
    _one_line_error(capsys, "--sparsity")


def test_out_folder_of_another_config_is_refused(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["run", _config(tmp_path), "--out", out, "--set", "prune.method=random"]) == 0
    capsys.readouterr()
    assert main(["run", _config(tmp_path), "--out", out, "--set", "prune.method=magnitude"]) == 2
    _one_line_error(capsys, "different config", "prune.method")


def test_nan_loss_exit_2_names_the_epoch(tmp_path, capsys):
    assert main(["run", _config(tmp_path), "--out", str(tmp_path / "r"), "--set", "train.lr=1e30"]) == 2
    _one_line_error(capsys, "epoch 1")


def test_entry_point_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "causalprune.cli", "run", "--set", "prune.sparsity=1.2"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "prune.sparsity must be in [0, 1), got 1.2" in r.stderr


def test_report_rebuilds_the_table(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", _config(tmp_path), "--out", str(out), "--methods", "magnitude,random",
                 "--sparsity", "0.8", "--seeds", "0"]) == 0  # fmt: skip
    first = (out / "table.md").read_text()
    (out / "table.md").unlink()
    assert main(["report", str(out)]) == 0
    rebuilt = (out / "table.md").read_text()
    assert first.splitlines()[2:] == rebuilt.splitlines()[2:]  # same rows; the header differs
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_analyze_writes_per_run_results_and_figures(tmp_path, capsys):
    runs = []
    for method in ("causal", "magnitude"):
        out = tmp_path / method
        assert main(["run", _config(tmp_path), "--out", str(out), "--set", f"prune.method={method}"]) == 0
        runs.append(str(out))
    figs = tmp_path / "figs"
    assert main(["analyze", *runs, "--hessian", "--flatness", "--histogram", "--samples", "128", "--draws", "5",
                 "--out", str(figs)]) == 0  # fmt: skip
    before = {p for r in runs for p in (tmp_path / r).rglob("*")}
    for r in runs:
        sub = figs / run_name(tmp_path / r)
        assert (sub / "hessian.json").exists() and (sub / "flatness.json").exists()
        assert not (tmp_path / r / "analysis").exists()  # the run folders are only read
    assert before == {p for r in runs for p in (tmp_path / r).rglob("*")}
    for f in ("eigenvalues.png", "flatness.png", "histogram.png", "analysis.json"):
        assert (figs / f).exists()
    assert main(["analyze", str(tmp_path / "nope")]) == 2


def test_sweep_runs_in_parallel_and_resumes(tmp_path, capsys):
    cfg = _config(tmp_path)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {cfg}\nname: s\nset: {{prune.method: magnitude}}\n"
                     "grid:\n  prune.n_pre: [0, 1]\n  seed: [0, 1]\n")  # fmt: skip
    out = tmp_path / "sw"
    assert main(["sweep", str(sweep), "--out", str(out), "--jobs", "2"]) == 0
    assert len(list(out.rglob("summary.json"))) == 4
    assert (out / "table.md").exists() and (out / "boxplots.png").exists()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    capsys.readouterr()
    assert main(["sweep", str(sweep), "--out", str(out)]) == 0
    assert "4 already finished, 0 to run" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {prune.sparsity: [1.5]}\n")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b").exists()


def test_dry_run_plans_without_training(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "78,336 prunable" in text and "0.4392, 0.7056" in text and not out.exists()
    # Missing data: the whole plan is still printed, then one line naming what is missing and where; exit 2.
    assert main(["run", "--dry-run", "--set", "data.name=cifar10", "--set", "model.name=resnet20",
                 "--set", f"data.root={tmp_path / 'none'}"]) == 2  # fmt: skip
    captured = capsys.readouterr()
    assert "NOT PRESENT" in captured.out and "268,336 prunable" in captured.out and "training: batch" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("causalprune: error: dry run: data set cifar10 not found"), err
    assert str(tmp_path / "none" / "cifar-10-batches-py") in err[0]


def test_shipped_configs_run_by_name_outside_the_repository(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "mlp-digits", "--dry-run"]) == 0
    assert "prunable" in capsys.readouterr().out
    assert main(["run", "configs/mlp-digits.yaml", "--dry-run"]) == 0
    capsys.readouterr()
    assert main(["run", "paper/resnet20-cifar10-oneshot", "--dry-run", "--set", "train.device=cpu"]) == 2  # no data
    captured = capsys.readouterr()
    assert "resnet20" in captured.out and "data set cifar10 not found" in captured.err
    assert main(["run", "mlp-digit", "--dry-run"]) == 2
    _one_line_error(capsys, "config file not found: mlp-digit", "causalprune list")
    assert main(["compare", "mlp-digits", "--out", str(tmp_path / "cmp"), "--methods", "magnitude", "--sparsity",
                 "0.5", "--seeds", "0", "--set", "prune.n_pre=0", "--set", "prune.n_iter=1", "--set",
                 "prune.n_prune=1", "--set", "prune.n_post=1"]) == 0  # fmt: skip
    assert "| magnitude | 0.5 | 1 |" in (tmp_path / "cmp" / "table.md").read_text()


def test_list_names_the_shipped_configs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    configs = next(line for line in out.splitlines() if line.startswith("configs:"))
    assert "mlp-digits" in configs and "paper/resnet20-cifar10-oneshot" in configs and ".yaml" not in configs
    assert "sweep-ablation" in out


def test_a_budget_given_by_set_replaces_the_demo_files_sparsity_in_one_line(tmp_path, capsys):
    from causalprune.config import SHIPPED_CONFIGS

    assert main(["run", "--dry-run", "--set", "prune.granularity=channel", "--set", "prune.speedup=2"]) == 0
    captured = capsys.readouterr()
    demo = SHIPPED_CONFIGS / "demo.yaml"
    assert captured.err.strip().splitlines() == [
        f"causalprune: note: prune.speedup=2 from --set replaces prune.sparsity=0.9 from {demo}"]
    assert "MACs" in captured.out  # the channel plan of the speed-up
    assert main(["run", "--dry-run", "--set", "prune.granularity=channel", "--set", "prune.speedup=2",
                 "--set", "prune.sparsity=0.5"]) == 2  # fmt: skip
    _one_line_error(capsys, "are both set by --set")
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({**TINY, "prune": {**TINY["prune"], "granularity": "channel", "speedup": 2}}))
    assert main(["run", str(both), "--dry-run"]) == 2
    _one_line_error(capsys, f"are both set in {both}", "--set prune.sparsity=null")
    assert main(["run", str(both), "--dry-run", "--set", "prune.sparsity=null"]) == 0


def test_compare_takes_a_speedup_from_set_over_the_files_sparsity(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", _config(tmp_path), "--out", str(out), "--methods", "magnitude", "--seeds", "0",
                 "--set", "prune.granularity=channel", "--set", "prune.speedup=2", "--set", "prune.n_iter=1"]) == 0
    assert "replaces prune.sparsity=0.8" in capsys.readouterr().err
    summary = next(out.rglob("summary.json")).read_text()
    assert '"speedup_target": 2.0' in summary
