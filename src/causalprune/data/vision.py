"""Image data sets held in memory: CIFAR-10 (python pickles), MNIST and Fashion-MNIST (idx files).

`data.root` is the folder that holds the data set's own top folder, as torchvision has it:
``<root>/cifar-10-batches-py/``, ``<root>/MNIST/raw/``, ``<root>/FashionMNIST/raw/``.
With ``data.download: true`` torchvision fetches them there. Inputs are normalised with
the usual per-channel statistics; CIFAR-10 training batches are augmented on the fly
(pad-4 random crop + horizontal flip, `crop_flip`) on whatever device they live on.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from . import Pool

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _missing(name: str, where: Path, how: str) -> ValueError:
    return ValueError(f"data set {name} not found: expected {where} ({how}, or set data.download: true)")


def load_cifar10_pool(root: str = "data", download: bool = False, **_: object) -> Pool:
    """CIFAR-10 from the python pickles: 50 000 training and 10 000 test images, 10 classes."""
    from . import Pool

    folder = Path(root) / "cifar-10-batches-py"
    if download and not folder.is_dir():
        from torchvision.datasets import CIFAR10

        CIFAR10(root, train=True, download=True)
    files = [folder / f"data_batch_{i}" for i in range(1, 6)] + [folder / "test_batch"]
    if not all(f.is_file() for f in files):
        raise _missing("cifar10", folder, "data_batch_1..5 and test_batch from cifar-10-python.tar.gz")

    def read(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for p in paths:
            with open(p, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        x = torch.from_numpy(np.concatenate(xs)).float().div_(255.0)
        mean, std = torch.tensor(CIFAR_MEAN)[:, None, None], torch.tensor(CIFAR_STD)[:, None, None]
        return (x - mean) / std, torch.from_numpy(np.concatenate(ys))

    x, y = read(files[:5])
    xt, yt = read(files[5:])
    return Pool(x, y, xt, yt, "classification", 10, augment="crop_flip")


def _load_mnist_like(name: str, cls_name: str, mean: float, std: float, root: str, download: bool) -> Pool:
    from . import Pool

    try:
        import torchvision.datasets as tvd
    except ImportError as e:  # pragma: no cover - the vision extra
        raise ValueError(f"data set {name} needs torchvision: pip install 'causalprune[vision]'") from e
    cls = getattr(tvd, cls_name)
    try:
        train, test = cls(root, train=True, download=download), cls(root, train=False, download=download)
    except RuntimeError:
        raise _missing(name, Path(root) / cls_name / "raw", "the four *-idx*-ubyte files") from None

    def prep(ds: object) -> tuple[torch.Tensor, torch.Tensor]:
        x = ds.data.float().div_(255.0).sub_(mean).div_(std)[:, None]  # type: ignore[attr-defined]
        return x, ds.targets.long()  # type: ignore[attr-defined]

    return Pool(*prep(train), *prep(test), "classification", 10)


def load_mnist_pool(root: str = "data", download: bool = False, **_: object) -> Pool:
    """MNIST: 60 000 / 10 000 images of 1×28×28, 10 classes."""
    return _load_mnist_like("mnist", "MNIST", 0.1307, 0.3081, root, download)


def load_fashionmnist_pool(root: str = "data", download: bool = False, **_: object) -> Pool:
    """Fashion-MNIST: 60 000 / 10 000 images of 1×28×28, 10 classes."""
    return _load_mnist_like("fashionmnist", "FashionMNIST", 0.2860, 0.3530, root, download)


def crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pad-4 random crop and random horizontal flip of an (N, C, H, W) batch, on its device.

    One gather for the whole batch (no per-sample loop, so it is cheap on a GPU); the
    random offsets and flips come from the CPU `generator`.
    """
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))  # (N, C, H+8, W+8)
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h)  # (N, H)
    cols = dx[:, None] + torch.arange(w)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    rows, cols = rows.to(x.device, non_blocking=True), cols.to(x.device, non_blocking=True)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]  # (N, C, H, W)
