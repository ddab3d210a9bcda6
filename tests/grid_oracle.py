"""What the executor tests compare: every run's masks and accuracies, read from a grid's run folders."""

import hashlib
import json
from pathlib import Path

import torch
import yaml

from .conftest import TINY

#: the 2 methods × 2 budgets × 2 seeds grid of the executor tests (one thread per run: equal float sums)
GRID = ["--methods", "causal,magnitude", "--sparsity", "0.8,0.9", "--seeds", "0,1", "--set", "train.threads=1"]


def tiny_file(folder: Path) -> Path:
    """Write the TINY config to `folder`/tiny.yaml and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def fingerprint(out: Path) -> dict[str, tuple[dict[str, str], float]]:
    """Return, per run folder under `out` (relative), the sha256 of each mask.pt's tensors and the test accuracy."""
    runs = {}
    for summary in sorted(out.rglob("summary.json")):
        run = summary.parent
        if "_pre" in run.relative_to(out).parts:
            continue
        masks = {}
        for path in sorted(run.rglob("mask.pt")):  # each level's and the final one
            state = torch.load(path, map_location="cpu", weights_only=False)
            tensors = state if isinstance(state, dict) else {"mask": state}
            h = hashlib.sha256()
            for name in sorted(tensors):
                value = tensors[name]
                if isinstance(value, dict):  # {"format": ..., "masks": {name: bool tensor}}
                    for k in sorted(value):
                        h.update(k.encode() + value[k].cpu().numpy().tobytes())
                elif isinstance(value, torch.Tensor):
                    h.update(name.encode() + value.cpu().numpy().tobytes())
            masks[str(path.relative_to(run))] = h.hexdigest()
        accuracy = json.loads(summary.read_text())["pruned"]["test_accuracy"]
        runs[str(run.relative_to(out))] = (masks, accuracy)
    return runs
