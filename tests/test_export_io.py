"""Export through a ModelIO (dict inputs), why a batch dimension stayed fixed, and tied weights in the sparse file."""

from __future__ import annotations

import torch
from torch import nn

from causalprune import export
from causalprune.formats import load_sparse, save_sparse, tied_names
from causalprune.modelio import ModelIO

from .test_modelio import DictMLP


class FixedBatch(nn.Module):
    """A model that reshapes with a hard-coded batch of 2: torch.export cannot make its batch dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(2, 6))


def test_a_static_pt2_export_says_why_the_batch_is_fixed(tmp_path):
    io = ModelIO.from_shape((6,))
    dynamic, why = export._export_pt2(FixedBatch().eval(), io, export._example(io), tmp_path / "m.pt2")
    assert dynamic is False
    assert why.split(":")[0].isidentifier() and len(why.splitlines()) == 1 and len(why) > len("Error: ")
    program = torch.export.load(tmp_path / "m.pt2").module()
    assert program(torch.zeros(2, 6)).shape == (2, 3)


def test_pt2_export_takes_dict_inputs_with_a_dynamic_batch(tmp_path):
    net = DictMLP().eval()
    io = ModelIO({"features": torch.zeros(1, 6), "scale": torch.ones(1)})
    dynamic, why = export._export_pt2(net, io, export._example(io), tmp_path / "m.pt2")
    assert dynamic is True and why == ""
    program = torch.export.load(tmp_path / "m.pt2").module()
    x = {"features": torch.randn(5, 6), "scale": torch.rand(5)}
    torch.testing.assert_close(program(**x), net(**x))


def test_the_sparse_file_stores_a_tied_weight_once_and_aliases_it_on_load(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    model[2].weight = model[0].weight  # tied
    with torch.no_grad():
        model[0].weight[:, :6] = 0
    assert tied_names(model) == {"2.weight": "0.weight"}
    save_sparse(model, tmp_path / "s.pt")
    stored = torch.load(tmp_path / "s.pt", weights_only=True)
    assert sorted(stored["state"]) == ["0.bias", "0.weight", "2.bias"]  # the tied tensor once
    assert stored["state"]["0.weight"].layout == torch.sparse_csr
    state = load_sparse(tmp_path / "s.pt")
    assert state["2.weight"] is state["0.weight"]
    assert torch.equal(state["0.weight"], model[0].weight.detach())
    fresh = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    fresh[2].weight = fresh[0].weight
    fresh.load_state_dict(state)
    x = torch.randn(3, 8)
    assert torch.equal(fresh(x), model(x))
