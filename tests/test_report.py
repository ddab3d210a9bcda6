"""`report`: one table per experiment, never pooled; damaged runs named and skipped; n stated honestly."""

import csv
import json
import shutil

import pytest
import yaml

from causalprune import report
from causalprune.cli import main
from causalprune.compare import collect

from .conftest import TINY


def _config(tmp_path, name="tiny.yaml", **changes):
    d = yaml.safe_load(yaml.safe_dump(TINY))
    for k, v in changes.items():
        sec, key = k.split("__")
        d[sec][key] = v
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d))
    return str(path)


def _run(config, out, *sets):
    assert main(["run", config, "--out", str(out), "--set", "prune.method=magnitude", *sets]) == 0


def _rows(table_md):
    return [line for line in table_md.splitlines() if line.startswith("| magnitude")]


def test_report_never_pools_two_experiments(tmp_path, capsys):
    # Two configs under one folder (same name, different model): the issue's `| magnitude | 0.8 | 2 |` row
    # mixed them, its "final" column showing one run and its "best" column both.
    root = tmp_path / "runs"
    a, b = _config(tmp_path), _config(tmp_path, "wide.yaml", model__widths=[16])
    _run(a, root / "a" / "seed_0")
    _run(a, root / "a" / "seed_1", "--set", "seed=1")
    _run(b, root / "b" / "seed_0")
    capsys.readouterr()
    assert main(["report", str(root)]) == 0
    out = capsys.readouterr().out
    table = (root / "table.md").read_text()
    assert f"2 experiments under {root} (differ in model.widths); one table each" in table
    assert "2 experiments under" in out
    rows = _rows(table)
    assert len(rows) == 2, table
    assert sorted(r.split("|")[3].strip() for r in rows) == ["1", "2"]  # n: 2 runs of a, 1 of b
    with open(root / "table.csv") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 2 and len({r["experiment"] for r in written}) == 2
    assert sorted(r["n"] for r in written) == ["1", "2"]
    # One boxplot per experiment, never a pooled one.
    assert len(list(root.glob("boxplots-*.png"))) == 2 and not (root / "boxplots.png").exists()
    # Each experiment's own folder still gives its plain one-table report.
    assert main(["report", str(root / "a")]) == 0
    table_a = (root / "a" / "table.md").read_text()
    assert "experiments under" not in table_a and [r.split("|")[3].strip() for r in _rows(table_a)] == ["2"]


def test_a_grid_stays_one_table_and_other_runs_beside_it_do_not_join_it(tmp_path, capsys):
    # The grid varies causal.solver away from a non-default base value; magnitude, which does not
    # read the solver, keeps the base value in its config.yaml: all of it is still one experiment.
    root = tmp_path / "runs"
    cfg = _config(tmp_path, causal__solver="cd")
    assert main(["compare", cfg, "--out", str(root / "grid"), "--methods", "causal,magnitude", "--sparsity", "0.8",
                 "--seeds", "0", "--grid", "causal.solver=minnorm,cd"]) == 0  # fmt: skip
    assert "experiments under" not in (root / "grid" / "table.md").read_text()
    first = (root / "grid" / "table.csv").read_text()
    _run(_config(tmp_path, "other.yaml", data__val_fraction=0.2), root / "other" / "seed_0")
    capsys.readouterr()
    assert main(["report", str(root / "grid")]) == 0
    assert "experiments under" not in capsys.readouterr().out
    experiments = [{r["experiment"] for r in csv.DictReader(text.splitlines())}
                   for text in (first, (root / "grid" / "table.csv").read_text())]  # fmt: skip
    assert experiments[0] == experiments[1] and len(experiments[0]) == 1  # compare and report agree
    assert main(["report", str(root)]) == 0
    table = (root / "table.md").read_text()
    assert "2 experiments under" in table and "data.val_fraction" in table
    grid_part, other_part = sorted(table.split("### ")[1:], key=lambda part: "causal[" not in part)
    assert "causal[solver=cd]" in grid_part and "causal[solver=minnorm]" in grid_part
    assert "| magnitude | 0.8 | 1 |" in grid_part and "| magnitude | 0.8 | 1 |" in other_part


def test_damaged_runs_are_named_and_skipped(tmp_path, capsys):
    root = tmp_path / "runs"
    cfg = _config(tmp_path)
    for seed in (0, 1):
        _run(cfg, root / f"seed_{seed}", "--set", f"seed={seed}")
    for name in ("truncated", "no_method", "no_config", "bad_config"):
        shutil.copytree(root / "seed_1", root / name)
    text = (root / "truncated" / "summary.json").read_text()
    (root / "truncated" / "summary.json").write_text(text[: len(text) // 2])
    s = json.loads((root / "no_method" / "summary.json").read_text())
    del s["method"]
    (root / "no_method" / "summary.json").write_text(json.dumps(s))
    (root / "no_config" / "config.yaml").unlink()
    (root / "bad_config" / "config.yaml").write_text("prune: [unclosed")
    capsys.readouterr()
    assert main(["report", str(root)]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 4, warnings
    for name in ("truncated", "no_method", "no_config", "bad_config"):
        assert sum(name in w for w in warnings) == 1, (name, warnings)
    assert all(w.startswith("causalprune: warning: skipping ") for w in warnings)
    assert "'method'" in next(w for w in warnings if "no_method" in w)
    assert "| magnitude | 0.8 | 2 |" in (root / "table.md").read_text()
    # The library says the same, to a list the caller gives.
    skipped: list[str] = []
    assert len(collect(root, skipped)) == 2 and len(skipped) == 4
    # Nothing readable left: one line, exit status 2.
    for seed in (0, 1):
        shutil.rmtree(root / f"seed_{seed}")
    assert main(["report", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("causalprune: error: no readable finished runs"), err
    assert "4 damaged" in err[0]


def test_two_runs_of_one_seed_in_one_row_are_refused_not_dropped(tmp_path, capsys):
    root = tmp_path / "runs"
    _run(_config(tmp_path), root / "first" / "seed_0")
    shutil.copytree(root / "first", root / "copy")
    capsys.readouterr()
    assert main(["report", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed 0" in err[0], err
    assert "first" in err[0] and "copy" in err[0]


def _summary(method, seed, acc, experiment=None, **extra):
    pruned = {"test_accuracy": acc, "test_accuracy_at_best_val": acc, "best_test_accuracy": acc}
    s = {"method": method, "label": method, "seed": seed, "sparsity_target": 0.9, "task": "classification",
         "sparsity_actual": 0.9, "timing": {"total_s": 1.0}, "pruned": pruned, **extra}  # fmt: skip
    if experiment is not None:
        s["experiment"] = experiment
    return s


def test_table_rows_group_by_experiment_and_pair_only_within_one():
    runs = [_summary("magnitude", 0, 0.6, "A"), _summary("random", 0, 0.5, "A")]
    runs += [_summary("magnitude", 0, 0.9, "B"), _summary("magnitude", 1, 0.8, "B")]
    rows = report.table_rows(runs)
    assert [(r["experiment"], r["method"], r["n"]) for r in rows] == [("A", "magnitude", 1), ("A", "random", 1),
                                                                       ("B", "magnitude", 2)]  # fmt: skip
    random_a = rows[1]
    assert random_a["vs_magnitude"][0] == pytest.approx(-0.1)  # against A's magnitude, not B's
    # Summaries without an experiment (library use) are told apart by what they say they ran.
    plain = [_summary("magnitude", 0, 0.6, dataset="digits", model="mlp"),
             _summary("magnitude", 0, 0.7, dataset="mnist1d", model="mlp")]  # fmt: skip
    assert [r["n"] for r in report.table_rows(plain)] == [1, 1]
    text = report.markdown(report.table_rows(runs))
    assert text.count("| magnitude | 0.9 |") == 2 and "### " in text  # one table per experiment
    with pytest.raises(ValueError, match="seed 0"):
        report.table_rows([_summary("magnitude", 0, 0.6, "A"), _summary("magnitude", 0, 0.7, "A")])
