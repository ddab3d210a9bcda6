import pytest
import torch

from causalprune.layout import ParamLayout, Segments


def _layout():
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.arange(10.0, 14.0)}
    alive = {"a": torch.tensor([[True, False, True], [False, True, True]]), "b": torch.ones(4, dtype=torch.bool)}
    return tensors, ParamLayout.of(tensors, alive)


def test_flatten_takes_alive_entries_row_major_in_name_order():
    tensors, lay = _layout()
    assert lay.d == 8 and lay.sizes == [4, 4] and lay.offsets == [0, 4, 8]
    assert lay.flatten(tensors).tolist() == [0, 2, 4, 5, 10, 11, 12, 13]
    assert lay.flatten([tensors["a"], tensors["b"]], dtype=torch.float64).dtype == torch.float64


def test_unflatten_inverts_flatten_and_fills_pruned_entries():
    tensors, lay = _layout()
    back = lay.unflatten(lay.flatten(tensors), fill=-1.0)
    assert back["a"].tolist() == [[0, -1, 2], [-1, 4, 5]]
    assert back["b"].equal(tensors["b"])
    keep = lay.unflatten(torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool), fill=False, dtype=torch.bool)
    assert keep["a"].tolist() == [[True, False, False], [False, True, True]]
    like = lay.unflatten_like(torch.ones(8, dtype=torch.float64), [torch.zeros(2, 3, dtype=torch.float16),
                                                                   torch.zeros(4)])  # fmt: skip
    assert like[0].dtype == torch.float16 and like[0].tolist() == [[1, 0, 1], [0, 1, 1]]


def test_flatten_into_matches_flatten_for_dense_and_partial_tensors():
    tensors, lay = _layout()
    out = torch.empty(lay.d)
    lay.flatten_into([tensors["a"], tensors["b"]], out)
    assert out.equal(lay.flatten(tensors))


def test_groups_sum_entries_into_shared_columns():
    tensors, lay0 = _layout()
    column_of = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    lay = ParamLayout(lay0.names, lay0.shapes, lay0.alive, column_of=column_of, n_columns=3)
    x = lay.flatten(tensors)  # [0, 2, 4, 5, 10, 11, 12, 13]
    assert lay.to_columns(x).tolist() == [0 + 2 + 13, 4 + 5, 10 + 11 + 12]
    assert lay.to_columns(torch.stack([x, 2 * x])).shape == (2, 3)  # (T, d) rows → (T, G)
    assert lay.from_columns(torch.tensor([1.0, 2.0, 3.0])).tolist() == [1, 1, 2, 2, 3, 3, 3, 1]


def test_segments_locate_and_errors():
    seg = Segments([3, 0, 2])
    found = seg.locate(torch.tensor([4, 0, 3, 2]))
    assert [(i, pos.tolist(), loc.tolist()) for i, pos, loc in found] == [(0, [1, 3], [0, 2]), (2, [0, 2], [1, 0])]
    tensors, lay = _layout()
    with pytest.raises(ValueError, match="expected a \\(8,\\) vector"):
        lay.unflatten(torch.zeros(3))
    with pytest.raises(ValueError, match="missing tensors \\['b'\\]"):
        lay.flatten({"a": tensors["a"]})
