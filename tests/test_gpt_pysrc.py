"""The `gpt` model and the `pysrc` data set (issue 21, Deliver 1, weight level)."""

import math

import pytest
import torch

from causalprune.config import ConfigError, config_from_dict
from causalprune.data import load_pool, make_splits
from causalprune.data.text import SHARES, VOCAB_SIZE, decode, encode, split_texts, stdlib_files, windows
from causalprune.experiment import run_experiment
from causalprune.masks import prunable_parameters
from causalprune.models import GPT
from causalprune.train import evaluate, loss_function

TINY_GPT = {
    "name": "tiny-gpt",
    "seed": 0,
    "data": {"name": "pysrc", "max_chars": 40_000},
    "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16, "block_size": 16},
    "train": {"batch_size": 32, "lr": 0.003, "optimizer": "adamw", "weight_decay": 0.0, "lr_schedule": "constant"},
    "prune": {"method": "magnitude", "sparsity": 0.5, "n_pre": 1, "n_iter": 1, "n_prune": 1, "n_post": 1},
    "causal": {"probe_size": 16},
}


def test_pysrc_split_is_deterministic_and_disjoint_by_file():
    a, b = split_texts(60_000), split_texts(60_000)
    assert a == b
    files = [set(names) for _, names in a.values()]
    assert all(files) and sum(map(len, files)) == len(set().union(*files))  # each file in one split only
    # every split's files come in path order, a prefix of that split's files in the sorted standard library
    assert all(names == sorted(names) for _, names in a.values())


def test_pysrc_respects_max_chars_and_its_shares():
    texts = split_texts(30_000)
    assert sum(len(t) for t, _ in texts.values()) <= 30_000
    for split, (text, _) in texts.items():
        assert len(text) == int(SHARES[split] * 30_000)  # the standard library holds far more than this


def test_pysrc_windows_shift_targets_by_one_character():
    pool = load_pool("pysrc", max_chars=20_000, block_size=8)
    x, y = pool.x_train, pool.y_train
    assert x.dtype == torch.int64 and x.shape == y.shape and x.shape[1] == 8
    assert x.shape[0] == (int(0.85 * 20_000) - 1) // 8
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[1:, 0], y[:-1, -1])
    assert int(x.max()) < VOCAB_SIZE == pool.num_classes
    ids, _ = windows(torch.arange(10), 3)
    assert ids.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert decode(encode("def f():\n\treturn 1")) == "def f():\n\treturn 1"
    assert encode("é")[0] == 0


def test_pysrc_splits_are_fixed_whatever_the_seed():
    pool = load_pool("pysrc", max_chars=20_000, block_size=8)
    s0, s1 = make_splits(pool, 0, 0.1, 4), make_splits(pool, 1, 0.1, 4)
    for split in ("train", "val", "probe", "test"):
        assert torch.equal(getattr(s0, split)[0], getattr(s1, split)[0])
    assert len(s0.probe[1]) == 4
    with pytest.raises(ValueError, match="causal.probe_size 10000"):
        make_splits(pool, 0, 0.1, 10_000)


def test_pysrc_with_too_little_text_says_so():
    with pytest.raises(ValueError, match="raise data.max_chars"):
        load_pool("pysrc", max_chars=100, block_size=64)


def test_stdlib_files_are_sorted_python_sources():
    files = stdlib_files()
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)


def test_gpt_forward_shape_and_causal_masking():
    torch.manual_seed(0)
    model = GPT(VOCAB_SIZE, block_size=12, n_layer=2, n_head=2, d_model=16).eval()
    idx = torch.randint(0, VOCAB_SIZE, (3, 12))
    out = model(idx)
    assert out.shape == (3, 12, VOCAB_SIZE)
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % VOCAB_SIZE  # inputs after t = 6 change
    out2 = model(changed)
    torch.testing.assert_close(out2[:, :7], out[:, :7], rtol=0, atol=1e-6)
    assert not torch.allclose(out2[:, 7:], out[:, 7:])
    assert model(idx[:, :5]).shape == (3, 5, VOCAB_SIZE)
    with pytest.raises(ValueError, match="block_size 12"):
        model(torch.zeros(1, 13, dtype=torch.long))


def test_gpt_layers_and_tied_weights():
    model = GPT(VOCAB_SIZE, block_size=8, n_layer=1, n_head=2, d_model=8)
    attn = model.blocks[0].attn
    assert {attn.q.out_features, attn.k.out_features, attn.v.out_features} == {8}
    assert model.blocks[0].mlp.up.out_features == 32  # d_mlp = 4 × d_model
    assert model.head.weight is not model.tok.weight
    tied = GPT(VOCAB_SIZE, block_size=8, n_layer=1, n_head=2, d_model=8, tie_weights=True)
    assert tied.head.weight is tied.tok.weight
    names = prunable_parameters(tied)
    assert sum(p is tied.tok.weight for p in names.values()) == 1


def test_gpt_config_keys_are_checked():
    cfg = config_from_dict(TINY_GPT, ["model.d_mlp=24", "model.tie_weights=true"])
    assert (cfg.model.d_mlp, cfg.model.tie_weights) == (24, True)
    with pytest.raises(ConfigError, match=r"model.d_model \(16\) must be a multiple of model.n_head \(3\)"):
        config_from_dict(TINY_GPT, ["model.n_head=3"])
    with pytest.raises(ConfigError, match="model.block_size"):
        config_from_dict(TINY_GPT, ["model.block_size=0"])
    with pytest.raises(ConfigError, match="data.max_chars"):
        config_from_dict(TINY_GPT, ["data.max_chars=0"])


def test_pysrc_and_gpt_go_together():
    from causalprune import resolve

    resolve.check(config_from_dict(TINY_GPT))
    for override in ("model.name=mlp", "data.name=digits"):
        with pytest.raises(ConfigError, match="data set pysrc \\(token ids\\) and model gpt go together"):
            resolve.check(config_from_dict(TINY_GPT, [override]))


def test_loss_and_accuracy_are_per_token():
    logits = torch.randn(2, 3, 5)
    target = torch.tensor([[0, 1, 2], [3, 4, 0]])
    loss = loss_function("classification")(logits, target)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.reshape(6, 5), target.reshape(6)))

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits[x]

    m = evaluate(Fixed(), torch.tensor([0, 1]), target, "classification", torch.device("cpu"), batch_size=1)
    assert m["accuracy"] == pytest.approx((logits.argmax(-1) == target).float().mean().item())
    assert m["loss"] == pytest.approx(loss.item(), rel=1e-6)


def test_magnitude_runs_end_to_end_on_gpt_pysrc(tmp_path):
    s = run_experiment(config_from_dict(TINY_GPT), tmp_path / "run", quiet=True)
    assert (s["model"], s["dataset"]) == ("gpt", "pysrc")
    assert abs(s["sparsity_actual"] - 0.5) < 1e-3
    assert 0 < s["pruned"]["test_accuracy"] < 1  # next-character accuracy
    # test loss in nats per character, below a uniform guess over the vocabulary
    assert 0 < s["pruned"]["test_loss"] < math.log(VOCAB_SIZE) and 0 < s["dense"]["test_loss"] < math.log(VOCAB_SIZE)
    assert "test_loss_before_post" in s["pruned"]
