"""Hessian tools against a dense Hessian (torch.autograd.functional.hessian + eigvalsh)."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from causalprune import Mask
from causalprune.analysis.hessian import top_eigenvalues, trace

LOSS = nn.CrossEntropyLoss()


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    return model, x, y


def _dense_hessian(model, x, y, mask=None):
    names = ["0.weight", "2.weight"]
    base = dict(model.named_parameters())
    shapes = [base[n].shape for n in names]
    sizes = [base[n].numel() for n in names]

    def f(flat):
        parts = torch.split(flat, sizes)
        params = dict(base)
        params.update({n: p.view(s) for n, p, s in zip(names, parts, shapes, strict=True)})
        return LOSS(functional_call(model, params, (x,)), y)

    flat = torch.cat([base[n].detach().reshape(-1) for n in names])
    H = torch.autograd.functional.hessian(f, flat)
    if mask is not None:
        keep = torch.cat([mask[n].reshape(-1) for n in names])
        H = H[keep][:, keep]
    return H


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_top_eigenvalues_match_dense(method):
    model, x, y = _setup()
    ref = torch.linalg.eigvalsh(_dense_hessian(model, x, y)).flip(0)
    got = top_eigenvalues(model, LOSS, (x, y), k=3, max_iter=2000, tol=1e-12, method=method)
    for g, r in zip(got, ref[:3], strict=True):
        assert abs(g - float(r)) <= 1e-3 * abs(float(r))


def test_masked_eigenvalues_live_on_the_alive_subspace():
    model, x, y = _setup()
    mask = Mask({"0.weight": torch.rand(6, 4) > 0.5, "2.weight": torch.rand(3, 6) > 0.3})
    mask.apply_(model)
    ref = torch.linalg.eigvalsh(_dense_hessian(model, x, y, mask)).flip(0)
    got = top_eigenvalues(model, LOSS, [(x[:16], y[:16]), (x[16:], y[16:])], k=2, mask=mask, max_iter=500,
                          tol=1e-12)  # fmt: skip
    for g, r in zip(got, ref[:2], strict=True):
        assert abs(g - float(r)) <= 1e-3 * abs(float(r))


def test_hutchinson_trace_matches_dense():
    model, x, y = _setup()
    ref = float(torch.trace(_dense_hessian(model, x, y)))
    est, se = trace(model, LOSS, (x, y), n_samples=400)
    assert abs(est - ref) <= 4 * se + 1e-9
    assert se < 0.2 * abs(ref)
