"""Beyond one teacher and one student: data-free synthesis, ensembles, mutual learning. Notebook 09.

* DeepInversion (Yin et al. 2020): optimise random inputs until the teacher's BatchNorm layers
  see the batch statistics they stored during training (`bn_statistics`, `bn_penalty`), the
  teacher predicts the wanted class, and the inputs are smooth (`total_variation`); then
  distil a student on those inputs only (`synthesize`), or on mixes of them that the teacher
  labels (`mix_views`).
* Ensembles (Hinton et al. 2015, section 3): several teachers' mean logits as one teacher (`Ensemble`).
* Deep mutual learning (Zhang et al. 2018): a cohort of students trained together, each also
  matching the others' predictions (`Cohort` + `MutualLoss`, trained with the ordinary `fit`).
"""
from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .cache import read_record, recipe_key, record_path, write_verified
from .losses import _cross_entropy, check_temperature, soft_kl
from .utils import as_number, cache_lock, data_dir, eval_mode

__all__ = ["bn_penalty", "bn_statistics", "total_variation", "random_shift", "synthesize",
           "synthesize_cached", "model_digest", "mix_views",
           "Ensemble", "Cohort", "MutualLoss"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def bn_penalty(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """||mu(x) - running_mean||_2 + ||var(x) - running_var||_2 for the input x (B, C, ...) of `bn`.

    mu and var are the per-channel batch mean and (biased) variance over every dim but C.
    DeepInversion's feature-distribution prior R_feature for one layer (Yin et al. 2020, eq. 4).
    """
    if not isinstance(bn, _BN) or bn.running_mean is None:
        raise TypeError(f"bn_penalty needs a BatchNorm layer that tracks running statistics, got {type(bn).__name__}")
    if x.dim() < 2 or x.shape[1] != bn.num_features:
        raise ValueError(f"input {tuple(x.shape)} does not match {bn}: expected (B, {bn.num_features}, ...)")
    dims = [0, *range(2, x.dim())]
    mean, var = x.mean(dims), x.var(dims, unbiased=False)
    return torch.linalg.vector_norm(mean - bn.running_mean) + torch.linalg.vector_norm(var - bn.running_var)


@contextmanager
def bn_statistics(model: nn.Module) -> Iterator[list]:
    """Inside the block, every forward pass appends `bn_penalty` of each BatchNorm layer to the yielded list.

    ``with bn_statistics(teacher) as penalties: teacher(x)`` -> ``sum(penalties)`` is the BN term.
    ValueError when the model has no BatchNorm layer; the hooks are removed on exit.
    """
    layers = [m for m in model.modules() if isinstance(m, _BN)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer: BN-statistics matching needs one")
    penalties: list = []
    handles = [m.register_forward_hook(lambda mod, inp, out: penalties.append(bn_penalty(inp[0], mod)))
               for m in layers]
    try:
        yield penalties
    finally:
        for h in handles:
            h.remove()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring values along each spatial axis, summed over axes.

    x: (B, C, L) or (B, C, H, W) -> scalar. Zero for a constant input; penalises pixel noise
    (the image prior of DeepInversion, Yin et al. 2020, eq. 3, in its squared form).
    """
    if x.dim() not in (3, 4):
        raise ValueError(f"total_variation takes (B, C, L) or (B, C, H, W), got {tuple(x.shape)}")
    return sum(x.diff(dim=d).pow(2).mean() for d in range(2, x.dim()))


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """x rolled by one random offset in [-max_shift, max_shift] per spatial axis (same for the batch)."""
    if max_shift == 0:
        return x
    dims = list(range(2, x.dim()))
    shifts = torch.randint(-max_shift, max_shift + 1, (len(dims),), generator=generator).tolist()
    return torch.roll(x, shifts=shifts, dims=dims)


def _synthesize_batch(teacher, y, in_shape, *, steps, lr, bn_weight, first_bn_scale, tv_weight, l2_weight, jitter,
                      gen):
    """One batch of DeepInversion: optimise x (len(y), *in_shape) from N(0, 1) noise with Adam."""
    x = torch.randn(len(y), *in_shape, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        xj = random_shift(x, jitter, gen)
        if bn_weight:
            with bn_statistics(teacher) as penalties:
                out = teacher(xj)
            bn_term = torch.stack(penalties).sum() + (first_bn_scale - 1) * penalties[0]   # hooks fire in forward order
        else:
            out, bn_term = teacher(xj), 0.0
        loss = (F.cross_entropy(out, y) + bn_weight * bn_term + tv_weight * total_variation(xj)
                + l2_weight * x.pow(2).mean())
        opt.zero_grad(set_to_none=True)
        x.grad, = torch.autograd.grad(loss, x)   # only the inputs are optimised, never the teacher
        opt.step()
    return x.detach()


def synthesize(teacher: nn.Module, n: int, *, in_shape: Sequence[int], n_classes: int = 10, steps: int = 70,
               batch_size: int = 256, lr: float = 0.2, bn_weight: float = 1.0, first_bn_scale: float = 1.0,
               tv_weight: float = 1e-2, l2_weight: float = 1e-3, jitter: int = 2,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepInversion: `n` inputs (n, *in_shape) and their target classes (n,), balanced over classes.

    Each batch starts from Gaussian noise and takes `steps` Adam steps (lr) on
        CE(teacher(shift(x)), y) + bn_weight * sum_l s_l * bn_penalty_l + tv_weight * TV(x) + l2_weight * mean(x^2),
    with a random shift of up to `jitter` positions per step; s_l = `first_bn_scale` for the first
    BatchNorm layer the input reaches and 1 for the others (the authors' code has the same knob,
    ``first_bn_multiplier``: the first layer's statistics are the closest to the pixels).
    ``bn_weight=0`` is the control without the BN prior. The teacher runs in eval mode (its
    running statistics are the target) and is not changed. Yin et al., "Dreaming to Distill:
    Data-free Knowledge Transfer via DeepInversion", CVPR 2020.
    """
    n, steps = as_number(n, "n", integer=True), as_number(steps, "steps", integer=True)
    batch_size = as_number(batch_size, "batch_size", integer=True)
    if n < 1 or steps < 0 or batch_size < 1:
        raise ValueError(f"need n >= 1, steps >= 0, batch_size >= 1; got n={n}, steps={steps}, batch_size={batch_size}")
    if as_number(first_bn_scale, "first_bn_scale") < 0 or as_number(bn_weight, "bn_weight") < 0:
        raise ValueError(f"bn_weight and first_bn_scale must be >= 0, got {bn_weight} and {first_bn_scale}")
    gen = torch.Generator().manual_seed(as_number(seed, "seed", integer=True))
    y = torch.arange(n) % n_classes
    device = next(teacher.parameters()).device
    xs = []
    with eval_mode(teacher):
        for i in range(0, n, batch_size):
            xs.append(_synthesize_batch(teacher, y[i:i + batch_size].to(device), tuple(in_shape), steps=steps, lr=lr,
                                        bn_weight=bn_weight, first_bn_scale=first_bn_scale, tv_weight=tv_weight,
                                        l2_weight=l2_weight, jitter=jitter, gen=gen).cpu())
    return torch.cat(xs), y


def model_digest(model: nn.Module) -> str:
    """SHA-256 (hex) of a model's state_dict values in order: the identity of a trained teacher."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def synthesize_cached(teacher: nn.Module, n: int, *, cache_dir: str | Path | None = None,
                      **settings) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """`synthesize`, cached like the teachers: returns (x, y, loaded).

    The file name hashes the teacher's weights (`model_digest`), `n` and every setting; the file
    is written atomically with a SHA-256 sidecar, and a corrupt or mismatching file is rebuilt,
    never loaded. A second process asking for the same set waits for the first (`cache_lock`).
    """
    recipe = json.loads(json.dumps({"teacher": model_digest(teacher), "n": int(n),
                                    **{k: settings[k] for k in sorted(settings)}}, default=list))
    path = (Path(cache_dir) if cache_dir else data_dir() / "cache") / f"deepinversion-{recipe_key(recipe)}.pt"
    with cache_lock(path):
        if path.exists() or record_path(path).exists():
            try:
                read_record(path, expect={"recipe": recipe})
                saved = torch.load(path, map_location="cpu", weights_only=True)
                return saved["x"], saved["y"], True
            except (OSError, ValueError, KeyError, RuntimeError, EOFError) as err:
                warnings.warn(f"synthesised set {path.name} is unusable ({err}); rebuilding it", stacklevel=2)
        x, y = synthesize(teacher, n, **settings)
        buf = io.BytesIO()
        torch.save({"x": x, "y": y}, buf)
        write_verified(path, buf.getvalue(), {"recipe": recipe})
    return x, y, False


def mix_views(x: torch.Tensor, n_views: int, *, seed: int = 0) -> torch.Tensor:
    """`n_views` mixup views of unlabelled inputs, stacked: (N, ...) -> (n_views * N, ...).

    View k, row i: lam * x_i + (1 - lam) * x_j with lam ~ U(0, 1) and a partner j from a fresh
    random permutation of the N rows (one lam per row and view). There are no labels to mix: the
    teacher labels each mixed input, so the student matches the teacher's function between the
    inputs too (mixup: Zhang, Cisse, Dauphin & Lopez-Paz, ICLR 2018; "function matching" on mixed
    views: Beyer et al., CVPR 2022). One generator seeded by `seed`: the same views every call.
    """
    n_views = as_number(n_views, "n_views", integer=True)
    if n_views < 1 or len(x) < 2:
        raise ValueError(f"mix_views needs n_views >= 1 and at least 2 inputs, got n_views={n_views}, N={len(x)}")
    g = torch.Generator().manual_seed(as_number(seed, "seed", integer=True))
    views = []
    for _ in range(n_views):
        lam = torch.rand(len(x), *[1] * (x.dim() - 1), generator=g, dtype=x.dtype)
        views.append(lam * x + (1 - lam) * x[torch.randperm(len(x), generator=g)])
    return torch.cat(views)


class Ensemble(nn.Module):
    """Several models as one teacher: the mean of their logits, (B, ...) -> (B, C).

    Averaging logits equals a normalised geometric mean of the members' probabilities
    (Hinton, Vinyals & Dean 2015, section 3 distil an ensemble into one model).
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if len(models) < 1:
            raise ValueError("an Ensemble needs at least one model")
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


class Cohort(nn.Module):
    """Students trained together for deep mutual learning: (B, ...) -> stacked logits (B, K, C).

    Train with ``fit(Cohort(students), loader, loss_fn=MutualLoss(), ...)``; evaluate each
    ``cohort.members[k]`` on its own afterwards.
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if len(models) < 2:
            raise ValueError(f"mutual learning needs at least 2 students, got {len(models)}")
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members], dim=1)


class MutualLoss(nn.Module):
    """Deep mutual learning: sum_k [CE(y, z_k) + T^2 / (K - 1) * sum_{j != k} KL(p_j^T || p_k^T)].

    Input: cohort logits (B, K, C), targets (B,). Each peer's prediction p_j is a fixed target
    (detached) in student k's term, so every student gets only its own loss's gradient, as if
    each were updated separately. Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning", CVPR 2018 (T = 1).
    """

    def __init__(self, T: float = 1.0):
        super().__init__()
        self.T = check_temperature(T)

    def forward(self, student_out, teacher_out=None, targets=None, features=None):
        if student_out.dim() != 3 or student_out.shape[1] < 2:
            raise ValueError(f"MutualLoss needs cohort logits (B, K >= 2, C), got {tuple(student_out.shape)}")
        if targets is None:
            raise ValueError("MutualLoss needs labelled batches")
        k = student_out.shape[1]
        total = 0.0
        for i in range(k):
            z = student_out[:, i]
            peers = sum(soft_kl(z, student_out[:, j].detach(), self.T) for j in range(k) if j != i)
            total = total + _cross_entropy(z, targets) + self.T ** 2 * peers / (k - 1)
        return total
