"""The Lightning callback with a real `lightning.Trainer` on CPU: a tiny LightningModule on digits."""

from __future__ import annotations

import csv
import logging

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")
from causalprune import Mask  # noqa: E402
from causalprune.integrations.lightning import CausalPruning  # noqa: E402

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


class Digits(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x[:512] / 16.0, dtype=torch.float32), torch.tensor(y[:512]))
    return DataLoader(data, batch_size=64, shuffle=False)


def _fit(tmp_path, max_epochs, ckpt_path=None, callback=None, name="run"):
    pl.seed_everything(0, verbose=False)
    module = Digits()
    callback = callback or CausalPruning(amount=0.8, n_iter=3, start_epoch=1)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / name / "ckpt", save_last=True, every_n_epochs=1)
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=pl.loggers.CSVLogger(
        tmp_path / name), callbacks=[callback, checkpoints], enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, _loader(), ckpt_path=ckpt_path)
    return module, callback, trainer


def test_the_callback_prunes_to_the_target_logs_and_keeps_masks(tmp_path):
    module, callback, trainer = _fit(tmp_path, max_epochs=5)  # 1 epoch θ_pre, 3 rounds, 1 epoch post-training
    pruner = callback.pruner
    assert pruner.done and [h["round"] for h in pruner.history] == [1, 2, 3]
    assert abs(Mask.from_model(module.net).sparsity() - 0.8) < 1e-3  # permanent: the zeros are in the weights
    for name, m in pruner.mask.items():  # held through the post-training epoch
        assert (dict(module.named_parameters())[name][~m] == 0).all()
    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [float(r["causal_pruning/sparsity"]) for r in rows if r.get("causal_pruning/sparsity")]
    assert len(logged) == 3 and abs(logged[-1] - 0.8) < 1e-3


def test_a_fit_resumed_between_rounds_reaches_the_same_masks(tmp_path):
    whole, callback, _ = _fit(tmp_path, max_epochs=5, name="whole")
    _, first, _ = _fit(tmp_path, max_epochs=3, name="part")  # stops after round 2 of 3
    assert len(first.pruner.history) == 2 and not first.pruner.done
    resumed, again, _ = _fit(tmp_path, max_epochs=5, ckpt_path=tmp_path / "part" / "ckpt" / "last.ckpt",
                             name="part")  # fmt: skip
    assert [h["round"] for h in again.pruner.history] == [1, 2, 3]
    assert again.pruner.mask == callback.pruner.mask
    torch.testing.assert_close(resumed.state_dict(), whole.state_dict())


def test_resuming_mid_pruning_without_the_pruners_state_is_refused(tmp_path):
    _fit(tmp_path, max_epochs=3, name="part")  # stopped after round 2; its checkpoint loses the callback's state
    ckpt = torch.load(tmp_path / "part" / "ckpt" / "last.ckpt", weights_only=False)
    ckpt["callbacks"] = {}
    torch.save(ckpt, tmp_path / "stripped.ckpt")
    with pytest.raises(ValueError, match="without CausalPruning's state"):
        _fit(tmp_path, max_epochs=5, ckpt_path=tmp_path / "stripped.ckpt", name="again")


class Manual(Digits):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        loss = self.loss_fn(self(batch[0]), batch[1])
        self.manual_backward(loss)
        opt.step()


def test_manual_optimization_is_refused_in_one_line(tmp_path):
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[CausalPruning(amount=0.5, n_iter=1)])  # fmt: skip
    with pytest.raises(ValueError, match="automatic_optimization = False"):
        trainer.fit(Manual(), _loader())


def test_bf16_mixed_precision_records_the_loss_change_under_the_same_autocast(tmp_path):
    """The recorder's "after" forward runs under the Trainer's autocast, as training_step's did: with no update
    (lr 0 is refused, so a tiny one) ΔL is the step's real change, not an fp32-minus-bf16 offset."""
    callback = CausalPruning(amount=0.5, n_iter=1, method="energy")  # records ΔL too; no Lasso on y = 0
    pl.seed_everything(0, verbose=False)
    module = Digits()
    module.configure_optimizers = lambda: torch.optim.SGD(module.parameters(), lr=1e-6)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", precision="bf16-mixed", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[callback])  # fmt: skip
    recorded = {}
    from causalprune.pruner import CausalPruner

    end_round = CausalPruner._end_round

    def capture(self):
        recorded["y"] = self._recorder.trajectory().y.clone()
        return end_round(self)

    CausalPruner._end_round = capture
    try:
        trainer.fit(module, _loader())
    finally:
        CausalPruner._end_round = end_round
    # lr 1e-6: the weights move far below bf16's resolution, so the same autocast gives the same loss (the
    # loss computed outside the autocast gave |ΔL| up to 9e-3 here)
    assert recorded["y"].abs().max() < 1e-4, recorded["y"]


def test_sparsity_and_rewind_are_aliases_and_clashes_are_one_line():
    """`sparsity` (the pruner's word) raised a raw TypeError: dict() got multiple values for keyword argument."""
    assert CausalPruning(sparsity=0.7).options["sparsity"] == 0.7
    assert CausalPruning(rewind=False).options["rewind"] is False
    assert CausalPruning().options["sparsity"] == 0.9 and CausalPruning().options["rewind"] is True
    with pytest.raises(ValueError, match="give amount or sparsity .its CausalPruner alias., not both: got amount=0.5"):
        CausalPruning(amount=0.5, sparsity=0.7)
    with pytest.raises(ValueError, match="CausalPruning sets forward itself"):
        CausalPruning(forward=lambda m, x: m(x))
    with pytest.raises(ValueError, match="unknown option.s. sparsty for CausalPruning; valid: .*save_recording"):
        CausalPruning(sparsty=0.7)


def test_resuming_a_finished_fit_keeps_the_pruner(tmp_path):
    """The fit loop is done at once (nothing trains, on_train_start never runs): before, callback.pruner was None."""
    _, first, _ = _fit(tmp_path, max_epochs=5, name="whole")
    again = CausalPruning(amount=0.8, n_iter=3, start_epoch=1)
    _fit(tmp_path, max_epochs=5, ckpt_path=tmp_path / "whole" / "ckpt" / "last.ckpt", callback=again, name="whole")
    assert again.pruner is not None and again.pruner.done and again.pruner.mask == first.pruner.mask
    assert again.pruner.history == first.pruner.history


def _fit_steps(tmp_path, name, max_epochs, ckpt_path=None, **options):
    """Step checkpoints every 8 steps = each epoch's last batch (8 batches), saved before the epoch ends."""
    pl.seed_everything(0, verbose=False)
    module = Digits()
    callback = CausalPruning(amount=0.8, n_iter=3, start_epoch=1, **options)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / name, every_n_train_steps=8, save_top_k=-1,
                                               filename="{step}")  # fmt: skip
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, callbacks=[callback,
        checkpoints], enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, _loader(), ckpt_path=ckpt_path)
    return module, callback


def test_a_step_checkpoint_on_an_epochs_last_batch_ends_that_round_on_resume(tmp_path):
    """Saved after the last batch of round 1's epoch, before the epoch ended; Lightning resumes at the next epoch
    without that epoch's end, so before the rounds shifted by one epoch (only 2 of 3 rounds in the fit)."""
    whole, full = _fit_steps(tmp_path, "whole", 5, save_recording=True)
    resumed, again = _fit_steps(tmp_path, "whole", 5, ckpt_path=tmp_path / "whole" / "step=16.ckpt",
                                save_recording=True)  # fmt: skip
    assert [h["round"] for h in again.pruner.history] == [1, 2, 3]
    assert again.pruner.mask == full.pruner.mask
    torch.testing.assert_close(resumed.state_dict(), whole.state_dict())
    _fit_steps(tmp_path, "plain", 2)  # without the recording the round cannot end: refused in one line
    with pytest.raises(ValueError, match=r"round 1 ended with no recorded step \(8 recorded step\(s\) were lost"):
        _fit_steps(tmp_path, "plain", 5, ckpt_path=tmp_path / "plain" / "step=16.ckpt")


class Regularised(Digits):
    """training_step adds an L2 penalty to the loss: not loss_fn(module(x), y)."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self(x), y) + 0.01 * sum((p**2).sum() for p in self.parameters())


class Noisy(Digits):
    """Dropout and BatchNorm: the check's forward must draw the training forward's dropout and leave BN's stats."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))


def _fit_module(module, callback, max_epochs=3):
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, _loader())
    return module


def test_a_training_step_loss_other_than_loss_fn_is_refused_naming_both_values():
    pl.seed_everything(0, verbose=False)
    module = Regularised()
    with pytest.raises(ValueError, match=r"training_step returned loss [0-9.]+, but loss_fn\(module\(inputs\), "
                                         r"targets\) gives [0-9.]+ on the same batch and weights \(difference \+"):
        _fit_module(module, CausalPruning(amount=0.5, n_iter=2, start_epoch=1))
    pl.seed_everything(0, verbose=False)  # a method that records nothing has no ΔL to bias: not checked
    _fit_module(Regularised(), CausalPruning(amount=0.5, n_iter=2, start_epoch=1, method="magnitude"))


def test_the_loss_check_leaves_dropout_draws_and_running_stats_as_they_were():
    fits = []
    for check in (True, False):
        pl.seed_everything(0, verbose=False)
        callback = CausalPruning(amount=0.5, n_iter=2, start_epoch=1, check_loss=check)
        fits.append((_fit_module(Noisy(), callback), callback))
    (checked, a), (unchecked, b) = fits
    assert a.pruner.mask == b.pruner.mask
    for (n, x), (_, y) in zip(checked.state_dict().items(), unchecked.state_dict().items(), strict=True):
        assert torch.equal(x, y), n  # weights and BatchNorm running statistics bit for bit


class Scheduled(Digits):
    """SGD under a decaying LR schedule (epoch or step interval); records the LR of every epoch's first step."""

    def __init__(self, interval: str) -> None:
        super().__init__()
        self.interval, self.first_lr = interval, []

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.first_lr.append(self.optimizers().param_groups[0]["lr"])
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.interval}}


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_a_rewind_restarts_the_trainers_lr_schedule(tmp_path, interval):
    """Each round (epochs 1-3) starts at the LR the schedule had at θ_pre (epoch 1); without rewind it decays on."""
    pl.seed_everything(0, verbose=False)
    module = Scheduled(interval)
    callback = CausalPruning(amount=0.8, method="magnitude", n_iter=3, start_epoch=1)
    trainer = pl.Trainer(max_epochs=5, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, _loader())
    per_epoch = 1 if interval == "epoch" else 8  # scheduler steps per epoch (512 samples / 64)
    at_pre = 0.1 * 0.5**per_epoch  # the LR at θ_pre: the schedule after epoch 0
    assert callback.pruner.lr_scheduler is trainer.lr_scheduler_configs[0].scheduler
    assert module.first_lr == pytest.approx([0.1, at_pre, at_pre, at_pre, at_pre])  # epoch 4: post-training
    assert callback.pruner._capacity == 8  # steps_per_epoch: the Trainer's batches per epoch
