"""Real int8 engines in PyTorch on a CPU: torchao's pt2e flow + torch.compile, torchao quantize_.

Fake quantization only simulates int8; speed needs kernels that multiply int8 by int8 into
int32. The current PyTorch route for CNNs on x86 is pt2e: ``torch.export`` -> ``prepare_pt2e``
with torchao's X86 Inductor quantizer -> calibrate -> ``convert_pt2e`` -> ``torch.compile``
(Inductor fuses quantize/conv/ReLU into oneDNN int8 kernels). torchao ``quantize_`` targets
Linear layers only. The eager ``torch.ao.quantization`` API of older tutorials is deprecated and
not used. Each engine is an `Engine`: measure them side by side with `compare_engines`, each
against its own fp32 reference (`compiled_fp32`). Introduced in notebook 06, section 4.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..utils import as_number
from .affine import _check_finite

__all__ = ["Engine", "inductor_freezing", "compiled_fp32", "pt2e_int8", "torchao_linear_int8"]


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


@contextlib.contextmanager
def inductor_freezing(enabled: bool = True) -> Iterator[None]:
    """Set ``torch._inductor.config.freezing`` to `enabled` inside the block only.

    Freezing lets Inductor treat the weights as constants (fold BatchNorm, pre-pack int8 weights
    for oneDNN), as torchao's pt2e docs advise. The previous value comes back on exit, even after
    an error, so nothing else compiled in the process is affected.
    """
    import torch._inductor.config as inductor_config
    previous = inductor_config.freezing
    inductor_config.freezing = enabled
    try:
        yield
    finally:
        inductor_config.freezing = previous


@contextlib.contextmanager
def _quiet_compile() -> Iterator[None]:
    """Silence the "No CUDA runtime is found" log line and a tensor-copy warning while compiling."""
    cuda_log = logging.getLogger("torch.utils.cpp_extension")
    level = cuda_log.level
    cuda_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            yield
    finally:
        cuda_log.setLevel(level)


def _compile_for(module: nn.Module, batch_sizes: Sequence[int], example: torch.Tensor) -> tuple[Callable, float]:
    """torch.compile with static shapes (one graph per batch size), compiled now for `batch_sizes`.

    Returns (compiled module, compile seconds). Inductor freezing is on only while these graphs
    compile (`inductor_freezing`); passing it through ``torch.compile(options=...)`` instead fails
    for int8 convolutions in torch 2.14.1. A later call with another batch size (or outside
    inference mode) recompiles without freezing: correct, but without pre-packed weights.
    dynamic=False avoids a crash of dynamic-shape compilation of pt2e int8 graphs in torch 2.14.1.
    """
    batch_sizes = [as_number(b, "batch size", integer=True) for b in batch_sizes]
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_sizes must be a non-empty list of integers >= 1, got {batch_sizes}")
    compiled = torch.compile(module, dynamic=False)
    # ordinary (not inference-mode) input tensors, like the data later passed in: dynamo guards on the difference
    inputs = [example[:1].expand(b, *example.shape[1:]).clone() for b in batch_sizes]
    t0 = time.perf_counter()
    with inductor_freezing(), torch.inference_mode(), _quiet_compile():  # the mode measure_latency runs in
        for x in inputs:
            compiled(x)
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
              batch_sizes: Sequence[int] = (1, 256), strict: bool = True) -> Engine:
    """Static int8 with torchao's pt2e flow and the X86 Inductor quantizer (the current PyTorch CPU route).

    export (dynamic batch) -> prepare_pt2e -> calibrate on calib_x (N, *in_shape) -> convert_pt2e
    -> torch.compile (static shapes; compiled now for `batch_sizes`, Inductor freezing on). Without
    `compile` the converted model runs its quantize/dequantize ops in fp32 (a reference, slow).
    strict: export with ``torch.export.export(..., strict=True)`` (TorchDynamo traces the model).
    Residual CNNs need it: torchvision's ResNet blocks call one ``nn.ReLU`` module twice, a
    non-strict export records both calls as one "source partition" with two outputs, and the X86
    quantizer's conv/add/ReLU fusion rejects it ("Input partition has more than one output node").
    The strict export gives each call its own partition; for the course CNN both exports give
    bit-identical int8 outputs. strict=False is for a model that TorchDynamo cannot trace.
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
    exported = torch.export.export(copy.deepcopy(model).eval(), (example,), dynamic_shapes=({0: batch},),
                                   strict=bool(strict)).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    try:
        prepared = prepare_pt2e(exported, quantizer)
    except ValueError as err:
        if strict or "more than one output node" not in str(err):
            raise
        raise ValueError(f"prepare_pt2e failed on the non-strict export ({err}): the model probably calls one "
                         "module (e.g. an nn.ReLU) at several places, as torchvision's ResNet blocks do; "
                         "use strict=True") from err
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
    (dynamic quantization), so nothing needs calibrating. With `compile`, `example`
    (B, *in_shape) is required.
    """
    if compile and example is None:
        raise ValueError("torchao_linear_int8(compile=True) needs an example input (B, *in_shape)")
    _import_torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    t0 = time.perf_counter()
    qmodel = copy.deepcopy(model).eval()
    quantize_(qmodel, Int8DynamicActivationInt8WeightConfig())
    build = time.perf_counter() - t0
    size = _state_bytes(qmodel.state_dict())
    if not compile:
        return Engine("torchao_linear", qmodel, size, build)
    compiled, secs = _compile_for(qmodel, batch_sizes, example)
    return Engine("torchao_linear_compiled", compiled, size, build, secs)
