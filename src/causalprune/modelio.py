"""Model inputs as one value: `ModelIO` — example inputs, how the model is called, and the loss.

Everything that runs a network without a training batch in hand — Torch-Pruning's tracer
(`causalprune.groups.channel_groups`), the MACs and latency counters (`causalprune.metrics`),
SynFlow's all-ones input, `torch.export` / ONNX (`causalprune.export`) — and every criterion
that scores from batches (``io.forward(model, x)``) takes one `ModelIO` instead of a bare
input shape. Inputs come in three kinds:

* a tensor ``x`` (batch dimension first): the model is called ``model(x)``;
* a tuple of tensors ``(a, b)``: ``model(a, b)``;
* a dict of tensors ``{"input_ids": ..., "attention_mask": ...}`` (a Hugging Face batch):
  ``model(**batch)``.

A ``forward_fn(model, inputs)`` replaces the call when a model needs another one (a
Lightning precision context, an output to pick). ``ModelIO.from_shape(shape)`` is today's
vision/tabular model: one float32 tensor of one sample's shape; its example inputs are
exactly the tensors the code built from the shape before (``torch.zeros(1, *shape)``,
``torch.randn(b, *shape, generator=g)``), so numbers are unchanged.

A leaf module: it imports torch only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

FILLS = ("zeros", "ones", "randn", "example")

Inputs = torch.Tensor | tuple[torch.Tensor, ...] | Mapping[str, torch.Tensor]


def _kind(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return "tensor"
    if isinstance(inputs, tuple | list):
        return "tuple"
    if isinstance(inputs, Mapping):
        return "dict"
    raise TypeError(f"model inputs must be a tensor, a tuple of tensors or a dict of tensors, "
                    f"got {type(inputs).__name__}")  # fmt: skip


def _tensors(inputs: Any) -> list[torch.Tensor]:
    kind = _kind(inputs)
    values = [inputs] if kind == "tensor" else list(inputs.values() if kind == "dict" else inputs)
    return [v for v in values if isinstance(v, torch.Tensor)]


def _map(inputs: Any, fn: Callable[[torch.Tensor], torch.Tensor], scalars: bool = False) -> Any:
    """Apply `fn` to every batched tensor of `inputs` (and 0-dim ones if `scalars`), keeping its structure.

    Anything else passes through as it is (e.g. the ``num_items_in_batch`` scalar a Hugging
    Face Trainer adds to a batch).
    """

    def one(v: Any) -> Any:
        return fn(v) if isinstance(v, torch.Tensor) and (scalars or v.dim() > 0) else v

    kind = _kind(inputs)
    if kind == "tensor":
        return one(inputs)
    if kind == "tuple":
        return tuple(one(v) for v in inputs)
    return {k: one(v) for k, v in inputs.items()}


def to_device(inputs: Any, device: torch.device | str | None) -> Any:
    """Move every tensor of `inputs` (a tensor, tuple or dict; None passes) to `device`."""
    if inputs is None or device is None:
        return inputs
    if isinstance(inputs, torch.Tensor | tuple | list | Mapping):
        return _map(inputs, lambda t: t.to(device), scalars=True)
    return inputs


def batch_size(inputs: Any) -> int:
    """Return the batch size of `inputs`: the first dimension of its first tensor."""
    tensors = [t for t in _tensors(inputs) if t.dim() > 0]
    if not tensors:
        raise ValueError("model inputs hold no tensor with a batch dimension")
    return int(tensors[0].shape[0])


@dataclass(frozen=True)
class ModelIO:
    """How a model is called: example inputs (a tensor, tuple or dict of tensors), a forward and a loss.

    Attributes:
        example: one batch of inputs, batch dimension first (only its shapes, dtypes and,
            for integer tensors such as token ids, its values are used).
        forward_fn: ``forward_fn(model, inputs) -> outputs``; None: ``model(x)``,
            ``model(*x)`` or ``model(**x)`` by the kind of inputs.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; None: the model's own
            ``outputs.loss`` (a Hugging Face model given labels).
    """

    example: Any
    forward_fn: Callable[[nn.Module, Any], Any] | None = None
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        tensors = [t for t in _tensors(self.example) if t.dim() > 0]  # 0-dim tensors are passed as they are
        if not tensors:
            raise ValueError(f"ModelIO example inputs hold no tensor with a batch dimension: "
                             f"{type(self.example).__name__}")  # fmt: skip
        sizes = {int(t.shape[0]) for t in tensors}
        if len(sizes) != 1:
            shapes = [tuple(t.shape) for t in tensors]
            raise ValueError(f"ModelIO example tensors must share a leading batch dimension, got shapes {shapes}")

    @classmethod
    def from_shape(cls, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype | None = None,
                   loss_fn: Callable[[Any, Any], torch.Tensor] | None = None) -> ModelIO:  # fmt: skip
        """Build the inputs of a model called ``model(x)`` on one tensor of one sample's `shape` (default float32)."""
        shape = tuple(int(s) for s in shape)
        if any(s < 1 for s in shape):
            raise ValueError(f"an input shape needs sizes >= 1, got {shape}")
        return cls(torch.zeros(1, *shape, dtype=dtype if dtype is not None else torch.float32), loss_fn=loss_fn)

    @classmethod
    def from_inputs(cls, inputs: Any, forward_fn: Callable[[nn.Module, Any], Any] | None = None,
                    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None) -> ModelIO:  # fmt: skip
        """Build it from one real batch of inputs (its first sample is kept, detached, as the example)."""
        if isinstance(inputs, ModelIO):
            return inputs
        return cls(_map(inputs, lambda t: t.detach()[:1]), forward_fn, loss_fn)

    @staticmethod
    def of(inputs: ModelIO | tuple[int, ...] | torch.Size | Any) -> ModelIO:
        """Return `inputs` as a `ModelIO`: itself, `from_shape` for a shape, `from_inputs` for a batch of inputs."""
        if isinstance(inputs, ModelIO):
            return inputs
        if isinstance(inputs, torch.Size) or (isinstance(inputs, tuple | list) and all(isinstance(s, int)
                                                                                        for s in inputs)):  # fmt: skip
            return ModelIO.from_shape(tuple(inputs))
        return ModelIO.from_inputs(inputs)

    # --- what the inputs are ----------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``tensor``, ``tuple`` or ``dict``."""
        return _kind(self.example)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """One sample's shape when the inputs are one tensor; None for tuples and dicts."""
        return tuple(self.example.shape[1:]) if self.kind == "tensor" else None

    @property
    def input_dtype(self) -> torch.dtype | None:
        """The dtype of a single input tensor that is not floating (token ids); None otherwise."""
        if self.kind != "tensor" or self.example.is_floating_point() or self.example.is_complex():
            return None
        return self.example.dtype

    @property
    def plain(self) -> bool:
        """Whether the model is called ``model(x)`` on one tensor (what ``torch.zeros(1, *shape)`` code did)."""
        return self.kind == "tensor" and self.forward_fn is None

    # --- calling the model --------------------------------------------------------------------
    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """Call `model` on `inputs`: ``forward_fn(model, inputs)``, else ``model(x)``, ``(*x)`` or ``(**x)``."""
        if self.forward_fn is not None:
            return self.forward_fn(model, inputs)
        kind = _kind(inputs)
        if kind == "dict":
            return model(**inputs)
        if kind == "tuple":
            return model(*inputs)
        return model(inputs)

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """Return ``loss_fn(outputs, targets)``, or the model's own ``outputs.loss`` when there is no `loss_fn`."""
        if self.loss_fn is not None:
            return self.loss_fn(outputs, targets)
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
        if loss is None:
            raise ValueError("ModelIO has no loss_fn and the model's outputs carry no loss: give loss_fn=..., or "
                             "batches with labels to a model that computes its own loss")  # fmt: skip
        return loss

    def example_inputs(self, batch: int = 1, fill: str = "zeros", device: torch.device | str | None = None,
                       float_dtype: torch.dtype | None = None,
                       generator: torch.Generator | None = None) -> Any:  # fmt: skip
        """Return inputs of `batch` samples shaped like the example, on `device`.

        Floating tensors are ``fill``: ``zeros``, ``ones``, ``randn`` (drawn from `generator`,
        in the order of the inputs) or ``example`` (the example's samples, repeated), in
        `float_dtype` when given. Other tensors (token ids, attention masks) are zeros or ones
        under those fills and the example's samples, repeated, under ``randn`` and ``example``.
        For `from_shape` inputs, ``zeros`` / ``randn`` give exactly ``torch.zeros(batch, *shape)``
        and ``torch.randn(batch, *shape, generator=generator)``.
        """
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
        if int(batch) != batch or batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {batch}")

        def make(t: torch.Tensor) -> torch.Tensor:
            shape = (int(batch), *t.shape[1:])
            floating = t.is_floating_point() or t.is_complex()
            dtype = float_dtype if floating and float_dtype is not None else t.dtype
            how = fill if floating or fill in ("zeros", "ones") else "example"
            if how == "zeros":
                return torch.zeros(shape, dtype=dtype, device=device)
            if how == "ones":
                return torch.ones(shape, dtype=dtype, device=device)
            if how == "randn":
                x = torch.randn(shape, generator=generator, dtype=dtype)
                return x if device is None else x.to(device)
            rows = torch.arange(int(batch), device=t.device) % t.shape[0]
            return t.detach().index_select(0, rows).to(device=device if device is not None else t.device, dtype=dtype)

        return _map(self.example, make)

    def describe(self) -> str:
        """One line: the kind and every tensor's shape and dtype (for error messages and sidecars)."""
        def one(t: torch.Tensor) -> str:
            return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"

        if self.kind == "tensor":
            return f"tensor {one(self.example)}"
        if self.kind == "tuple":
            return "tuple (" + ", ".join(one(t) for t in _tensors(self.example)) + ")"
        return "dict {" + ", ".join(f"{k}: {one(v)}" for k, v in self.example.items()
                                   if isinstance(v, torch.Tensor)) + "}"  # fmt: skip


__all__ = ["FILLS", "Inputs", "ModelIO", "batch_size", "to_device"]
