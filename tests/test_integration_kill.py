"""SIGKILL at a step checkpoint in the middle of a recorded round, for each integration, then resume.

A training process (this file run as a script) saves a step checkpoint inside round 2 and is
killed right after it (it waits there, so the moment is exact); the test resumes from that
checkpoint in its own process and compares with an uninterrupted run of the same code. With
``save_recording=True`` the resumed run reaches the same masks; without it the resume warns,
naming the checkpoint and the recorded steps it lost. Each run: a tiny network, 8 steps an epoch,
2 rounds of one epoch, one epoch of post-training, a checkpoint every 4 steps: checkpoint 12
lies 4 steps into round 2.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from causalprune import CausalPruner, Mask

STOP = 12  # the step checkpoint the process is killed at (4 recorded steps into round 2)
LOST = r"resumed in round 2 after 4 recorded step\(s\), of which it holds 0"


def _digits() -> list[tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:256] / 16.0, dtype=torch.float32)
    return list(zip(x.split(32), torch.tensor(y[:256]).split(32), strict=True))  # 8 batches


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def _stopped(out: Path) -> None:
    """Say that the checkpoint is written, then wait to be killed."""
    (out / "stopped").touch()
    time.sleep(600)


# --- the three training scripts ---------------------------------------------------------------
def plain(out: Path, save_recording: bool, stop: int | None = None, resume: bool = False) -> Mask:
    """A plain loop that saves (model, optimizer, pruner, step) every 4 steps; return the final mask."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.8, n_iter=2, save_recording=save_recording)
    batches, start, path = _digits(), 0, out / "checkpoint.pt"
    if resume:
        ckpt = torch.load(path, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        pruner.load_state_dict(ckpt["pruner"], source=str(path))
        start = ckpt["step"]
    for step in range(start, 24):  # one loop: 2 rounds, then post-training
        pruner.step(*batches[step % 8])
        if (step + 1) % 8 == 0:
            pruner.end_epoch()
        if (step + 1) % 4 == 0:
            state = {"step": step + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "pruner": pruner.state_dict()}  # fmt: skip
            torch.save(state, out / "tmp.pt")
            os.replace(out / "tmp.pt", path)
            if step + 1 == stop:
                _stopped(out)
    return pruner.mask


def lightning(out: Path, save_recording: bool, stop: int | None = None, resume: bool = False) -> Mask:
    """Lightning with a step checkpoint every 4 steps and a dataloader it can resume mid-epoch."""
    import logging

    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from causalprune.integrations.lightning import CausalPruning

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.loss_fn = _mlp(), nn.CrossEntropyLoss()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return self.loss_fn(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    class Resumable(DataLoader):  # Lightning saves and restores its position in the epoch
        skip = given = 0

        def __iter__(self):
            skip, self.skip, self.given = self.skip, 0, self.skip
            for i, b in enumerate(super().__iter__()):
                if i >= skip:
                    self.given += 1
                    yield b

        def state_dict(self):
            return {"given": self.given}

        def load_state_dict(self, state):
            self.skip = state["given"]

    class Stopping(pl.callbacks.ModelCheckpoint):
        def on_train_batch_end(self, trainer, *args, **kwargs):
            super().on_train_batch_end(trainer, *args, **kwargs)
            if trainer.global_step == stop:
                _stopped(out)

    x = torch.cat([b[0] for b in _digits()])
    y = torch.cat([b[1] for b in _digits()])
    pl.seed_everything(0, verbose=False)
    module = Module()
    callback = CausalPruning(amount=0.8, n_iter=2, save_recording=save_recording)
    ckpt = Stopping(dirpath=out, every_n_train_steps=4, save_top_k=-1, filename="{step}")
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, callbacks=[callback, ckpt],
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, Resumable(TensorDataset(x, y), batch_size=32),
                ckpt_path=out / f"step={STOP}.ckpt" if resume else None)  # fmt: skip
    return callback.pruner.mask


def huggingface(out: Path, save_recording: bool, stop: int | None = None, resume: bool = False) -> Mask:
    """The HF Trainer (a tiny GPT-2) saving every 4 steps, keeping one checkpoint; killed right after it rotated
    the older ones away (the last moment the Trainer's own save controls)."""
    import transformers
    import transformers.trainer as trainer_module

    from causalprune.integrations.transformers import CausalPruningCallback

    transformers.logging.set_verbosity_error()
    rotate = trainer_module.rotate_checkpoints

    def rotating(*args, **kwargs):
        rotate(*args, **kwargs)
        if (out / f"checkpoint-{stop}").is_dir():
            _stopped(out)

    trainer_module.rotate_checkpoints = rotating

    class Tokens(torch.utils.data.Dataset):
        def __init__(self):
            start = torch.randint(0, 48, (64, 1), generator=torch.Generator().manual_seed(0))
            self.ids = (start + torch.arange(16)) % 48

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=48, n_positions=16, n_embd=32, n_layer=1,
                                                                 n_head=2))  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(out), num_train_epochs=3, per_device_train_batch_size=8, learning_rate=1e-3, report_to=[],
        use_cpu=True, logging_strategy="no", seed=0, data_seed=0, disable_tqdm=True, lr_scheduler_type="constant",
        save_strategy="steps", save_steps=4, save_total_limit=1)  # fmt: skip
    callback = CausalPruningCallback(sparsity=0.5, n_iter=2, save_recording=save_recording)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[callback])
    try:
        trainer.train(resume_from_checkpoint=str(out / f"checkpoint-{STOP}") if resume else None)
    finally:
        trainer_module.rotate_checkpoints = rotate
    return callback.pruner.mask


SCRIPTS = {"plain": plain, "lightning": lightning, "huggingface": huggingface}


# --- the tests ------------------------------------------------------------------------------
def _one_thread(fn, *args, **kwargs):
    """Run `fn` on one thread, as the killed process does (the same float reductions)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def _killed_at_the_checkpoint(name: str, out: Path, save_recording: bool) -> None:
    """Start `name`'s script in a process, wait for its checkpoint STOP, SIGKILL it."""
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, name, str(out), str(int(save_recording))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "stopped").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / "stopped").exists(), f"{name} did not reach checkpoint {STOP}: {proc.stderr.read()[-3000:]}"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("save_recording", [True, False], ids=["recording", "no-recording"])
@pytest.mark.parametrize("name", list(SCRIPTS))
def test_sigkill_at_a_mid_round_step_checkpoint_then_resume(tmp_path, name, save_recording):
    if name != "plain":
        pytest.importorskip({"lightning": "lightning.pytorch", "huggingface": "transformers"}[name])
    script = SCRIPTS[name]
    (tmp_path / "whole").mkdir()
    whole = _one_thread(script, tmp_path / "whole", save_recording)
    _killed_at_the_checkpoint(name, tmp_path / "killed", save_recording)
    if save_recording:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*recorded step")  # nothing lost: no warning
            resumed = _one_thread(script, tmp_path / "killed", save_recording, resume=True)
        assert resumed == whole
    else:
        named = {"plain": r"checkpoint\.pt", "lightning": rf"step={STOP}\.ckpt",
                 "huggingface": rf"checkpoint-{STOP} \(step {STOP}\)"}  # fmt: skip
        with pytest.warns(UserWarning, match=rf"killed/{named[name]}: {LOST}"):
            _one_thread(script, tmp_path / "killed", save_recording, resume=True)


if __name__ == "__main__":  # the training process the tests kill
    torch.set_num_threads(1)
    SCRIPTS[sys.argv[1]](Path(sys.argv[2]), bool(int(sys.argv[3])), stop=STOP)
