"""Built-in data: bundled (digits), generated (mnist1d, synthetic), never downloaded.

Every loader returns a :class:`Dataset`: float32 inputs, int64 labels (or
float targets for regression), a fixed train/test split and a name.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


@dataclass
class Dataset:
    """A train/test split held in memory."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
            f"num_classes={self.num_classes})"
        )


def cache_dir() -> Path:
    """Where generated data is cached: ``$NORMLAB_CACHE`` or ``$XDG_CACHE_HOME/normlab`` (~/.cache/normlab)."""
    root = os.environ.get("NORMLAB_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "normlab"


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def digits(image: bool = False, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 samples, 10 classes).

    Pixels scaled to [0, 1]. ``image=True`` gives ``(N, 1, 8, 8)``, else ``(N, 64)``.
    The split is a seeded permutation (``test_fraction`` of the samples for test).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    if image:
        x = x.reshape(-1, 1, 8, 8)
    xtr, ytr, xte, yte = _split(x, y, test_fraction, seed)
    return Dataset("digits", *map(torch.from_numpy, (xtr, ytr, xte, yte)), num_classes=10, info={"seed": seed})


def mnist1d(channel_dim: bool = False, regenerate: bool = False) -> Dataset:
    """MNIST-1D (Greydanus 2020): 4000 train / 1000 test signals of length 40, 10 classes.

    Generated offline with the mnist1d package's ``make_dataset(get_dataset_args())``
    (its downloader is never used), then cached as ``mnist1d.npz`` under
    :func:`cache_dir`. The global NumPy and Python ``random`` RNGs, which the
    generator reseeds, are restored afterwards. ``channel_dim=True`` gives
    ``(N, 1, 40)`` for 1-D CNNs.
    """
    path = cache_dir() / "mnist1d.npz"
    if regenerate or not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        state, py_state = np.random.get_state(), random.getstate()
        try:
            d = make_dataset(get_dataset_args())  # reseeds both NumPy's and Python's global RNGs
        finally:
            np.random.set_state(state)
            random.setstate(py_state)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
        os.replace(tmp, path)
    with np.load(path) as z:
        arrays = [z["x"].astype(np.float32), z["y"].astype(np.int64), z["x_test"].astype(np.float32)]
        arrays.append(z["y_test"].astype(np.int64))
    if channel_dim:
        arrays[0], arrays[2] = arrays[0][:, None, :], arrays[2][:, None, :]
    digest = hashlib.sha256(arrays[0].tobytes()).hexdigest()[:12]
    return Dataset("mnist1d", *map(torch.from_numpy, arrays), num_classes=10, info={"sha256_x_train": digest})


def gaussian_covariance(dim: int, spectrum: Tensor, seed: int = 0, dtype=torch.float64) -> Tensor:
    """A covariance ``Q diag(spectrum) Q^T`` with a seeded random rotation Q."""
    spectrum = torch.as_tensor(spectrum, dtype=dtype)
    if spectrum.shape != (dim,):
        raise ValueError(f"spectrum must have shape ({dim},), got {tuple(spectrum.shape)}")
    if (spectrum <= 0).any():
        raise ValueError("spectrum must be positive")
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))  # a Haar-distributed rotation
    return (q * spectrum) @ q.T


def log_spectrum(dim: int, condition_number: float) -> Tensor:
    """Eigenvalues spaced geometrically from 1 down to 1/condition_number."""
    if condition_number < 1:
        raise ValueError(f"condition_number must be >= 1, got {condition_number}")
    return torch.logspace(0.0, -float(np.log10(condition_number)), dim, dtype=torch.float64)


def synthetic_regression(
    n: int = 1000,
    dim: int = 20,
    condition_number: float = 100.0,
    noise: float = 0.0,
    mean: float = 0.0,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Dataset:
    """Linear least squares data: x ~ N(mean, Sigma) with kappa(Sigma) = condition_number, y = x w* + noise.

    The inputs' covariance has eigenvalues geometric between 1 and 1/kappa in
    a random basis; float64 (it is meant for exact conditioning experiments).
    """
    cov = gaussian_covariance(dim, log_spectrum(dim, condition_number), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    chol = torch.linalg.cholesky(cov)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64) @ chol.T + mean
    w = torch.randn(dim, generator=gen, dtype=torch.float64)
    y = x @ w + noise * torch.randn(n, generator=gen, dtype=torch.float64)
    xtr, ytr, xte, yte = _split(x.numpy(), y.numpy(), test_fraction, seed)
    return Dataset(
        "synthetic-regression",
        *map(torch.from_numpy, (xtr, ytr, xte, yte)),
        info={"covariance": cov, "w_star": w, "condition_number": condition_number, "seed": seed},
    )


def teacher_classification(
    n: int = 2000,
    dim: int = 20,
    num_classes: int = 10,
    hidden: int = 64,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Dataset:
    """Gaussian inputs labelled by a random one-hidden-layer ReLU teacher (argmax of its logits)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen)
    w1 = torch.randn(dim, hidden, generator=gen) / dim**0.5
    w2 = torch.randn(hidden, num_classes, generator=gen) / hidden**0.5
    y = (torch.relu(x @ w1) @ w2).argmax(1)
    xtr, ytr, xte, yte = _split(x.numpy(), y.numpy(), test_fraction, seed)
    return Dataset("synthetic-teacher", *map(torch.from_numpy, (xtr, ytr, xte, yte)), num_classes=num_classes)
