"""Accuracy, size and latency of several engines side by side, each also against its own fp32 reference.

An int8 engine that beats eager PyTorch may owe the gain to its compiler or runtime, not to the
integers: `compare_engines` therefore also divides each engine's latency by that of the same
compiler or runtime running fp32 (`FP32_REFERENCE`). Latencies are measured interleaved in one
process (`kdcourse.benchmark.measure_latency`). Introduced in notebook 06, section 4.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..benchmark import measure_latency
from ..models import model_size_bytes
from ..utils import as_number, eval_mode
from .engines import Engine

__all__ = ["FP32_REFERENCE", "engine_accuracy", "compare_engines"]

# Each int8 engine's own fp32 reference: the same runtime / compiler without the integers.
FP32_REFERENCE = {"pt2e_x86": "fp32_compiled", "pt2e_eager": "fp32", "torchao_linear": "fp32",
                  "torchao_linear_compiled": "fp32_compiled", "ort_static": "ort_fp32", "ort_dynamic": "ort_fp32"}


def engine_accuracy(fn: Callable, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256) -> float:
    """Accuracy (%) of `fn` on x (N, ...) with labels y (N,), in batches of exactly `batch_size`.

    The last batch is padded with copies of its first row, so static-shape compiled models stay
    on the shapes they were compiled for. An nn.Module runs in eval mode; its modes are restored.
    """
    batch_size = as_number(batch_size, "batch_size", integer=True)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    correct = 0
    with eval_mode(fn if isinstance(fn, nn.Module) else None):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            n = len(xb)
            if n < batch_size:  # built outside inference mode, like the inputs compiled models were traced on
                xb = torch.cat([xb, xb[:1].expand(batch_size - n, *xb.shape[1:])])
            with torch.inference_mode():
                logits = torch.as_tensor(fn(xb))
            correct += int((logits[:n].argmax(1) == y[i:i + n]).sum())
    return 100.0 * correct / len(x)


def compare_engines(engines: dict[str, Callable], baseline: str, x: torch.Tensor, y: torch.Tensor, *,
                    batch_sizes: Sequence[int] = (1, 256), reps: int = 30, warmup: int = 5,
                    references: dict[str, str] | None = None) -> dict[str, dict]:
    """Accuracy, size and latency of each engine, latency measured interleaved in one process.

    engines: name -> Engine (or nn.Module, run in eval mode and restored after); x (N, ...) test
    inputs, y (N,) labels. Returns name -> {acc, size_bytes, size_ratio, ms_b<B>,
    latency_ratio_b<B>}; ratios are relative to `engines[baseline]`. An engine whose fp32
    reference (`references`, default FP32_REFERENCE) is among the engines also gets `reference`
    (its name) and `own_ratio_b<B>`, its latency divided by that reference's.
    """
    if baseline not in engines:
        raise ValueError(f"baseline {baseline!r} is not one of the engines {list(engines)}")
    batch_sizes = [as_number(b, "batch size", integer=True) for b in batch_sizes]
    modules = [e for e in engines.values() if isinstance(e, nn.Module)]
    rows = {}
    with eval_mode(*modules):
        for name, e in engines.items():
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
