import pytest
import torch

from causalprune.config import config_from_dict


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "digits", "val_fraction": 0.15},
    "model": {"name": "mlp", "widths": [32]},
    "train": {"batch_size": 64, "lr": 0.1, "lr_schedule": "constant"},
    "prune": {"method": "causal", "sparsity": 0.8, "n_pre": 1, "n_iter": 2, "n_prune": 1, "n_post": 1},
    "causal": {"probe_size": 64},
}


@pytest.fixture
def tiny_config():
    """A config that runs Algorithm 1 on digits in about a second."""

    def make(*overrides: str):
        return config_from_dict(TINY, list(overrides))

    return make
