"""One (inputs, targets) batch or many: the shape every data argument of the library accepts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

Batch = tuple[Any, Any]


def as_batches(data: Batch | Iterable[Batch], what: str = "data") -> list[Batch]:
    """Return `data` as a list of (inputs, targets) batches; one tensor pair counts as one batch.

    Raises:
        ValueError: naming `what` if there is no batch.
    """
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return [data]
    batches = list(data)  # type: ignore[arg-type]
    if not batches:
        raise ValueError(f"{what} is empty: give one (inputs, targets) batch or an iterable of them")
    return batches
