import pytest
import torch

from causalprune import LayerCollapseWarning, Mask, schedule, select


def test_cubic_schedule_matches_hand_values():
    s = schedule("cubic", 0.9, 10)
    expected = [0.9 * (1 - (1 - i / 10) ** 3) for i in range(1, 11)]
    assert s[:3] == pytest.approx([0.2439, 0.4392, 0.5913], abs=1e-4)
    assert s == pytest.approx(expected)
    assert s[-1] == 0.9


def test_geometric_and_linear_schedules():
    g = schedule("geometric", 0.99, 2)
    assert g == pytest.approx([0.9, 0.99])
    assert schedule("linear", 0.6, 3) == pytest.approx([0.2, 0.4, 0.6])


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.2, float("nan")])
def test_sparsity_out_of_range_is_an_error(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        schedule("cubic", bad, 3)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        select({"a": torch.ones(4)}, bad)


def test_unknown_schedule_and_scope():
    with pytest.raises(ValueError, match="valid: cubic, geometric, linear"):
        schedule("exp", 0.5, 3)
    with pytest.raises(ValueError, match="valid: global, layerwise"):
        select({"a": torch.ones(4)}, 0.5, scope="local")


def test_global_selection_hand_computed():
    scores = {"a": torch.tensor([[5.0, 1.0], [3.0, 7.0]]), "b": torch.tensor([2.0, 6.0, 4.0, 8.0])}
    m = select(scores, 0.5)  # prune the 4 smallest of 8: 1, 2, 3, 4
    assert torch.equal(m["a"], torch.tensor([[True, False], [False, True]]))
    assert torch.equal(m["b"], torch.tensor([False, True, False, True]))


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.33, 0.5, 0.77, 0.9, 0.997])
def test_exact_prune_counts(sparsity):
    scores = {"a": torch.rand(30, 40), "b": torch.rand(100), "c": torch.rand(7, 3, 3)}
    total = 1200 + 100 + 63
    m = select(scores, sparsity)
    assert total - m.count_alive() == round(sparsity * total)


def test_pruned_weights_stay_pruned_and_counts_are_cumulative():
    scores = {"a": torch.arange(10.0)}
    current = Mask({"a": torch.tensor([True] * 9 + [False])})  # the best weight already pruned
    m = select(scores, 0.3, mask=current)
    assert torch.equal(m["a"], torch.tensor([False, False, True, True, True, True, True, True, True, False]))
    with pytest.raises(ValueError, match="cannot be revived"):
        select(scores, 0.05, mask=m)


def test_tie_break_orders_tied_scores():
    scores = {"a": torch.tensor([0.0, 0.0, 0.0, 0.0, 2.0, 1.0])}
    kkt = {"a": torch.tensor([0.9, 0.1, 0.5, 0.3, 0.0, 0.0])}
    m = select(scores, 0.5, tie_break=kkt)  # prune 3 zeros with the lowest KKT: idx 1, 3, 2
    assert torch.equal(m["a"], torch.tensor([True, False, False, False, True, True]))
    # The tie-break never overrides a different primary score.
    m2 = select(scores, 4 / 6, tie_break=kkt)
    assert torch.equal(m2["a"], torch.tensor([False, False, False, False, True, True]))


def test_layerwise_prunes_the_same_fraction_per_layer():
    scores = {"a": torch.rand(100), "b": torch.rand(10) * 100}
    m = select(scores, 0.3, scope="layerwise")
    assert m.layer_sparsity() == pytest.approx({"a": 0.3, "b": 0.3})
    kept_b = m["b"]
    assert torch.equal(kept_b, scores["b"] >= scores["b"].sort().values[3])


def test_collapse_guard_fires_and_says_so():
    scores = {"small": torch.full((4,), 1e-6), "big": torch.arange(1.0, 101.0)}
    with pytest.warns(LayerCollapseWarning, match="small"):
        m = select(scores, 0.5)
    assert int(m["small"].sum()) == 1
    assert m.count_alive() == 104 - 52  # still the exact count
    with pytest.warns(LayerCollapseWarning, match="small"):
        m = select({"small": torch.ones(4), "big": torch.ones(10)}, 0.9, scope="layerwise")
    assert int(m["small"].sum()) == 1


def test_collapse_guard_quiet_when_not_needed(recwarn):
    select({"a": torch.arange(10.0), "b": torch.arange(10.0) + 5}, 0.5)
    assert not [w for w in recwarn if issubclass(w.category, LayerCollapseWarning)]


def test_impossible_sparsity_with_guard():
    with pytest.raises(ValueError, match="impossible"):
        select({"a": torch.ones(2), "b": torch.ones(2)}, 0.8)


def test_nan_scores_are_named():
    with pytest.raises(ValueError, match="'b'.*NaN"):
        select({"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")])}, 0.5)
