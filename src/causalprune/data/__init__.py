"""Data sets: name → loader returning tensors and a deterministic train/val/probe/test split.

Every loader returns a `Pool` (training pool, fixed test set). Inputs are tensors held in
memory, or an `ImageFiles` (a lazy image set read from disk by a DataLoader) for the
image-folder data sets; `iterate` and `materialize` treat both alike. `make_splits` then carves a
validation split (model selection) and a probe set (the `probe` loss change, docs/method.md "Recording") out
of the training pool, deterministically from the seed; the test set never changes with
the seed, so runs of different methods and seeds are evaluated on the same samples.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..modelio import ModelIO
from .folder import ImageFiles, load_imagenet_pool, load_tinyimagenet_pool
from .loading import Inputs, iterate, materialize
from .tabular import load_digits_pool, load_friedman_pool, load_mnist1d_pool
from .text import VOCAB_SIZE, load_pysrc_splits
from .vision import crop_flip, load_cifar10_pool, load_fashionmnist_pool, load_mnist_pool

#: (input shape of one sample, outputs) of each data set, known without loading it (dry runs).
SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((64,), 10), "mnist1d": ((40,), 10), "friedman": ((10,), 1), "cifar10": ((3, 32, 32), 10),
    "mnist": ((1, 28, 28), 10), "fashionmnist": ((1, 28, 28), 10),
    "tinyimagenet": ((3, 64, 64), 200), "imagenet": ((3, 224, 224), 1000),
    "pysrc": ((64,), VOCAB_SIZE),  # windows of model.block_size token ids (64 by default)
}  # fmt: skip

#: Data sets whose side length `data.image_size` sets (the others have a fixed shape).
RESIZABLE = ("tinyimagenet", "imagenet")


def shape_of(name: str, image_size: int | None = None) -> tuple[tuple[int, ...], int]:
    """(input shape of one sample, outputs) of data set `name`, known without loading it."""
    shape, outputs = SHAPES[name]
    if name in RESIZABLE and image_size:
        shape = (shape[0], image_size, image_size)
    return shape, outputs

#: data sets whose samples are int64 token ids (one window of ``model.block_size``), not float tensors
TOKEN_DATA = ("pysrc",)


def input_io(name: str, image_size: int | None = None, block_size: int | None = None) -> ModelIO:
    """Return how a model of data set `name` is called, known without loading it: one sample of zeros.

    Float32 samples of `shape_of`, or for a token data set (`TOKEN_DATA`) int64 ids of one
    window of `block_size` (default: the data set's own).
    """
    shape, _ = shape_of(name, image_size)
    if name not in TOKEN_DATA:
        return ModelIO.from_shape(shape)
    return ModelIO.from_shape((int(block_size),) if block_size else shape, torch.long)


#: Training-batch augmentations by name: fn(batch, generator) -> batch.
AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {"crop_flip": crop_flip}


@dataclass(frozen=True)
class Pool:
    """A data set before splitting: training pool and fixed test set."""

    x_train: Inputs
    y_train: torch.Tensor
    x_test: Inputs
    y_test: torch.Tensor
    task: str  # classification | regression
    num_classes: int  # 1 for regression (one output)
    augment: str | None = None  # training-batch augmentation: None | crop_flip
    val: tuple[Inputs, torch.Tensor] | None = None  # a fixed validation set (pysrc), else carved from the pool
    probe: tuple[Inputs, torch.Tensor] | None = None  # a fixed probe set (pysrc), else carved from the pool

    def limit(self, n: int) -> Pool:
        """At most `n` training and `n` test samples: a fixed random subset (the same for every seed).

        A fixed validation or probe set (`val`, `probe`) stays as it is.
        """
        g = torch.Generator().manual_seed(0)
        keep_train = torch.randperm(len(self.y_train), generator=g)[:n].sort().values
        keep_test = torch.randperm(len(self.y_test), generator=g)[:n].sort().values
        return dataclasses.replace(self, x_train=self.x_train[keep_train], y_train=self.y_train[keep_train],
                                   x_test=self.x_test[keep_test], y_test=self.y_test[keep_test])  # fmt: skip


@dataclass(frozen=True)
class Splits:
    """Tensors of every split; `probe` is held out of `train`."""

    train: tuple[Inputs, torch.Tensor]
    val: tuple[Inputs, torch.Tensor]
    test: tuple[Inputs, torch.Tensor]
    probe: tuple[Inputs, torch.Tensor]
    task: str
    num_classes: int
    augment: str | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return tuple(self.train[0].shape[1:])

    def to(self, device: torch.device) -> Splits:
        """The same splits with every in-memory tensor on `device` (image files stay on disk)."""

        def move(split: tuple[Inputs, torch.Tensor]) -> tuple[Inputs, torch.Tensor]:
            x, y = split
            return (x.to(device) if isinstance(x, torch.Tensor) else x), y.to(device)

        return dataclasses.replace(self, train=move(self.train), val=move(self.val), test=move(self.test),
                                   probe=move(self.probe))  # fmt: skip


def load_pysrc_pool(max_chars: int = 1_000_000, block_size: int = 64, **_: object) -> Pool:
    """Load `pysrc` (``data.text``): next-character windows, with its fixed validation and probe sets."""
    s = load_pysrc_splits(max_chars, block_size)
    return Pool(*s["train"], *s["test"], task="classification", num_classes=VOCAB_SIZE, val=s["val"],
                probe=s["probe"])  # fmt: skip


DATASETS: dict[str, Callable[..., Pool]] = {
    "digits": load_digits_pool,
    "mnist1d": load_mnist1d_pool,
    "friedman": load_friedman_pool,
    "cifar10": load_cifar10_pool,
    "mnist": load_mnist_pool,
    "fashionmnist": load_fashionmnist_pool,
    "tinyimagenet": load_tinyimagenet_pool,
    "imagenet": load_imagenet_pool,
    "pysrc": load_pysrc_pool,
}



def load_pool(name: str, **options: object) -> Pool:
    """Load the data set `name` (see `DATASETS`); repeated calls in a process reuse it."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return _cached_pool(name, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=4)
def _cached_pool(name: str, options: tuple[tuple[str, object], ...]) -> Pool:
    return DATASETS[name](**dict(options))


def make_splits(pool: Pool, seed: int, val_fraction: float, probe_size: int) -> Splits:
    """Split the training pool into train / val / probe, deterministically from `seed`.

    A pool with its own fixed validation and probe sets (`Pool.val`, `Pool.probe`: pysrc, split by file)
    keeps them whatever the seed; its probe set is its first `probe_size` samples.
    """
    if pool.val is not None and pool.probe is not None:
        if probe_size > len(pool.probe[1]):
            raise ValueError(f"causal.probe_size {probe_size} exceeds the {len(pool.probe[1])} samples of the data "
                             "set's fixed probe split (lower causal.probe_size or raise data.max_chars)")  # fmt: skip
        px, py = pool.probe
        return Splits(train=(pool.x_train, pool.y_train), val=pool.val, test=(pool.x_test, pool.y_test),
                      probe=(px[:probe_size], py[:probe_size]), task=pool.task, num_classes=pool.num_classes,
                      augment=pool.augment)  # fmt: skip
    n = len(pool.y_train)
    n_val = round(val_fraction * n)
    if n_val + probe_size >= n:
        raise ValueError(
            f"training pool of {n} samples cannot hold {n_val} validation and {probe_size} probe samples "
            "(lower data.val_fraction or causal.probe_size)"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, probe, train = perm[:n_val], perm[n_val : n_val + probe_size], perm[n_val + probe_size :]
    x, y = pool.x_train, pool.y_train
    return Splits(
        train=(x[train], y[train]),
        val=(x[val], y[val]),
        test=(pool.x_test, pool.y_test),
        probe=(x[probe], y[probe]),
        task=pool.task,
        num_classes=pool.num_classes,
        augment=pool.augment,
    )


__all__ = ["AUGMENTATIONS", "DATASETS", "SHAPES", "TOKEN_DATA", "ImageFiles", "Inputs", "Pool", "Splits", "input_io",
           "iterate", "load_pool", "make_splits", "materialize", "shape_of"]
