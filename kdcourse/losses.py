"""Distillation losses. Introduced in notebook 01 (soft labels and Hinton KD).

Every loss object used with `kdcourse.training.fit` is an ``nn.Module`` called as
``loss(student_out, teacher_out, targets, features)``; ``features`` is a `Features` pair of
dicts (layer name -> captured tensor) for the student and the teacher. Losses with
trainable parts (e.g. a FitNets regressor) are trained together with the student.

Convention for ``alpha`` throughout the course: the weight of the hard-label loss,

    L = alpha * CE(y, student) + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T),

so ``alpha=1`` is plain cross-entropy and ``alpha=0`` is pure distillation.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .utils import as_number

__all__ = ["Features", "CE", "KD", "kd_loss", "soft_kl", "soft_cross_entropy", "softmax_with_temperature",
           "temperature_schedule", "class_bias_for_share", "check_logits", "check_temperature"]


class Features(NamedTuple):
    """Features captured by forward hooks during one step: name -> tensor, per model."""
    student: dict
    teacher: dict


def check_temperature(T: float) -> float:
    """Return T as a float; TypeError unless a number, ValueError unless finite and > 0.

    Python numbers, NumPy scalars and one-element tensors are accepted; bools and strings are not.
    """
    value = as_number(T, "temperature T")
    if not (0 < value < float("inf")):
        raise ValueError(f"temperature T must be a finite number > 0, got {T!r}")
    return value


def _check_alpha(alpha: float) -> float:
    """Return alpha as a float; TypeError unless a number, ValueError unless 0 <= alpha <= 1."""
    value = as_number(alpha, "alpha")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (weight of the hard-label loss), got {alpha!r}")
    return value


def check_logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Raise ValueError unless student and teacher logits have the same shape and are finite."""
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits "
                         f"{tuple(teacher.shape)} must have the same shape (B, C) or (B, L, C)")
    if student.dim() < 2:
        raise ValueError(f"logits must have shape (B, C) or (B, L, C), got {tuple(student.shape)}")
    if student.shape[0] == 0:
        raise ValueError("empty batch: logits have batch size 0")
    for who, t in (("student", student), ("teacher", teacher)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{who} logits contain NaN or inf")


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0, *,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean KL(p_teacher^T || p_student^T) per example (no T^2 factor).

    Shapes: (B, C) or (B, L, C) (token level: averaged over the B*L positions).
    Equals ``F.kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean")`` for (B, C).
    mask: optional bool (B,) or (B, L) (logits.shape[:-1]), True where a row/token counts; the
    KL is then averaged over the True positions only. The teacher logits are a fixed target
    (detached): no gradient reaches them.
    """
    T = check_temperature(T)
    check_logits(student_logits, teacher_logits)
    teacher_logits = teacher_logits.detach()
    c = student_logits.shape[-1]
    log_p_s = F.log_softmax(student_logits.reshape(-1, c) / T, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.reshape(-1, c) / T, dim=-1)
    if mask is None:
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    keep = _check_mask(mask, student_logits).reshape(-1)
    return F.kl_div(log_p_s[keep], log_p_t[keep], reduction="batchmean", log_target=True)


def _check_mask(mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """mask as bool of shape logits.shape[:-1]; ValueError naming the shapes, or when nothing is kept."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool tensor of shape {tuple(logits.shape[:-1])}, got {type(mask).__name__}")
    if mask.shape != logits.shape[:-1]:
        raise ValueError(f"mask {tuple(mask.shape)} must have the shape of the logits without the class "
                         f"dim, {tuple(logits.shape[:-1])} (B,) or (B, L)")
    mask = mask.to(device=logits.device, dtype=torch.bool)
    if not mask.any():
        raise ValueError("the mask selects no position (every token is masked out): nothing to average")
    return mask


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            targets: torch.Tensor | None = None, *, T: float = 4.0, alpha: float = 0.5,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton et al. (2015) distillation loss.

        L = alpha * CE(targets, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))

    Shapes: logits (B, C) with targets (B,), or (B, L, C) with targets (B, L). KL uses
    "batchmean"; T^2 keeps the soft gradients on the scale of the hard ones as T grows. The
    teacher logits are a fixed target (detached), as in every loss of the course.
    Targets equal to -100 carry no label and get no CE term. Which positions count:

    * (B, C): every row gets the KL term, -100 rows included (unlabeled examples of a
      transfer set are distilled, as in notebook 01);
    * (B, L, C): tokens whose target is -100 (padding, prompts) are left out of *both*
      terms, and each term is the mean over the remaining tokens;
    * ``mask`` (bool, logits.shape[:-1], True = counts) overrides that default: both terms
      are averaged over the masked-in positions (CE also skips -100 targets among them).

    Paper: "Distilling the Knowledge in a Neural Network", Hinton, Vinyals & Dean, 2015.
    """
    alpha, T = _check_alpha(alpha), check_temperature(T)
    teacher_logits = teacher_logits.detach()
    token_level = student_logits.dim() == 3 and targets is not None and targets.shape == student_logits.shape[:-1]
    if mask is None and token_level:
        mask = targets != -100   # token level: padding never distilled
    soft = soft_kl(student_logits, teacher_logits, T, mask=mask) * T * T
    if alpha == 0.0:
        return soft
    if targets is None:
        raise ValueError("alpha > 0 needs targets for the hard-label loss; pass alpha=0 for unlabeled data")
    if mask is not None:
        targets = targets.masked_fill(~_check_mask(mask, student_logits), -100) \
            if targets.shape == student_logits.shape[:-1] else targets
    hard = _cross_entropy(student_logits, targets)
    return hard if alpha == 1.0 else alpha * hard + (1.0 - alpha) * soft


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    c = logits.shape[-1]
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}: "
                         "expected targets of shape logits.shape[:-1]")
    labelled = targets != -100
    if labelled.any() and ((targets[labelled] < 0) | (targets[labelled] >= c)).any():
        raise ValueError(f"targets must be class indices in [0, {c - 1}] (or -100 to ignore), "
                         f"got values in [{int(targets.min())}, {int(targets.max())}]")
    return F.cross_entropy(logits.reshape(-1, c), targets.reshape(-1), ignore_index=-100)


class CE(nn.Module):
    """Plain cross-entropy on the targets, as a loss for `fit`: CE(y, student_out)."""

    def forward(self, student_out, teacher_out=None, targets=None, features=None):
        return _cross_entropy(student_out, targets)


class KD(nn.Module):
    """Hinton KD as a loss for `fit`; see `kd_loss`. ``T`` may be changed between epochs.

    For token-level logits (B, L, C) the targets' -100 positions are left out of both terms
    (see `kd_loss`); ``mask`` may also be passed when calling the loss directly.

    A bad ``T`` or ``alpha`` raises at construction (and at each call, after a change).
    """

    def __init__(self, T: float = 4.0, alpha: float = 0.5):
        super().__init__()
        check_temperature(T)
        _check_alpha(alpha)
        self.T, self.alpha = T, alpha

    def forward(self, student_out, teacher_out, targets=None, features=None, mask=None):
        if teacher_out is None:
            raise ValueError("KD needs a teacher: pass teacher=... to fit")
        return kd_loss(student_out, teacher_out, targets, T=self.T, alpha=self.alpha, mask=mask)

    def extra_repr(self) -> str:
        return f"T={self.T}, alpha={self.alpha}"


def softmax_with_temperature(logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Softened probabilities p_i = exp(z_i / T) / sum_j exp(z_j / T) over the last dim.

    Shapes: (..., C) -> (..., C). T > 1 flattens the distribution and shows the "dark
    knowledge" in the small probabilities; T -> 0 approaches the arg-max one-hot.
    """
    check_temperature(T)
    return torch.softmax(logits / T, dim=-1)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Cross-entropy with soft targets, -mean_b sum_c p_t^T log p_s^T (the form Hinton 2015 writes).

    It equals `soft_kl` plus the teacher's entropy, a constant for the student, so both give
    the same gradients to the student. Shapes as in `soft_kl`; the teacher side is detached.
    """
    T = check_temperature(T)
    check_logits(student_logits, teacher_logits)
    c = student_logits.shape[-1]
    p_t = torch.softmax(teacher_logits.detach().reshape(-1, c) / T, dim=-1)
    return -(p_t * F.log_softmax(student_logits.reshape(-1, c) / T, dim=-1)).sum(-1).mean()


def temperature_schedule(kind: str, *, T0: float, epochs: int, T_end: float = 1.0):
    """Return epoch -> temperature for a "constant", "exponential" or "step" schedule.

    exponential: T0 * (T_end / T0) ** (epoch / (epochs - 1)), from T0 down to T_end;
    step: T0 halved at each third of training, never below T_end. Use it with
    ``fit(..., on_epoch=lambda e: setattr(loss, "T", schedule(e)))``.
    """
    T0, T_end = check_temperature(T0), check_temperature(T_end)
    epochs = as_number(epochs, "epochs", integer=True)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if kind == "constant":
        return lambda epoch: T0
    if kind == "exponential":
        return lambda epoch: T0 * (T_end / T0) ** (epoch / max(epochs - 1, 1))
    if kind == "step":
        return lambda epoch: max(T_end, T0 / 2 ** min(2, 3 * epoch // epochs))
    raise ValueError(f"unknown schedule {kind!r}; choose 'constant', 'exponential' or 'step'")


def class_bias_for_share(logits: torch.Tensor, cls: int, share: float, *, lo: float = -50.0,
                         hi: float = 50.0, steps: int = 60) -> float:
    """The shift d added to logit `cls` so that a fraction `share` of rows predict `cls`.

    logits: (N, C) of a model on *unlabeled* inputs (no labels are used). Bisection on d:
    the predicted share grows monotonically with d. Used for Hinton's omitted-class
    experiment, where the student never saw class `cls` and its bias is too low. Works on
    the logits' own device and dtype.
    """
    share, cls = as_number(share, "share"), as_number(cls, "cls", integer=True)
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share}")
    if logits.dim() != 2 or not 0 <= cls < logits.shape[1]:
        raise ValueError(f"need logits (N, C) and 0 <= cls < C, got {tuple(logits.shape)} and cls={cls}")
    onehot = F.one_hot(torch.tensor(cls, device=logits.device), logits.shape[1]).to(logits.dtype)
    for _ in range(steps):
        mid = (lo + hi) / 2
        pred_share = ((logits + mid * onehot).argmax(1) == cls).float().mean().item()
        lo, hi = (mid, hi) if pred_share < share else (lo, mid)
    return (lo + hi) / 2
