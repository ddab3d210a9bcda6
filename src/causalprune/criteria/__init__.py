"""Pruning methods: each criterion only *scores* weights; `selection.select` thresholds them all alike.

A method is registered under its name with `register`, declaring everything the driver,
`compare`, `report` and the analysis tools need to know about it — so none of them
contains a method name:

* ``needs``: what it scores from — ``trajectory`` (the round's recorded SGD trajectory),
  ``batches`` (training batches and the loss function), ``input_shape``; the others
  score the model as it stands after the round's training.
* ``higher_is_important``: its direction (GraSP prunes its *largest* scores).
* ``settings`` / ``reads``: the settings dataclass it owns (a top-level config section,
  e.g. ``causal``) and which of its fields it reads; `reads_key` tells a grid which keys
  vary a method.
* ``placebo_for``: the method it is the placebo control of (tables pair them).
* ``reference``: the baseline every table compares each method with (magnitude).
* ``pool``: which of its weights compete at weight level (a `selection.Pool`, e.g. Wanda's
  per-output-row `selection.ROWS`); None: the pool ``prune.scope`` names.
* ``prunes``: False for ``dense``, the no-pruning baseline trained for the same epochs.
* ``calibrates``: its batches are calibration batches (Wanda, SparseGPT): the driver reads
  ``prune.calibration_batches`` of them when that key is set (else ``prune.score_batches``).

A method scores units of one or more kinds: its ``scorers`` are keyed by the unit kind of
a plan (`causalprune.plan.Plan.kind`): ``weight`` (single weights, `register`), ``channel``
(channel groups, `register_channel`; ``prune.granularity: channel``), or any kind a new
plan brings (`register_scorer`). A channel-level function finds the groups in
``ScoreInput.groups`` (`causalprune.groups.ChannelGroups`) and returns its scores keyed by
root layer name, one value per channel of the layer (``groups.per_layer``), so that the one
selection code ranks them.

A scorer returns `Scored`: its scores and, optionally, weight ``updates`` (new values for
the weights the round keeps, e.g. SparseGPT's reconstruction): `causalprune.plan.run_round`
applies them after selection and makes them the rewind point of those weights
(docs/method.md, "Rewinding").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import SECTIONS

if TYPE_CHECKING:
    from ..masks import Mask
    from ..modelio import ModelIO
    from ..selection import Pool
    from ..trajectory import Trajectory

NEEDS = ("trajectory", "batches", "input_shape")


@dataclass
class ScoreInput:
    """What a criterion may look at for one pruning round."""

    model: nn.Module
    mask: Mask
    settings: Any = None  # the criterion's own settings dataclass (None: it has none)
    seed: int = 0  # round-specific seed, for criteria that draw random numbers
    trajectory: Trajectory | None = None
    data: Sequence[tuple[Any, Any]] = ()  # (inputs, targets) batches for data-driven criteria
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    target_sparsity: float | None = None  # the round's cumulative target (SynFlow's inner schedule)
    input_shape: tuple[int, ...] | None = None  # one sample's shape (data-free criteria such as SynFlow)
    options: dict[str, Any] = field(default_factory=dict)
    input_dtype: torch.dtype | None = None  # the inputs' dtype (token ids: an integer type); None: float
    groups: Any = None  # channel granularity: the model's `groups.ChannelGroups` (None: weight level)
    io: ModelIO | None = None  # how the model is called (forward, loss, example inputs); None: model(x), loss_fn
    # weight level: the pool the plan selects within (prune.pattern's blocks, else the method's own pool); None:
    # prune.scope's (SparseGPT chooses its mask while it scores, unit by unit)
    pool: Pool | None = None

    def __post_init__(self) -> None:
        # Criteria key their scores by the model's canonical names (a mask keyed by an alias
        # of a tied weight is re-keyed; masks.Mask.canonical).
        if self.mask is not None:
            self.mask = self.mask.canonical(self.model)

    @classmethod
    def build(cls, model: nn.Module, mask: Mask, *, inputs: Any = None, input_shape: tuple[int, ...] | None = None,
              **fields: Any) -> ScoreInput:  # fmt: skip
        """Build a round's input, the inputs' facts taken from `inputs` (a batch: tensor-like, batch dim first).

        The one rule for every caller (the driver, `CausalPruner`, `score`): ``input_shape`` is
        `input_shape` if given, else one sample's shape of `inputs`; ``input_dtype`` is the
        dtype of `inputs` (None without one). Other `fields` are passed as they are.
        """
        if input_shape is None and getattr(inputs, "shape", None) is not None:
            input_shape = tuple(inputs.shape[1:])
        dtype = getattr(inputs, "dtype", None)
        return cls(model, mask, input_shape=tuple(input_shape) if input_shape is not None else None,
                   input_dtype=dtype if isinstance(dtype, torch.dtype) else None, **fields)  # fmt: skip


@dataclass
class Scored:
    """Scores, optional tie-break scores, facts worth logging, and optional weight updates.

    ``updates``: parameter name → new values for that weight (its full shape); only the
    entries the round's selection keeps are used. `causalprune.plan.run_round` writes them
    into the model after selection and into the rewind point θ_pre, so a rewind keeps them.
    """

    scores: dict[str, torch.Tensor]
    tie_break: dict[str, torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    updates: dict[str, torch.Tensor] | None = None

    def oriented(self, higher_is_important: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """Return (scores, tie-break) with higher = keep, as `selection.select` expects."""
        if higher_is_important:
            return self.scores, self.tie_break
        tie = {n: -v for n, v in self.tie_break.items()} if self.tie_break is not None else None
        return {n: -v for n, v in self.scores.items()}, tie


ScoreFn = Callable[[ScoreInput], Scored]


@dataclass(frozen=True)
class Criterion:
    """A registered pruning method and what it declares about itself."""

    name: str
    description: str
    scorers: dict[str, ScoreFn] = field(default_factory=dict, hash=False)  # unit kind → its scores; {}: dense
    needs: frozenset[str] = frozenset()  # subset of NEEDS
    higher_is_important: bool = True  # False: the largest scores are pruned first (GraSP)
    settings: type | None = None  # its settings dataclass, registered as a config section
    reads: frozenset[str] = frozenset()  # fields of that section it reads
    placebo_for: str | None = None  # this method is the placebo control of that one
    reference: bool = False  # tables report every method's paired difference to this one
    prunes: bool = True
    pool: Pool | None = None  # weight level: its own selection pool (e.g. per output row); None: prune.scope
    calibrates: bool = False  # its batches are calibration batches (prune.calibration_batches when set)

    @property
    def fn(self) -> ScoreFn | None:
        """Its scores of single weights (unit kind ``weight``), or None."""
        return self.scorers.get("weight")

    @property
    def channel_fn(self) -> ScoreFn | None:
        """Its scores of channel groups (unit kind ``channel``), or None."""
        return self.scorers.get("channel")

    @property
    def granularities(self) -> tuple[str, ...]:
        """The unit kinds it can score (``weight`` and/or ``channel`` first, as ``prune.granularity`` names them)."""
        order = {"weight": 0, "channel": 1}
        return tuple(sorted(self.scorers, key=lambda k: (order.get(k, 2), k)))

    def scorer(self, kind: str) -> ScoreFn:
        """Return its scoring function for units of `kind`; raise naming the methods that score them if none."""
        if kind not in self.scorers:
            units = {"weight": "single weights", "channel": "channel groups"}.get(kind, f"{kind} units")
            raise ValueError(f"method {self.name!r} does not score {units}; methods that do: "
                             f"{', '.join(names(kind)) or 'none'}")  # fmt: skip
        return self.scorers[kind]

    def with_scorer(self, kind: str, fn: ScoreFn) -> Criterion:
        """Return a copy that scores units of `kind` with `fn` (the others unchanged)."""
        return dataclasses.replace(self, scorers={**self.scorers, kind: fn})

    @property
    def records(self) -> bool:
        """Whether it needs the round's recorded trajectory."""
        return "trajectory" in self.needs

    @property
    def needs_data(self) -> bool:
        """Whether it scores from (inputs, targets) batches."""
        return "batches" in self.needs

    @property
    def section(self) -> str | None:
        """The config section of its settings (None: it has none)."""
        return getattr(self.settings, "SECTION", None)

    def reads_key(self, key: str) -> bool:
        """Whether config key ``section.field`` can change this method's runs (grids vary only those).

        Keys of a method's settings section vary the methods that read them, plus every
        method when the field is one the whole run reads (the settings class lists those
        in ``SHARED``, e.g. ``causal.probe_size`` carves the probe set out of the training
        data). ``prune.sparsity`` does not vary a method that does not prune. Every other
        key (data, model, train, prune, seed) varies every method; ``prune.speedup`` is a budget like
        ``prune.sparsity``; ``prune.calibration_batches`` varies the calibrating methods only.
        """
        section, _, name = key.partition(".")
        if key in ("prune.sparsity", "prune.speedup"):
            return self.prunes
        if key == "prune.calibration_batches":  # read by the calibrating methods only
            return self.calibrates
        if section in SECTIONS:
            if name in getattr(SECTIONS[section], "SHARED", ()):
                return True
            return section == self.section and (not name or name in self.reads)
        return True


METHODS: dict[str, Criterion] = {}


def register(name: str, *, description: str, needs: Iterable[str] = (), higher_is_important: bool = True,
             settings: type | None = None, reads: Iterable[str] | None = None, placebo_for: str | None = None,
             reference: bool = False, pool: Pool | None = None,
             calibrates: bool = False) -> Callable[[ScoreFn], ScoreFn]:  # fmt: skip
    """Decorator: register `fn(ScoreInput) -> Scored` as pruning method `name`.

    `reads` defaults to every field of `settings`; `pool` is the selection pool of its
    single weights (None: ``prune.scope``'s); `calibrates`: it reads ``prune.calibration_batches`` batches.
    """
    needs = frozenset(needs)
    if needs - set(NEEDS):
        raise ValueError(f"method {name!r} needs {sorted(needs - set(NEEDS))}; valid needs: {', '.join(NEEDS)}")
    if settings is not None and getattr(settings, "SECTION", None) not in SECTIONS:
        raise ValueError(f"settings of {name!r} must be registered with config.register_section first")
    if reads is None:
        reads = [f.name for f in dataclasses.fields(settings)] if settings is not None else []

    def wrap(fn: ScoreFn) -> ScoreFn:
        _add(Criterion(name, description, {"weight": fn}, needs, higher_is_important, settings, frozenset(reads),
                       placebo_for, reference, pool=pool, calibrates=calibrates))  # fmt: skip
        return fn

    return wrap


def register_scorer(name: str, kind: str, fn: ScoreFn) -> None:
    """Add `fn` as registered method `name`'s scores of units of `kind` (a plan's `kind`: a new unit kind's scores)."""
    METHODS[name] = get(name).with_scorer(kind, fn)


def register_channel(name: str, *, description: str | None = None, needs: Iterable[str] = (),
                     settings: type | None = None, reads: Iterable[str] | None = None,
                     placebo_for: str | None = None) -> Callable[[ScoreFn], ScoreFn]:  # fmt: skip
    """Decorator: register `fn(ScoreInput) -> Scored` as the channel-level scores of method `name`.

    For a method registered with `register`, only the function is added (its declarations
    hold for both granularities). A new name needs a `description` and is a channel-only
    method. `fn` reads ``inp.groups`` and returns scores keyed by root layer name, one per
    channel (``inp.groups.per_layer(values)``).
    """

    def wrap(fn: ScoreFn) -> ScoreFn:
        if name in METHODS:
            register_scorer(name, "channel", fn)
        elif description is None:
            raise ValueError(f"channel-only method {name!r} needs a description")
        else:
            register(name, description=description, needs=needs, settings=settings, reads=reads,
                     placebo_for=placebo_for)(fn)  # fmt: skip
            METHODS[name] = dataclasses.replace(METHODS[name], scorers={"channel": fn})
        return fn

    return wrap


def _add(criterion: Criterion) -> None:
    if criterion.name in METHODS:
        raise ValueError(f"method {criterion.name!r} is already registered")
    METHODS[criterion.name] = criterion


def get(name: str) -> Criterion:
    """Return the method registered as `name`."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def names(granularity: str | None = None) -> list[str]:
    """Return the names of the scoring criteria (every method that prunes; at `granularity` if given)."""
    return sorted(n for n, c in METHODS.items() if c.prunes and (granularity is None or granularity in c.granularities))


def placebo_of(name: str) -> str | None:
    """Return the method registered as the placebo control of `name`, if any."""
    return next((c.name for c in METHODS.values() if c.placebo_for == name), None)


def references() -> list[str]:
    """Return the reference baselines every method is compared with (paired by seed)."""
    return sorted(n for n, c in METHODS.items() if c.reference)


def score(
    name: str,
    model: nn.Module,
    data: Iterable[tuple[Any, Any]] = (),
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Score `model`'s prunable weights with criterion `name`; return name → scores.

    `data` is an iterable of (inputs, targets) batches (ignored by data-free criteria).
    Options: ``mask`` (a `Mask`; default all alive; may be keyed by aliases of tied weights),
    ``seed``, ``sparsity`` (SynFlow's iterative target), ``trajectory`` (causal criteria),
    ``input_shape`` and ``input_dtype`` (SynFlow without data; with data, those of the first
    batch's inputs), fields of the criterion's settings (e.g. ``solver`` for causal), and
    criterion-specific ones. Scores are keyed by canonical names (`masks.prunable_parameters`:
    a tied weight is scored once). Scores follow each method's own formula; for GraSP the
    *largest* scores are pruned (`Criterion.higher_is_important` is False).
    """
    from ..masks import Mask

    crit = get(name)
    if not crit.prunes:
        raise ValueError(f"{name!r} prunes nothing and has no scores")
    if crit.fn is None:
        raise ValueError(f"{name!r} scores channel groups only (prune.granularity: channel), not single weights")
    mask = options.pop("mask", None) or Mask.ones(model)
    batches = list(data)
    if crit.needs_data and not batches:
        raise ValueError(f"criterion {name!r} needs data: an iterable of (inputs, targets) batches")
    if crit.needs_data and loss_fn is None:
        raise ValueError(f"criterion {name!r} needs loss_fn")
    traj = options.pop("trajectory", None)
    if crit.records and traj is None:
        raise ValueError(f"criterion {name!r} scores a recorded trajectory: pass trajectory=TrajectoryRecorder(...)"
                         ".trajectory()")  # fmt: skip
    input_shape = options.pop("input_shape", None)
    input_dtype = options.pop("input_dtype", None)
    settings = None
    if crit.settings is not None:
        fields = {f.name for f in dataclasses.fields(crit.settings)}
        settings = crit.settings(**{k: options.pop(k) for k in list(options) if k in fields})
    inp = ScoreInput.build(model, mask, inputs=batches[0][0] if batches else None, input_shape=input_shape,
                           settings=settings, seed=int(options.pop("seed", 0)), trajectory=traj, data=batches,
                           loss_fn=loss_fn, target_sparsity=options.pop("sparsity", None))  # fmt: skip
    inp.options = options
    if input_dtype is not None:  # given explicitly (SynFlow without data)
        inp.input_dtype = input_dtype
    return crit.fn(inp).scores


_add(Criterion("dense", "no pruning, same total epochs", prunes=False))

from . import causal, magnitude, saliency, sparsegpt, synflow, wanda  # noqa: E402,F401,I001  (registration side effects)
from . import channel  # noqa: E402,F401  (channel-level scores of the methods above: registered after them)

__all__ = ["METHODS", "NEEDS", "Criterion", "ScoreInput", "Scored", "get", "names", "placebo_of", "references",
           "register", "register_channel", "register_scorer", "score"]  # fmt: skip
