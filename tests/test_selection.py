import pytest
import torch

from causalprune import LayerCollapseWarning, Mask, schedule, select
from causalprune.selection import GLOBAL, LAYERWISE, ROWS, Pool, blocks


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


# --- pools --------------------------------------------------------------------------------------
def _pool_oracle(scores, units, sparsity, mask=None, tie_break=None):
    """Independent oracle of a pool whose units lie within tensors: for every (tensor, unit), Python's stable
    sort of its alive entries by (score, tie-break, index), pruning the first round(p·N_u) − already pruned."""
    out = {}
    for n, s in scores.items():
        flat_s = s.reshape(-1).tolist()
        flat_t = tie_break[n].reshape(-1).tolist() if tie_break is not None else [0.0] * len(flat_s)
        alive = mask[n].reshape(-1).tolist() if mask is not None else [True] * len(flat_s)
        flat_u = units[n].reshape(-1).tolist()
        keep = list(alive)
        for u in set(flat_u):
            members = [i for i, v in enumerate(flat_u) if v == u]
            dead = sum(not alive[i] for i in members)
            k = max(round(sparsity * len(members)) - dead, 0)
            ranked = sorted((i for i in members if alive[i]), key=lambda i: (flat_s[i], flat_t[i]))
            for i in ranked[:k]:
                keep[i] = False
        out[n] = torch.tensor(keep).view(s.shape)
    return out


def _row_units(shape):
    return torch.arange(shape[0]).view(-1, *[1] * (len(shape) - 1)).expand(shape)


def test_row_pool_hand_computed():
    w = {"w": torch.tensor([[3.0, 1.0, 2.0, 4.0], [8.0, 5.0, 7.0, 6.0]])}
    m = select(w, 0.5, pool=ROWS)  # each row keeps its 2 largest
    assert torch.equal(m["w"], torch.tensor([[True, False, False, True], [True, False, True, False]]))
    g = select(w, 0.5)  # the global ranking prunes all of row 0's 1..4 instead
    assert torch.equal(g["w"], torch.tensor([[False] * 4, [True] * 4]))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.6, 0.9])
def test_row_pool_matches_a_loop_over_rows(seed, sparsity):
    g = torch.Generator().manual_seed(seed)
    shapes = {"fc": (5, 7), "conv": (4, 3, 2, 2), "out": (3, 9)}
    scores = {n: torch.randint(0, 4, s, generator=g).double() for n, s in shapes.items()}  # many ties
    tie = {n: torch.randint(0, 3, s, generator=g).double() for n, s in shapes.items()}
    mask = Mask({n: torch.rand(s, generator=g) > 0.2 for n, s in shapes.items()})
    m = select(scores, sparsity, mask=mask, tie_break=tie, min_alive=0, pool=ROWS)
    expected = _pool_oracle(scores, {n: _row_units(s) for n, s in shapes.items()}, sparsity, mask, tie)
    for n in shapes:
        assert torch.equal(m[n], expected[n]), n


def test_a_new_pool_is_a_value_not_a_branch():
    # A toy pool defined here, not in the library: columns of a 2-D weight (one unit per input feature).
    columns = Pool("column", lambda name, shape: torch.arange(shape[1]).view(1, -1))
    w = {"w": torch.tensor([[3.0, 9.0, 2.0], [1.0, 5.0, 8.0], [4.0, 6.0, 7.0]])}
    m = select(w, 1 / 3, pool=columns, min_alive=0)  # each column of 3 prunes round(1) = its smallest
    assert torch.equal(m["w"], torch.tensor([[True, True, False], [False, False, True], [True, True, True]]))
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.randint(0, 5, (6, 8), generator=g).double(), "b": torch.rand(4, 5, generator=g).double()}
    m = select(scores, 0.5, pool=columns, min_alive=0)
    units = {n: torch.arange(s.shape[1]).expand(s.shape) for n, s in scores.items()}
    expected = _pool_oracle(scores, units, 0.5)
    assert all(torch.equal(m[n], expected[n]) for n in scores)
    # A toy per-output-row pool, written here as a full unit map: the loop over rows, and the library's ROWS.
    toy_rows = Pool("toy-row", lambda name, shape: _row_units(shape))
    tie = {n: torch.randint(0, 2, s.shape, generator=g).double() for n, s in scores.items()}
    m = select(scores, 0.6, pool=toy_rows, tie_break=tie, min_alive=0)
    expected = _pool_oracle(scores, {n: _row_units(s.shape) for n, s in scores.items()}, 0.6, tie_break=tie)
    assert all(torch.equal(m[n], expected[n]) for n in scores)
    assert m == select(scores, 0.6, pool=ROWS, tie_break=tie, min_alive=0)


def test_block_pool_keeps_n_of_every_m_inputs():
    g = torch.Generator().manual_seed(1)
    scores = {"fc": torch.randint(0, 6, (4, 8), generator=g).double(), "conv": torch.rand(3, 4, 3, generator=g)}
    m = select(scores, 0.5, pool=blocks(4), min_alive=0)  # 2:4
    assert torch.equal(m["fc"].view(4, 2, 4).sum(-1), torch.full((4, 2), 2))
    assert torch.equal(m["conv"].view(3, 1, 4, 3).sum(2), torch.full((3, 1, 3), 2))  # blocks run across dim 1
    units = {"fc": torch.arange(8).div(4, rounding_mode="floor").expand(4, 8) + 2 * torch.arange(4).view(4, 1),
             "conv": torch.arange(3).view(1, 1, 3).expand(3, 4, 3) + 3 * torch.arange(3).view(3, 1, 1)}
    expected = _pool_oracle(scores, units, 0.5)
    assert all(torch.equal(m[n], expected[n]) for n in scores)


def test_scope_names_are_the_global_and_layerwise_pools():
    g = torch.Generator().manual_seed(2)
    scores = {"a": torch.randint(0, 3, (6, 5), generator=g).float(), "b": torch.rand(10, generator=g)}
    assert select(scores, 0.6, pool=GLOBAL, min_alive=0) == select(scores, 0.6, min_alive=0)
    assert select(scores, 0.6, pool=LAYERWISE) == select(scores, 0.6, scope="layerwise")


def test_collapse_guard_in_a_row_pool_keeps_the_tensors_best_weight():
    w = {"w": torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])}
    with pytest.warns(LayerCollapseWarning, match="w"):
        m = select(w, 0.9, pool=ROWS)  # round(3.6) = 4: every row would be emptied
    assert torch.equal(m["w"], torch.tensor([[False] * 4, [False, False, False, True]]))


def test_bad_pools_are_named():
    with pytest.raises(ValueError, match=r"'fc'.*multiple of 3, got 4"):
        select({"fc": torch.rand(2, 4)}, 0.5, pool=blocks(3))
    with pytest.raises(ValueError, match=r"2 or more dimensions.*'bias' has shape \(4,\)"):
        select({"bias": torch.rand(4)}, 0.5, pool=ROWS)
    with pytest.raises(ValueError, match="integer >= 1, got 0"):
        blocks(0)
    with pytest.raises(ValueError, match="scope or pool, not both"):
        select({"a": torch.rand(2, 2)}, 0.5, scope="layerwise", pool=ROWS)
    with pytest.raises(ValueError, match=r"units of shape \(3,\) for 'a' of shape \(2, 2\)"):
        select({"a": torch.rand(2, 2)}, 0.5, pool=Pool("bad", lambda name, shape: torch.arange(3)))
