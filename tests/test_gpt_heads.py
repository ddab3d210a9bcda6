"""Structured pruning of the `gpt` transformer: whole heads and MLP neurons (issue 21, Deliver 2)."""

import json

import pytest
import torch
import torch_pruning as tp

from causalprune.cli import main
from causalprune.config import load_config
from causalprune.groups import channel_groups
from causalprune.metrics import attention_macs, macs_and_params
from causalprune.modelio import ModelIO
from causalprune.models import GPT

from .test_export_gpt import outputs_without_the_package

TOKENS = ModelIO.from_shape((8,), torch.long)


def _gpt(seed=0, **kw):
    torch.manual_seed(seed)
    model = GPT(20, block_size=8, **{"n_layer": 2, "n_head": 4, "d_model": 16, "d_mlp": 12, **kw})
    for p in model.parameters():  # not the zero-bias init: every slice matters in the comparison below
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def test_groups_are_whole_heads_and_mlp_neurons_and_keep_the_residual_stream():
    model = _gpt()
    groups = channel_groups(model, TOKENS)
    assert {k: len(v) for k, v in groups.layers.items()} == {
        "blocks.0.attn.q": 4, "blocks.0.mlp.up": 12, "blocks.1.attn.q": 4, "blocks.1.mlp.up": 12}  # fmt: skip
    head = groups.groups[1]
    assert head.is_head and head.channel == 1 and head.channels == [4, 5, 6, 7]
    slices = {(s.name, s.dim): s.index.tolist() for s in head.slices}
    for w in ("q", "k", "v"):  # rows 4..7 of q, k, v (and their biases) are the head's column
        assert slices[(f"blocks.0.attn.{w}.weight", 0)] == [4, 5, 6, 7]
        assert slices[(f"blocks.0.attn.{w}.bias", 0)] == [4, 5, 6, 7]
    assert slices[("blocks.0.attn.proj.weight", 1)] == [4, 5, 6, 7]  # and the same columns of proj
    assert head.size == 3 * 4 * 16  # producer entries: q, k, v rows
    neuron = groups.groups[4]
    assert not neuron.is_head and neuron.layer == "blocks.0.mlp.up" and neuron.size == 16
    assert {(s.name, s.dim) for s in neuron.slices} == {("blocks.0.mlp.up.weight", 0), ("blocks.0.mlp.up.bias", 0),
                                                         ("blocks.0.mlp.down.weight", 1)}  # fmt: skip
    # the residual stream (embeddings, proj / down outputs, LayerNorms) is in no group
    touched = {s.name for g in groups.groups for s in g.slices}
    assert not any(n.startswith(("tok", "pos", "ln_f", "head")) or ".ln" in n for n in touched)
    assert "blocks.0.attn.proj.bias" not in touched and "blocks.0.mlp.down.bias" not in touched


def test_removed_heads_and_neurons_give_the_masked_networks_outputs_and_update_the_head_count():
    model = _gpt()
    x = torch.randint(0, 20, (3, 8))
    groups = channel_groups(model, TOKENS)
    keep = torch.ones(groups.G, dtype=torch.bool)
    keep[[0, 2, 5, 9]] = False  # heads 0 and 2 of block 0, two of its neurons
    keep[[16 + 3, 16 + 4 + 7]] = False  # head 3 of block 1, one of its neurons
    groups.zero_groups_(model, keep)
    with torch.no_grad():
        masked = model(x)
        slim = groups.remove_groups_(model, keep)
        assert [b.attn.n_head for b in slim.blocks] == [2, 3]
        assert slim.blocks[0].attn.q.weight.shape == (8, 16) and slim.blocks[0].attn.proj.weight.shape == (16, 8)
        assert slim.blocks[0].mlp.up.weight.shape == (10, 16) and slim.blocks[1].mlp.down.weight.shape == (16, 11)
        assert slim.tok.weight.shape == (20, 16)  # the residual stream keeps its width
        torch.testing.assert_close(slim(x), masked, rtol=1e-5, atol=1e-5)


def test_full_mask_zeroes_a_head_so_masked_training_keeps_it_silent():
    model = _gpt()
    groups = channel_groups(model, TOKENS)
    keep = torch.ones(groups.G, dtype=torch.bool)
    keep[1] = False
    mask = groups.full_mask(keep)
    assert not mask["blocks.0.attn.k.weight"][4:8].any() and mask["blocks.0.attn.k.weight"][:4].all()
    assert not mask["blocks.0.attn.proj.weight"][:, 4:8].any()
    assert groups.keep_of(mask).tolist() == keep.tolist()


def test_a_heads_importance_is_the_mean_of_its_channels():
    model = _gpt()
    groups = channel_groups(model, TOKENS)
    imp = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)
    scores = groups.importance(imp)
    tp_group, members = groups._tp_groups["blocks.0.attn.q"]
    per_channel = imp(tp_group).double()
    assert per_channel.shape == (16,)
    torch.testing.assert_close(scores[:4], torch.stack([per_channel[torch.tensor(m)].mean() for m in members]))
    assert members == [[r for r in range(16) if r // 4 == h] for h in range(4)] or sorted(map(len, members)) == [4] * 4


def test_attention_products_count_in_the_macs():
    model = _gpt()
    macs, params = macs_and_params(model, TOKENS)
    tp_macs, tp_params = tp.utils.count_ops_and_params(model, torch.zeros(1, 8, dtype=torch.long))
    # per block: q·kᵀ and weights·v over 4 heads of width 4, 8 × 8 positions
    assert macs - int(tp_macs) == 2 * attention_macs((1, 4, 8, 4), (1, 4, 8, 4), (1, 4, 8, 4)) == 2 * 4 * 64 * 8
    assert params == tp_params


def test_a_declared_head_count_must_divide_the_width():
    model = _gpt()
    with pytest.raises(ValueError, match="head count of 3 does not divide the layer's 16"):
        channel_groups(model, TOKENS, heads={model.blocks[0].attn.q: 3})


SMOKE = ["data.max_chars=30000", "model.n_layer=2", "model.n_head=2", "model.d_model=16", "model.block_size=16",
         "train.batch_size=32", "prune.n_pre=1", "prune.n_iter=2", "prune.n_post=1", "causal.probe_size=16",
         "prune.speedup=1.5"]  # fmt: skip


# causal (recorded fit: the fixture's run) and magnitude (Torch-Pruning's importance on head groups) in every
# suite; the others share their paths (placebo and energy: the recording; taylor: the importance) and run as `slow`
SLOW = pytest.mark.slow


@pytest.fixture(scope="module")
def slim_gpt_run(tmp_path_factory):
    """A finished causal run of the smoke twin (heads and neurons removed)."""
    d = tmp_path_factory.mktemp("slim_gpt") / "run"
    assert main(["run", "structured-gpt-pysrc", "--out", str(d), *[a for s in SMOKE for a in ("--set", s)]]) == 0
    return d


def test_export_of_a_slim_gpt_loads_without_the_package_and_computes_the_runs_model(slim_gpt_run, tmp_path):
    from causalprune import export, load_run

    out = export.export_run(slim_gpt_run, "pt2", tmp_path / "g.pt2")
    side = json.loads((tmp_path / "g.pt2.json").read_text())
    assert side["input_dtype"] == "int64" and side["input_shape"] == [16]
    loaded = load_run(slim_gpt_run)
    heads = [b.attn.n_head for b in loaded.model.blocks]
    summary = json.loads((slim_gpt_run / "summary.json").read_text())
    assert heads == [summary["channels"]["kept_per_layer"][f"blocks.{i}.attn.q"] for i in range(2)]
    x = torch.randint(0, 98, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(outputs_without_the_package(out["file"], x, tmp_path), loaded.model(x),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("method", ["magnitude", *(pytest.param(m, marks=SLOW) for m in
                                                    ("causal-placebo", "energy", "taylor", "random"))])
def test_structured_gpt_config_smoke_twin_runs_every_channel_method(method, slim_gpt_run, tmp_path):
    args = ["run", "structured-gpt-pysrc", "--out", str(tmp_path / "run"), "--set", f"prune.method={method}"]
    assert main([*args, *[a for s in SMOKE for a in ("--set", s)]]) == 0
    _check_summary(tmp_path / "run")
    _check_summary(slim_gpt_run)  # causal


def _check_summary(run):
    summary = json.loads((run / "summary.json").read_text())
    assert summary["granularity"] == "channel" and summary["model"] == "gpt"
    assert abs(summary["efficiency"]["speedup_macs"] / 1.5 - 1) <= 0.03
    assert summary["efficiency"]["speedup_measured"] > 0
    kept = summary["channels"]["kept_per_layer"]
    assert set(kept) == {"blocks.0.attn.q", "blocks.0.mlp.up", "blocks.1.attn.q", "blocks.1.mlp.up"}
    assert 1 <= kept["blocks.0.attn.q"] <= 2 and 1 <= kept["blocks.1.attn.q"] <= 2
    assert summary["pruned"]["test_loss"] > 0


def test_structured_gpt_config_is_what_the_issue_asks():
    cfg = load_config("structured-gpt-pysrc")
    assert (cfg.model.name, cfg.data.name, cfg.prune.granularity, cfg.prune.speedup) == ("gpt", "pysrc", "channel", 2.0)


@pytest.mark.parametrize("name", ["gpt-pysrc", "structured-gpt-pysrc"])
def test_the_transformer_configs_have_gpu_twins_with_the_same_method_and_budget(name):
    cpu, gpu = load_config(name), load_config(f"{name}-gpu")
    same = ("method", "granularity", "sparsity", "speedup", "pattern")
    assert [getattr(gpu.prune, k) for k in same] == [getattr(cpu.prune, k) for k in same]
    assert (gpu.model.name, gpu.data.name, gpu.train.device, gpu.train.amp) == ("gpt", "pysrc", "auto", True)
    assert gpu.model.d_model > cpu.model.d_model and gpu.data.max_chars > cpu.data.max_chars
