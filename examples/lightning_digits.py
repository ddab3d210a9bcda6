"""Causal pruning in Lightning: the `CausalPruning` callback on a LightningModule (digits, an MLP)."""

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from causalprune.integrations.lightning import CausalPruning


class Digits(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        self.loss_fn = nn.CrossEntropyLoss()  # the callback re-evaluates it after each step (ΔL)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


if __name__ == "__main__":
    pl.seed_everything(0)
    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))
    train, test = torch.utils.data.random_split(data, [1400, 397], generator=torch.Generator().manual_seed(0))
    # 3 epochs to θ_pre, 4 rounds of 1 epoch (90 % of the weights pruned), 5 epochs of post-training
    pruning = CausalPruning(amount=0.9, n_iter=4, start_epoch=3, verbose=1)
    trainer = pl.Trainer(max_epochs=12, callbacks=[pruning], accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    module = Digits()
    trainer.fit(module, DataLoader(train, batch_size=64, shuffle=True))
    xt, yt = next(iter(DataLoader(test, batch_size=len(test))))
    accuracy = (module(xt).argmax(1) == yt).float().mean().item()
    print(f"sparsity {pruning.pruner.mask.sparsity():.3f}, test accuracy {accuracy:.3f}")
