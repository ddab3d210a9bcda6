"""Algorithm 1 (docs/method.md, "Algorithm 1") for every method, as a sequence of resumable stages.

    pre_stage     train N_pre epochs                               → pre/checkpoint.pt (θ_pre)
    level_stage   for round k = 1..N_iter: rewind to θ_pre, train N_prune epochs with the
                  mask (recorded if the method needs a trajectory), score, select
                  the schedule's next sparsity                      → level_k/
    post_stage    rewind, train N_post epochs with the final mask   → model.pt, summary.json

What a round prunes is the run's `plan.Plan` (``prune.granularity``): single weights
(`plan.WeightPlan`) or channel groups (`structured.ChannelPlan`: groups held at zero during
the rounds, the network slimmed physically before post-training; model.pt then holds the
slim network, rebuilt from mask.pt by `plan.restore_model`). Each round is `plan.run_round`,
the same round `pruner.CausalPruner` runs; its recorder comes from `recording.make_recorder`.

Every method goes through the same stages with the same schedule, epochs and selection
code; a method that does not prune (``dense``) trains the same total epochs in one stage.
The driver knows methods only by what they declare (`criteria.Criterion`). One
`Run.train_stage` trains every stage; each stage is seeded from (seed, stage) and returns
early when its outputs exist, so a stopped run continues from its last finished stage and
produces exactly the masks an uninterrupted run would. Files: `runfolder.RunFolder`.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, criteria, lasso, resolve, tracking
from .config import Config, ConfigError
from .criteria import Criterion, ScoreInput
from .data import AUGMENTATIONS, Splits, input_io, load_pool, make_splits, materialize, shape_of
from .events import EpochEvent, Event, EventSink, NullSink, RoundEvent, Sinks, StageEvent, SummaryEvent, stage_level
from .layout import ParamLayout
from .masks import Mask, prunable_parameters
from .metrics import efficiency, measured_efficiency
from .modelio import ModelIO
from .models import build_model, load_pretrained, pretrained_status
from .plan import Plan, WeightPlan, apply_updates, build_plan, rewind, run_round, score_round
from .platform import SINGLE, Platform
from .platform import current as current_platform
from .recording import Recording, make_recorder, stage_seed
from .runfolder import (
    RunFolder,
    RunFolderError,
    default_run_dir,
    load_shared_pre,
    load_state_into,
    pre_cache_dir,
    save_shared_pre,
    shared_pre_lock,
)
from .train import Callback, StepFn, evaluate, fit, loss_function, make_optimizer, plain_step
from .trajectory import ColumnShard, TrajectoryRecorder


def device_of(cfg: Config) -> torch.device:
    """Resolve train.device (auto → cuda when available)."""
    if cfg.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available (use cpu or auto)")
    return torch.device(cfg.train.device)


def available_cores() -> int:
    """Return the CPU cores this process may run on (its affinity mask; os.cpu_count() elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for(cfg: Config, jobs: int = 1) -> int:
    """Return the intra-op threads a run uses: ``train.threads``, else the available cores shared by `jobs`.

    torch's default (one thread per core) oversubscribes the cores as soon as anything
    else runs — several sweep processes, or another job — and a loaded 2-core machine then
    runs many times slower (docs/benchmarks.md, "Threads").
    """
    return cfg.train.threads if cfg.train.threads is not None else max(1, available_cores() // max(1, jobs))


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and machine facts for env.json."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        sha = None
    return {
        "causalprune": __version__,
        "git_sha": sha,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
    }


class _Logger(Callback):
    """Keeps each epoch's logs; evaluates on validation and test if asked; emits each epoch's event."""

    def __init__(self, run: Run, stage: str, model: nn.Module, evaluate_sets: bool) -> None:
        self.run, self.stage, self.model, self.evaluate_sets = run, stage, model, evaluate_sets
        self.history: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.evaluate_sets:
            logs.update(self.run.eval_sets(self.model))
        step = self.run.step + epoch * self.run.steps_per_epoch  # the stage starts at run.step
        self.run.events.emit(EpochEvent(stage=self.stage, level=stage_level(self.stage), step=step, epoch=epoch,
                                        metrics=dict(logs)))  # fmt: skip
        self.history.append(dict(logs))


@dataclass
class Stage:
    """What one training stage leaves: per-epoch logs, and the recorder if it recorded."""

    history: list[dict[str, float]]
    recorder: TrajectoryRecorder | None = None


@dataclass
class Run:
    """One run: its config and method, its folder, data and device, and the time spent so far."""

    cfg: Config
    criterion: Criterion
    folder: RunFolder
    data: Splits
    device: torch.device
    pre_cache: Path | None = None
    timing: dict[str, float] = field(default_factory=dict)
    plan: Plan | None = None  # what the rounds prune (prune.granularity); set before the stages run
    plat: Platform = SINGLE  # the processes of a distributed run (torchrun)
    events: EventSink = field(default_factory=NullSink)  # where the run's events go (metrics.jsonl: RunFolder.events)
    restored: list[Event] = field(default_factory=list)  # the events a resumed run's folder holds, replayed by stage
    step: int = 0  # optimizer steps of the stages done so far (the global step at the current stage's start)

    def eval(self, model: nn.Module, split: str) -> dict[str, float]:
        """Return the metrics of `model` on split ``val`` or ``test``."""
        x, y = getattr(self.data, split)
        return evaluate(model, x, y, self.data.task, self.device)

    def eval_sets(self, model: nn.Module) -> dict[str, float]:
        """Return validation and test metrics as ``val_<metric>`` / ``test_<metric>`` entries."""
        return {f"{split}_{k}": v for split in ("val", "test") for k, v in self.eval(model, split).items()}

    @cached_property
    def io(self) -> ModelIO:
        """Return how the driver calls the model: ``model(x)`` on one sample of the data's shape (`ModelIO`).

        Float32 zeros, as ``torch.zeros(1, *input_shape)``; integer inputs (token ids) keep their dtype.
        """
        dtype = getattr(self.data.train[0], "dtype", None)
        integer = isinstance(dtype, torch.dtype) and not (dtype.is_floating_point or dtype.is_complex)
        return ModelIO.from_shape(tuple(self.data.input_shape), dtype if integer else None)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one training epoch (the last batch may be short)."""
        return -(-len(self.data.train[1]) // self.cfg.train.batch_size)

    def stage_done(self, stage: str, epochs: int, source: str = "trained") -> None:
        """Count a finished stage's steps and emit its `StageEvent` (``source``: trained here, or ``shared``)."""
        self.step += epochs * self.steps_per_epoch
        self.events.emit(StageEvent(stage=stage, level=stage_level(stage), step=self.step, epochs=epochs,
                                    source=source))  # fmt: skip

    def replay(self, stage: str, epochs: int) -> None:
        """Re-emit the events of a stage restored from the run folder, and count its steps.

        A resumed run's sinks see every stage's events, as an uninterrupted run's do
        (metrics.jsonl keeps its matching lines: `runfolder.MetricsFile`).
        """
        for event in self.restored:
            if event.stage == stage:
                self.events.emit(event)
        self.step += epochs * self.steps_per_epoch

    @property
    def recording(self) -> Recording:
        """The run's recording settings (the ``causal`` section's recording fields)."""
        return Recording.from_config(self.cfg)

    def add_time(self, key: str, seconds: float) -> None:
        """Add `seconds` to the timing entry `key`."""
        self.timing[key] = self.timing.get(key, 0.0) + seconds

    @property
    def augment(self) -> Any:
        """The training-batch augmentation of the data set, or None."""
        return AUGMENTATIONS[self.data.augment] if self.data.augment else None

    def score_batches(self, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Return `prune.score_batches` shuffled training batches for data-driven criteria.

        A calibrating criterion (`criteria.Criterion.calibrates`: wanda, sparsegpt) reads
        ``prune.calibration_batches`` of them instead when that key is set.
        """
        x, y = self.data.train
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        bs = self.cfg.train.batch_size
        n = self.cfg.prune.score_batches
        if self.criterion.calibrates and self.cfg.prune.calibration_batches is not None:
            n = self.cfg.prune.calibration_batches
        return [(materialize(x[i]), y[i]) for i in perm.split(bs)[:n]]

    def new_model(self) -> nn.Module:
        """Build the config's model (seeded), load pretrained weights, move it to the device."""
        torch.manual_seed(stage_seed(self.cfg.seed, "init"))
        model = build_model(self.cfg.model, self.data.input_shape, self.data.num_classes)
        prunable_parameters(model)  # fails early, naming the model, if nothing is prunable
        if self.cfg.model.pretrained:
            load_pretrained(model, self.cfg.model.name, self.cfg.model.pretrained)
        model = model.to(self.device)
        if self.cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.cfg.train.compile:  # in place: state_dict names stay those of the plain model
            model.compile()
        return model

    def train_stage(self, model: nn.Module, stage: str, epochs: int, mask: Mask | None, *, record: bool = False,
                    evaluate_sets: bool = False) -> Stage:  # fmt: skip
        """Train `epochs` epochs with a fresh optimizer and LR schedule (the stage's settings).

        With `record`, the round's steps are recorded (`recording.Recording`); with
        `evaluate_sets`, validation and test metrics are logged after every epoch.
        """
        cfg = self.cfg
        torch.manual_seed(stage_seed(cfg.seed, stage))
        train = cfg.train.for_stage(stage)  # post-training may have its own optimizer and lr
        dedicated = record and self.recording.dedicated
        if dedicated:  # plain SGD, constant lr, no momentum or weight decay (the authors' recorder)
            opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=self.recording.record_lr)
        else:
            opt = make_optimizer(model.parameters(), train)
        handle = mask.attach(model, opt) if mask is not None else None
        logger = _Logger(self, stage, model, evaluate_sets)
        net = self.plat.wrap(model)  # DistributedDataParallel in a distributed run: the training forward only
        recorder, step = _recorder(self, model, net, opt, mask, epochs) if record else (None, None)
        t0 = time.perf_counter()
        try:
            fit(
                net, opt, self.data.train, epochs=epochs, batch_size=cfg.train.batch_size,
                task=self.data.task, seed=stage_seed(cfg.seed, stage + "/batches"),
                lr_schedule="constant" if dedicated else train.lr_schedule, step=step, augment=self.augment,
                amp=cfg.train.amp, initial_lr=train.initial_lr, callbacks=[logger], desc=stage, plat=self.plat,
            )  # fmt: skip
        except BaseException:
            if recorder is not None:
                recorder.close()
            raise
        finally:
            if handle is not None:
                handle.remove()
        self.add_time("record_s" if record else "pre_s" if stage == "pre" else "train_s", time.perf_counter() - t0)
        return Stage(logger.history, recorder)


def _recorder(run: Run, model: nn.Module, net: nn.Module, opt: torch.optim.Optimizer, mask: Mask | None,
              epochs: int) -> tuple[TrajectoryRecorder, StepFn]:  # fmt: skip
    """The recorder of a round and the step function that records `causal.record_steps` of its steps.

    What is recorded is the plan's layout (one column per channel group at channel granularity).
    """
    rec, data = run.recording, run.data
    assert run.plan is not None and mask is not None
    layout = run.plan.layout(model, mask)
    shard = _column_shard(run, layout)
    loss_fn = loss_function(data.task)
    px, py = data.probe
    total = epochs * -(-len(data.train[1]) // run.cfg.train.batch_size)  # optimizer steps of the round
    recorded = min(total, rec.record_steps or total)
    probe_x, probe_y = materialize(px), py
    if shard is not None:  # each process its slice of the probe set; the loss is reduced over them
        probe_x = probe_x.tensor_split(run.plat.world_size)[run.plat.rank]
        probe_y = probe_y.tensor_split(run.plat.world_size)[run.plat.rank]
    recorder = make_recorder(
        rec, model, loss_fn, opt, layout, seed=run.cfg.seed,
        probe_data=(probe_x.to(run.device), probe_y.to(run.device)),
        probe_reduce=run.plat.all_reduce_sum if shard is not None else None, capacity=max(recorded, 1),
        train_model=net, loss_reduce=run.plat.all_reduce_sum if run.plat.distributed else None, shard=shard,
    )  # fmt: skip
    return recorder, _spread_recorded_steps(recorder.step, plain_step(net, opt, loss_fn), total, recorded)


def _column_shard(run: Run, layout: ParamLayout) -> ColumnShard | None:
    """This rank's columns of a distributed recording (SPEC §9), or None: one process, or a fit that needs all.

    Only with ``causal.shard_trajectory`` (otherwise every rank records every column and
    solves alike, which reproduces a single process exactly); it needs a solver that runs
    on shards (`lasso.SHARDED_SOLVERS`) and no momentum features.
    """
    plat = run.plat
    if not (plat.distributed and run.recording.shard_trajectory):  # CausalSettings checked solver and momentum
        return None
    n = layout.n_columns
    start, stop = plat.shard_range(n)
    comm = lasso.Comm.over(plat)
    return ColumnShard(start, stop, comm, lambda local: plat.gather_columns(local, n))


def _spread_recorded_steps(recorded: StepFn, plain: StepFn, total: int, n: int) -> StepFn:
    """A round's step function recording `n` of its `total` steps, evenly spread (``causal.record_steps``).

    Step s (1-based) is recorded when ⌊s·n/total⌋ steps past ⌊(s−1)·n/total⌋: exactly n
    steps, the last one included, so the recorded window spans the whole LR schedule
    (the tail of a cosine or one-cycle round alone would have learning rates near zero).
    """
    if n >= total:
        return recorded
    taken = 0

    def step(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        nonlocal taken
        taken += 1
        record = taken * n // total > (taken - 1) * n // total
        return recorded(xb, yb) if record else plain(xb, yb)

    return step


# --- the stages ---------------------------------------------------------------------------
def pre_stage(run: Run, model: nn.Module) -> dict[str, torch.Tensor]:
    """Return θ_pre — this run's, a shared one (charging its training time), or trained now — loaded in `model`."""
    own = run.folder.load_pre(run.device) if run.plat.broadcast_object(run.folder.pre_checkpoint.exists()) else None
    cache = pre_cache_dir(run.cfg, run.pre_cache) if run.pre_cache and not run.plat.distributed else None
    if own is not None:
        load_state_into(model, own, run.folder.pre_checkpoint, run.folder.pre_checkpoint.parent)
        if cache is not None and not (cache / "checkpoint.pt").exists():  # e.g. a run started before the grid
            save_shared_pre(cache, own, run.timing.get("pre_s", 0.0))
        run.replay("pre", run.cfg.prune.n_pre)
        return own
    with shared_pre_lock(cache):  # concurrent runs: one trains the shared θ_pre, the others wait, then read it
        shared = load_shared_pre(cache, run.device) if cache is not None else None
        if shared is not None:  # a shared θ_pre: charge its training time to this run too
            theta, pre_s = shared
            load_state_into(model, theta, cache / "checkpoint.pt", cache)
            run.stage_done("pre", run.cfg.prune.n_pre, source="shared")
            run.folder.save_pre(theta)
            run.add_time("pre_s", pre_s)
            run.add_time("total_s", pre_s)
            return theta
        run.train_stage(model, "pre", run.cfg.prune.n_pre, None, evaluate_sets=True)
        run.stage_done("pre", run.cfg.prune.n_pre)  # its events before its checkpoint, which marks it done
        theta = {k: v.detach().clone() for k, v in model.state_dict().items()}  # the model holds θ_pre
        if cache is not None:
            save_shared_pre(cache, theta, run.timing["pre_s"])
    run.folder.save_pre(theta)
    run.folder.save_timing(run.timing)
    return theta


def level_stage(run: Run, model: nn.Module, theta_pre: dict[str, torch.Tensor], mask: Mask, k: int,
                target: float) -> Mask:  # fmt: skip
    """Pruning round `k`: rewind, train (recording if the method needs it), `plan.run_round`; return the new mask.

    A method's weight updates are applied by the round, kept in the round's scores.pt and
    moved into θ_pre (`theta_pre`, in place), again when a finished round is resumed.
    """
    cfg, folder = run.cfg, run.folder
    assert run.plan is not None
    if run.plat.broadcast_object(folder.level_done(k)):  # the primary's view of the folder decides
        mask, state = folder.load_level(k, run.device, like=mask)
        load_state_into(model, state, folder.level_dir(k) / "checkpoint.pt", folder.level_dir(k))
        _restore_updates(run, model, mask, k, theta_pre)
        run.replay(f"level_{k}", cfg.prune.n_prune)
        return mask
    if cfg.prune.rewind or k == 1:
        rewind(model, theta_pre, cfg.prune.reset_bn)
    mask.apply_(model)
    stage = f"level_{k}"
    recorder = run.train_stage(model, stage, cfg.prune.n_prune, mask, record=run.criterion.records).recorder
    try:
        t0 = time.perf_counter()
        result = run_round(
            run.plan, run.criterion, model, mask, k, target, seed=cfg.seed, settings=_settings(run),
            trajectory=recorder.trajectory() if recorder is not None else None, data=run.score_batches,
            loss_fn=loss_function(run.data.task), inputs=run.data.train[0], input_shape=tuple(run.data.input_shape),
            theta_pre=theta_pre, io=run.io,
        )  # fmt: skip
        run.add_time("solve_s", time.perf_counter() - t0)
    finally:
        if recorder is not None:
            recorder.close()
    new_mask, scored = result.mask, result.scored
    new_mask.apply_(model)
    run.plat.check_same_tensors(dict(new_mask), f"the mask of round {k}")  # every rank selected the same
    scores = {"scores": scored.scores, "tie_break": scored.tie_break}
    if result.updates:
        scores["updates"] = result.updates
    _round_done(run, k, target, run.plan.target_key, result.facts)  # its events, then its files (mask.pt: done)
    folder.save_level(k, scores, model.state_dict(), new_mask)
    folder.save_timing(run.timing)
    return new_mask


def _round_done(run: Run, k: int, target: float, target_key: str, facts: dict[str, Any]) -> None:
    """Emit round `k`'s `RoundEvent` (its target, the sparsity reached, the round's facts) and its stage's end.

    `target_key` names the budget (``sparsity_target``, ``macs_target``); `facts` holds the
    ``sparsity`` reached and the round's other scalar facts.
    """
    facts = {key: v for key, v in facts.items() if isinstance(v, int | float | str | bool)}
    sparsity = float(facts.pop("sparsity"))
    end = run.step + run.cfg.prune.n_prune * run.steps_per_epoch  # the round's last optimizer step
    run.events.emit(RoundEvent(stage=f"level_{k}", level=k, step=end, target=target, sparsity=sparsity,
                               target_kind=target_key.removesuffix("_target"), facts=facts))  # fmt: skip
    run.stage_done(f"level_{k}", run.cfg.prune.n_prune)


def _settings(run: Run) -> object:
    """The method's settings section of the run's config (None: it has none)."""
    return run.cfg.section(run.criterion.section) if run.criterion.section else None


def _restore_updates(run: Run, model: nn.Module, mask: Mask, k: int, theta_pre: dict[str, torch.Tensor]) -> None:
    """Move the weight updates a finished round `k` saved (if any) into θ_pre again, as the round did."""
    path = run.folder.level_dir(k) / "scores.pt"
    if not path.exists():
        return
    updates = torch.load(path, map_location=run.device, weights_only=True, mmap=True).get("updates")
    if updates:
        apply_updates(model, mask, updates, theta_pre)


def final_stage(run: Run, model: nn.Module, mask: Mask | None, epochs: int, stage: str) -> list[dict[str, float]]:
    """Train the last stage (``post`` with the final mask, or ``dense``); return its per-epoch logs."""
    history = run.train_stage(model, stage, epochs, mask, evaluate_sets=True).history
    run.stage_done(stage, epochs)
    return history or [{"epoch": 0, **run.eval_sets(model)}]  # no epochs: the model as it stands


def run_experiment(cfg: Config, out: str | Path | None = None, pre_cache: str | Path | None = None,
                   quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    """Run (or continue) one experiment in its run folder; return its summary.

    It uses ``train.threads`` CPU threads (a grid's executor sets them for each run), else
    the cores, shared among the processes of a distributed run (`threads_for`).
    """
    t_start = time.perf_counter()
    cfg = resolve.check(cfg)
    threads = torch.get_num_threads()
    jobs = current_platform().local_world_size  # the processes of a distributed run share the cores
    try:
        torch.set_num_threads(threads_for(cfg, jobs))
        return _run(cfg, out, pre_cache, quiet, t_start)
    finally:
        torch.set_num_threads(threads)  # the caller's setting, as it was


def _run(cfg: Config, out: str | Path | None, pre_cache: str | Path | None, quiet: bool,
         t_start: float) -> dict[str, Any]:  # fmt: skip
    criterion = criteria.get(cfg.prune.method)
    plat = current_platform()
    _check_ranks(plat, cfg)
    quiet = quiet or not plat.is_primary
    folder = RunFolder(out if out is not None else default_run_dir(cfg), writer=plat.is_primary)
    if plat.broadcast_object(folder.finished()):
        return _finished(folder, cfg, quiet)
    # One process per run folder (a distributed run's primary holds the lock): taken first, so a
    # busy folder is refused at once. Everything that can fail on bad input is checked before the
    # run folder is written (a folder the lock created is removed again when nothing was written).
    with folder.lock():
        if plat.broadcast_object(folder.finished()):  # another process finished it before this one took the lock
            return _finished(folder, cfg, quiet)
        device = device_of(cfg)
        run = Run(cfg, criterion, folder, load_splits(cfg, device), device, Path(pre_cache) if pre_cache else None,
                  plat=plat)
        model = run.new_model()
        run.plan = build_plan(model, cfg.prune, run.io) if criterion.prunes else \
            WeightPlan.build(model, cfg.prune)  # (dense: counted as weights)
        if criterion.prunes and not criterion.needs and run.plan.units is not None:
            # units traced from the model, scored from the model alone: a method that cannot score them fails now
            score_round(criterion, run.plan, ScoreInput.build(model, run.plan.initial_mask(), settings=_settings(run),
                                                              groups=run.plan.units, io=run.io))  # fmt: skip
        folder.claim(cfg)
        started = folder.started_threads()
        if started is not None and started != torch.get_num_threads():
            if cfg.train.threads is None:  # a resumed run keeps its thread count: float sums stay the same
                torch.set_num_threads(started)
            else:
                warnings.warn(f"{folder.path} started with {started} threads and resumes with "
                              f"{cfg.train.threads}: results may differ from an uninterrupted run in the last bits",
                              stacklevel=2)  # fmt: skip
        folder.write_env(environment(device))
        run.timing = folder.load_timing()
        run.restored, run.events = folder.read_events(), folder.events()
        if cfg.track and folder.writer:  # the trackers: sinks beside metrics.jsonl (tracking.py)
            run.events = Sinks([run.events, *tracking.sinks(cfg, folder.path)])
        try:
            return _stages(run, model, t_start, quiet)
        finally:
            run.events.close()


def _check_ranks(plat: Platform, cfg: Config) -> None:
    """A distributed run's ranks agree on the config, and its global batch splits evenly among them."""
    if not plat.distributed:
        return
    plat.check_same(cfg.digest(), "the config (its digest): start every rank with the same config")
    if cfg.train.batch_size % plat.world_size:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} does not divide among {plat.world_size} "
                          "processes: the global batch is split evenly (choose a multiple of the process count)")


def _finished(folder: RunFolder, cfg: Config, quiet: bool) -> dict[str, Any]:
    folder.claim(cfg)  # refuses a folder of another config, or one that is not a run folder
    summary = folder.summary()
    if not quiet:
        print(f"already finished: {folder.path}")
    return summary


def _stages(run: Run, model: nn.Module, t_start: float, quiet: bool) -> dict[str, Any]:
    """Algorithm 1's stages in order; each returns early when its outputs exist."""
    cfg, criterion = run.cfg, run.criterion

    if not criterion.prunes:  # the same total epochs, no pruning
        epochs = cfg.train.epochs if cfg.train.epochs is not None else cfg.total_epochs()
        history = final_stage(run, model, None, epochs, cfg.prune.method)
        return _finish(run, model, Mask.ones(model), history, history[-1], t_start, quiet)

    theta_pre = pre_stage(run, model)
    dense_test = run.eval(model, "test")
    plan = run.plan
    assert plan is not None
    mask = plan.initial_mask()
    for k, target in enumerate(plan.targets(), start=1):
        mask = level_stage(run, model, theta_pre, mask, k, target)
    if cfg.prune.rewind:
        rewind(model, theta_pre, cfg.prune.reset_bn)
    model = plan.finish(model, mask)  # the mask applied; a plan that removes units slims the network
    before_post = run.eval(model, "test")  # the pruned network before any fine-tuning (the paper's Fig. 2b)
    history = final_stage(run, model, None if plan.slims else mask, cfg.prune.n_post, "post")
    return _finish(run, model, mask, history, dense_test, t_start, quiet, before_post)


def load_splits(cfg: Config, device: torch.device | None = None, download: bool | None = None) -> Splits:
    """Load the config's data set and split it for its seed (on `device` if ``data.on_device``)."""
    options = cfg.data.pool_options()
    if cfg.data.name == "pysrc":  # windows as long as the model's context
        options["block_size"] = cfg.model.block_size
    if download is not None:
        options["download"] = download
    pool = load_pool(cfg.data.name, **options)
    if cfg.data.max_samples is not None:
        pool = pool.limit(cfg.data.max_samples)
    data = make_splits(pool, cfg.seed, cfg.data.val_fraction, Recording.from_config(cfg).probe_size)
    return data.to(device) if cfg.data.on_device and device is not None else data


def _finish(run: Run, model: nn.Module, mask: Mask, history: list[dict[str, float]], dense_test: dict[str, float],
            t_start: float, quiet: bool, before_post: dict[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    cfg = run.cfg
    metric = "accuracy" if run.data.task == "classification" else "mse"
    better = max if metric == "accuracy" else min
    final = history[-1]
    best_val = better(history, key=lambda h: h[f"val_{metric}"])
    assert run.plan is not None
    n_prunable, n_nonzero = run.plan.counts(model, mask)  # a slim network's weights: against the dense ones
    run.add_time("total_s", time.perf_counter() - t_start)
    summary = {
        "method": cfg.prune.method,
        "seed": cfg.seed,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "task": run.data.task,
        "granularity": cfg.prune.granularity,
        "sparsity_target": cfg.prune.sparsity if run.criterion.prunes else 0.0,
        "sparsity_actual": 1.0 - n_nonzero / n_prunable,
        "params_prunable": n_prunable,
        "params_nonzero": n_nonzero,
        "dense": {f"test_{metric}": dense_test.get(metric, dense_test.get(f"test_{metric}"))},
        "pruned": {
            f"test_{metric}": final[f"test_{metric}"],
            f"test_{metric}_at_best_val": best_val[f"test_{metric}"],
            f"best_test_{metric}": better(h[f"test_{metric}"] for h in history),
            f"val_{metric}": final[f"val_{metric}"],
            "best_val_epoch": best_val["epoch"],
            **({f"test_{metric}_before_post": before_post[metric]} if before_post is not None else {}),
        },
        "epochs": {
            "n_pre": cfg.prune.n_pre,
            "n_iter": cfg.prune.n_iter,
            "n_prune": cfg.prune.n_prune,
            "n_post": cfg.prune.n_post,
            "total": cfg.total_epochs() if run.criterion.prunes else len(history),
        },
        "efficiency": efficiency(model, run.io),
        "timing": {k: round(v, 3) for k, v in run.timing.items()},
        "device": str(run.device),
        "world_size": run.plat.world_size,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "causalprune_version": __version__,
    }
    for key in ("total_s", "record_s", "solve_s"):
        summary["timing"].setdefault(key, 0.0)
    if run.data.task == "classification" and run.data.test[1].dim() == 2:  # a language model: per token (nats/char)
        summary["dense"]["test_loss"] = dense_test.get("loss", dense_test.get("test_loss"))
        summary["pruned"]["test_loss"] = final["test_loss"]
        if before_post is not None:
            summary["pruned"]["test_loss_before_post"] = before_post["loss"]
    summary.update(run.plan.run_facts(mask))
    if run.plan.slims:  # measured against the dense network of the same architecture
        dense = run.new_model()  # the same architecture, dense, for the measured comparison
        summary["efficiency"] = _versus_dense(efficiency(dense, run.io), summary["efficiency"])
        summary["efficiency"].update(measured_efficiency(dense, model, run.io))
    flat = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    final_stage_name = "post" if run.criterion.prunes else cfg.prune.method
    run.events.emit(SummaryEvent(stage=final_stage_name, level=None, step=run.step, summary=flat))  # then summary.json
    run.folder.save_result(model.state_dict(), mask, run.timing, summary)
    if not quiet:
        print(f"{cfg.prune.method} seed {cfg.seed}: sparsity {summary['sparsity_actual']:.4f}, "
              f"test {metric} {final[f'test_{metric}']:.4f} ({run.folder.path})")  # fmt: skip
    return summary


def _versus_dense(dense: dict[str, float], slim: dict[str, float]) -> dict[str, float]:
    """ShrinkBench's fields for a slimmed network, against the dense one: size and FLOPs before and after."""
    return {
        "size": dense["size"], "size_nz": slim["size"], "compression_ratio": dense["size"] / max(slim["size"], 1),
        "flops": dense["flops"], "flops_nz": slim["flops"],
        "theoretical_speedup": dense["flops"] / max(slim["flops"], 1e-30),
    }  # fmt: skip


@dataclass(frozen=True)
class DryRun:
    """A dry run's plan: its text (``str()`` gives it) and what keeps the run from starting, if anything."""

    text: str
    missing: str | None = None  # why the data cannot be loaded (what is missing, where it was looked for)

    def __str__(self) -> str:
        return self.text


def dry_run(cfg: Config) -> DryRun:
    """Resolve the config, build the model, check whether the data is present; train nothing.

    Returns the plan. A data set that cannot be loaded is reported in the plan and in
    `DryRun.missing` (the CLI then exits with status 2), not raised, so the rest of the
    plan is still shown.
    """
    cfg = resolve.check(cfg)
    criterion = criteria.get(cfg.prune.method)
    device = device_of(cfg)
    lines = [f"config {cfg.name} (seed {cfg.seed}), device {device}"]
    missing = None
    try:
        data = load_splits(cfg, download=False)
        sizes = "/".join(str(len(getattr(data, s)[1])) for s in ("train", "val", "probe", "test"))
        lines.append(f"data {cfg.data.name}: present (train/val/probe/test {sizes} samples)")
    except ValueError as e:
        missing = str(e)
        lines.append(f"data {cfg.data.name}: NOT PRESENT — {e}")
    shape, classes = shape_of(cfg.data.name, cfg.data.image_size)
    io = input_io(cfg.data.name, cfg.data.image_size, getattr(cfg.model, "block_size", None))
    shape = io.input_shape or shape
    model = build_model(cfg.model, shape, classes)
    if cfg.model.pretrained:
        lines.append(f"pretrained weights {cfg.model.pretrained}: {pretrained_status(cfg.model.pretrained)}")
    n_all = sum(p.numel() for p in model.parameters())
    n_prunable = sum(p.numel() for p in prunable_parameters(model).values())
    kind = "" if io.input_dtype in (None, torch.float32) else f" of {str(io.input_dtype).removeprefix('torch.')}"
    lines.append(f"model {cfg.model.name}: {n_all:,} parameters, {n_prunable:,} prunable, input {shape}{kind}")
    if not criterion.prunes:
        epochs = cfg.train.epochs if cfg.train.epochs is not None else cfg.total_epochs()
        lines.append(f"method {cfg.prune.method}: {epochs} epochs, no pruning")
    else:
        p = cfg.prune
        steps = Recording.from_config(cfg).record_steps
        spread = f", {steps} steps spread over each round" if steps else ""
        recorded = f" (recorded{spread})" if criterion.records else ""
        lines.append(f"method {p.method}: pre {p.n_pre} epochs; {p.n_iter} rounds × {p.n_prune} epochs{recorded}; "
                     f"post {p.n_post} epochs; total {cfg.total_epochs()}")  # fmt: skip
        lines.extend(build_plan(model, p, io).describe())
    t, post = cfg.train, cfg.train.for_stage("post")
    fast = [k for k in ("amp", "channels_last", "compile") if getattr(t, k)]
    fast += ["data on device"] if cfg.data.on_device else []
    lines.append(f"training: batch {t.batch_size}, {t.optimizer} lr {t.lr} ({t.lr_schedule}), weight decay "
                 f"{t.weight_decay}; post-training {post.optimizer} lr {post.lr}, weight decay {post.weight_decay}"
                 + (f"; {', '.join(fast)}" if fast else ""))  # fmt: skip
    return DryRun("\n".join(lines), missing)


__all__ = ["DryRun", "Run", "RunFolderError", "default_run_dir", "dry_run", "final_stage", "level_stage",
           "load_splits", "pre_stage", "run_experiment", "stage_seed"]  # fmt: skip
