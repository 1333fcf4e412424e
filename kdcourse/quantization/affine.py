"""Affine (uniform) quantization: scale, zero point, quantize, dequantize, fake quantization.

A float x becomes an integer q on a grid of 2**bits levels and back::

    q = clamp(round(x / S) + Z, qmin, qmax)        x_hat = (q - Z) * S

with scale S > 0 and integer zero point Z (Jacob et al. 2018, "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference"; Krishnamoorthi 2018,
arXiv:1806.08342; Nagel et al. 2021, "A White Paper on Neural Network Quantization",
arXiv:2106.08295). Inside the range [(qmin - Z) S, (qmax - Z) S] the rounding error is at most
S / 2; outside it values clip. Introduced in notebook 06, section 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..utils import as_number

__all__ = ["check_bits", "QParams", "qparams", "quantize", "dequantize", "fake_quantize", "quant_mse"]


def check_bits(bits, name: str = "bits") -> int:
    """Return `bits` as an int, or raise ValueError unless it is a whole number in 2..16.

    Accepts Python ints, NumPy integers and one-element tensors (``np.int64(8)`` -> 8); bools and
    strings raise TypeError. `name` is the argument named in the message (e.g. "weight_bits").
    """
    value = as_number(bits, name)
    if not 2 <= value <= 16 or value != int(value):  # NaN and +-inf fail the first test
        raise ValueError(f"{name} must be an integer from 2 to 16, got {bits!r}")
    return int(value)


def _check_finite(x: torch.Tensor, what: str) -> None:
    """Raise ValueError if `x` is empty or holds NaN or +-inf (which would silently clip or poison S)."""
    if x.numel() == 0:
        raise ValueError(f"{what} is empty: give at least one value (e.g. a non-empty calibration set)")
    if not bool(torch.isfinite(x).all()):
        if bool(torch.isnan(x).any()):
            raise ValueError(f"{what} contains NaN values; clean the input before quantizing")
        raise ValueError(f"{what} contains infinite values (+inf or -inf); clean the input before quantizing")


@dataclass
class QParams:
    """Affine quantization parameters: scale S (> 0), zero point Z, integer grid [qmin, qmax].

    Per-tensor: `scale` and `zero_point` have shape (); per-channel: shape (C,) with `axis`
    the channel dimension of the tensors they apply to (0 for Conv/Linear weights).
    """
    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    axis: int | None = None

    def _bcast(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point reshaped to broadcast against `x`."""
        if self.axis is None:
            return self.scale, self.zero_point
        if x.size(self.axis) != self.scale.numel():
            raise ValueError(f"per-channel params have {self.scale.numel()} channels but the tensor has "
                             f"{x.size(self.axis)} along axis {self.axis}")
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return self.scale.reshape(shape), self.zero_point.reshape(shape)

    def float_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The smallest and largest representable floats, (qmin - Z) S and (qmax - Z) S."""
        return (self.qmin - self.zero_point) * self.scale, (self.qmax - self.zero_point) * self.scale


def qparams(lo, hi, *, bits: int = 8, symmetric: bool = False, axis: int | None = None) -> QParams:
    """Scale and zero point that map the float range [lo, hi] onto a `bits`-bit grid.

    lo, hi: floats or tensors of shape () / (C,) (per-channel, with `axis`); the results live on
    their device. asymmetric: grid [0, 2^b - 1], range widened to contain 0,
    S = (hi - lo) / (2^b - 1), Z = round(-lo / S) (so 0.0 is exactly representable).
    symmetric: grid [-2^(b-1), 2^(b-1) - 1], Z = 0, S = max(|lo|, |hi|) / (2^(b-1) - 1).
    """
    bits = check_bits(bits)
    if axis is not None:
        axis = as_number(axis, "axis", integer=True)
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    _check_finite(lo, "lo")
    _check_finite(hi, "hi")
    if (lo > hi).any():
        raise ValueError("qparams needs lo <= hi")
    tiny = torch.finfo(torch.float32).eps
    if symmetric:
        qmin, qmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1
        scale = (torch.maximum(lo.abs(), hi.abs()) / qmax).clamp_min(tiny)
        zero_point = torch.zeros_like(scale, dtype=torch.int64)
    else:
        qmin, qmax = 0, 2 ** bits - 1
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
        scale = ((hi - lo) / (qmax - qmin)).clamp_min(tiny)
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int64)
    return QParams(scale, zero_point, qmin, qmax, axis)


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """q = clamp(round(x / S) + Z, qmin, qmax), as int32 of the shape of `x`."""
    _check_finite(x, "input")
    scale, zp = qp._bcast(x)
    return (torch.round(x / scale) + zp).clamp(qp.qmin, qp.qmax).to(torch.int32)


def dequantize(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    """x_hat = (q - Z) * S, float32 of the shape of `q`."""
    scale, zp = qp._bcast(q)
    return (q.to(torch.float32) - zp) * scale


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """dequantize(quantize(x)) in float, with the straight-through estimator for the gradient.

    Forward: x_hat (shape of x). Backward: d x_hat / d x = 1 where round(x / S) + Z lies in
    [qmin, qmax], 0 where it clips (Bengio et al. 2013, arXiv:1308.3432; as
    torch.fake_quantize_per_tensor_affine / per_channel_affine).
    """
    _check_finite(x, "input")
    scale, zp = qp._bcast(x)
    t = torch.round(x / scale) + zp
    inside = (t >= qp.qmin) & (t <= qp.qmax)
    x_hat = (t.clamp(qp.qmin, qp.qmax) - zp) * scale
    return torch.where(inside, x + (x_hat - x).detach(), x_hat.detach())


def quant_mse(x: torch.Tensor, qp: QParams) -> float:
    """Mean squared error of fake_quantize(x, qp) against x: mean((x_hat - x)^2)."""
    with torch.no_grad():
        return float(((fake_quantize(x, qp) - x) ** 2).mean())
