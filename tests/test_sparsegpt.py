"""SparseGPT: the OBS sweep against dense least-squares oracles, its saliency by hand, runs unstructured and 2:4."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from causalprune import Mask, criteria
from causalprune.cli import main
from causalprune.config import ConfigError, PruneConfig, config_from_dict
from causalprune.criteria.sparsegpt import SparseGPTSettings, inverse_factor, sweep
from causalprune.experiment import run_experiment
from causalprune.plan import WeightPlan, run_round
from causalprune.selection import ROWS, blocks
from causalprune.train import SquaredError

from .conftest import TINY

LOSS = SquaredError()
PERCDAMP = 0.01


def _problem(rows: int = 6, cols: int = 8, tokens: int = 64):
    """Return (W, X, H) with H = 2·XᵀX/n + λI, λ = percdamp · mean(diag), all float64."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    x = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ torch.randn(cols, cols, generator=g,
                                                                                   dtype=torch.float64)  # fmt: skip
    h0 = 2 * x.T @ x / tokens
    lam = PERCDAMP * torch.diagonal(h0).mean()
    return w, x, h0, lam


def _design(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """A with AᵀA = 2·XᵀX/n + λI: ‖A(w − w0)‖² is the damped reconstruction error of one row."""
    n, c = x.shape
    return torch.cat([(2 / n) ** 0.5 * x, lam.sqrt() * torch.eye(c, dtype=x.dtype)])


def test_a_fixed_mask_pruned_first_equals_the_ridge_least_squares_solution():
    """Each row's pruned entries come before its kept ones: the sweep is the exact damped least squares."""
    w, x, h0, lam = _problem()
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for i in range(w.shape[0]):
        pruned[i, : 1 + i % 4] = True  # a prefix of 1..4 columns, different per row
    new, out, _ = sweep(w, inverse_factor(h0, PERCDAMP), pruned)
    assert torch.equal(out, pruned)
    a = _design(x, lam)
    for i in range(w.shape[0]):
        keep = ~pruned[i]
        sol = torch.linalg.lstsq(a[:, keep], (a @ w[i])[:, None]).solution[:, 0]  # min ‖A_K v − A w0‖²
        expected = torch.zeros_like(w[i])
        expected[keep] = sol
        torch.testing.assert_close(new[i], expected, rtol=1e-9, atol=1e-10)


def test_any_fixed_mask_equals_the_sequential_least_squares_oracle():
    """In general each pruned column j fixes columns ≤ j and re-solves the later ones (OBS, one at a time)."""
    w, x, h0, lam = _problem()
    g = torch.Generator().manual_seed(1)
    pruned = torch.rand(w.shape, generator=g) < 0.5
    new, _, _ = sweep(w, inverse_factor(h0, PERCDAMP), pruned)
    a = _design(x, lam)
    for i in range(w.shape[0]):
        v = w[i].clone()
        for j in torch.nonzero(pruned[i]).flatten().tolist():
            v[j] = 0.0
            fixed = a[:, : j + 1] @ (v[: j + 1] - w[i, : j + 1])
            if j + 1 < len(v):
                d = torch.linalg.lstsq(a[:, j + 1:], -fixed[:, None]).solution[:, 0]
                v[j + 1:] = w[i, j + 1:] + d
        torch.testing.assert_close(new[i], v, rtol=1e-9, atol=1e-10)
    # the damped error never beats the one-shot optimum with the same mask, and is far below plain zeroing
    err = lambda m: float(((a @ (m - w).T) ** 2).sum())  # noqa: E731
    assert err(new) < err(torch.where(pruned, 0.0, w))


def test_scores_of_the_first_column_are_w_squared_over_the_inverse_hessian_diagonal():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6))
    data = [(torch.randn(40, 8), torch.zeros(40, 6)), (torch.randn(24, 8), torch.zeros(24, 6))]
    x = torch.cat([b for b, _ in data]).double()
    h = 2 * x.T @ x / len(x)
    h += PERCDAMP * torch.diagonal(h).mean() * torch.eye(8, dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    w = model[0].weight.detach().double()
    expected = w[:, 0] ** 2 / hinv[0, 0]  # OBS saliency w²/[H⁻¹]_00 (= w² / U_00², U the factor of H⁻¹)
    dense = criteria.score("sparsegpt", model, data, LOSS)["0.weight"].double()  # no target: dense saliency
    torch.testing.assert_close(dense[:, 0], expected, rtol=1e-5, atol=1e-7)
    plan = WeightPlan.build(model, PruneConfig(method="sparsegpt", sparsity=0.5))
    out = run_round(plan, criteria.get("sparsegpt"), model, Mask.ones(model), 1, 0.5, seed=0, data=data, loss_fn=LOSS)
    torch.testing.assert_close(out.scored.tie_break["0.weight"][:, 0].double(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("pattern", "pool"), [(None, ROWS), ("2:4", blocks(4))])
def test_a_round_selects_the_sweeps_mask_and_writes_its_weights(pattern, pool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    data = [(torch.randn(32, 8), torch.zeros(32, 4)) for _ in range(2)]
    crit = criteria.get("sparsegpt")
    assert crit.pool is ROWS and crit.calibrates
    plan = WeightPlan.build(model, PruneConfig(method="sparsegpt", sparsity=0.5 if pattern is None else None,
                                               pattern=pattern))  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = run_round(plan, crit, model, Mask.ones(model), 1, 0.5, seed=0, data=data, loss_fn=LOSS)
    for name in ("0.weight", "2.weight"):
        keep = out.mask[name]
        assert torch.equal(keep, out.scored.scores[name] > 0)  # the plan's selection is the sweep's mask
        units = pool.units(name, keep.shape).broadcast_to(keep.shape)
        for u in units.unique():  # every unit (row, block of 4) prunes half its entries
            assert int((~keep)[units == u].sum()) == int((units == u).sum()) // 2
        p = dict(model.named_parameters())[name].detach()
        torch.testing.assert_close(p[keep], out.scored.updates[name][keep])  # reconstructed weights written
        assert not torch.equal(p[keep], before[name][keep])


def test_a_second_round_keeps_the_first_rounds_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    data = [(torch.randn(32, 8), torch.zeros(32, 4))]
    plan = WeightPlan.build(model, PruneConfig(method="sparsegpt", sparsity=0.75))
    crit = criteria.get("sparsegpt")
    first = run_round(plan, crit, model, Mask.ones(model), 1, 0.25, seed=0, data=data, loss_fn=LOSS).mask
    first.apply_(model)
    second = run_round(plan, crit, model, first, 2, 0.75, seed=0, data=data, loss_fn=LOSS).mask
    assert not (second["0.weight"] & ~first["0.weight"]).any()
    assert (~second["0.weight"]).sum(1).tolist() == [6] * 4


def test_refuses_a_layer_it_cannot_read_and_bad_settings_in_one_line():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match=r"^sparsegpt cannot collect the inputs of layer '0' \(Conv2d\); valid: "):
        criteria.score("sparsegpt", model, [(torch.randn(1, 4, 5, 5), torch.zeros(1))], LOSS)
    with pytest.raises(ConfigError, match=r"^sparsegpt.percdamp must be > 0, got 0$"):
        SparseGPTSettings(percdamp=0)
    with pytest.raises(ConfigError, match=r"^sparsegpt.blocksize must be > 0, got 0$"):
        config_from_dict(TINY, ["sparsegpt.blocksize=0"])


def test_conv_weights_are_swept_as_unfolded_matrices():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1))
    data = [(torch.randn(4, 2, 6, 6), torch.zeros(4))]
    plan = WeightPlan.build(model, PruneConfig(method="sparsegpt", sparsity=0.5))
    out = run_round(plan, criteria.get("sparsegpt"), model, Mask.ones(model), 1, 0.5, seed=0, data=data,
                    loss_fn=LOSS)  # fmt: skip
    assert (~out.mask["0.weight"]).reshape(4, -1).sum(1).tolist() == [9] * 4


def test_end_to_end_unstructured_run(tiny_config, tmp_path):
    s = run_experiment(tiny_config("prune.method=sparsegpt", "prune.calibration_batches=2"), tmp_path / "r",
                       quiet=True)  # fmt: skip
    # mlp 64 → 32 → 10 at 0.8 per row: 32 rows prune round(51.2) = 51, 10 rows prune round(25.6) = 26
    assert s["params_prunable"] == 64 * 32 + 32 * 10
    assert round(s["sparsity_actual"] * s["params_prunable"]) == 32 * 51 + 10 * 26


def test_end_to_end_two_four_run_holds_the_pattern(tmp_path):
    cfg = config_from_dict(TINY, ["prune.method=sparsegpt", "prune.sparsity=null", "prune.pattern='2:4'",
                                  "prune.calibration_batches=2"])  # fmt: skip
    s = run_experiment(cfg, tmp_path / "r", quiet=True)
    assert s["sparsity_actual"] == pytest.approx(0.5)
    mask = Mask.load(tmp_path / "r" / "level_2" / "mask.pt")
    for m in mask.values():
        assert ((m.reshape(m.shape[0], -1, 4)).sum(-1) == 2).all()


def test_list_shows_it(capsys):
    assert main(["list"]) == 0
    assert "sparsegpt" in capsys.readouterr().out


def test_causal_pruner_prunes_every_row_alike_and_keeps_the_reconstruction():
    from causalprune import CausalPruner

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    batches = [(torch.randn(8, 8), torch.randint(0, 3, (8,))) for _ in range(3)]
    pruner = CausalPruner(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), sparsity=0.5,
                          n_iter=2, method="sparsegpt", score_batches=2)  # fmt: skip
    while not pruner.done:
        for x, y in batches:
            pruner.step(x, y)
        pruner.end_epoch()
    assert (~pruner.mask["0.weight"]).sum(1).tolist() == [4] * 5  # round(0.5·8) per row
    assert (~pruner.mask["2.weight"]).sum(1).tolist() == [2] * 3  # round(0.5·5) = 2 (half to even)
    assert (model[0].weight[~pruner.mask["0.weight"]] == 0).all()


def test_grids_vary_only_the_calibrating_methods_along_calibration_batches():
    varied = sorted(n for n in criteria.names() if criteria.get(n).reads_key("prune.calibration_batches"))
    assert varied == ["sparsegpt", "wanda"]
    assert criteria.get("sparsegpt").reads_key("sparsegpt.percdamp")
    assert not criteria.get("wanda").reads_key("sparsegpt.percdamp")


@pytest.mark.parametrize(("method", "kept"), [("wanda", 3), ("snip", 2)])
def test_causal_pruner_keeps_calibration_batches_for_the_calibrating_methods_only(method, kept):
    from causalprune import CausalPruner

    model = nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    pruner = CausalPruner(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), sparsity=0.5,
                          method=method, score_batches=2, calibration_batches=3)  # fmt: skip
    for _ in range(5):
        pruner.step(torch.randn(4, 8), torch.randint(0, 3, (4,)))
    assert len(pruner._recent) == kept
    with pytest.raises(Exception, match="calibration_batches"):
        CausalPruner(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), sparsity=0.5,
                     method="wanda", calibration_batches=0)  # fmt: skip
