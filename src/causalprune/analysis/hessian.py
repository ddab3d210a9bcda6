"""Top Hessian eigenvalues and trace from Hessian-vector products (PyHessian's methods; docs/analysis.md).

The Hessian is that of the mean loss over `data` (one batch, or an iterable of batches
whose HVPs are averaged, weighted by batch size) with respect to the prunable weights —
restricted to the alive ones when a mask is given (pruned coordinates are held at zero:
the eigenproblem lives on the alive subspace). Power iteration with deflation gives the
top-k eigenvalues (Yao et al. 2020); `method="lanczos"` runs Lanczos with full
reorthogonalisation instead; `trace` is Hutchinson's estimator with Rademacher probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..batching import Batch, as_batches
from ..layout import ParamLayout
from ..masks import Mask, prunable_parameters


class HVP:
    """v ↦ H v for the mean loss over `data`, on the (alive) prunable weights as one flat vector.

    The flat order is `layout`'s (a `ParamLayout` over the mask's tensors, or every prunable
    tensor without a mask): the alive entries of each tensor, row-major, tensor after tensor.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor],
                 data: Batch | Iterable[Batch], mask: Mask | None = None) -> None:  # fmt: skip
        self.model, self.loss_fn = model, loss_fn
        self.batches = as_batches(data)
        params = prunable_parameters(model)  # unique tensors: a tied weight is one block
        mask = mask.canonical(model) if mask is not None else None
        self.names = list(mask) if mask is not None else list(params)
        self.params = [params[n] for n in self.names]
        self.layout = ParamLayout.of(dict(zip(self.names, self.params, strict=True)), alive=mask)
        self.dim = self.layout.d
        self.device = self.params[0].device
        self.n = sum(len(y) for _, y in self.batches)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """Return H v (float64, flat over the alive weights)."""
        vs = self.layout.unflatten_like(v, self.params)  # pruned coordinates are zero
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        was = self.model.training
        self.model.eval()  # a fixed function: BN running statistics, no dropout
        try:
            for x, y in self.batches:
                x, y = x.to(self.device), y.to(self.device)
                loss = self.loss_fn(self.model(x), y)
                grads = torch.autograd.grad(loss, self.params, create_graph=True)
                dot = sum((g * u).sum() for g, u in zip(grads, vs, strict=True))
                hv = torch.autograd.grad(dot, self.params)
                total += self.layout.flatten(hv, dtype=torch.float64) * len(y)
        finally:
            self.model.train(was)
        return total / self.n


def _orthonormalise(v: torch.Tensor, basis: list[torch.Tensor]) -> torch.Tensor:
    for b in basis:
        v = v - (v @ b) * b
    return v / v.norm().clamp_min(1e-300)


def top_eigenvalues(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    data: Batch | Iterable[Batch],
    k: int = 1,
    mask: Mask | None = None,
    max_iter: int = 100,
    tol: float = 1e-6,
    method: str = "power",
    seed: int = 0,
) -> list[float]:
    """Return the k largest (algebraic) Hessian eigenvalues, largest first.

    `power`: power iteration with deflation against the eigenvectors already found, each
    stopped when the Rayleigh quotient changes by less than `tol` (relative). `lanczos`:
    `max_iter` Lanczos steps with full reorthogonalisation, then the tridiagonal's top k.
    """
    hvp = HVP(model, loss_fn, data, mask)
    if k < 1 or k > hvp.dim:
        raise ValueError(f"k must be in [1, {hvp.dim}], got {k}")
    g = torch.Generator(device="cpu").manual_seed(seed)
    if method == "lanczos":
        return _lanczos(hvp, k, max_iter, g)
    if method != "power":
        raise ValueError(f"unknown method {method!r}; valid: power, lanczos")
    # Power iteration finds the eigenvalue of largest *magnitude*; a Hessian away from a
    # minimum has negative ones. Shift by that magnitude ρ so that H + ρI is positive
    # semi-definite and its dominant eigenvalues are the largest algebraic ones of H.
    rho = abs(_power(hvp, [], 0.0, 20, 1e-3, g)[0])
    values: list[float] = []
    vectors: list[torch.Tensor] = []
    for _ in range(k):
        value, v = _power(hvp, vectors, rho, max_iter, tol, g)
        values.append(value - rho)
        vectors.append(v)
    return values


def _power(hvp: HVP, basis: list[torch.Tensor], shift: float, max_iter: int, tol: float,
           g: torch.Generator) -> tuple[float, torch.Tensor]:  # fmt: skip
    """Dominant eigenpair of (H + shift·I) on the complement of `basis`."""
    v = _orthonormalise(torch.randn(hvp.dim, generator=g, dtype=torch.float64).to(hvp.device), basis)
    value = 0.0
    for _ in range(max_iter):
        hv = hvp(v) + shift * v
        new = float(v @ hv)
        hv = _orthonormalise(hv, basis)
        converged = abs(new - value) <= tol * max(abs(new), 1e-30)
        v, value = hv, new
        if converged:
            break
    return value, v


def _lanczos(hvp: HVP, k: int, steps: int, g: torch.Generator) -> list[float]:
    m = min(steps, hvp.dim)
    Q = []
    alphas, betas = [], []
    q = torch.randn(hvp.dim, generator=g, dtype=torch.float64).to(hvp.device)
    q /= q.norm()
    beta, q_prev = 0.0, torch.zeros_like(q)
    for _ in range(m):
        Q.append(q)
        w = hvp(q) - beta * q_prev
        a = float(w @ q)
        w = w - a * q
        for b in Q:  # full reorthogonalisation
            w = w - (w @ b) * b
        alphas.append(a)
        beta = float(w.norm())
        if beta < 1e-12 or len(Q) == m:
            break
        betas.append(beta)
        q_prev, q = q, w / beta
    n = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(betas[: n - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    ev = torch.linalg.eigvalsh(T).flip(0)
    return [float(x) for x in ev[:k]]


def trace(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    data: Batch | Iterable[Batch],
    mask: Mask | None = None,
    n_samples: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    """Return Hutchinson's estimate of tr(H) and its standard error (Rademacher probes)."""
    hvp = HVP(model, loss_fn, data, mask)
    g = torch.Generator(device="cpu").manual_seed(seed)
    draws = []
    for _ in range(n_samples):
        z = (torch.randint(0, 2, (hvp.dim,), generator=g) * 2 - 1).double().to(hvp.device)
        draws.append(float(z @ hvp(z)))
    mean = sum(draws) / len(draws)
    var = sum((d - mean) ** 2 for d in draws) / max(len(draws) - 1, 1)
    return mean, math.sqrt(var / len(draws))
