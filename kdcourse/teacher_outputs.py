"""Teacher outputs computed once, cached on disk (memory-mapped, checksummed) and streamed.

Distilling for many epochs runs the frozen teacher on the same inputs again and again. When the
inputs are the same every epoch, its outputs can be computed once, written to a ``.npy`` file and
read back memory-mapped: batches index the file, so a dataset whose outputs do not fit in memory is
streamed from disk, and ``TensorLoader(x, y, outputs)`` hands ``(x, y, teacher_out)`` batches to
`kdcourse.training.fit`, which then skips the teacher's forward pass.

When caching is wrong: the cache is keyed by the teacher's weights and the exact input tensor, so
it is only valid for *augmentation-free* inputs. With random crops, flips, mixup or any per-epoch
view, the teacher must see the same view as the student (run it live: ``fit(..., teacher=...)``);
cached outputs of the clean image would teach the student to map an augmented view onto the clean
view's output. Likewise a teacher with dropout or other randomness in eval mode, or one that is
still being trained (online distillation), cannot be cached.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cache import read_record, record_path, write_record
from .utils import cache_lock, data_dir, eval_mode

__all__ = ["teacher_key", "cache_teacher_outputs", "load_teacher_outputs"]

_VERSION = 1


def _hash_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def teacher_key(teacher: nn.Module, inputs: torch.Tensor | str) -> str:
    """A 16-hex-digit key of a teacher's weights (every parameter and buffer) and its inputs.

    inputs: the (N, ...) tensor the outputs are computed on, hashed byte by byte, or a string
    that names a fixed, augmentation-free dataset (e.g. "mnist1d-train-v1") when hashing it is
    too slow. Any change of a weight or of an input gives another key, hence another cache file.
    """
    h = hashlib.sha256(f"kdcourse-teacher-outputs-v{_VERSION}".encode())
    for name, t in teacher.state_dict().items():
        h.update(name.encode())
        _hash_tensor(h, t)
    if isinstance(inputs, str):
        h.update(b"id:" + inputs.encode())
    elif isinstance(inputs, torch.Tensor):
        _hash_tensor(h, inputs)
    else:
        raise TypeError(f"inputs must be a tensor or a dataset id string, got {type(inputs).__name__}")
    return h.hexdigest()[:16]


def _path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"teacher-outputs-{key}.npy"


@torch.no_grad()
def _write_outputs(teacher: nn.Module, x: torch.Tensor, path: Path, batch_size: int, device) -> None:
    """Run `teacher` on x in batches and write float32 outputs to `path` (.npy), via a temporary file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out = None
    try:
        with eval_mode(teacher):
            for i in range(0, len(x), batch_size):
                y = teacher(x[i:i + batch_size].to(device)).float().cpu().numpy()
                if out is None:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(x), *y.shape[1:]))
                out[i:i + len(y)] = y
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_teacher_outputs(path: str | Path, *, verify: bool = True) -> torch.Tensor:
    """Open cached teacher outputs (N, ...) float32, memory-mapped (rows are read when indexed).

    verify: compare the file's SHA-256 with the one recorded beside it (``.json``); a mismatch
    or a missing record raises ValueError naming the file. The tensor is a copy-on-write view:
    writing to it never changes the file.
    """
    path = Path(path)
    if not path.exists() or not record_path(path).exists():
        raise FileNotFoundError(f"no cached teacher outputs at {path} (and its record {record_path(path).name})")
    if verify:
        read_record(path)
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def cache_teacher_outputs(teacher: nn.Module, x: torch.Tensor, *, batch_size: int = 1000, device=None,
                          cache_dir: str | Path | None = None, dataset_id: str | None = None,
                          verify: bool = True) -> torch.Tensor:
    """The teacher's outputs on x (N, ...), computed once and then read memory-mapped from disk.

    The file ``teacher-outputs-<key>.npy`` (under `cache_dir`, default ``data/cache``) is keyed by
    `teacher_key` (the weights and x, or `dataset_id`), written atomically with its SHA-256 in a
    ``.json`` record, and built under a file lock: several processes (the ranks of a torchrun
    job) call this at once, one computes, the others wait and open the finished file. A corrupt
    file is rebuilt. The teacher runs in eval mode under no_grad, `batch_size` rows at a time on
    `device` (default: the teacher's). Returns (N, *out_shape) float32. Only valid for inputs
    without augmentation: see the module's notes.
    """
    if len(x) == 0:
        raise ValueError("cache_teacher_outputs needs at least one input row")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    param = next(teacher.parameters(), None)
    if device is None:
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    key = teacher_key(teacher, x if dataset_id is None else dataset_id)
    path = _path(Path(cache_dir) if cache_dir else data_dir() / "cache", key)
    with cache_lock(path):
        try:
            return load_teacher_outputs(path, verify=verify)
        except (FileNotFoundError, ValueError, OSError):
            pass                                                         # absent or corrupt: build it
        _write_outputs(teacher, x, path, batch_size, device)
        write_record(path, {"key": key, "rows": len(x), "version": _VERSION, "inputs": dataset_id or "tensor hash"})
    return load_teacher_outputs(path, verify=False)
