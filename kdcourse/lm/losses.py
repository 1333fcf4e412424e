"""Token-level distillation losses for sequence models, with a padding mask. Introduced in notebook 08.

All take student and teacher logits (B, L, V) and a mask (B, L) (True = a token that counts),
and return the mean over the unmasked tokens of a per-token divergence between the teacher's
next-token distribution p and the student's q, both softened by a temperature T:

* forward KL, KL(p || q) = sum_v p log(p / q): mode covering (Hinton et al. 2015; Kim & Rush 2016
  "Sequence-Level Knowledge Distillation" for its token-level form);
* reverse KL, KL(q || p) = sum_v q log(q / p): mode seeking (Gu et al. 2024, "MiniLLM");
* generalized JSD, beta KL(p || m) + (1 - beta) KL(q || m) with m = beta p + (1 - beta) q
  (Agarwal et al. 2024, "On-Policy Distillation of Language Models" (GKD)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..losses import check_logits, check_temperature

__all__ = ["masked_mean", "token_forward_kl", "token_reverse_kl", "token_gjsd", "token_divergence",
           "token_kd_loss", "DIVERGENCES"]


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-token values (B, L) over the positions where `mask` (B, L) is True."""
    if mask.shape != per_token.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must match the tokens' {tuple(per_token.shape)}")
    mask = mask.bool()
    if not mask.any():
        raise ValueError("the mask selects no token: nothing to average")
    return per_token.masked_fill(~mask, 0.0).sum() / mask.sum()


def _log_probs(student, teacher, T):
    check_temperature(T)
    check_logits(student, teacher)
    if student.dim() != 3:
        raise ValueError(f"token-level losses need logits (B, L, V), got {tuple(student.shape)}")
    return F.log_softmax(student / T, dim=-1), F.log_softmax(teacher / T, dim=-1)


def token_forward_kl(student, teacher, mask, *, T: float = 1.0) -> torch.Tensor:
    """Masked mean over tokens of KL(p_teacher || q_student) = sum_v p (log p - log q)."""
    log_q, log_p = _log_probs(student, teacher, T)
    return masked_mean((log_p.exp() * (log_p - log_q)).sum(-1), mask)


def token_reverse_kl(student, teacher, mask, *, T: float = 1.0) -> torch.Tensor:
    """Masked mean over tokens of KL(q_student || p_teacher) = sum_v q (log q - log p) (MiniLLM)."""
    log_q, log_p = _log_probs(student, teacher, T)
    return masked_mean((log_q.exp() * (log_q - log_p)).sum(-1), mask)


def token_gjsd(student, teacher, mask, *, beta: float = 0.5, T: float = 1.0) -> torch.Tensor:
    """Masked mean of the generalized JSD, beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q.

    p is the teacher, q the student (GKD). beta=0.5 is the symmetric Jensen-Shannon divergence
    (at most log 2); small beta behaves like beta * KL(p || q), beta near 1 like (1 - beta) * KL(q || p).
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    log_q, log_p = _log_probs(student, teacher, T)
    log_m = torch.logsumexp(torch.stack([log_p + torch.log(torch.tensor(beta)),
                                         log_q + torch.log(torch.tensor(1.0 - beta))]), dim=0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return masked_mean(beta * kl_pm + (1 - beta) * kl_qm, mask)


DIVERGENCES = {"fkl": token_forward_kl, "rkl": token_reverse_kl, "jsd": token_gjsd}


def token_divergence(kind: str, student, teacher, mask, **kw) -> torch.Tensor:
    """One of `DIVERGENCES` ("fkl", "rkl", "jsd") by name; raises KeyError for another name."""
    if kind not in DIVERGENCES:
        raise KeyError(f"unknown divergence {kind!r}; choose one of {tuple(DIVERGENCES)}")
    return DIVERGENCES[kind](student, teacher, mask, **kw)


def token_kd_loss(student, teacher, targets, *, kind: str = "fkl", alpha: float = 0.0, T: float = 1.0,
                  beta: float = 0.5) -> torch.Tensor:
    """alpha * CE(targets, student) + (1 - alpha) * T^2 * D(teacher, student), both over tokens with target != -100.

    Shapes: logits (B, L, V), targets (B, L); -100 marks padding and prompt tokens, excluded from
    both terms; each term is averaged over the remaining tokens. D is `kind` ("fkl", "rkl", "jsd").
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (weight of the hard-label loss), got {alpha}")
    if targets.shape != student.shape[:2]:
        raise ValueError(f"targets {tuple(targets.shape)} must have shape {tuple(student.shape[:2])}")
    mask = targets != -100
    extra = {"beta": beta} if kind == "jsd" else {}
    loss = (1 - alpha) * T * T * token_divergence(kind, student, teacher, mask, T=T, **extra) if alpha < 1 else 0.0
    if alpha > 0:
        ce = F.cross_entropy(student.reshape(-1, student.shape[-1]), targets.reshape(-1), ignore_index=-100)
        loss = loss + alpha * ce
    return loss
