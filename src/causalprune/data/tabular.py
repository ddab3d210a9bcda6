"""Small data sets that run offline: scikit-learn's digits, MNIST-1D, Friedman #1."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from . import Pool

TEST_SPLIT_SEED = 0  # fixed: the test set does not move with the run's seed


def _pool(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, task: str, k: int) -> Pool:
    from . import Pool

    ydt = torch.long if task == "classification" else torch.float32
    return Pool(
        torch.as_tensor(x, dtype=torch.float32),
        torch.as_tensor(y, dtype=ydt),
        torch.as_tensor(x_test, dtype=torch.float32),
        torch.as_tensor(y_test, dtype=ydt),
        task,
        k,
    )


def _fixed_test_split(n: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(TEST_SPLIT_SEED).permutation(n)
    n_test = round(test_fraction * n)
    return perm[n_test:], perm[:n_test]


def load_digits_pool(test_fraction: float = 0.2, **_: object) -> Pool:
    """scikit-learn's 8×8 digits (1797 samples, 64 features scaled to [0, 1], 10 classes)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data / 16.0, d.target
    tr, te = _fixed_test_split(len(y), test_fraction)
    return _pool(x[tr], y[tr], x[te], y[te], "classification", 10)


def load_mnist1d_pool(n_samples: int = 5000, **_: object) -> Pool:
    """MNIST-1D (Greydanus 2020), generated offline by the `mnist1d` package.

    Uses the package's standard generation settings (seed 42, 80/20 train/test split,
    sequences of length 40); `n_samples` sets how many are generated.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:  # pragma: no cover - declared dependency
        raise ValueError("data set mnist1d needs the mnist1d package: pip install mnist1d") from e
    args = get_dataset_args()
    args.num_samples = int(n_samples)
    d = make_dataset(args)
    return _pool(d["x"], d["y"], d["x_test"], d["y_test"], "classification", 10)


def load_friedman_pool(n_samples: int = 5000, noise: float = 1.0, test_fraction: float = 0.2, **_: object) -> Pool:
    """Friedman #1 regression (10 features, 5 informative), y standardised on the pool."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=int(n_samples), n_features=10, noise=noise, random_state=TEST_SPLIT_SEED)
    y = (y - y.mean()) / y.std()
    tr, te = _fixed_test_split(len(y), test_fraction)
    return _pool(x[tr], y[tr], x[te], y[te], "regression", 1)
