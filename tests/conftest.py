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


def stop_in_round(monkeypatch, method: str, field: str, round_: int = 2) -> None:
    """Make `method`'s scoring function `field` (``fn`` or ``channel_fn``) raise KeyboardInterrupt in round
    `round_`: the process stops between two rounds' files, as a killed run would. Undo with
    ``monkeypatch.undo()``."""
    from causalprune import criteria

    original = criteria.METHODS[method]
    kind = {"fn": "weight", "channel_fn": "channel"}[field]
    score = original.scorer(kind)
    calls = {"n": 0}

    def stops(inp):
        calls["n"] += 1
        if calls["n"] == round_:
            raise KeyboardInterrupt
        return score(inp)

    monkeypatch.setitem(criteria.METHODS, method, original.with_scorer(kind, stops))
