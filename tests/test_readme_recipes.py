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


RECIPE_RUN = "runs/demo/causal/p0.9/seed_0"


def _load_recipe(run, tmp_path, monkeypatch, capsys) -> dict:
    """Run the README's loading recipe on the finished run folder `run` (its path put in the recipe)."""
    monkeypatch.chdir(tmp_path)
    block = _block("A finished run's model, back in Python")
    assert RECIPE_RUN in block
    ns: dict = {}
    exec(block.replace(RECIPE_RUN, str(run)), ns)
    ns["printed"] = capsys.readouterr().out
    return ns


def test_loading_recipe_gives_a_weight_runs_model_and_mask(tmp_path, monkeypatch, capsys):
    from causalprune import Mask

    run = tmp_path / "runs" / "w" / "seed_0"
    run_experiment(config_from_dict(TINY, ["prune.method=magnitude"]), run, quiet=True)
    ns = _load_recipe(run, tmp_path, monkeypatch, capsys)
    model, mask = ns["model"], ns["mask"]
    saved = torch.load(run / "model.pt", weights_only=True)
    assert model.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert mask == Mask.load(run / "mask.pt") and not model.training
    assert all((model.get_parameter(n).detach()[~m] == 0).all() for n, m in mask.items())
    assert f"sparsity {mask.sparsity():.3f}" in ns["printed"] and abs(mask.sparsity() - 0.8) < 1e-3


def test_loading_recipe_gives_a_channel_runs_slim_model(tmp_path, monkeypatch, capsys):
    from causalprune import prunable_parameters
    from causalprune.models import build_model

    from .test_structured import CHANNEL

    cfg = config_from_dict(CHANNEL, ["prune.method=magnitude"])
    run = tmp_path / "runs" / "c" / "seed_0"
    summary = run_experiment(cfg, run, quiet=True)
    ns = _load_recipe(run, tmp_path, monkeypatch, capsys)
    model, mask = ns["model"], ns["mask"]
    saved = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())  # the slim network, loaded
    dense = build_model(cfg.model, (64,), 10)
    n_slim = sum(p.numel() for p in model.parameters())
    assert n_slim < sum(p.numel() for p in dense.parameters())
    assert f"{n_slim} parameters" in ns["printed"]
    assert set(mask) == set(prunable_parameters(model)) and all(m.all() for m in mask.values())  # nothing masked
    assert model(torch.zeros(3, 64)).shape == (3, 10)
    assert summary["channels"]["pruned"] > 0


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
