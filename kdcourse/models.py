"""Teacher and student families for 1-D signals (C, L) and images (C, H, W).

Introduced in notebook 00. Every model has the same named parts, so forward hooks can
address them the same way everywhere:

* ``blocks.0``, ``blocks.1``, ... feature blocks (conv-BN-ReLU-pool, or Linear-ReLU);
* ``embed``  the penultimate representation, shape (B, D);
* ``head``   the classifier, logits of shape (B, n_classes).
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from torch import nn

from .utils import as_number

__all__ = ["ConvNet", "MLP", "build_model", "preset", "count_params", "model_size_bytes",
           "check_input", "ARCHS", "ROLES"]

ARCHS = ("cnn", "mlp")
ROLES = ("teacher", "assistant", "student", "student_cnn")


def check_input(x: torch.Tensor, in_shape: tuple[int, ...], model_name: str) -> None:
    """Raise ValueError unless `x` has shape (B, *in_shape)."""
    if x.dim() != len(in_shape) + 1 or tuple(x.shape[1:]) != tuple(in_shape):
        want = "(B, " + ", ".join(map(str, in_shape)) + ")"
        raise ValueError(f"{model_name} expects input of shape {want}, got {tuple(x.shape)}")


class ConvNet(nn.Module):
    """CNN over 1-D signals (C, L) or 2-D images (C, H, W): conv blocks, then embed, then head.

    Block i has ``widths[i]`` channels: 3-wide conv, BatchNorm, ReLU, 2x max-pool.
    Input (B, *in_shape) -> logits (B, n_classes). Used as the course's teachers.
    """

    def __init__(self, in_shape: Sequence[int], *, widths: Sequence[int] = (32, 64),
                 embed_dim: int = 128, n_classes: int = 10):
        super().__init__()
        self.in_shape = tuple(in_shape)
        if len(self.in_shape) not in (2, 3):
            raise ValueError(f"ConvNet takes (C, L) or (C, H, W) inputs, got in_shape={self.in_shape}")
        conv, bn, pool = ((nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d) if len(self.in_shape) == 2
                          else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d))
        layers, c, spatial = [], self.in_shape[0], list(self.in_shape[1:])
        for w in widths:
            if min(spatial) < 2:
                raise ValueError(f"too many blocks ({len(widths)}) for input {self.in_shape}")
            layers.append(nn.Sequential(conv(c, w, 3, padding=1), bn(w), nn.ReLU(), pool(2)))
            c, spatial = w, [s // 2 for s in spatial]
        self.blocks = nn.Sequential(*layers)
        flat = c * int(torch.tensor(spatial).prod())
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(flat, embed_dim), nn.ReLU())
        self.head = nn.Linear(embed_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_shape, type(self).__name__)
        return self.head(self.embed(self.blocks(x)))


class MLP(nn.Module):
    """Multi-layer perceptron on flattened inputs: Linear-ReLU blocks, an embed layer, a head.

    ``hidden=(h1, ..., hk)``: blocks are h1..h(k-1), ``embed`` is the last hidden layer hk.
    Input (B, *in_shape) -> logits (B, n_classes). Used as the course's small students.
    """

    def __init__(self, in_shape: Sequence[int], *, hidden: Sequence[int] = (128,),
                 n_classes: int = 10):
        super().__init__()
        self.in_shape = tuple(in_shape)
        if len(hidden) < 1:
            raise ValueError("MLP needs at least one hidden layer")
        sizes = [int(torch.tensor(self.in_shape).prod()), *hidden]
        self.flatten = nn.Flatten()
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(a, b), nn.ReLU())
                                      for a, b in zip(sizes[:-2], sizes[1:-1])])
        self.embed = nn.Sequential(nn.Linear(sizes[-2], sizes[-1]), nn.ReLU())
        self.head = nn.Linear(sizes[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_shape, type(self).__name__)
        return self.head(self.embed(self.blocks(self.flatten(x))))


def build_model(arch: str, in_shape: Sequence[int], *, width: int = 32, depth: int = 2,
                n_classes: int = 10, seed: int | None = None) -> nn.Module:
    """Build a "cnn" (ConvNet) or "mlp" (MLP) with width/depth knobs.

    cnn: `depth` conv blocks of widths (width, 2*width, 2*width, ...), embed 4*width.
    mlp: `depth` hidden layers of `width` units. `seed` fixes the initial weights, so two
    calls with the same seed give identical models (fair comparisons start there); the
    weights are drawn from a generator seeded for this call only (``torch.random.fork_rng``),
    so the caller's global random state is left untouched. Without a seed the weights come
    from the global generator, as for any ``nn.Module``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    width, depth = as_number(width, "width", integer=True), as_number(depth, "depth", integer=True)
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
    if seed is None:
        return _build(arch, in_shape, width, depth, n_classes)
    seed = as_number(seed, "seed", integer=True)
    with torch.random.fork_rng(devices=[]):   # models are built on the CPU
        torch.random.default_generator.manual_seed(seed)   # = torch.manual_seed(seed) for the CPU
        return _build(arch, in_shape, width, depth, n_classes)


def _build(arch: str, in_shape: Sequence[int], width: int, depth: int, n_classes: int) -> nn.Module:
    if arch == "cnn":
        widths = [width * (2 if i else 1) for i in range(depth)]
        return ConvNet(in_shape, widths=widths, embed_dim=4 * width, n_classes=n_classes)
    return MLP(in_shape, hidden=[width] * depth, n_classes=n_classes)


# Default sizes of each role per dataset: (arch, width, depth). Teachers are CNNs; the
# assistant is a medium CNN; students are a small MLP or a thin CNN.
_PRESETS = {
    "mnist": {"teacher": ("cnn", 16, 2), "assistant": ("cnn", 8, 2),
              "student": ("mlp", 32, 1), "student_cnn": ("cnn", 4, 2)},
    "mnist1d": {"teacher": ("cnn", 32, 3), "assistant": ("cnn", 8, 3),
                "student": ("mlp", 64, 2), "student_cnn": ("cnn", 4, 3)},
    "digits": {"teacher": ("cnn", 16, 2), "assistant": ("cnn", 8, 2),
               "student": ("mlp", 16, 1), "student_cnn": ("cnn", 4, 2)},
}


def preset(role: str, dataset: str) -> dict:
    """Return the keyword arguments of `build_model` for a course role on a dataset.

    >>> preset("teacher", "mnist")
    {'arch': 'cnn', 'width': 16, 'depth': 2}
    """
    if dataset not in _PRESETS:
        raise ValueError(f"no model presets for dataset {dataset!r}; choose one of {tuple(_PRESETS)}")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {ROLES}")
    arch, width, depth = _PRESETS[dataset][role]
    return {"arch": arch, "width": width, "depth": depth}


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) in `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_size_bytes(model: nn.Module) -> int:
    """Size in bytes of the model's state_dict as saved by torch.save (what lands on disk)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes
