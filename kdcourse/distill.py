"""Distil from a JSON config on one CPU, one GPU, or many GPUs / machines with torchrun (DDP).

    python -m kdcourse.distill --config configs/tiny_mnist1d.json --out runs/tiny
    torchrun --standalone --nproc_per_node=2 -m kdcourse.distill --config configs/tiny_mnist1d.json

It is the course's loop and losses (`kdcourse.training.fit`, `kdcourse.losses.KD`), not a second
engine: under torchrun the student is wrapped in ``DistributedDataParallel``, each process takes
its share (rows ``rank::world_size``) of every global batch, and DDP averages the gradients, so N
processes give the same update as one process with the same *global* batch (``batch_size`` in the
config is the global batch; it must be divisible by the number of processes, and the last partial
batch is dropped). Backend: gloo on CPU, NCCL on GPU (one GPU per process, ``cuda:LOCAL_RANK``).
BatchNorm layers see only their process's rows (use an MLP/LayerNorm student, or accept it).
Teacher outputs can be cached once to disk (`kdcourse.teacher_outputs`), which is right only for
augmentation-free inputs. Rank 0 writes ``student.pt`` and ``summary.json`` into ``--out``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .data import DATASETS, TensorLoader, load_dataset
from .losses import CE, KD
from .models import build_model
from .teacher_outputs import cache_teacher_outputs
from .teachers import get_teacher
from .training import evaluate, fit
from .utils import atomic_write_bytes, data_dir, get_device

__all__ = ["load_config", "ShardedLoader", "run", "main", "CONFIG_KEYS"]

CONFIG_KEYS = {"dataset": dict, "teacher": dict, "student": dict, "loss": dict, "epochs": int,
               "batch_size": int, "lr": float, "seed": int, "cache_teacher_outputs": bool, "amp": bool}
"""Keys of a distillation config and their types; dataset, teacher, student, loss, epochs are required."""
_REQUIRED = ("dataset", "teacher", "student", "loss", "epochs")


def load_config(path_or_dict) -> dict:
    """Read and check a distillation config (a JSON file or a dict); defaults filled in.

    Unknown keys, missing required keys and wrong types raise ValueError naming them.
    Defaults: batch_size 64 (global), lr 1e-3, seed 0, cache_teacher_outputs false, amp false.
    """
    cfg = json.loads(Path(path_or_dict).read_text()) if not isinstance(path_or_dict, dict) else dict(path_or_dict)
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    missing = [k for k in _REQUIRED if k not in cfg]
    if unknown or missing:
        raise ValueError(f"config: unknown keys {unknown}, missing keys {missing}; valid keys: {sorted(CONFIG_KEYS)}")
    cfg = {"batch_size": 64, "lr": 1e-3, "seed": 0, "cache_teacher_outputs": False, "amp": False, **cfg}
    for key, kind in CONFIG_KEYS.items():
        ok = isinstance(cfg[key], kind) and not (kind is int and isinstance(cfg[key], bool))
        if kind is float:
            ok = isinstance(cfg[key], (int, float)) and not isinstance(cfg[key], bool)
        if not ok:
            raise ValueError(f"config: {key!r} must be a {kind.__name__}, got {cfg[key]!r}")
    if cfg["dataset"].get("name") not in DATASETS:
        raise ValueError(f"config: dataset.name must be one of {DATASETS}, got {cfg['dataset'].get('name')!r}")
    if cfg["loss"].get("kind") not in ("kd", "ce"):
        raise ValueError(f"config: loss.kind must be 'kd' or 'ce', got {cfg['loss'].get('kind')!r}")
    return cfg


class ShardedLoader:
    """This process's share of every global batch of `loader`: rows ``rank::world_size``.

    Every process iterates the same global batches (same seed, hence same order), so the shares
    are disjoint and together make up the global batch. Each global batch must hold a multiple
    of `world_size` rows (equal shares keep DDP's gradient average equal to the global mean).
    """

    def __init__(self, loader, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.loader, self.rank, self.world_size = loader, rank, world_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if len(batch[0]) % self.world_size:
                raise ValueError(f"a global batch of {len(batch[0])} rows cannot be split evenly over "
                                 f"{self.world_size} processes: make batch_size a multiple of it")
            yield tuple(t[self.rank::self.world_size] for t in batch)


def _setup(device) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, get_device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = get_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev


def _student(cfg: dict, in_shape, n_classes: int) -> nn.Module:
    s = cfg["student"]
    return build_model(s.get("arch", "mlp"), in_shape, width=s.get("width", 32), depth=s.get("depth", 2),
                       n_classes=n_classes, seed=s.get("seed", 0))


def run(config, *, out: str | Path | None = None, device=None, progress: bool = False) -> dict:
    """Distil a student as the config says, in this process or as one rank of a torchrun job.

    Returns (on every rank) a summary dict: world_size, global batch, per-epoch mean train loss of
    this rank's shares, the student's test accuracy (%), seconds. Rank 0 writes ``student.pt``
    (the state dict) and ``summary.json`` to `out` (default ``data/runs/distill``).
    """
    cfg = load_config(config)
    rank, world, dev = _setup(device)
    if world > 1 and dev.type == "cpu":
        torch.set_num_threads(int(os.environ.get("KDCOURSE_THREADS", "1")))
    t0 = time.perf_counter()
    ds = cfg["dataset"]
    data = load_dataset(ds["name"], n_train=ds.get("n_train"), seed=ds.get("seed", 0))
    teacher = get_teacher(ds["name"], data_seed=ds.get("seed", 0), device=dev, progress=False, **cfg["teacher"])
    tensors = (data.x_train, data.y_train)
    if cfg["cache_teacher_outputs"]:
        tensors += (cache_teacher_outputs(teacher, data.x_train, device=dev),)
    if cfg["batch_size"] % world:
        raise ValueError(f"batch_size {cfg['batch_size']} is not a multiple of the {world} processes")
    loader = ShardedLoader(TensorLoader(*tensors, batch_size=cfg["batch_size"], seed=cfg["seed"], drop_last=True),
                           rank, world)
    student = _student(cfg, data.in_shape, data.n_classes).to(dev)
    model = student
    if world > 1:
        model = nn.parallel.DistributedDataParallel(student, device_ids=[dev.index] if dev.type == "cuda" else None)
    loss = cfg["loss"]
    loss_fn = KD(T=loss.get("T", 4.0), alpha=loss.get("alpha", 0.5)) if loss["kind"] == "kd" else CE()
    hist = fit(model, loader, epochs=cfg["epochs"], teacher=None if cfg["cache_teacher_outputs"] else teacher,
               loss_fn=loss_fn, lr=cfg["lr"], seed=cfg["seed"], device=dev, amp=cfg["amp"],
               progress=progress and rank == 0, desc=f"distill rank {rank}")
    summary = {"world_size": world, "global_batch": cfg["batch_size"], "loss": hist["loss"],
               "test_acc": evaluate(student, data.test_loader(), device=dev),
               "seconds": time.perf_counter() - t0}
    if rank == 0:
        _save(student, summary, Path(out) if out else data_dir() / "runs" / "distill")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _save(student: nn.Module, summary: dict, out: Path) -> None:
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in student.state_dict().items()}, buf)
    atomic_write_bytes(out / "student.pt", buf.getvalue())
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1).encode())


def main(argv=None) -> dict:
    """Command line: ``python -m kdcourse.distill --config FILE [--out DIR] [--device cpu|cuda]``."""
    parser = argparse.ArgumentParser(prog="python -m kdcourse.distill", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON config (see configs/tiny_mnist1d.json)")
    parser.add_argument("--out", default=None, help="folder for student.pt and summary.json (rank 0)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar on rank 0")
    args = parser.parse_args(argv)
    summary = run(args.config, out=args.out, device=args.device, progress=args.progress)
    if summary["world_size"] == 1 or int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: summary[k] for k in ("world_size", "global_batch", "test_acc")}))
    return summary


if __name__ == "__main__":
    main()
