"""Images per second through the streamed data path (`ImageFiles` + DataLoader), per worker count.

Writes synthetic JPEGs in the real layouts — Tiny-ImageNet (64×64) and ImageNet-sized
(500×375, the ImageNet median) — into a temp folder, then times one shuffled training
epoch (random augmentation) through `causalprune.data.iterate` with 0, 1 and 2 worker
processes. This is decode + transform throughput on the CPU, the bound of an ImageNet or
Tiny-ImageNet run when the GPU is faster. Prints one JSON object as its last line.
`--quick` uses fewer images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from causalprune.data import iterate, load_pool


def _write(folder: Path, n: int, size: tuple[int, int], rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # Smooth random images compress like photos (pure noise would make huge JPEGs).
        small = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.BILINEAR)
        img.save(folder / f"img_{i}.JPEG", format="JPEG", quality=90)


def make_tree(root: Path, name: str, n: int) -> None:
    rng = np.random.default_rng(0)
    if name == "tinyimagenet":
        top = root / "tiny-imagenet-200"
        wnids = ["n0", "n1"]
        (top / "val" / "images").mkdir(parents=True)
        (top / "wnids.txt").write_text("\n".join(wnids))
        for w in wnids:
            _write(top / "train" / w / "images", n // 2, (64, 64), rng)
        _write(top / "val" / "images", 2, (64, 64), rng)
        (top / "val" / "val_annotations.txt").write_text("img_0.JPEG\tn0\nimg_1.JPEG\tn1\n")
    else:
        for split, count in (("train", n // 2), ("val", 1)):
            for w in ("n0", "n1"):
                _write(root / "imagenet" / split / w, count, (500, 375), rng)


def images_per_s(root: Path, name: str, workers: int, batch: int) -> float:
    pool = load_pool(name, root=str(root), workers=workers)
    x, y = pool.x_train, pool.y_train
    t0 = time.perf_counter()
    n = sum(len(yb) for _, yb in iterate(x, y, batch, torch.device("cpu"), torch.Generator().manual_seed(0),
                                         train=True))  # fmt: skip
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images, for a smoke run")
    args = ap.parse_args()
    n = {"tinyimagenet": 400 if args.quick else 4000, "imagenet": 64 if args.quick else 600}
    out: dict = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                 "torch": torch.__version__}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, count in n.items():
            root = Path(tmp) / name
            make_tree(root, name, count)
            out[name] = {"images": count}
            for workers in (0, 1, 2):
                rate = images_per_s(root, name, workers, batch=64)
                out[name][f"workers_{workers}_images_per_s"] = round(rate, 1)
                print(f"{name:13s} workers {workers}: {rate:8.1f} images/s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
