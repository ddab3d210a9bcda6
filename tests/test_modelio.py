"""ModelIO: model inputs as one value (tensor, tuple or dict), threaded through tracing, MACs, latency and criteria."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from causalprune import masks, metrics
from causalprune.criteria import score
from causalprune.groups import channel_groups
from causalprune.masks import Mask
from causalprune.modelio import ModelIO, batch_size, to_device


class DictMLP(nn.Module):
    """An MLP called model(features=x, scale=s): the output is scaled per sample (a second input)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.out = nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(4, 3)

    def forward(self, features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc2(torch.relu(self.fc1(features))))
        return self.out(h) * scale[:, None]


class TensorMLP(nn.Module):
    """The same network called model(x) (scale 1)."""

    def __init__(self, net: DictMLP) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = net.fc1, net.fc2, net.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _dict_io(loss_fn=None) -> ModelIO:
    return ModelIO({"features": torch.zeros(1, 6), "scale": torch.ones(1)}, loss_fn=loss_fn)


def test_from_shape_makes_the_tensors_the_shape_code_made():
    io = ModelIO.from_shape((3, 4))
    assert io.kind == "tensor" and io.input_shape == (3, 4) and io.input_dtype is None and io.plain
    assert torch.equal(io.example_inputs(1, "zeros"), torch.zeros(1, 3, 4))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for b in (1, 5):  # the generator advances across calls exactly as the old code's
        assert torch.equal(io.example_inputs(b, "randn", generator=g1), torch.randn(b, 3, 4, generator=g2))
    ones = io.example_inputs(1, "ones", float_dtype=torch.float64)
    assert ones.dtype == torch.float64 and torch.equal(ones, torch.ones(1, 3, 4, dtype=torch.float64))
    assert ModelIO.from_shape((7,), torch.long).input_dtype == torch.long


def test_forward_calls_the_model_by_the_kind_of_inputs():
    seen = []

    class Probe(nn.Module):
        def forward(self, *args, **kwargs):
            seen.append((len(args), sorted(kwargs)))
            return torch.zeros(1)

    x = torch.zeros(2, 3)
    for inputs, want in ((x, (1, [])), ((x, x), (2, [])), ({"a": x, "b": x}, (0, ["a", "b"]))):
        ModelIO(inputs).forward(Probe(), inputs)
        assert seen[-1] == want
    custom = ModelIO(x, forward_fn=lambda m, i: m(i, extra=i))
    custom.forward(Probe(), x)
    assert seen[-1] == (1, ["extra"])


def test_example_inputs_of_a_dict_fill_floats_and_repeat_token_ids():
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    io = ModelIO({"input_ids": ids, "mask": torch.ones(2, 3), "labels": ids})
    out = io.example_inputs(3, "randn", generator=torch.Generator().manual_seed(1))
    assert torch.equal(out["input_ids"], ids[[0, 1, 0]])  # token ids: the example's samples, repeated
    assert out["mask"].shape == (3, 3) and out["mask"].dtype == torch.float32
    assert torch.equal(out["mask"], torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))
    zeros = io.example_inputs(2, "zeros")
    assert torch.equal(zeros["input_ids"], torch.zeros(2, 3, dtype=torch.long))
    assert io.input_shape is None and batch_size(out) == 3 and "input_ids: (2, 3) int64" in io.describe()
    first = ModelIO.from_inputs({"input_ids": ids})
    assert torch.equal(first.example["input_ids"], ids[:1])


def test_bad_inputs_are_refused_in_one_line():
    with pytest.raises(TypeError, match="tensor, a tuple of tensors or a dict of tensors, got str"):
        ModelIO("x")
    with pytest.raises(ValueError, match=r"share a leading batch dimension, got shapes \[\(2, 3\), \(4,\)\]"):
        ModelIO((torch.zeros(2, 3), torch.zeros(4)))
    with pytest.raises(ValueError, match="fill must be one of zeros, ones, randn, example, got 'rand'"):
        ModelIO.from_shape((2,)).example_inputs(1, "rand")
    with pytest.raises(ValueError, match=r"an input shape needs sizes >= 1, got \(0, 2\)"):
        ModelIO.from_shape((0, 2))
    with pytest.raises(ValueError, match="outputs carry no loss"):
        ModelIO.from_shape((2,)).loss(torch.zeros(1), None)


def test_loss_falls_back_to_the_models_own_loss():
    assert float(ModelIO.from_shape((2,)).loss({"loss": torch.tensor(2.5)}, None)) == 2.5
    assert to_device(None, "cpu") is None


def test_macs_of_dict_and_custom_inputs_equal_the_tensor_models():
    net = DictMLP()
    # Torch-Pruning's convention: weight MACs + one op per bias addition (functional ReLUs count nothing)
    want = metrics.macs_and_params(TensorMLP(net), (6,))
    assert want == (6 * 5 + 5 + 5 * 4 + 4 + 4 * 3 + 3, 6 * 5 + 5 + 5 * 4 + 4 + 4 * 3 + 3)
    assert metrics.macs_and_params(net, _dict_io()) == want
    custom = ModelIO(torch.zeros(1, 6), forward_fn=lambda m, x: m(x, torch.ones(len(x))))
    assert metrics.macs_and_params(net, custom) == want
    assert metrics.efficiency(net, _dict_io())["flops"] == metrics.efficiency(TensorMLP(net), (6,))["flops"]
    lat = metrics.latency_ms(net, _dict_io(), batch_sizes=(2,), repeats=1, warmup=0)
    assert set(lat) == {"batch_2", "threads", "repeats"}


def test_efficiency_counts_a_layer_type_registered_after_import(monkeypatch):
    class Dense(nn.Module):  # a Linear of its own, as GPT-2's Conv1D is
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight.t()

    model = nn.Sequential(Dense())
    with torch.no_grad():
        model[0].weight[:, :6] = 0  # 75 % of its weights are zero
    monkeypatch.setattr(masks, "PRUNABLE_LAYERS", masks.PRUNABLE_LAYERS)  # restored after the test
    masks.register_prunable_layer(Dense)
    eff = metrics.efficiency(model, (8,))
    assert eff["flops"] == 2 * 4 * 8  # one (1, 8) @ (8, 4) matmul
    assert eff["flops_nz"] == pytest.approx(2 * 4 * 8 * 0.25)  # scaled by its density: the type counts
    assert eff["theoretical_speedup"] == pytest.approx(4.0)


def _group_summary(groups):
    return [(g.layer, g.channel, g.size, sorted((s.name, s.dim, tuple(s.index.tolist())) for s in g.slices))
            for g in groups.groups]  # fmt: skip


def test_channel_groups_trace_dict_inputs_and_a_forward_fn_like_a_tensor():
    net = DictMLP()
    want = _group_summary(channel_groups(TensorMLP(net), torch.zeros(1, 6)))
    assert len(want) == 9  # fc1's 5 and fc2's 4 output channels; the output layer gives none
    assert _group_summary(channel_groups(net, _dict_io())) == want
    custom = ModelIO(torch.zeros(1, 6), forward_fn=lambda m, x: m(features=x, scale=torch.ones(len(x))))
    groups = channel_groups(net, custom)
    assert _group_summary(groups) == want
    slim = groups.slim_copy(torch.tensor([True, False] * 4 + [True]))  # rebuilt on a copy through the same ModelIO
    assert slim.fc1.out_features == 3 and slim.fc2.out_features == 2  # 5 + 4 channels, every other one dropped


@pytest.mark.parametrize("method", ["snip", "taylor", "fisher", "grasp", "gradient"])
def test_batch_criteria_score_dict_batches_through_the_modelio(method):
    net = DictMLP()
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(4, 6, generator=g) for _ in range(2)]
    ys = [torch.randint(0, 3, (4,), generator=g) for _ in range(2)]
    loss = nn.CrossEntropyLoss()
    want = score(method, TensorMLP(net), list(zip(xs, ys, strict=True)), loss)  # scale 1: the same function
    from causalprune.criteria import ScoreInput, get

    batches = [({"features": x, "scale": torch.ones(4)}, y) for x, y in zip(xs, ys, strict=True)]
    inp = ScoreInput(net, Mask.ones(net), data=batches, loss_fn=None, io=_dict_io(loss))
    got = get(method).fn(inp).scores
    assert sorted(got) == sorted(want)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7)


def test_synflow_through_a_modelio_equals_the_shape():
    net = DictMLP()
    from causalprune.criteria.synflow import synflow_scores

    want = synflow_scores(TensorMLP(net), Mask.ones(net), (6,))
    got = synflow_scores(net, Mask.ones(net), _dict_io())  # scale of ones: R is the same sum
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-6, atol=0)
