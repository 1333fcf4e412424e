"""Modern logit losses: decoupled KD (DKD) and DIST. Introduced in notebook 09.

Both are losses for `kdcourse.training.fit`, called as ``loss(student_out, teacher_out, targets,
features)`` like `kdcourse.losses.KD`, and both add a plain cross-entropy term on the labels
(weight ``ce_weight``), as their papers do. The teacher logits are a fixed target (detached).

Naming: DKD's paper calls its two weights alpha and beta; in this course ``alpha`` already
means the weight of the hard-label loss, so here they are ``tckd_weight`` and ``nckd_weight``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .losses import _cross_entropy, check_logits, check_temperature
from .utils import as_number

__all__ = ["binary_target_probs", "non_target_log_probs", "dkd_terms", "dkd_loss", "DKD",
           "pearson_rows", "dist_loss", "DIST"]


def _check_targets(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """ValueError unless targets (B,) hold class indices for logits (B, C)."""
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape (B, C), got {tuple(logits.shape)}")
    if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape[:1]:
        got = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a tensor of shape (B,) = {tuple(logits.shape[:1])}, got {got}")
    if ((targets < 0) | (targets >= logits.shape[1])).any():
        raise ValueError(f"targets must be class indices in [0, {logits.shape[1] - 1}]")


def binary_target_probs(logits: torch.Tensor, targets: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """b = [p_target, 1 - p_target] of softmax(logits / T): (B, C), (B,) -> (B, 2)."""
    _check_targets(logits, targets)
    p = torch.softmax(logits / check_temperature(T), dim=1)
    p_t = p.gather(1, targets[:, None])
    return torch.cat([p_t, 1.0 - p_t], dim=1)


def non_target_log_probs(logits: torch.Tensor, targets: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """log p-hat: log-softmax over the C - 1 non-target classes only: (B, C), (B,) -> (B, C - 1).

    p-hat_i = exp(z_i / T) / sum_{j != target} exp(z_j / T) for i != target (the target column
    is removed, the other columns keep their order).
    """
    _check_targets(logits, targets)
    keep = torch.ones_like(logits, dtype=torch.bool).scatter_(1, targets[:, None], False)
    return F.log_softmax((logits / check_temperature(T))[keep].view(len(logits), -1), dim=1)


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
              T: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example (TCKD, NCKD) of decoupled KD, each (B,), without the T^2 factor.

    TCKD_i = KL(b_teacher || b_student) on the binary target/non-target split (`binary_target_probs`);
    NCKD_i = KL(p-hat_teacher || p-hat_student) among the non-target classes (`non_target_log_probs`).
    Classic KD decomposes exactly as KL(p_t || p_s) = TCKD + (1 - p_target^teacher) * NCKD
    (Zhao et al. 2022, "Decoupled Knowledge Distillation", CVPR, eq. 7).
    """
    check_logits(student_logits, teacher_logits)
    teacher_logits = teacher_logits.detach()
    b_s = binary_target_probs(student_logits, targets, T).clamp_min(1e-12)
    b_t = binary_target_probs(teacher_logits, targets, T).clamp_min(1e-12)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(1)
    log_q_s = non_target_log_probs(student_logits, targets, T)
    log_q_t = non_target_log_probs(teacher_logits, targets, T)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(1)
    return tckd, nckd


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
             tckd_weight: float = 1.0, nckd_weight: float | torch.Tensor = 8.0, T: float = 4.0) -> torch.Tensor:
    """Decoupled KD: T^2 * mean_i (tckd_weight * TCKD_i + nckd_weight * NCKD_i), a scalar.

    Shapes: logits (B, C), targets (B,). ``nckd_weight`` may be a (B,) tensor (a weight per
    example): with ``tckd_weight=1`` and ``nckd_weight = 1 - p_target^teacher`` the loss equals
    classic KD's soft term T^2 * KL(p_t^T || p_s^T). Defaults alpha=1, beta=8, T=4 are the paper's
    CIFAR-100 settings. Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022.
    """
    T = check_temperature(T)
    tckd_weight = as_number(tckd_weight, "tckd_weight")
    if not isinstance(nckd_weight, torch.Tensor):
        nckd_weight = as_number(nckd_weight, "nckd_weight")
    elif nckd_weight.numel() != 1 and nckd_weight.shape != student_logits.shape[:1]:
        raise ValueError(f"nckd_weight must be a number or a (B,) tensor, got shape {tuple(nckd_weight.shape)}")
    tckd, nckd = dkd_terms(student_logits, teacher_logits, targets, T)
    return T * T * (tckd_weight * tckd + nckd_weight * nckd).mean()


class DKD(nn.Module):
    """ce_weight * CE(y, s) + `dkd_loss` as a loss for `fit` (Zhao et al. 2022)."""

    def __init__(self, tckd_weight: float = 1.0, nckd_weight: float = 8.0, T: float = 4.0, ce_weight: float = 1.0):
        super().__init__()
        check_temperature(T)
        self.tckd_weight = as_number(tckd_weight, "tckd_weight")
        self.nckd_weight = as_number(nckd_weight, "nckd_weight")
        self.T, self.ce_weight = T, as_number(ce_weight, "ce_weight")

    def forward(self, student_out, teacher_out, targets=None, features=None):
        if teacher_out is None or targets is None:
            raise ValueError("DKD needs a teacher (pass teacher=... to fit) and labelled batches")
        dkd = dkd_loss(student_out, teacher_out, targets, tckd_weight=self.tckd_weight,
                       nckd_weight=self.nckd_weight, T=self.T)
        return self.ce_weight * _cross_entropy(student_out, targets) + dkd

    def extra_repr(self) -> str:
        return f"tckd_weight={self.tckd_weight}, nckd_weight={self.nckd_weight}, T={self.T}, ce_weight={self.ce_weight}"


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`: (N, D), (N, D) -> (N,)."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"pearson_rows needs two (N, D) tensors of one shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, T: float = 1.0,
              inter_weight: float = 1.0, intra_weight: float = 1.0) -> torch.Tensor:
    """DIST, a scalar: T^2 * (inter_weight * inter + intra_weight * intra), where

        inter = 1 - mean_i rho(P_s[i, :], P_t[i, :]),   intra = 1 - mean_c rho(P_s[:, c], P_t[:, c]).

    P = softmax(logits / T), shape (B, C); rho is the Pearson correlation. The inter-class term
    matches each example's ranking of the classes, the intra-class term each class's ranking of
    the examples in the batch; both ignore shifts and scales of the predictions. Huang, You,
    Wang, Qian, Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022 (beta = gamma = 1).
    """
    T = check_temperature(T)
    check_logits(student_logits, teacher_logits)
    if student_logits.dim() != 2 or len(student_logits) < 2:
        raise ValueError(f"DIST needs logits of shape (B, C) with B >= 2, got {tuple(student_logits.shape)}")
    p_s = torch.softmax(student_logits / T, dim=1)
    p_t = torch.softmax(teacher_logits.detach() / T, dim=1)
    inter = 1.0 - pearson_rows(p_s, p_t).mean()
    intra = 1.0 - pearson_rows(p_s.T, p_t.T).mean()
    return T * T * (as_number(inter_weight, "inter_weight") * inter + as_number(intra_weight, "intra_weight") * intra)


class DIST(nn.Module):
    """ce_weight * CE(y, s) + `dist_loss` as a loss for `fit` (Huang et al. 2022)."""

    def __init__(self, T: float = 1.0, inter_weight: float = 1.0, intra_weight: float = 1.0, ce_weight: float = 1.0):
        super().__init__()
        check_temperature(T)
        self.T = T
        self.inter_weight = as_number(inter_weight, "inter_weight")
        self.intra_weight = as_number(intra_weight, "intra_weight")
        self.ce_weight = as_number(ce_weight, "ce_weight")

    def forward(self, student_out, teacher_out, targets=None, features=None):
        if teacher_out is None or targets is None:
            raise ValueError("DIST needs a teacher (pass teacher=... to fit) and labelled batches")
        soft = dist_loss(student_out, teacher_out, T=self.T, inter_weight=self.inter_weight,
                         intra_weight=self.intra_weight)
        return self.ce_weight * _cross_entropy(student_out, targets) + soft

    def extra_repr(self) -> str:
        return (f"T={self.T}, inter_weight={self.inter_weight}, intra_weight={self.intra_weight}, "
                f"ce_weight={self.ce_weight}")
