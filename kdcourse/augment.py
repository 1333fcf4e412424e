"""Augmented views of 1-D signals, and a bank of views labelled once by a teacher.

Introduced in notebook 01 (function matching). Beyer et al. 2022, "Knowledge distillation: a good
teacher is patient and consistent" (CVPR), distil on *augmented* inputs and let the teacher label
exactly the view the student sees ("consistent teaching"): every new view is a new input on which
the student can match the teacher's function, not only its labels.

Running the teacher on every batch costs more than training a small student. A *view bank* moves
that cost out of the loop: draw K augmented views of the training set once (`view_bank`), run the
teacher on them once (`kdcourse.training.predict`), and let `ViewBankLoader` hand epoch e the
views number e mod K with their teacher outputs. Teacher and student still see the same view; the
teacher's cost is paid once for all students and seeds instead of once per run.
"""
from __future__ import annotations

import torch

from .utils import as_number

__all__ = ["jitter_1d", "view_bank", "ViewBankLoader"]


def jitter_1d(x: torch.Tensor, *, generator: torch.Generator | None = None, max_shift: int = 6,
              scale: tuple[float, float] = (0.75, 1.25), noise: float = 0.05) -> torch.Tensor:
    """A random view of each signal: circular shift, amplitude scaling and Gaussian noise.

    x: (N, C, L) -> (N, C, L). Signal i becomes a_i * roll(x_i, k_i) + noise * e_i, with k_i drawn
    uniformly from {-max_shift, ..., max_shift}, a_i ~ U(scale) and e_i ~ N(0, 1) per value; one
    draw of k_i and a_i per signal (all channels alike). roll follows `torch.roll`: out[j] = x[(j - k) mod L].
    """
    if not torch.is_tensor(x) or x.dim() != 3:
        raise ValueError(f"jitter_1d takes signals of shape (N, C, L), got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    max_shift, noise = as_number(max_shift, "max_shift", integer=True), as_number(noise, "noise")
    lo, hi = (as_number(s, "scale") for s in scale)
    if max_shift < 0 or noise < 0 or not 0 <= lo <= hi:
        raise ValueError(f"need max_shift >= 0, noise >= 0 and 0 <= scale[0] <= scale[1], got "
                         f"max_shift={max_shift}, noise={noise}, scale={tuple(scale)}")
    n, c, length = x.shape
    k = torch.randint(-max_shift, max_shift + 1, (n, 1, 1), generator=generator)
    idx = (torch.arange(length).view(1, 1, length) - k) % length              # (N, 1, L)
    a = lo + (hi - lo) * torch.rand(n, 1, 1, generator=generator, dtype=x.dtype)
    e = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return a * x.gather(-1, idx.expand(n, c, length)) + noise * e


def view_bank(x: torch.Tensor, n_views: int, *, seed: int = 0, **augment) -> torch.Tensor:
    """K = n_views independent `jitter_1d` views of every signal: (N, C, L) -> (K, N, C, L).

    Drawn with a generator seeded by `seed`, so the bank is reproducible; `augment` is passed to
    `jitter_1d` (max_shift, scale, noise). Memory: K times the training set.
    """
    n_views = as_number(n_views, "n_views", integer=True)
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    g = torch.Generator().manual_seed(as_number(seed, "seed", integer=True))
    return torch.stack([jitter_1d(x, generator=g, **augment) for _ in range(n_views)])


class ViewBankLoader:
    """Mini-batches of a view bank: epoch e uses view e mod K, shuffled with seed + e.

    views (K, N, ...); targets (N,) (the same label for every view of a signal); teacher (K, N, C)
    or None: the teacher's outputs on each view, so a batch ``(x, y, t)`` pairs every view with
    the teacher's output on that very view. Two loaders with the same seed give the same batches
    (as `kdcourse.data.TensorLoader` does), so students compared on a bank stay paired.
    """

    def __init__(self, views: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | None = None, *,
                 batch_size: int = 128, seed: int = 0):
        if views.dim() < 3 or len(targets) != views.shape[1]:
            raise ValueError(f"views must be (K, N, ...) with N = len(targets); got views "
                             f"{tuple(views.shape)} and {len(targets)} targets")
        if teacher is not None and tuple(teacher.shape[:2]) != tuple(views.shape[:2]):
            raise ValueError(f"teacher outputs {tuple(teacher.shape)} must start with the bank's (K, N) = "
                             f"{tuple(views.shape[:2])}: one output per view")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.views, self.targets, self.teacher = views, targets, teacher
        self.batch_size, self.seed, self._epoch = batch_size, seed, 0

    def __len__(self) -> int:
        return -(-self.views.shape[1] // self.batch_size)

    def __iter__(self):
        k = self._epoch % self.views.shape[0]
        order = torch.randperm(self.views.shape[1], generator=torch.Generator().manual_seed(self.seed + self._epoch))
        self._epoch += 1
        x, t = self.views[k], None if self.teacher is None else self.teacher[k]
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield (x[idx], self.targets[idx]) if t is None else (x[idx], self.targets[idx], t[idx])
