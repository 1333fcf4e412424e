"""What a student's predictions say besides accuracy: agreement with its teacher, and calibration.

Introduced in notebook 01, where soft and hard teacher labels are compared on the same inputs.
Inputs are logits of shape (N, C) (any leading batch shape is flattened to N); targets are class
indices of shape (N,).
"""
from __future__ import annotations

import torch

__all__ = ["fidelity", "expected_calibration_error"]


def _flat_logits(logits: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.is_tensor(logits) or logits.dim() < 2:
        raise ValueError(f"{name} must be a tensor of logits of shape (N, C), got "
                         f"{tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__}")
    return logits.detach().reshape(-1, logits.shape[-1]).float()


def fidelity(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Top-1 agreement between student and teacher, in %: 100 · mean[argmax s_i == argmax t_i].

    Shapes: both (N, C). Stanton et al. 2021, "Does knowledge distillation really work?" (NeurIPS):
    a student can gain accuracy while still disagreeing with its teacher on many inputs.
    """
    s, t = _flat_logits(student_logits, "student_logits"), _flat_logits(teacher_logits, "teacher_logits")
    if s.shape != t.shape:
        raise ValueError(f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ in shape")
    return 100.0 * (s.argmax(-1) == t.argmax(-1)).float().mean().item()


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, *, n_bins: int = 15) -> float:
    """Expected calibration error in points (%): Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)| · 100.

    Shapes: logits (N, C), targets (N,). Predictions are binned by confidence max softmax into
    `n_bins` equal-width bins on (0, 1]; acc and conf are the bin's accuracy and mean confidence.
    Guo et al. 2017, "On calibration of modern neural networks" (ICML); Naeini et al. 2015.
    """
    p = _flat_logits(logits, "logits").softmax(-1)
    targets = targets.reshape(-1).to(p.device)
    if targets.shape[0] != p.shape[0]:
        raise ValueError(f"{p.shape[0]} predictions but {targets.shape[0]} targets")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    conf, pred = p.max(-1)
    correct = (pred == targets).float()
    bins = torch.clamp((conf * n_bins).ceil().long() - 1, 0, int(n_bins) - 1)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(int(n_bins)):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.float().mean().double() * (correct[in_bin].mean() - conf[in_bin].mean()).abs().double()
    return 100.0 * ece.item()
