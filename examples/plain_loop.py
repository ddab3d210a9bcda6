"""Causal pruning around a plain PyTorch loop: digits, an MLP, 90 % of its weights pruned in 4 rounds."""

import torch
from sklearn.datasets import load_digits
from torch import nn

from causalprune import CausalPruner

x, y = load_digits(return_X_y=True)
x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
train, test = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 1400, 64)], (x[1400:], y[1400:])
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
opt, loss_fn = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), nn.CrossEntropyLoss()
for _ in range(3):  # train to θ_pre, the rewind point
    for xb, yb in train:
        opt.zero_grad(), loss_fn(model(xb), yb).backward(), opt.step()
pruner = CausalPruner(model, opt, loss_fn, sparsity=0.9, n_iter=4, epochs_per_round=1)
for _ in range(4 + 5):  # 4 rounds (train recorded, fit the Lasso, prune, rewind), then 5 of post-training
    for xb, yb in train:
        pruner.step(xb, yb)  # after the last round: a plain step, the mask enforced
    pruner.end_epoch()
pruner.make_permanent()
accuracy = (model(test[0]).argmax(1) == test[1]).float().mean().item()
print(f"sparsity {pruner.mask.sparsity():.3f}, test accuracy {accuracy:.3f}, rounds {len(pruner.history)}")
