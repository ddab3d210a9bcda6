"""The Hugging Face Trainer callback on a tiny randomly initialised GPT-2 (no downloads), generated token data."""

from __future__ import annotations

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")
from causalprune import Mask  # noqa: E402
from causalprune.criteria.causal import CausalSettings  # noqa: E402
from causalprune.integrations.transformers import CausalPruningCallback, linear_weights  # noqa: E402

transformers.logging.set_verbosity_error()
logging.getLogger("transformers").setLevel(logging.ERROR)


class Tokens(torch.utils.data.Dataset):
    """Sequences that count up modulo the vocabulary from a random start: learnable next tokens."""

    def __init__(self, n=64, length=16, vocab=48):
        g = torch.Generator().manual_seed(0)
        start = torch.randint(0, vocab, (n, 1), generator=g)
        self.ids = (start + torch.arange(length)) % vocab

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _model():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=48, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(cfg)


def _train(tmp_path, epochs, callback, resume=None, save_steps=None):
    model = _model()
    saving = {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {"save_strategy": "epoch"}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=8, learning_rate=1e-3,
        report_to=[], use_cpu=True, logging_strategy="no", seed=0, data_seed=0, disable_tqdm=True,
        lr_scheduler_type="constant", **saving)  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def test_linear_weights_leave_embeddings_and_the_tied_head_alone():
    names = linear_weights(_model())
    assert names and all(".attn." in n or ".mlp." in n for n in names)  # GPT-2's Conv1D weights
    assert "transformer.wte.weight" not in names and "transformer.wpe.weight" not in names


def test_the_trainer_prunes_the_linear_weights_and_checkpoints_keep_them_zero(tmp_path):
    cb = CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1)
    model, trainer = _train(tmp_path, 4, cb)  # 1 epoch θ_pre, 2 rounds, 1 epoch post-training
    assert cb.pruner.done and [h["round"] for h in cb.pruner.history] == [1, 2]
    assert cb.pruner.history[-1]["T"] == 8  # one recorded row per optimizer step of the round
    names = linear_weights(model)
    params = dict(model.named_parameters())
    alive = sum(int((params[n] != 0).sum()) for n in names)
    total = sum(params[n].numel() for n in names)
    assert abs(1 - alive / total - 0.5) < 1e-3
    assert (params["transformer.wte.weight"] != 0).all()  # the embedding (and the tied head) untouched
    logged = [e for e in trainer.state.log_history if "causal_pruning/sparsity" in e]
    assert [e["causal_pruning/round"] for e in logged] == [1, 2]
    # the last checkpoint's weights hold the zeros, and its pruner state the mask
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "checkpoint-32"))
    state = torch.load(tmp_path / "checkpoint-32" / "causalprune_pruner.pt", weights_only=False)["pruner"]
    rp = dict(reloaded.named_parameters())
    for n in names:
        assert torch.equal(rp[n] != 0, state["mask"][n])


def test_a_resumed_trainer_continues_to_the_same_masks(tmp_path):
    whole = CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1)
    _train(tmp_path / "whole", 4, whole)
    part = CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1)
    _train(tmp_path / "part", 2, part)  # stops after round 1
    assert len(part.pruner.history) == 1
    again = CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1)
    _train(tmp_path / "part", 4, again, resume=str(tmp_path / "part" / "checkpoint-16"))
    assert [h["round"] for h in again.pruner.history] == [1, 2]
    assert Mask(again.pruner.mask) == Mask(whole.pruner.mask)


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="method 'snip' does not score channels in the Trainer callback; it supports "
                                         "bn_scale, causal, causal-placebo, energy, magnitude, random, taylor"):
        CausalPruningCallback(method="snip", granularity="channel")  # snip scores single weights only
    with pytest.raises(ValueError, match="granularity channel prunes the channel groups .* params, prune_embeddings"):
        CausalPruningCallback(granularity="channel", params=["transformer.h.0.mlp.c_fc.weight"])
    with pytest.raises(ValueError, match="granularity must be weight or channel, got 'head'"):
        CausalPruningCallback(granularity="head")
    with pytest.raises(ValueError, match="delta_loss must be same_batch"):
        CausalPruningCallback(settings=CausalSettings(delta_loss="probe"))
    part = CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1)
    _train(tmp_path, 2, part)
    (tmp_path / "checkpoint-16" / "causalprune_pruner.pt").unlink()
    with pytest.raises(ValueError, match="without the pruner's state"):
        _train(tmp_path, 4, CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1),
               resume=str(tmp_path / "checkpoint-16"))


def test_a_model_with_nothing_to_prune_is_named():
    with pytest.raises(ValueError, match="no prunable parameters"):
        linear_weights(torch.nn.Embedding(4, 4))
    only_embeddings = torch.nn.Sequential(torch.nn.Embedding(4, 4))
    with pytest.raises(ValueError, match="no prunable parameters|no Linear weights"):
        linear_weights(only_embeddings)


def test_linear_weights_of_a_bert_leave_its_embeddings_and_tied_decoder_alone():
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)  # fmt: skip
    model = transformers.BertForMaskedLM(cfg)
    names = linear_weights(model)
    assert any("attention.self.query" in n for n in names) and any("intermediate.dense" in n for n in names)
    assert not any("embeddings" in n or "decoder" in n for n in names)
    with_head = linear_weights(model, prune_embeddings=True, prune_head=True)
    assert "bert.embeddings.word_embeddings.weight" in with_head  # the decoder's weight is the word embedding


@pytest.mark.parametrize(("start_epoch", "checkpoint"), [(1, 16), (2, 12)])
def test_step_checkpoints_resume_to_the_same_masks(tmp_path, start_epoch, checkpoint):
    """Saved every 4 steps (8 per epoch): checkpoint-16 ends round 1 (start_epoch 1), checkpoint-12 lies in the
    middle of the epoch before pruning starts (start_epoch 2)."""
    whole = CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=start_epoch)
    _train(tmp_path / "whole", start_epoch + 3, whole)
    part = CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=start_epoch)
    _train(tmp_path / "part", start_epoch + 3, part, save_steps=4)
    again = CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=start_epoch)
    _train(tmp_path / "part", start_epoch + 3, again, resume=str(tmp_path / "part" / f"checkpoint-{checkpoint}"),
           save_steps=4)  # fmt: skip
    assert [h["round"] for h in again.pruner.history] == [1, 2]
    assert [h["T"] for h in again.pruner.history] == [8, 8]  # every step of both rounds recorded
    assert Mask(again.pruner.mask) == Mask(whole.pruner.mask)


def test_a_tied_head_is_pruned_when_either_of_its_roles_is():
    model = _model()
    plain = linear_weights(model)
    assert "transformer.wte.weight" in linear_weights(model, prune_head=True)
    assert "transformer.wte.weight" in linear_weights(model, prune_embeddings=True)
    assert set(plain) < set(linear_weights(model, prune_head=True))


def test_a_mid_epoch_checkpoint_after_pruning_started_without_the_state_is_refused(tmp_path):
    """checkpoint-12 lies in the middle of epoch 1, the first pruned epoch (start_epoch 1): before, int(1.5) <= 1
    passed it as "before pruning started" and the rounds began one epoch late."""
    _train(tmp_path, 2, CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1), save_steps=4)
    (tmp_path / "checkpoint-12" / "causalprune_pruner.pt").unlink()
    with pytest.raises(ValueError, match=r"resumed at step 12 \(epoch 1.50\), after pruning started at epoch 1"):
        _train(tmp_path, 3, CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1),
               resume=str(tmp_path / "checkpoint-12"), save_steps=4)  # fmt: skip


def test_a_damaged_pruner_file_is_named_in_one_line(tmp_path):
    _train(tmp_path, 2, CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1))
    path = tmp_path / "checkpoint-16" / "causalprune_pruner.pt"
    path.write_bytes(path.read_bytes()[:100])  # truncated, as a disk full or a kill mid-copy leaves it
    with pytest.raises(ValueError, match=rf"^{path} is damaged \(\w+: [^\n]*\): resume from another checkpoint"):
        _train(tmp_path, 4, CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1), resume=str(path.parent))


def test_the_pruner_state_is_in_the_checkpoint_before_older_ones_are_rotated_away(tmp_path, monkeypatch):
    """A Trainer that dies while it rotates checkpoints (save_total_limit=1: checkpoint-8 is deleted as
    checkpoint-16 is complete) must leave checkpoint-16 with the pruner's state: before, the callback wrote it in
    on_save, after the rotation, so nothing was left to resume from."""
    import transformers.trainer as trainer_module

    rotate = trainer_module.rotate_checkpoints

    def dies_after_rotating(*args, **kwargs):
        rotate(*args, **kwargs)
        if (tmp_path / "checkpoint-16").exists():
            raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(trainer_module, "rotate_checkpoints", dies_after_rotating)
    model = _model()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=8, learning_rate=1e-3, report_to=[],
        use_cpu=True, logging_strategy="no", seed=0, disable_tqdm=True, save_strategy="steps", save_steps=8,
        save_total_limit=1)  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(),
                                   callbacks=[CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-16"]
    state = torch.load(tmp_path / "checkpoint-16" / "causalprune_pruner.pt", weights_only=False)["pruner"]
    assert state["round"] == 2 and len(state["history"]) == 1  # round 1 ended at the epoch's last step


def test_unknown_or_clashing_options_are_one_line():
    with pytest.raises(ValueError, match="CausalPruningCallback sets forward itself"):
        CausalPruningCallback(forward=lambda m, b: m(**b))
    with pytest.raises(ValueError, match="unknown option.s. amount for CausalPruningCallback; valid: "):
        CausalPruningCallback(amount=0.7)


class _Watcher(transformers.TrainerCallback):
    """A reporter such as TensorBoard's: it sees only what reaches on_log."""

    def __init__(self):
        self.logged = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logged.append((state.global_step, dict(logs)))


@pytest.mark.parametrize("watcher_first", [True, False])
def test_another_callback_sees_the_rounds_through_on_log(tmp_path, watcher_first):
    """Before, the rounds were appended to state.log_history alone: no reporter's on_log ever saw one."""
    watcher, cb = _Watcher(), CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=4, per_device_train_batch_size=8, learning_rate=1e-3,
        report_to=[], use_cpu=True, logging_strategy="no", seed=0, disable_tqdm=True, save_strategy="no")  # fmt: skip
    callbacks = [watcher, cb] if watcher_first else [cb, watcher]  # the Trainer puts its reporters first
    trainer = transformers.Trainer(model=_model(), args=args, train_dataset=Tokens(), callbacks=callbacks)
    trainer.train()
    rounds = [(step, logs["causal_pruning/round"], logs["causal_pruning/sparsity"]) for step, logs in watcher.logged
              if "causal_pruning/round" in logs]  # fmt: skip
    # 8 steps per epoch: θ_pre in epoch 1, the rounds end with epochs 2 and 3
    assert rounds == [(16, 1, cb.pruner.history[0]["sparsity"]), (24, 2, cb.pruner.history[1]["sparsity"])]
    history = [e for e in trainer.state.log_history if "causal_pruning/round" in e]
    assert [(e["step"], e["causal_pruning/round"]) for e in history] == [(16, 1), (24, 2)]


def test_a_pruner_state_of_another_run_is_refused(tmp_path):
    """Resumed from run a's checkpoint with output_dir b, the callback finds b's file at the same step: before, it
    loaded it silently (another run's masks and θ_pre)."""
    _train(tmp_path / "a", 2, CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1))
    _train(tmp_path / "b", 2, CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1))
    with pytest.raises(ValueError, match=r"checkpoint-16/causalprune_pruner.pt is not the pruner state of the "
                                         r"checkpoint the Trainer resumed from \(step 16\)"):  # fmt: skip
        _train(tmp_path / "b", 4, CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1),
               resume=str(tmp_path / "a" / "checkpoint-16"))  # fmt: skip


class _Payload:
    """Pickles as a call: loading it with weights_only=False would create `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_crafted_pickle_in_the_state_file_is_refused_without_running_it(tmp_path):
    _train(tmp_path, 2, CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1))
    path, marker = tmp_path / "checkpoint-16" / "causalprune_pruner.pt", tmp_path / "ran"
    saved = torch.load(path, weights_only=True)  # the callback's own file: tensors and plain containers
    torch.save({**saved, "pruner": {**saved["pruner"], "history": _Payload(str(marker))}}, path)
    with pytest.raises(ValueError, match=rf"^{path} is damaged \(UnpicklingError: "):
        _train(tmp_path, 4, CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1), resume=str(path.parent))
    assert not marker.exists()


def test_the_trainer_runs_taylor_on_the_batches_through_the_model_io(tmp_path):
    from causalprune.integrations.transformers import supported_methods

    assert {"taylor", "snip", "grasp", "fisher", "synflow", "causal"} <= set(supported_methods())
    cb = CausalPruningCallback(sparsity=0.5, n_iter=1, start_epoch=1, method="taylor")
    model, _ = _train(tmp_path, 2, cb)  # 1 epoch θ_pre, 1 round scored on that round's dict batches
    assert cb.pruner.done and cb.pruner.history[0]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    params = dict(model.named_parameters())
    names = linear_weights(model)
    assert sum(int((params[n] == 0).sum()) for n in names) / sum(params[n].numel() for n in names) == \
        pytest.approx(0.5, abs=1e-3)  # fmt: skip
    assert (params["transformer.wte.weight"] != 0).all()


class Labelled(torch.utils.data.Dataset):
    """Token sequences with an attention mask and a class label (the first token modulo 3)."""

    def __init__(self, n=64, length=12, vocab=48):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(len(self.ids[i]), dtype=torch.long),
                "labels": self.ids[i, 0] % 3}  # fmt: skip


def test_the_trainer_prunes_channels_of_a_bert_traced_through_dict_inputs(tmp_path):
    from causalprune.integrations.transformers import attention_layers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16, num_labels=3)  # fmt: skip
    model = transformers.BertForSequenceClassification(cfg)
    assert len(attention_layers(model)) == 2 * 4  # query, key, value and the attention output, per layer
    cb = CausalPruningCallback(sparsity=0.5, n_iter=1, start_epoch=1, granularity="channel")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=8, learning_rate=1e-3,
        report_to=[], use_cpu=True, logging_strategy="no", seed=0, disable_tqdm=True, save_strategy="no")  # fmt: skip
    transformers.Trainer(model=model, args=args, train_dataset=Labelled(), callbacks=[cb]).train()
    groups = cb.pruner.plan.groups
    assert sorted(groups.layers) == [  # whole heads (causalprune.hfheads), FFN neurons, the pooler's width
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.intermediate.dense",
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.intermediate.dense", "bert.pooler.dense"]
    assert groups.G == 2 * 2 + 2 * 64 + 32
    last = cb.pruner.history[-1]
    assert last["channels_pruned"] == groups.G // 2 and last["T"] == 8  # causal: one recorded row per step
    keep = groups.keep_of(cb.pruner.mask)
    batch = {k: torch.stack([Labelled()[i][k] for i in range(4)]) for k in ("input_ids", "attention_mask", "labels")}
    model.eval()
    with torch.no_grad():
        masked = model(**batch).logits
    slim = cb.pruner.slim()
    widths = [slim.bert.encoder.layer[i].intermediate.dense.out_features for i in range(2)]
    heads = [slim.bert.encoder.layer[i].attention.self.num_attention_heads for i in range(2)]
    assert sum(widths) + sum(heads) + slim.bert.pooler.dense.out_features == int(keep.sum())
    assert [slim.bert.encoder.layer[i].attention.self.query.out_features for i in range(2)] == [16 * h for h in heads]
    with torch.no_grad():
        torch.testing.assert_close(slim(**batch).logits, masked, rtol=0, atol=1e-6)  # masked ≡ slim


class FirstStepLR(transformers.TrainerCallback):
    """Records the optimizer's LR at the first step of every epoch (8 steps of 8 sequences each)."""

    def __init__(self):
        self.lr = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step % 8 == 0:
            self.lr.append(optimizer.param_groups[0]["lr"])


def test_a_rewind_restarts_the_trainers_lr_schedule(tmp_path):
    """A linear decay over 32 steps: each round (epochs 1-2) and the epoch after start at the LR of θ_pre (step 8)."""
    cb, watch = CausalPruningCallback(sparsity=0.5, method="magnitude", n_iter=2, start_epoch=1), FirstStepLR()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=4, per_device_train_batch_size=8, learning_rate=1e-3,
        report_to=[], use_cpu=True, logging_strategy="no", seed=0, disable_tqdm=True, save_strategy="no",
        lr_scheduler_type="linear")  # fmt: skip
    trainer = transformers.Trainer(model=_model(), args=args, train_dataset=Tokens(), callbacks=[cb, watch])
    trainer.train()
    at_pre = 1e-3 * (1 - 8 / 32)
    assert cb.pruner.lr_scheduler is trainer.lr_scheduler and cb.pruner._capacity == 8  # 8 batches per epoch
    assert watch.lr == pytest.approx([1e-3, at_pre, at_pre, at_pre])


def test_a_callback_called_outside_a_trainers_handler_warns_that_reporters_will_not_see_rounds():
    from types import SimpleNamespace

    cb = CausalPruningCallback(sparsity=0.5, n_iter=2, start_epoch=1)
    with pytest.warns(UserWarning, match="reporters .* will not see them"):
        cb.on_train_begin(SimpleNamespace(), SimpleNamespace(global_step=0), SimpleNamespace())
