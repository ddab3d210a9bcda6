"""Batches of any split on a device: in-memory tensors and image files alike.

Tensors are indexed in place (shuffled by a generator, or sequential slices); on a CUDA
device a batch held in host memory is pinned and copied without blocking the host, and a
split already on the device (``data.on_device``) is indexed there with no copy at all.
Image files stream through a DataLoader (`ImageFiles.loader`).
"""

from __future__ import annotations

import torch

from .folder import Batches, ImageFiles, iterate_files

#: What a split's inputs can be: a tensor of samples, or image files read lazily.
Inputs = torch.Tensor | ImageFiles


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def iterate(x: Inputs, y: torch.Tensor, batch_size: int, device: torch.device,
            generator: torch.Generator | None = None, train: bool = False) -> Batches:  # fmt: skip
    """Yield (inputs, targets) minibatches on `device`; the last one may be smaller.

    Shuffled by `generator` when one is given, in order otherwise. `train` selects the
    training transform of image files (their random augmentation); in-memory tensors are
    augmented by the caller.
    """
    if isinstance(x, ImageFiles):
        yield from iterate_files(x, y, batch_size, device, generator, train)
        return
    if generator is None:
        for a in range(0, len(y), batch_size):
            yield _to(x[a : a + batch_size], device), _to(y[a : a + batch_size], device)
        return
    for idx in torch.randperm(len(y), generator=generator).split(batch_size):
        if x.device.type != "cpu":
            idx = idx.to(x.device, non_blocking=True)
        yield _to(x[idx], device), _to(y[idx], device)


def materialize(x: Inputs) -> torch.Tensor:
    """Return the inputs as one tensor (image files are read with the eval transform)."""
    return x.load() if isinstance(x, ImageFiles) else x
