"""The training loop: one screen; recording, masks, evaluation and logging come in as callbacks.

`fit` runs whole epochs over a split's inputs (tensors, or image files streamed by a
DataLoader: `causalprune.data.iterate`). A `step` function replaces the plain
training step when a stage records (``TrajectoryRecorder.step``); masks are enforced by
the optimizer hook `Mask.attach` installs; `Callback.on_epoch_end` evaluates and logs.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig
from .data import ImageFiles, Inputs, iterate
from .platform import SINGLE, Platform

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Seconds between plain progress lines when stdout is not a terminal (logs, CI, nohup).
PROGRESS_EVERY_S = 30.0


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or Inf."""


class _PlainProgress:
    """Progress as plain lines, at most one per `PROGRESS_EVERY_S`, when stdout is not a terminal.

    (On a terminal, tqdm draws its bar instead.)
    """

    def __init__(self, desc: str, epochs: int) -> None:
        self.desc, self.epochs = desc, epochs
        self.enabled = not sys.stdout.isatty()
        self.start = self.last = time.monotonic()

    def epoch_end(self, logs: dict[str, float]) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= PROGRESS_EVERY_S:
            print(f"{self.desc}: epoch {int(logs['epoch'])}/{self.epochs}, train loss {logs['train_loss']:.4f}, "
                  f"{now - self.start:.0f} s", flush=True)  # fmt: skip
            self.last = now


class Callback:
    """Hooks into `fit`; override what you need."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Called after each epoch with at least ``train_loss`` and ``lr``; may add entries."""


class SquaredError(nn.Module):
    """Mean squared error between (N, 1) or (N,) outputs and (N,) targets."""

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the mean of (out − target)²."""
        return nn.functional.mse_loss(out.reshape(target.shape), target)


class TokenCrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy of (N, C) logits vs (N,) targets, or per token of (B, T, V) logits vs (B, T) targets."""

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the mean cross-entropy over samples, or over every token of a sequence batch."""
        if out.dim() == 3 and target.dim() == 2:  # a language model's logits: mean over B·T tokens
            return super().forward(out.reshape(-1, out.shape[-1]), target.reshape(-1))
        return super().forward(out, target)


def loss_function(task: str) -> nn.Module:
    """Cross-entropy for classification (per token for sequences), mean squared error for regression."""
    return TokenCrossEntropy() if task == "classification" else SquaredError()


def make_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Build the configured optimizer (SGD with momentum and weight decay, or AdamW)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int,
                   initial_lr: float | None = None) -> Any:  # fmt: skip
    """Per-step LR schedule over one stage: constant, cosine (to 0) or one-cycle.

    One-cycle peaks at the optimizer's lr and starts from `initial_lr` (None: lr / 25,
    PyTorch's default; the paper's CIFAR runs start at 0.001 and peak at 0.1).
    """
    total_steps = max(total_steps, 1)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if kind == "onecycle":
        peak = [g["lr"] for g in optimizer.param_groups]
        div = peak[0] / initial_lr if initial_lr is not None else 25.0
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=total_steps, div_factor=div)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def plain_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module) -> StepFn:
    """Return the ordinary training step: zero grads, forward, backward, optimizer step."""

    def step(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


@torch.no_grad()
def evaluate(model: nn.Module, x: Inputs, y: torch.Tensor, task: str, device: torch.device,
             batch_size: int = 1024) -> dict[str, float]:  # fmt: skip
    """Return {"loss", "accuracy"} (classification) or {"loss", "mse"} (regression), eval mode."""
    was_training = model.training
    model.eval()
    loss_fn = loss_function(task)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # (summed loss, correct): no per-batch sync
    n = 0
    if isinstance(x, ImageFiles):  # decoded batches wait in worker queues: keep them small (224² images)
        batch_size = min(batch_size, 256)
    for xb, yb in iterate(x, y, batch_size, device):
        out = model(xb)
        tokens = yb.numel() if task == "classification" else len(yb)  # (B, T) targets: per token (characters)
        sums[0] += loss_fn(out, yb).double() * tokens
        if task == "classification":
            sums[1] += (out.argmax(-1) == yb).sum()
        n += tokens
    model.train(was_training)
    total, correct = sums.tolist()
    metrics = {"loss": total / n}
    metrics["accuracy" if task == "classification" else "mse"] = correct / n if task == "classification" else total / n
    return metrics


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_data: tuple[Inputs, torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    task: str,
    seed: int,
    lr_schedule: str = "constant",
    step: StepFn | None = None,
    callbacks: Sequence[Callback] = (),
    desc: str = "train",
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    amp: bool = False,
    initial_lr: float | None = None,
    plat: Platform = SINGLE,
) -> list[dict[str, float]]:
    """Train `model` for `epochs` epochs; return one log dict per epoch.

    In a distributed run (`plat`) every rank draws the same global batches of `batch_size`
    (and augments them alike) and trains on its slice of each (``tensor_split``, rank order):
    `model` is then the `DistributedDataParallel` wrapper, whose gradient averaging makes a
    step the single process's step on the global batch (up to summation order). The
    epoch's training loss is summed over the ranks.

    Raises `TrainingDiverged` naming the epoch when the training loss stops being finite.
    """
    device = next(model.parameters()).device
    loss_fn = loss_function(task)
    x, y = train_data
    steps_per_epoch = math.ceil(len(y) / batch_size)
    scheduler = make_scheduler(optimizer, lr_schedule, epochs * steps_per_epoch, initial_lr)
    generator = torch.Generator().manual_seed(seed)

    step = step or plain_step(model, optimizer, loss_fn)
    history = []
    progress = _PlainProgress(desc, epochs)
    model.train()
    # disable=None: bars on a terminal only, so logs and CI output stay clean
    for epoch in tqdm(range(epochs), desc=desc, leave=False, disable=None if epochs else True):
        total = torch.zeros((), device=device)  # summed on the device: no per-step sync
        for xb, yb in iterate(x, y, batch_size, device, generator, train=True):
            if augment is not None:
                xb = augment(xb, generator)
            if plat.distributed:  # this rank's slice of the global batch
                xb, yb = xb.tensor_split(plat.world_size)[plat.rank], yb.tensor_split(plat.world_size)[plat.rank]
            # No cast cache: a recorder's "after" forward must see the weights the step just changed.
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
                total += step(xb, yb).float() * len(yb)
            scheduler.step()
        plat.all_reduce_sum(total)
        logs = {"epoch": epoch + 1, "train_loss": float(total) / len(y), "lr": optimizer.param_groups[0]["lr"]}
        if not math.isfinite(logs["train_loss"]):
            raise TrainingDiverged(f"training loss is {logs['train_loss']} in epoch {epoch + 1} of {desc}")
        for cb in callbacks:
            cb.on_epoch_end(epoch + 1, logs)
        progress.epoch_end(logs)
        history.append(logs)
    return history
