"""Wanda: |W_ij| · ‖X_j‖₂ against inputs collected by hand; per-row selection; an end-to-end run."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from causalprune import Mask, criteria
from causalprune.config import PruneConfig
from causalprune.experiment import run_experiment
from causalprune.plan import WeightPlan, run_round
from causalprune.selection import ROWS
from causalprune.train import SquaredError

LOSS = SquaredError()


def _mlp_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    return model, [(torch.randn(6, 4), torch.randn(6, 3)), (torch.randn(2, 7, 4), torch.randn(2, 7, 3))]


def test_linear_scores_equal_hand_computed_norms():
    model, data = _mlp_batches()
    scores = criteria.score("wanda", model, data, LOSS)
    with torch.no_grad():  # the layers' inputs, collected by hand: every row of every batch is one token
        x0 = torch.cat([x.reshape(-1, 4) for x, _ in data])
        x2 = torch.relu(model[0](x0))
    for name, w, x in (("0.weight", model[0].weight, x0), ("2.weight", model[2].weight, x2)):
        norm = (x.double() ** 2).sum(0).sqrt()
        expected = w.detach().abs().double() * norm[None, :]
        torch.testing.assert_close(scores[name].double(), expected, rtol=1e-6, atol=1e-7)


def test_conv_scores_equal_padded_window_norms():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    model = nn.Sequential(conv)
    data = [(torch.randn(3, 4, 5, 5), torch.zeros(3)), (torch.randn(2, 4, 5, 5), torch.zeros(2))]
    xp = F.pad(torch.cat([x for x, _ in data]).double(), (1, 1, 1, 1))  # (B, 4, 7, 7)
    norm = torch.zeros(4, 3, 3, dtype=torch.float64)  # input channel, kernel row, kernel column
    for c in range(4):
        for a in range(3):
            for b in range(3):
                norm[c, a, b] = (xp[:, c, a:a + 5, b:b + 5] ** 2).sum().sqrt()
    expected = torch.stack([conv.weight[o].detach().abs().double() * norm[(o // 3) * 2:(o // 3) * 2 + 2]
                            for o in range(6)])  # fmt: skip  # out channels 0-2 see inputs 0-1, 3-5 see 2-3
    scores = criteria.score("wanda", model, data, LOSS)
    torch.testing.assert_close(scores["0.weight"].double(), expected, rtol=1e-6, atol=1e-7)


def test_calibration_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    criteria.score("wanda", model, [(torch.randn(8, 3), torch.zeros(8, 2))], LOSS)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched


def test_refuses_a_layer_it_cannot_read_in_one_line():
    model = nn.Sequential(nn.ConvTranspose2d(2, 2, 3))
    with pytest.raises(ValueError, match=r"^wanda cannot collect the inputs of layer '0' \(ConvTranspose2d\); "
                                         r"valid: nn\.Linear") as err:  # fmt: skip
        criteria.score("wanda", model, [(torch.randn(1, 2, 4, 4), torch.zeros(1))], LOSS)
    assert "\n" not in str(err.value)


def test_declares_the_row_pool_and_a_round_keeps_the_same_count_per_row():
    assert criteria.get("wanda").pool is ROWS
    assert criteria.get("magnitude").pool is None  # every other method: prune.scope, as before
    model, data = _mlp_batches()
    plan = WeightPlan.build(model, PruneConfig(method="wanda", sparsity=0.6, scope="global"))
    out = run_round(plan, criteria.get("wanda"), model, Mask.ones(model), 1, 0.6, seed=0, data=data, loss_fn=LOSS)
    scores = criteria.score("wanda", model, data, LOSS)
    for name, zeros in (("0.weight", 2), ("2.weight", 3)):  # round(0.6·4) = 2, round(0.6·5) = 3 per row
        m = out.mask[name]
        assert (~m).sum(1).tolist() == [zeros] * m.shape[0]
        for row, keep, s in zip(range(m.shape[0]), m, scores[name], strict=True):  # the row's lowest scores go
            assert set(torch.argsort(s, stable=True)[:zeros].tolist()) == set((~keep).nonzero().flatten().tolist()), row


def test_end_to_end_run_prunes_every_row_alike(tiny_config, tmp_path):
    s = run_experiment(tiny_config("prune.method=wanda", "prune.n_iter=2"), tmp_path / "r", quiet=True)
    # mlp 64 → 32 → 10 at 0.8: 32 rows keep 64 − round(51.2) = 13, 10 rows keep 32 − round(25.6) = 6
    assert s["params_prunable"] == 64 * 32 + 32 * 10
    assert round(s["sparsity_actual"] * s["params_prunable"]) == 32 * 51 + 10 * 26


def test_causal_pruner_prunes_every_row_alike():
    from causalprune import CausalPruner

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    batches = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(3)]
    pruner = CausalPruner(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), sparsity=0.5,
                          n_iter=2, method="wanda", score_batches=2)  # fmt: skip
    while not pruner.done:
        for x, y in batches:
            pruner.step(x, y)
        pruner.end_epoch()
    # round(0.5·6) = 3 and round(0.5·5) = 2 (half to even) pruned in every row
    assert (~pruner.mask["0.weight"]).sum(1).tolist() == [3] * 5
    assert (~pruner.mask["2.weight"]).sum(1).tolist() == [2] * 3


@pytest.mark.parametrize(("sets", "method", "read"), [
    ([], "wanda", 10),  # unset: prune.score_batches, as before
    (["prune.calibration_batches=3"], "wanda", 3),
    (["prune.calibration_batches=3"], "sparsegpt", 3),
    (["prune.calibration_batches=3", "prune.score_batches=4"], "snip", 4),  # other methods: score_batches
])  # fmt: skip
def test_calibration_batches_is_what_the_calibrating_criteria_read(sets, method, read, tiny_config, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    original = criteria.METHODS[method]
    score = original.scorer("weight")
    seen = []

    def counting(inp):
        seen.append(len(inp.data))
        return score(inp)

    monkeypatch.setitem(criteria.METHODS, method, original.with_scorer("weight", counting))
    run_experiment(tiny_config(f"prune.method={method}", *sets), tmp_path / "r", quiet=True)
    assert seen == [read, read]  # both rounds


def test_calibration_batches_is_checked_and_round_trips(tmp_path):
    from causalprune.config import ConfigError, config_from_dict, dump_config, load_config

    from .conftest import TINY

    for bad in ("0", "-2"):
        with pytest.raises(ConfigError, match=rf"^prune.calibration_batches must be an integer >= 1 or null "
                                              rf"\(prune.score_batches\), got {bad}$"):  # fmt: skip
            config_from_dict(TINY, [f"prune.calibration_batches={bad}"])
    with pytest.raises(ConfigError, match=r"^prune.calibration_batches must be an integer"):
        config_from_dict(TINY, ["prune.calibration_batches=abc"])
    assert PruneConfig().calibration_batches is None
    for sets in ([], ["prune.calibration_batches=4"]):
        cfg = config_from_dict(TINY, sets)
        path = tmp_path / "c.yaml"
        path.write_text(dump_config(cfg))
        again = load_config(path)
        assert again == cfg and again.digest() == cfg.digest()
    assert config_from_dict(TINY, []).digest() == config_from_dict(TINY, ["prune.calibration_batches=null"]).digest()


def test_a_bad_calibration_batches_exits_2_in_one_line_writing_nothing(tmp_path, capsys):
    from causalprune.cli import main
    from causalprune.config import config_from_dict, dump_config

    from .conftest import TINY

    path = tmp_path / "c.yaml"
    path.write_text(dump_config(config_from_dict(TINY, ["prune.method=wanda"])))
    out = tmp_path / "r"
    assert main(["run", str(path), "--out", str(out), "--set", "prune.calibration_batches=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prune.calibration_batches must be an integer >= 1 or null" in err[0], err
    assert not out.exists()
