"""The README's library recipes run as written (the code blocks are taken from README.md)."""

import re
from pathlib import Path

import torch
from torch import nn

from causalprune.config import config_from_dict
from causalprune.data import load_pool
from causalprune.experiment import run_experiment

from .conftest import TINY

README = Path(__file__).parents[1] / "README.md"


def _block(after: str) -> str:
    text = README.read_text()
    start = text.index(after)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_iterative_recipe_reaches_the_sparsity_with_rewinding():
    pool = load_pool("digits")
    x, y = pool.x_train[:512].float(), pool.y_train[:512]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    ns = {"model": model, "loss_fn": nn.CrossEntropyLoss(),
          "loader": [(x[i : i + 64], y[i : i + 64]) for i in range(0, 512, 64)]}  # fmt: skip
    exec(_block("Algorithm 1 by hand"), ns)
    mask = ns["mask"]
    assert abs(mask.sparsity() - 0.9) < 1e-3
    for name, m in mask.items():
        assert (model.get_parameter(name).detach()[~m] == 0).all()
    theta_pre = ns["theta_pre"]
    alive = mask["1.weight"]
    assert torch.equal(model.get_parameter("1.weight").detach()[alive], theta_pre["1.weight"][alive])  # rewound


def test_loading_a_finished_run_recipe(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "demo" / "causal" / "p0.9" / "seed_0"
    run_experiment(config_from_dict(TINY, ["prune.method=magnitude"]), run, quiet=True)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(_block("A finished run's model, back in Python"), ns)
    saved = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in ns["model"].state_dict().items())
    mask = ns["mask"]
    assert all((ns["model"].get_parameter(n).detach()[~m] == 0).all() for n, m in mask.items())


def test_channel_recipe_slims_a_users_model_to_half_its_macs():
    from causalprune.metrics import macs_and_params

    pool = load_pool("digits")
    x, y = pool.x_train[:512].float().reshape(-1, 1, 8, 8), pool.y_train[:512]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32 * 16, 10))  # fmt: skip
    dense_macs = macs_and_params(model, (1, 8, 8))[0]
    ns = {"model": model, "loss_fn": nn.CrossEntropyLoss(), "input_shape": (1, 8, 8),
          "optimizer": torch.optim.SGD(model.parameters(), lr=0.05),
          "loader": [(x[i : i + 16], y[i : i + 16]) for i in range(0, 512, 16)]}  # fmt: skip
    exec(_block("Channels instead of weights"), ns)
    slim = ns["slim"]
    assert slim(x[:4]).shape == (4, 10)
    assert abs(dense_macs / macs_and_params(slim, (1, 8, 8))[0] / 2 - 1) <= 0.03
