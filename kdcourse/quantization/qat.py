"""Fake-quantized layers, BatchNorm folding, post-training quantization (PTQ) and QAT.

Fake quantization simulates int8 (or fewer bits) in float: quantize and immediately
dequantize, with the straight-through estimator for the gradient (Bengio et al. 2013,
arXiv:1308.3432). `quantize_model` folds each BatchNorm into the convolution before it (as int8
engines do), wraps every Conv/Linear in a `QuantLayer` (weights per-channel symmetric,
activations per-tensor asymmetric) and `calibrate` fixes the activation ranges: that is PTQ.
Fine-tuning the result with `kd.fit` is quantization-aware training (Jacob et al. 2018;
Krishnamoorthi 2018, arXiv:1806.08342; with a distillation loss: Mishra & Marr 2018, Polino et
al. 2018). Introduced in notebook 06, section 3.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..utils import as_number
from .affine import _check_finite, check_bits, fake_quantize, qparams
from .observers import OBSERVERS, check_pct, observe

__all__ = ["FakeQuant", "QuantLayer", "fold_batchnorm", "quantize_model", "calibrate"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _check_observer(observer: str) -> str:
    if observer not in OBSERVERS:
        raise ValueError(f"unknown observer {observer!r}; choose one of {OBSERVERS}")
    return observer


class FakeQuant(nn.Module):
    """Fake-quantize a tensor (shape kept) with the straight-through estimator.

    weight=True: the range is re-observed from the tensor on every call (per channel along
    axis 0, symmetric) — what QAT does for weights. weight=False (activations): the range is
    fixed by `calibrate` (per tensor, asymmetric) and the module passes x through until then.
    bits in 2..16; pct in (50, 100] (used by the "percentile" observer).
    """

    def __init__(self, bits: int = 8, *, weight: bool = False, observer: str = "minmax",
                 per_channel: bool = True, pct: float = 99.99):
        super().__init__()
        self.bits, self.observer, self.pct = check_bits(bits), _check_observer(observer), check_pct(pct)
        self.weight = self.symmetric = weight
        self.axis = 0 if (weight and per_channel) else None
        self.enabled = True
        self.register_buffer("lo", torch.tensor(float("nan")))
        self.register_buffer("hi", torch.tensor(float("nan")))
        self._recorded: list[torch.Tensor] | None = None
        self._cached: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._recorded is not None:
            self._recorded.append(x.detach())
        if not self.enabled:
            return x
        if self.weight:  # re-observe while training; in eval reuse the range until the weight changes
            key = (id(x), x._version)
            if self.training or self._cached is None or self._cached[0] != key:
                with torch.no_grad():
                    qp = observe(x, self.observer, bits=self.bits, symmetric=True, axis=self.axis, pct=self.pct)
                self._cached = (key, qp)
            qp = self._cached[1]
        elif torch.isnan(self.lo):
            return x  # not calibrated yet
        else:
            qp = qparams(self.lo, self.hi, bits=self.bits, symmetric=False)
        return fake_quantize(x, qp)

    def set_range_from(self, xs: list[torch.Tensor]) -> None:
        """Fix the activation range from recorded calibration tensors with this module's observer."""
        x = torch.cat([t.reshape(-1) for t in xs]) if xs else torch.empty(0)
        qp = observe(x, self.observer, bits=self.bits, symmetric=False, pct=self.pct)
        lo, hi = qp.float_range()
        self.lo.copy_(lo)
        self.hi.copy_(hi)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, weight={self.weight}, observer={self.observer!r}"


class QuantLayer(nn.Module):
    """A Conv1d/Conv2d/Linear whose input activation and weight are fake-quantized.

    Input (B, ...) -> output of the wrapped layer; bias stays float (as in int8 kernels, where
    it is int32 at scale S_x * S_w). weight_bits and act_bits must be integers in 2..16.
    """

    def __init__(self, layer: nn.Module, *, weight_bits: int = 8, act_bits: int = 8,
                 weight_observer: str = "minmax", act_observer: str = "minmax", per_channel: bool = True):
        super().__init__()
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            raise TypeError(f"QuantLayer wraps Conv1d, Conv2d or Linear, got {type(layer).__name__}")
        weight_bits, act_bits = check_bits(weight_bits, "weight_bits"), check_bits(act_bits, "act_bits")
        self.layer = layer
        self.act_fq = FakeQuant(act_bits, weight=False, observer=act_observer)
        self.weight_fq = FakeQuant(weight_bits, weight=True, observer=weight_observer, per_channel=per_channel)
        self.to(layer.weight.device)  # the range buffers live with the layer (e.g. on the GPU)

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped layer's float weight, for code that reads ``layer.weight`` (e.g. its dtype)."""
        return self.layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The wrapped layer's float bias (or None)."""
        return self.layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self.act_fq(x), self.weight_fq(self.layer.weight)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


def _conv_bn_pairs(parent: nn.Module) -> list[tuple[str, str]]:
    """Names of the (conv, bn) children of `parent` that fold_batchnorm folds."""
    kids = parent._modules
    if isinstance(parent, nn.Sequential):  # adjacent: the BatchNorm gets the conv's output
        names = list(kids)
        return [(a, b) for a, b in zip(names, names[1:])
                if isinstance(kids[a], _CONVS) and isinstance(kids[b], _BATCHNORMS)]
    pairs = []
    for name, child in kids.items():  # named siblings convK / bnK (torchvision's ResNet blocks)
        k = re.fullmatch(r"conv(\d*)", name)
        if k and isinstance(child, _CONVS) and isinstance(kids.get(f"bn{k[1]}"), _BATCHNORMS):
            pairs.append((name, f"bn{k[1]}"))
    return pairs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) with each BatchNorm that follows a Conv folded into it.

    W' = W * gamma / sqrt(var + eps) (per output channel), b' = (b - mean) * gamma / sqrt(var + eps)
    + beta (torch.nn.utils.fusion.fuse_conv_bn_eval); the BatchNorm becomes Identity. Same outputs
    in eval mode (what int8 engines do before quantizing). Folded: a Conv directly followed by a
    BatchNorm inside an nn.Sequential, and sibling attributes ``convK`` / ``bnK`` (K digits or
    empty) of any other module — trusted, as in torchvision's ResNets, to mean that forward applies
    bnK right after convK. Every other BatchNorm (after a Linear, or after a ReLU) is left as it
    is. A pair that cannot fold — channel counts that differ, a BatchNorm without running
    statistics — raises ValueError naming it.
    """
    model = copy.deepcopy(model).eval()
    for parent_name, parent in list(model.named_modules()):
        for conv_name, bn_name in _conv_bn_pairs(parent):
            conv, bn = parent._modules[conv_name], parent._modules[bn_name]
            where = f"{parent_name + '.' if parent_name else ''}{conv_name} -> {bn_name}"
            if bn.running_mean is None or bn.running_var is None:
                raise ValueError(f"cannot fold {where}: the BatchNorm keeps no running statistics "
                                 "(track_running_stats=False)")
            if conv.out_channels != bn.num_features:
                raise ValueError(f"cannot fold {where}: {conv.out_channels} conv output channels but "
                                 f"{bn.num_features} BatchNorm features")
            setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(parent, bn_name, nn.Identity())
    return model


def _float_reason(module: nn.Module, parent: nn.Module | None) -> str | None:
    """Why a module holding a weight matrix or kernel stays float in quantize_model (None: it is wrapped)."""
    if isinstance(parent, nn.MultiheadAttention):
        return "projection of a MultiheadAttention, which reads its weight directly (never calls it)"
    if isinstance(parent, nn.TransformerEncoderLayer) and isinstance(module, nn.Linear):
        return "Linear of a TransformerEncoderLayer, whose inference fast path reads its weight directly"
    if isinstance(module, _QUANTIZABLE):
        return None
    if not any(p.dim() >= 2 for p in module.parameters(recurse=False)):
        return None  # no matrix or kernel of its own (norms, activations, containers)
    if isinstance(module, nn.MultiheadAttention):
        return "MultiheadAttention: F.multi_head_attention_forward reads in_proj_weight, not a layer"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return f"{type(module).__name__}: a table lookup, no multiplication to quantize"
    return f"{type(module).__name__}: QuantLayer wraps Conv1d, Conv2d and Linear only"


def quantize_model(model: nn.Module, *, bits: int = 8, weight_bits: int | None = None,
                   act_bits: int | None = None, weight_observer: str = "minmax",
                   act_observer: str = "minmax", per_channel: bool = True,
                   calib_x: torch.Tensor | None = None, skip: Sequence[str] = (),
                   verbose: bool = False) -> nn.Module:
    """A fake-quantized copy of a model for PTQ and QAT (BatchNorm folded first).

    Every Conv1d/Conv2d/Linear becomes a QuantLayer (weights per-channel symmetric, activations
    per-tensor asymmetric); weight_bits / act_bits default to `bits` (all integers in 2..16). With
    `calib_x` (N, *in_shape) the activation ranges are calibrated at once (post-training
    quantization); train the result with `kd.fit` for QAT. Returned in eval mode, with every
    parameter trainable (``requires_grad=True``) even when `model` was a frozen teacher: QAT trains
    the copy, and a frozen copy would silently train nothing (or only the folded biases).
    What cannot be wrapped stays float instead of failing: nn.MultiheadAttention and its out_proj
    (its forward reads the weights directly), the Linear layers of nn.TransformerEncoderLayer (its
    fast path does too), embeddings, Conv3d, transposed convolutions, ...;
    so do the modules named in `skip` (e.g. the first and last layer). The copy's attribute
    ``left_in_float`` maps each such module holding a weight matrix or kernel to the reason
    (empty for the course's models); `verbose` prints it.
    """
    bits = check_bits(bits)
    wb = check_bits(bits if weight_bits is None else weight_bits, "weight_bits")
    ab = check_bits(bits if act_bits is None else act_bits, "act_bits")
    _check_observer(weight_observer), _check_observer(act_observer)
    skip = [skip] if isinstance(skip, str) else list(skip)
    names = dict(model.named_modules())
    if any(n not in names or not n for n in skip):
        raise KeyError(f"unknown module(s) {[n for n in skip if n not in names or not n]} in skip; "
                       f"valid names include: {', '.join(list(names)[1:30])}")
    qmodel, left = fold_batchnorm(model), {}
    for parent_name, parent in list(qmodel.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if any(full.startswith(n + ".") for n in skip):
                continue  # inside a skipped module: reported under its name
            reason = "named in skip" if full in skip else _float_reason(child, parent)
            if reason is not None:
                left[full] = reason
            elif isinstance(child, _QUANTIZABLE):
                setattr(parent, name, QuantLayer(child, weight_bits=wb, act_bits=ab, weight_observer=weight_observer,
                                                 act_observer=act_observer, per_channel=per_channel))
    qmodel.left_in_float = left
    qmodel.requires_grad_(True)
    if verbose:
        print(f"quantize_model: {len(left)} module(s) left in float" +
              "".join(f"\n  {n}: {r}" for n, r in left.items()))
    if calib_x is not None:
        calibrate(qmodel, calib_x)
    return qmodel.eval()


@torch.no_grad()
def calibrate(qmodel: nn.Module, calib_x: torch.Tensor, *, batch_size: int = 256) -> nn.Module:
    """Run `calib_x` (N, *in_shape) through `qmodel` and fix every activation FakeQuant's range.

    Layers are calibrated in order, each seeing the already-quantized outputs of the layers
    before it. Returns `qmodel`, left in eval mode (it is ready for inference).
    """
    if calib_x is None or len(calib_x) == 0:
        raise ValueError("calibrate needs a non-empty calibration set calib_x of shape (N, *in_shape)")
    _check_finite(calib_x, "calibration set")
    batch_size = as_number(batch_size, "batch_size", integer=True)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    qmodel.eval()
    fqs = [m for m in qmodel.modules() if isinstance(m, FakeQuant) and not m.weight]
    for fq in fqs:
        fq.lo.fill_(float("nan"))
    for fq in fqs:  # one pass per layer: later layers see quantized inputs, as at inference
        fq._recorded = []
        for i in range(0, len(calib_x), batch_size):
            qmodel(calib_x[i:i + batch_size])
        fq.set_range_from(fq._recorded)
        fq._recorded = None
    return qmodel
