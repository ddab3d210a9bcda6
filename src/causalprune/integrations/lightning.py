"""Causal pruning as a Lightning callback: `CausalPruning` (extra ``lightning``; docs/integrations.md).

It follows the conventions of Lightning's own ``ModelPruning`` callback — ``amount`` is the
final sparsity, pruning happens at epoch ends on a schedule, ``make_pruning_permanent``
removes the re-masking at the end of training, ``use_lottery_ticket_hypothesis`` rewinds the
surviving weights — and runs Algorithm 1 through `causalprune.CausalPruner`: the epochs
before ``start_epoch`` train θ_pre, then every ``epochs_per_round`` epochs one round ends
(scored from the round's recorded trajectory for the causal methods), ``n_iter`` rounds in
all; the epochs after them train the pruned network (post-training).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError("causalprune.integrations.lightning needs Lightning: pip install 'causalprune[lightning]'") from e

from ..pruner import CausalPruner, check_options


def _xy(batch: Any) -> tuple[Any, Any]:
    """The default split of a training batch: ``(inputs, targets, ...)``."""
    return batch[0], batch[1]


class CausalPruning(pl.Callback):
    """Prune a LightningModule with Algorithm 1 while the `Trainer` fits it.

    Args:
        amount: final sparsity (fraction of prunable weights, or of channel groups); 0.9 unless
            given here or as ``sparsity`` (the `CausalPruner` word, an alias; not both).
        method: any registered method (`causalprune.criteria.names()`), ``causal`` by default.
        schedule: cumulative targets per round: ``cubic`` | ``geometric`` | ``linear``.
        n_iter: pruning rounds.
        epochs_per_round: epochs per round.
        start_epoch: the first epoch of the first round (the epochs before it train θ_pre).
        loss_fn: ``loss_fn(outputs, targets)``, the loss the module's ``training_step``
            computes from ``module(inputs)``; default: the module's ``loss_fn`` attribute.
            The causal methods evaluate it again after each step (ΔL).
        batch_to_xy: ``(batch) -> (inputs, targets)``; default ``batch[0], batch[1]``.
        make_pruning_permanent: at the end of training (once every round is done) stop
            re-masking; the pruned weights stay zero.
        use_lottery_ticket_hypothesis: rewind the surviving weights to θ_pre after each round
            (default True; ``rewind`` is its `CausalPruner` alias, not both).
        verbose: 0 silent, 1 one line per round.
        check_loss: on the first recorded step, compare the loss ``training_step`` returns with
            ``loss_fn(module(inputs), targets)`` on the same batch and weights (same dropout
            draws, running statistics left as they were) and refuse, naming both values, when
            they differ by more than a relative ``1e-4``: the recorder takes ΔL as the second
            minus the first, so a regulariser or auxiliary loss added in ``training_step``
            would bias every recorded row. Methods that record nothing skip it.
        **pruner_options: passed to `CausalPruner` (``settings``, ``granularity``, ``scope``,
            ``save_recording``, ...); an unknown name is refused in one line. Unless given,
            ``lr_scheduler`` is the Trainer's scheduler when it has exactly one (so a rewind
            restarts the LR schedule, docs/method.md "Rewinding"; Lightning steps its schedulers
            at each epoch's last batch, before the round ends, except ``ReduceLROnPlateau``, which
            it steps once more after the rewind) and ``steps_per_epoch`` the Trainer's training
            batches per epoch.

    Logged (through the module's logger) at each round's end: ``causal_pruning/sparsity``,
    ``causal_pruning/round``. Checkpoints carry the pruner's state (`state_dict`): a fit resumed
    from a checkpoint saved between rounds continues to the same masks; one saved in the
    middle of a recorded round does so with ``save_recording=True`` (and a dataloader Lightning
    can resume mid-epoch), and warns naming the lost steps without it. A step checkpoint
    saved after an epoch's last batch, before the epoch ends (``every_n_train_steps``), ends
    that epoch's round when the fit resumes.
    """

    def __init__(
        self,
        amount: float | None = None,
        method: str = "causal",
        schedule: str = "cubic",
        n_iter: int = 5,
        epochs_per_round: int = 1,
        start_epoch: int = 0,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        batch_to_xy: Callable[[Any], tuple[Any, Any]] = _xy,
        make_pruning_permanent: bool = True,
        use_lottery_ticket_hypothesis: bool | None = None,
        verbose: int = 0,
        check_loss: bool = True,
        **pruner_options: Any,
    ) -> None:
        if int(start_epoch) != start_epoch or start_epoch < 0:
            raise ValueError(f"start_epoch must be an integer >= 0, got {start_epoch}")
        amount = _alias(pruner_options, "amount", amount, "sparsity", 0.9)
        rewind = _alias(pruner_options, "use_lottery_ticket_hypothesis", use_lottery_ticket_hypothesis, "rewind", True)
        check_options(pruner_options, "CausalPruning", taken=("forward",))
        self.options = dict(sparsity=amount, method=method, schedule=schedule, n_iter=n_iter,
                            epochs_per_round=epochs_per_round, rewind=rewind, **pruner_options)
        self.start_epoch = int(start_epoch)
        self.loss_fn, self.batch_to_xy = loss_fn, batch_to_xy
        self.make_pruning_permanent, self.verbose = make_pruning_permanent, verbose
        self.pruner: CausalPruner | None = None
        self._saved: dict[str, Any] | None = None
        self._pending: int | None = None  # an epoch whose last batch is done and whose end is not counted yet
        self.check_loss = bool(check_loss)
        self._expected: float | None = None  # loss_fn(module(x), y) at the first recorded step, before its forward
        self._call: tuple[Callable[..., Any], Callable[..., torch.Tensor]] | None = None  # (forward, loss)

    # --- the pruner -------------------------------------------------------------------------
    def _start(self, trainer: pl.Trainer, module: pl.LightningModule) -> CausalPruner:
        if trainer.world_size > 1:
            raise ValueError(f"CausalPruning runs in one process, the Trainer has {trainer.world_size}: each would "
                             "record its own batches' loss changes and select its own mask; use devices=1")
        if not module.automatic_optimization:
            raise ValueError("CausalPruning records the optimizer steps of automatic optimization; the module sets "
                             "automatic_optimization = False")  # fmt: skip
        if len(trainer.optimizers) != 1:
            raise ValueError(f"CausalPruning needs exactly one optimizer, the module configures "
                             f"{len(trainer.optimizers)}")  # fmt: skip
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(f"CausalPruning records every optimizer step: accumulate_grad_batches must be 1, got "
                             f"{trainer.accumulate_grad_batches}")  # fmt: skip
        loss_fn = self.loss_fn if self.loss_fn is not None else getattr(module, "loss_fn", None)
        if loss_fn is None:
            raise ValueError("CausalPruning needs the training loss: pass loss_fn=... or give the module a loss_fn "
                             "attribute (loss_fn(module(inputs), targets))")  # fmt: skip
        precision = trainer.precision_plugin  # training_step runs its forward and loss under it (autocast)

        def forward(model: torch.nn.Module, inputs: Any) -> Any:
            with precision.forward_context():
                return model(inputs)

        def loss(outputs: Any, targets: Any) -> torch.Tensor:
            with precision.forward_context():
                return loss_fn(outputs, targets)

        self._call = (forward, loss)
        options = dict(self.options)
        configs = trainer.lr_scheduler_configs
        if "lr_scheduler" not in options and len(configs) == 1:  # a rewind restarts the schedule (docs/method.md)
            options["lr_scheduler"] = configs[0].scheduler
        batches = trainer.num_training_batches  # inf before the train dataloader is set up (a resume's fit start)
        if "steps_per_epoch" not in options and isinstance(batches, int) and batches >= 1:
            options["steps_per_epoch"] = batches
        return CausalPruner(module, trainer.optimizers[0], loss, forward=forward, **options)

    def _loss_now(self, module: pl.LightningModule, inputs: Any, targets: Any) -> float:
        """``loss_fn(module(inputs), targets)`` now, leaving the RNG and every buffer as they were."""
        assert self._call is not None
        forward, loss = self._call
        device = next(module.parameters()).device
        buffers = {n: b.clone() for n, b in module.named_buffers()}  # BatchNorm running statistics
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []  # fmt: skip
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=cuda):  # the training forward draws the same dropout
                return float(loss(forward(module, inputs), targets).detach().float())
        finally:
            with torch.no_grad():
                for n, b in module.named_buffers():
                    b.copy_(buffers[n])

    @property
    def _active(self) -> bool:
        return self.pruner is not None and not self.pruner.done

    # --- Lightning hooks ---------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Continue the pruner a checkpoint saved (also when the checkpoint's fit is finished and nothing trains)."""
        self._resume(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse a checkpoint from mid-pruning without the pruner's state; end an epoch the checkpoint left open.

        A checkpoint saved after an epoch's last batch but before the epoch ended (a step
        checkpoint there) resumes at the next epoch without that epoch's end: its round ends here.
        """
        self._resume(trainer, pl_module)
        pending = self._saved.get("epoch_end_pending") if self._saved is not None else None
        self._saved = None
        if self.pruner is None and trainer.current_epoch > self.start_epoch:
            raise ValueError(f"the fit resumes at epoch {trainer.current_epoch}, after pruning started (start_epoch "
                             f"{self.start_epoch}), from a checkpoint without CausalPruning's state: resume from a "
                             "checkpoint saved with this callback, or start the fit again")  # fmt: skip
        if pending is not None and trainer.current_epoch > pending:
            self._end_epoch(pl_module)

    def _resume(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruner is None and self._saved is not None and self._saved.get("pruner") is not None:
            self.pruner = self._start(trainer, pl_module)
            where = f"the checkpoint {trainer.ckpt_path}" if trainer.ckpt_path else None
            self.pruner.load_state_dict(self._saved["pruner"], source=where)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Take θ_pre and start the rounds at `start_epoch`."""
        if self.pruner is None and trainer.current_epoch >= self.start_epoch:
            self.pruner = self._start(trainer, pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        """Snapshot θ^t before the training forward (the split API of the recorder)."""
        if self._active:
            assert self.pruner is not None
            inputs, targets = self.batch_to_xy(batch)
            if self.check_loss and self.pruner.criterion.records:  # once: the first recorded step of the fit
                self.check_loss = False
                self._expected = self._loss_now(pl_module, inputs, targets)
            self.pruner.before_step(inputs, targets)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        """Record the step the optimizer just took, with the loss ``training_step`` returned."""
        if self._active:
            assert self.pruner is not None
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if loss is None:
                raise ValueError("training_step returned no loss (the step was skipped?): CausalPruning records "
                                 "each step with the loss of loss_fn(module(inputs), targets) training_step returns")
            if self._expected is not None:
                self._same_loss(float(loss.detach().float()), self._expected)
            self.pruner.after_step(loss)
            if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # a step checkpoint may follow
                self._pending = trainer.current_epoch

    def _same_loss(self, returned: float, recomputed: float) -> None:
        """Refuse a ``training_step`` loss that is not ``loss_fn(module(inputs), targets)`` (ΔL would be biased)."""
        self._expected = None
        if not (math.isfinite(returned) and math.isfinite(recomputed)):
            return  # a diverged step: nothing to compare
        if abs(returned - recomputed) <= 1e-4 * max(abs(returned), abs(recomputed)) + 1e-7:
            return
        raise ValueError(f"CausalPruning: training_step returned loss {returned:.6g}, but loss_fn(module(inputs), "
                         f"targets) gives {recomputed:.6g} on the same batch and weights (difference "
                         f"{returned - recomputed:+.3g}); the recorded ΔL would mix the two: return exactly that "
                         "loss from training_step (log a regulariser or auxiliary loss apart), pass the loss_fn "
                         "it computes, or check_loss=False to record anyway")  # fmt: skip

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """End the round when its epochs are done: score, prune, rewind; log the sparsity."""
        self._pending = None
        if self._active:
            self._end_epoch(pl_module)

    def _end_epoch(self, pl_module: pl.LightningModule) -> None:
        assert self.pruner is not None
        if self.pruner.end_epoch() is None:
            return
        last = self.pruner.history[-1]
        pl_module.log("causal_pruning/sparsity", float(last["sparsity"]), on_epoch=True)
        pl_module.log("causal_pruning/round", float(last["round"]), on_epoch=True)
        if self.verbose:
            print(f"CausalPruning: round {last['round']} of {self.options['n_iter']}: sparsity {last['sparsity']:.4f}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Make the pruning permanent once every round is done."""
        if self.make_pruning_permanent and self.pruner is not None and self.pruner.done:
            self.pruner.make_permanent()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Make the pruning permanent after a fit that had nothing left to train (a finished checkpoint's)."""
        self.on_train_end(trainer, pl_module)

    # --- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The pruner's state (None before the first round started) and an epoch left open by a step checkpoint."""
        return {"pruner": self.pruner.state_dict() if self.pruner is not None else None,
                "epoch_end_pending": self._pending if self._active else None}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's pruner state; the pruner is rebuilt on it when the fit starts."""
        self._saved = dict(state_dict)


def _alias(options: dict[str, Any], name: str, value: Any, alias: str, default: Any) -> Any:
    """`value` of the argument `name`, or of its alias popped from `options` (both given: refused), or `default`."""
    if alias not in options:
        return default if value is None else value
    other = options.pop(alias)
    if value is not None:
        raise ValueError(f"give {name} or {alias} (its CausalPruner alias), not both: got {name}={value!r} and "
                         f"{alias}={other!r}")  # fmt: skip
    return other


__all__ = ["CausalPruning"]
