"""Every scorer against a hand computation on a tiny model; registry-wide end-to-end runs."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from causalprune import Mask, criteria, prunable_parameters, select
from causalprune.experiment import run_experiment
from causalprune.metrics import efficiency
from causalprune.train import SquaredError

LOSS = SquaredError()


def _linear_problem():
    """One Linear layer (3 → 1) with MSE: gradient and Hessian in closed form."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 1))
    x1, x2 = torch.randn(4, 3), torch.randn(6, 3)
    y1, y2 = torch.randn(4), torch.randn(6)
    return model, [(x1, y1), (x2, y2)]


def _grad_w(model, x, y):
    """∂/∂w of mean((x·w + b − y)²) = (2/N) Σ r_i x_i, as a (1, 3) tensor."""
    w, b = model[0].weight.detach(), model[0].bias.detach()
    r = x @ w[0] + b - y
    return (2.0 / len(y) * (r[:, None] * x).sum(0))[None, :]


def test_saliency_scores_match_closed_forms():
    model, data = _linear_problem()
    w = model[0].weight.detach()
    x = torch.cat([d[0] for d in data])
    y = torch.cat([d[1] for d in data])
    g = _grad_w(model, x, y)  # mean-loss gradient over all 10 samples
    g1, g2 = _grad_w(model, *data[0]), _grad_w(model, *data[1])
    H = 2.0 / len(y) * x.T @ x  # Hessian of the mean loss w.r.t. w
    expected = {
        "snip": (g * w).abs(),
        "gradient": g.abs(),
        "taylor": (g1 * w) ** 2 + (g2 * w) ** 2,
        "fisher": 0.5 * w**2 * (g1**2 + g2**2) / 2,
        "grasp": -w * (H @ g[0])[None, :],
    }
    for name, want in expected.items():
        got = criteria.score(name, model, data, LOSS)["0.weight"]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=name)
    assert criteria.get("grasp").higher_is_important is False


def test_synflow_matches_closed_form():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    s = criteria.score("synflow", model, input_shape=(3,))
    W1, W2 = model[0].weight.detach().abs(), model[2].weight.detach().abs()
    b1 = model[0].bias.detach().abs()
    # R = 1ᵀ|W2|(|W1|·1 + |b1|) + Σ|b2|:  ∂R/∂W1_jk = Σ_i |W2_ij|,  ∂R/∂W2_ij = (|W1|·1 + |b1|)_j
    torch.testing.assert_close(s["0.weight"], W1 * W2.sum(0)[:, None])
    torch.testing.assert_close(s["2.weight"], W2 * (W1.sum(1) + b1)[None, :])


def test_iterative_synflow_orders_by_inner_rounds():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    scores = criteria.score("synflow", model, input_shape=(8,), sparsity=0.9, rounds=10)
    mask = select(scores, 0.9)
    assert mask.sparsity() == pytest.approx(0.9, abs=1 / 192)
    assert criteria.score("synflow", model, input_shape=(8,), sparsity=0.9, rounds=10)["0.weight"].equal(
        scores["0.weight"]
    )


def test_magnitude_masks_equal_torch_global_unstructured():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    ours = select(criteria.score("magnitude", model), 0.7)
    ref = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    ref.load_state_dict(model.state_dict())
    torch_prune.global_unstructured([(ref[0], "weight"), (ref[2], "weight")],
                                    pruning_method=torch_prune.L1Unstructured, amount=0.7)  # fmt: skip
    assert torch.equal(ours["0.weight"], ref[0].weight_mask.bool())
    assert torch.equal(ours["2.weight"], ref[2].weight_mask.bool())


def test_score_api_errors():
    model, data = _linear_problem()
    with pytest.raises(ValueError, match="needs data"):
        criteria.score("snip", model, [], LOSS)
    with pytest.raises(ValueError, match="recorded trajectory"):
        criteria.score("causal", model, data, LOSS)
    with pytest.raises(ValueError, match="unknown method 'obd'"):
        criteria.score("obd", model, data, LOSS)
    assert {"snip", "grasp", "synflow", "taylor", "fisher", "gradient", "magnitude", "random", "causal"} <= set(
        criteria.names()
    )


@pytest.mark.parametrize("name", criteria.names("weight"))
def test_every_criterion_one_shot(name, tiny_config, tmp_path):
    s = run_experiment(tiny_config(f"prune.method={name}", "prune.n_iter=1"), tmp_path / "r", quiet=True)
    tol = 1 if criteria.get(name).pool is None else 21  # a per-row pool rounds each of the 42 rows (test_wanda)
    assert abs(s["sparsity_actual"] * s["params_prunable"] - 0.8 * s["params_prunable"]) <= tol
    assert {"size", "size_nz", "compression_ratio", "flops", "flops_nz", "theoretical_speedup"} <= set(s["efficiency"])


def test_efficiency_metrics_hand_computed():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    mask = Mask({"0.weight": torch.arange(30).reshape(5, 6) % 3 == 0, "2.weight": torch.ones(2, 5, dtype=torch.bool)})
    mask.apply_(model)
    e = efficiency(model, (6,))
    size = 6 * 5 + 5 + 5 * 2 + 2
    assert e["size"] == size and e["size_nz"] == size - 20
    assert e["compression_ratio"] == pytest.approx(size / (size - 20))
    assert e["flops"] == 2 * 6 * 5 + 2 * 5 * 2  # flop_counter: 2 per multiply-accumulate
    assert e["flops_nz"] == pytest.approx(2 * 6 * 5 / 3 + 2 * 5 * 2)
    assert e["theoretical_speedup"] == pytest.approx(e["flops"] / e["flops_nz"])
    assert prunable_parameters(model)
