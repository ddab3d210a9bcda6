"""Causal pruning in the Hugging Face Trainer: a small GPT-2 (random init, no download) on counting sequences.

The callback prunes the weights of GPT-2's Linear layers (its Conv1D attention and MLP
projections); the embeddings and the tied LM head stay dense.
"""

import torch
import transformers

from causalprune.integrations.transformers import CausalPruningCallback, linear_weights


class Counting(torch.utils.data.Dataset):
    """Token sequences counting up modulo the vocabulary from a random start: next tokens a model can learn."""

    def __init__(self, n: int = 256, length: int = 32, vocab: int = 64, seed: int = 0) -> None:
        start = torch.randint(0, vocab, (n, 1), generator=torch.Generator().manual_seed(seed))
        self.ids = (start + torch.arange(length)) % vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


if __name__ == "__main__":
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else "runs/hf-gpt2"
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=64,
                                                                 n_layer=2, n_head=2))  # fmt: skip
    pruning = CausalPruningCallback(sparsity=0.7, n_iter=3, start_epoch=2)  # 2 epochs to θ_pre, 3 rounds
    args = transformers.TrainingArguments(output_dir=out, num_train_epochs=6, per_device_train_batch_size=16,
                                          learning_rate=3e-3, lr_scheduler_type="constant", save_strategy="no",
                                          report_to=[], use_cpu=True, logging_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Counting(), eval_dataset=Counting(seed=1),
                                   callbacks=[pruning])  # fmt: skip
    trainer.train()
    params = dict(model.named_parameters())
    names = linear_weights(model)
    zeros = sum(int((params[n] == 0).sum()) for n in names) / sum(params[n].numel() for n in names)
    print(f"Linear weights pruned: {zeros:.3f}; eval loss {trainer.evaluate()['eval_loss']:.3f}")
