"""Int8 in ONNX Runtime: export to ONNX, then static (QDQ, calibrated) or dynamic quantization.

`ort_static_int8` stores int8 weights (per channel) and int8 activations whose ranges are
calibrated on a few hundred inputs, in the QDQ format; `ort_dynamic_int8` stores int8 weights
and computes activation scales on every call (convolutions become ConvInteger). `ort_fp32` is
their own fp32 reference: the same runtime without the integers. Introduced in notebook 06,
section 4 (ONNX Runtime documentation, "Quantize ONNX models").
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn

from ..utils import as_number
from .affine import _check_finite
from .engines import Engine

__all__ = ["export_onnx", "ort_model", "ort_fp32", "ort_static_int8", "ort_dynamic_int8"]


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> str:
    """Export `model` to ONNX at `path` with the torch.export-based exporter, batch dimension dynamic.

    example: (B, *in_shape); the graph's input is named "x", its output "logits". Returns the path.
    """
    batch = torch.export.Dim("batch", min=1, max=65536)
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(copy.deepcopy(model).eval(), (example,), str(path), input_names=["x"],
                          output_names=["logits"], dynamic_shapes=({0: batch},), dynamo=True,
                          external_data=False, verbose=False)
    return str(path)


def ort_model(onnx_bytes: bytes, *, threads: int | None = None) -> Callable:
    """An ONNX Runtime CPU session as a callable torch (B, ...) -> torch (B, n_classes).

    threads: intra-op threads (default: torch.get_num_threads()).
    """
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads() if threads is None else as_number(threads, "threads",
                                                                                            integer=True)
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {"x": x.detach().cpu().numpy()})[0])
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


def _quantize_static_file(src: str, dst: str, calib_x: torch.Tensor, *, per_channel: bool = True) -> str:
    """ONNX Runtime's static QDQ int8 quantization of the ONNX file `src` into `dst`, calibrated on calib_x (N, ...)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": calib_x[i:i + 64].numpy()} for i in range(0, len(calib_x), 64)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return dst


def ort_static_int8(model: nn.Module, calib_x: torch.Tensor, *, per_channel: bool = True) -> Engine:
    """ONNX Runtime static int8 (QDQ format, int8 activations and weights) calibrated on calib_x (N, ...)."""
    if calib_x is None or len(calib_x) == 0:
        raise ValueError("ort_static_int8 needs a non-empty calibration set calib_x of shape (N, *in_shape)")
    _check_finite(calib_x, "calibration set")
    return _ort_engine("ort_static", model, calib_x[:2],
                       lambda src, dst: _quantize_static_file(src, dst, calib_x, per_channel=per_channel))


def ort_dynamic_int8(model: nn.Module, example: torch.Tensor) -> Engine:
    """ONNX Runtime dynamic int8: int8 weights, activations quantized at run time (Conv -> ConvInteger)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def quantize_fn(src, dst):
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return dst
    return _ort_engine("ort_dynamic", model, example, quantize_fn)
