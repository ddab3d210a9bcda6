"""Typed, frozen experiment configs; YAML in and out; ``--set a.b=value`` overrides.

A config is a tree of frozen dataclasses. `load_config` reads YAML, applies overrides,
and checks every key, type and range: an unknown key or a wrong type raises `ConfigError`
naming the key and listing what is valid. `dump_config` writes the resolved config back
to YAML.

This module is a leaf: it imports nothing of the package. Names that live in registries
(data set, model, method, solver, schedule, scope) are checked where a run is resolved
(`causalprune.resolve`). A pruning method owns its settings: it registers a settings
dataclass as a top-level section with `register_section` (``causal`` is the causal
criteria's), and the section's keys are loaded and checked by that dataclass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


def check_choice(value: str, valid: tuple[str, ...] | list[str], key: str) -> None:
    """Raise `ConfigError` naming `key` unless `value` is one of `valid`."""
    if value not in valid:
        raise ConfigError(f"{key} must be one of {', '.join(valid)}; got {value!r}")


def check_positive(value: float, key: str, allow_zero: bool = False) -> None:
    """Raise `ConfigError` naming `key` unless `value` > 0 (or >= 0 with `allow_zero`)."""
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass(frozen=True)
class DataConfig:
    """Which data set, and how it is split."""

    name: str = "mnist1d"  # digits | mnist1d | friedman | cifar10 | mnist | fashionmnist | tinyimagenet | imagenet
    n_samples: int = 5000  # samples generated (mnist1d, friedman); digits has 1797
    noise: float = 1.0  # friedman: standard deviation of the Gaussian noise on y
    val_fraction: float = 0.1  # of the training pool, for model selection
    test_fraction: float = 0.2  # of all samples, when the data set has no standard test split
    root: str = "data"  # folder holding the data set's own top folder (torchvision-style)
    download: bool = False  # let torchvision download cifar10 / mnist / fashionmnist into root
    workers: int = 4  # DataLoader worker processes of the image-folder data sets (tinyimagenet, imagenet)
    image_size: int | None = None  # tinyimagenet / imagenet side length; None: 64 / 224
    on_device: bool = False  # hold in-memory splits on the training device (e.g. CIFAR-10 on a GPU)
    max_samples: int | None = None  # keep a fixed random subset of this many training / test samples (smoke runs)
    max_chars: int = 1_000_000  # pysrc: characters read from the standard library's sources, all splits together

    def __post_init__(self) -> None:
        check_positive(self.n_samples, "data.n_samples")
        check_positive(self.workers, "data.workers", allow_zero=True)
        if self.max_samples is not None:
            check_positive(self.max_samples, "data.max_samples")
        check_positive(self.max_chars, "data.max_chars")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"data.image_size must be >= 16, got {self.image_size}")
        for key in ("val_fraction", "test_fraction"):
            v = getattr(self, key)
            if not 0 <= v < 0.9:
                raise ConfigError(f"data.{key} must be in [0, 0.9), got {v}")

    def pool_options(self) -> dict[str, Any]:
        """Keyword arguments of `causalprune.data.load_pool` for this data set."""
        opts: dict[str, Any] = {"n_samples": self.n_samples, "noise": self.noise, "test_fraction": self.test_fraction,
                                "root": self.root, "download": self.download, "workers": self.workers}  # fmt: skip
        if self.image_size is not None:
            opts["image_size"] = self.image_size
        if self.name == "pysrc":
            opts["max_chars"] = self.max_chars
        return opts


@dataclass(frozen=True)
class ModelConfig:
    """Which network."""

    name: str = "mlp"  # mlp | cnn1d | lenet5 | resnet20 | ...
    widths: tuple[int, ...] = (256, 256)  # mlp hidden widths; cnn1d / cnn2d channels per conv layer
    dropout: float = 0.0  # mlp: dropout after each hidden layer
    batchnorm: bool = False  # mlp, cnn1d, cnn2d: BatchNorm after each hidden linear / conv layer
    shortcut: str = "A"  # resnet20/32/56: "A" zero-padding shortcuts (the paper's) | "B" 1×1 conv + BN projections
    pretrained: str | None = None  # a state-dict file, or "torchvision" (resnet50's ImageNet weights)
    n_layer: int = 2  # gpt: transformer blocks
    n_head: int = 4  # gpt: attention heads per block (d_model a multiple of it)
    d_model: int = 128  # gpt: embedding / residual width
    d_mlp: int | None = None  # gpt: MLP hidden width; None: 4 × d_model
    block_size: int = 64  # gpt: context length (pysrc: the window length)
    tie_weights: bool = False  # gpt: the output head shares the token embedding's tensor

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if any(w < 1 for w in self.widths):
            raise ConfigError(f"model.widths must be positive integers, got {list(self.widths)}")
        if self.shortcut not in ("A", "B"):
            raise ConfigError(f"model.shortcut must be 'A' or 'B', got {self.shortcut!r}")
        for key in ("n_layer", "n_head", "d_model", "block_size"):
            check_positive(getattr(self, key), f"model.{key}")
        if self.d_mlp is not None:
            check_positive(self.d_mlp, "model.d_mlp")
        if self.d_model % self.n_head:
            raise ConfigError(f"model.d_model ({self.d_model}) must be a multiple of model.n_head ({self.n_head})")


@dataclass(frozen=True)
class TrainConfig:
    """How every training stage trains (each stage restarts optimizer and LR schedule)."""

    epochs: int | None = None  # dense baseline's epochs; None = n_pre + n_iter·n_prune + n_post
    batch_size: int = 128
    lr: float = 0.1  # base (peak for one-cycle) learning rate
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9  # sgd
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"  # constant | cosine | onecycle (per stage)
    initial_lr: float | None = None  # one-cycle's starting rate (it peaks at lr); None: lr / 25
    device: str = "cpu"  # cpu | cuda | auto
    amp: bool = False  # bfloat16 autocast for training forwards (recorded steps included)
    channels_last: bool = False  # NHWC memory format for conv nets on GPUs
    compile: bool = False  # torch.compile the model's forward (Module.compile: parameter names unchanged)
    threads: int | None = None  # CPU threads of torch's intra-op pool; None: cores available / parallel jobs
    # Post-training (the final stage) may use its own optimizer, as the paper's ImageNet rows do
    # (AdamW, lr 0.01, weight decay 0.01); None: the same as the other stages.
    post_optimizer: str | None = None  # sgd | adamw
    post_lr: float | None = None
    post_weight_decay: float | None = None

    def __post_init__(self) -> None:
        if self.epochs is not None:
            check_positive(self.epochs, "train.epochs")
        check_positive(self.batch_size, "train.batch_size")
        check_positive(self.lr, "train.lr")
        if self.threads is not None:
            check_positive(self.threads, "train.threads")
        check_choice(self.optimizer, ("sgd", "adamw"), "train.optimizer")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"train.momentum must be in [0, 1), got {self.momentum}")
        check_positive(self.weight_decay, "train.weight_decay", allow_zero=True)
        check_choice(self.lr_schedule, ("constant", "cosine", "onecycle"), "train.lr_schedule")
        if self.initial_lr is not None and self.lr_schedule != "onecycle":
            raise ConfigError(f"train.initial_lr applies to the onecycle schedule only, not {self.lr_schedule}; "
                              "leave it null")  # fmt: skip
        if self.initial_lr is not None and not 0 < self.initial_lr <= self.lr:
            raise ConfigError(f"train.initial_lr must be in (0, train.lr = {self.lr}], got {self.initial_lr}")
        check_choice(self.device, ("cpu", "cuda", "auto"), "train.device")
        if self.post_optimizer is not None:
            check_choice(self.post_optimizer, ("sgd", "adamw"), "train.post_optimizer")
        if self.post_lr is not None:
            check_positive(self.post_lr, "train.post_lr")
        if self.post_weight_decay is not None:
            check_positive(self.post_weight_decay, "train.post_weight_decay", allow_zero=True)

    def for_stage(self, stage: str) -> TrainConfig:
        """The settings stage `stage` trains with (``post`` applies the post_* overrides)."""
        if stage != "post":
            return self
        return dataclasses.replace(
            self,
            optimizer=self.post_optimizer or self.optimizer,
            lr=self.post_lr if self.post_lr is not None else self.lr,
            weight_decay=self.post_weight_decay if self.post_weight_decay is not None else self.weight_decay,
            initial_lr=self.initial_lr if self.post_lr is None else None,  # with post_lr: post_lr / 25
        )


@dataclass(frozen=True)
class PruneConfig:
    """Algorithm 1's schedule (docs/method.md, "Algorithm 1")."""

    method: str = "causal"  # see `causalprune list`
    # final fraction of prunable weights (granularity weight) or channel groups (channel) that are
    # pruned; null when prune.speedup sets the budget instead
    sparsity: float | None = 0.9
    schedule: str = "cubic"  # cubic | geometric | linear (cumulative sparsity per round)
    scope: str = "global"  # global | layerwise
    n_pre: int = 5  # epochs before pruning; θ_pre is the rewind point
    n_iter: int = 5  # pruning rounds
    n_prune: int = 2  # epochs per round (recorded for causal methods)
    n_post: int = 20  # epochs of training with the final mask
    score_batches: int = 10  # training batches that data-driven criteria (snip, grasp, ...) score on
    # training batches the calibrating criteria (wanda, sparsegpt) read; null: prune.score_batches
    calibration_batches: int | None = None
    rewind: bool = True  # reset alive weights to θ_pre after each round and before post-training
    reset_bn: bool = False  # also reset BatchNorm running statistics when rewinding
    # Structured pruning (docs/structured.md): what one pruned unit is, and the channel budget.
    granularity: str = "weight"  # weight: single weights (masks) | channel: channel groups, physically removed
    speedup: float | None = None  # channel: target MACs reduction dense / pruned (> 1) instead of prune.sparsity
    max_layer_ratio: float = 1.0  # channel: at most this fraction of one layer's channels is pruned (one stays)
    round_to: int = 1  # channel: every layer keeps a multiple of this many channels (or all of them)
    # weight: "N:M" (e.g. "2:4"): every block of M consecutive inputs of a weight row keeps N (docs/method.md,
    # "N:M sparsity"); sets prune.sparsity to (M - N) / M; null: no pattern
    pattern: str | None = None

    GRANULARITIES = ("weight", "channel")
    DEFAULT_SPARSITY = 0.9
    CLEAR_ONE = "clear one: --set prune.sparsity=null or --set prune.speedup=null"

    @staticmethod
    def check_given(given: dict[str, Any], where: str = "", hint: str = CLEAR_ONE) -> None:
        """Refuse `prune.sparsity` and `prune.speedup` both given (the keys of one prune section; `where`: whose)."""
        if given.get("speedup") is not None and given.get("sparsity") is not None:
            raise ConfigError(f"prune.sparsity ({given['sparsity']}) and prune.speedup ({given['speedup']}) are both "
                              f"set{where}; give one budget: prune.speedup (a MACs reduction) or prune.sparsity "
                              f"({hint})")  # fmt: skip
        if isinstance(given.get("pattern"), int) and not isinstance(given["pattern"], bool):
            raise ConfigError(f"prune.pattern must be a quoted string \"N:M\" such as \"2:4\", got {given['pattern']} "
                              "(YAML reads an unquoted 2:4 as the base-60 number 124)")  # fmt: skip

    def __post_init__(self) -> None:
        check_choice(self.granularity, self.GRANULARITIES, "prune.granularity")
        if self.pattern is not None:
            n, m = parse_pattern(self.pattern)
            if self.granularity != "weight":
                raise ConfigError(f"prune.pattern {self.pattern!r} needs prune.granularity: weight, got "
                                  f"{self.granularity} (N:M keeps single weights)")  # fmt: skip
            nm = (m - n) / m
            if self.sparsity not in (None, self.DEFAULT_SPARSITY, nm):
                raise ConfigError(f"prune.sparsity {self.sparsity} conflicts with prune.pattern {self.pattern!r}, "
                                  f"which prunes (M - N) / M = {nm:g}; leave prune.sparsity null or give {nm:g}")
            object.__setattr__(self, "sparsity", nm)  # the pattern is the budget
        if self.speedup is not None:
            if not self.speedup > 1:
                raise ConfigError(f"prune.speedup must be > 1 (dense MACs / pruned MACs), got {self.speedup}")
            if self.granularity != "channel":
                raise ConfigError("prune.speedup needs prune.granularity: channel (only removed channels make a "
                                  "network faster)")  # fmt: skip
            if self.sparsity not in (None, self.DEFAULT_SPARSITY):
                self.check_given({"sparsity": self.sparsity, "speedup": self.speedup})
            object.__setattr__(self, "sparsity", None)  # the speed-up is the budget
        elif self.sparsity is None:
            raise ConfigError("prune.sparsity is null: give prune.sparsity in [0, 1) or prune.speedup")
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            raise ConfigError(f"prune.sparsity must be in [0, 1), got {self.sparsity}")
        if not 0 < self.max_layer_ratio <= 1:
            raise ConfigError(f"prune.max_layer_ratio must be in (0, 1], got {self.max_layer_ratio}")
        check_positive(self.round_to, "prune.round_to")
        if self.n_iter < 1:
            raise ConfigError(f"prune.n_iter must be >= 1, got {self.n_iter}")
        check_positive(self.n_pre, "prune.n_pre", allow_zero=True)
        check_positive(self.n_prune, "prune.n_prune", allow_zero=True)  # 0: score at θ_pre (SNIP-style)
        check_positive(self.score_batches, "prune.score_batches")
        if self.calibration_batches is not None and (isinstance(self.calibration_batches, bool)
                                                     or self.calibration_batches < 1):  # fmt: skip
            raise ConfigError(f"prune.calibration_batches must be an integer >= 1 or null (prune.score_batches), "
                              f"got {self.calibration_batches}")  # fmt: skip
        check_positive(self.n_post, "prune.n_post", allow_zero=True)


def parse_pattern(text: str) -> tuple[int, int]:
    """Return (N, M) of an N:M pattern such as ``"2:4"``; raise `ConfigError` unless integers 0 < N < M."""
    parts = text.split(":") if isinstance(text, str) else []
    if len(parts) == 2 and all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 0 < n < m:
            return n, m
    raise ConfigError(f"prune.pattern must be \"N:M\" with integers 0 < N < M (e.g. \"2:4\"), got {text!r}")


#: Method settings sections: name → settings dataclass, registered by the criteria that own them.
SECTIONS: dict[str, type] = {}


def register_section(cls: type) -> type:
    """Class decorator: make the frozen dataclass `cls` the top-level config section ``cls.SECTION``.

    Its fields become the section's keys (loaded and type-checked like every section; its
    ``__post_init__`` checks values). A class attribute ``SHARED`` may list fields that every
    run reads, whatever its method (grids vary every method along them).
    """
    name = getattr(cls, "SECTION", None)
    if not dataclasses.is_dataclass(cls) or not isinstance(name, str):
        raise TypeError("a config section must be a dataclass with a SECTION name")
    if name in {f.name for f in dataclasses.fields(Config)} or SECTIONS.get(name, cls) is not cls:
        raise ValueError(f"config section {name!r} is already taken")
    SECTIONS[name] = cls
    return cls


def _default_sections() -> tuple[tuple[str, Any], ...]:
    return tuple((name, cls()) for name, cls in SECTIONS.items())


@dataclass(frozen=True)
class Config:
    """One experiment: a seed, data, model, training and pruning settings, and the methods' sections.

    A method section is read as an attribute (``cfg.causal``) and written as a top-level
    YAML key, like the built-in sections.
    """

    name: str = "demo"  # used in run folder names
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    track: tuple[str, ...] = ()  # experiment trackers the run's events also go to: tensorboard, mlflow (tracking.py)
    sections: tuple[tuple[str, Any], ...] = field(default_factory=_default_sections)  # (name, settings) pairs

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: the registered method sections.
        if name != "sections":
            for key, value in self.sections:
                if key == name:
                    return value
        raise AttributeError(f"config has no section {name!r}")

    def section(self, name: str) -> Any:
        """Return the settings of method section `name`."""
        return getattr(self, name)

    def total_epochs(self) -> int:
        """Return the epochs a pruning run trains in all: n_pre + n_iter·n_prune + n_post."""
        p = self.prune
        return p.n_pre + p.n_iter * p.n_prune + p.n_post

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain nested dicts/lists (YAML- and JSON-ready); sections at top level."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sections"}
        out = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in d.items()}
        out.update({k: dataclasses.asdict(v) for k, v in self.sections})
        return _plain(out)

    def identity(self) -> dict[str, Any]:
        """Return `to_dict` without the execution-only keys (`EXECUTION_KEYS`): what defines the experiment."""
        return without_execution_keys(self.to_dict())

    def digest(self, keys: tuple[str, ...] | None = None) -> str:
        """Return a short hash of the config (or of the given top-level sections).

        Keys at their default value are left out, so a key added (with its default) by a
        later version leaves the hashes — and the default run folders — of older configs as
        they were; so are execution-only keys (`EXECUTION_KEYS`).
        """
        d = non_default(self.identity(), Config().identity())
        if keys is not None:
            d = {k: d[k] for k in keys if k in d}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


#: Keys that say how a run executes, not what it computes: they may change between a run's
#: start and its resume, and are left out of digests, run-folder checks and experiment ids.
EXECUTION_KEYS = ("train.threads", "track")


def without_execution_keys(d: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the nested config dict `d` without `EXECUTION_KEYS`."""
    out = json.loads(json.dumps(d))
    for key in EXECUTION_KEYS:
        section, _, name = key.partition(".")
        if not name:  # a top-level key
            out.pop(section, None)
        elif isinstance(out.get(section), dict):
            out[section].pop(name, None)
    return out


def check_key(key: str) -> None:
    """Raise `ConfigError` unless ``section.field`` (or a top-level key) names a config key."""
    d = Config().to_dict()
    node: Any = d
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:i])
            valid = ", ".join(node) if isinstance(node, dict) else "none"
            raise ConfigError(f"unknown config key {key!r}; valid keys{' under ' + where if where else ''}: {valid}")
        node = node[part]


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def non_default(d: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The entries of the nested dict `d` whose values differ from `defaults` (same nesting)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        ref = defaults.get(k)
        if isinstance(v, dict) and isinstance(ref, dict):
            sub = non_default(v, ref)
            if sub:
                out[k] = sub
        elif k not in defaults or v != ref:
            out[k] = v
    return out


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (lists → tuples, int → float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is tuple:
        (inner, _) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        where = prefix or "the config"
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    sections = SECTIONS if cls is Config else {}
    valid = [f for f in fields if not (cls is Config and f == "sections")] + list(sections)
    unknown = [k for k in data if k not in valid]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"unknown config key {key!r}; valid keys{' under ' + prefix[:-1] if prefix else ''}: "
                          f"{', '.join(valid)}")  # fmt: skip
    if hasattr(cls, "check_given"):
        cls.check_given(data)
    kwargs: dict[str, Any] = {}
    if sections:
        kwargs["sections"] = tuple((k, _build(c, data.get(k) or {}, f"{k}.")) for k, c in sections.items())
    for name, value in data.items():
        if name in sections:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix[:-1] or 'config'}: {e}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value`` (value read as YAML: 0.9 → float, true → bool, [1, 2] → list).

    One exception to YAML: an unquoted ``N:M`` (digits) stays the text "N:M" — on the command
    line ``--set prune.pattern=2:4`` means the pattern, not YAML 1.1's base-60 number 124.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    if re.fullmatch(r"\s*\d+:\d+\s*", raw):
        return key.split("."), raw.strip()
    try:
        value = yaml.load(raw, Loader=StrictLoader) if raw.strip() else ""  # a safe loader
    except DuplicateKeyError as e:
        raise ConfigError(f"override {text!r}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({yaml_problem(e)})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the nested dict `data` with ``key.sub=value`` overrides applied."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


#: The two budgets of `PruneConfig` (one of them is given): (section, key) pairs.
BUDGETS = (("prune", "sparsity"), ("prune", "speedup"))


def settle_budgets(data: dict[str, Any], overrides: list[str], source: str = "the config",
                   given_by: str = "--set") -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """Return `data` without the budget an override replaces, and a note per replaced budget.

    A budget given by an override (``prune.speedup=2``) replaces the other budget when that
    one comes from `data` (read from `source`), so a command line can switch a file's
    ``prune.sparsity`` to a ``prune.speedup``. Two budgets given at the same level — both in
    `data`, or both by overrides — are a conflict, refused naming where they were given.
    """
    given: dict[str, Any] = {}
    for text in overrides:
        path, value = parse_override(text)
        if tuple(path) in BUDGETS:
            given[path[1]] = value
    section = data.get("prune") if isinstance(data, dict) else None
    section = section if isinstance(section, dict) else {}
    PruneConfig.check_given(given, f" by {given_by}", f"give one of them by {given_by}")
    if not given:
        PruneConfig.check_given(section, f" in {source}")
        return data, []
    notes = []
    out = json.loads(json.dumps(data))
    for key, value in given.items():
        (other,) = [k for _, k in BUDGETS if k != key]
        if value is not None and other not in given and section.get(other) is not None:
            notes.append(f"prune.{key}={value} from {given_by} replaces prune.{other}={section[other]} from {source}")
            del out["prune"][other]
    return out, notes


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None, *, source: str = "the config",
                     given_by: str = "--set", notes: list[str] | None = None) -> Config:  # fmt: skip
    """Build a checked `Config` from nested dicts plus overrides.

    A budget an override gives replaces the other budget given in `data` (`settle_budgets`);
    the line saying so is appended to `notes` when given.
    """
    data, said = settle_budgets(data or {}, list(overrides or []), source, given_by)
    if notes is not None:
        notes.extend(said)
    return _build(Config, apply_overrides(data, list(overrides or [])), "")


#: the configs shipped inside the package (the repository's configs/ links here)
SHIPPED_CONFIGS = Path(__file__).parent / "configs"


def shipped_configs() -> list[str]:
    """Return the names of the shipped configs and sweep files (``mlp-digits``, ``paper/resnet20-cifar10-oneshot``)."""
    return sorted(p.relative_to(SHIPPED_CONFIGS).with_suffix("").as_posix() for p in SHIPPED_CONFIGS.rglob("*.yaml"))


def find_config(name: str | Path, what: str = "config file", relative_to: str | Path | None = None) -> Path:
    """Return the file a config (or sweep file) name means; raise `ConfigError` naming what was tried.

    A real file wins: `name` relative to `relative_to` (default: the working directory), then
    the same with ``.yaml`` added. Otherwise a relative name is looked up among the configs
    shipped inside the package, so ``mlp-digits``, ``mlp-digits.yaml``, ``configs/mlp-digits.yaml``
    and ``paper/resnet20-cifar10-oneshot`` work wherever the package is installed.
    """
    def spellings(folder: Path, p: Path) -> list[Path]:
        return [folder / p] + ([folder / f"{p}.yaml"] if p.suffix != ".yaml" else [])

    path = Path(name)
    local = spellings(Path(relative_to) if relative_to is not None else Path(), path)
    for candidate in local:
        if candidate.is_file():
            return candidate
    tried = " and ".join(str(c) for c in local)
    if not path.is_absolute():
        parts = path.parts
        if "configs" in parts:  # configs/paper/x.yaml → paper/x.yaml
            parts = parts[len(parts) - parts[::-1].index("configs"):]
        inner = Path(*parts) if parts else None
        if inner is not None and ".." not in inner.parts:
            shipped = spellings(SHIPPED_CONFIGS, inner)
            for candidate in shipped:
                if candidate.is_file():
                    return candidate
            names = " and ".join(c.relative_to(SHIPPED_CONFIGS).as_posix() for c in shipped)
            tried += f", then {names} among the shipped configs"
    raise ConfigError(f"{what} not found: {name} (tried {tried}; `causalprune list` names the shipped configs)")


def yaml_problem(e: yaml.YAMLError) -> str:
    """Return a PyYAML error as one line: ``line L, column C: problem (context from line L', column C')``."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(e).split())
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, where = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context:
        text += f" ({context}" + (f" from line {where.line + 1}, column {where.column + 1})" if where else ")")
    return text


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping gives one key twice (PyYAML would keep the last silently)."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key {key!r} is given twice in one mapping (lines {first} and {second}); keep one")
        self.key, self.first, self.second = key, first, second


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a mapping with a duplicated key (`DuplicateKeyError`, 1-based lines)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merge keys (<<) may repeat what they merge: the explicit key wins, as YAML says
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str = "config") -> Any:
    """Read YAML file `path`; raise a one-line `ConfigError` (line and column of syntax errors, duplicated keys)."""
    try:
        return yaml.load(path.read_text(), Loader=StrictLoader)  # a safe loader
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from None
    except DuplicateKeyError as e:
        raise ConfigError(f"{what} {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {yaml_problem(e)}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                notes: list[str] | None = None) -> Config:  # fmt: skip
    """Load a YAML config (None: the built-in demo config) and apply overrides.

    `path` may be a file or the name of a shipped config (`find_config`). A budget an
    override gives replaces the file's other budget; `notes` (when given) receives the
    line saying so (`settle_budgets`).
    """
    path = SHIPPED_CONFIGS / "demo.yaml" if path is None else find_config(path)
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    data.setdefault("name", path.stem)
    return config_from_dict(data, overrides, source=str(path), notes=notes)


def dump_config(cfg: Config) -> str:
    """Return the resolved config as YAML."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
