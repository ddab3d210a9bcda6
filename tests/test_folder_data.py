"""Tiny-ImageNet and ImageNet from tiny image trees in their real layouts, end to end on CPU."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from causalprune import Mask
from causalprune.cli import main
from causalprune.data import ImageFiles, iterate, load_pool, make_splits, materialize
from causalprune.data.vision import crop_flip

from .conftest import TINY

WNIDS = ["n01443537", "n01629819", "n01641577"]


def _image(path, size, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = np.clip(value * 60 + rng.integers(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def write_tinyimagenet(root, per_class=4, reorganised=False):
    """tiny-imagenet-200/ as downloaded: train/<wnid>/images, val/images + val_annotations.txt."""
    top = root / "tiny-imagenet-200"
    top.mkdir(parents=True)
    (top / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for c, wnid in enumerate(WNIDS):
        for i in range(per_class):
            _image(top / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", (64, 64), c)
        (top / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for j in range(6):  # val labels deliberately not in file order: 2, 1, 0, 2, 1, 0
        wnid = WNIDS[2 - j % 3]
        name = f"val_{j}.JPEG"
        if reorganised:
            _image(top / "val" / wnid / "images" / name, (64, 64), WNIDS.index(wnid))
        else:
            _image(top / "val" / "images" / name, (64, 64), WNIDS.index(wnid))
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    if not reorganised:
        (top / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    else:  # reorganisation scripts move the images but leave the annotations file behind
        (top / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01443537\t0\t0\t63\t63\n")
    (top / "test" / "images").mkdir(parents=True)  # unlabelled; never read
    return top


def write_imagenet(root, per_class=3):
    """imagenet/{train,val}/<wnid>/*.JPEG (ImageFolder), images of assorted sizes."""
    for split, n in (("train", per_class), ("val", 2)):
        for c, wnid in enumerate(WNIDS):
            for i in range(n):
                _image(root / "imagenet" / split / wnid / f"{wnid}_{i}.JPEG", (40 + 7 * i, 30 + 5 * c), c)


@pytest.mark.parametrize("reorganised", [False, True])
def test_tinyimagenet_layouts(tmp_path, reorganised):
    write_tinyimagenet(tmp_path, reorganised=reorganised)
    pool = load_pool("tinyimagenet", root=str(tmp_path), workers=0)
    assert isinstance(pool.x_train, ImageFiles) and pool.num_classes == 3
    assert pool.x_train.shape == (12, 3, 64, 64) and len(pool.x_test) == 6
    assert pool.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # The labels come from val_annotations.txt (or the class folders), not from file order:
    # the images were drawn with brightness ∝ class, so class and mean brightness agree.
    x = materialize(pool.x_test)
    assert x.shape == (6, 3, 64, 64)
    brightness = x.mean(dim=(1, 2, 3))
    order = torch.argsort(brightness)
    assert pool.y_test[order].tolist() == sorted(pool.y_test.tolist())


def test_imagenet_imagefolder_and_transforms(tmp_path):
    write_imagenet(tmp_path)
    pool = load_pool("imagenet", root=str(tmp_path), workers=0, image_size=32)
    assert pool.num_classes == 3 and len(pool.x_train) == 9 and len(pool.x_test) == 6
    assert pool.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    splits = make_splits(pool, seed=0, val_fraction=0.2, probe_size=2)
    assert splits.input_shape == (3, 32, 32)
    assert len(splits.train[0]) + len(splits.val[0]) + len(splits.probe[0]) == 9
    g = torch.Generator().manual_seed(0)
    batches = list(iterate(*splits.train, batch_size=4, device=torch.device("cpu"), generator=g, train=True))
    assert sum(len(yb) for _, yb in batches) == len(splits.train[1])
    assert all(xb.shape[1:] == (3, 32, 32) and xb.dtype == torch.float32 for xb, _ in batches)
    # Eval transform (resize + centre crop) is deterministic; the training one is random.
    a, b = materialize(pool.x_test), materialize(pool.x_test)
    assert torch.equal(a, b)
    t1 = torch.cat([xb for xb, _ in iterate(pool.x_test, pool.y_test, 6, torch.device("cpu"), None, train=True)])
    assert not torch.equal(t1, a)


def test_missing_folders_name_where_to_put_them(tmp_path):
    for name, folder in (("tinyimagenet", "tiny-imagenet-200"), ("imagenet", "imagenet")):
        with pytest.raises(ValueError, match=folder):
            load_pool(name, root=str(tmp_path / "nowhere"))
    top = write_tinyimagenet(tmp_path)
    (top / "val" / "images" / "val_3.JPEG").unlink()
    with pytest.raises(ValueError, match="1 missing image"):
        load_pool("tinyimagenet", root=str(tmp_path), workers=1)


def _config(tmp_path, data, model="lenet5", batch_size=4):
    d = yaml.safe_load(yaml.safe_dump(TINY))
    d["data"] = data
    d["model"] = {"name": model}
    d["train"]["batch_size"] = batch_size
    d["causal"]["probe_size"] = 2
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.parametrize("method", ["causal", "snip"])
def test_tinyimagenet_run_end_to_end(tmp_path, method):
    write_tinyimagenet(tmp_path / "data")
    cfg = _config(tmp_path, {"name": "tinyimagenet", "root": str(tmp_path / "data"), "val_fraction": 0.2,
                             "workers": 0, "image_size": 32})  # fmt: skip
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--set", f"prune.method={method}"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == "tinyimagenet" and abs(summary["sparsity_actual"] - 0.8) < 0.01
    assert 0.0 <= summary["pruned"]["test_accuracy"] <= 1.0


def test_imagenet_run_with_workers_and_dry_run(tmp_path, capsys):
    write_imagenet(tmp_path / "data")
    cfg = _config(tmp_path, {"name": "imagenet", "root": str(tmp_path / "data"), "val_fraction": 0.2,
                             "workers": 2, "image_size": 32}, model="mobilenet_v1", batch_size=5)  # fmt: skip
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--set", "prune.n_iter=1"]) == 0
    assert (tmp_path / "run" / "summary.json").exists()
    capsys.readouterr()
    assert main(["run", str(cfg), "--dry-run", "--set", f"data.root={tmp_path / 'none'}"]) == 2  # data missing
    captured = capsys.readouterr()
    assert "NOT PRESENT" in captured.out and "imagenet" in captured.out and "input (3, 32, 32)" in captured.out
    assert str(tmp_path / "none" / "imagenet") in captured.err


def test_crop_flip_matches_per_sample_crops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 8)
    out = crop_flip(x, g)
    g = torch.Generator().manual_seed(0)  # the same draws, applied one sample at a time
    dy, dx = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        crop = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)


def test_streamed_runs_are_reproducible_with_workers(tmp_path):
    write_tinyimagenet(tmp_path / "data", per_class=6)
    cfg = _config(tmp_path, {"name": "tinyimagenet", "root": str(tmp_path / "data"), "val_fraction": 0.2,
                             "workers": 2, "image_size": 32})  # fmt: skip
    masks = []
    for out in ("a", "b"):
        assert main(["run", str(cfg), "--out", str(tmp_path / out), "--set", "prune.n_iter=1"]) == 0
        masks.append(Mask.load(tmp_path / out / "mask.pt"))
        # the same augmentation draws in the worker processes → the same training → the same mask
    assert list(masks[0]) == list(masks[1]) and all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    a, b = (json.loads((tmp_path / o / "summary.json").read_text())["pruned"] for o in ("a", "b"))
    assert a == b


def test_augmentation_does_not_depend_on_the_worker_count(tmp_path):
    write_imagenet(tmp_path)
    pool = load_pool("imagenet", root=str(tmp_path), workers=0, image_size=32)
    runs = []
    for workers in (0, 1, 2):
        x = dataclasses.replace(pool.x_train, workers=workers)
        g = torch.Generator().manual_seed(7)
        runs.append(torch.cat([xb for xb, _ in iterate(x, pool.y_train, 4, torch.device("cpu"), g, train=True)]))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    g = torch.Generator().manual_seed(8)  # another epoch seed: other crops
    other = torch.cat([xb for xb, _ in iterate(pool.x_train, pool.y_train, 4, torch.device("cpu"), g, train=True)])
    assert not torch.equal(runs[0], other)


def test_image_files_index_like_a_tensor(tmp_path):
    write_imagenet(tmp_path)
    x = load_pool("imagenet", root=str(tmp_path), workers=0).x_train
    mask = torch.zeros(len(x), dtype=torch.bool)
    mask[[1, 4]] = True
    assert x[mask].paths == (x.paths[1], x.paths[4]) and x[torch.tensor(2)].paths == (x.paths[2],)
    assert x[1:3].shape == (2, 3, 224, 224)
