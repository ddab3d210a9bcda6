import json

import numpy as np

from causalprune.analysis.friedman import pairwise_auc, run_friedman, separation
from causalprune.cli import main


def test_friedman_schema_and_signal(tmp_path):
    r = run_friedman(instances=20, seed=3, out=tmp_path)
    data = json.loads((tmp_path / "friedman.json").read_text())
    assert data["features"] == [f"x{k}" for k in range(10)]
    for key in ("lasso", "causal", "causal_same_batch"):
        assert np.asarray(data[key]).shape == (20, 10)
    assert (tmp_path / "friedman.png").stat().st_size > 0
    # The probe-ΔL causal coefficients rank informative features above noise ones.
    assert r["summary"]["auc_causal"] > 0.75
    causal = np.abs(np.asarray(data["causal"]))
    assert np.median(causal[:, [0, 1, 3]]) > 5 * np.median(causal[:, 5:])


def test_ranking_metrics_by_hand():
    c = np.array([[5, 4, 3, 2, 1, 0, 0, 0, 0, 0.5], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1.0]])
    assert separation(c) == 0.5
    assert pairwise_auc(c[:1]) == 1.0  # every informative value exceeds every noise value
    assert pairwise_auc(c) == 0.5  # the second row orders every pair wrongly
    assert pairwise_auc(np.zeros((1, 10))) == 0.5  # ties count one half


def test_friedman_cli(tmp_path, capsys):
    assert main(["friedman", "--instances", "5", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "friedman.json").exists()
    assert main(["friedman", "--instances", "0", "--out", str(tmp_path / "x")]) == 2
