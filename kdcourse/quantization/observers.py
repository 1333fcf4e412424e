"""Range observers: choose the float range [lo, hi] that a quantization grid covers.

Min/max covers every value, so one outlier stretches the step S for all of them; a percentile
range clips the rarest values; the MSE-optimal range searches shrink factors alpha of the
min/max range and keeps the one with the smallest quantization error, trading a little
clipping for a finer step (Nagel et al. 2021, "A White Paper on Neural Network Quantization",
arXiv:2106.08295, section 3.1). Calibration = running a few hundred inputs and observing.
Introduced in notebook 06, section 2.

Every observer works on the input's device, in float32 (float64 stays float64), and returns
(lo, hi) of shape () per tensor or (C,) per channel along `axis`.
"""
from __future__ import annotations

import math

import torch

from ..utils import as_number
from .affine import QParams, _check_finite, check_bits, fake_quantize, qparams

__all__ = ["OBSERVERS", "check_pct", "minmax_range", "percentile_range", "mse_range", "observe"]

OBSERVERS = ("minmax", "percentile", "mse")


def check_pct(pct) -> float:
    """Return the percentile `pct` as a float, or raise ValueError unless it is in (50, 100]."""
    pct = as_number(pct, "pct")
    if not 50 < pct <= 100:
        raise ValueError(f"pct must be in (50, 100], got {pct}")
    return pct


def _channels(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """(1, N) per tensor, or (C, N) with the channel axis first; float32 or wider, on x's device."""
    x = x.detach().to(torch.promote_types(x.dtype, torch.float32))
    if axis is not None:
        axis = as_number(axis, "axis", integer=True)
    return x.reshape(1, -1) if axis is None else x.movedim(axis, 0).reshape(x.size(axis), -1)


def _squeeze(v: torch.Tensor, axis: int | None) -> torch.Tensor:
    return v.reshape(()) if axis is None else v


def minmax_range(x: torch.Tensor, *, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of `x`, per tensor (shape ()) or per channel along `axis` (shape (C,))."""
    _check_finite(x, "calibration data")
    flat = _channels(x, axis)
    return _squeeze(flat.amin(1), axis), _squeeze(flat.amax(1), axis)


def percentile_range(x: torch.Tensor, *, pct: float = 99.99,
                     axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(100 - pct, pct) percentiles of `x`: ignores the rarest outliers (pct in (50, 100]).

    Order statistics of the N values per channel: lo is the floor((1 - pct/100)(N - 1))-th
    smallest, hi the ceil(pct/100 (N - 1))-th, so with few values a high pct is the min/max.
    """
    pct = check_pct(pct)
    _check_finite(x, "calibration data")
    flat = _channels(x, axis).sort(dim=1).values
    n = flat.size(1)
    i_lo = min(n - 1, int(math.floor((1 - pct / 100) * (n - 1))))
    i_hi = max(0, int(math.ceil(pct / 100 * (n - 1))))
    return _squeeze(flat[:, i_lo], axis), _squeeze(flat[:, i_hi], axis)


def mse_range(x: torch.Tensor, *, bits: int = 8, symmetric: bool = False, axis: int | None = None,
              n_grid: int = 50, max_samples: int = 100_000) -> tuple[torch.Tensor, torch.Tensor]:
    """The range alpha * (min, max), alpha in (0, 1], whose quantization MSE on `x` is smallest.

    Grid search over the `n_grid` shrink factors alpha = k / n_grid (per channel when `axis` is
    set), on at most `max_samples` values per channel, on x's device; minimises
    mean((fake_quantize(x; alpha * range) - x)^2) (Nagel et al. 2021, arXiv:2106.08295, section 3.1).
    """
    bits = check_bits(bits)
    n_grid = as_number(n_grid, "n_grid", integer=True)
    max_samples = as_number(max_samples, "max_samples", integer=True)
    if n_grid < 1 or max_samples < 1:
        raise ValueError(f"n_grid and max_samples must be >= 1, got {n_grid} and {max_samples}")
    lo, hi = minmax_range(x, axis=axis)
    flat = _channels(x, axis)  # (C, N)
    if flat.size(1) > max_samples:  # search on an evenly strided subsample (min and max are kept above)
        flat = flat[:, ::math.ceil(flat.size(1) / max_samples)]
    alphas = torch.linspace(1.0 / n_grid, 1.0, n_grid, device=flat.device, dtype=flat.dtype)
    errs = []
    for a in alphas:
        qp = qparams(lo * a, hi * a, bits=bits, symmetric=symmetric, axis=None if axis is None else 0)
        errs.append(((fake_quantize(flat, qp) - flat) ** 2).mean(1))  # (C,)
    best = _squeeze(alphas[torch.stack(errs).argmin(0)], axis)  # () or (C,)
    return lo * best, hi * best


def observe(x: torch.Tensor, method: str = "minmax", *, bits: int = 8, symmetric: bool = False,
            axis: int | None = None, pct: float = 99.99) -> QParams:
    """QParams for `x` from a range observer: "minmax", "percentile" (pct) or "mse" (bits-aware)."""
    if method == "minmax":
        lo, hi = minmax_range(x, axis=axis)
    elif method == "percentile":
        lo, hi = percentile_range(x, pct=pct, axis=axis)
    elif method == "mse":
        lo, hi = mse_range(x, bits=bits, symmetric=symmetric, axis=axis)
    else:
        raise ValueError(f"unknown observer {method!r}; choose one of {OBSERVERS}")
    return qparams(lo, hi, bits=bits, symmetric=symmetric, axis=axis)
