import pytest
import torch
from torch import nn

from causalprune import Mask, prunable_parameters


def _model():
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _random_mask(model, sparsity=0.7):
    return Mask({n: torch.rand_like(p) > sparsity for n, p in prunable_parameters(model).items()})


def test_prunable_parameters_are_linear_and_conv_weights():
    assert list(prunable_parameters(_model())) == ["0.weight", "4.weight"]
    with pytest.raises(ValueError, match="no prunable parameters"):
        prunable_parameters(nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()))


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd-momentum-wd", "sgd-nesterov", "adam", "adamw"],
)
def test_mask_holds_after_200_steps(make_opt):
    model = _model()
    opt = make_opt(model.parameters())
    # Build optimizer state first, so attach must clean existing momentum too.
    x, y = torch.randn(8, 2, 6, 6), torch.randint(0, 3, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    mask = _random_mask(model)
    mask.attach(model, opt)
    params = prunable_parameters(model)
    for _ in range(200):
        x, y = torch.randn(8, 2, 6, 6), torch.randint(0, 3, (8,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        for n, p in params.items():
            assert torch.all(p[~mask[n]] == 0)
    for n, p in params.items():
        for v in opt.state[p].values():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                assert torch.all(v[~mask[n]] == 0)
        assert torch.any(p[mask[n]] != 0)  # alive weights still train
    assert Mask.from_model(model) == mask


def test_handle_remove_stops_enforcement():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mask = _random_mask(model)
    handle = mask.attach(model, opt)
    handle.remove()
    nn.functional.cross_entropy(model(torch.randn(4, 2, 6, 6)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    assert Mask.from_model(model).sparsity() < mask.sparsity()


def test_save_load_roundtrip(tmp_path):
    model = _model()
    mask = _random_mask(model)
    mask.save(tmp_path / "sub" / "mask.pt")
    assert Mask.load(tmp_path / "sub" / "mask.pt") == mask
    assert not list((tmp_path / "sub").glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Mask.load(tmp_path / "missing.pt")


def test_sparsity_counts():
    mask = Mask({"a": torch.tensor([True, False, False, False]), "b": torch.tensor([True, True])})
    assert mask.numel() == 6 and mask.count_alive() == 3
    assert mask.sparsity() == pytest.approx(0.5)
    assert mask.layer_sparsity() == pytest.approx({"a": 0.75, "b": 0.0})


def test_shape_mismatch_is_named():
    model = _model()
    with pytest.raises(ValueError, match=r"'4.weight' of shape \(3, 64\)"):
        Mask({"4.weight": torch.ones(3, 5, dtype=torch.bool)}).apply_(model)
    with pytest.raises(ValueError, match="lacks"):
        Mask({"9.weight": torch.ones(3, dtype=torch.bool)}).apply_(model)


def test_torch_prune_roundtrip():
    model = _model()
    mask = _random_mask(model)
    mask.to_torch_prune(model)
    assert hasattr(model[0], "weight_mask") and hasattr(model[0], "weight_orig")
    assert torch.all(model[0].weight[~mask["0.weight"]] == 0)
    back = Mask.from_torch_prune(model, remove=True)
    assert back == mask
    assert isinstance(model[0].weight, nn.Parameter)
    assert torch.all(model[0].weight[~mask["0.weight"]] == 0)


def test_fully_alive_tensors_and_their_state_are_left_untouched():
    # The hook multiplied every tensor by its mask each step, all-ones masks too (issue 20, point 7):
    # a fully alive weight and its momentum must see exactly the optimizer's own in-place writes.
    torch.manual_seed(0)
    model, ref = _model(), _model()
    ref.load_state_dict(model.state_dict())
    mask = Mask({"0.weight": torch.ones(4, 2, 3, 3, dtype=torch.bool), "4.weight": torch.rand(3, 64) > 0.5})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    alive, ref_alive = model[0].weight, ref[0].weight
    start = (alive._version, ref_alive._version)
    mask.attach(model, opt)
    x, y = torch.randn(8, 2, 6, 6), torch.randint(0, 3, (8,))
    for net, o in ((model, opt), (ref, ref_opt)):
        for _ in range(3):
            o.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            o.step()
    assert alive._version - start[0] == ref_alive._version - start[1]  # in-place writes: the optimizer's only
    assert opt.state[alive]["momentum_buffer"]._version == ref_opt.state[ref_alive]["momentum_buffer"]._version
    assert not model[4].weight[~mask["4.weight"]].any()  # the partly pruned tensor is still enforced
    assert not opt.state[model[4].weight]["momentum_buffer"][~mask["4.weight"]].any()
