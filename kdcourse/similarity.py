"""Layer similarity: linear CKA (Kornblith et al. 2019), unbiased HSIC and mini-batch CKA.

Introduced in notebook 02. For activations X (n, p) and Y (n, q) of n inputs at two layers,
linear CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred columns: 1 for representations
equal up to rotation and isotropic scaling, near 0 for unrelated ones. Mini-batch CKA (Nguyen et al.
2021, "Do Wide and Deep Networks Learn the Same Things?") accumulates unbiased HSIC over batches,
so large sets and wide layers fit in memory.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .hooks import capture
from .utils import eval_mode

__all__ = ["linear_cka", "hsic_unbiased", "MinibatchCKA", "cka_matrix"]


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError(f"{what}: need batched tensors (B, ...), got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{what}: batch sizes differ ({a.shape[0]} vs {b.shape[0]})")
    if a.shape[0] == 0:
        raise ValueError(f"{what}: empty batch")


def linear_cka(x: torch.Tensor, y: torch.Tensor, *, form: str = "auto") -> torch.Tensor:
    """Linear centred kernel alignment between two representations of the same n examples.

    x (n, ...) and y (n, ...) are flattened to (n, p) and (n, q), centred per column, then
    CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), in [0, 1]. Invariant to orthogonal
    transforms and isotropic scaling, not to arbitrary invertible linear maps.
    Kornblith et al., "Similarity of Neural Network Representations Revisited", ICML 2019.
    Introduced in notebook 02.
    form: "features" computes the p x p, q x q and q x p products above (memory O(p^2 + q^2));
    "kernel" the same value through the n x n Gram matrices K = X X^T, L = Y Y^T,
    CKA = tr(K L) / sqrt(tr(K K) tr(L L)) (memory O(n^2), for wide layers such as a ResNet's
    early maps); "auto" takes the features form unless it needs more than 2^24 numbers and
    more than the kernel form.
    """
    if x.dim() < 2 or y.dim() < 2:
        raise ValueError(f"linear_cka needs representations (n, features...), got shapes {tuple(x.shape)} "
                         f"and {tuple(y.shape)}; reshape a vector v to v[:, None]")
    _check_pair(x, y, "linear_cka")
    if x.shape[0] < 2:
        raise ValueError("linear_cka needs at least 2 examples")
    if form not in ("auto", "features", "kernel"):
        raise ValueError(f"linear_cka: form must be 'auto', 'features' or 'kernel', got {form!r}")
    x = x.flatten(1).double()
    y = y.flatten(1).double()
    x, y = x - x.mean(0), y - y.mean(0)
    (n, p), q = x.shape, y.shape[1]
    feature_numbers = p * p + q * q + p * q
    if form == "kernel" or (form == "auto" and feature_numbers > max(2 ** 24, 2 * n * n)):
        k, l_ = x @ x.T, y @ y.T                                           # (n, n) each
        num, den = (k * l_).sum(), (k * k).sum().sqrt() * (l_ * l_).sum().sqrt()
    else:
        num = (y.T @ x).pow(2).sum()
        den = (x.T @ x).pow(2).sum().sqrt() * (y.T @ y).pow(2).sum().sqrt()
    if den == 0:
        raise ValueError("linear_cka: a representation is constant across examples")
    return (num / den).float()


def hsic_unbiased(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator of two n x n kernel matrices (Song et al. 2012), n >= 4.

    With K~, L~ the kernels with zeroed diagonals and 1 the ones vector:
    HSIC_1 = [tr(K~ L~) + (1'K~1)(1'L~1) / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)).
    Its mean over mini-batches is an unbiased estimate of the population HSIC, which is what
    mini-batch CKA accumulates (Nguyen, Raghu & Kornblith, ICLR 2021).
    """
    n = k.shape[0]
    if k.shape != (n, n) or l_.shape != (n, n):
        raise ValueError(f"hsic_unbiased needs two square kernels of the same size, got {tuple(k.shape)} "
                         f"and {tuple(l_.shape)}")
    if n < 4:
        raise ValueError(f"hsic_unbiased needs n >= 4 examples, got {n}")
    k = k - torch.diag_embed(torch.diagonal(k))
    l_ = l_ - torch.diag_embed(torch.diagonal(l_))
    ones_k, ones_l = k.sum(0), l_.sum(0)                                 # 1'K~ and 1'L~ (n,)
    trace = (k * l_.T).sum()
    return (trace + k.sum() * l_.sum() / ((n - 1) * (n - 2)) - 2 * (ones_k @ ones_l) / (n - 2)) / (n * (n - 3))


class MinibatchCKA:
    """Linear CKA accumulated over mini-batches: memory O(b^2) for batches of b examples.

    ``update(x, y)`` adds one batch of both representations (b >= 4 rows each); ``value()`` is
    mean HSIC_1(K, L) / sqrt(mean HSIC_1(K, K) mean HSIC_1(L, L)) over the batches, with the
    unbiased `hsic_unbiased` (Nguyen, Raghu & Kornblith, "Do Wide and Deep Networks Learn the
    Same Things?", ICLR 2021). It estimates the population CKA without the bias of the plain
    estimator, so it is close to, not equal to, `linear_cka` on all examples at once.
    """

    def __init__(self):
        self.xy = self.xx = self.yy = 0.0
        self.batches = 0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add the HSIC terms of one batch of x (b, ...) and y (b, ...)."""
        _check_pair(x, y, "MinibatchCKA.update")
        x, y = x.flatten(1).double(), y.flatten(1).double()
        k, l_ = x @ x.T, y @ y.T
        self.xy += float(hsic_unbiased(k, l_))
        self.xx += float(hsic_unbiased(k, k))
        self.yy += float(hsic_unbiased(l_, l_))
        self.batches += 1

    def value(self) -> float:
        """The mini-batch CKA of the batches seen so far."""
        if self.batches == 0:
            raise ValueError("MinibatchCKA: no batch was added (call update first)")
        if self.xx <= 0 or self.yy <= 0:
            raise ValueError("MinibatchCKA: a representation has no variance across the batches")
        return self.xy / (self.xx * self.yy) ** 0.5


@torch.no_grad()
def cka_matrix(model_a: nn.Module, model_b: nn.Module, x: torch.Tensor, layers_a: Sequence[str],
               layers_b: Sequence[str], *, batch_size: int | None = None, select=None) -> torch.Tensor:
    """Linear CKA between every layer of `layers_a` (rows) and of `layers_b` (columns) on inputs x.

    x: (n, *in_shape). Returns a (len(layers_a), len(layers_b)) tensor. Both models run in
    eval mode (the train/eval mode of each submodule is restored afterwards). Introduced in
    notebook 02. batch_size=None: one forward pass on all of x and `linear_cka`. batch_size=b:
    forward passes of b rows and mini-batch CKA (`MinibatchCKA`; a last batch of fewer than 4
    rows is left out), for inputs or layers too large for one pass. ``select`` as in `capture`.
    """
    if batch_size is not None:
        return _cka_matrix_batched(model_a, model_b, x, list(layers_a), list(layers_b), batch_size, select)
    outs = []
    for model, layers in ((model_a, layers_a), (model_b, layers_b)):
        with eval_mode(model), capture(model, layers, select=select) as feats:
            model(x)
        outs.append([feats[n] for n in layers])
    return torch.tensor([[float(linear_cka(a, b)) for b in outs[1]] for a in outs[0]])


def _cka_matrix_batched(model_a, model_b, x, layers_a, layers_b, batch_size, select) -> torch.Tensor:
    """`cka_matrix` with mini-batch CKA, `batch_size` rows per forward pass."""
    if batch_size < 4:
        raise ValueError(f"cka_matrix: batch_size must be >= 4 for mini-batch CKA, got {batch_size}")
    acc = [[MinibatchCKA() for _ in layers_b] for _ in layers_a]
    with eval_mode(model_a, model_b):
        for i in range(0, len(x) - 3, batch_size):
            xb = x[i:i + batch_size]
            if len(xb) < 4:
                break
            with capture(model_a, layers_a, select=select) as fa:
                model_a(xb)
            with capture(model_b, layers_b, select=select) as fb:
                model_b(xb)
            for r, a in enumerate(layers_a):
                for c, b in enumerate(layers_b):
                    acc[r][c].update(fa[a], fb[b])
    return torch.tensor([[cell.value() for cell in row] for row in acc])
