"""Shared (tied) weights: one tensor is one mask entry, one set of columns, under one canonical name.

Two models: an MLP whose two hidden 16×16 Linear layers share one weight (canonical name
``h1.weight``, alias ``h2.weight``), and a tiny language model whose head is tied to its
embedding, GPT-style (canonical ``emb.weight``, alias ``head.weight``).
"""

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune as torch_prune

from causalprune import criteria, lasso
from causalprune import masks as M
from causalprune.analysis.flatness import flatness
from causalprune.analysis.hessian import HVP, top_eigenvalues
from causalprune.masks import Mask, prunable_parameters
from causalprune.metrics import efficiency
from causalprune.selection import select
from causalprune.trajectory import TrajectoryRecorder

# --- the tied MLP --------------------------------------------------------------------------------


class TiedMLP(nn.Module):
    """8 → 16 → 16 → 16 → 4; the two 16×16 hidden layers share one weight (not their biases)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.h1 = nn.Linear(16, 16)
        self.h2 = nn.Linear(16, 16)
        self.h2.weight = self.h1.weight
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.inp(x))
        x = torch.tanh(self.h1(x))
        x = torch.tanh(self.h2(x))
        return self.out(x)


MLP_NAMES = ["inp.weight", "h1.weight", "out.weight"]
MLP_D = 8 * 16 + 16 * 16 + 16 * 4  # unique prunable entries: the shared 16×16 counts once


def _mlp() -> TiedMLP:
    torch.manual_seed(0)
    return TiedMLP()


def _mlp_batches(n: int = 4, bs: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(bs, 8, generator=g), torch.randint(0, 4, (bs,), generator=g)) for _ in range(n)]


def _half_mask(shape: tuple[int, ...], seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < 0.5


def test_prunable_parameters_list_a_shared_tensor_once():
    model = _mlp()
    params = prunable_parameters(model)
    assert list(params) == MLP_NAMES
    assert params["h1.weight"] is model.h1.weight is model.h2.weight
    assert M.parameter_aliases(model) == {"h2.weight": "h1.weight"}
    assert Mask.ones(model).numel() == MLP_D
    assert list(Mask.from_model(model)) == MLP_NAMES


def test_untied_names_and_order_unchanged():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Conv1d(1, 2, 3), nn.Linear(4, 2))
    assert list(prunable_parameters(model)) == ["0.weight", "2.weight", "3.weight"]
    assert M.parameter_aliases(model) == {}


def test_mask_keyed_by_alias_is_accepted():
    model = _mlp()
    keep = _half_mask((16, 16))
    mask = Mask({"h2.weight": keep})
    params = mask.check(model)
    assert list(params) == ["h1.weight"] and params["h1.weight"] is model.h1.weight
    mask.apply_(model)
    assert (model.h1.weight[~keep] == 0).all() and (model.h1.weight[keep] != 0).all()
    assert mask.canonical(model) == Mask({"h1.weight": keep})


def test_alias_mask_survives_save_and_load(tmp_path):
    model = _mlp()
    keep = _half_mask((16, 16))
    Mask({"inp.weight": torch.ones(16, 8, dtype=torch.bool), "h2.weight": keep}).save(tmp_path / "m.pt")
    loaded = Mask.load(tmp_path / "m.pt")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loaded.attach(model, opt)
    assert (model.h2.weight[~keep] == 0).all()


def test_alias_and_canonical_with_different_values_are_refused():
    model = _mlp()
    a, b = _half_mask((16, 16), 3), _half_mask((16, 16), 4)
    with pytest.raises(ValueError, match=r"'h2\.weight' and 'h1\.weight' .*same tensor"):
        Mask({"h1.weight": a, "h2.weight": b}).check(model)
    # The same values under both names are one entry.
    assert list(Mask({"h1.weight": a, "h2.weight": a.clone()}).check(model)) == ["h1.weight"]
    assert Mask({"h1.weight": a, "h2.weight": a.clone()}).canonical(model) == Mask({"h1.weight": a})


def test_unknown_name_error_lists_canonical_names_and_aliases():
    model = _mlp()
    with pytest.raises(ValueError) as err:
        Mask({"nope.weight": torch.ones(3, dtype=torch.bool)}).check(model)
    msg = str(err.value)
    assert "prunable: inp.weight, h1.weight, out.weight" in msg
    assert "h2.weight → h1.weight" in msg  # the alias is named as such, not as a parameter of its own


def test_attach_keeps_shared_weight_zero_through_both_uses():
    model = _mlp()
    keep = _half_mask((16, 16))
    ones = Mask.ones(model)
    mask = Mask({**{n: ones[n] for n in ones if n != "h1.weight"}, "h2.weight": keep})  # keyed by the alias
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    handle = mask.attach(model, opt)
    for x, y in _mlp_batches() * 3:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        # the shared weight gets gradient from both uses, pruned entries included
        assert (model.h1.weight.grad[~keep] != 0).any()
        opt.step()
        assert (model.h1.weight[~keep] == 0).all()
        assert (opt.state[model.h1.weight]["momentum_buffer"][~keep] == 0).all()
    assert (model.h1.weight[keep] != 0).all()
    handle.remove()


def _record(model: nn.Module, mask: Mask | None = None, steps: int = 12, lr: float = 0.05, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rec = TrajectoryRecorder(model, F.cross_entropy, opt, mask, **kw)
    batches = _mlp_batches()
    for t in range(steps):
        rec.step(*batches[t % len(batches)])
    return rec.trajectory()


def test_recorder_gives_a_shared_tensor_one_column_block():
    traj = _record(_mlp())
    assert traj.param_names == MLP_NAMES
    assert traj.X.shape == (12, MLP_D)
    # With a mask (keyed by the alias), d is the number of unique alive entries.
    keep = _half_mask((16, 16))
    traj = _record(_mlp(), Mask({"h2.weight": keep}))
    assert traj.X.shape[1] == MLP_D - int((~keep).sum())
    assert torch.equal(traj.alive["h1.weight"], keep)
    # params= accepts an alias; naming both names of the tensor records it once.
    for params in (["h2.weight"], ["h1.weight", "h2.weight"]):
        traj = _record(_mlp(), params=params, steps=2)
        assert traj.param_names == ["h1.weight"] and traj.X.shape == (2, 256)


def test_global_selection_counts_a_shared_tensor_once():
    model = _mlp()
    scores = criteria.score("magnitude", model)
    assert list(scores) == MLP_NAMES
    mask = select(scores, 0.5, mask=Mask.ones(model))
    assert mask.numel() == MLP_D
    assert mask.numel() - mask.count_alive() == round(0.5 * MLP_D)


def test_end_to_end_record_solve_select_attach_train():
    model = _mlp()
    traj = _record(model, steps=20)
    fit = lasso.solve(*traj.design()[:2], alpha_ratio=0.01, solver="cd")
    mask = select(traj.scores(fit.coef), 0.7, mask=Mask.ones(model), tie_break=traj.combine(fit.kkt))
    assert mask.numel() - mask.count_alive() == round(0.7 * MLP_D)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mask.attach(model, opt)
    for x, y in _mlp_batches() * 2:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    params = prunable_parameters(model)
    zeros = sum(int((p == 0).sum()) for p in params.values())
    assert zeros == round(0.7 * MLP_D)  # sparsity reached exactly, the shared tensor counted once
    assert Mask.from_model(model) == mask


def test_torch_prune_interop_prunes_every_use():
    model = _mlp()
    keep = _half_mask((16, 16))
    mask = Mask({"h1.weight": keep})
    reference = _mlp()
    mask.apply_(reference)
    x = torch.randn(5, 8)
    mask.to_torch_prune(model)
    torch.testing.assert_close(model(x), reference(x))
    back = Mask.from_torch_prune(model, remove=True)
    assert back == mask
    assert model.h1.weight is model.h2.weight  # still tied after the re-parametrisation is removed
    torch.testing.assert_close(model(x), reference(x))


def test_torch_prune_of_one_use_only_is_refused():
    model = _mlp()
    torch_prune.custom_from_mask(model.h2, "weight", _half_mask((16, 16)))  # h1 still uses the dense weight
    with pytest.raises(ValueError, match=r"h1\.weight.*tied"):
        Mask.from_torch_prune(model)


def test_efficiency_counts_a_shared_tensor_once():
    model = _mlp()
    keep = _half_mask((16, 16))
    Mask({"h1.weight": keep}).apply_(model)
    eff = efficiency(model, (8,))
    unique = MLP_D + 16 + 16 + 16 + 4  # weights (shared once) + biases
    assert eff["size"] == unique
    assert eff["size_nz"] == unique - int((~keep).sum())
    # FLOPs: each of the two uses of the shared weight (2·16·16 each) scaled by its density.
    density = float(keep.sum()) / keep.numel()
    assert eff["flops_nz"] == pytest.approx(eff["flops"] - 2 * (2 * 16 * 16) * (1 - density))


def test_hessian_is_over_unique_tensors():
    model = _mlp().double()
    batch = [(x.double(), y) for x, y in _mlp_batches(1)]
    keep = _half_mask((16, 16))
    mask = Mask({"inp.weight": torch.ones(16, 8, dtype=torch.bool), "h2.weight": keep})
    hvp = HVP(model, F.cross_entropy, batch, mask=mask)
    assert hvp.names == ["inp.weight", "h1.weight"]
    assert hvp.dim == 128 + int(keep.sum())
    # H v against a central difference of the gradient of the unique tensors.
    v = torch.randn(hvp.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    params = [model.inp.weight, model.h1.weight]
    dirs = hvp.layout.unflatten_like(v, params)

    def grad_at(eps: float) -> torch.Tensor:
        with torch.no_grad():
            for p, d in zip(params, dirs, strict=True):
                p.add_(eps * d)
        g = torch.autograd.grad(F.cross_entropy(model(batch[0][0]), batch[0][1]), params)
        with torch.no_grad():
            for p, d in zip(params, dirs, strict=True):
                p.sub_(eps * d)
        return hvp.layout.flatten(g)

    fd = (grad_at(1e-5) - grad_at(-1e-5)) / 2e-5
    torch.testing.assert_close(hvp(v), fd, rtol=1e-5, atol=1e-7)
    assert len(top_eigenvalues(model, F.cross_entropy, batch, k=1, mask=mask, max_iter=20)) == 1


def test_flatness_accepts_an_alias_keyed_mask():
    model = _mlp()
    keep = _half_mask((16, 16))
    mask = Mask({"h2.weight": keep})
    mask.apply_(model)
    flatness(model, F.cross_entropy, _mlp_batches(1), sigmas=(0.01,), draws=2, mask=mask)
    assert (model.h1.weight[~keep] == 0).all()


# --- the tied language model ---------------------------------------------------------------------

V, E, CTX = 12, 8, 3


class TinyLM(nn.Module):
    """Embedding → flatten the context → Linear, tanh, Linear → head tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, E)
        self.body = nn.Sequential(nn.Linear(CTX * E, 16), nn.Tanh(), nn.Linear(16, E))
        self.head = nn.Linear(E, V, bias=False)
        self.head.weight = self.emb.weight  # GPT-style weight tying

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.emb(tokens).flatten(1)))


LM_NAMES = ["body.0.weight", "body.2.weight", "emb.weight"]  # module order of first prunable use: the head


def _lm() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM()


def _lm_batches(n: int = 4, bs: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Next token = (sum of the context) mod V, from fixed-seed random contexts."""
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n):
        x = torch.randint(0, V, (bs, CTX), generator=g)
        out.append((x, x.sum(1) % V))
    return out


def test_lm_tied_head_is_one_tensor_under_the_embedding_name():
    model = _lm()
    params = prunable_parameters(model)
    assert list(params) == LM_NAMES
    assert params["emb.weight"] is model.head.weight
    assert M.parameter_aliases(model) == {"head.weight": "emb.weight"}
    keep = _half_mask((V, E))
    Mask({"head.weight": keep}).apply_(model)
    assert (model.emb.weight[~keep] == 0).all()


@pytest.mark.parametrize("name", criteria.names("weight"))
def test_lm_every_criterion_prunes_the_tied_tensor(name):
    model = _lm()
    batches = _lm_batches()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = criteria.get(name)
    options = {}
    if crit.records:
        rec = TrajectoryRecorder(model, F.cross_entropy, opt, Mask({"head.weight": torch.ones(V, E, dtype=torch.bool)}))
        for t in range(16):
            rec.step(*batches[t % len(batches)])
        options["trajectory"] = rec.trajectory()
        assert options["trajectory"].param_names == LM_NAMES
    if name == "synflow":
        options.update(sparsity=0.6, rounds=5)  # feeds token id 1 (an all-ones input of the batches' dtype)
    scored = criteria.score(name, model, batches, F.cross_entropy, **options)
    assert list(scored) == LM_NAMES
    assert all(torch.isfinite(s).all() for s in scored.values())
    scores = scored if crit.higher_is_important else {n: -s for n, s in scored.items()}
    mask = select(scores, 0.6, mask=Mask.ones(model))
    n = sum(p.numel() for p in prunable_parameters(model).values())
    assert mask.numel() == n and mask.numel() - mask.count_alive() == round(0.6 * n)
    mask.attach(model, opt)
    for x, y in batches * 2:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for pname, p in prunable_parameters(model).items():
        assert (p[~mask[pname]] == 0).all()
    assert (model.head.weight[~mask["emb.weight"]] == 0).all()


def test_lm_criteria_accept_an_alias_keyed_mask():
    model = _lm()
    keep = _half_mask((V, E))
    ones = Mask.ones(model)
    mask = Mask({**{n: ones[n] for n in ones if n != "emb.weight"}, "head.weight": keep})
    mask.apply_(model)
    scores = criteria.score("snip", model, _lm_batches(), F.cross_entropy, mask=mask)
    assert list(scores) == LM_NAMES
    new = select(criteria.score("magnitude", model, mask=mask), 0.7, mask=mask.canonical(model))
    assert not (new["emb.weight"] & ~keep).any()  # pruned entries stay pruned


def test_torch_prune_refuses_a_tied_weight_held_under_another_attribute():
    class Held(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.w = self.lin.weight  # the root holds it as `w`: canonical name "w"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) @ self.w

    model = Held()
    assert list(prunable_parameters(model)) == ["w"] and M.parameter_aliases(model) == {"lin.weight": "w"}
    with pytest.raises(ValueError, match=r"tied weight 'w' \(used as w, lin\.weight\) cannot be converted"):
        Mask.ones(model).to_torch_prune(model)


def test_lm_torch_prune_interop():
    model, reference = _lm(), _lm()
    keep = _half_mask((V, E))
    mask = Mask({"head.weight": keep})
    mask.apply_(reference)
    mask.to_torch_prune(model)  # the embedding and the head each get a weight_mask
    x = _lm_batches(1)[0][0]
    torch.testing.assert_close(model(x), reference(x))
    assert Mask.from_torch_prune(model, remove=True) == Mask({"emb.weight": keep})
    assert model.head.weight is model.emb.weight
