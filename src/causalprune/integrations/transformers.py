"""Causal pruning in the Hugging Face `Trainer`: `CausalPruningCallback` (extra ``transformers``; docs/integrations.md).

A `TrainerCallback` that runs Algorithm 1 through `causalprune.CausalPruner` on the weights
of a model's Linear layers — ``nn.Linear`` and the ``Conv1D`` GPT-2 uses in their place —
leaving embeddings and the output head (often tied to the input embedding) alone unless
asked. The Trainer calls the model as ``model(**batch)`` with the labels in the batch, so the
loss is the model's own ``outputs.loss``: the callback captures each training step's batch
and loss with forward hooks, snapshots θ^t before the forward and records the step right
after ``optimizer.step()``. Rounds end at epoch ends; the pruner's state is saved in every
checkpoint folder (``causalprune_pruner.pt``) so that ``trainer.train(resume_from_checkpoint=…)``
continues to the same masks. The file is written while the Trainer writes the checkpoint —
from `state()`, the `ExportableState` hook `Trainer._save_checkpoint` calls after the model,
optimizer and RNG files and before ``trainer_state.json`` and the rotation of older
checkpoints — so a process killed at any moment leaves a usable newest checkpoint or the
previous one in place (``on_save`` runs only after the rotation).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import uuid
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

try:
    from transformers import TrainerCallback
    from transformers.pytorch_utils import Conv1D
    from transformers.trainer_callback import CallbackHandler, ExportableState
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError("causalprune.integrations.transformers needs transformers: "
                      "pip install 'causalprune[transformers]'") from e  # fmt: skip

from .. import criteria, hfheads
from ..io import save_torch
from ..masks import prunable_parameters, register_prunable_layer
from ..pruner import CausalPruner, check_options

register_prunable_layer(Conv1D)  # GPT-2's Linear: its weight is (in, out), pruned entry by entry alike

STATE_FILE = "causalprune_pruner.pt"


def linear_weights(model: nn.Module, prune_embeddings: bool = False, prune_head: bool = False) -> list[str]:
    """The names of the Linear / Conv1D weights of `model`, without embeddings and the output head by default.

    A weight tied to an ``nn.Embedding`` (GPT-2's and BERT's heads share the word embedding)
    counts as an embedding.
    """
    prunable = prunable_parameters(model)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    heads = {id(head.weight)} if head is not None else set()

    def wanted(p: nn.Parameter) -> bool:  # a tied tensor is both: pruned when either of its roles is
        roles = [(id(p) in embeddings, prune_embeddings), (id(p) in heads, prune_head)]
        return not any(has for has, _ in roles) or any(has and on for has, on in roles)

    names = [n for n, p in prunable.items() if wanted(p)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear weights to prune outside its embeddings and output "
                         "head (set prune_embeddings / prune_head, or give params)")  # fmt: skip
    return names


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear / Conv1D layers inside attention modules (a module whose class name contains ``Attention``).

    Their outputs are split into heads (a reshape to a fixed head size) or feed the residual
    stream, so their output channels are not channel groups a slim network can drop: at
    channel granularity the callback leaves them out for a model of no architecture
    `causalprune.hfheads` recognises, which leaves its MLP hidden widths (and a pooler) as
    the groups. BERT and LLaMA get whole heads instead.
    """
    out: list[nn.Module] = []
    for m in model.modules():
        if "Attention" in type(m).__name__:
            out.extend(c for c in m.modules() if isinstance(c, nn.Linear | Conv1D) and all(c is not o for o in out))
    return out


#: what the callback gives a method: the recorded trajectory, the Trainer's batches (dicts, called
#: ``model(**batch)`` through a `ModelIO`, the loss the model's own), and example inputs (a batch)
MEETS = frozenset({"trajectory", "batches", "input_shape"})


def supported_methods(granularity: str = "weight") -> list[str]:
    """The methods the callback runs at `granularity` (``weight`` or ``channel``): those whose needs it meets."""
    return [n for n in criteria.names(granularity) if criteria.get(n).needs <= MEETS]


def _model_loss(outputs: Any, _: Any) -> torch.Tensor:
    """The loss a Hugging Face model computes from the labels in its batch."""
    if getattr(outputs, "loss", None) is None:
        raise ValueError("the model returned no loss for a training batch: the batches must carry labels, and the "
                         "Trainer must leave the loss to the model (no label_smoothing_factor, no compute_loss_func)")
    return outputs.loss


def _call_with_batch(model: nn.Module, batch: dict[str, Any]) -> Any:
    return model(**batch)


def _whole(epoch: float) -> bool:
    """Whether the Trainer's float epoch counter sits on an epoch boundary."""
    return abs(epoch - round(epoch)) < 1e-6


class CausalPruningCallback(TrainerCallback, ExportableState):
    """Prune a `transformers` model with Algorithm 1 while `Trainer.train` runs.

    Args:
        sparsity: final fraction of the selected weights pruned.
        method: any method whose needs the callback meets (`supported_methods`): the
            recorded trajectory (``causal``, ...), the weights alone (``magnitude``, ...), the
            Trainer's batches (``taylor``, ``snip``, ``grasp``, ``fisher``, ``gradient``: each
            dict batch is called ``model(**batch)`` through a `causalprune.modelio.ModelIO`
            and scored with the model's own loss) or example inputs (``synflow``).
        schedule: cumulative targets per round: ``cubic`` | ``geometric`` | ``linear``.
        n_iter: pruning rounds.
        epochs_per_round: epochs per round.
        start_epoch: the first epoch of the first round (the epochs before it train θ_pre).
        params: the weight names to prune (default: `linear_weights(model, prune_embeddings,
            prune_head)`).
        prune_embeddings: also prune the embeddings.
        prune_head: also prune the output head.
        **pruner_options: passed to `CausalPruner` (``settings``, ``scope``, ``rewind``,
            ``save_recording``, ``granularity``, ...); an unknown name is refused in one line.
            ``granularity="channel"`` prunes whole channel groups that Torch-Pruning traces
            through ``model(**batch)`` on the first training batch, with the methods of
            ``supported_methods("channel")``: a BERT or LLaMA model's groups are its whole
            attention heads and MLP neurons (`causalprune.hfheads`; GPT-2's ``Conv1D`` and
            grouped-query attention are refused in one line); for another model the layers
            of `attention_layers` are left out unless it declares
            ``channel_pruning_ignored_layers()`` itself; ``callback.pruner.slim()`` removes
            the pruned channels after training (and updates BERT's head counts).

    After each round ``causal_pruning/sparsity`` and ``causal_pruning/round`` are logged as
    `Trainer.log` logs: added to ``state.log_history`` and sent to every callback's
    ``on_log`` (so the Trainer's TensorBoard, MLflow, ... reporters record them);
    `pruner.history` has the rounds' details.
    """

    def __init__(
        self,
        sparsity: float = 0.5,
        method: str = "causal",
        schedule: str = "cubic",
        n_iter: int = 3,
        epochs_per_round: int = 1,
        start_epoch: int = 0,
        params: Sequence[str] | None = None,
        prune_embeddings: bool = False,
        prune_head: bool = False,
        **pruner_options: Any,
    ) -> None:
        criteria.get(method)  # an unknown name fails here, listing the valid ones
        granularity = pruner_options.get("granularity", "weight")
        if granularity not in ("weight", "channel"):
            raise ValueError(f"granularity must be weight or channel, got {granularity!r}")
        if method not in supported_methods(granularity):
            raise ValueError(f"method {method!r} does not score {granularity}s in the Trainer callback; it supports "
                             f"{', '.join(supported_methods(granularity))} at granularity {granularity}")  # fmt: skip
        if granularity == "channel" and (params is not None or prune_embeddings or prune_head):
            raise ValueError("granularity channel prunes the channel groups Torch-Pruning traces through "
                             "model(**batch); params, prune_embeddings and prune_head choose weights (granularity "
                             "weight)")  # fmt: skip
        if int(start_epoch) != start_epoch or start_epoch < 0:
            raise ValueError(f"start_epoch must be an integer >= 0, got {start_epoch}")
        settings = pruner_options.get("settings")
        delta = settings.get("delta_loss") if isinstance(settings, dict) else getattr(settings, "delta_loss", None)
        if delta not in (None, "same_batch"):
            raise ValueError("the Trainer callback records ΔL on each step's own batch: delta_loss must be same_batch")
        check_options(pruner_options, "CausalPruningCallback", taken=("forward", "params"))
        self.options = dict(sparsity=sparsity, method=method, schedule=schedule, n_iter=n_iter,
                            epochs_per_round=epochs_per_round, **pruner_options)  # fmt: skip
        # the constructor's arguments, for `state()` (restore_callback_states_from_checkpoint rebuilds from them)
        self._args = dict(self.options, start_epoch=start_epoch, params=params, prune_embeddings=prune_embeddings,
                          prune_head=prune_head)  # fmt: skip
        self.start_epoch = int(start_epoch)
        self.params, self.prune_embeddings, self.prune_head = params, prune_embeddings, prune_head
        self.pruner: CausalPruner | None = None
        self._hooks: list[Any] = []
        self._armed = False  # the next training forward is a step's (set by on_step_begin)
        self._capture = False  # the forward running now is that step's: keep its loss
        self._loss: torch.Tensor | None = None
        self._counted: int | None = None  # the last epoch counted (its last step, or its end)
        self._training: tuple[Any, Any] | None = None  # (args, state) of the Trainer while train() runs
        self._handler: CallbackHandler | None = None  # the Trainer's, for on_log (found in on_train_begin)
        self._token: str | None = None  # names the state file last written (kept in trainer_state.json too)

    # --- the pruner ---------------------------------------------------------------------------
    def _start(self, args: Any, model: nn.Module, optimizer: Any, lr_scheduler: Any = None,
               train_dataloader: Any = None) -> CausalPruner:  # fmt: skip
        if args.world_size > 1 or args.n_gpu > 1:
            raise ValueError(f"CausalPruningCallback runs in one process on one device (world size {args.world_size}, "
                             f"{args.n_gpu} GPUs): each replica would record its own batches and select its own mask")
        if args.label_smoothing_factor:
            raise ValueError("CausalPruningCallback records the model's own loss; label_smoothing_factor "
                             f"{args.label_smoothing_factor} makes the Trainer compute another one")  # fmt: skip
        if args.gradient_accumulation_steps != 1:
            raise ValueError("CausalPruningCallback records every optimizer step: gradient_accumulation_steps must be "
                             f"1, got {args.gradient_accumulation_steps}")  # fmt: skip
        if optimizer is None:
            raise ValueError("CausalPruningCallback needs the Trainer's optimizer (it was not created yet)")
        if self.options.get("granularity", "weight") == "channel":  # the traced groups decide what is pruned
            params = None
            known = hfheads.declare(model)  # BERT / LLaMA: whole heads and MLP neurons (causalprune.hfheads)
            if known is None and not callable(getattr(model, "channel_pruning_ignored_layers", None)):
                layers = attention_layers(model)
                model.channel_pruning_ignored_layers = lambda: layers  # read by causalprune.groups.channel_groups
        else:
            params = self.params if self.params is not None else linear_weights(model, self.prune_embeddings,
                                                                                  self.prune_head)  # fmt: skip
        # batches, example inputs and tracing go through ModelIO(batch, _call_with_batch, _model_loss): model(**batch)
        options = dict(self.options)
        if "lr_scheduler" not in options and lr_scheduler is not None:  # a rewind restarts it (docs/method.md)
            options["lr_scheduler"] = lr_scheduler
        batches = len(train_dataloader) if hasattr(train_dataloader, "__len__") else 0  # 1 step per batch
        if "steps_per_epoch" not in options and batches >= 1:
            options["steps_per_epoch"] = batches
        pruner = CausalPruner(model, optimizer, _model_loss, params=params, forward=_call_with_batch, **options)
        self._hooks = [model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
                       model.register_forward_hook(self._after_forward, with_kwargs=True)]  # fmt: skip
        return pruner

    def _before_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """The step's training forward (the first after on_step_begin): θ^t and its batch."""
        if not (self._armed and module.training and self.pruner is not None and not self.pruner.done):
            return
        self._armed = False
        if args:
            raise ValueError("CausalPruningCallback expects the Trainer's call model(**batch)")
        self._loss = None
        self.pruner.before_step(dict(kwargs), None)
        self._capture = True

    def _after_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self._capture:
            self._capture = False
            self._loss = _model_loss(output, None)

    # --- Trainer events -------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:  # fmt: skip
        """Continue the pruner saved in the checkpoint the Trainer resumed from, if any.

        The state is looked up where the Trainer writes the checkpoint of the resumed step
        (`checkpoint_dir`: ``output_dir/checkpoint-<global step>``), and must be the one that
        checkpoint's ``trainer_state.json`` names: resume from a checkpoint folder under the
        run's ``output_dir``. The file is read with ``weights_only=True`` (tensors and plain
        containers; no code runs while it loads).
        """
        if self.pruner is not None:  # the callback of an earlier train(): start over
            self._stop()
        self._training = (args, state)
        self._handler = _calling_handler(self)
        if self._handler is None:
            warnings.warn("CausalPruningCallback: the Trainer's CallbackHandler was not found among its callers, so "
                          "rounds go to state.log_history only and reporters (TensorBoard, MLflow, ...) will not "
                          "see them through on_log", stacklevel=2)  # fmt: skip
        if state.global_step == 0:
            return
        folder = checkpoint_dir(args, state)
        path = os.path.join(folder, STATE_FILE)
        saved = _load_state(path) if os.path.isfile(path) else None
        if saved is not None:
            self._check_token(saved, state, path, args)
        if saved is None and float(state.epoch or 0) <= self.start_epoch + 1e-6:
            return  # resumed before pruning started (or exactly where it starts)
        if saved is None:
            raise ValueError(f"the Trainer resumed at step {state.global_step} (epoch {state.epoch:.2f}), after "
                             f"pruning started at epoch {self.start_epoch}, from a checkpoint without the pruner's "
                             f"state ({path} is missing): resume from a checkpoint saved with CausalPruningCallback, "
                             "or start training again")  # fmt: skip
        if saved.get("pruner") is not None:
            self.pruner = self._start(args, model, optimizer, kwargs.get("lr_scheduler"),
                                      kwargs.get("train_dataloader"))
            with warnings.catch_warnings(record=True) as caught:  # re-issued here, pointing at the caller's code
                warnings.simplefilter("always")
                self.pruner.load_state_dict(saved["pruner"], source=f"{folder} (step {state.global_step})")
            for w in caught:
                warnings.warn(str(w.message), w.category, stacklevel=2)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:  # fmt: skip
        """Take θ_pre and start the rounds at `start_epoch` (at an epoch's start, not in a resumed epoch's middle)."""
        epoch = float(state.epoch or 0)
        if self.pruner is None and _whole(epoch) and round(epoch) >= self.start_epoch:
            self.pruner = self._start(args, model, optimizer, kwargs.get("lr_scheduler"),
                                      kwargs.get("train_dataloader"))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Arm the forward hook: the next training forward is this step's."""
        self._armed = self.pruner is not None and not self.pruner.done

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Record the step just taken."""
        if self.pruner is not None and not self.pruner.done and self._loss is not None:
            self.pruner.after_step(self._loss)
            self._loss = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """At an epoch's last step, count the epoch (a round may end) before the Trainer saves a checkpoint."""
        return self._epoch_done(args, state, control) if _whole(float(state.epoch or 0)) else None

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Count the epoch if its last step did not (an epoch that ended without a full step)."""
        return self._epoch_done(args, state, control)

    def _epoch_done(self, args: Any, state: Any, control: Any) -> Any:
        epoch = round(float(state.epoch or 0))
        if self.pruner is None or self.pruner.done or epoch == self._counted:
            return None
        self._counted = epoch
        if self.pruner.end_epoch() is None:
            return None
        last = self.pruner.history[-1]
        return self._log(args, state, control, {"causal_pruning/sparsity": float(last["sparsity"]),
                                                "causal_pruning/round": int(last["round"])})  # fmt: skip

    def _log(self, args: Any, state: Any, control: Any, logs: dict[str, float]) -> Any:
        """Log a round as `Trainer.log` does: into ``state.log_history``, then every callback's ``on_log``.

        The Trainer's reporters (TensorBoard, MLflow, W&B, ...) are callbacks: they see the
        round through ``on_log`` like the Trainer's own logs, at the round's global step.
        """
        if state.epoch is not None:
            logs["epoch"] = state.epoch
        state.log_history.append({**logs, "step": state.global_step})
        if self._handler is None:  # not called by a Trainer (no handler to reach the other callbacks)
            return None
        return self._handler.on_log(args, state, control, logs)

    def _check_token(self, saved: dict[str, Any], state: Any, path: str, args: Any) -> None:
        """Refuse a state file that is not the one the resumed checkpoint's trainer_state.json names."""
        entries = state.stateful_callbacks.get(type(self).__name__) if state.stateful_callbacks else None
        entries = entries if isinstance(entries, list) else [entries]
        expected = {e.get("attributes", {}).get("_token") for e in entries if isinstance(e, dict)} - {None}
        if expected and saved.get("token") not in expected:
            raise ValueError(f"{path} is not the pruner state of the checkpoint the Trainer resumed from (step "
                             f"{state.global_step}): another run wrote it; resume from a checkpoint folder under "
                             f"output_dir ({args.output_dir}), where the callback finds its state")  # fmt: skip

    def state(self) -> dict[str, Any]:
        """Write the pruner's state into the checkpoint being saved; return the callback's arguments for JSON.

        `Trainer._save_checkpoint` calls it after writing the model, optimizer and RNG files of
        ``checkpoint-<step>`` and before ``trainer_state.json`` and the rotation of older
        checkpoints, so the newest checkpoint holds ``causalprune_pruner.pt`` before any older one
        is deleted. (The Trainer also calls it when it builds its state at the start of
        `train()`; nothing is written then.) The returned ``args`` are the constructor's
        arguments JSON can hold, for ``restore_callback_states_from_checkpoint``.
        """
        if self._training is not None:
            args, state = self._training
            folder = checkpoint_dir(args, state)
            if os.path.isdir(folder) and state.is_world_process_zero:
                self._token = uuid.uuid4().hex  # trainer_state.json, written next, names this file
                save_torch({"pruner": self.pruner.state_dict() if self.pruner is not None else None,
                            "token": self._token}, os.path.join(folder, STATE_FILE))  # fmt: skip
        return {"args": _jsonable(self._args), "attributes": {"_token": self._token}}

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Once every round is done, stop re-masking (the pruned weights stay zero) and remove the hooks."""
        self._training, self._handler = None, None
        if self.pruner is not None and self.pruner.done:
            self.pruner.make_permanent()
            for h in self._hooks:
                h.remove()
            self._hooks = []

    def _stop(self) -> None:
        """Forget the pruner of an earlier `train()` (its hooks and re-masking removed)."""
        if self.pruner is not None:
            self.pruner.make_permanent()
        for h in self._hooks:
            h.remove()
        self._hooks, self.pruner, self._counted = [], None, None


def checkpoint_dir(args: Any, state: Any) -> str:
    """Return the folder the Trainer writes its checkpoint of `state.global_step` in (`Trainer._save_checkpoint`).

    ``output_dir/checkpoint-<step>``; under a hyperparameter search with ``hp_name``, in the
    trial's folder ``output_dir/<trial name>``.
    """
    run_dir = os.path.join(args.output_dir, state.trial_name) if state.trial_name else args.output_dir
    return os.path.join(run_dir, f"checkpoint-{state.global_step}")


def _calling_handler(callback: Any) -> CallbackHandler | None:
    """Return the Trainer's `CallbackHandler` that is calling `callback` now, or None.

    The Trainer reaches callbacks only through its handler (``call_event``), and passes
    callbacks no reference to it; the handler is the caller a few frames up, checked to hold
    `callback`. The callback logs its rounds through it (`CausalPruningCallback._log`).
    """
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, CallbackHandler) and any(cb is callback for cb in owner.callbacks):
            return owner
        frame = frame.f_back
    return None


def _load_state(path: str) -> dict[str, Any]:
    """The pruner state file of a checkpoint (tensors and plain containers only); a damaged one is named in one line."""
    try:
        saved = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # a truncated or foreign file: pickle, zip and torch errors alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{path} is damaged ({type(e).__name__}: {first}): resume from another checkpoint, or "
                         "start training again") from e  # fmt: skip
    if not isinstance(saved, dict) or "pruner" not in saved:
        raise ValueError(f"{path} is damaged (not a CausalPruningCallback state): resume from another checkpoint, "
                         "or start training again")  # fmt: skip
    return saved


def _jsonable(args: dict[str, Any]) -> dict[str, Any]:
    """The arguments JSON can hold (a settings dataclass as its fields); the others are left out."""
    out = {}
    for k, v in args.items():
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = dataclasses.asdict(v)
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[k] = v
    return out


__all__ = ["CausalPruningCallback", "attention_layers", "linear_weights", "supported_methods"]
