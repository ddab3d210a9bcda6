import numpy as np
import torch
from torch import nn

from causalprune import Mask
from causalprune.analysis.landscape import filter_normalise, landscape, random_direction


def test_filter_normalisation_is_exact_per_filter():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 5, 5)
    w[2] = 0.0  # an all-zero (pruned) filter
    d = filter_normalise(torch.randn(4, 3, 5, 5), w)
    for f in range(4):
        assert torch.allclose(d[f].norm(), w[f].norm(), rtol=1e-6)
    assert torch.all(d[2] == 0)
    assert torch.all(filter_normalise(torch.randn(7), torch.randn(7)) == 0)  # biases: no direction


def test_directions_respect_the_mask_and_landscape_restores_weights(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    mask = Mask({"0.weight": torch.rand(4, 3) > 0.5, "2.weight": torch.ones(2, 4, dtype=torch.bool)})
    mask.apply_(model)
    d = random_direction(model, mask, torch.Generator().manual_seed(0))
    assert torch.all(d[0][~mask["0.weight"]] == 0)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    r = landscape(model, nn.CrossEntropyLoss(), (x, y), steps=5, mask=mask, out=tmp_path)
    assert r["loss"].shape == (5, 5)
    centre = nn.CrossEntropyLoss()(model.eval()(x), y).item()
    assert np.isclose(r["loss"][2, 2], centre, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert (tmp_path / "landscape.npz").exists() and (tmp_path / "landscape.png").exists()
