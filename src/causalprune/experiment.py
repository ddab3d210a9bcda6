"""Algorithm 1 (SPEC §5) for every method, with resumable run folders.

    train N_pre epochs                                  → θ_pre (stage "pre")
    for round k = 1..N_iter:                            (stage "level_k")
        rewind to θ_pre, train N_prune epochs with the mask (recorded if the method needs it)
        score, raise sparsity to schedule[k]            → level_k/mask.pt, scores.pt
    rewind to θ_pre, train N_post epochs with the final mask → model.pt, summary.json

Every method (causal, its controls, magnitude, random) goes through this same driver with
the same schedule, epochs and selection code; ``dense`` trains the same total epochs
without pruning. Each stage is seeded from (seed, stage) and writes its outputs
atomically, so a stopped run continues from its last finished stage and produces exactly
the masks an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, criteria
from .config import Config, ConfigError, dump_config, load_config, non_default
from .criteria import ScoreInput
from .data import AUGMENTATIONS, Splits, load_pool, make_splits, materialize, shape_of
from .io import append_jsonl, save_json, save_text, save_torch
from .masks import Mask, prunable_parameters
from .metrics import efficiency
from .models import build_model, load_pretrained, pretrained_status
from .selection import schedule, select
from .train import Callback, StepFn, evaluate, fit, loss_function, make_optimizer, plain_step
from .trajectory import TrajectoryRecorder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RunFolderError(ValueError):
    """The output folder belongs to a different config (it is never overwritten)."""


def stage_seed(seed: int, stage: str) -> int:
    """Return a seed for one stage of a run: stable across processes and resumes."""
    return (seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(stage))) % (2**31 - 1)


def default_run_dir(cfg: Config, root: str | Path = "runs") -> Path:
    """Return runs/<config-name>-<short-hash>/seed_<n> for a config."""
    h = cfg.digest(keys=("name", "data", "model", "train", "prune", "causal"))
    return Path(root) / f"{cfg.name}-{h}" / f"seed_{cfg.seed}"


def device_of(cfg: Config) -> torch.device:
    """Resolve train.device (auto → cuda when available)."""
    if cfg.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available (use cpu or auto)")
    return torch.device(cfg.train.device)


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
    """Evaluates on validation and test after each epoch and appends to metrics.jsonl."""

    def __init__(self, run: Run, stage: str, model: nn.Module, evaluate_sets: bool = True) -> None:
        self.run, self.stage, self.model, self.evaluate_sets = run, stage, model, evaluate_sets

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.evaluate_sets:
            for split in ("val", "test"):
                for k, v in self.run.eval(self.model, split).items():
                    logs[f"{split}_{k}"] = v
        self.run.log({"event": "epoch", "stage": self.stage, **logs})


@dataclass
class Run:
    """One run folder and the state shared by its stages."""

    cfg: Config
    path: Path
    data: Splits
    device: torch.device
    pre_cache: Path | None = None
    timing: dict[str, float] = field(default_factory=dict)

    # --- files ------------------------------------------------------------------
    def log(self, event: dict[str, Any]) -> None:
        append_jsonl({"time": round(time.time(), 3), **event}, self.path / "metrics.jsonl")

    def eval(self, model: nn.Module, split: str) -> dict[str, float]:
        x, y = getattr(self.data, split)
        return evaluate(model, x, y, self.data.task, self.device)

    def add_time(self, key: str, seconds: float) -> None:
        self.timing[key] = self.timing.get(key, 0.0) + seconds

    @property
    def augment(self) -> Any:
        """The training-batch augmentation of the data set, or None."""
        return AUGMENTATIONS[self.data.augment] if self.data.augment else None

    # --- pieces -------------------------------------------------------------------
    def score_batches(self, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Return `prune.score_batches` shuffled training batches for data-driven criteria."""
        x, y = self.data.train
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        bs = self.cfg.train.batch_size
        return [(materialize(x[i]), y[i]) for i in perm.split(bs)[: self.cfg.prune.score_batches]]

    def new_model(self) -> nn.Module:
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

    def train_stage(self, model: nn.Module, stage: str, epochs: int, mask: Mask | None,
                    record: bool = False) -> TrajectoryRecorder | None:  # fmt: skip
        """Train `epochs` epochs with a fresh optimizer and LR schedule; optionally record."""
        cfg = self.cfg
        torch.manual_seed(stage_seed(cfg.seed, stage))
        dedicated = record and cfg.causal.recorder == "sgd"
        if dedicated:  # plain SGD, constant lr, no momentum or weight decay (the authors' recorder)
            opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=cfg.causal.record_lr)
        else:
            opt = make_optimizer(model.parameters(), cfg.train)
        handle = mask.attach(model, opt) if mask is not None else None
        recorder = None
        step = None
        if record:
            loss_fn = loss_function(self.data.task)
            px, py = self.data.probe
            momentum = (not dedicated) and cfg.train.optimizer == "sgd" and cfg.train.momentum > 0
            budget = cfg.causal.memory_budget_gb
            total = epochs * -(-len(self.data.train[1]) // cfg.train.batch_size)  # optimizer steps
            recorded = min(total, cfg.causal.record_steps or total)
            recorder = TrajectoryRecorder(
                model, loss_fn, opt, mask=mask, dtype=DTYPES[cfg.causal.dtype],
                delta_loss=cfg.causal.delta_loss,
                probe_data=(materialize(px).to(self.device), py.to(self.device)),
                momentum_features=cfg.causal.momentum_model and momentum,
                probe_seed=stage_seed(cfg.seed, "probe"),
                memory_budget=None if budget is None else int(budget * 2**30), capacity=max(recorded, 1),
                storage_device="cpu" if cfg.causal.storage == "cpu" else None,
            )  # fmt: skip
            step = _spread_recorded_steps(recorder.step, plain_step(model, opt, loss_fn), total, recorded)
        t0 = time.perf_counter()
        try:
            fit(
                model, opt, self.data.train, epochs=epochs, batch_size=cfg.train.batch_size,
                task=self.data.task, seed=stage_seed(cfg.seed, stage + "/batches"),
                lr_schedule="constant" if dedicated else cfg.train.lr_schedule, step=step, augment=self.augment,
                amp=cfg.train.amp, initial_lr=cfg.train.initial_lr,
                callbacks=[_Logger(self, stage, model, evaluate_sets=stage == "pre")], desc=stage,
            )  # fmt: skip
        finally:
            if handle is not None:
                handle.remove()
        self.add_time("record_s" if record else "pre_s" if stage == "pre" else "train_s", time.perf_counter() - t0)
        return recorder

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


def _rewind(model: nn.Module, theta_pre: dict[str, torch.Tensor], reset_bn: bool) -> None:
    """Load θ_pre; keep BatchNorm running statistics unless `reset_bn` (then reset them)."""
    state = model.state_dict()
    for k, v in theta_pre.items():
        if not reset_bn and ("running_" in k or "num_batches_tracked" in k):
            continue
        state[k] = v
    model.load_state_dict(state)
    if reset_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()


def _check_run_folder(path: Path, cfg: Config) -> None:
    """Refuse a folder whose config.yaml differs from `cfg`; write it if the folder is new."""
    existing = path / "config.yaml"
    if existing.exists():
        try:
            old = load_config(existing)
        except ConfigError as e:
            raise RunFolderError(f"{path} holds an unreadable config.yaml ({e}); choose another --out") from None
        if old.to_dict() != cfg.to_dict():
            a, b = old.to_dict(), cfg.to_dict()
            diff = sorted(_diff_keys(a, b))
            raise RunFolderError(
                f"{path} holds a run with a different config (differs in {', '.join(diff[:5])}); "
                "choose another --out or delete the folder"
            )
        return
    path.mkdir(parents=True, exist_ok=True)
    save_text(dump_config(cfg), existing)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix[:-1]]


def _pre_cache_dir(cfg: Config, root: Path) -> Path:
    """Folder of the θ_pre checkpoint shared by runs that agree on everything pre-training reads."""
    d, defaults = cfg.to_dict(), Config().to_dict()
    train = {k: v for k, v in d["train"].items() if not k.startswith("post_")}  # post-training only
    key = {"seed": d["seed"], "data": non_default(d["data"], defaults["data"]),
           "model": non_default(d["model"], defaults["model"]), "train": non_default(train, defaults["train"]),
           "n_pre": d["prune"]["n_pre"], "probe_size": d["causal"]["probe_size"]}  # fmt: skip
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return root / f"pre-{h}"


def run_experiment(cfg: Config, out: str | Path | None = None, pre_cache: str | Path | None = None,
                   quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    """Run (or continue) one experiment in its run folder; return its summary."""
    t_start = time.perf_counter()
    criterion = criteria.get(cfg.prune.method)
    if criterion is not None and criterion.records and cfg.prune.n_prune < 1:
        raise ConfigError(f"prune.n_prune must be >= 1 for {cfg.prune.method}, which records the round's training")
    path = Path(out) if out is not None else default_run_dir(cfg)
    summary_path = path / "summary.json"
    if summary_path.exists():
        _check_run_folder(path, cfg)
        return json.loads(summary_path.read_text())
    # Everything that can fail on bad input is checked before the run folder is written.
    device = device_of(cfg)
    data = load_splits(cfg, device)
    run = Run(cfg, path, data, device, Path(pre_cache) if pre_cache else None)
    model = run.new_model()
    _check_run_folder(path, cfg)
    if not (path / "env.json").exists():
        save_json(environment(device), path / "env.json")
    timing_path = path / "timing.json"
    if timing_path.exists():
        run.timing = json.loads(timing_path.read_text())

    if criterion is None:  # dense baseline: the same total epochs, no pruning
        epochs = cfg.train.epochs if cfg.train.epochs is not None else cfg.total_epochs()
        history = _final_stage(run, model, None, epochs, "dense")
        mask = Mask.ones(model)
        dense_metrics = history[-1] if history else run.eval(model, "test")
        return _finish(run, model, mask, history, dense_metrics, t_start, quiet)

    # --- stage pre: θ_pre -------------------------------------------------------------
    theta_pre = _pre_stage(run, model)
    model.load_state_dict(theta_pre)
    dense_test = run.eval(model, "test")

    # --- stages level_1..level_N ---------------------------------------------------------
    mask = Mask.ones(model)
    targets = schedule(cfg.prune.schedule, cfg.prune.sparsity, cfg.prune.n_iter)
    for k, target in enumerate(targets, start=1):
        level = path / f"level_{k}"
        if (level / "mask.pt").exists() and (level / "checkpoint.pt").exists():
            mask = Mask.load(level / "mask.pt")
            model.load_state_dict(torch.load(level / "checkpoint.pt", map_location=device, weights_only=True))
            continue
        if cfg.prune.rewind or k == 1:
            _rewind(model, theta_pre, cfg.prune.reset_bn)
        mask.apply_(model)
        stage = f"level_{k}"
        recorder = run.train_stage(model, stage, cfg.prune.n_prune, mask, record=criterion.records)
        t0 = time.perf_counter()
        traj = recorder.trajectory() if recorder is not None else None
        seed = stage_seed(cfg.seed, stage + "/score")
        batches = run.score_batches(seed) if criterion.needs_data or criterion.name == "synflow" else []
        scored = criterion.fn(ScoreInput(model, mask, cfg, seed, traj, batches, loss_function(data.task), target))
        scores, tie = scored.scores, scored.tie_break
        if not criterion.higher_is_important:  # e.g. GraSP prunes its largest scores
            scores = {n: -v for n, v in scores.items()}
            tie = {n: -v for n, v in tie.items()} if tie is not None else None
        new_mask = select(scores, target, scope=cfg.prune.scope, mask=mask, tie_break=tie)
        run.add_time("solve_s", time.perf_counter() - t0)
        if recorder is not None:
            recorder.close()
        new_mask.apply_(model)
        save_torch({"scores": scored.scores, "tie_break": scored.tie_break}, level / "scores.pt")
        save_torch(model.state_dict(), level / "checkpoint.pt")
        new_mask.save(level / "mask.pt")  # written last: its presence marks the stage done
        info = {k2: v for k2, v in scored.info.items() if isinstance(v, int | float | str | bool)}
        run.log({"event": "level", "level": k, "sparsity_target": target, "sparsity": new_mask.sparsity(), **info})
        save_json(run.timing, timing_path)
        mask = new_mask

    # --- stage post: rewind, train with the final mask ------------------------------------
    if cfg.prune.rewind:
        _rewind(model, theta_pre, cfg.prune.reset_bn)
    mask.apply_(model)
    history = _final_stage(run, model, mask, cfg.prune.n_post, "post")
    return _finish(run, model, mask, history, dense_test, t_start, quiet)


def load_splits(cfg: Config, device: torch.device | None = None, download: bool | None = None) -> Splits:
    """Load the config's data set and split it for its seed (on `device` if ``data.on_device``)."""
    options = cfg.data.pool_options()
    if download is not None:
        options["download"] = download
    pool = load_pool(cfg.data.name, **options)
    if cfg.data.max_samples is not None:
        pool = pool.limit(cfg.data.max_samples)
    data = make_splits(pool, cfg.seed, cfg.data.val_fraction, cfg.causal.probe_size)
    return data.to(device) if cfg.data.on_device and device is not None else data


def _pre_stage(run: Run, model: nn.Module) -> dict[str, torch.Tensor]:
    ckpt = run.path / "pre" / "checkpoint.pt"
    cached = _pre_cache_dir(run.cfg, run.pre_cache) / "checkpoint.pt" if run.pre_cache else None
    for source in (ckpt, cached):
        if source is not None and source.exists():
            theta = torch.load(source, map_location=run.device, weights_only=True)
            if source != ckpt:  # a shared θ_pre: charge its training time to this run too
                save_torch(theta, ckpt)
                pre_s = json.loads((source.parent / "timing.json").read_text())["pre_s"]
                run.add_time("pre_s", pre_s)
                run.add_time("total_s", pre_s)
            return theta
    run.train_stage(model, "pre", run.cfg.prune.n_pre, None)
    theta = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cached is not None:
        save_json({"pre_s": run.timing["pre_s"]}, cached.parent / "timing.json")
        save_torch(theta, cached)
    save_torch(theta, ckpt)
    save_json(run.timing, run.path / "timing.json")
    return theta


def _final_stage(run: Run, model: nn.Module, mask: Mask | None, epochs: int, stage: str) -> list[dict[str, float]]:
    history: list[dict[str, float]] = []

    class _Keep(Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            history.append(dict(logs))

    cfg = run.cfg
    torch.manual_seed(stage_seed(cfg.seed, stage))
    train = cfg.train.for_stage(stage)  # post-training may have its own optimizer and lr
    opt = make_optimizer(model.parameters(), train)
    handle = mask.attach(model, opt) if mask is not None else None
    t0 = time.perf_counter()
    fit(model, opt, run.data.train, epochs=epochs, batch_size=cfg.train.batch_size, task=run.data.task,
        seed=stage_seed(cfg.seed, stage + "/batches"), lr_schedule=cfg.train.lr_schedule,
        callbacks=[_Logger(run, stage, model), _Keep()], desc=stage, augment=run.augment,
        amp=cfg.train.amp, initial_lr=train.initial_lr)  # fmt: skip
    if handle is not None:
        handle.remove()
    run.add_time("train_s", time.perf_counter() - t0)
    if not history:  # no epochs: evaluate the model as it stands
        logs: dict[str, float] = {"epoch": 0}
        for split in ("val", "test"):
            logs.update({f"{split}_{k}": v for k, v in run.eval(model, split).items()})
        history.append(logs)
    return history


def _finish(run: Run, model: nn.Module, mask: Mask, history: list[dict[str, float]],
            dense_test: dict[str, float], t_start: float, quiet: bool) -> dict[str, Any]:  # fmt: skip
    cfg = run.cfg
    metric = "accuracy" if run.data.task == "classification" else "mse"
    better = max if metric == "accuracy" else min
    final = history[-1]
    best_val = better(history, key=lambda h: h[f"val_{metric}"])
    params = prunable_parameters(model)
    n_prunable = sum(p.numel() for p in params.values())
    n_nonzero = sum(int((p != 0).sum()) for p in params.values())
    run.add_time("total_s", time.perf_counter() - t_start)
    summary = {
        "method": cfg.prune.method,
        "seed": cfg.seed,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "task": run.data.task,
        "sparsity_target": cfg.prune.sparsity if cfg.prune.method != "dense" else 0.0,
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
        },
        "epochs": {
            "n_pre": cfg.prune.n_pre,
            "n_iter": cfg.prune.n_iter,
            "n_prune": cfg.prune.n_prune,
            "n_post": cfg.prune.n_post,
            "total": len(history) if cfg.prune.method == "dense" else cfg.total_epochs(),
        },
        "efficiency": efficiency(model, run.data.input_shape),
        "timing": {k: round(v, 3) for k, v in run.timing.items()},
        "device": str(run.device),
        "torch_version": torch.__version__,
        "causalprune_version": __version__,
    }
    for key in ("total_s", "record_s", "solve_s"):
        summary["timing"].setdefault(key, 0.0)
    save_torch(model.state_dict(), run.path / "model.pt")
    mask.save(run.path / "mask.pt")
    save_json(run.timing, run.path / "timing.json")
    save_json(summary, run.path / "summary.json")
    run.log({"event": "summary", **{k: v for k, v in summary.items() if not isinstance(v, dict)}})
    if not quiet:
        print(f"{cfg.prune.method} seed {cfg.seed}: sparsity {summary['sparsity_actual']:.4f}, "
              f"test {metric} {final[f'test_{metric}']:.4f} ({run.path})")  # fmt: skip
    return summary


def dry_run(cfg: Config) -> str:
    """Resolve the config, build the model, check whether the data is present; train nothing.

    Returns the plan as text. A missing data set is reported, not raised.
    """
    criterion = criteria.get(cfg.prune.method)
    device = device_of(cfg)
    lines = [f"config {cfg.name} (seed {cfg.seed}), device {device}"]
    try:
        data = load_splits(cfg, download=False)
        sizes = "/".join(str(len(getattr(data, s)[1])) for s in ("train", "val", "probe", "test"))
        lines.append(f"data {cfg.data.name}: present (train/val/probe/test {sizes} samples)")
    except ValueError as e:
        lines.append(f"data {cfg.data.name}: NOT PRESENT — {e}")
    shape, classes = shape_of(cfg.data.name, cfg.data.image_size)
    model = build_model(cfg.model, shape, classes)
    if cfg.model.pretrained:
        lines.append(f"pretrained weights {cfg.model.pretrained}: {pretrained_status(cfg.model.pretrained)}")
    n_all = sum(p.numel() for p in model.parameters())
    n_prunable = sum(p.numel() for p in prunable_parameters(model).values())
    lines.append(f"model {cfg.model.name}: {n_all:,} parameters, {n_prunable:,} prunable, input {shape}")
    if criterion is None:
        epochs = cfg.train.epochs if cfg.train.epochs is not None else cfg.total_epochs()
        lines.append(f"method dense: {epochs} epochs, no pruning")
    else:
        targets = schedule(cfg.prune.schedule, cfg.prune.sparsity, cfg.prune.n_iter)
        p = cfg.prune
        spread = f", {cfg.causal.record_steps} steps spread over each round" if cfg.causal.record_steps else ""
        recorded = f" (recorded{spread})" if criterion.records else ""
        lines.append(f"method {p.method}: pre {p.n_pre} epochs; {p.n_iter} rounds × {p.n_prune} epochs{recorded}; "
                     f"post {p.n_post} epochs; total {cfg.total_epochs()}")  # fmt: skip
        lines.append("sparsity after each round: " + ", ".join(f"{t:.4f}" for t in targets))
    t, post = cfg.train, cfg.train.for_stage("post")
    fast = [k for k in ("amp", "channels_last", "compile") if getattr(t, k)]
    fast += ["data on device"] if cfg.data.on_device else []
    lines.append(f"training: batch {t.batch_size}, {t.optimizer} lr {t.lr} ({t.lr_schedule}), weight decay "
                 f"{t.weight_decay}; post-training {post.optimizer} lr {post.lr}, weight decay {post.weight_decay}"
                 + (f"; {', '.join(fast)}" if fast else ""))  # fmt: skip
    return "\n".join(lines)
