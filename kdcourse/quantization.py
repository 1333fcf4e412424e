"""Quantization: affine maths, observers, fake quantization, QAT, real int8 engines. Introduced in notebook 06.

Affine (uniform) quantization maps a float x to an integer q on a grid of 2**bits levels::

    q = clamp(round(x / S) + Z, qmin, qmax)        x_hat = (q - Z) * S

with scale S > 0 and integer zero point Z (Jacob et al. 2018, "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference"; Krishnamoorthi 2018;
Nagel et al. 2021, "A White Paper on Neural Network Quantization"). Inside the range
[(qmin - Z) S, (qmax - Z) S] the rounding error is at most S / 2; outside it values clip.

The first half of this module is plain PyTorch written for reading (parameters, observers,
fake quantization with the straight-through estimator, a QAT wrapper for the course models).
The second half wraps the real int8 engines that run on a CPU today — torchao's pt2e flow with
the X86 Inductor quantizer (+ ``torch.compile``), torchao ``quantize_`` for Linear layers, and
ONNX Runtime static / dynamic quantization — so they can be measured side by side with
``kdcourse.benchmark.measure_latency``. (Older tutorials use the eager ``torch.ao.quantization``
API; it is deprecated and not used here.)
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["QParams", "check_bits", "qparams", "quantize", "dequantize", "fake_quantize", "FakeQuant",
           "minmax_range", "percentile_range", "mse_range", "observe", "OBSERVERS", "quant_mse",
           "fold_batchnorm", "QuantLayer", "quantize_model", "calibrate", "recovered_share", "layer_macs",
           "Engine", "compiled_fp32", "pt2e_int8", "torchao_linear_int8", "export_onnx", "ort_model",
           "ort_static_int8", "ort_dynamic_int8", "FP32_REFERENCE", "engine_accuracy", "compare_engines"]

OBSERVERS = ("minmax", "percentile", "mse")


# ----------------------------------------------------------------------------- affine maths
def check_bits(bits) -> int:
    """Return `bits` as an int, or raise ValueError unless it is an integer in 2..16."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer from 2 to 16, got {bits!r}")
    return bits


def _check_finite(x: torch.Tensor, what: str) -> None:
    if x.numel() == 0:
        raise ValueError(f"{what} is empty: give at least one value (e.g. a non-empty calibration set)")
    if torch.isnan(x).any():
        raise ValueError(f"{what} contains NaN values; clean the input before quantizing")


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

    lo, hi: floats or tensors of shape () / (C,) (per-channel, with `axis`).
    asymmetric: grid [0, 2^b - 1], range widened to contain 0, S = (hi - lo) / (2^b - 1),
    Z = round(-lo / S) (so 0.0 is exactly representable).
    symmetric: grid [-2^(b-1), 2^(b-1) - 1], Z = 0, S = max(|lo|, |hi|) / (2^(b-1) - 1).
    """
    bits = check_bits(bits)
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
    [qmin, qmax], 0 where it clips (Bengio et al. 2013; as torch.fake_quantize_per_*_affine).
    """
    _check_finite(x, "input")
    scale, zp = qp._bcast(x)
    t = torch.round(x / scale) + zp
    inside = (t >= qp.qmin) & (t <= qp.qmax)
    x_hat = (t.clamp(qp.qmin, qp.qmax) - zp) * scale
    return torch.where(inside, x + (x_hat - x).detach(), x_hat.detach())


def quant_mse(x: torch.Tensor, qp: QParams) -> float:
    """Mean squared error of fake_quantize(x, qp) against x."""
    with torch.no_grad():
        return float(((fake_quantize(x, qp) - x) ** 2).mean())


# ----------------------------------------------------------------------------- observers
def _channels(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """(N,) per-tensor, or (C, N) with the channel axis first."""
    return x.reshape(1, -1) if axis is None else x.movedim(axis, 0).reshape(x.size(axis), -1)


def _squeeze(v: torch.Tensor, axis: int | None) -> torch.Tensor:
    return v.reshape(()) if axis is None else v


def minmax_range(x: torch.Tensor, *, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of `x`, per tensor (shape ()) or per channel along `axis` (shape (C,))."""
    _check_finite(x, "calibration data")
    flat = _channels(x.detach().float(), axis)
    return _squeeze(flat.amin(1), axis), _squeeze(flat.amax(1), axis)


def percentile_range(x: torch.Tensor, *, pct: float = 99.99,
                     axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(100 - pct, pct) percentiles of `x`: ignores the rarest outliers (pct in (50, 100])."""
    if not 50 < pct <= 100:
        raise ValueError(f"pct must be in (50, 100], got {pct}")
    _check_finite(x, "calibration data")
    flat = _channels(x.detach().float(), axis).sort(dim=1).values
    n = flat.size(1)
    i_lo = min(n - 1, int(math.floor((1 - pct / 100) * (n - 1))))
    i_hi = max(0, int(math.ceil(pct / 100 * (n - 1))))
    return _squeeze(flat[:, i_lo], axis), _squeeze(flat[:, i_hi], axis)


def mse_range(x: torch.Tensor, *, bits: int = 8, symmetric: bool = False, axis: int | None = None,
              n_grid: int = 50, max_samples: int = 100_000) -> tuple[torch.Tensor, torch.Tensor]:
    """The range alpha * (min, max), alpha in (0, 1], whose quantization MSE on `x` is smallest.

    Grid search over `n_grid` shrink factors (per channel when `axis` is set), on at most
    `max_samples` values per channel; trades a little clipping of outliers for a finer step
    (Nagel et al. 2021, "A White Paper on Neural Network Quantization", arXiv:2106.08295,
    section 3.1, quantization range setting).
    """
    bits = check_bits(bits)
    lo, hi = minmax_range(x, axis=axis)
    flat = _channels(x.detach().float(), axis)  # (C, N)
    if flat.size(1) > max_samples:  # search on an evenly strided subsample (min and max are kept above)
        flat = flat[:, ::math.ceil(flat.size(1) / max_samples)]
    alphas = torch.linspace(1.0 / n_grid, 1.0, n_grid)
    errs = []
    for a in alphas:
        qp = qparams(lo * a, hi * a, bits=bits, symmetric=symmetric, axis=None if axis is None else 0)
        errs.append(((fake_quantize(flat, qp) - flat) ** 2).mean(1))  # (C,)
    best = alphas[torch.stack(errs).argmin(0)]  # (C,)
    best = _squeeze(best, axis)
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


# ----------------------------------------------------------------------------- fake-quant modules, QAT
class FakeQuant(nn.Module):
    """Fake-quantize a tensor (shape kept) with the straight-through estimator.

    weight=True: the range is re-observed from the tensor on every call (per channel along
    axis 0, symmetric) — what QAT does for weights. weight=False (activations): the range is
    fixed by `calibrate` (per tensor, asymmetric) and the module passes x through until then.
    """

    def __init__(self, bits: int = 8, *, weight: bool = False, observer: str = "minmax",
                 per_channel: bool = True, pct: float = 99.99):
        super().__init__()
        if observer not in OBSERVERS:
            raise ValueError(f"unknown observer {observer!r}; choose one of {OBSERVERS}")
        self.bits, self.weight, self.observer, self.pct = check_bits(bits), weight, observer, pct
        self.symmetric = weight
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
    it is int32 at scale S_x * S_w).
    """

    def __init__(self, layer: nn.Module, *, weight_bits: int = 8, act_bits: int = 8,
                 weight_observer: str = "minmax", act_observer: str = "minmax", per_channel: bool = True):
        super().__init__()
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            raise TypeError(f"QuantLayer wraps Conv1d, Conv2d or Linear, got {type(layer).__name__}")
        self.layer = layer
        self.act_fq = FakeQuant(act_bits, weight=False, observer=act_observer)
        self.weight_fq = FakeQuant(weight_bits, weight=True, observer=weight_observer, per_channel=per_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self.act_fq(x), self.weight_fq(self.layer.weight)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` with every BatchNorm that directly follows a Conv (in a Sequential) folded.

    W' = W * gamma / sqrt(var + eps) (per output channel), b' = (b - mean) * gamma / sqrt(var + eps) + beta;
    the BatchNorm becomes Identity. Same outputs in eval mode (what int8 engines do before quantizing).
    """
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, (nn.Conv1d, nn.Conv2d)) and isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
                k = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                with torch.no_grad():
                    conv.weight.mul_(k.reshape(-1, *[1] * (conv.weight.dim() - 1)))
                    conv.bias = nn.Parameter((bias - bn.running_mean) * k + bn.bias)
                seq._modules[b] = nn.Identity()
    return model


def quantize_model(model: nn.Module, *, bits: int = 8, weight_bits: int | None = None,
                   act_bits: int | None = None, weight_observer: str = "minmax",
                   act_observer: str = "minmax", per_channel: bool = True,
                   calib_x: torch.Tensor | None = None) -> nn.Module:
    """A fake-quantized copy of a course model for PTQ and QAT (BatchNorm folded first).

    Every Conv/Linear becomes a QuantLayer (weights per-channel symmetric, activations
    per-tensor asymmetric). With `calib_x` (N, *in_shape) the activation ranges are calibrated
    at once (post-training quantization); train the result with `kd.fit` for QAT.
    """
    qmodel = fold_batchnorm(model)
    wb, ab = check_bits(weight_bits or bits), check_bits(act_bits or bits)
    for parent in list(qmodel.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                setattr(parent, name, QuantLayer(child, weight_bits=wb, act_bits=ab, weight_observer=weight_observer,
                                                 act_observer=act_observer, per_channel=per_channel))
    if calib_x is not None:
        calibrate(qmodel, calib_x)
    return qmodel.eval()


@torch.no_grad()
def calibrate(qmodel: nn.Module, calib_x: torch.Tensor, *, batch_size: int = 256) -> nn.Module:
    """Run `calib_x` (N, *in_shape) through `qmodel` and fix every activation FakeQuant's range.

    Layers are calibrated in order, each seeing the already-quantized outputs of the layers
    before it. Returns `qmodel` (in eval mode).
    """
    if calib_x is None or len(calib_x) == 0:
        raise ValueError("calibrate needs a non-empty calibration set calib_x of shape (N, *in_shape)")
    _check_finite(calib_x, "calibration set")
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


def recovered_share(fp32_acc: float, ptq_acc: float, qat_acc: float, *, noise: float = 0.0) -> float | None:
    """Share of PTQ's accuracy loss that QAT wins back, (qat - ptq) / (fp32 - ptq).

    None when PTQ lost no more than `noise` points (e.g. two standard errors of the test
    accuracy): there is then nothing to recover, and the ratio would divide by ~0 or a negative.
    """
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    lost = fp32_acc - ptq_acc
    if lost <= noise:  # noise >= 0, so this also covers lost <= 0
        return None
    return (qat_acc - ptq_acc) / lost


@torch.no_grad()
def layer_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per example of every Conv1d/Conv2d/Linear, for inputs shaped like `x` (B, ...).

    Conv: output elements x (C_in / groups) x kernel size; Linear: in_features x out_features
    (per row of the output). Counts arithmetic only, not memory traffic or per-call overhead, so
    a layer's share of MACs is a rough guide to its share of the time, not a measurement.
    """
    macs: dict[str, int] = {}
    hooks = []

    def hook(name):
        def fn(module, inputs, out):
            per_example = out[0].numel()  # one example of the batch
            if isinstance(module, nn.Linear):
                macs[name] = per_example * module.in_features
            else:
                macs[name] = per_example * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        return fn
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        model(x[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs


# ----------------------------------------------------------------------------- real int8 engines
@dataclass
class Engine:
    """A runnable model: `fn(x)` maps (B, *in_shape) float inputs to (B, n_classes) logits.

    size_bytes: serialized size; build_seconds: time to quantize (calibrate, convert, export);
    compile_seconds: torch.compile time for the batch sizes compiled in advance.
    """
    name: str
    fn: Callable
    size_bytes: int
    build_seconds: float = 0.0
    compile_seconds: float = 0.0

    def __call__(self, x: torch.Tensor):
        return self.fn(x)


def _state_bytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def _graph_module_bytes(gm: nn.Module) -> int:
    """Serialized size of the tensors a GraphModule's graph actually reads (its get_attr nodes).

    After convert_pt2e the unused fp32 weights are still attributes; only the int8 weights,
    scales, zero points and biases the graph uses are counted.
    """
    tensors = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            obj = gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            if isinstance(obj, torch.Tensor):
                tensors[node.target] = obj.detach()
    return _state_bytes(tensors)


def _compile_for(module: nn.Module, batch_sizes: Sequence[int], example: torch.Tensor) -> tuple[Callable, float]:
    """torch.compile with static shapes (one graph per batch size), compiled now for `batch_sizes`.

    dynamic=False avoids a crash of dynamic-shape compilation of pt2e int8 graphs seen in
    torch 2.14.1. Side effect: sets ``torch._inductor.config.freezing = True`` for the process,
    as torchao's pt2e docs advise (Inductor then pre-packs the int8 weights for oneDNN; passing
    it through ``torch.compile(options=...)`` instead fails for int8 convolutions in torch 2.14.1).
    """
    import torch._inductor.config as inductor_config
    inductor_config.freezing = True
    compiled = torch.compile(module, dynamic=False)
    # ordinary (not inference-mode) input tensors, like the data later passed in: dynamo guards on the difference
    inputs = [example[:1].expand(b, *example.shape[1:]).clone() for b in batch_sizes]
    cuda_log = logging.getLogger("torch.utils.cpp_extension")  # "No CUDA runtime is found" on CPU machines
    level = cuda_log.level
    cuda_log.setLevel(logging.ERROR)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode(), warnings.catch_warnings():  # the mode measure_latency runs in
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            for x in inputs:
                compiled(x)
    finally:
        cuda_log.setLevel(level)
    return compiled, time.perf_counter() - t0


def _import_torchao():
    """Import torchao with the logger warning that torch 2.14 emits for one of its enums silenced."""
    log = logging.getLogger("torch.utils._pytree")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torchao.quantization  # noqa: F401
    finally:
        log.setLevel(level)


def compiled_fp32(model: nn.Module, example: torch.Tensor, *, batch_sizes: Sequence[int] = (1, 256)) -> Engine:
    """The fp32 model under ``torch.compile`` with the settings ``pt2e_int8`` uses (Inductor freezing,
    static shapes, compiled now for `batch_sizes`): the baseline that separates the compiler's
    gains (fusion, BatchNorm folding, pre-packed weights) from int8's. example: (N, *in_shape).
    """
    model = copy.deepcopy(model).eval()
    compiled, secs = _compile_for(model, batch_sizes, example)
    return Engine("fp32_compiled", compiled, _state_bytes(model.state_dict()), 0.0, secs)


def pt2e_int8(model: nn.Module, calib_x: torch.Tensor, *, compile: bool = True,
              batch_sizes: Sequence[int] = (1, 256)) -> Engine:
    """Static int8 with torchao's pt2e flow and the X86 Inductor quantizer (the current PyTorch CPU route).

    export (dynamic batch) -> prepare_pt2e -> calibrate on calib_x (N, *in_shape) -> convert_pt2e
    -> torch.compile (static shapes; compiled now for `batch_sizes`). Without `compile` the
    converted model runs its quantize/dequantize ops in fp32 (a reference, slow).
    """
    _import_torchao()
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    if calib_x is None or len(calib_x) == 0:
        raise ValueError("pt2e_int8 needs a non-empty calibration set calib_x of shape (N, *in_shape)")
    _check_finite(calib_x, "calibration set")
    t0 = time.perf_counter()
    batch = torch.export.Dim("batch", min=1, max=65536)
    example = calib_x[:2]
    exported = torch.export.export(copy.deepcopy(model).eval(), (example,), dynamic_shapes=({0: batch},)).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for i in range(0, len(calib_x), 256):
            prepared(calib_x[i:i + 256])
    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)
    build = time.perf_counter() - t0
    size = _graph_module_bytes(converted)
    if not compile:
        return Engine("pt2e_eager", converted, size, build)
    compiled, secs = _compile_for(converted, batch_sizes, calib_x)
    return Engine("pt2e_x86", compiled, size, build, secs)


def torchao_linear_int8(model: nn.Module, *, compile: bool = False,
                        batch_sizes: Sequence[int] = (1, 256), example: torch.Tensor | None = None) -> Engine:
    """torchao ``quantize_`` with int8 dynamic activations and int8 weights: Linear layers only.

    Convolutions stay fp32. Activation scales are computed at run time on every call
    (dynamic quantization), so nothing needs calibrating.
    """
    _import_torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    t0 = time.perf_counter()
    qmodel = copy.deepcopy(model).eval()
    quantize_(qmodel, Int8DynamicActivationInt8WeightConfig())
    build = time.perf_counter() - t0
    size = _state_bytes(qmodel.state_dict())
    if not compile:
        return Engine("torchao_linear", qmodel, size, build)
    if example is None:
        raise ValueError("torchao_linear_int8(compile=True) needs an example input (B, *in_shape)")
    compiled, secs = _compile_for(qmodel, batch_sizes, example)
    return Engine("torchao_linear_compiled", compiled, size, build, secs)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> str:
    """Export `model` to ONNX at `path` with the torch.export-based exporter, batch dimension dynamic."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(copy.deepcopy(model).eval(), (example,), str(path), input_names=["x"],
                          output_names=["logits"], dynamic_shapes=({0: batch},), dynamo=True,
                          external_data=False, verbose=False)
    return str(path)


def ort_model(onnx_bytes: bytes, *, threads: int | None = None) -> Callable:
    """An ONNX Runtime CPU session as a callable torch (B, ...) -> torch (B, n_classes)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {"x": x.detach().numpy()})[0])
    return run


def _ort_engine(name: str, model: nn.Module, example: torch.Tensor, quantize_fn=None) -> Engine:
    """Export to a temporary directory, optionally pre-process and quantize there, load the bytes into ORT."""
    from onnxruntime.quantization.shape_inference import quant_pre_process
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, example, os.path.join(tmp, "fp32.onnx"))
        if quantize_fn is not None:
            quant_pre_process(path, os.path.join(tmp, "pre.onnx"))  # shape inference + graph clean-up
            path = quantize_fn(os.path.join(tmp, "pre.onnx"), os.path.join(tmp, "int8.onnx"))
        with open(path, "rb") as f:
            blob = f.read()
    return Engine(name, ort_model(blob), len(blob), time.perf_counter() - t0)


def ort_fp32(model: nn.Module, example: torch.Tensor) -> Engine:
    """The fp32 model exported to ONNX and run by ONNX Runtime (reference for the int8 ones)."""
    return _ort_engine("ort_fp32", model, example)


def ort_static_int8(model: nn.Module, calib_x: torch.Tensor, *, per_channel: bool = True) -> Engine:
    """ONNX Runtime static int8 (QDQ format, int8 activations and weights) calibrated on calib_x (N, ...)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    if calib_x is None or len(calib_x) == 0:
        raise ValueError("ort_static_int8 needs a non-empty calibration set calib_x of shape (N, *in_shape)")
    _check_finite(calib_x, "calibration set")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": calib_x[i:i + 64].numpy()} for i in range(0, len(calib_x), 64)])

        def get_next(self):
            return next(self.batches, None)

    def quantize_fn(src, dst):
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        return dst
    return _ort_engine("ort_static", model, calib_x[:2], quantize_fn)


def ort_dynamic_int8(model: nn.Module, example: torch.Tensor) -> Engine:
    """ONNX Runtime dynamic int8: int8 weights, activations quantized at run time (Conv -> ConvInteger)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def quantize_fn(src, dst):
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return dst
    return _ort_engine("ort_dynamic", model, example, quantize_fn)


# Each int8 engine's own fp32 reference: the same runtime / compiler without the integers.
FP32_REFERENCE = {"pt2e_x86": "fp32_compiled", "pt2e_eager": "fp32", "torchao_linear": "fp32",
                  "torchao_linear_compiled": "fp32_compiled", "ort_static": "ort_fp32", "ort_dynamic": "ort_fp32"}


def engine_accuracy(fn: Callable, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256) -> float:
    """Accuracy (%) of `fn` on (x, y), in batches of exactly `batch_size` (the last one padded).

    Fixed batches keep static-shape compiled models on the shapes they were compiled for.
    """
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        n = len(xb)
        if n < batch_size:
            xb = torch.cat([xb, xb[:1].expand(batch_size - n, *xb.shape[1:])])
        with torch.inference_mode():
            logits = torch.as_tensor(fn(xb))
        correct += int((logits[:n].argmax(1) == y[i:i + n]).sum())
    return 100.0 * correct / len(x)


def compare_engines(engines: dict[str, Callable], baseline: str, x: torch.Tensor, y: torch.Tensor, *,
                    batch_sizes: Sequence[int] = (1, 256), reps: int = 30, warmup: int = 5,
                    references: dict[str, str] | None = None) -> dict[str, dict]:
    """Accuracy, size and latency of each engine, latency measured interleaved in one process.

    engines: name -> Engine (or nn.Module); x (N, ...) test inputs, y (N,) labels.
    Returns name -> {acc, size_bytes, size_ratio, ms_b<B>, latency_ratio_b<B>}; ratios are
    relative to `engines[baseline]`. An engine whose fp32 reference (`references`, default
    FP32_REFERENCE) is among the engines also gets `reference` (its name) and
    `own_ratio_b<B>`, its latency divided by that reference's.
    """
    from .benchmark import measure_latency
    from .models import model_size_bytes
    if baseline not in engines:
        raise ValueError(f"baseline {baseline!r} is not one of the engines {list(engines)}")
    rows = {}
    for name, e in engines.items():
        if isinstance(e, nn.Module):
            e.eval()
        size = e.size_bytes if isinstance(e, Engine) else model_size_bytes(e)
        rows[name] = {"acc": engine_accuracy(e, x, y, batch_size=max(batch_sizes)), "size_bytes": size}
    for b in batch_sizes:
        ms = measure_latency(dict(engines), x[:b], warmup=warmup, reps=reps)
        for name in engines:
            rows[name][f"ms_b{b}"] = ms[name]
            rows[name][f"latency_ratio_b{b}"] = ms[name] / ms[baseline]
    for name in engines:
        rows[name]["size_ratio"] = rows[name]["size_bytes"] / rows[baseline]["size_bytes"]
    references = FP32_REFERENCE if references is None else references
    for name in engines:
        ref = references.get(name)
        if ref in engines and ref != name:
            rows[name]["reference"] = ref
            for b in batch_sizes:
                rows[name][f"own_ratio_b{b}"] = rows[name][f"ms_b{b}"] / rows[ref][f"ms_b{b}"]
    return rows
