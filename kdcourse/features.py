"""Feature distillation: FitNets hints and attention transfer (layer similarity: `kdcourse.similarity`).

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
from .similarity import MinibatchCKA, _check_pair, cka_matrix, hsic_unbiased, linear_cka  # noqa: F401 (re-exported)
from .utils import eval_mode

__all__ = ["feature_shapes", "make_regressor", "hint_loss", "FitNets", "attention_map",
           "attention_loss", "AttentionTransfer", "pool_tokens", "LAYOUTS",
           # layer similarity, defined in kdcourse.similarity and kept importable from here (notebook 02)
           "linear_cka", "cka_matrix", "hsic_unbiased", "MinibatchCKA"]

LAYOUTS = ("channels_first", "channels_last")
"""Feature layouts: conv maps (B, C, ...) are channels-first; transformer hidden states (B, L, D)
(and NHWC maps) are channels-last: the feature dimension is the last one."""


def _check_layout(layout: str) -> bool:
    """True for "channels_last"; ValueError naming the choices for anything but the two layouts."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout == "channels_last"


def _token_mask(targets, feat: torch.Tensor, layout: str):
    """For channels-last token features (B, L, D): targets (B, L) != -100, else None (all positions)."""
    if layout == "channels_last" and feat.dim() == 3 and isinstance(targets, torch.Tensor) \
            and targets.shape == feat.shape[:2]:
        return targets != -100
    return None


def _feature(features: dict, name: str, who: str, loss: str) -> torch.Tensor:
    if name not in features:
        raise KeyError(f"{loss}: no captured {who} feature {name!r} (captured: {sorted(features)}); "
                       f"pass {who}_layers=[{name!r}] to kd.fit")
    feat = features[name]
    if not isinstance(feat, torch.Tensor):
        raise TypeError(f"{loss}: the captured {who} feature {name!r} is a {type(feat).__name__}, not a tensor "
                        f"(transformer blocks return tuples or output objects): pick the tensor with "
                        f"fit(..., {who}_select=0) or capture(..., select=0)")
    return feat


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


def make_regressor(student_shape: Sequence[int], teacher_shape: Sequence[int], *,
                   layout: str = "channels_first") -> nn.Module:
    """FitNets regressor from student features to the teacher's feature shape (shapes without B).

    (D_s,) -> any teacher shape: Linear to prod(teacher_shape), reshaped (e.g. an MLP student
    hinted by a conv layer). channels_first: (C_s, L) -> (C_t, L) or (C_s, H, W) -> (C_t, H, W):
    1x1 conv, so spatial sizes must match. channels_last: (L, D_s) -> (L, D_t) (transformer
    hidden states, as in TinyBERT's W_h; any leading sizes, which must match): a Linear on the
    last dim. Raises ValueError naming both shapes otherwise. Introduced in notebook 02.
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    last = _check_layout(layout)
    if len(s) == 1 and len(t) > 1:
        return nn.Sequential(nn.Linear(s[0], int(torch.tensor(t).prod())), nn.Unflatten(1, t))
    if last:
        if len(s) != len(t) or s[:-1] != t[:-1] or not s:
            raise ValueError(f"cannot regress student features {s} onto teacher features {t} (channels_last): "
                             "need (..., D_s) and (..., D_t) with equal leading sizes, e.g. (L, D)")
        return nn.Linear(s[-1], t[-1])
    if len(s) != len(t) or s[1:] != t[1:] or len(s) not in (1, 2, 3):
        raise ValueError(f"cannot regress student features {s} onto teacher features {t}: need (D,) "
                         "pairs or (C, ...) pairs with equal spatial sizes")
    if len(s) == 1:
        return nn.Linear(s[0], t[0])
    conv = nn.Conv1d if len(s) == 2 else nn.Conv2d
    return conv(s[0], t[0], kernel_size=1)


def hint_loss(regressed: torch.Tensor, teacher_feat: torch.Tensor, *, mask: torch.Tensor | None = None,
              kind: str = "mse", layout: str = "channels_first") -> torch.Tensor:
    """FitNets hint loss: mean squared error between regressed student and teacher features.

    L_hint = (1/N) sum (r(f_s) - f_t)^2 with N = batch size x elements per example, i.e. the
    mean over batch and elements; shapes (B, ...) equal.
    Paper: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (who use 1/2 ||.||^2;
    the mean only rescales the weight beta). The teacher features are a fixed target
    (detached): no gradient ever reaches the teacher. Introduced in notebook 02.
    kind="cosine": mean over positions of 1 - cos(r(f_s), f_t) along the channel dim (dim 1 for
    channels_first, the last dim for channels_last), the hidden-state loss of DistilBERT (Sanh
    et al. 2019). mask: bool over the positions (the shape without the channel dim, e.g. (B, L)
    for hidden states (B, L, D), or (B,)), True = counts; the loss is then the mean over the
    kept positions (padding never contributes).
    """
    _check_pair(regressed, teacher_feat, "hint_loss")
    if regressed.shape != teacher_feat.shape:
        raise ValueError(f"hint_loss: regressed student features {tuple(regressed.shape)} and teacher "
                         f"features {tuple(teacher_feat.shape)} differ in shape")
    last = _check_layout(layout)
    if kind not in ("mse", "cosine"):
        raise ValueError(f"hint_loss: kind must be 'mse' or 'cosine', got {kind!r}")
    if kind == "mse" and mask is None:
        return F.mse_loss(regressed, teacher_feat.detach())
    dim = -1 if last or regressed.dim() == 2 else 1
    if kind == "mse":
        per_pos = (regressed - teacher_feat.detach()).pow(2).mean(dim)
    else:
        per_pos = 1 - F.cosine_similarity(regressed, teacher_feat.detach(), dim=dim, eps=1e-8)
    return _masked_mean(per_pos, mask, "hint_loss")


def _masked_mean(per_pos: torch.Tensor, mask: torch.Tensor | None, what: str) -> torch.Tensor:
    """Mean of per-position values (B, ...) over all of them, or over those where mask is True.

    mask: the shape of per_pos, or (B,) (whole examples)."""
    if mask is None:
        return per_pos.mean()
    if mask.shape != per_pos.shape and mask.shape != per_pos.shape[:1]:
        raise ValueError(f"{what}: mask {tuple(mask.shape)} must have the positions' shape {tuple(per_pos.shape)} "
                         f"or ({per_pos.shape[0]},)")
    m = mask.to(device=per_pos.device, dtype=torch.bool)
    m = m.reshape(m.shape + (1,) * (per_pos.dim() - m.dim())).expand_as(per_pos)
    if not m.any():
        raise ValueError(f"{what}: the mask selects no position: nothing to average")
    return per_pos.masked_fill(~m, 0.0).sum() / m.sum()


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of hidden states (B, L, D) over the positions where mask (B, L) is True -> (B, D).

    mask None: the mean over all L positions. Padded positions (mask False) have no influence
    on the result, so relation losses on pooled states ignore padding. Each row needs at least
    one kept position.
    """
    if hidden.dim() != 3:
        raise ValueError(f"pool_tokens needs hidden states (B, L, D), got {tuple(hidden.shape)}")
    if mask is None:
        return hidden.mean(1)
    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"pool_tokens: mask {tuple(mask.shape)} must be (B, L) = {tuple(hidden.shape[:2])}")
    m = mask.to(device=hidden.device, dtype=hidden.dtype)
    count = m.sum(1, keepdim=True)
    if (count == 0).any():
        raise ValueError("pool_tokens: a row has no kept position (its mask is all False)")
    return (hidden * m[..., None]).sum(1) / count


class FitNets(nn.Module):
    """Hint loss on one layer pair, plus an optional base loss, as a loss for `kd.fit`.

    L = base(student_out, teacher_out, y) + beta * hint_loss(r(f_s[student_layer]), f_t[teacher_layer])
    with a trainable regressor r (`make_regressor`, or identity when ``regressor=False``).
    ``base=None`` gives the pure hint loss (stage 1 of two-stage FitNets). Pass the same layer
    names to ``fit(student_layers=[...], teacher_layers=[...])``. Introduced in notebook 02.
    Hidden states (B, L, D): ``layout="channels_last"`` (a Linear on D; shapes (L, D_s), (L, D_t))
    and ``kind="mse"`` or ``"cosine"``; tokens whose target is -100 are then left out.
    """

    def __init__(self, student_shape, teacher_shape, *, student_layer: str, teacher_layer: str,
                 beta: float = 1.0, base: nn.Module | None = CE(), regressor: bool = True,
                 layout: str = "channels_first", kind: str = "mse"):
        super().__init__()
        if not regressor and tuple(student_shape) != tuple(teacher_shape):
            raise ValueError(f"regressor=False needs equal feature shapes, got {tuple(student_shape)} "
                             f"and {tuple(teacher_shape)}")
        if kind not in ("mse", "cosine"):
            raise ValueError(f"FitNets: kind must be 'mse' or 'cosine', got {kind!r}")
        self.regressor = make_regressor(student_shape, teacher_shape, layout=layout) if regressor else nn.Identity()
        self.student_layer, self.teacher_layer, self.beta, self.base = student_layer, teacher_layer, beta, base
        self.layout, self.kind = layout, kind

    def forward(self, student_out, teacher_out, targets, features):
        fs = _feature(features.student, self.student_layer, "student", "FitNets")
        ft = _feature(features.teacher, self.teacher_layer, "teacher", "FitNets")
        mask = _token_mask(targets, fs, self.layout)
        loss = self.beta * hint_loss(self.regressor(fs), ft, mask=mask, kind=self.kind, layout=self.layout)
        return loss if self.base is None else loss + self.base(student_out, teacher_out, targets, features)


def attention_map(feat: torch.Tensor, p: int = 2, *, layout: str = "channels_first",
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Spatial attention map of conv features: mean over channels of |f|^p, flattened, L2-normalised.

    (B, C, L) or (B, C, H, W) -> (B, L) or (B, H*W). Zagoruyko & Komodakis, "Paying More
    Attention to Attention", ICLR 2017. Normalisation as in the authors' code: channel mean
    of f^p, then each map divided by its L2 norm. Introduced in notebook 02.
    layout="channels_last": (B, L, D) hidden states or (B, H, W, C) maps, channel = last dim.
    mask: bool (B, P) over the flattened positions, True = counts; masked positions are set to
    0 before the normalisation (padding has no influence on the map).
    """
    last = _check_layout(layout)
    if feat.dim() not in (3, 4):
        raise ValueError(f"attention_map needs conv features (B, C, L) or (B, C, H, W) (or channels_last "
                         f"(B, L, D), (B, H, W, C)), got {tuple(feat.shape)}")
    if feat.shape[0] == 0:
        raise ValueError("attention_map: empty batch")
    a = feat.abs().pow(p).mean(-1 if last else 1).flatten(1)            # (B, P)
    if mask is not None:
        if mask.shape != a.shape:
            raise ValueError(f"attention_map: mask {tuple(mask.shape)} must be (B, P) = {tuple(a.shape)}")
        a = a.masked_fill(~mask.to(device=a.device, dtype=torch.bool), 0.0)
    return F.normalize(a, dim=1)


def attention_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: int = 2, *,
                   layout: str = "channels_first", mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention-transfer loss: squared difference of the normalised attention maps, averaged.

    L_AT = 1/(B*P) sum_{b, j} (Q_s[b, j] - Q_t[b, j])^2, the mean over the batch (B) and the
    P = H*W (or L) positions, with Q = attention_map(f); this is the authors' released code.
    The paper (Zagoruyko & Komodakis, ICLR 2017) writes beta/2 times the *un-squared* 2-norm
    of the difference, with beta = 1e3 divided by P and by the batch size: the same averaging,
    but the distance is not squared. We follow the code (its gradient shrinks smoothly to zero
    as the maps agree); `AttentionTransfer` applies beta = 1000 to this mean. Channel counts
    may differ; spatial sizes must match. The teacher side is detached (no gradient reaches
    the teacher). Introduced in notebook 02. ``layout`` and ``mask`` as in `attention_map`
    (masked positions contribute 0; the mean still divides by B*P).
    """
    _check_pair(student_feat, teacher_feat, "attention_loss")
    last = _check_layout(layout)
    spatial = (lambda f: f.shape[1:-1]) if last else (lambda f: f.shape[2:])
    if spatial(student_feat) != spatial(teacher_feat):
        raise ValueError(f"attention_loss: spatial sizes differ: student {tuple(student_feat.shape)}, "
                         f"teacher {tuple(teacher_feat.shape)}")
    if not last and mask is None:
        return (attention_map(student_feat, p) - attention_map(teacher_feat.detach(), p)).pow(2).mean()
    qs = attention_map(student_feat, p, layout=layout, mask=mask)
    return (qs - attention_map(teacher_feat.detach(), p, layout=layout, mask=mask)).pow(2).mean()


class AttentionTransfer(nn.Module):
    """Attention transfer on layer pairs plus a base loss, as a loss for `kd.fit`.

    L = base(...) + beta * sum over pairs of attention_loss(f_s[a], f_t[b]); default beta=1000,
    the paper's 10^3 applied to the per-element mean as in the authors' code (not tuned for
    the course's small models). Introduced in notebook 02.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], *, beta: float = 1000.0, base: nn.Module | None = CE(),
                 p: int = 2, layout: str = "channels_first"):
        super().__init__()
        if not pairs:
            raise ValueError("AttentionTransfer needs at least one (student_layer, teacher_layer) pair")
        _check_layout(layout)
        self.pairs, self.beta, self.base, self.p, self.layout = list(pairs), beta, base, p, layout

    def forward(self, student_out, teacher_out, targets, features):
        at = 0.0
        for a, b in self.pairs:
            fs = _feature(features.student, a, "student", "AttentionTransfer")
            ft = _feature(features.teacher, b, "teacher", "AttentionTransfer")
            at = at + attention_loss(fs, ft, self.p, layout=self.layout, mask=_token_mask(targets, fs, self.layout))
        if self.base is None:
            return self.beta * at
        return self.base(student_out, teacher_out, targets, features) + self.beta * at

