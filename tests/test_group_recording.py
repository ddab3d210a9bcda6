"""Grouped recording (structured pruning): the recorder stores x̃_g = Σ_{k∈g} x̃_k, a (T × G) design."""

import copy

import pytest
import torch
from torch import nn

from causalprune import Mask, TrajectoryRecorder, lasso
from causalprune.groups import channel_groups
from causalprune.models import create_model

LOSS = nn.CrossEntropyLoss()
T = 7
# name → (constructor kwargs, input shape of one batch)
BUILD = {
    "mlp": ({"in_features": 20, "widths": (16, 12)}, (16, 20)),
    "cnn1d": ({"length": 40, "widths": (8, 8, 8)}, (16, 40)),
}


def _setup(name, prune=False):
    """A seeded model, its channel groups, and a mask (all alive, or a third of the groups removed)."""
    kwargs, shape = BUILD[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, **kwargs)
    cg = channel_groups(model, torch.randn(2, *shape[1:]))
    mask = Mask.ones(model)
    if prune:
        keep = torch.rand(cg.G, generator=torch.Generator().manual_seed(3)) >= 1 / 3
        for idx in cg.layers.values():
            keep[idx[0]] = True  # never empty a layer
        mask = cg.group_mask(keep)
    return model, cg, mask, shape


def _batches(shape, n=T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g), torch.randint(0, 4, (shape[0],), generator=g)) for _ in range(n)]


def _record(model, attach, shape, n=T, momentum=0.0, **kwargs):
    """Train a copy of `model` for `n` SGD steps from a fixed RNG state and return (recorder, trajectory)."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    attach.attach(model, opt)
    rec = TrajectoryRecorder(model, LOSS, opt, **kwargs)
    torch.manual_seed(5)
    for x, y in _batches(shape, n):
        rec.step(x, y)
    return rec, rec.trajectory()


def _restrict(traj, names):
    """The weight-level X's columns of the parameters `names` (in that order)."""
    parts = []
    for n in names:
        a, b = traj.layout.span(traj.param_names.index(n))
        parts.append(traj.X[:, a:b])
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("prune", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("name", list(BUILD))
def test_grouped_X_is_the_group_sum_of_the_weight_level_X(name, prune):
    model, cg, mask, shape = _setup(name, prune)
    layout = cg.layout(mask)
    assert layout.grouped and layout.n_columns == cg.G
    _, weights = _record(model, mask, shape, mask=mask)
    rec, groups = _record(model, mask, shape, layout=layout)
    assert groups.X.shape == (T, cg.G) and groups.n_columns == cg.G
    assert groups.layout is layout and groups.param_names == cg.names
    assert rec.d == layout.d and rec.n_columns == cg.G
    torch.testing.assert_close(groups.X, layout.to_columns(_restrict(weights, layout.names)), rtol=1e-5, atol=0)
    assert torch.equal(groups.y, weights.y)
    assert torch.equal(groups.loss_before, weights.loss_before) and groups.scale == weights.scale
    assert groups.X.stride()[0] == 1  # a view of the column-major (G, rows) buffer
    if prune:  # a removed group has no alive entry: its column is zero
        dead = layout.to_columns(torch.ones(layout.d)) == 0
        assert dead.any() and torch.all(groups.X[:, dead] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_is_T_by_G(dtype):
    model, cg, mask, shape = _setup("cnn1d")
    layout = cg.layout(mask)
    size = torch.tensor([], dtype=dtype).element_size()
    rec, traj = _record(model, mask, shape, layout=layout, capacity=T, dtype=dtype)
    assert rec.nbytes() == T * cg.G * size  # exact: one chunk of T rows
    assert traj.X.dtype == dtype
    weights, _ = _record(model, mask, shape, capacity=T, dtype=dtype)
    assert weights.nbytes() == T * Mask.ones(model).count_alive() * size  # what the weight-level run stores
    chunked, _ = _record(model, mask, shape, layout=layout, chunk_rows=4, dtype=dtype)
    assert chunked.nbytes() == T * cg.G * size  # chunks of 4 rows, consolidated into (G, T) by trajectory()
    if dtype != torch.float32:  # summed in float32, then stored in the low precision
        _, ref = _record(model, mask, shape, layout=layout)
        torch.testing.assert_close(traj.X.float(), ref.X, rtol=1e-2, atol=0)


def test_scores_give_every_entry_its_groups_value():
    model, cg, mask, shape = _setup("mlp", prune=True)
    layout = cg.layout(mask)
    _, traj = _record(model, mask, shape, layout=layout)
    col = cg.column_tensors()
    coef = -(torch.arange(cg.G, dtype=torch.float32) + 1)  # signs: scores are |γ_g|
    assert torch.equal(traj.group_scores(coef), coef.abs())
    scores = traj.scores(coef)
    assert list(scores) == cg.names
    for n in cg.names:
        alive = mask[n]
        assert scores[n].shape == col[n].shape
        assert torch.equal(scores[n][alive], (col[n][alive] + 1).float())
        assert torch.all(scores[n][~alive] == 0)  # pruned entries get the fill
    first, alive = cg.names[0], mask[cg.names[0]]
    assert torch.equal(traj.unflatten(coef)[first][alive], -(col[first][alive] + 1.0))
    # Two blocks (momentum model): sqrt(γ₀² + γ₁²) and max for combine.
    two = torch.cat([coef, torch.zeros(cg.G)])
    assert torch.equal(traj.group_scores(two), coef.abs())
    full = traj.combine(torch.cat([torch.zeros(cg.G), coef.abs()]))
    assert torch.equal(full[cg.names[0]], scores[cg.names[0]])
    with pytest.raises(ValueError, match=f"expected a \\({cg.G},\\) per-group vector"):
        traj.unflatten(torch.zeros(layout.d))


def test_lasso_runs_on_the_grouped_design():
    model, cg, mask, shape = _setup("cnn1d")
    _, traj = _record(model, mask, shape, n=12, layout=cg.layout(mask))
    res = lasso.solve(traj.X, traj.y, alpha_ratio=0.05)
    assert res.coef.shape == (cg.G,)
    scores = traj.scores(res.coef)
    assert set(scores) == set(cg.names)
    g = traj.group_scores(res.coef)
    assert g.shape == (cg.G,) and torch.equal(g, res.coef.abs().float().cpu())


def test_momentum_model_works_grouped():
    model, cg, mask, shape = _setup("cnn1d", prune=True)
    layout = cg.layout(mask)
    _, weights = _record(model, mask, shape, momentum=0.9, mask=mask, momentum_features=True)
    _, traj = _record(model, mask, shape, momentum=0.9, layout=layout, momentum_features=True)
    assert traj.X.shape == traj.X_lag.shape == (T - 1, cg.G)
    assert torch.equal(traj.X[:-1], traj.X_lag[1:])
    torch.testing.assert_close(traj.X, layout.to_columns(_restrict(weights, layout.names)), rtol=1e-5, atol=0)
    assert torch.equal(traj.y, weights.y) and torch.equal(traj.lags, weights.lags)
    blocks, y, Z = traj.design()
    res = lasso.solve(blocks, y, unpenalized=Z, alpha_ratio=0.05)
    assert res.coef.shape == (2 * cg.G,)
    c = res.coef.float().cpu()
    torch.testing.assert_close(traj.group_scores(res.coef), torch.sqrt(c[: cg.G] ** 2 + c[cg.G :] ** 2))
    assert traj.scores(res.coef)[cg.names[0]].shape == cg.shapes[cg.names[0]]


def test_layout_arguments_are_checked():
    model, cg, mask, _ = _setup("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    layout = cg.layout(mask)
    with pytest.raises(ValueError, match="either layout or params/mask"):
        TrajectoryRecorder(model, LOSS, opt, mask=mask, layout=layout)
    other = create_model("mlp", num_classes=4, in_features=20, widths=(10, 12))
    with pytest.raises(ValueError, match="shape"):
        TrajectoryRecorder(other, LOSS, torch.optim.SGD(other.parameters(), lr=0.1), layout=layout)


def test_non_finite_update_names_the_group():
    model, cg, mask, shape = _setup("mlp")
    # x̃ = Δθ² / η₀² overflows float32 when η₀ is tiny: every group of step 0 is non-finite.
    opt = torch.optim.SGD(model.parameters(), lr=1e-25)
    rec = TrajectoryRecorder(model, LOSS, opt, layout=cg.layout(mask))
    rec.step(*_batches(shape, 1)[0])
    with pytest.raises(ValueError, match=f"step 0 in parameter '{cg.names[0]}' \\(group 0\\)"):
        rec.trajectory()
