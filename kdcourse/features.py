"""Feature distillation: FitNets hints, attention transfer, and layer similarity (linear CKA).

Introduced in notebook 02. Features come from forward hooks (`kdcourse.hooks.capture`), so
every loss here works on any nn.Module; with `kd.fit` they arrive as ``features.student`` and
``features.teacher`` (dicts keyed by layer name).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import capture
from .losses import CE
from .utils import eval_mode

__all__ = ["feature_shapes", "make_regressor", "hint_loss", "FitNets", "attention_map",
           "attention_loss", "AttentionTransfer", "linear_cka", "cka_matrix"]


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError(f"{what}: need batched tensors (B, ...), got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{what}: batch sizes differ ({a.shape[0]} vs {b.shape[0]})")
    if a.shape[0] == 0:
        raise ValueError(f"{what}: empty batch")


def _feature(features: dict, name: str, who: str, loss: str) -> torch.Tensor:
    if name not in features:
        raise KeyError(f"{loss}: no captured {who} feature {name!r} (captured: {sorted(features)}); "
                       f"pass {who}_layers=[{name!r}] to kd.fit")
    return features[name]


@torch.no_grad()
def feature_shapes(model: nn.Module, layers: Sequence[str], example: torch.Tensor) -> dict[str, tuple]:
    """Shapes (without the batch dim) of the named layers' outputs on one example batch.

    example: (B, *in_shape), only its first two rows are used; returns name -> shape tuple.
    The model runs in eval mode; its train/eval mode (of every submodule) is restored.
    Introduced in notebook 02.
    """
    with eval_mode(model), capture(model, layers) as feats:
        model(example[:2])
    return {name: tuple(f.shape[1:]) for name, f in feats.items()}


def make_regressor(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """FitNets regressor from student features to the teacher's feature shape.

    (D_s,) -> any teacher shape: Linear to prod(teacher_shape), reshaped (e.g. an MLP student
    hinted by a conv layer). (C_s, L) -> (C_t, L) or (C_s, H, W) -> (C_t, H, W): 1x1 conv, so
    spatial sizes must match. Raises ValueError naming both shapes otherwise.
    Introduced in notebook 02.
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) == 1 and len(t) > 1:
        return nn.Sequential(nn.Linear(s[0], int(torch.tensor(t).prod())), nn.Unflatten(1, t))
    if len(s) != len(t) or s[1:] != t[1:] or len(s) not in (1, 2, 3):
        raise ValueError(f"cannot regress student features {s} onto teacher features {t}: need (D,) "
                         "pairs or (C, ...) pairs with equal spatial sizes")
    if len(s) == 1:
        return nn.Linear(s[0], t[0])
    conv = nn.Conv1d if len(s) == 2 else nn.Conv2d
    return conv(s[0], t[0], kernel_size=1)


def hint_loss(regressed: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss: mean squared error between regressed student and teacher features.

    L_hint = (1/N) sum (r(f_s) - f_t)^2 with N = batch size x elements per example, i.e. the
    mean over batch and elements; shapes (B, ...) equal.
    Paper: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (who use 1/2 ||.||^2;
    the mean only rescales the weight beta). The teacher features are a fixed target
    (detached): no gradient ever reaches the teacher. Introduced in notebook 02.
    """
    _check_pair(regressed, teacher_feat, "hint_loss")
    if regressed.shape != teacher_feat.shape:
        raise ValueError(f"hint_loss: regressed student features {tuple(regressed.shape)} and teacher "
                         f"features {tuple(teacher_feat.shape)} differ in shape")
    return F.mse_loss(regressed, teacher_feat.detach())


class FitNets(nn.Module):
    """Hint loss on one layer pair, plus an optional base loss, as a loss for `kd.fit`.

    L = base(student_out, teacher_out, y) + beta * hint_loss(r(f_s[student_layer]), f_t[teacher_layer])
    with a trainable regressor r (`make_regressor`, or identity when ``regressor=False``).
    ``base=None`` gives the pure hint loss (stage 1 of two-stage FitNets). Pass the same layer
    names to ``fit(student_layers=[...], teacher_layers=[...])``. Introduced in notebook 02.
    """

    def __init__(self, student_shape, teacher_shape, *, student_layer: str, teacher_layer: str,
                 beta: float = 1.0, base: nn.Module | None = CE(), regressor: bool = True):
        super().__init__()
        if not regressor and tuple(student_shape) != tuple(teacher_shape):
            raise ValueError(f"regressor=False needs equal feature shapes, got {tuple(student_shape)} "
                             f"and {tuple(teacher_shape)}")
        self.regressor = make_regressor(student_shape, teacher_shape) if regressor else nn.Identity()
        self.student_layer, self.teacher_layer, self.beta, self.base = student_layer, teacher_layer, beta, base

    def forward(self, student_out, teacher_out, targets, features):
        fs = _feature(features.student, self.student_layer, "student", "FitNets")
        ft = _feature(features.teacher, self.teacher_layer, "teacher", "FitNets")
        loss = self.beta * hint_loss(self.regressor(fs), ft)
        return loss if self.base is None else loss + self.base(student_out, teacher_out, targets, features)


def attention_map(feat: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Spatial attention map of conv features: mean over channels of |f|^p, flattened, L2-normalised.

    (B, C, L) or (B, C, H, W) -> (B, L) or (B, H*W). Zagoruyko & Komodakis, "Paying More
    Attention to Attention", ICLR 2017. Normalisation as in the authors' code: channel mean
    of f^p, then each map divided by its L2 norm. Introduced in notebook 02.
    """
    if feat.dim() not in (3, 4):
        raise ValueError(f"attention_map needs conv features (B, C, L) or (B, C, H, W), got {tuple(feat.shape)}")
    if feat.shape[0] == 0:
        raise ValueError("attention_map: empty batch")
    return F.normalize(feat.abs().pow(p).mean(1).flatten(1), dim=1)


def attention_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Attention-transfer loss: squared difference of the normalised attention maps, averaged.

    L_AT = 1/(B*P) sum_{b, j} (Q_s[b, j] - Q_t[b, j])^2, the mean over the batch (B) and the
    P = H*W (or L) positions, with Q = attention_map(f); this is the authors' released code.
    The paper (Zagoruyko & Komodakis, ICLR 2017) writes beta/2 times the *un-squared* 2-norm
    of the difference, with beta = 1e3 divided by P and by the batch size: the same averaging,
    but the distance is not squared. We follow the code (its gradient shrinks smoothly to zero
    as the maps agree); `AttentionTransfer` applies beta = 1000 to this mean. Channel counts
    may differ; spatial sizes must match. The teacher side is detached (no gradient reaches
    the teacher). Introduced in notebook 02.
    """
    _check_pair(student_feat, teacher_feat, "attention_loss")
    if student_feat.shape[2:] != teacher_feat.shape[2:]:
        raise ValueError(f"attention_loss: spatial sizes differ: student {tuple(student_feat.shape)}, "
                         f"teacher {tuple(teacher_feat.shape)}")
    return (attention_map(student_feat, p) - attention_map(teacher_feat.detach(), p)).pow(2).mean()


class AttentionTransfer(nn.Module):
    """Attention transfer on layer pairs plus a base loss, as a loss for `kd.fit`.

    L = base(...) + beta * sum over pairs of attention_loss(f_s[a], f_t[b]); default beta=1000,
    the paper's 10^3 applied to the per-element mean as in the authors' code (not tuned for
    the course's small models). Introduced in notebook 02.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], *, beta: float = 1000.0, base: nn.Module | None = CE(), p: int = 2):
        super().__init__()
        if not pairs:
            raise ValueError("AttentionTransfer needs at least one (student_layer, teacher_layer) pair")
        self.pairs, self.beta, self.base, self.p = list(pairs), beta, base, p

    def forward(self, student_out, teacher_out, targets, features):
        at = sum(attention_loss(_feature(features.student, a, "student", "AttentionTransfer"),
                                _feature(features.teacher, b, "teacher", "AttentionTransfer"), self.p)
                 for a, b in self.pairs)
        return self.beta * at if self.base is None else self.base(student_out, teacher_out, targets, features) + self.beta * at


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear centred kernel alignment between two representations of the same n examples.

    x (n, ...) and y (n, ...) are flattened to (n, p) and (n, q), centred per column, then
    CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), in [0, 1]. Invariant to orthogonal
    transforms and isotropic scaling, not to arbitrary invertible linear maps.
    Kornblith et al., "Similarity of Neural Network Representations Revisited", ICML 2019.
    Introduced in notebook 02.
    """
    if x.dim() < 2 or y.dim() < 2:
        raise ValueError(f"linear_cka needs representations (n, features...), got shapes {tuple(x.shape)} "
                         f"and {tuple(y.shape)}; reshape a vector v to v[:, None]")
    _check_pair(x, y, "linear_cka")
    if x.shape[0] < 2:
        raise ValueError("linear_cka needs at least 2 examples")
    x = x.flatten(1).double()
    y = y.flatten(1).double()
    x, y = x - x.mean(0), y - y.mean(0)
    num = (y.T @ x).pow(2).sum()
    den = (x.T @ x).pow(2).sum().sqrt() * (y.T @ y).pow(2).sum().sqrt()
    if den == 0:
        raise ValueError("linear_cka: a representation is constant across examples")
    return (num / den).float()


@torch.no_grad()
def cka_matrix(model_a: nn.Module, model_b: nn.Module, x: torch.Tensor, layers_a: Sequence[str],
               layers_b: Sequence[str]) -> torch.Tensor:
    """Linear CKA between every layer of `layers_a` (rows) and of `layers_b` (columns) on inputs x.

    x: (n, *in_shape). Returns a (len(layers_a), len(layers_b)) tensor. Both models run in
    eval mode (the train/eval mode of each submodule is restored afterwards). Introduced in
    notebook 02.
    """
    outs = []
    for model, layers in ((model_a, layers_a), (model_b, layers_b)):
        with eval_mode(model), capture(model, layers) as feats:
            model(x)
        outs.append([feats[n] for n in layers])
    return torch.tensor([[float(linear_cka(a, b)) for b in outs[1]] for a in outs[0]])
