"""Hugging Face BERT and LLaMA at channel granularity: whole heads and MLP neurons (issue 21, Deliver 2; hfheads)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from causalprune import hfheads  # noqa: E402
from causalprune.groups import channel_groups  # noqa: E402
from causalprune.modelio import ModelIO  # noqa: E402
from causalprune.pruner import CausalPruner  # noqa: E402

transformers.logging.set_verbosity_error()
logging.getLogger("transformers").setLevel(logging.ERROR)


def _bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=16, num_labels=3)  # fmt: skip
    return transformers.BertForSequenceClassification(cfg)


def _llama(kv_heads=4):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=kv_heads, intermediate_size=64, max_position_embeddings=16,
                                   use_cache=False)  # fmt: skip
    return transformers.LlamaForCausalLM(cfg)


def _call(model, batch):
    return model(**batch)


def _loss(outputs, targets):
    logits = outputs.logits
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


IDS = torch.randint(0, 48, (3, 8), generator=torch.Generator().manual_seed(1))
IO = ModelIO.from_inputs({"input_ids": IDS}, _call, None)
HEAD = {"bert": "bert.encoder.layer.{}.attention.self.query", "llama": "model.layers.{}.self_attn.q_proj"}
MLP = {"bert": "bert.encoder.layer.{}.intermediate.dense", "llama": "model.layers.{}.mlp.gate_proj"}
BUILD = {"bert": _bert, "llama": _llama}


def _groups(arch):
    model = BUILD[arch]().eval()
    for p in model.parameters():  # every slice matters in the comparisons below
        nn.init.normal_(p, std=0.3)
    assert hfheads.declare(model) == arch
    return model, channel_groups(model, IO)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_groups_are_whole_heads_and_mlp_neurons(arch):
    _, groups = _groups(arch)
    expected = {HEAD[arch].format(i): 4 for i in range(2)} | {MLP[arch].format(i): 64 for i in range(2)}
    if arch == "bert":
        expected["bert.pooler.dense"] = 32  # the pooler's width: a plain channel group before the classifier
    assert {k: len(v) for k, v in groups.layers.items()} == expected
    head = groups.groups[groups.layers[HEAD[arch].format(0)][1]]
    assert head.is_head and head.channels == list(range(8, 16))  # head 1: 8 channels of width 32 / 4
    slices = {(s.name, s.dim): s.index.tolist() for s in head.slices}
    a = "bert.encoder.layer.0.attention." if arch == "bert" else "model.layers.0.self_attn."
    q, k, v, o = ("self.query", "self.key", "self.value", "output.dense") if arch == "bert" else (
        "q_proj", "k_proj", "v_proj", "o_proj")  # fmt: skip
    for w in (q, k, v):
        assert slices[(f"{a}{w}.weight", 0)] == list(range(8, 16))
    assert slices[(f"{a}{o}.weight", 1)] == list(range(8, 16))
    neuron = groups.groups[groups.layers[MLP[arch].format(0)][3]]
    rows = {"bert": ["bert.encoder.layer.0.intermediate.dense"],
            "llama": ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]}[arch]  # fmt: skip
    down = {"bert": "bert.encoder.layer.0.output.dense", "llama": "model.layers.0.mlp.down_proj"}[arch]
    weights = {(s.name, s.dim): s.index.tolist() for s in neuron.slices if s.name.endswith("weight")}
    assert weights == {**{(f"{r}.weight", 0): [3] for r in rows}, (f"{down}.weight", 1): [3]}
    touched = {s.name for g in groups.groups for s in g.slices}  # the residual stream is in no group
    assert not any("embed" in n or "norm" in n.lower() for n in touched)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_removed_heads_and_neurons_give_the_masked_outputs_and_the_head_count(arch):
    model, groups = _groups(arch)
    keep = torch.ones(groups.G, dtype=torch.bool)
    h0, h1 = groups.layers[HEAD[arch].format(0)], groups.layers[HEAD[arch].format(1)]
    m0, m1 = groups.layers[MLP[arch].format(0)], groups.layers[MLP[arch].format(1)]
    keep[[h0[0], h0[2], h1[3], m0[5], m0[9], m1[60]]] = False  # heads 0, 2 of layer 0, head 3 of layer 1
    groups.zero_groups_(model, keep)
    with torch.no_grad():
        masked = model(input_ids=IDS).logits
        slim = groups.remove_groups_(model, keep)
        hfheads.update_head_counts(slim)
        torch.testing.assert_close(slim(input_ids=IDS).logits, masked, rtol=1e-5, atol=1e-5)
    assert hfheads.head_counts(slim) == [2, 3]
    if arch == "bert":
        attn = [layer.attention.self for layer in slim.bert.encoder.layer]
        assert [(a.num_attention_heads, a.all_head_size) for a in attn] == [(2, 16), (3, 24)]
        assert [layer.intermediate.dense.out_features for layer in slim.bert.encoder.layer] == [62, 63]
    else:
        assert [layer.self_attn.o_proj.in_features for layer in slim.model.layers] == [16, 24]
        assert [layer.mlp.up_proj.out_features for layer in slim.model.layers] == [62, 63]
        assert all(layer.self_attn.num_key_value_groups == 1 for layer in slim.model.layers)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_the_plain_loop_pruner_removes_heads_and_neurons_and_the_slim_model_runs(arch):
    model = BUILD[arch]()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 48, (4, 8), generator=g) for _ in range(4)]
    labels = [torch.randint(0, 3, (4,), generator=g) for _ in range(4)]
    loss = nn.CrossEntropyLoss() if arch == "bert" else _loss

    def target(i):
        return labels[i] if arch == "bert" else batches[i]

    def loss_fn(outputs, y):
        return loss(outputs.logits, y) if arch == "bert" else loss(outputs, y)

    pruner = CausalPruner(model, opt, loss_fn, granularity="channel", sparsity=0.5, n_iter=1,
                          method="magnitude", forward=lambda m, ids: m(input_ids=ids))  # fmt: skip
    for i in range(4):
        pruner.step(batches[i], target(i))
    pruner.end_epoch()
    groups = pruner.plan.groups
    assert sum(g.is_head for g in groups.groups) == 8 and set(groups.heads.values()) == {4}
    keep = groups.keep_of(pruner.mask)
    model.eval()
    with torch.no_grad():
        masked = model(input_ids=batches[0]).logits
        slim = pruner.slim()
        torch.testing.assert_close(slim(input_ids=batches[0]).logits, masked, rtol=1e-5, atol=1e-5)
    kept_heads = [int(keep[groups.layers[HEAD[arch].format(i)]].sum()) for i in range(2)]
    assert hfheads.head_counts(slim) == kept_heads and int((~keep).sum()) == round(0.5 * groups.G)
    if arch == "bert":
        assert [layer.attention.self.num_attention_heads for layer in slim.bert.encoder.layer] == kept_heads


def test_gpt2_is_refused_in_one_line_naming_conv1d():
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=48, n_positions=16, n_embd=32,
                                                                 n_layer=2, n_head=2))  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="cannot prune GPT2LMHeadModel: Torch-Pruning does not trace transformers' "
                                         r"Conv1D layers \(8, e.g. 'transformer.h.0.attn.c_attn'") as e:  # fmt: skip
        CausalPruner(model, opt, _loss, granularity="channel")
    assert "\n" not in str(e.value)


def test_grouped_query_attention_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"'model.layers.0.self_attn' has grouped-query attention \(4 query heads, "
                                         "2 key/value heads\\)") as e:  # fmt: skip
        hfheads.declare(_llama(kv_heads=2))
    assert "\n" not in str(e.value)


def test_a_cache_that_breaks_tracing_is_named_with_the_fix():
    model = _llama()
    model.config.use_cache = True  # LLaMA's default: the output holds a key/value cache
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = CausalPruner(model, opt, _loss, granularity="channel", method="magnitude",
                          forward=lambda m, ids: m(input_ids=ids))  # fmt: skip
    with pytest.raises(ValueError, match="cannot trace model LlamaForCausalLM .*config.use_cache = False"):
        pruner.step(IDS, IDS)


def test_a_model_that_declares_its_own_groups_is_left_alone():
    model = _bert()
    model.channel_pruning_ignored_layers = lambda: []
    assert hfheads.declare(model) is None and not hasattr(model, "channel_pruning_heads")
    assert hfheads.declare(nn.Linear(2, 2)) is None


def test_the_trainer_callback_refuses_gpt2_at_channel_granularity_in_one_line(tmp_path):
    from causalprune.integrations.transformers import CausalPruningCallback

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=48, n_positions=16, n_embd=32,
                                                                 n_layer=2, n_head=2))  # fmt: skip
    data = [{"input_ids": IDS[0], "labels": IDS[0]}] * 4
    args = transformers.TrainingArguments(output_dir=str(tmp_path), num_train_epochs=1, report_to=[],
                                          per_device_train_batch_size=2, use_cpu=True, disable_tqdm=True,
                                          save_strategy="no")  # fmt: skip
    cb = CausalPruningCallback(granularity="channel", method="magnitude", n_iter=1)
    with pytest.raises(ValueError, match="cannot prune GPT2LMHeadModel: Torch-Pruning does not trace") as e:
        transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[cb]).train()
    assert "\n" not in str(e.value)


def test_a_macs_budget_with_causal_scores_slims_a_llama_to_its_counted_macs():
    from causalprune.metrics import macs_and_params
    from causalprune.structured import SPEEDUP_TOLERANCE

    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = CausalPruner(model, opt, _loss, granularity="channel", speedup=1.5, n_iter=1,
                          forward=lambda m, ids: m(input_ids=ids))  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        ids = torch.randint(0, 48, (4, 8), generator=g)
        pruner.step(ids, ids)
    pruner.end_epoch()
    last = pruner.history[-1]
    assert last["G"] == 2 * 4 + 2 * 64 and last["T"] == 6  # causal: one column per head or neuron
    dense = pruner.plan.dense_macs
    slim = pruner.slim()
    io = ModelIO.from_inputs(ids, lambda m, x: m(input_ids=x), None)
    assert macs_and_params(slim, io)[0] == last["macs"] <= dense / 1.5 * (1 + SPEEDUP_TOLERANCE)
