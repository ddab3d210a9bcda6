"""Lasso solvers against independent oracles (scikit-learn, numpy pinv)."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso

from causalprune import lasso


def _trajectory_like(T, d, seed=0, dtype=torch.float32):
    """Positive, heavy-tailed columns (squared updates) and ΔL ≈ −Σ x plus noise."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(0.5 * torch.randn(d, generator=g))
    X = (torch.randn(T, d, generator=g) * scale) ** 2
    w = -torch.rand(d, generator=g) * (torch.rand(d, generator=g) < 0.05)
    y = X @ w + 0.1 * torch.randn(T, generator=g)
    return X.to(dtype), y


def _solve_checked(*args, **kwargs):
    """`lasso.solve` for cd/fista: it warns (naming the solver and the remedy) exactly when it does not converge."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = lasso.solve(*args, **kwargs)
    msgs = [str(w.message) for w in caught if issubclass(w.category, lasso.ConvergenceWarning)]
    if res.converged:
        assert not msgs
    else:
        assert len(msgs) == 1 and f"{res.solver!r}" in msgs[0] and "max_iter" in msgs[0] and "gap" in msgs[0]
    return res


def _sklearn_objective(X, y, alpha):
    Xn, yn = X.double().numpy(), y.double().numpy()
    sk = Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=200_000).fit(Xn, yn)
    r = yn - Xn @ sk.coef_
    return 0.5 * r @ r / len(yn) + alpha * np.abs(sk.coef_).sum(), sk.coef_


@pytest.mark.parametrize("shape", [(40, 600), (300, 50)], ids=["d>T", "T>d"])
@pytest.mark.parametrize("solver", ["cd", "fista"])
def test_reaches_sklearn_objective(shape, solver):
    X, y = _trajectory_like(*shape)
    alpha = 0.01 * float((X.T @ y).abs().max()) / shape[0]
    ref, _ = _sklearn_objective(X, y, alpha)
    res = _solve_checked(X, y, alpha=alpha, solver=solver, tol=1e-8, max_iter=None if solver == "cd" else 5000)
    assert res.objective <= ref * (1 + 1e-6)
    assert res.alpha == alpha and res.solver == solver
    # The objective the result reports is the true one.
    r = y.double() - X.double() @ res.coef.double()
    true_objective = float(0.5 * r @ r / shape[0] + alpha * res.coef.double().abs().sum())
    assert res.objective == pytest.approx(true_objective, rel=1e-5)


def test_cd_certifies_convergence_and_kkt():
    X, y = _trajectory_like(60, 2000, seed=1)
    res = lasso.solve(X, y, alpha_ratio=0.05, solver="cd", tol=1e-8)
    assert res.converged and res.gap <= 1e-8 * res.objective
    assert res.kkt.shape == (2000,) and float(res.kkt.max()) <= 1.0 + 1e-6
    nz = res.coef != 0
    assert torch.allclose(res.kkt[nz], torch.ones(int(nz.sum())), atol=1e-3)  # |x_jᵀr| = Tα on the support
    assert int(nz.sum()) <= 60


def test_alpha_ratio_and_alpha_max():
    X, y = _trajectory_like(30, 200)
    amax = float((X.double().T @ y.double()).abs().max()) / 30
    res = lasso.solve(X, y, alpha_ratio=1.0)
    assert res.alpha == pytest.approx(amax, rel=1e-5)
    assert torch.count_nonzero(res.coef) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_storage_matches_float32(dtype):
    X, y = _trajectory_like(40, 500, seed=2)
    Xl = X.to(dtype)
    alpha = 0.02 * float((X.T @ y).abs().max()) / 40
    ref, _ = _sklearn_objective(Xl.float(), y, alpha)  # the oracle sees the rounded values
    for solver in ("cd", "fista"):
        res = _solve_checked(Xl, y, alpha=alpha, solver=solver, tol=1e-8, max_iter=None if solver == "cd" else 5000)
        assert res.objective <= ref * (1 + 1e-6)


def test_column_major_view_and_blocks_equal_dense():
    X, y = _trajectory_like(30, 300, seed=3)
    cm = X.T.contiguous().T  # (T, d) view of a (d, T) buffer, as the recorder stores it
    a = lasso.solve(X, y, alpha_ratio=0.05, tol=1e-10)
    b = lasso.solve(cm, y, alpha_ratio=0.05, tol=1e-10)
    c = lasso.solve([cm[:, :100], cm[:, 100:]], y, alpha_ratio=0.05, tol=1e-10)
    assert torch.allclose(a.coef, b.coef, atol=1e-5) and torch.allclose(a.coef, c.coef, atol=1e-5)


def test_minnorm_is_the_minimum_norm_least_squares_solution():
    X, y = _trajectory_like(20, 300, seed=4)
    res = lasso.solve(X, y, solver="minnorm")
    ref = np.linalg.pinv(X.double().numpy()) @ y.double().numpy()
    np.testing.assert_allclose(res.coef.double().numpy(), ref, rtol=1e-3, atol=1e-6 * np.abs(ref).max())


def test_unpenalized_regressors_match_sklearn_on_projected_problem():
    X, y = _trajectory_like(80, 400, seed=5)
    Z = torch.randn(80, 2, dtype=torch.float64)
    y = y + (Z @ torch.tensor([0.7, -0.3], dtype=torch.float64)).float()
    alpha = 0.02
    # Oracle: profile c out by hand with numpy, then scikit-learn on (PX, Py).
    Zn = Z.numpy()
    P = np.eye(80) - Zn @ np.linalg.pinv(Zn)
    PX, Py = P @ X.double().numpy(), P @ y.double().numpy()
    sk = Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=200_000).fit(PX, Py)
    c_ref = np.linalg.lstsq(Zn, y.double().numpy() - X.double().numpy() @ sk.coef_, rcond=None)[0]
    r = Py - PX @ sk.coef_
    ref_obj = 0.5 * r @ r / 80 + alpha * np.abs(sk.coef_).sum()
    # FISTA is first-order and positive columns make this design ill-conditioned: it gets
    # within 2e-5 in 8000 steps, where cd is exact.
    for solver, rel, iters in (("cd", 1e-6, None), ("fista", 2e-5, 8000)):
        res = _solve_checked(X, y, alpha=alpha, solver=solver, unpenalized=Z, tol=1e-9, max_iter=iters)
        assert res.objective <= ref_obj * (1 + rel)
        # c is the least-squares fit of Z to what γ leaves, and close to the oracle's.
        c_own = np.linalg.lstsq(Zn, y.double().numpy() - X.double().numpy() @ res.coef.double().numpy(), rcond=None)[0]
        np.testing.assert_allclose(res.unpenalized.double().numpy(), c_own, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(res.unpenalized.double().numpy(), c_ref, rtol=2e-2)


def test_sgd_paper_solver_descends_and_authors_variant_runs():
    X, y = _trajectory_like(64, 300, seed=6)
    X = X / X.norm(dim=1).max()  # the paper's fixed lr 0.1 is stable for ‖x_t‖ ≤ 1
    zero_obj = 0.5 * float(y.double() @ y.double()) / 64
    res = lasso.solve(X, y, alpha_ratio=0.01, solver="sgd")
    assert res.solver == "sgd" and 1 <= res.n_iter <= 50
    assert res.objective < zero_obj
    a = lasso.solve(X, y, solver="sgd", variant="authors")
    assert a.alpha == pytest.approx(1e-3 / 300) and a.n_iter <= 30


def test_sgd_divergence_is_reported():
    X, y = _trajectory_like(32, 100, seed=7)
    with pytest.raises(RuntimeError, match="diverged"):
        lasso.solve(X * 1e6, y, alpha_ratio=0.01, solver="sgd")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha must be > 0"),
        ({"alpha": -1.0}, "alpha must be > 0"),
        ({"alpha": 1.0, "alpha_ratio": 0.1}, "not both"),
        ({"solver": "lars"}, "valid: auto, cd, fista, sgd, minnorm"),
        ({"alpha_ratio": 0.1, "bogus": 1}, r"unknown option\(s\) bogus for solver 'cd'; valid: working_set"),
        ({"alpha_ratio": 0.1, "solver": "cd", "lr": 0.1}, r"unknown option\(s\) lr for solver 'cd'"),
        ({"solver": "minnorm", "lr": 0.1, "seed": 1}, r"option\(s\) lr, seed for solver 'minnorm'; valid: ridge"),
    ],
)
def test_bad_arguments(kwargs, match):
    X, y = _trajectory_like(10, 20)
    with pytest.raises(ValueError, match=match):
        lasso.solve(X, y, **kwargs)


def test_bad_data():
    X, y = _trajectory_like(10, 20)
    with pytest.raises(ValueError, match="empty trajectory"):
        lasso.solve(X[:0], y[:0], alpha=0.1)
    y_nan = y.clone()
    y_nan[3] = float("nan")
    with pytest.raises(ValueError, match="row 3"):
        lasso.solve(X, y_nan, alpha=0.1)
    X_nan = X.clone()
    X_nan[2, 7] = float("inf")
    with pytest.raises(ValueError, match="column 7"):
        lasso.solve(X_nan, y, alpha=0.1)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        lasso.solve(X.double(), y, alpha=0.1)


@pytest.mark.parametrize("seed", range(5))
def test_feature_sign_polish_is_exact(seed):
    """The working-set polish reaches scikit-learn's optimum from a rough start (or declines)."""
    from causalprune.lasso import _polish

    X, y = _trajectory_like(30, 80, seed=seed)
    Xn, yn = X.double().numpy(), y.double().numpy()
    alpha = 0.02 * np.abs(Xn.T @ yn).max() / 30
    ref, sk_coef = _sklearn_objective(X, y, alpha)
    rough = np.where(np.abs(sk_coef) > 0, sk_coef * 0.5, 0.0)  # right support, wrong values
    rough[np.argmin(np.abs(Xn.T @ yn))] = 1e-3  # plus a wrong entry
    for G, columns in ((Xn.T @ Xn, None), (None, np.asfortranarray(Xn))):  # the Gram, or applied through X
        out = _polish(G, Xn.T @ yn, rough, 30 * alpha, X=columns)
        assert out is not None
        r = yn - Xn @ out
        assert 0.5 * r @ r / 30 + alpha * np.abs(out).sum() <= ref * (1 + 1e-9)


def test_cd_reads_a_large_working_set_through_its_columns_not_its_gram(monkeypatch):
    """A working set wider than T (and than GRAM_BYTES) is solved on its (T × w) columns: no w × w Gram."""
    import sklearn.linear_model

    X, y = _trajectory_like(30, 900, seed=11)
    alpha = 0.01 * float((X.T @ y).abs().max()) / 30
    ref, _ = _sklearn_objective(X, y, alpha)
    calls = []  # (w, precompute given as a matrix)
    enet_path = sklearn.linear_model.enet_path

    def spy(Xw, yv, **kw):
        calls.append((Xw.shape[1], isinstance(kw["precompute"], np.ndarray)))
        return enet_path(Xw, yv, **kw)

    monkeypatch.setattr(sklearn.linear_model, "enet_path", spy)
    monkeypatch.setattr(lasso, "GRAM_BYTES", 8 * 100 * 100, raising=False)  # a Gram of up to 100 × 100 columns
    res = _solve_checked(X, y, alpha=alpha, solver="cd", tol=1e-8, working_set=200)
    assert calls and calls[0][0] == 200
    assert all(gram == (w <= 100) for w, gram in calls), calls
    assert res.converged and res.objective <= ref * (1 + 1e-6)


def test_unconverged_cd_and_fista_warn():
    X, y = _trajectory_like(40, 600)
    fista_stopped = r"'fista' stopped after 5 iterations .*duality gap .*raise max_iter"
    with pytest.warns(lasso.ConvergenceWarning, match=fista_stopped):
        res = lasso.solve(X, y, alpha_ratio=0.01, solver="fista", max_iter=5)
    assert not res.converged and res.n_iter == 5
    with pytest.warns(lasso.ConvergenceWarning, match=r"'cd' stopped after 2 iterations"):
        res = lasso.solve(X, y, alpha_ratio=0.01, solver="cd", tol=1e-300, max_iter=2)
    assert not res.converged
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        lasso.solve(X, y, alpha_ratio=0.01, solver="cd", max_iter=0)


def test_solver_registry(monkeypatch):
    assert lasso.SOLVERS == ("auto", "cd", "fista", "sgd", "minnorm")
    assert lasso.solver_options("sgd") == {
        "lr": 0.1, "batch_size": 16, "max_epochs": 50, "patience": 5, "variant": "paper", "seed": 0
    }  # fmt: skip
    assert lasso.solver_options("minnorm") == {"ridge": 1e-10}
    monkeypatch.setattr(lasso, "_REGISTRY", dict(lasso._REGISTRY))
    monkeypatch.setattr(lasso, "SOLVERS", lasso.SOLVERS)

    @lasso.register_solver("scaled_xty")
    def _scaled_xty(D, alpha, tol, max_iter, *, scale=1.0):
        return D.output(scale * D.xty().double(), alpha, 1, True)

    assert lasso.SOLVERS[-1] == "scaled_xty"
    X, y = _trajectory_like(10, 20)
    res = lasso.solve(X, y, alpha_ratio=0.1, solver="scaled_xty", scale=1e-3)
    assert res.solver == "scaled_xty" and torch.allclose(res.coef, 1e-3 * (X.double().T @ y.double()).float())
    with pytest.raises(ValueError, match=r"unknown option\(s\) lr for solver 'scaled_xty'; valid: scale"):
        lasso.solve(X, y, alpha_ratio=0.1, solver="scaled_xty", lr=1.0)
    with pytest.raises(ValueError, match="taken"):
        lasso.register_solver("cd")
    with pytest.raises(TypeError, match="need defaults"):
        lasso.register_solver("bad")(lambda D, alpha, tol, max_iter, *, x: None)
    with pytest.raises(TypeError, match=r"must take \(D, alpha, tol, max_iter"):
        lasso.register_solver("bad2")(lambda D, alpha, **kw: None)


def test_columns_and_blocked_products(monkeypatch):
    X, y = _trajectory_like(12, 500, seed=8)
    cm = X.T.contiguous().T
    D = lasso.Design([cm[:, :200], cm[:, 200:]], y)
    assert torch.equal(D.columns(torch.arange(500)), X.double())
    idx = torch.tensor([499, 3, 200, 199, 201])
    assert torch.equal(D.columns(idx), X.double()[:, idx])
    # (PX)[:, idx]ᵀr a block of 64 columns at a time: the same float64 numbers as one gather.
    monkeypatch.setattr(lasso.Design, "BLOCK_BYTES", 1)
    D = lasso.Design([cm[:, :200], cm[:, 200:]], y)
    assert D.block_columns == 64
    r = torch.randn(12, dtype=torch.float64)
    for idx in (torch.randperm(500)[:300], torch.arange(500), torch.arange(150, 420)):
        assert torch.equal(D.exact_rmatvec(idx, r), D.columns(idx).T @ r)


def test_dense_solutions_are_evaluated_in_blocks_with_identical_numbers(monkeypatch):
    """A dense fit is scored a block of columns at a time; with no Z the numbers are bit-identical."""
    X, y = _trajectory_like(20, 700, seed=9)
    monkeypatch.setattr(lasso.Design, "EXACT_SUPPORT", 10)  # 700 non-zeros: the dense path
    Z = torch.randn(20, 2, dtype=torch.float64)
    ref = lasso.solve(X, y, solver="minnorm", alpha_ratio=0.01)
    ref_z = lasso.solve(X, y, solver="minnorm", alpha_ratio=0.01, unpenalized=Z)
    gathered = []  # sizes of the float64 column blocks taken from X
    columns, column_range = lasso.Design.columns, lasso.Design._column_range

    def spy_columns(self, idx):
        gathered.append(len(idx))
        return columns(self, idx)

    def spy_range(self, start, stop):
        gathered.append(stop - start)
        return column_range(self, start, stop)

    monkeypatch.setattr(lasso.Design, "columns", spy_columns)
    monkeypatch.setattr(lasso.Design, "_column_range", spy_range)
    monkeypatch.setattr(lasso.Design, "BLOCK_BYTES", 1)  # 64 columns per block
    res = lasso.solve(X, y, solver="minnorm", alpha_ratio=0.01)
    assert gathered and max(gathered) <= 64 and sum(gathered) >= 700
    assert int((res.coef != 0).sum()) == 700
    for f in ("coef", "kkt"):
        assert torch.equal(getattr(res, f), getattr(ref, f))
    assert (res.objective, res.gap) == (ref.objective, ref.gap)
    # With Z the projection of a block and the float64 sum Xγ may round differently in the last bits.
    res_z = lasso.solve(X, y, solver="minnorm", alpha_ratio=0.01, unpenalized=Z)
    assert torch.equal(res_z.coef, ref_z.coef)
    assert torch.allclose(res_z.unpenalized, ref_z.unpenalized, rtol=1e-6)
    assert res_z.objective == pytest.approx(ref_z.objective, rel=1e-12)


def test_non_converged_solve_is_one_warning_line_under_the_cli_and_a_level_event_field(tmp_path, capsys,
                                                                                      monkeypatch):  # fmt: skip
    import dataclasses
    import json

    import yaml

    from causalprune.cli import main

    from .conftest import TINY

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "r"
    # fista stopped after 3 iterations cannot meet its duality-gap criterion
    entry = lasso._REGISTRY["fista"]
    capped = dataclasses.replace(entry, fn=lambda D, alpha, tol, max_iter, **o: entry.fn(D, alpha, tol, 3, **o))
    monkeypatch.setitem(lasso._REGISTRY, "fista", capped)
    assert main(["run", str(cfg), "--out", str(out), "--set", "causal.solver=fista", "--set", "prune.n_iter=1"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "fista" in line]
    assert err and all(line.startswith("causalprune: warning: Lasso solver 'fista' stopped") for line in err), err
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    level = next(e for e in events if e["event"] == "level")
    assert level["solver"] == "fista" and level["converged"] is False


@pytest.mark.parametrize("largest", [True, False])
def test_chunked_selection_matches_a_full_sort_with_ties_by_position(monkeypatch, largest):
    """`_select` reads a vector in chunks; its choice is the full stable sort's, ties to the lower index."""
    g = torch.Generator().manual_seed(0)
    key = torch.randint(-6, 7, (1000,), generator=g).float()  # many ties, across every chunk boundary
    key[[5, 700]] = math.inf
    key[[6, 701]] = -math.inf
    monkeypatch.setattr(lasso, "CHUNK", 64)
    for absolute in (False, True):
        ranked = key.abs() if absolute else key
        order = torch.sort(-ranked if largest else ranked, stable=True).indices  # ties: lower index first
        for k in (1, 3, 50, 64, 129, 400, 1000, 1200):
            got = lasso._select(key, k, largest=largest, absolute=absolute)
            assert torch.equal(got, order[:k].sort().values), (absolute, k)


@pytest.mark.parametrize("solver", ["cd", "fista"])
def test_a_local_comm_is_not_sharded_and_solves_exactly_like_no_comm(solver):
    # Design(comm=LOCAL) used to count as sharded and take the float32 residual path (issue 20, point 7).
    X, y = _trajectory_like(40, 300, seed=3)
    D = lasso.Design(X, y, comm=lasso.LOCAL)
    assert not D.sharded
    coef = torch.zeros(300, dtype=torch.float64)
    coef[[4, 17, 250]] = torch.tensor([-0.5, -0.25, -1.0], dtype=torch.float64)
    r, _, cols = D.residual(coef)
    assert cols is not None  # the exact float64 residual from the support's columns
    exact = y.double() - X.double()[:, [4, 17, 250]] @ coef[[4, 17, 250]]
    assert torch.equal(r, lasso.Design(X, y).residual(coef)[0]) and torch.allclose(r, exact, rtol=0, atol=1e-12)
    plain = lasso.solve(X, y, alpha_ratio=0.05, solver=solver)
    local = lasso.solve(X, y, alpha_ratio=0.05, solver=solver, comm=lasso.LOCAL)
    assert torch.equal(plain.coef, local.coef) and torch.equal(plain.kkt, local.kkt)
    assert (plain.objective, plain.gap, plain.n_iter) == (local.objective, local.gap, local.n_iter)
