"""configs/paper: every GPU config has a CPU smoke twin, and each twin runs on tiny real-format data."""

import json
from pathlib import Path

import pytest
import yaml

import causalprune
from causalprune.cli import main
from causalprune.config import load_config

from .test_folder_data import write_imagenet, write_tinyimagenet
from .test_vision_data import _write_cifar

PAPER = Path(causalprune.__file__).parent / "configs" / "paper"
GPU = sorted(p for p in PAPER.glob("*.yaml") if not p.stem.endswith("-smoke") and not p.name.startswith("sweep-"))
SMOKE = sorted(p for p in PAPER.glob("*-smoke.yaml") if not p.name.startswith("sweep-"))


def test_every_table_row_has_a_config():
    rows = {(c.model.name, c.data.name, c.prune.n_iter > 1) for c in map(load_config, GPU)}
    assert rows >= {("resnet20", "cifar10", False), ("mobilenet_v1", "imagenet", False),
                    ("resnet50", "imagenet", False), ("resnet20", "cifar10", True), ("vgg16", "cifar10", True),
                    ("vgg16", "tinyimagenet", True)}  # fmt: skip
    assert len(sorted(PAPER.glob("sweep-fig3-n*.yaml"))) == 3  # Fig. 3: N_pre, N_iter, N_prune


@pytest.mark.parametrize("path", GPU, ids=lambda p: p.stem)
def test_gpu_config_has_a_smoke_twin(path):
    gpu, smoke = load_config(path), load_config(path.with_name(f"{path.stem}-smoke.yaml"))
    assert (smoke.model, smoke.data.name, smoke.prune.method, smoke.prune.sparsity, smoke.prune.speedup,
            smoke.prune.granularity) == (gpu.model, gpu.data.name, gpu.prune.method, gpu.prune.sparsity,
                                         gpu.prune.speedup, gpu.prune.granularity)  # fmt: skip
    assert smoke.train.device == "cpu" and smoke.data.max_samples and smoke.total_epochs() <= 5
    assert gpu.train.device == "auto" and gpu.train.amp


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    _write_cifar(root)
    write_tinyimagenet(root, per_class=6)
    write_imagenet(root, per_class=6)
    return root


@pytest.mark.parametrize("path", SMOKE, ids=lambda p: p.stem)
def test_smoke_config_runs_end_to_end(path, data_root, tmp_path):
    sets = [f"data.root={data_root}", "model.pretrained=null", "causal.probe_size=4", "train.batch_size=4",
            "data.val_fraction=0.2"]  # fmt: skip
    assert main(["run", str(path), "--out", str(tmp_path / "run"), *[a for s in sets for a in ("--set", s)]]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    cfg = yaml.safe_load(path.read_text())
    if "speedup" in cfg["prune"]:  # a MACs budget, hit within 3 %, and the slim network measured
        assert abs(summary["efficiency"]["speedup_macs"] / cfg["prune"]["speedup"] - 1) <= 0.03
        assert summary["efficiency"]["speedup_measured"] > 0
    else:
        assert abs(summary["sparsity_actual"] - cfg["prune"]["sparsity"]) < 0.01
