"""Image data sets from tiny files in their real formats, end to end on CPU."""

import pickle
import struct

import numpy as np
import pytest
import torch

from causalprune.cli import main
from causalprune.data import load_pool
from causalprune.data.vision import crop_flip

from .conftest import TINY


def _write_cifar(root, n_per_batch=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
             b"labels": rng.integers(0, 10, n_per_batch).tolist(), b"batch_label": name.encode()}  # fmt: skip
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)


def _write_mnist(root, cls="MNIST", n=40):
    raw = root / cls / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, count in (("train", n), ("t10k", n // 2)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.tobytes())


def test_cifar10_from_pickles(tmp_path):
    _write_cifar(tmp_path)
    pool = load_pool("cifar10", root=str(tmp_path))
    assert pool.x_train.shape == (100, 3, 32, 32) and pool.x_test.shape == (20, 3, 32, 32)
    assert pool.augment == "crop_flip" and pool.num_classes == 10
    assert abs(float(pool.x_train.mean())) < 0.5  # normalised


@pytest.mark.parametrize("name,cls", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_like_from_idx_files(tmp_path, name, cls):
    _write_mnist(tmp_path, cls)
    pool = load_pool(name, root=str(tmp_path))
    assert pool.x_train.shape == (40, 1, 28, 28) and pool.x_test.shape == (20, 1, 28, 28)


def test_crop_flip_keeps_shapes_and_content():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = crop_flip(x, g)
    assert out.shape == x.shape
    # Every output row is a (possibly flipped, shifted) piece of the zero-padded input.
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_cifar_run_end_to_end_and_missing_data(tmp_path, capsys):
    _write_cifar(tmp_path / "data")
    import yaml

    d = yaml.safe_load(yaml.safe_dump(TINY))
    d["data"] = {"name": "cifar10", "root": str(tmp_path / "data"), "val_fraction": 0.1}
    d["model"] = {"name": "lenet5"}
    d["causal"]["probe_size"] = 16
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(d))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "summary.json").exists()
    assert main(["run", str(cfg), "--out", str(tmp_path / "run2"), "--set", f"data.root={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cifar-10-batches-py" in err[0] and "data.download" in err[0]
    assert not (tmp_path / "run2").exists()
