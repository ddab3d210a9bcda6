"""Figures from table rows: the plotted numbers are the table's (mean ± SE, paired Δ ± SE); report.html is offline."""

import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from causalprune import figures, report
from causalprune.cli import main
from causalprune.compare import write_table

from .conftest import TINY

PNG = b"\x89PNG\r\n\x1a\n"
#: accuracy[method][sparsity] = one value per seed 0, 1, 2
ACC = {
    "causal": {0.5: [0.90, 0.88, 0.86], 0.9: [0.80, 0.70, 0.75]},
    "causal-placebo": {0.5: [0.89, 0.88, 0.80], 0.9: [0.60, 0.65, 0.70]},
    "magnitude": {0.5: [0.91, 0.87, 0.85], 0.9: [0.72, 0.71, 0.70]},
}


def _summary(method, seed, acc, sparsity, speedup=None, efficiency=None):
    pruned = {"test_accuracy": acc, "test_accuracy_at_best_val": acc, "best_test_accuracy": acc}
    s = {"method": method, "label": method, "seed": seed, "sparsity_target": sparsity, "task": "classification",
         "sparsity_actual": sparsity, "timing": {"total_s": 1.0}, "pruned": pruned, "experiment": "E"}  # fmt: skip
    if speedup is not None:
        s["speedup_target"] = speedup
    if efficiency is not None:
        s["efficiency"] = efficiency
    return s


def _summaries():
    return [_summary(m, seed, acc, sp) for m, by_sp in ACC.items() for sp, accs in by_sp.items()
            for seed, acc in enumerate(accs)]  # fmt: skip


def test_accuracy_curves_are_the_tables_means_with_standard_errors():
    rows = report.table_rows(_summaries())
    curves = figures.accuracy_curves(rows)
    assert set(curves) == set(ACC)
    for method, by_sp in ACC.items():
        x, y, se = curves[method]
        assert x.tolist() == [0.5, 0.9]
        want_y = [100 * np.mean(by_sp[s]) for s in (0.5, 0.9)]
        want_se = [100 * np.std(by_sp[s], ddof=1) / math.sqrt(3) for s in (0.5, 0.9)]
        assert y == pytest.approx(want_y) and se == pytest.approx(want_se)


def test_paired_curves_are_the_delta_columns():
    rows = report.table_rows(_summaries())
    diffs = figures.paired_curves(rows)
    assert set(diffs) == {"vs_magnitude", "vs_placebo"}
    assert set(diffs["vs_placebo"]) == {"causal"}  # only causal has a placebo
    assert "magnitude" not in diffs["vs_magnitude"]  # not against itself
    for key, other in (("vs_placebo", "causal-placebo"), ("vs_magnitude", "magnitude")):
        x, y, se = diffs[key]["causal"]
        assert x.tolist() == [0.5, 0.9]
        for i, sp in enumerate((0.5, 0.9)):
            d = [a - b for a, b in zip(ACC["causal"][sp], ACC[other][sp], strict=True)]
            assert y[i] == pytest.approx(100 * statistics.fmean(d))
            assert se[i] == pytest.approx(100 * statistics.stdev(d) / math.sqrt(3))


def test_speedup_points_of_channel_runs_and_the_files_written(tmp_path):
    base = {"size_nz": 1, "compression_ratio": 2.0, "flops_nz": 1, "theoretical_speedup": 2.2}
    eff = [{**base, "speedup_macs": 2.1, "speedup_measured": 1.5},
           {**base, "speedup_macs": 1.9, "speedup_measured": 1.7}]
    runs = [_summary(m, seed, 0.8 + 0.01 * seed, 0.4, speedup=2.0, efficiency=eff[seed])
            for m in ("magnitude", "random") for seed in (0, 1)]  # fmt: skip
    rows = report.table_rows(runs)
    points = figures.speedup_points(rows)
    assert points["magnitude"][0] == pytest.approx([2.0]) and points["magnitude"][1] == pytest.approx([1.6])
    written, notes = figures.write_figures(rows, tmp_path / "figs")
    names = sorted(p.name for p in written)
    assert names == ["accuracy.png", "accuracy.svg", "paired.png", "paired.svg", "speedup.png", "speedup.svg"]
    assert all(p.read_bytes().startswith(PNG) for p in written if p.suffix == ".png")
    assert notes == []
    assert figures.budget_label(rows) == "MACs reduction (×)"


def test_nothing_to_show_is_skipped_with_a_note(tmp_path):
    rows = report.table_rows([_summary("magnitude", s, 0.8, 0.9) for s in (0, 1)])
    written, notes = figures.write_figures(rows, tmp_path)
    assert written == []
    assert len(notes) == 3
    assert "one method at one budget" in notes[0] and "placebo" in notes[1] and "weight runs" in notes[2]


def test_write_table_draws_figures_and_a_self_contained_page(tmp_path):
    write_table(_summaries(), tmp_path, "header\n\n", html=True)
    figs = tmp_path / "figures"
    assert (figs / "accuracy.png").read_bytes().startswith(PNG)
    assert (figs / "paired.png").read_bytes().startswith(PNG)
    assert not (figs / "speedup.png").exists()
    assert "weight runs" in (figs / "skipped.txt").read_text()
    page = (tmp_path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3  # accuracy, paired, boxplots
    assert "http" not in page and "://" not in page  # opens offline: no external reference
    assert "<td>causal</td>" in page and "<th>method</th>" in page


def test_rows_from_csv_match_the_rows_of_the_table(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("experiment,method,budget,n,metric,final_mean,final_std,vs_placebo_mean,vs_placebo_se,"
                    "speedup_macs,speedup_measured\n"
                    "E,causal,2x,5,accuracy,80.0,2.0,1.5,0.5,2.0,1.6\n"
                    "E,causal,0.9,5,accuracy,70.0,1.0,,,,\n")  # fmt: skip
    rows = figures.rows_from_csv(path)
    assert rows[0]["budget"] == "2× MACs" and rows[0]["final"] == pytest.approx((0.8, 0.02))
    assert rows[0]["vs_placebo"][:2] == pytest.approx((0.015, 0.005)) and "vs_placebo" not in rows[1]
    _, y, se = figures.accuracy_curves(rows[:1])["causal"]
    assert y == pytest.approx([80.0]) and se == pytest.approx([2.0 / math.sqrt(5)])
    bad = tmp_path / "bad.csv"
    bad.write_text("method,n\nx,1\n")
    with pytest.raises(ValueError, match="missing column"):
        figures.rows_from_csv(bad)


def test_cli_report_html_on_finished_runs(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    for method in ("magnitude", "random"):
        for seed in (0, 1):
            out = tmp_path / "runs" / method / "p0.5" / f"seed_{seed}"
            assert main(["run", str(config), "--out", str(out), "--set", f"prune.method={method}",
                         "--set", f"seed={seed}", "--set", "prune.sparsity=0.5"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs", ), "--html"]) == 0
    figs = tmp_path / "runs" / "figures"
    assert (figs / "accuracy.png").read_bytes().startswith(PNG) and (figs / "paired.png").is_file()
    page = (tmp_path / "runs" / "report.html").read_text()
    assert "data:image/png;base64," in page and "://" not in page
    assert "skipped.txt" not in capsys.readouterr().out


def _extract():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("docs_extract", root / "docs" / "data" / "extract.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return root, module


def test_the_docs_stored_tables_are_their_pages_tables_and_their_figures_are_embedded():
    import csv
    import re

    root, extract = _extract()
    for page, section, experiment, name in extract.STUDIES:
        with (root / "docs" / "data" / name).open(newline="") as f:
            stored = [{k: v for k, v in r.items() if v} for r in csv.DictReader(f)]
        assert stored == extract.tables(root / page, section, experiment), f"{name} is stale: python {extract.__file__}"
        text = (root / page).read_text()
        embeds = re.findall(rf"\(figures/({Path(name).stem}-[\w.-]+\.png)\)", text)
        assert embeds and all((root / "docs" / "figures" / e).is_file() for e in embeds), (page, embeds)
    rows = figures.rows_from_csv(root / "docs" / "data" / "structured.csv")
    bn = [r for r in rows if r["method"] == "bn_scale" and r["experiment"] == "cnn1d-mnist1d"]
    _, y, se = figures.accuracy_curves(bn)["bn_scale"]
    assert y[0] == pytest.approx(94.12) and se[0] == pytest.approx(0.55 / math.sqrt(5))  # docs/structured.md's row
    assert figures.speedup_points(bn)["bn_scale"][1][0] == pytest.approx(1.16)


def test_several_experiments_get_one_set_each_and_the_page_renders_headings_and_tables(tmp_path):
    runs = _summaries() + [{**s, "experiment": "F"} for s in _summaries()]
    rows = [r for t in report.experiments(runs).values() for r in report.table_rows(t)]
    written, _ = figures.figures_for(rows, tmp_path, svg=False)
    assert sorted(p.name for p in written) == ["E-accuracy.png", "E-paired.png", "F-accuracy.png", "F-paired.png"]
    page = figures.report_html("### E\n\n| a | b |\n|---|---|\n| 1 & 2 | <x> |\n", [*written, tmp_path / "x.svg"])
    assert "<h3>E</h3>" in page and "<td>1 &amp; 2</td><td>&lt;x&gt;</td>" in page
    assert page.count("<img ") == 4  # the PNGs only
