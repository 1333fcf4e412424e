"""Small helpers used everywhere: seeding, devices, threads, atomic files, showing source.

Introduced in notebook 00 (orientation). Nothing here runs on import.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Real
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "seed_everything", "get_device", "set_threads", "show_source",
    "atomic_write_bytes", "sha256_file", "data_dir", "eval_mode", "as_number", "cache_lock",
]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random generators (CPU and CUDA) with `seed`."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_device(device: str | torch.device | None = None) -> torch.device:
    """Return `device` as a torch.device; None picks "cuda" when available, else "cpu".

    The environment variable KDCOURSE_DEVICE overrides the automatic choice.
    """
    if device is None:
        device = os.environ.get("KDCOURSE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False")
    return device


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op CPU threads to `n` (None: all cores, at most 4) and return it.

    On a 2-core laptop two threads is fastest; more threads than cores slows training badly.
    """
    if n is None:
        n = min(os.cpu_count() or 1, 4)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n


def show_source(obj) -> None:
    """Display the source code of a function or class: as Markdown in a notebook, printed elsewhere."""
    src = inspect.getsource(obj)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython ships with the course environment
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(Markdown(f"```python\n{src}```"))
    else:
        print(src)


def data_dir() -> Path:
    """Return the course data folder: $KDCOURSE_DATA, or `data/` beside the package."""
    env = os.environ.get("KDCOURSE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "data"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file in the same folder, then rename).

    A crash mid-write leaves the old file (or none), never a truncated one. Raises
    PermissionError naming the folder when it is not writable.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise PermissionError(
            f"cannot write to cache folder {path.parent} ({err.strerror}); "
            "set KDCOURSE_DATA to a writable folder") from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def eval_mode(*models) -> Iterator[None]:
    """Put `models` (nn.Modules; None entries ignored) in eval mode inside the block, then restore.

    Each submodule gets back its own previous ``training`` flag, even after an error, so a helper
    that evaluates a model never leaves a training run's model switched to eval (or vice versa).
    """
    saved = [(m, m.training) for model in models if model is not None for m in model.modules()]
    try:
        for model in models:
            if model is not None:
                model.eval()
        yield
    finally:
        for m, was_training in saved:
            m.training = was_training


def as_number(value, name: str, *, integer: bool = False):
    """Return `value` as a Python float (or int with `integer=True`), or raise a clear TypeError.

    Accepts Python numbers, NumPy scalars (``np.int64(8)``) and 0-d / one-element tensors
    (``torch.tensor(4.)``); rejects bools, strings and tensors with more than one element.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    elif isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Real, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if integer:
        if float(value) != int(value):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


@contextmanager
def cache_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` inside the block (POSIX ``flock``; no-op elsewhere).

    Two processes that build the same cache entry at once (two notebooks, two test workers) then
    take turns: the second waits, finds the finished file and loads it instead of training again.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, atomic writes still protect the file
        yield
        return
    lock = Path(f"{path}.lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock, "a")
    except OSError as err:
        raise PermissionError(f"cannot write to cache folder {lock.parent} ({err.strerror}); "
                              "set KDCOURSE_DATA to a writable folder") from err
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
