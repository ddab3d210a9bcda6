"""N:M sparsity (`prune.pattern`): blocks of M consecutive inputs keep N, through `selection.blocks(M)` pools."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from causalprune.config import ConfigError, PruneConfig, config_from_dict, dump_config, load_config
from causalprune.experiment import run_experiment
from causalprune.export import load_run
from causalprune.masks import Mask, prunable_parameters
from causalprune.plan import WeightPlan
from causalprune.selection import ROWS

from .conftest import TINY


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 8), nn.Unflatten(1, (8, 1, 1)), nn.Conv2d(8, 2, 3))


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))


def random_scores(mask: Mask, seed: int, ties: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, m in mask.items():
        s = torch.randn(m.shape, generator=g)
        out[n] = s.round() if ties else s  # rounded: many ties, broken by index order
    return out


def oracle(scores: dict[str, torch.Tensor], prune_per_block: int, m: int) -> dict[str, torch.Tensor]:
    """Hand-computed N:M masks of 2-D weights from all-alive: loop over rows and blocks, stable sort."""
    out = {}
    for name, s in scores.items():
        keep = torch.ones(s.shape, dtype=torch.bool)
        for r in range(s.shape[0]):
            for b in range(0, s.shape[1], m):
                block = s[r, b:b + m].tolist()
                order = sorted(range(m), key=lambda i: block[i])  # Python's sort is stable: ties by index
                for i in order[:prune_per_block]:
                    keep[r, b + i] = False
        out[name] = keep
    return out


def alive_per_block(mask: Mask, m: int) -> list[torch.Tensor]:
    """Return every tensor's alive count per block of `m` along dim 1, as one flat tensor each."""
    counts = []
    for t in mask.values():
        x = t.movedim(1, -1)  # blocks run along the input dimension
        counts.append(x.reshape(*x.shape[:-1], -1, m).sum(-1).reshape(-1))
    return counts


@pytest.mark.parametrize(("pattern", "n", "m"), [("2:4", 2, 4), ("1:4", 1, 4), ("1:2", 1, 2)])
@pytest.mark.parametrize("ties", [False, True])
def test_one_round_equals_a_hand_computed_oracle(pattern, n, m, ties):
    net = tiny_model()
    plan = WeightPlan.build(net, PruneConfig(method="magnitude", pattern=pattern, sparsity=None, n_iter=1))
    assert plan.targets() == [(m - n) / m]
    scores = random_scores(plan.initial_mask(), seed=3, ties=ties)
    mask = plan.select(scores, None, plan.targets()[-1], plan.initial_mask())
    want = oracle(scores, m - n, m)
    for name in want:
        assert torch.equal(mask[name], want[name]), name


@pytest.mark.parametrize("kind", ["cubic", "geometric", "linear"])
def test_rounds_approach_the_pattern_and_the_last_reaches_it_exactly(kind):
    net = model()
    prune = PruneConfig(method="magnitude", pattern="2:4", schedule=kind, n_iter=4)
    assert prune.sparsity == 0.5
    plan = WeightPlan.build(net, prune)
    mask = plan.initial_mask()
    for k, target in enumerate(plan.targets()):
        mask = plan.select(random_scores(mask, seed=k), None, target, mask)
        for counts in alive_per_block(mask, 4):
            assert (counts == 4 - round(target * 4)).all(), (k, target)  # round k: round(s_k·M) pruned per block
    for counts in alive_per_block(mask, 4):
        assert (counts == 2).all()
    assert mask.sparsity() == 0.5
    assert "pattern 2:4" in plan.describe()[-1]


def test_a_weight_whose_inputs_are_not_a_multiple_of_m_is_refused_naming_it():
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"^prune.pattern '2:4': .* '0\.weight' \(shape \(4, 6\)\) to be a"):
        WeightPlan.build(net, PruneConfig(pattern="2:4"))


def test_the_pattern_replaces_a_criterions_own_pool():
    net = tiny_model()
    plan = WeightPlan.build(net, PruneConfig(method="magnitude", pattern="2:4"))
    scores = random_scores(plan.initial_mask(), seed=5)
    mask = plan.select(scores, None, 0.5, plan.initial_mask(), pool=ROWS)  # Wanda's rows: blocks lie within them
    want = oracle(scores, 2, 4)
    assert all(torch.equal(mask[n], want[n]) for n in want)


def test_a_dumped_config_with_a_pattern_loads_as_the_same_config(tmp_path):
    cfg = config_from_dict(TINY, ["prune.sparsity=null", "prune.pattern='3:8'"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg and again.prune.sparsity == 5 / 8 and again.digest() == cfg.digest()


def test_no_pattern_leaves_the_scope_and_the_sparsity_as_they_were():
    assert PruneConfig().sparsity == 0.9 and PruneConfig().pattern is None
    plan = WeightPlan.build(tiny_model(), PruneConfig(sparsity=0.5))
    assert plan.pattern_pool is None


@pytest.mark.parametrize(
    ("sets", "says"),
    [
        (["prune.pattern='2:2'"], "prune.pattern must be \"N:M\" with integers 0 < N < M (e.g. \"2:4\"), got '2:2'"),
        (["prune.pattern='0:4'"], "got '0:4'"),
        (["prune.pattern='4:2'"], "got '4:2'"),
        (["prune.pattern='a:b'"], "got 'a:b'"),
        (["prune.pattern='2-4'"], "got '2-4'"),
        (["prune.pattern='2:4'", "prune.granularity=channel"], "needs prune.granularity: weight, got channel"),
        (["prune.pattern='2:4'", "prune.sparsity=0.7"], "prune.sparsity 0.7 conflicts with prune.pattern '2:4'"),
    ],
)
def test_bad_patterns_are_refused_in_one_line_naming_the_value(sets, says):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"prune": {"method": "magnitude"}}, sets)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_an_unquoted_pattern_in_a_file_is_refused_but_on_the_command_line_it_is_the_pattern(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prune:\n  method: magnitude\n  pattern: 2:4\n")
    with pytest.raises(ConfigError, match="YAML reads an unquoted 2:4 as the base-60 number 124"):
        load_config(path)
    assert config_from_dict({}, ["prune.pattern=2:4"]).prune.pattern == "2:4"
    assert config_from_dict({}, ["train.lr=0.5"]).train.lr == 0.5  # other values are YAML as before


def test_a_pattern_from_a_file_sets_the_sparsity(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('prune:\n  method: magnitude\n  pattern: "1:4"\n')
    assert load_config(path).prune.sparsity == 0.75
    assert config_from_dict({}, ["prune.pattern='2:4'", "prune.sparsity=0.5"]).prune.sparsity == 0.5


@pytest.mark.parametrize("method", ["magnitude", "causal"])
def test_a_run_ends_with_every_block_at_n_alive(method, tmp_path):
    cfg = config_from_dict(TINY, [f"prune.method={method}", "prune.sparsity=null", "prune.pattern='2:4'",
                                  "train.threads=1"])  # fmt: skip
    run_experiment(cfg, tmp_path / "r", quiet=True)
    for k in (1, 2):
        mask = Mask.load(tmp_path / "r" / f"level_{k}" / "mask.pt")
        for counts in alive_per_block(mask, 4):
            assert (counts <= 2).all()
    for counts in alive_per_block(mask, 4):
        assert (counts == 2).all()
    model, final = load_run(tmp_path / "r")  # after post-training: the mask held at every step
    assert torch.equal(torch.cat(alive_per_block(final, 4)), torch.cat(alive_per_block(mask, 4)))
    nonzero = Mask({n: p.detach() != 0 for n, p in prunable_parameters(model).items()})
    for counts in alive_per_block(nonzero, 4):
        assert (counts <= 2).all()


def test_a_run_on_inputs_not_a_multiple_of_m_writes_nothing(tmp_path):
    cfg = config_from_dict(TINY, ["prune.method=magnitude", "prune.sparsity=null", "prune.pattern='2:4'",
                                  "model.widths=[30]"])  # fmt: skip
    with pytest.raises(ValueError, match=r"prune.pattern '2:4': .* 'net\.3\.weight' \(shape \(10, 30\)\) to be"):
        run_experiment(cfg, tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()


def test_the_dry_run_prints_the_entries_pruned_per_block():
    from causalprune.experiment import dry_run

    cfg = config_from_dict(TINY, ["prune.method=magnitude", "prune.sparsity=null", "prune.pattern='2:4'",
                                  "prune.n_iter=5"])  # fmt: skip
    assert "pattern 2:4: entries pruned per block of 4 inputs after each round: 1, 2, 2, 2, 2" in str(dry_run(cfg))
