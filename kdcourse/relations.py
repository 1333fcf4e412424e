"""Relation distillation: match how examples relate to each other, not each output alone.

Introduced in notebook 03. All losses take embeddings of one batch, student (B, D_s) and
teacher (B, D_t) — the dimensions may differ, since only relations between the B examples
are compared. Inputs with more dims are flattened to (B, -1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .features import _check_layout, _feature, _token_mask, pool_tokens
from .hooks import capture
from .losses import CE
from .utils import eval_mode

__all__ = ["pairwise_distances", "rkd_distance_loss", "rkd_angle_loss", "sp_loss", "pkt_loss",
           "Relational", "recall_at_1", "embed"]


def _pair(s: torch.Tensor, t: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if s.dim() < 2 or t.dim() < 2:
        raise ValueError(f"{what}: embeddings must have shape (B, D), got {tuple(s.shape)} and {tuple(t.shape)}")
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"{what}: batch sizes differ ({s.shape[0]} vs {t.shape[0]})")
    if s.shape[0] < 2:
        raise ValueError(f"{what}: needs a batch of at least 2 examples (relations are between examples), got {s.shape[0]}")
    return s.flatten(1), t.flatten(1)


def pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of e (B, D) -> (B, B), exactly 0 on the diagonal."""
    sq = e.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * e @ e.T).clamp_min(1e-12)
    return d2.sqrt() * (1 - torch.eye(len(e), dtype=e.dtype, device=e.device))


def rkd_distance_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """RKD distance loss: Huber( d_s / mu_s , d_t / mu_t ) over all pairs i != j.

    d = pairwise Euclidean distances, mu = their mean over i != j (scale normalisation), so the
    loss is invariant to rotating, translating and uniformly scaling either embedding.
    Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.
    """
    s, t = _pair(s, t, "rkd_distance_loss")
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    ds, dt = pairwise_distances(s)[off], pairwise_distances(t.detach())[off]
    return F.smooth_l1_loss(ds / ds.mean(), dt / dt.mean())


def _angles(e: torch.Tensor, anchors: torch.Tensor | None) -> torch.Tensor:
    """cos of angle(e_i, e_j, e_k) at vertex j for all i, k and the chosen vertices j: (A, B, B)."""
    v = e[None, :, :] - (e if anchors is None else e[anchors])[:, None, :]   # (A, B, D): e_i - e_j
    v = F.normalize(v, p=2, dim=2)
    return v @ v.transpose(1, 2)


def rkd_angle_loss(s: torch.Tensor, t: torch.Tensor, *, max_anchors: int | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """RKD angle loss: Huber between cos angle(i, j, k) of student and teacher over triplets.

    Cost is cubic in B: the (B, B, B) angle tensor (B^3 D multiply-adds). With ``max_anchors=A``
    only A random vertices j (``torch.randperm(B, generator=generator)[:A]``) are used, an
    (A, B, B) tensor: every vertex has B^2 triplets, so this is an unbiased (noisier) estimate
    of the full loss, at A B^2 D multiply-adds.
    Park et al., CVPR 2019.
    """
    s, t = _pair(s, t, "rkd_angle_loss")
    anchors = None
    if max_anchors is not None and max_anchors < len(s):
        anchors = torch.randperm(len(s), generator=generator)[:max_anchors].to(s.device)
    return F.smooth_l1_loss(_angles(s, anchors), _angles(t.detach(), anchors))


def sp_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving loss: || norm(S S^T) - norm(T T^T) ||_F^2 / B^2.

    G = F F^T is the (B, B) Gram matrix of the flattened features and norm() scales each row
    to unit L2 norm. Invariant to any orthogonal map of either embedding (rotation, reflection,
    channel permutation) and to uniform scaling, but not to a shift. Tung & Mori,
    "Similarity-Preserving Knowledge Distillation", ICCV 2019.
    """
    s, t = _pair(s, t, "sp_loss")
    gs, gt = F.normalize(s @ s.T, dim=1), F.normalize(t.detach() @ t.detach().T, dim=1)
    return (gs - gt).pow(2).sum() / len(s) ** 2


def pkt_loss(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer: KL between conditional similarity distributions.

    K_ij = (cos(e_i, e_j) + 1) / 2, P_ij = K_ij / sum_k K_ik for each model (the diagonal
    K_ii = 1 is kept); the loss is mean_ij P^t_ij log(P^t_ij / P^s_ij), i.e. the mean row-wise
    KL divided by B, so it shrinks like 1/B. Cosines make it invariant to any orthogonal map and
    to uniform scaling of either embedding, but not to a shift. Passalis & Tefas, "Learning Deep
    Representations with Probabilistic Knowledge Transfer", ECCV 2018.
    """
    s, t = _pair(s, t, "pkt_loss")

    def cond(e):
        e = F.normalize(e, dim=1)
        k = (e @ e.T + 1) / 2
        return k / k.sum(1, keepdim=True)

    ps, pt = cond(s), cond(t.detach())
    return (pt * torch.log((pt + eps) / (ps + eps))).mean()


class Relational(nn.Module):
    """Relation losses on a student and a teacher layer plus a base loss, as a loss for `kd.fit`.

    L = base(...) + w_dist * RKD-D + w_angle * RKD-A + w_sp * SP + w_pkt * PKT, each on
    (features.student[student_layer], features.teacher[teacher_layer]). Weights of 0 skip a term.
    A layer that was not captured raises KeyError naming it: pass the same names to
    ``fit(student_layers=[...], teacher_layers=[...])``. Introduced in notebook 03.
    layout="channels_last": the layers give hidden states (B, L, D), mean-pooled over the tokens
    (`kdcourse.features.pool_tokens`) before the relations; tokens whose target is -100 are left
    out of the pooling when the targets are (B, L).
    """

    def __init__(self, *, student_layer: str = "embed", teacher_layer: str = "embed", w_dist: float = 0.0,
                 w_angle: float = 0.0, w_sp: float = 0.0, w_pkt: float = 0.0, max_anchors: int | None = None,
                 base: nn.Module | None = CE(), layout: str = "channels_first"):
        super().__init__()
        if not any((w_dist, w_angle, w_sp, w_pkt)):
            raise ValueError("Relational needs at least one non-zero weight (w_dist, w_angle, w_sp, w_pkt)")
        _check_layout(layout)
        self.student_layer, self.teacher_layer, self.base, self.layout = student_layer, teacher_layer, base, layout
        self.w = {"dist": w_dist, "angle": w_angle, "sp": w_sp, "pkt": w_pkt}
        self.max_anchors = max_anchors

    def forward(self, student_out, teacher_out, targets, features):
        s = _feature(features.student, self.student_layer, "student", "Relational")
        t = _feature(features.teacher, self.teacher_layer, "teacher", "Relational")
        if self.layout == "channels_last":
            mask = _token_mask(targets, s, self.layout)
            s, t = pool_tokens(s, mask), pool_tokens(t, mask)
        terms = {"dist": lambda: rkd_distance_loss(s, t), "sp": lambda: sp_loss(s, t), "pkt": lambda: pkt_loss(s, t),
                 "angle": lambda: rkd_angle_loss(s, t, max_anchors=self.max_anchors)}
        loss = sum(w * terms[k]() for k, w in self.w.items() if w)
        return loss if self.base is None else loss + self.base(student_out, teacher_out, targets, features)


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, layer: str = "embed", batch_size: int = 1000) -> torch.Tensor:
    """Outputs of `layer` for inputs x (N, ...), flattened to (N, D), on the CPU.

    Runs `model` in eval mode without gradients, `batch_size` rows at a time; the model's
    train/eval mode is restored afterwards. Introduced in notebook 03.
    """
    if len(x) == 0:
        raise ValueError("embed needs at least one input row")
    param = next(model.parameters(), None)
    device = x.device if param is None else param.device
    outs = []
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            with capture(model, [layer]) as f:
                model(x[i:i + batch_size].to(device))
            outs.append(f[layer].flatten(1).cpu())
    return torch.cat(outs)


def recall_at_1(emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Retrieval recall@1 in %: share of examples whose nearest other example has the same label.

    emb (N, D) is L2-normalised first (cosine retrieval); labels (N,).
    """
    if emb.dim() != 2 or len(emb) != len(labels) or len(emb) < 2:
        raise ValueError(f"recall_at_1 needs emb (N, D) with N >= 2 and labels (N,), got {tuple(emb.shape)} and {tuple(labels.shape)}")
    e = F.normalize(emb.float(), dim=1)
    sim = e @ e.T
    sim.fill_diagonal_(-float("inf"))
    return 100.0 * (labels[sim.argmax(1)] == labels).float().mean().item()
