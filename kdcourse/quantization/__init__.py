"""Quantization: affine maths, observers, fake quantization, QAT, real int8 engines. Introduced in notebook 06.

Affine (uniform) quantization maps a float x to an integer q on a grid of 2**bits levels::

    q = clamp(round(x / S) + Z, qmin, qmax)        x_hat = (q - Z) * S

with scale S > 0 and integer zero point Z (Jacob et al. 2018, "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference"; Krishnamoorthi 2018;
Nagel et al. 2021, "A White Paper on Neural Network Quantization"). Inside the range
[(qmin - Z) S, (qmax - Z) S] the rounding error is at most S / 2; outside it values clip.

One module per concept, all names re-exported here (``kd.quantization.X``):

* ``affine``     - check_bits, QParams, qparams, quantize, dequantize, fake_quantize, quant_mse;
* ``observers``  - minmax / percentile / MSE-optimal ranges and ``observe`` (calibration);
* ``qat``        - FakeQuant (straight-through estimator), QuantLayer, fold_batchnorm,
  quantize_model (PTQ) and calibrate; train the result with ``kd.fit`` for QAT;
* ``engines``    - real int8 in PyTorch on a CPU: torchao's pt2e flow with the X86 Inductor
  quantizer (+ ``torch.compile``), torchao ``quantize_`` for Linear layers, compiled fp32;
* ``onnx_runtime`` - ONNX Runtime fp32, static and dynamic int8;
* ``compare``    - compare_engines: accuracy, size and latency, each engine also against its own
  fp32 reference (measured with ``kdcourse.benchmark.measure_latency``).

The first three are plain PyTorch written for reading; the last three wrap the engines that run
on a CPU today. (Older tutorials use the eager ``torch.ao.quantization`` API; it is deprecated
and not used here.) ``recovered_share`` (kdcourse.stats) and ``layer_macs``
(kdcourse.benchmark) are re-exported for notebook 06. Importing has no side effects.
"""
from ..benchmark import layer_macs
from ..stats import recovered_share
from .affine import QParams, check_bits, dequantize, fake_quantize, qparams, quant_mse, quantize
from .compare import FP32_REFERENCE, compare_engines, engine_accuracy
from .engines import Engine, compiled_fp32, inductor_freezing, pt2e_int8, torchao_linear_int8
from .observers import OBSERVERS, check_pct, minmax_range, mse_range, observe, percentile_range
from .onnx_runtime import export_onnx, ort_dynamic_int8, ort_fp32, ort_model, ort_static_int8
from .qat import FakeQuant, QuantLayer, calibrate, fold_batchnorm, quantize_model

__all__ = ["QParams", "check_bits", "qparams", "quantize", "dequantize", "fake_quantize", "FakeQuant",
           "minmax_range", "percentile_range", "mse_range", "observe", "OBSERVERS", "check_pct", "quant_mse",
           "fold_batchnorm", "QuantLayer", "quantize_model", "calibrate", "recovered_share", "layer_macs",
           "Engine", "inductor_freezing", "compiled_fp32", "pt2e_int8", "torchao_linear_int8", "export_onnx",
           "ort_model", "ort_fp32", "ort_static_int8", "ort_dynamic_int8", "FP32_REFERENCE", "engine_accuracy",
           "compare_engines"]
