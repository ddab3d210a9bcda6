"""TrajectoryRecorder against hand computations and plain training."""

import copy

import pytest
import torch
from torch import nn

from causalprune import CausalPruner, Mask, TrajectoryRecorder, lasso

LOSS = nn.CrossEntropyLoss()


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))


def _batches(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def _weights(model):
    return [model[0].weight, model[4].weight]


def _hand_same_batch(model, opt, batches, lr):
    """ΔL and x̃ computed by hand, with explicit BN-state and RNG save/restore."""
    rows, dls = [], []
    for x, y in batches:
        before = [w.detach().clone() for w in _weights(model)]
        rng = torch.get_rng_state()
        opt.zero_grad()
        loss = LOSS(model(x), y)
        loss.backward()
        opt.step()
        rng_after = torch.get_rng_state()
        bn = copy.deepcopy(model[1].state_dict())
        torch.set_rng_state(rng)
        with torch.no_grad():
            after = LOSS(model(x), y)
        model[1].load_state_dict(bn)
        torch.set_rng_state(rng_after)
        steps = [((w.detach() - b) ** 2).flatten() for w, b in zip(_weights(model), before, strict=True)]
        rows.append(torch.cat(steps) / lr**2)
        dls.append(after - loss.detach())
    return torch.stack(rows), torch.stack(dls)


def test_same_batch_rows_equal_hand_computation():
    model, ref = _model(), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    rec = TrajectoryRecorder(model, LOSS, opt)
    torch.manual_seed(7)
    for x, y in _batches():
        rec.step(x, y)
    tr = rec.trajectory()
    torch.manual_seed(7)
    X, y = _hand_same_batch(ref, opt_ref, _batches(), 0.1)
    assert tr.X.shape == (6, 5 * 8 + 8 * 3)
    assert tr.param_names == ["0.weight", "4.weight"]
    assert tr.scale == pytest.approx(0.01)
    torch.testing.assert_close(tr.X, X, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(tr.y, y, rtol=1e-6, atol=1e-7)
    assert torch.all(tr.y < 0.5)  # a sanity check that the "after" loss used the same masks


def test_recorded_training_equals_plain_training():
    """BN running stats, RNG stream and weights end exactly where plain training leaves them."""
    model, plain = _model(), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    rec = TrajectoryRecorder(model, LOSS, opt)
    torch.manual_seed(3)
    for x, y in _batches(10):
        rec.step(x, y)
    after_recorded = torch.rand(3)
    torch.manual_seed(3)
    for x, y in _batches(10):
        opt_p.zero_grad()
        LOSS(plain(x), y).backward()
        opt_p.step()
    after_plain = torch.rand(3)
    for (k, a), b in zip(model.state_dict().items(), plain.state_dict().values(), strict=False):
        assert torch.equal(a, b), k
    assert torch.equal(after_recorded, after_plain)


def test_split_api_equals_step():
    m1, m2 = _model(), _model()
    o1, o2 = torch.optim.SGD(m1.parameters(), lr=0.1), torch.optim.SGD(m2.parameters(), lr=0.1)
    r1, r2 = TrajectoryRecorder(m1, LOSS, o1), TrajectoryRecorder(m2, LOSS, o2)
    torch.manual_seed(5)
    for x, y in _batches():
        r1.step(x, y)
    torch.manual_seed(5)
    for x, y in _batches():
        r2.before_step(x, y)
        o2.zero_grad()
        loss = LOSS(m2(x), y)
        loss.backward()
        o2.step()
        r2.after_step(loss)
    t1, t2 = r1.trajectory(), r2.trajectory()
    assert torch.equal(t1.X, t2.X) and torch.equal(t1.y, t2.y)
    with pytest.raises(RuntimeError, match="without before_step"):
        r2.after_step(loss)


def test_probe_rows_equal_hand_computation():
    model, ref = _model(), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    probe = _batches(2, seed=9)
    rec = TrajectoryRecorder(model, LOSS, opt, delta_loss="probe", probe_data=probe, probe_seed=11)
    torch.manual_seed(5)
    for x, y in _batches():
        rec.step(x, y)
    tr = rec.trajectory()

    def probe_loss(m):
        bn = copy.deepcopy(m[1].state_dict())
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(11)
            value = sum(LOSS(m(px), py) * len(py) for px, py in probe) / 32
        m[1].load_state_dict(bn)
        return value

    dls, before = [], probe_loss(ref)
    torch.manual_seed(5)
    for x, y in _batches():
        opt_ref.zero_grad()
        LOSS(ref(x), y).backward()
        opt_ref.step()
        after = probe_loss(ref)
        dls.append(after - before)
        before = after
    torch.testing.assert_close(tr.y, torch.stack(dls), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tr.loss_after[:-1], tr.loss_before[1:])  # each "after" reused
    assert torch.equal(model[1].running_mean, ref[1].running_mean)


def test_probe_before_is_recomputed_when_weights_change_outside_steps():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = TrajectoryRecorder(model, LOSS, opt, delta_loss="probe", probe_data=_batches(1, seed=2)[0])
    x, y = _batches(1)[0]
    rec.step(x, y)
    with torch.no_grad():
        model[4].weight.mul_(0.5)  # e.g. a rewind between steps
    rec.step(x, y)
    tr = rec.trajectory()
    assert tr.loss_before[1] != tr.loss_after[0]


def test_mask_restricts_columns_and_unflatten_roundtrips():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mask = Mask({"0.weight": torch.rand(8, 5) > 0.5, "4.weight": torch.rand(3, 8) > 0.5})
    mask.attach(model, opt)
    rec = TrajectoryRecorder(model, LOSS, opt, mask=mask)
    for x, y in _batches(3):
        rec.step(x, y)
    tr = rec.trajectory()
    assert tr.X.shape[1] == mask.count_alive()
    # Column order: alive entries of each parameter, row-major.
    full = tr.unflatten(tr.X[0])
    assert torch.all(full["0.weight"][~mask["0.weight"]] == 0)
    flat = torch.cat([full[n][mask[n]] for n in tr.param_names])
    assert torch.equal(flat, tr.X[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_storage(dtype):
    m1, m2 = _model(), _model()
    r1 = TrajectoryRecorder(m1, LOSS, torch.optim.SGD(m1.parameters(), lr=0.1))
    r2 = TrajectoryRecorder(m2, LOSS, torch.optim.SGD(m2.parameters(), lr=0.1), dtype=dtype)
    torch.manual_seed(0)
    for x, y in _batches():
        r1.step(x, y)
    torch.manual_seed(0)
    for x, y in _batches():
        r2.step(x, y)
    t1, t2 = r1.trajectory(), r2.trajectory()
    assert t2.X.dtype == dtype and r2.nbytes() * 2 == r1.nbytes()
    torch.testing.assert_close(t2.X.float(), t1.X, rtol=1e-2, atol=1e-6)


def test_bf16_ranking_agrees_with_float32_on_top_10_percent():
    """Same training recorded twice; γ ranks (|γ|, then KKT) overlap on the top 10 %."""
    def record(dtype):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        rec = TrajectoryRecorder(model, LOSS, opt, dtype=dtype)
        g = torch.Generator().manual_seed(1)
        w = torch.randn(20, 4, generator=g)
        for _ in range(120):
            x = torch.randn(32, 20, generator=g)
            rec.step(x, (x @ w).argmax(1))
        return rec.trajectory()

    tops = []
    for dtype in (torch.float32, torch.bfloat16):
        tr = record(dtype)
        res = lasso.solve(tr.X, tr.y, alpha_ratio=0.01, solver="cd")
        score = res.coef.abs().double() * 10 + res.kkt.double()  # |γ| first, then KKT among zeros
        k = score.numel() // 10
        tops.append(set(torch.topk(score, k).indices.tolist()))
    overlap = len(tops[0] & tops[1]) / len(tops[0])
    assert overlap >= 0.9, overlap


def test_spills_to_disk_past_the_memory_budget():
    m1, m2 = _model(), _model()
    r1 = TrajectoryRecorder(m1, LOSS, torch.optim.SGD(m1.parameters(), lr=0.1), chunk_rows=2)
    r2 = TrajectoryRecorder(
        m2, LOSS, torch.optim.SGD(m2.parameters(), lr=0.1), chunk_rows=2, memory_budget=64 * 4 * 2
    )
    torch.manual_seed(0)
    for x, y in _batches(7):
        r1.step(x, y)
    torch.manual_seed(0)
    for x, y in _batches(7):
        r2.step(x, y)
    assert not r1.spilled and r2.spilled
    t1, t2 = r1.trajectory(), r2.trajectory()
    assert torch.equal(t1.X, t2.X) and torch.equal(t1.y, t2.y)
    assert t1.X.shape == (7, 64) and t1.X.stride() == (1, 7)  # column-major (d, T) buffer
    r2.close()


def test_momentum_features_are_offset_views():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec = TrajectoryRecorder(model, LOSS, opt, momentum_features=True, capacity=8)
    for x, y in _batches(6):
        rec.step(x, y)
    tr = rec.trajectory()
    assert tr.X.shape == tr.X_lag.shape == (5, 64)
    assert tr.X.untyped_storage().data_ptr() == tr.X_lag.untyped_storage().data_ptr()
    assert torch.equal(tr.X[:-1], tr.X_lag[1:])
    assert torch.equal(tr.lags[1:, 1], tr.lags[:-1, 0])
    blocks, y, Z = tr.design()
    res = lasso.solve(blocks, y, unpenalized=Z, alpha_ratio=0.05)
    assert res.coef.shape == (128,) and res.unpenalized.shape == (2,)
    assert tr.scores(res.coef)["0.weight"].shape == (8, 5)


def test_bad_inputs():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no prunable parameters"):
        TrajectoryRecorder(nn.Sequential(nn.ReLU()), LOSS, opt)
    with pytest.raises(ValueError, match="valid: same_batch, probe"):
        TrajectoryRecorder(model, LOSS, opt, delta_loss="full")
    with pytest.raises(ValueError, match="needs probe_data"):
        TrajectoryRecorder(model, LOSS, opt, delta_loss="probe")
    with pytest.raises(ValueError, match="does not match"):
        TrajectoryRecorder(model, LOSS, opt, mask={"0.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="empty trajectory"):
        TrajectoryRecorder(model, LOSS, opt).trajectory()
    everything_pruned = Mask({n: torch.zeros_like(p, dtype=torch.bool) for n, p in
                              [("0.weight", model[0].weight), ("4.weight", model[4].weight)]})
    with pytest.raises(ValueError, match="every prunable weight is pruned"):
        TrajectoryRecorder(model, LOSS, opt, mask=everything_pruned)


def test_nan_loss_names_the_step():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = TrajectoryRecorder(model, LOSS, opt)
    batches = _batches(3)
    rec.step(*batches[0])
    x = batches[1][0].clone()
    x[0, 0] = float("nan")
    rec.step(x, batches[1][1])
    with pytest.raises(ValueError, match="step 1"):
        rec.trajectory()


@pytest.mark.parametrize("train_mode", [True, False])
def test_norm_running_stats_untouched_by_extra_forwards(train_mode):
    """InstanceNorm with running stats (saved/restored) and BatchNorm in train or eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3), nn.InstanceNorm1d(4, track_running_stats=True), nn.BatchNorm1d(4),
        nn.Flatten(), nn.Linear(4 * 6, 3),
    )  # fmt: skip
    plain = copy.deepcopy(model)
    model.train(train_mode)
    plain.train(train_mode)
    x, y = torch.randn(8, 2, 8), torch.randint(0, 3, (8,))
    for delta_loss in ("same_batch", "probe"):
        m, p = copy.deepcopy(model), copy.deepcopy(plain)
        opt, opt_p = torch.optim.SGD(m.parameters(), lr=0.1), torch.optim.SGD(p.parameters(), lr=0.1)
        rec = TrajectoryRecorder(m, LOSS, opt, delta_loss=delta_loss, probe_data=(x[:4], y[:4]))
        for _ in range(3):
            rec.step(x, y)
            opt_p.zero_grad()
            LOSS(p(x), y).backward()
            opt_p.step()
        for (k, a), b in zip(m.state_dict().items(), p.state_dict().values(), strict=True):
            assert torch.equal(a, b), (delta_loss, k)
        assert all(bn.track_running_stats for bn in (m[1], m[2]))


def test_autocast_region_does_not_freeze_the_after_loss():
    """Autocast caches cast weights; the recorder must evaluate θ^{t+1}, not the cached θ^t."""
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    rec = TrajectoryRecorder(model, LOSS, torch.optim.SGD(model.parameters(), lr=0.5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for x, y in _batches(4):
            rec.step(x, y)
    tr = rec.trajectory()
    assert torch.all(tr.y != 0)
    assert len(set(tr.loss_before.tolist())) == 4


def _counting_gathers(rec):
    """Count the recorder's copies of θ (every gather goes through its layout's flatten_into)."""
    calls = []
    inner = rec.layout.flatten_into

    def flatten_into(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    rec.layout.flatten_into = flatten_into
    return calls


def test_one_copy_of_theta_per_step_and_exact_rows():
    # θ^{t+1} was gathered in after_step and again, unchanged, in the next before_step (issue 20, point 7).
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec = TrajectoryRecorder(model, LOSS, opt)
    calls = _counting_gathers(rec)
    expected = []
    for i, (x, y) in enumerate(_batches(5)):
        before = [w.detach().clone() for w in _weights(model)]
        if i == 2:  # weights changed between steps (e.g. a rewind, or a new .data): θ^t is gathered again
            with torch.no_grad():
                model[0].weight.mul_(0.5)
            model[4].weight.data = model[4].weight.data * 2
            before = [w.detach().clone() for w in _weights(model)]
        rec.step(x, y)
        after = [w.detach() for w in _weights(model)]
        expected.append(torch.cat([(a - b).square().mul(1.0 / (0.1 * 0.1)).flatten()
                                   for a, b in zip(after, before, strict=True)]))  # fmt: skip
    assert len(calls) == 5 + 1 + 1  # one per step, the first θ^0, and the changed θ^2
    assert torch.equal(rec.trajectory().X, torch.stack(expected))


def test_pruner_after_step_without_before_step_is_refused():
    # CausalPruner.after_step was silently a no-op before the round's first before_step (issue 20, point 7).
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = CausalPruner(model, opt, LOSS, sparsity=0.5, n_iter=1, method="causal")
    x, y = _batches(1)[0]
    opt.zero_grad()
    loss = LOSS(model(x), y)
    loss.backward()
    opt.step()
    with pytest.raises(RuntimeError, match="after_step called without before_step"):
        pruner.after_step(loss)
    pruner.before_step(x, y)  # the pair in order records the step
    opt.zero_grad()
    loss = LOSS(model(x), y)
    loss.backward()
    opt.step()
    pruner.after_step(loss)
    assert pruner.steps_in_round == 1
    with pytest.raises(RuntimeError, match="after_step called without before_step"):
        pruner.after_step(loss)
