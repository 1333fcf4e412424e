"""Train a teacher once, cache it under ``data/cache``, and reuse it. Introduced in notebook 00.

The cache file name holds a hash of everything that determines the teacher (dataset,
architecture, sizes, epochs, seeds, learning rate, batch size). Each checkpoint is written
atomically with a SHA-256 checksum in a sidecar file; a corrupt, stale or mismatching file
is detected, reported and rebuilt, never loaded silently.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from .data import INPUT_SHAPES, load_dataset
from .models import build_model, preset
from .profiles import get_profile
from .training import evaluate, fit
from .utils import atomic_write_bytes, cache_lock, data_dir, get_device, sha256_file

__all__ = ["get_teacher", "teacher_config", "cache_paths"]

_CACHE_VERSION = 1


def teacher_config(dataset: str, *, arch: str | None = None, width: int | None = None,
                   depth: int | None = None, epochs: int | None = None, seed: int = 0,
                   lr: float = 1e-3, batch_size: int = 128, data_seed: int = 0,
                   n_train: int | None = None, profile=None) -> dict:
    """The full recipe of a teacher; unset sizes come from `models.preset` and the profile."""
    if dataset not in INPUT_SHAPES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {tuple(INPUT_SHAPES)}")
    p = preset("teacher", dataset)
    prof = profile or get_profile()
    return {"dataset": dataset, "arch": arch or p["arch"], "width": width or p["width"],
            "depth": depth or p["depth"],
            "epochs": prof.teacher_epochs[dataset] if epochs is None else epochs,
            "seed": seed, "lr": lr, "batch_size": batch_size, "data_seed": data_seed,
            "n_train": n_train, "cache_version": _CACHE_VERSION}


def cache_paths(config: dict, cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(checkpoint path, metadata path) for a teacher recipe."""
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else data_dir() / "cache"
    stem = f"teacher-{config['dataset']}-{config['arch']}{config['width']}x{config['depth']}-{key}"
    return root / f"{stem}.pt", root / f"{stem}.json"


def _load_cached(model: nn.Module, config: dict, ckpt: Path, meta_path: Path) -> dict | None:
    """Load a verified checkpoint into `model`; return its metadata, or None (with a warning)."""
    if not ckpt.exists() and not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("config") != config:
            raise ValueError("its recipe does not match the requested one")
        if sha256_file(ckpt) != meta.get("sha256"):
            raise ValueError("checksum mismatch (file corrupt or changed)")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        return meta
    except (OSError, ValueError, KeyError, RuntimeError, EOFError) as err:
        warnings.warn(f"teacher cache {ckpt.name} is unusable ({err}); retraining it", stacklevel=3)
        return None


def get_teacher(dataset: str, *, arch: str | None = None, width: int | None = None,
                depth: int | None = None, epochs: int | None = None, seed: int = 0,
                lr: float = 1e-3, batch_size: int = 128, data_seed: int = 0,
                n_train: int | None = None, profile=None, cache_dir: str | Path | None = None,
                device=None, progress: bool = True) -> nn.Module:
    """Return a trained teacher for `dataset`, training and caching it on the first call.

    Sizes default to ``preset("teacher", dataset)`` and the profile's ``teacher_epochs``.
    The model comes back frozen: in eval mode and with ``requires_grad=False`` on every
    parameter, because a teacher is a fixed target during distillation (no optimizer step or
    stray gradient may change it, and no autograd graph is kept for it). To fine-tune a copy,
    call ``copy.deepcopy(teacher).requires_grad_(True)``. It carries ``model.cache_info``: a
    dict with ``loaded`` (bool), ``path``, ``test_acc`` (%), ``train_seconds`` and ``seconds``
    (this call). A second call with the same arguments loads the checkpoint instead of training.
    """
    t0 = time.perf_counter()
    config = teacher_config(dataset, arch=arch, width=width, depth=depth, epochs=epochs, seed=seed,
                            lr=lr, batch_size=batch_size, data_seed=data_seed, n_train=n_train,
                            profile=profile)
    ckpt, meta_path = cache_paths(config, cache_dir)
    model = build_model(config["arch"], INPUT_SHAPES[dataset], width=config["width"],
                        depth=config["depth"], seed=seed)
    with cache_lock(ckpt):  # another process training the same teacher: wait for it, then load
        meta, loaded = _load_or_train(model, config, ckpt, meta_path, device=device, progress=progress)
    model.to(get_device(device)).eval()
    model.zero_grad(set_to_none=True)   # no stale gradients from its own training
    for p in model.parameters():
        p.requires_grad_(False)
    model.cache_info = {"loaded": loaded, "path": str(ckpt), "test_acc": meta["test_acc"],
                        "train_seconds": meta["train_seconds"], "seconds": time.perf_counter() - t0}
    return model


def _load_or_train(model: nn.Module, config: dict, ckpt: Path, meta_path: Path, *, device,
                   progress: bool) -> tuple[dict, bool]:
    """Load the verified checkpoint into `model`, or train it and write checkpoint + checksum atomically."""
    meta = _load_cached(model, config, ckpt, meta_path)
    if meta is None:
        dataset, seed, batch_size, lr = config["dataset"], config["seed"], config["batch_size"], config["lr"]
        data_seed, n_train = config["data_seed"], config["n_train"]
        data = load_dataset(dataset, seed=data_seed, n_train=n_train)
        hist = fit(model, data.train_loader(batch_size, seed=seed), epochs=config["epochs"], lr=lr,
                   seed=seed, device=device, progress=progress, desc=f"teacher {dataset}")
        model.cpu()
        meta = {"config": config, "test_acc": evaluate(model, data.test_loader()),
                "train_seconds": hist["seconds"]}
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        atomic_write_bytes(ckpt, buf.getvalue())
        meta["sha256"] = sha256_file(ckpt)
        atomic_write_bytes(meta_path, json.dumps(meta, indent=1).encode())
        return meta, False
    return meta, True
