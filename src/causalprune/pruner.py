"""Algorithm 1 as one object around any training loop: `CausalPruner` (docs/integrations.md).

The rounds of Algorithm 1 (docs/method.md) are the same wherever they run: train a round
(recording it when the method needs the trajectory), score the plan's units (weights,
channel groups), select the round's cumulative target, apply the mask, rewind to θ_pre.
`plan.run_round` is that one round and `recording.make_recorder` the one recorder; the
command-line driver (`causalprune.experiment`) calls them between its run-folder stages,
and `CausalPruner` calls them from a user's loop — plain PyTorch, Lightning or the Hugging
Face Trainer (`causalprune.integrations`).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import warnings
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from . import criteria, hfheads
from .config import PruneConfig, parse_pattern
from .masks import Mask, MaskHandle, parameter_aliases, prunable_parameters
from .modelio import ModelIO
from .plan import Plan, WeightPlan, build_plan, rewind, run_round
from .platform import current as current_platform
from .recording import Recording, make_recorder, stage_seed
from .trajectory import TrajectoryRecorder


def _settings_of(criterion: criteria.Criterion, settings: Any) -> Any:
    """The method's settings dataclass from None (defaults), an instance, or a mapping of its fields."""
    cls = criterion.settings
    if cls is None:
        if settings:
            raise ValueError(f"method {criterion.name!r} has no settings, got {settings!r}")
        return None
    if settings is None:
        return cls()
    if isinstance(settings, cls):
        return settings
    if isinstance(settings, Mapping):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - fields)
        if unknown:
            raise ValueError(f"unknown {criterion.section} setting(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(fields))}")  # fmt: skip
        return cls(**settings)
    raise TypeError(f"settings must be a {cls.__name__} or a mapping of its fields, got {type(settings).__name__}")


class CausalPruner:
    """Algorithm 1 around your own training loop: rounds of training, scoring, pruning and rewinding.

    Build it once the network is trained to θ_pre (the rewind point); then train as usual,
    calling `step` (or `before_step` / `after_step` around your own step) for every batch
    and `end_epoch` after every epoch. Every `epochs_per_round` epochs a round ends: the
    method scores the model (the causal methods from the round's recorded trajectory),
    the round's cumulative target of the `schedule` is pruned, the mask is applied and
    kept enforced after every optimizer step, and (with `rewind`) the surviving weights
    go back to θ_pre. After `n_iter` rounds `done` is True; the same calls then take plain
    training steps with the mask enforced (post-training, nothing recorded; `end_epoch`
    only counts), so one loop serves both; `make_permanent` ends the enforcement.

    Example::

        pruner = CausalPruner(model, opt, nn.CrossEntropyLoss(), sparsity=0.9, n_iter=5)
        for epoch in range(8):  # 5 rounds, then 3 epochs of post-training
            for x, y in loader:
                pruner.step(x, y)
            pruner.end_epoch()

    Args:
        model: the network; its prunable weights are those of `masks.prunable_parameters`.
        optimizer: the optimizer that trains it (it must hold the prunable parameters).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (the batch mean).
        sparsity: final fraction pruned: of the prunable weights (``granularity="weight"``)
            or of the channel groups (``"channel"``).
        method: any registered method (`causalprune.criteria.names()`).
        schedule: ``cubic`` | ``geometric`` | ``linear`` cumulative targets per round.
        n_iter: pruning rounds.
        epochs_per_round: epochs (calls of `end_epoch`) per round.
        granularity: ``weight`` (masks) or ``channel`` (whole channel groups, traced with
            Torch-Pruning from `example_inputs`; the network keeps its shape until
            `slim` removes them).
        speedup: channel granularity: a MACs reduction target instead of `sparsity`.
        scope: ``global`` or ``layerwise`` ranking (weights).
        rewind: rewind the surviving weights to θ_pre after each round (and reset the
            optimizer's state, which belonged to the weights before the rewind, and
            `lr_scheduler` with the optimizer's learning rates to where they were at θ_pre:
            docs/method.md, "Rewinding").
        reset_bn: also reset BatchNorm running statistics when rewinding.
        settings: the method's settings (for causal methods `CausalSettings` or a mapping of
            its fields: ``{"delta_loss": "probe", "solver": "cd"}``).
        probe_data: (inputs, targets) or batches for ``delta_loss="probe"``.
        score_data: batches that data-driven methods (snip, grasp, taylor, fisher) score
            on; default: the last `score_batches` batches the loop trained on.
        calibration_batches: the calibrating methods (wanda, sparsegpt: `Criterion.calibrates`)
            read the last this many trained batches (default None: `score_batches`).
        example_inputs: one batch of inputs, for channel tracing and for data-free methods
            that need an input shape (synflow); default: the first batch seen.
        forward: ``forward(model, inputs)`` when the model is not called as ``model(inputs)``.
        seed: seeds the methods' random draws (random, placebo permutations).
        max_layer_ratio: channel granularity: at most this fraction of a layer's channels is pruned.
        round_to: channel granularity: every layer keeps a multiple of this many channels.
        params: names of the prunable parameters to prune (default: all of
            `masks.prunable_parameters`); the others are neither recorded nor pruned.
        save_recording: `state_dict` also holds the round's recording so far (T × d ×
            4 bytes in float32 storage), so that a state saved in the middle of a recorded
            round resumes to the masks of the uninterrupted run; without it such a resume
            warns, naming the recorded steps it lost.
        plan: a ready `plan.Plan` (a new unit kind: heads, neurons, ...) instead of the one
            `granularity` names; its `kind` picks the method's scorer.
        lr_scheduler: the LR scheduler of the loop, if any: a rewind puts it (and the
            optimizer's learning rates) back to its state when the pruner was built, so
            every round trains with the same schedule, as the command-line driver does.
        steps_per_epoch: optimizer steps per epoch, when known: the first round's
            trajectory is then allocated up front (later rounds use the length of the
            first), so scoring reads it without a copy.
        pattern: ``"N:M"`` (e.g. ``"2:4"``): in every pruned weight each block of M
            consecutive inputs of a row keeps at most N after every round, exactly N after
            the last (`plan.WeightPlan`, docs/method.md "N:M sparsity"); sets `sparsity` to
            (M - N) / M (leave it at its default or give that value); weight granularity only.

    Attributes:
        mask: the current `Mask` (all alive before the first round ends).
        history: one dict per finished round: ``round``, ``target``, ``sparsity`` and the
            method's facts (for causal: solver, alpha, nnz, T, ...).
        round: the round in progress (1-based); `done` once every round has ended.
        steps_in_round: the steps the round in progress has recorded (0 for methods that
            record nothing).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        *,
        sparsity: float | None = 0.9,
        method: str = "causal",
        schedule: str = "cubic",
        n_iter: int = 5,
        epochs_per_round: int = 1,
        granularity: str = "weight",
        speedup: float | None = None,
        scope: str = "global",
        rewind: bool = True,
        reset_bn: bool = False,
        settings: Any = None,
        probe_data: Any = None,
        score_data: Sequence[tuple[Any, Any]] | None = None,
        score_batches: int = 10,
        calibration_batches: int | None = None,
        example_inputs: Any = None,
        forward: Callable[[nn.Module, Any], Any] | None = None,
        seed: int = 0,
        max_layer_ratio: float = 1.0,
        round_to: int = 1,
        params: Sequence[str] | None = None,
        save_recording: bool = False,
        plan: Plan | None = None,
        lr_scheduler: Any = None,
        steps_per_epoch: int | None = None,
        pattern: str | None = None,
    ) -> None:
        self.criterion = criteria.get(method)
        if not self.criterion.prunes:
            raise ValueError(f"method {method!r} prunes nothing; choose one of {', '.join(criteria.names())}")
        if int(epochs_per_round) != epochs_per_round or epochs_per_round < 1:
            raise ValueError(f"epochs_per_round must be an integer >= 1, got {epochs_per_round}")
        self.prune = PruneConfig(method=method, sparsity=None if speedup is not None else sparsity,
                                 schedule=schedule, scope=scope, n_iter=n_iter, n_prune=epochs_per_round,
                                 rewind=rewind, reset_bn=reset_bn, granularity=granularity, speedup=speedup,
                                 max_layer_ratio=max_layer_ratio, round_to=round_to,
                                 score_batches=score_batches, calibration_batches=calibration_batches,
                                 pattern=pattern)  # fmt: skip
        if pattern is not None and plan is not None:
            raise ValueError(f"pattern {pattern!r} applies to the weight plan that granularity 'weight' builds; "
                             "a given plan selects its own units (leave pattern=None)")  # fmt: skip
        self.settings = _settings_of(self.criterion, settings)
        self.recording = Recording.of(self.settings)
        if self.criterion.records:
            self._check_recording(probe_data)
        if current_platform().distributed:
            raise ValueError("CausalPruner runs in one process: under torchrun / DDP each process would record its "
                             "own batch's loss changes and select its own mask; for several processes run "
                             "`causalprune run CONFIG --nproc N` (docs/distributed.md)")  # fmt: skip
        if steps_per_epoch is not None and (int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be an integer >= 1, got {steps_per_epoch}")
        self.criterion.scorer(plan.kind if plan is not None else granularity)  # fails now, not after a round
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.forward = forward
        self.probe_data, self.score_data, self.seed = probe_data, score_data, seed
        self.example_inputs = example_inputs
        self.save_recording = bool(save_recording)
        self.theta_pre = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.lr_scheduler = lr_scheduler
        self._lr_start = self._lr_state()  # the schedule at θ_pre: every rewind goes back to it
        self._capacity = None if steps_per_epoch is None else int(steps_per_epoch) * int(epochs_per_round)
        self._handle: MaskHandle | None = None
        self._loaded: Mask | None = None
        if params is not None and (granularity == "channel" or plan is not None):
            raise ValueError("params selects weights; at channel granularity the traced groups decide what is pruned")
        self.plan: Plan | None = plan
        if plan is None and granularity == "channel":  # GPT-2's Conv1D, grouped-query attention: refused now
            hfheads.refuse_untraceable(model)
        if plan is None and granularity == "weight":
            self.plan = WeightPlan.build(model, self.prune, initial=None if params is None else _subset(model, params))
        self.mask = self.plan.initial_mask() if self.plan is not None else Mask.ones(model)
        self._check_optimizer()
        self.targets: list[float] = self.plan.targets() if self.plan is not None else []
        if self.plan is None and example_inputs is not None:
            self._build_plan(example_inputs)
        self.history: list[dict[str, Any]] = []
        self.round = 1
        self.epoch_in_round = 0
        self.done = False
        kept = calibration_batches if self.criterion.calibrates and calibration_batches is not None else score_batches
        self._recent: deque[tuple[Any, Any]] = deque(maxlen=kept)  # the batches data-driven methods score on
        self._recorder: TrajectoryRecorder | None = None
        self._restore: dict[str, Any] | None = None  # a loaded recording, put into the round's recorder
        self._lost = 0  # recorded steps of the round in progress that a loaded state did not hold
        if self._handle is None:  # (a channel plan attached its mask already)
            self._handle = self.mask.attach(model, self._torch_optimizer)

    # --- the loop's calls ---------------------------------------------------------------
    def step(self, inputs: Any, targets: Any) -> torch.Tensor:
        """Take one training step on (inputs, targets) — recorded when the round records; return the loss.

        After the last round (`done`) it is a plain step under the mask (post-training).
        """
        recorder = None
        if not self.done:
            self._seen(inputs, targets)
            recorder = self._round_recorder()
        if recorder is not None:
            return recorder.step(inputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self._call(inputs), targets)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def before_step(self, inputs: Any, targets: Any) -> None:
        """Your own step, part 1: call right before the training forward on (inputs, targets); after `done`, nothing."""
        if self.done:
            return
        self._seen(inputs, targets)
        recorder = self._round_recorder()
        if recorder is not None:
            recorder.before_step(inputs, targets)

    def after_step(self, loss: torch.Tensor) -> None:
        """Your own step, part 2: call right after ``optimizer.step()`` with the loss; after `done`, nothing."""
        if self.done or not self.criterion.records:
            return
        if self._recorder is None:  # a round that records has one from before_step on: this step would be lost
            raise RuntimeError("after_step called without before_step: call before_step(inputs, targets) right "
                               "before the training forward of every step")  # fmt: skip
        self._recorder.after_step(loss)

    def end_epoch(self) -> Mask | None:
        """Count an epoch; at the end of a round score, prune and rewind. Return the new mask, or None.

        After the last round (`done`) it returns None: the epochs of post-training prune nothing.
        """
        if self.done:
            return None
        self.epoch_in_round += 1
        if self.epoch_in_round < self.prune.n_prune:
            return None
        return self._end_round()

    # --- results --------------------------------------------------------------------------
    def make_permanent(self) -> nn.Module:
        """Stop enforcing the mask (the pruned weights stay exactly zero) and return the model."""
        self.mask.apply_(self.model)
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._close_recorder()
        return self.model

    def slim(self) -> nn.Module:
        """Channel granularity, after the last round: remove the pruned channels from the model, in place.

        The model's layers get smaller tensors, so the optimizer no longer holds them: build a
        new optimizer for any further training. Returns the model; the pruner is finished.
        """
        if self.plan is None or not self.plan.slims or not self.done:
            raise ValueError("slim() needs granularity='channel' and every round done")
        self.make_permanent()
        slim = self.plan.finish(self.model, self.mask)
        hfheads.update_head_counts(slim)  # a Hugging Face model's head-count attributes (BERT)
        return slim

    # --- checkpoints ----------------------------------------------------------------------
    @property
    def steps_in_round(self) -> int:
        """The steps the round in progress has recorded (those of a loaded recording included)."""
        if self._recorder is not None:
            return self._recorder.rows
        return int(self._restore["rows"]) if self._restore is not None else 0

    def state_dict(self) -> dict[str, Any]:
        """The pruner's state, at a round boundary or mid-round; with `save_recording`, the round's recording too."""
        recording = None
        if self.save_recording and self._recorder is not None and self._recorder.rows:
            recording = self._recorder.state_dict()
        elif self.save_recording and self._restore is not None:  # loaded, no step taken since
            recording = self._restore
        return {"format": "causalprune.CausalPruner/1", "method": self.criterion.name, "round": self.round,
                "epoch_in_round": self.epoch_in_round, "done": self.done, "targets": list(self.targets),
                "mask": {n: t.clone() for n, t in self.mask.items()}, "theta_pre": self.theta_pre,
                "history": list(self.history), "n_iter": self.prune.n_iter, "steps_in_round": self.steps_in_round,
                "recording": recording, "lr_start": self._lr_start}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any], source: str | None = None) -> None:
        """Continue from `state_dict()`'s output: the same method and rounds, on the same model.

        A state saved in the middle of a recorded round without its recording (no
        `save_recording`) resumes with a warning naming `source` (the checkpoint, for the
        message) and the recorded steps it lost: the round is then scored from the steps
        that remain.
        """
        where = source or "the pruner state"
        if not isinstance(state, Mapping) or state.get("format") != "causalprune.CausalPruner/1":
            raise ValueError(f"{where} is not a CausalPruner state (no 'format': 'causalprune.CausalPruner/1')")
        missing = [k for k in ("method", "n_iter", "mask", "theta_pre", "round", "epoch_in_round", "done", "targets",
                               "history") if k not in state]  # fmt: skip
        if missing:
            raise ValueError(f"{where} is not a complete CausalPruner state: no {', '.join(missing)}")
        for key, mine in (("method", self.criterion.name), ("n_iter", self.prune.n_iter)):
            if state[key] != mine:
                raise ValueError(f"the saved pruner has {key} {state[key]!r}, this one {mine!r}")
        mask = Mask(state["mask"])
        mask.check(self.model)  # names and shapes of this model
        self._set_mask(mask)
        self._loaded = mask  # a channel plan traced later (at the first step) keeps it
        self.theta_pre = dict(state["theta_pre"])
        self.round, self.epoch_in_round, self.done = int(state["round"]), int(state["epoch_in_round"]), state["done"]
        self.targets, self.history = list(state["targets"]), list(state["history"])
        if state.get("lr_start") is not None:  # (states saved before it was kept: the schedule at this build)
            self._lr_start = state["lr_start"]
        self._close_recorder()
        recording = state.get("recording")
        self._restore = dict(recording) if recording is not None and not self.done else None
        held = int(recording["rows"]) if self._restore is not None else 0
        recorded = state.get("steps_in_round")  # (states saved before it was counted: whole epochs only)
        self._lost = 0
        if self.done or not self.criterion.records:
            return
        if recorded is None and self.epoch_in_round:
            self._lost = -1
            warnings.warn(f"{where}: resumed in the middle of round {self.round} after {self.epoch_in_round} "
                          "epoch(s) whose recorded steps it does not hold; the round is scored from the steps that "
                          "remain", stacklevel=2)  # fmt: skip
        elif recorded is not None and int(recorded) > held:
            self._lost = int(recorded) - held
            warnings.warn(f"{where}: resumed in round {self.round} after {int(recorded)} recorded step(s), of which "
                          f"it holds {held}; the round is scored without the {self._lost} lost step(s) "
                          "(save_recording=True keeps them in the state)", stacklevel=2)  # fmt: skip

    # --- internals ------------------------------------------------------------------------
    @property
    def _torch_optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer under wrappers (Lightning's, Accelerate's) that keep it as ``.optimizer``."""
        opt = self.optimizer
        while isinstance(getattr(opt, "optimizer", None), torch.optim.Optimizer):  # Accelerate's AcceleratedOptimizer
            opt = opt.optimizer
        return opt

    def _check_optimizer(self) -> None:
        held = {id(p) for g in self._torch_optimizer.param_groups for p in g["params"]}
        params = prunable_parameters(self.model)
        missing = [n for n in self.mask if id(params[n]) not in held]
        if missing:
            raise ValueError(f"the optimizer does not hold the model's parameter(s) {', '.join(missing[:5])}"
                             f"{' …' if len(missing) > 5 else ''}: build the pruner with the optimizer that "
                             "trains this model")  # fmt: skip

    def _call(self, inputs: Any) -> Any:
        return self.forward(self.model, inputs) if self.forward is not None else self.model(inputs)

    def _seen(self, inputs: Any, targets: Any) -> None:
        if self.example_inputs is None:
            self.example_inputs = inputs
        if self.plan is None:  # a plan traced from the model's inputs (channel groups): at the first batch
            self._build_plan(inputs)
        if self.criterion.needs_data and self.score_data is None:
            self._recent.append((inputs, targets))

    def _io(self, inputs: Any) -> ModelIO | None:
        """The model's inputs as a `ModelIO` (a batch's first sample, this pruner's forward and loss)."""
        return None if inputs is None else ModelIO.from_inputs(inputs, self.forward, self.loss_fn)

    def _build_plan(self, inputs: Any) -> None:
        if self.prune.granularity == "channel":  # a BERT / LLaMA model: whole heads, MLP neurons (hfheads)
            hfheads.declare(self.model)
        try:
            self.plan = build_plan(self.model, self.prune, self._io(inputs))  # traced through the forward
        except ValueError as e:
            hint = hfheads.tracing_hint(self.model) if e.__cause__ is not None else ""
            if not hint:
                raise
            raise type(e)(f"{e}{hint}") from e
        if self._loaded is None:  # a fresh start; a loaded state brought its mask and targets
            self.targets = self.plan.targets()
            self._set_mask(self.plan.initial_mask())

    def _check_recording(self, probe_data: Any) -> None:
        """Refuse, before any training, recording settings this pruner cannot follow."""
        rec = self.recording
        if rec.record_steps is not None:
            raise ValueError("record_steps needs each round's length in advance; CausalPruner records every step "
                             "of a round (leave record_steps unset)")  # fmt: skip
        if rec.dedicated:
            raise ValueError("recorder 'sgd' (a dedicated plain SGD) is the command-line driver's; CausalPruner "
                             "records the steps of your optimizer (leave recorder at 'train')")  # fmt: skip
        if rec.delta_loss == "probe" and probe_data is None:
            raise ValueError("delta_loss 'probe' needs probe_data=(inputs, targets) or a list of batches")

    def _lr_state(self) -> dict[str, Any]:
        """The optimizer's learning rates and the scheduler's state, as a rewind restores them."""
        return {"lr": [g["lr"] for g in self._torch_optimizer.param_groups],
                "scheduler": copy.deepcopy(self.lr_scheduler.state_dict()) if self.lr_scheduler is not None
                else None}  # fmt: skip

    def _rewind(self) -> None:
        """The rewind rule (docs/method.md, "Rewinding"): θ_pre, a fresh optimizer state, the LR schedule's start."""
        rewind(self.model, self.theta_pre, self.prune.reset_bn)
        opt = self._torch_optimizer
        opt.state.clear()  # momentum and moments of the weights before the rewind
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(copy.deepcopy(self._lr_start["scheduler"]))
            for g, lr in zip(opt.param_groups, self._lr_start["lr"], strict=True):
                g["lr"] = lr

    def _round_recorder(self) -> TrajectoryRecorder | None:
        if not self.criterion.records:
            return None
        if self._recorder is None:
            assert self.plan is not None  # (traced at the first batch, before this)
            self._recorder = make_recorder(
                self.recording, self.model, self.loss_fn, self._torch_optimizer,
                self.plan.layout(self.model, self.mask), seed=self.seed, probe_data=self.probe_data,
                capacity=self._capacity, forward=self.forward,
            )  # fmt: skip
            if self._restore is not None:
                restore, self._restore = self._restore, None
                self._recorder.load_state_dict(restore)
        return self._recorder

    def _end_round(self) -> Mask:
        k = self.round
        if not self.targets or self.plan is None:  # channel granularity, traced from the first batch
            raise ValueError("a channel-level round ended before any batch was seen: give example_inputs=... or call "
                             "step() / before_step() before end_epoch()")  # fmt: skip
        target = self.targets[k - 1]
        if self.criterion.records and self._recorder is None and self._restore is not None:
            self._round_recorder()  # a loaded recording and no step since: score from it
        recorder = self._recorder
        if self.criterion.records and (recorder is None or recorder.rows == 0):
            lost = f" ({self._lost} recorded step(s) were lost with a resume)" if self._lost > 0 else ""
            raise ValueError(f"round {k} ended with no recorded step{lost}: {self.criterion.name!r} scores from the "
                             "round's recorded steps; resume from a checkpoint saved with save_recording=True, or "
                             "from an earlier one")  # fmt: skip
        try:
            result = run_round(
                self.plan, self.criterion, self.model, self.mask, k, target, seed=self.seed, settings=self.settings,
                trajectory=recorder.trajectory() if recorder is not None else None,
                data=list(self.score_data if self.score_data is not None else self._recent), loss_fn=self.loss_fn,
                inputs=self.example_inputs, theta_pre=self.theta_pre, io=self._io(self.example_inputs),
            )  # fmt: skip
        finally:
            if recorder is not None and self._capacity is None:
                self._capacity = recorder.rows  # rounds are alike: the next one is allocated up front
            self._close_recorder()
        self.history.append({"round": k, "target": target, **result.facts})
        if self.prune.rewind:
            self._rewind()
        self._set_mask(result.mask)
        self.done = k == len(self.targets)
        self.round, self.epoch_in_round, self._lost = (k if self.done else k + 1), 0, 0
        return result.mask

    def _set_mask(self, mask: Mask) -> None:
        if self._handle is not None:
            self._handle.remove()
        self.mask = mask
        self._handle = mask.attach(self.model, self._torch_optimizer)  # applies it, then after every step

    def _close_recorder(self) -> None:
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None
        self._restore = None


def check_options(options: Mapping[str, Any], who: str, taken: Collection[str] = ()) -> None:
    """Refuse, in one line, `options` for `CausalPruner` that it does not take or that `who` sets itself (`taken`).

    The integrations pass their ``**pruner_options`` through; a name they already give
    (``forward``, the model, the loss) would otherwise surface as Python's "got multiple
    values for keyword argument". A ``pattern`` is parsed here too (`config.parse_pattern`).
    """
    params = inspect.signature(CausalPruner.__init__).parameters
    valid = sorted(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in taken)
    clash = [n for n in options if n in taken or n in ("model", "optimizer", "loss_fn")]
    if clash:
        raise ValueError(f"{who} sets {', '.join(clash)} itself; other CausalPruner options: {', '.join(valid)}")
    unknown = [n for n in options if n not in valid]
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {who}; valid: {', '.join(valid)}")
    if options.get("pattern") is not None:  # a bad "N:M" fails when the callback is built, not at fit start
        parse_pattern(options["pattern"])


def _subset(model: nn.Module, params: Sequence[str]) -> Mask:
    """The all-alive mask of the named prunable parameters (canonical names or aliases)."""
    prunable = prunable_parameters(model)  # keyed by canonical names
    aliases = parameter_aliases(model)
    names = [aliases.get(n, n) for n in params]
    unknown = [n for n in names if n not in prunable]
    if unknown or not names:
        raise ValueError(f"params {list(params)!r}: not prunable parameter names ({', '.join(unknown) or 'empty'}); "
                         f"prunable: {', '.join(prunable)}")  # fmt: skip
    return Mask({n: torch.ones_like(prunable[n], dtype=torch.bool) for n in dict.fromkeys(names)})


__all__ = ["CausalPruner", "check_options", "rewind", "stage_seed"]
