"""Train a teacher once, cache it under ``data/cache``, and reuse it. Introduced in notebook 00.

The cache file name holds a hash of everything that determines the teacher (dataset,
architecture, sizes, epochs, seeds, learning rate, batch size). Each checkpoint is written
atomically with a SHA-256 checksum in a sidecar file; a corrupt, stale or mismatching file
is detected, reported and rebuilt, never loaded silently.
"""
from __future__ import annotations

import time
from pathlib import Path

from torch import nn

from .cache import load_state, recipe_key, save_state
from .chains import SCHEDULES, cosine_schedule
from .data import INPUT_SHAPES, load_dataset
from .models import build_model, preset
from .profiles import get_profile
from .training import evaluate, fit
from .utils import cache_lock, data_dir, get_device

__all__ = ["get_teacher", "teacher_config", "cache_paths"]

_CACHE_VERSION = 1


def teacher_config(dataset: str, *, arch: str | None = None, width: int | None = None,
                   depth: int | None = None, epochs: int | None = None, seed: int = 0,
                   lr: float = 1e-3, batch_size: int = 128, data_seed: int = 0,
                   n_train: int | None = None, profile=None, schedule: str = "constant") -> dict:
    """The full recipe of a teacher; unset sizes come from `models.preset` and the profile.

    schedule: "constant" (Adam at `lr`) or "cosine" (`chains.cosine_schedule` over all steps). The key
    enters the recipe only when it is not "constant", so the recipes (and cache files) of constant-lr
    teachers are those written before schedules existed.
    """
    if dataset not in INPUT_SHAPES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {tuple(INPUT_SHAPES)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    p = preset("teacher", dataset)
    prof = profile or get_profile()
    config = {"dataset": dataset, "arch": arch or p["arch"], "width": width or p["width"],
              "depth": depth or p["depth"],
              "epochs": prof.teacher_epochs[dataset] if epochs is None else epochs,
              "seed": seed, "lr": lr, "batch_size": batch_size, "data_seed": data_seed,
              "n_train": n_train, "cache_version": _CACHE_VERSION}
    if schedule != "constant":
        config["schedule"] = schedule
    return config


def cache_paths(config: dict, cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(checkpoint path, metadata path) for a teacher recipe."""
    key = recipe_key(config)
    root = Path(cache_dir) if cache_dir else data_dir() / "cache"
    stem = f"teacher-{config['dataset']}-{config['arch']}{config['width']}x{config['depth']}-{key}"
    return root / f"{stem}.pt", root / f"{stem}.json"


def get_teacher(dataset: str, *, arch: str | None = None, width: int | None = None,
                depth: int | None = None, epochs: int | None = None, seed: int = 0,
                lr: float = 1e-3, batch_size: int = 128, data_seed: int = 0,
                n_train: int | None = None, profile=None, cache_dir: str | Path | None = None,
                device=None, progress: bool = True, schedule: str = "constant") -> nn.Module:
    """Return a trained teacher for `dataset`, training and caching it on the first call.

    Sizes default to ``preset("teacher", dataset)`` and the profile's ``teacher_epochs``; the learning
    rate is constant unless ``schedule="cosine"`` (see `teacher_config`).
    The model comes back frozen: in eval mode and with ``requires_grad=False`` on every
    parameter, because a teacher is a fixed target during distillation (no optimizer step or
    stray gradient may change it, and no autograd graph is kept for it). To fine-tune a copy,
    call ``copy.deepcopy(teacher).requires_grad_(True)``. It carries ``model.cache_info``: a
    dict with ``loaded`` (bool), ``path``, ``test_acc`` (%), ``train_seconds``, ``seconds``
    (this call) and ``test_curve``: the test accuracy (%) after each training epoch, to check
    that the teacher plateaued (None for a checkpoint cached before curves were recorded).
    A second call with the same arguments loads the checkpoint instead of training.
    """
    t0 = time.perf_counter()
    config = teacher_config(dataset, arch=arch, width=width, depth=depth, epochs=epochs, seed=seed,
                            lr=lr, batch_size=batch_size, data_seed=data_seed, n_train=n_train,
                            profile=profile, schedule=schedule)
    ckpt, meta_path = cache_paths(config, cache_dir)
    model = build_model(config["arch"], INPUT_SHAPES[dataset], width=config["width"],
                        depth=config["depth"], seed=seed)
    with cache_lock(ckpt):  # another process training the same teacher: wait for it, then load
        meta, loaded = _load_or_train(model, config, ckpt, meta_path, device=device, progress=progress)
    model.to(get_device(device)).eval()
    model.zero_grad(set_to_none=True)   # no stale gradients from its own training
    for p in model.parameters():
        p.requires_grad_(False)
    curve = meta.get("test_curve")   # absent from checkpoints written before curves were recorded
    model.cache_info = {"loaded": loaded, "path": str(ckpt), "test_acc": meta["test_acc"],
                        "train_seconds": meta["train_seconds"], "seconds": time.perf_counter() - t0,
                        "test_curve": tuple(curve) if curve is not None else None}
    return model


def _load_or_train(model: nn.Module, config: dict, ckpt: Path, meta_path: Path, *, device,
                   progress: bool) -> tuple[dict, bool]:
    """Load the verified checkpoint into `model`, or train it and write checkpoint + checksum atomically."""
    meta = load_state(model, ckpt, expect={"config": config}, what="teacher cache", then="retraining it")
    if meta is None:
        dataset, seed, batch_size, lr = config["dataset"], config["seed"], config["batch_size"], config["lr"]
        data_seed, n_train = config["data_seed"], config["n_train"]
        data = load_dataset(dataset, seed=data_seed, n_train=n_train)
        loader = data.train_loader(batch_size, seed=seed)
        sched = cosine_schedule(config["epochs"] * len(loader)) if config.get("schedule") == "cosine" else None
        hist = fit(model, loader, epochs=config["epochs"], lr=lr, scheduler=sched,
                   seed=seed, device=device, progress=progress, desc=f"teacher {dataset}",
                   test=data.test_loader())   # evaluated in eval mode after each epoch: training unchanged
        model.cpu()
        meta = {"config": config, "test_acc": evaluate(model, data.test_loader()),
                "train_seconds": hist["seconds"], "test_curve": hist["test_acc"]}
        return save_state(model, ckpt, meta), False
    return meta, True
