"""Channel groups for structured pruning (docs/method.md "Structured variant: channel groups").

A *group* is every parameter entry removed together when one output channel of a
Conv (or one output neuron of a Linear) disappears: the producer's weight rows and
bias, its normalisation entries, every consumer's input slice, and the channels tied to
it by residual additions or concatenations. The coupling is traced by Torch-Pruning's
`DependencyGraph` (torch-pruning 1.6.0); nothing here re-implements it.

* **Which entries form a group's regressor column.** Every weight entry ``W[o, i, ...]``
  of a Conv/Linear belongs to two groups: that of its output channel ``o`` (the producer
  slice) and that of its input channel ``i`` (a consumer slice of the previous layer's
  group). For the weight-sharing regressor x̃_g = Σ_{k∈g} x̃_k (docs/method.md,
  "Structured variant: channel groups") each entry is assigned to the group of its
  **output** channel only, so that every entry has exactly one column
  (`ChannelGroups.layout`). Consumer slices, biases and normalisation entries
  are removed with the group (`group_mask`, `zero_groups_`, `remove_groups_`) but are
  not part of its column. A depthwise conv's rows count as producer slices of the
  channel they carry.
* **Layers that give no groups.** The output layer(s) — a layer group whose channels
  feed no other prunable layer, i.e. the classifier — are never a group; their weights
  have no column and are left out of the layout's names. So are the layers the caller
  lists in `ignored_layers`, and those a model declares through a method
  ``channel_pruning_ignored_layers()`` (see below); a group that would couple an ignored
  layer's output channels is dropped as a whole (Torch-Pruning's rule).
* **Option-A shortcuts.** The CIFAR ResNets' parameter-free shortcut (subsample and
  zero-pad the channels with ``F.pad``, `causalprune.models.resnet_cifar`) is invisible
  to the dependency graph: it would couple the wrong channels and the slim network
  would fail with a shape mismatch. Those models declare the residual-stream layers
  (the stem conv and every block's ``conv2``) as ignored, so only *block-inner*
  channels — ``conv1`` of each BasicBlock, whose output feeds only ``conv2`` of the same
  block — are groups. With option-B shortcuts (``shortcut="B"``: 1×1 conv + BN) the
  residual stream is traced and every channel is a group.
* **Attention heads.** Torch-Pruning couples the q, k and v projections of an attention
  and the output projection's columns channel by channel (the attention product is
  elementwise to its tracer), but a channel of one head cannot be removed alone: the
  projections are reshaped into (heads, head width). A model declares its heads through a
  method ``channel_pruning_heads()`` → {a projection of the attention (e.g. q): head count}
  (or the caller passes `heads`); every layer group containing such a producer is then cut
  into whole heads — group h bundles the head's ``width / heads`` channels, all its slices
  — and a head is removed with all of them. Its Torch-Pruning importance is the mean of its
  channels'. The model (or the integration) reads the new head count after removal.
* **Masked ≡ slim.** `zero_groups_` zeroes every slice of the removed groups (weights,
  biases, and a BatchNorm's weight and bias so that it outputs exactly zero in eval
  mode); `remove_groups_` removes them physically. Both networks compute the same
  function when the activation maps 0 to 0 (ReLU, identity, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from .layout import ParamLayout
from .masks import Mask, prunable_parameters
from .modelio import ModelIO

__all__ = ["ChannelGroup", "ChannelGroups", "channel_groups", "copy_without_hooks"]


@dataclass(frozen=True)
class Slice:
    """Entries ``index`` along dimension ``dim`` of the parameter ``name`` (a model parameter name)."""

    name: str
    dim: int
    index: torch.Tensor
    producer: bool  # True: part of the group's regressor column (a prunable weight's output slice)


@dataclass
class ChannelGroup:
    """One removable channel: output channel `channel` of layer `layer` and every slice coupled to it.

    Attributes:
        layer: name of the root layer (the first layer, in module order, whose output channel this is).
        channel: the channel's index in the root layer's output (for a head: the head's index).
        size: number of entries in its regressor column (the producer weight slices, all alive).
        slices: every parameter slice removed with the group (producer and consumer weights, biases,
            normalisation weights and biases).
        n_entries: number of parameter entries removed with the group (weights, biases, normalisation).
        unsupported: modules of the group `zero_groups_` cannot zero (`remove_groups_` still can).
    """

    layer: str
    channel: int
    size: int
    slices: list[Slice] = field(repr=False)
    n_entries: int = 0
    unsupported: list[str] = field(default_factory=list, repr=False)
    channels: list[int] = field(default_factory=list)  # the root layer's output channels removed with it

    def __post_init__(self) -> None:
        if not self.channels:
            self.channels = [self.channel]

    @property
    def is_head(self) -> bool:
        """True when the group is an attention head (several channels of its root layer)."""
        return len(self.channels) > 1


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.out_channels == m.in_channels


def _param_dims(m: nn.Module, out: bool) -> tuple[list[tuple[str, int]], bool] | None:
    """Return ([(attr, dim)], producer) for the slices a channel prune touches in module `m`, or None if unknown."""
    if isinstance(m, nn.Linear):
        return ([("weight", 0), ("bias", 0)], True) if out else ([("weight", 1)], False)
    if isinstance(m, nn.modules.conv._ConvNd):
        if _is_depthwise(m):
            return [("weight", 0), ("bias", 0)], True
        if m.groups != 1:
            return None
        w_out, w_in = (1, 0) if m.transposed else (0, 1)
        return ([("weight", w_out), ("bias", 0)], True) if out else ([("weight", w_in)], False)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return [("weight", 0), ("bias", 0)], False
    if isinstance(m, nn.PReLU):
        return ([("weight", 0)] if m.num_parameters > 1 else []), False
    if not any(True for _ in m.parameters(recurse=False)):
        return [], False  # e.g. a parameter-free module the graph touches
    return None


class ChannelGroups:
    """The channel groups of a model (`channel_groups`), in module order of their root layers.

    Attributes:
        groups: the `ChannelGroup` list; a group's index is its column.
        layers: root layer name → indices (into `groups`) of its channels, in channel order.
        names: the prunable weights (names of `prunable_parameters`) that have columns, in module order.
        shapes: shape of every prunable weight of the model (the `Mask`'s tensors).
        model: the model the groups were built on (`remove_groups_` needs it).
    """

    def __init__(self, model: nn.Module, dg: tp.DependencyGraph, groups: list[ChannelGroup],
                 roots: dict[str, nn.Module], layers: dict[str, list[int]], names: list[str],
                 shapes: dict[str, torch.Size], tp_groups: dict[str, tuple[Any, list[list[int]]]],
                 example_inputs: Any, ignored: list[str], heads: dict[str, int] | None = None) -> None:  # fmt: skip
        self.model, self._dg, self.groups = model, dg, groups
        self._roots, self.layers, self.names, self.shapes = roots, layers, names, shapes
        # root layer → (Torch-Pruning's group of its channels, root indices of each of our groups, in our order)
        self._tp_groups = tp_groups
        self._example, self._ignored = example_inputs, ignored  # to rebuild the groups on a copy (`slim_copy`)
        self.heads = dict(heads or {})  # module name → head count, of the layers cut into heads
        self.removed = False
        all_shapes = {n: p.shape for n, p in model.named_parameters()}
        touched = {s.name for g in groups for s in g.slices}
        # every parameter a group touches (weights, biases, normalisation), in model order
        self.param_shapes = {n: sh for n, sh in all_shapes.items() if n in touched or n in shapes}
        col = {}
        for n in names:
            col[n] = torch.full(shapes[n], -1, dtype=torch.long)
        for g_idx, g in enumerate(groups):
            for s in g.slices:
                if s.producer:
                    col[s.name].index_fill_(s.dim, s.index, g_idx)
        for n, c in col.items():
            if bool((c < 0).any()):
                raise ValueError(f"{n!r}: some entries belong to no group's output slice (partly grouped tensor)")
        self._column = col

    @property
    def G(self) -> int:
        """Number of groups."""
        return len(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __repr__(self) -> str:
        return f"ChannelGroups(G={self.G}, layers={len(self.layers)}, weights with columns={len(self.names)})"

    def column_tensors(self) -> dict[str, torch.Tensor]:
        """Return name → long tensor of the weight's shape giving each entry's group (column)."""
        return {n: c.clone() for n, c in self._column.items()}

    def layout(self, mask: Mask | None = None) -> ParamLayout:
        """Return the grouped `ParamLayout` of the weights with columns, restricted to `mask`'s alive entries.

        ``layout.column_of`` maps each alive entry to its group (the group of its output
        channel), ``layout.n_columns == G``, and ``layout.to_columns(x)`` sums a per-entry
        quantity over each group's alive entries. Weights without a column (the classifier,
        ignored layers) are not among ``layout.names``.
        """
        alive = None if mask is None else {n: mask[n] for n in self.names if n in mask}
        plain = ParamLayout(self.names, self.shapes, alive)
        column_of = plain.flatten(self._column)
        return ParamLayout(self.names, self.shapes, alive, column_of=column_of, n_columns=self.G)

    def _keep(self, keep: torch.Tensor | Sequence[bool]) -> torch.Tensor:
        keep = torch.as_tensor(keep).detach().to("cpu", torch.bool).reshape(-1)
        if keep.numel() != self.G:
            raise ValueError(f"keep must have one entry per group ({self.G}), got {keep.numel()}")
        return keep

    def group_mask(self, keep: torch.Tensor | Sequence[bool], base: Mask | None = None) -> Mask:
        """Return the `Mask` over all prunable weights with every weight slice of the removed groups pruned.

        Producer rows and consumer input slices of each group with ``keep[g] == False`` are
        False; `base` (default: all alive) is intersected.
        """
        keep = self._keep(keep)
        masks = {n: torch.ones(s, dtype=torch.bool) if base is None else base[n].clone()
                 for n, s in self.shapes.items()}  # fmt: skip
        for g_idx in torch.nonzero(~keep).squeeze(1).tolist():
            for s in self.groups[g_idx].slices:
                if s.name in masks:
                    masks[s.name].index_fill_(s.dim, s.index, False)
        return Mask(masks)

    def full_mask(self, keep: torch.Tensor | Sequence[bool]) -> Mask:
        """Return the `Mask` over every parameter a group touches (`param_shapes`: prunable weights, biases,
        normalisation weights and biases), with every slice of the removed groups False.

        Attached to a training run (`Mask.attach`) it keeps the removed channels exactly zero,
        biases and BatchNorm affine parameters included, so that the masked network computes
        what the slim one will (see the module docstring).
        """
        keep = self._keep(keep)
        masks = {n: torch.ones(s, dtype=torch.bool) for n, s in self.param_shapes.items()}
        for g_idx in torch.nonzero(~keep).squeeze(1).tolist():
            for s in self.groups[g_idx].slices:
                masks[s.name].index_fill_(s.dim, s.index, False)
        return Mask(masks)

    def keep_of(self, mask: Mask) -> torch.Tensor:
        """Return the (G,) bool vector of the groups `mask` keeps (a group is kept when its producer rows are alive).

        The inverse of `full_mask` / `group_mask` for masks they made.
        """
        keep = torch.ones(self.G, dtype=torch.bool)
        for g_idx, g in enumerate(self.groups):
            for s in g.slices:
                if s.producer and s.name in mask:
                    keep[g_idx] = bool(mask[s.name].index_select(s.dim, s.index).any())
                    break
        return keep

    def per_layer(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a (G,) vector into root layer name → (channels of the layer,) in channel order."""
        values = torch.as_tensor(values).reshape(-1)
        if values.numel() != self.G:
            raise ValueError(f"expected one value per group ({self.G}), got {values.numel()}")
        return {layer: values[torch.tensor(idx, dtype=torch.long)] for layer, idx in self.layers.items()}

    def from_layers(self, per_layer: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Join root layer name → per-channel values back into one (G,) vector (inverse of `per_layer`)."""
        first = next(iter(per_layer.values()))
        out = torch.empty(self.G, dtype=first.dtype)
        for layer, idx in self.layers.items():
            out[torch.tensor(idx, dtype=torch.long)] = per_layer[layer].detach().cpu().reshape(-1)
        return out

    def importance(self, imp: Any) -> torch.Tensor:
        """Return the (G,) float64 scores a Torch-Pruning importance (``tp.importance.*``) gives each group.

        `imp` is called once per layer group on Torch-Pruning's own group object (all coupled
        slices); its per-channel values are put in our group order. A layer group for which
        it has no value (e.g. `BNScaleImportance` where no BatchNorm is coupled) raises
        ValueError naming the layer. A head scores the mean of its channels' values.
        """
        out = torch.empty(self.G, dtype=torch.float64)
        for layer, (tp_group, members) in self._tp_groups.items():
            values = imp(tp_group)
            if values is None:
                raise ValueError(f"{type(imp).__name__} gives no score to the channels of layer {layer!r}")
            values = values.detach().to("cpu", torch.float64).reshape(-1)
            per_group = torch.stack([values[torch.tensor(m, dtype=torch.long)].mean() for m in members])
            out[torch.tensor(self.layers[layer], dtype=torch.long)] = per_group
        return out

    def slim_copy(self, keep: torch.Tensor | Sequence[bool]) -> nn.Module:
        """Return a deep copy of the model with the groups ``keep[g] == False`` physically removed.

        The model itself is not changed (the groups are rebuilt on the copy, which gives the
        same groups in the same order); used to count a candidate's MACs exactly.
        """
        keep = self._keep(keep)
        copy = copy_without_hooks(self.model)
        modules = dict(copy.named_modules())
        groups = channel_groups(copy, self._example, [modules[n] for n in self._ignored],
                                {modules[n]: h for n, h in self.heads.items()})  # fmt: skip
        if groups.G != self.G:
            raise RuntimeError(f"the copy has {groups.G} channel groups, the model {self.G}")
        return groups.remove_groups_(copy, keep)

    @torch.no_grad()
    def zero_groups_(self, model: nn.Module, keep: torch.Tensor | Sequence[bool]) -> nn.Module:
        """Zero, in place, every slice of the removed groups: weights, biases, normalisation weights and biases."""
        keep = self._keep(keep)
        params = dict(model.named_parameters())
        for g_idx in torch.nonzero(~keep).squeeze(1).tolist():
            g = self.groups[g_idx]
            if g.unsupported:
                raise NotImplementedError(f"cannot zero group {g.layer}[{g.channel}]: modules {g.unsupported}")
            for s in g.slices:
                p = params[s.name]
                p.index_fill_(s.dim, s.index.to(p.device), 0.0)
        return model

    def remove_groups_(self, model: nn.Module, keep: torch.Tensor | Sequence[bool]) -> nn.Module:
        """Physically remove the groups with ``keep[g] == False`` through Torch-Pruning; return the slim model.

        `model` must be the model the groups were built on. The groups (and their layout)
        describe the dense model only: build new ones on the slim model if needed.

        Raises:
            ValueError: if a root layer would lose all its channels, or the groups were already used to remove.
        """
        keep = self._keep(keep)
        if model is not self.model:
            raise ValueError("remove_groups_ needs the model the groups were built on")
        if self.removed:
            raise ValueError("these groups were already used to slim the model; build new ones")
        plan = []
        for layer, idx in self.layers.items():
            drop = [c for i in idx if not bool(keep[i]) for c in self.groups[i].channels]
            if all(not bool(keep[i]) for i in idx):
                raise ValueError(f"removing all {len(idx)} channels of layer {layer!r} would empty it")
            if drop:
                plan.append((layer, drop))
        for layer, drop in plan:
            root = self._roots[layer]
            pruner = self._dg.get_pruner_of_module(root)
            self._dg.get_pruning_group(root, pruner.prune_out_channels, drop).prune()
        self.removed = True
        return model


def copy_without_hooks(model: nn.Module) -> nn.Module:
    """Return a deep copy of `model` whose modules carry no hooks (a training callback's hooks stay behind).

    A hook is often a bound method of an object that holds the trainer, the optimizer or a
    dependency graph: copying it would copy them too (or fail on what cannot be copied).
    """
    memo: dict[int, Any] = {}
    for m in model.modules():
        for name, value in vars(m).items():
            if "hooks" in name and isinstance(value, dict):
                memo[id(value)] = type(value)()  # the copy's module gets an empty one
    return deepcopy(model, memo)


def _ignored_by_model(model: nn.Module) -> list[nn.Module]:
    fn = getattr(model, "channel_pruning_ignored_layers", None)
    return list(fn()) if callable(fn) else []


def _heads_by_model(model: nn.Module) -> dict[nn.Module, int]:
    fn = getattr(model, "channel_pruning_heads", None)
    return dict(fn()) if callable(fn) else {}


def channel_groups(model: nn.Module, example_inputs: ModelIO | torch.Tensor | Sequence[torch.Tensor],
                   ignored_layers: Sequence[nn.Module] = (),
                   heads: Mapping[nn.Module, int] | None = None) -> ChannelGroups:  # fmt: skip
    """Build the channel groups of `model` with Torch-Pruning's `DependencyGraph`.

    Args:
        model: the network (traced once with `example_inputs`; its mode is restored).
        example_inputs: a `ModelIO` (its example inputs — a tensor, tuple or dict of tensors,
            a dict given to Torch-Pruning as keyword inputs — and its ``forward_fn``, passed as
            Torch-Pruning's ``forward_fn``), or a batch the model accepts (only shapes matter).
        ignored_layers: extra layers whose output channels must not be pruned (with the
            model's own ``channel_pruning_ignored_layers()``, when it has one).
        heads: attention projections → head count (with the model's own
            ``channel_pruning_heads()``): the layer groups they produce are cut into whole heads.

    Returns:
        `ChannelGroups`: one group per removable output channel of every Conv/Linear layer
        (per head of an attention) except the output layer(s) and the ignored ones.

    Raises:
        ValueError: if a declared head count does not divide its layer's output channels.
    """
    ignored = list(ignored_layers) + _ignored_by_model(model)
    ignored_names = [n for n, m in model.named_modules() if any(m is i for i in ignored)]  # for `slim_copy`
    head_of = {**_heads_by_model(model), **dict(heads or {})}
    head_names = {n: int(head_of[m]) for n, m in model.named_modules() if m in head_of}
    was_training = model.training
    model.eval()
    traced, forward_fn = example_inputs, None
    if isinstance(example_inputs, ModelIO):
        io = example_inputs
        device = next(model.parameters()).device
        traced = io.example_inputs(1, "example", device=device)  # one sample (from_shape: zeros)
        if io.kind == "tuple":
            traced = tuple(traced)
        if io.forward_fn is not None:
            forward_fn = io.forward
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, traced, forward_fn=forward_fn, verbose=False)
    finally:
        model.train(was_training)
    module_names = {m: n for n, m in model.named_modules()}
    order = {n: k for k, n in enumerate(module_names.values())}
    param_names = {id(p): n for n, p in model.named_parameters()}
    all_shapes = {n: p.shape for n, p in model.named_parameters()}
    prunable = prunable_parameters(model)
    shapes = {n: p.shape for n, p in prunable.items()}

    found = []
    for tp_group in dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Linear, nn.modules.conv._ConvNd)):
        root = tp_group[0].dep.target.module
        items = [(it.dep.target.module, dg.is_out_channel_pruning_fn(it.dep.handler), list(it.idxs),
                  list(it.root_idxs)) for it in tp_group if it.dep.target.module in module_names]  # fmt: skip
        if not any(not out and not _is_depthwise(m) for m, out, _, _ in items):
            continue  # the channels feed no other layer: an output layer (the classifier)
        # Name the layer group after its first producer in module order (Torch-Pruning's root is arbitrary).
        first = min((m for m, out, _, _ in items if out and isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))),
                    key=lambda m: order[module_names[m]])  # fmt: skip
        chan = {}
        for m, out, idxs, root_idxs in items:
            if m is first and out:
                chan = dict(zip(root_idxs, idxs, strict=True))
        found.append((order[module_names[first]], first, chan, root, items, tp_group))
    found.sort(key=lambda f: f[0])

    groups: list[ChannelGroup] = []
    roots: dict[str, nn.Module] = {}
    layers: dict[str, list[int]] = {}
    tp_groups: dict[str, tuple[Any, list[list[int]]]] = {}
    for _, first, chan, root, items, tp_group in found:
        root_name = module_names[first]
        roots[root_name] = first
        n_out = dg.get_pruner_of_module(root).get_out_channels(root)
        per_channel: list[dict[tuple[str, int], tuple[set[int], bool]]] = [{} for _ in range(n_out)]
        unsupported: set[str] = set()
        for m, out, idxs, root_idxs in items:
            dims = _param_dims(m, out)
            if dims is None:
                unsupported.add(module_names[m])
                continue
            attrs, producer = dims
            for attr, dim in attrs:
                p = m._parameters.get(attr)
                if p is None:
                    continue
                name = param_names[id(p)]
                prod = producer and name in prunable
                for i, r in zip(idxs, root_idxs, strict=True):
                    entry = per_channel[int(r)].setdefault((name, dim), (set(), prod))
                    entry[0].add(int(i))
        layers[root_name] = []
        order_r = sorted(range(n_out), key=lambda r: chan[r])
        bundles = _bundles(order_r, chan, _head_count(items, head_of, module_names, root_name))
        tp_groups[root_name] = (tp_group, bundles)
        for b_idx, bundle in enumerate(bundles):
            merged: dict[tuple[str, int], tuple[set[int], bool]] = {}
            for r in bundle:
                for key, (ix, prod) in per_channel[r].items():
                    merged.setdefault(key, (set(), prod))[0].update(ix)
            slices = [Slice(name, dim, torch.tensor(sorted(ix), dtype=torch.long), prod)
                      for (name, dim), (ix, prod) in merged.items()]  # fmt: skip
            width = [int(s.index.numel()) * (all_shapes[s.name].numel() // all_shapes[s.name][s.dim]) for s in slices]
            size = sum(w for w, s in zip(width, slices, strict=True) if s.producer)
            channels = [int(chan[r]) for r in bundle]
            index = channels[0] if len(bundle) == 1 else b_idx
            layers[root_name].append(len(groups))
            groups.append(ChannelGroup(root_name, index, size, slices, sum(width), sorted(unsupported), channels))
    with_columns = {s.name for g in groups for s in g.slices if s.producer}
    names = [n for n in prunable if n in with_columns]
    return ChannelGroups(model, dg, groups, roots, layers, names, dict(shapes), tp_groups, example_inputs,
                         ignored_names, head_names)  # fmt: skip


def _head_count(items: list[tuple[nn.Module, bool, list[int], list[int]]], head_of: Mapping[nn.Module, int],
                module_names: Mapping[nn.Module, str], root_name: str) -> int | None:  # fmt: skip
    """Return the head count declared for a producer of this layer group (None: plain channels)."""
    counts = {int(head_of[m]) for m, out, _, _ in items if out and m in head_of}
    if len(counts) > 1:
        raise ValueError(f"layer group {root_name!r}: its projections declare different head counts {sorted(counts)}")
    return counts.pop() if counts else None


def _bundles(order_r: list[int], chan: Mapping[int, int], n_heads: int | None) -> list[list[int]]:
    """Cut a layer group's channels (root indices in channel order) into groups: one each, or whole heads."""
    if n_heads is None:
        return [[r] for r in order_r]
    n = len(order_r)
    if n_heads < 1 or n % n_heads:
        raise ValueError(f"a head count of {n_heads} does not divide the layer's {n} output channels")
    width = n // n_heads
    return [[r for r in order_r if int(chan[r]) // width == h] for h in range(n_heads)]

