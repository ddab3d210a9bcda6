"""Flatness (eq. 16–17) on a quadratic model against its closed form."""

import math

import pytest
import torch
from torch import nn

from causalprune import Mask
from causalprune.analysis.flatness import flatness


def _quadratic(n=50):
    """out = w (a bias-free Linear on input 1), loss = ½‖out‖²: L(w) = ½‖w‖²."""
    model = nn.Sequential(nn.Linear(1, n, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.linspace(-1, 1, n)[:, None])
    loss = lambda out, _y: 0.5 * (out**2).sum()  # noqa: E731
    return model, loss, (torch.ones(1, 1), torch.zeros(1))


def test_flatness_matches_the_quadratic_closed_form(tmp_path):
    model, loss, batch = _quadratic()
    mask = Mask({"0.weight": torch.arange(50)[:, None] % 2 == 0})  # 25 alive
    mask.apply_(model)
    w0 = model[0].weight.detach().clone()
    base = 0.5 * float((w0**2).sum())
    res = flatness(model, loss, batch, sigmas=[0.05, 0.2], draws=4000, mask=mask, out=tmp_path)
    assert res["base_loss"] == pytest.approx(base)
    w2 = float((w0**2).sum())
    for sigma, inc, rel in zip(res["sigma"], res["mean_increase"], res["relative_loss"], strict=True):
        # L(w + σε) − L(w) = σ wᵀε + ½σ²‖ε_alive‖²: mean ½σ²·25 (25 alive weights; pruned ones stay
        # zero), variance σ²‖w‖² + ½σ⁴·25.
        se = math.sqrt((sigma**2 * w2 + 0.5 * sigma**4 * 25) / 4000)
        assert abs(inc - 0.5 * sigma**2 * 25) <= 4 * se
        assert rel <= math.log(1 + inc / base) + 1e-12  # Jensen: E log ≤ log E
    assert torch.equal(model[0].weight, w0)  # restored exactly
    assert (tmp_path / "flatness.json").exists()
    assert all(m >= 0 for m in res["max_loss"])
