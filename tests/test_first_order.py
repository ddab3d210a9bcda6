"""The first-order ("gap") reading, SPEC §1b: z_t = g_t·Δθ_t recorded, and `causal.first_order` free / subtract."""

import copy
import dataclasses
import json

import pytest
import torch
import torch.multiprocessing as mp
from sklearn.linear_model import Lasso
from torch import nn

from causalprune import Mask, TrajectoryRecorder
from causalprune.config import ConfigError
from causalprune.criteria import ScoreInput
from causalprune.criteria.causal import (
    CausalSettings,
    causal,
    causal_channels,
    causal_placebo,
    causal_placebo_channels,
)
from causalprune.groups import channel_groups

LOSS = nn.CrossEntropyLoss()


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 3))


def _batches(n=8, seed=1, size=16):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 6, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def _half_mask(model):
    """Prune every other entry of the first layer's weight (so pruned weights get gradients but do not move)."""
    mask = Mask.ones(model)
    m = mask["0.weight"].clone()
    m.view(-1)[::2] = False
    return Mask({**mask, "0.weight": m})


def _recorded(model, opt, batches, **kwargs):
    rec = TrajectoryRecorder(model, LOSS, opt, **kwargs)
    for x, y in batches:
        rec.step(x, y)
    return rec, rec.trajectory()


def test_plain_sgd_first_order_term_is_minus_lr_times_the_squared_gradient_of_what_moved():
    """z_t = −η·Σ g² over every trained parameter (biases, BatchNorm too) except pruned weights (Δθ = 0)."""
    lr, batches = 0.05, _batches()
    model, ref = _model(), _model()
    mask = _half_mask(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    mask.attach(model, opt)
    _, traj = _recorded(model, opt, batches, mask=mask, first_order=True)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=lr)
    mask.attach(ref, opt_ref)
    expected = []
    for x, y in batches:  # by hand: the gradient, its squared norm over what moves, then the step
        opt_ref.zero_grad()
        LOSS(ref(x), y).backward()
        moved = {n: mask[n].double() if n in mask else torch.ones_like(p, dtype=torch.float64)
                 for n, p in ref.named_parameters()}  # fmt: skip
        expected.append(-lr * sum(float((p.grad.double() ** 2 * moved[n]).sum()) for n, p in ref.named_parameters()))
        opt_ref.step()
    assert traj.first_order.dtype == torch.float64 and traj.first_order.shape == (len(batches),)
    torch.testing.assert_close(traj.first_order, torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=0)
    # not just the prunable weights: the biases and BatchNorm parameters add to it
    only_weights = -lr * sum(float((p.grad.double() ** 2 * moved[n]).sum()) for n, p in ref.named_parameters()
                             if n in mask)  # fmt: skip
    assert abs(only_weights - expected[-1]) > 1e-3 * abs(expected[-1])


def test_momentum_and_weight_decay_first_order_term_is_the_gradient_times_the_step():
    """Momentum μ, weight decay λ: Δθ_t = −η·b_t, b_t = μ·b_{t−1} + g_t + λθ_t; z_t = g_t·Δθ_t (g without λθ)."""
    lr, mu, wd, batches = 0.05, 0.9, 0.01, _batches()
    model, ref = _model(), _model()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mu, weight_decay=wd)
    _, traj = _recorded(model, opt, batches, first_order=True)
    buf = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in ref.named_parameters()}
    expected = []
    for x, y in batches:
        ref.zero_grad()
        LOSS(ref(x), y).backward()
        z = 0.0
        with torch.no_grad():
            for n, p in ref.named_parameters():
                g = p.grad.double()
                buf[n] = (g + wd * p.double()) if not expected else mu * buf[n] + g + wd * p.double()
                z += float((g * (-lr * buf[n])).sum())
                p.copy_(p.double() - lr * buf[n])
        expected.append(z)
    torch.testing.assert_close(traj.first_order, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-9)
    # the momentum model drops the first row of every per-step series, z included
    model2 = _model()
    _, lagged = _recorded(model2, torch.optim.SGD(model2.parameters(), lr=lr, momentum=mu, weight_decay=wd), batches,
                          first_order=True, momentum_features=True)  # fmt: skip
    torch.testing.assert_close(lagged.first_order, traj.first_order[1:], rtol=0, atol=0)


def test_recording_the_first_order_term_changes_nothing_else():
    batches = _batches()
    a, b = _model(), _model()
    _, with_z = _recorded(a, torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), batches, first_order=True)
    _, without = _recorded(b, torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9), batches)
    assert without.first_order is None
    assert torch.equal(with_z.X, without.X) and torch.equal(with_z.y, without.y)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_after_step_with_zeroed_gradients_is_refused_and_records_nothing():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = TrajectoryRecorder(model, LOSS, opt, first_order=True)
    x, y = _batches(1)[0]
    rec.before_step(x, y)
    opt.zero_grad()
    loss = LOSS(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match="call after_step before the gradients are zeroed"):
        rec.after_step(loss)
    assert rec.rows == 0


def test_a_grouped_recording_stores_the_same_first_order_term():
    """Channel level: z is over every parameter, whatever the layout of X."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    groups = channel_groups(model, torch.randn(2, 6))
    trajs = []
    for layout in (None, groups.layout(Mask.ones(model))):
        m = copy.deepcopy(model)
        _, t = _recorded(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), _batches(), layout=layout,
                         first_order=True)  # fmt: skip
        trajs.append(t)
    assert trajs[1].layout.grouped and trajs[1].n_columns == groups.G
    assert torch.equal(trajs[0].first_order, trajs[1].first_order)


# --- the fits -------------------------------------------------------------------------------------------------------
def _trajectory(T=40):
    """A recorded same-batch trajectory of a small MLP (64 weights, T steps) with z."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    _, traj = _recorded(model, opt, _batches(T, size=8), first_order=True)
    return model, traj


def _score(fn, model, traj, **settings):
    c = CausalSettings(solver="cd", alpha_ratio=0.05, score="gamma", tie_break="none", **settings)
    return fn(ScoreInput(model, Mask.ones(model), settings=c, seed=3, trajectory=traj))


def _gamma(traj, scored):
    return traj.layout.flatten(scored.scores).double()  # |γ| in column order


def _sklearn(X, y, alpha):
    fit = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=1_000_000).fit(X.numpy(), y.numpy())
    return torch.tensor(fit.coef_, dtype=torch.float64)


def test_free_first_order_matches_sklearn_with_a_nearly_unpenalised_column():
    """Oracle: scikit-learn's Lasso on [X, s·z] with s large, so that the penalty α|c|/s on z's coefficient vanishes."""
    model, traj = _trajectory()
    scored = _score(causal, model, traj, first_order="free")
    alpha, c = scored.info["alpha"], scored.info["first_order_coef"]
    X, y, z = traj.X.double(), traj.y.double(), traj.first_order
    s = 1e4 * float(X.norm()) / float(z.norm())
    ref = _sklearn(torch.cat([X, s * z[:, None]], dim=1), y, alpha)
    assert 0 < int((_gamma(traj, scored) > 0).sum()) < traj.n_columns  # a sparse fit: the comparison means something
    torch.testing.assert_close(_gamma(traj, scored), ref[:-1].abs(), rtol=1e-3, atol=1e-4 * float(ref.abs().max()))
    assert c == pytest.approx(s * float(ref[-1]), rel=1e-3)
    assert scored.info["first_order_corr"] == pytest.approx(float(torch.corrcoef(torch.stack([y, z]))[0, 1]))


def test_subtract_first_order_is_the_fit_of_the_loss_change_minus_z():
    model, traj = _trajectory()
    scored = _score(causal, model, traj, first_order="subtract")
    ref = _sklearn(traj.X.double(), traj.y.double() - traj.first_order, scored.info["alpha"])
    assert 0 < int((ref != 0).sum()) < traj.n_columns
    torch.testing.assert_close(_gamma(traj, scored), ref.abs(), rtol=1e-3, atol=1e-4 * float(ref.abs().max()))
    assert "first_order_coef" not in scored.info


def test_the_placebo_permutes_the_loss_changes_and_z_together():
    """If z is permuted with ΔL, (ΔL − z)[π] = ΔL[π] − z[π], and adding k·z to ΔL only shifts z's free coefficient."""
    model, traj = _trajectory()
    subtracted = dataclasses.replace(traj, y=(traj.y.double() - traj.first_order).float())
    a = _score(causal_placebo, model, traj, first_order="subtract")
    b = _score(causal_placebo, model, subtracted)  # today's placebo (first_order ignore) on ΔL − z
    torch.testing.assert_close(_gamma(traj, a), _gamma(traj, b), rtol=1e-4, atol=1e-6 * float(_gamma(traj, b).max()))
    shifted = dataclasses.replace(traj, y=(traj.y.double() + 5.0 * traj.first_order).float())
    c = _score(causal_placebo, model, traj, first_order="free")
    d = _score(causal_placebo, model, shifted, first_order="free")
    torch.testing.assert_close(_gamma(traj, c), _gamma(traj, d), rtol=1e-3, atol=1e-4 * float(_gamma(traj, c).max()))
    assert d.info["first_order_coef"] == pytest.approx(c.info["first_order_coef"] + 5.0, rel=1e-4)
    real = _score(causal, model, traj, first_order="free")  # and the placebo is a different fit
    assert not torch.allclose(_gamma(traj, real), _gamma(traj, c))


def test_ignore_is_todays_fit_bit_for_bit():
    model, traj = _trajectory()
    for fn in (causal, causal_placebo):
        with_z = _score(fn, model, traj)
        without = _score(fn, model, dataclasses.replace(traj, first_order=None))
        for n in with_z.scores:
            assert torch.equal(with_z.scores[n], without.scores[n])
        assert "first_order_coef" not in with_z.info and "first_order_corr" not in with_z.info


def test_free_and_subtract_need_the_recorded_term_and_bad_values_are_named():
    model, traj = _trajectory()
    with pytest.raises(ValueError, match="first_order=True"):
        _score(causal, model, dataclasses.replace(traj, first_order=None), first_order="free")
    with pytest.raises(ConfigError, match="causal.first_order"):
        CausalSettings(first_order="both")


def test_a_bad_value_on_the_command_line_is_one_line_and_exit_2(capsys):
    from causalprune.cli import main

    assert main(["run", "--set", "causal.first_order=both", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "causal.first_order" in err and "both" in err
    assert "ignore, free, subtract" in err


def test_channel_level_free_fit_reports_z_coefficient_and_permutes_it_with_the_placebo():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    groups = channel_groups(model, torch.randn(2, 6))
    _, traj = _recorded(model, torch.optim.SGD(model.parameters(), lr=0.2), _batches(30, size=8),
                        layout=groups.layout(Mask.ones(model)), first_order=True)  # fmt: skip

    def run(fn, t, **settings):
        c = CausalSettings(solver="cd", alpha_ratio=0.05, score="gamma", tie_break="none", **settings)
        return fn(ScoreInput(model, Mask.ones(model), settings=c, seed=3, trajectory=t, groups=groups))

    free = run(causal_channels, traj, first_order="free")
    assert set(free.scores) == {"0"} and free.scores["0"].shape == (12,)  # root layer → per channel
    X, y, z = traj.X.double(), traj.y.double(), traj.first_order
    s = 1e4 * float(X.norm()) / float(z.norm())
    ref = _sklearn(torch.cat([X, s * z[:, None]], dim=1), y, free.info["alpha"])
    torch.testing.assert_close(free.scores["0"].double(), ref[:-1].abs(), rtol=1e-3,
                               atol=1e-4 * float(ref.abs().max()))  # fmt: skip
    subtracted = dataclasses.replace(traj, y=(y - z).float())
    a = run(causal_placebo_channels, traj, first_order="subtract")
    b = run(causal_placebo_channels, subtracted)
    torch.testing.assert_close(a.scores["0"], b.scores["0"], rtol=1e-4,
                               atol=1e-6 * float(b.scores["0"].max()))  # fmt: skip


def test_causal_pruner_wires_the_setting_and_reports_the_coefficient():
    from causalprune import CausalPruner

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = CausalPruner(model, opt, LOSS, sparsity=0.5, n_iter=1, settings={"first_order": "free"})
    for x, y in _batches(20):
        pruner.step(x, y)
    pruner.end_epoch()
    (h,) = pruner.history
    # same-batch ΔL = z + O(Δθ²) at a small step: z's free coefficient is close to 1 (SPEC §1b)
    assert abs(h["first_order_coef"] - 1) < 0.1 and h["first_order_corr"] > 0.5



def test_a_mid_round_saved_recording_keeps_z_and_resumes_to_the_same_fit():
    """`save_recording` carries z with ΔL: the resumed round's free fit and masks are the uninterrupted run's."""
    from causalprune import CausalPruner

    def setup():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        return model, torch.optim.SGD(model.parameters(), lr=0.05)

    settings, batches = {"first_order": "free"}, _batches(10)

    def finish(pruner, start):
        for x, y in batches[start:]:
            pruner.step(x, y)
        pruner.end_epoch()
        return pruner

    model, opt = setup()
    whole = finish(CausalPruner(model, opt, LOSS, sparsity=0.5, n_iter=1, settings=settings), 0)
    model, opt = setup()
    first = CausalPruner(model, opt, LOSS, sparsity=0.5, n_iter=1, settings=settings, save_recording=True)
    for x, y in batches[:4]:
        first.step(x, y)
    state = first.state_dict()
    assert state["recording"]["first_order"].shape == (4,)
    model2, opt2 = setup()
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(opt.state_dict())
    resumed = CausalPruner(model2, opt2, LOSS, sparsity=0.5, n_iter=1, settings=settings)
    resumed.load_state_dict(state)
    finish(resumed, 4)
    assert resumed.history[0]["first_order_coef"] == whole.history[0]["first_order_coef"]
    assert resumed.mask == whole.mask
    # a recording saved without z cannot feed a fit that needs it: refused in one line, not a shape error
    model, opt = setup()
    plain = CausalPruner(model, opt, LOSS, sparsity=0.5, n_iter=1, save_recording=True)
    for x, y in batches[:4]:
        plain.step(x, y)
    model2, opt2 = setup()
    model2.load_state_dict(model.state_dict())
    resumed = CausalPruner(model2, opt2, LOSS, sparsity=0.5, n_iter=1, settings=settings)
    resumed.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="first-order term covers 6 of the 10 recorded steps"):
        finish(resumed, 4)


# --- several processes ----------------------------------------------------------------------------------------------
def _ddp_first_order(rank, world, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
        net = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def reduce(t):
            torch.distributed.all_reduce(t)
            return t

        rec = TrajectoryRecorder(model, LOSS, opt, train_model=net, loss_reduce=reduce, first_order=True)
        for x, y in _batches(5, size=16):
            rec.step(x.tensor_split(world)[rank], y.tensor_split(world)[rank])  # this rank's half of the batch
        with open(f"{out_dir}/z.{rank}.json", "w") as f:
            json.dump(rec.trajectory().first_order.tolist(), f)
    finally:
        torch.distributed.destroy_process_group()


def test_under_ddp_every_rank_records_the_global_batchs_first_order_term(tmp_path):
    mp.start_processes(_ddp_first_order, args=(2, tmp_path / "init", tmp_path), nprocs=2, start_method="spawn")
    z0, z1 = (json.loads((tmp_path / f"z.{r}.json").read_text()) for r in (0, 1))
    assert z0 == z1  # the all-reduced gradient and the same step on both ranks
    torch.manual_seed(0)  # oracle: one process, the whole batch, plain SGD: z = −η‖g‖²
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = []
    for x, y in _batches(5, size=16):
        opt.zero_grad()
        LOSS(model(x), y).backward()
        expected.append(-0.1 * sum(float((p.grad.double() ** 2).sum()) for p in model.parameters()))
        opt.step()
    torch.testing.assert_close(torch.tensor(z0, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=0)  # fmt: skip


def test_the_lightning_callback_reads_the_gradients_before_they_are_zeroed():
    """Lightning zeroes gradients before the next batch's backward, so `on_train_batch_end` still sees them."""
    pl = pytest.importorskip("lightning.pytorch")
    from causalprune.integrations.lightning import CausalPruning

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return LOSS(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    pl.seed_everything(0, verbose=False)
    callback = CausalPruning(amount=0.5, n_iter=1, loss_fn=LOSS, settings={"first_order": "free"})
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    xs, ys = zip(*_batches(20), strict=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.cat(xs), torch.cat(ys)), batch_size=16)
    trainer.fit(Net(), loader)
    (h,) = callback.pruner.history
    assert h["T"] == 20 and abs(h["first_order_coef"] - 1) < 0.1
