"""Image-folder data sets streamed from disk: Tiny-ImageNet and ImageNet.

These do not fit in memory, so their inputs are an `ImageFiles`: a lazy (N, C, H, W)
"tensor" of image paths. It can be indexed like a tensor (``files[idx]`` is a subset, which
is how `make_splits` carves validation and probe sets out of it), and it is read by a
`torch.utils.data.DataLoader` with worker processes and pinned memory (`ImageFiles.loader`).
Training iteration applies the random augmentation; evaluation and `load` the
deterministic transform.

Layouts (``data.root`` holds the data set's own top folder, as torchvision has it):

* ``<root>/tiny-imagenet-200/``: ``wnids.txt``, ``train/<wnid>/images/*.JPEG`` and either
  the downloaded ``val/images/*.JPEG`` + ``val/val_annotations.txt`` (read in place; the
  files are never moved) or a reorganised ``val/<wnid>/[images/]*.JPEG``. The labelled
  validation set serves as the test set (the official test set has no labels).
* ``<root>/imagenet/``: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (ImageFolder
  layout; torchvision's ``ImageNet`` class, or the usual ``valprep.sh``, produces it).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from . import Pool

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TINY_MEAN, TINY_STD = (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


def _transforms(kind: str, size: int, mean: Sequence[float], std: Sequence[float]) -> tuple[Any, Any]:
    """(train, eval) torchvision transforms of PIL images to normalised (3, size, size) tensors."""
    try:
        from torchvision import transforms as T
    except ImportError as e:  # pragma: no cover - the vision extra
        raise ValueError("image-folder data sets need torchvision: pip install 'causalprune[vision]'") from e
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    if kind == "tiny":  # the images are already size × size: pad-4 random crop + flip, as for CIFAR
        train = [T.Resize(size), T.RandomCrop(size, padding=size // 16), T.RandomHorizontalFlip()]
        test = [T.Resize(size)]
    else:  # the standard ImageNet recipe: random-resized crop for training, resize + centre crop (0.875)
        train = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        test = [T.Resize(round(size / 0.875)), T.CenterCrop(size)]
    return T.Compose(train + tail), T.Compose(test + tail)


class _Images(torch.utils.data.Dataset):
    """Map-style data set over (path, label) pairs; picklable for DataLoader workers.

    With a `seed`, sample i's random transform draws from the seed (seed, i) alone, so the
    augmentation does not depend on the number of workers or on which worker reads it.
    """

    def __init__(self, paths: np.ndarray, targets: torch.Tensor, transform: Any, seed: int | None = None) -> None:
        # `paths` is one fixed-width byte array, not a list of str: forked workers reading it
        # touch no per-object reference counts, so 1.28M paths are not copied into each worker.
        self.paths, self.targets, self.transform, self.seed = paths, targets, transform, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        with Image.open(self.paths[i].decode()) as img:
            rgb = img.convert("RGB")
        if self.seed is None:
            return self.transform(rgb), self.targets[i]
        with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from the global RNG
            torch.manual_seed((self.seed * 1_000_003 + i) % 2**63)
            return self.transform(rgb), self.targets[i]


@dataclass(frozen=True)
class ImageFiles:
    """A lazy (N, 3, size, size) image set read from files; index it like a tensor.

    Attributes:
        paths: one image file per sample.
        kind: ``tiny`` (pad-crop + flip augmentation) or ``imagenet`` (random-resized crop).
        size: side of the square images the transforms produce.
        workers: DataLoader worker processes (0: read in the calling process).
    """

    paths: tuple[str, ...]
    kind: str
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    workers: int = 0

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, C, H, W), like a tensor's."""
        return (len(self.paths), 3, self.size, self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: torch.Tensor | slice | Sequence[int]) -> ImageFiles:
        """Return the subset at `index` (an index tensor, list or slice)."""
        if isinstance(index, slice):
            return replace(self, paths=self.paths[index])
        if isinstance(index, torch.Tensor):
            if index.dtype == torch.bool:
                index = torch.nonzero(index).reshape(-1)
            idx = index.reshape(-1).tolist()
        else:
            idx = list(index)
        return replace(self, paths=tuple(self.paths[i] for i in idx))

    def dataset(self, targets: torch.Tensor, train: bool, seed: int | None = None) -> torch.utils.data.Dataset:
        """A map-style data set of (image, label) with the train (seeded by `seed`) or eval transform."""
        train_tf, eval_tf = _transforms(self.kind, self.size, self.mean, self.std)
        return _Images(self._packed, targets, train_tf, seed) if train else _Images(self._packed, targets, eval_tf)

    @functools.cached_property
    def _packed(self) -> np.ndarray:
        """The paths as one (N,) fixed-width bytes array (built once per set)."""
        return np.array([p.encode() for p in self.paths], dtype=np.bytes_)

    def loader(self, targets: torch.Tensor, batch_size: int, *, train: bool, generator: torch.Generator | None,
               pin_memory: bool) -> torch.utils.data.DataLoader:  # fmt: skip
        """DataLoader over the set: shuffled by `generator` when one is given, in order otherwise.

        The training augmentation is seeded per sample from `generator` too (or from the
        global RNG without one), so it is reproducible and independent of `workers`.
        """
        order = torch.randperm(len(self), generator=generator).tolist() if generator is not None else None
        seed = int(torch.randint(2**62, (1,), generator=generator)) if train else None
        return torch.utils.data.DataLoader(
            self.dataset(targets, train, seed), batch_size=batch_size, sampler=order, num_workers=self.workers,
            pin_memory=pin_memory, persistent_workers=False, prefetch_factor=2 if self.workers else None,
        )  # fmt: skip

    def load(self, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Read every image (eval transform) into one (N, 3, size, size) tensor."""
        y = targets if targets is not None else torch.zeros(len(self), dtype=torch.long)
        batches = self.loader(y, 256, train=False, generator=None, pin_memory=False)
        return torch.cat([xb for xb, _ in batches]) if len(self) else torch.empty(0, 3, self.size, self.size)


Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def iterate_files(x: ImageFiles, y: torch.Tensor, batch_size: int, device: torch.device,
                  generator: torch.Generator | None, train: bool) -> Batches:  # fmt: skip
    """Yield (inputs, targets) batches of an `ImageFiles` on `device` (non-blocking from pinned memory)."""
    cuda = device.type == "cuda"
    for xb, yb in x.loader(y, batch_size, train=train, generator=generator, pin_memory=cuda):
        yield xb.to(device, non_blocking=cuda), yb.to(device, non_blocking=cuda)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(split: Path) -> dict[str, list[Path]]:
    """ImageFolder layout: {class folder name: its image files (searched recursively)}."""
    return {d.name: _images_in(d) for d in sorted(split.iterdir()) if d.is_dir()}


def _missing(name: str, where: Path, what: str) -> ValueError:
    return ValueError(f"data set {name} not found: expected {where} ({what}); it cannot be downloaded automatically")


def load_tinyimagenet_pool(root: str = "data", workers: int = 0, image_size: int = 64, **_: object) -> Pool:
    """Tiny-ImageNet-200: 100 000 training and 10 000 labelled validation (= test) images, 200 classes."""
    from . import Pool

    top = Path(root) / "tiny-imagenet-200"
    train_dir, val_dir = top / "train", top / "val"
    if not (top / "wnids.txt").is_file() or not train_dir.is_dir() or not val_dir.is_dir():
        raise _missing("tinyimagenet", top, "wnids.txt, train/ and val/ from tiny-imagenet-200.zip")
    wnids = [w.strip() for w in (top / "wnids.txt").read_text().split() if w.strip()]
    label = {w: i for i, w in enumerate(wnids)}
    train_paths, train_y = [], []
    for wnid in wnids:
        files = _images_in(train_dir / wnid)
        train_paths += files
        train_y += [label[wnid]] * len(files)
    annotations = val_dir / "val_annotations.txt"
    val_paths: list[Path] = []
    val_y: list[int] = []
    if annotations.is_file() and (val_dir / "images").is_dir():  # as downloaded: labels in the annotations
        for line in annotations.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 2:
                continue
            if parts[1] not in label:
                raise ValueError(f"{annotations}: class {parts[1]!r} of {parts[0]} is not in wnids.txt")
            val_paths.append(val_dir / "images" / parts[0])
            val_y.append(label[parts[1]])
        absent = [p for p in val_paths if not p.is_file()]
        if absent:
            raise ValueError(f"{annotations} names {len(absent)} missing image(s), e.g. {absent[0]}")
    else:  # reorganised: val/<wnid>/[images/]*.JPEG (a leftover val_annotations.txt is ignored)
        for wnid, files in _class_folders(val_dir).items():
            if wnid not in label:
                raise ValueError(f"{val_dir / wnid}: class folder is not in wnids.txt")
            val_paths += files
            val_y += [label[wnid]] * len(files)
    if not train_paths or not val_paths:
        raise _missing("tinyimagenet", top, "no training or validation images found")
    files = ImageFiles((), "tiny", image_size, TINY_MEAN, TINY_STD, workers)
    return Pool(
        replace(files, paths=tuple(map(str, train_paths))), torch.tensor(train_y),
        replace(files, paths=tuple(map(str, val_paths))), torch.tensor(val_y),
        "classification", len(wnids),
    )  # fmt: skip


def load_imagenet_pool(root: str = "data", workers: int = 0, image_size: int = 224, **_: object) -> Pool:
    """ImageNet (ILSVRC-2012) in ImageFolder layout: train/ and val/ with one folder per class."""
    from . import Pool

    top = Path(root) / "imagenet"
    if not (top / "train").is_dir() or not (top / "val").is_dir():
        raise _missing("imagenet", top, "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    train, val = _class_folders(top / "train"), _class_folders(top / "val")
    classes = sorted(train)
    extra = sorted(set(val) - set(classes))
    if extra:
        raise ValueError(f"{top / 'val'} has class folders missing from train/: {', '.join(extra[:3])}")
    label = {c: i for i, c in enumerate(classes)}
    if not any(train.values()) or not any(val.values()):
        raise _missing("imagenet", top, "no images in train/ or val/")

    def flat(split: dict[str, list[Path]]) -> tuple[tuple[str, ...], torch.Tensor]:
        pairs = [(str(p), label[c]) for c, files in split.items() for p in files]
        return tuple(p for p, _ in pairs), torch.tensor([c for _, c in pairs])

    (tp, ty), (vp, vy) = flat(train), flat(val)
    files = ImageFiles((), "imagenet", image_size, IMAGENET_MEAN, IMAGENET_STD, workers)
    return Pool(replace(files, paths=tp), ty, replace(files, paths=vp), vy, "classification", len(classes))
